//! The consumer's RDY planner and its go-nsq-style failure backoff, as pure logic: the
//! manager task in `consumer` feeds them what it knows (each node's RDY and in-flight count,
//! the clock) and applies what they decide. Nothing here does I/O or reads a clock.
//!
//! - [`plan`] sets every connection's RDY towards its target without breaking the budget:
//!   per connection it counts `max(rdy, in_flight)` (a connection whose RDY was lowered still
//!   holds its in-flight messages) and grants a connection at most what `max_in_flight`
//!   leaves after the others. Targets spread `max_in_flight` evenly; with more connections
//!   than `max_in_flight`, RDY 1 goes to `max_in_flight` of them from `rotation` on, and
//!   [`rotate`] moves that window on every redistribution tick.
//! - [`FailureBackoff`]: a failed message pauses every connection (RDY 0) for
//!   [`exponential`]`(initial, max, level - 1)`; after the pause one connection tests with
//!   RDY 1; each success walks the level down (pausing again, shorter) until full RDY.

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::exponential;

/// The highest failure backoff level (the pause no longer grows long before it).
const MAX_LEVEL: u32 = 32;

/// Where the failure backoff stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Full RDY.
    Normal,
    /// RDY 0 everywhere until the instant.
    Paused(Instant),
    /// The pause is over: one connection tests with RDY 1.
    Testing,
}

/// What a message outcome did to the backoff, for the manager to log and act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing: a success without backoff, or an outcome of a message delivered before the
    /// pause.
    None,
    /// A failure: paused for `pause`, at `level`.
    Failed { level: u32, pause: Duration },
    /// A success during backoff: one level down, paused again for the shorter `pause`.
    Eased { level: u32, pause: Duration },
    /// The success that ended the backoff: full RDY again.
    Resumed,
}

/// The consumer's failure backoff (go-nsq's): a level that failures raise and successes
/// lower, and the phase it puts RDY in.
#[derive(Debug, Clone)]
pub(crate) struct FailureBackoff {
    initial: Duration,
    max: Duration,
    level: u32,
    phase: Phase,
}

impl FailureBackoff {
    /// No backoff: [`Phase::Normal`] at level 0. Pauses are
    /// [`exponential`]`(initial, max, level - 1)`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        FailureBackoff {
            initial,
            max,
            level: 0,
            phase: Phase::Normal,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// When the current pause ends, if paused.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Paused(t) => Some(t),
            _ => None,
        }
    }

    /// A message failed (was requeued) at `now`.
    pub(crate) fn failure(&mut self, now: Instant) -> Change {
        if let Phase::Paused(_) = self.phase {
            return Change::None;
        }
        self.level = (self.level + 1).min(MAX_LEVEL);
        let pause = self.pause();
        self.phase = Phase::Paused(now + pause);
        Change::Failed {
            level: self.level,
            pause,
        }
    }

    /// A message succeeded (was finished) at `now`.
    pub(crate) fn success(&mut self, now: Instant) -> Change {
        if let Phase::Paused(_) = self.phase {
            return Change::None;
        }
        if self.level == 0 {
            return Change::None;
        }
        self.level -= 1;
        if self.level == 0 {
            self.phase = Phase::Normal;
            return Change::Resumed;
        }
        let pause = self.pause();
        self.phase = Phase::Paused(now + pause);
        Change::Eased {
            level: self.level,
            pause,
        }
    }

    /// The pause's timer fired: one connection tests with RDY 1.
    pub(crate) fn pause_over(&mut self) {
        if let Phase::Paused(_) = self.phase {
            self.phase = Phase::Testing;
        }
    }

    fn pause(&self) -> Duration {
        exponential(self.initial, self.max, self.level.saturating_sub(1))
    }
}

/// One node as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct NodeRdy {
    /// A connection is open and subscribed.
    pub(crate) connected: bool,
    /// The node is being closed or dropped: it keeps its in-flight messages, gets no RDY.
    pub(crate) stopping: bool,
    /// RDY last set on the connection.
    pub(crate) rdy: u32,
    /// Messages delivered on the connection and not yet finished or requeued.
    pub(crate) in_flight: u32,
    /// nsqd's max RDY for the connection.
    pub(crate) max_rdy: u32,
}

impl NodeRdy {
    /// What the node takes from the budget.
    fn usage(&self) -> u32 {
        if self.connected {
            self.rdy.max(self.in_flight)
        } else {
            0
        }
    }
}

/// A new RDY for the node at `node` (an index into [`plan`]'s slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RdyChange {
    pub(crate) node: usize,
    pub(crate) rdy: u32,
}

/// What [`plan`] decided: lower first, then raise (in that order, so that the budget holds
/// at every step); `unmet` when some target waits for in-flight messages to end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) lower: Vec<RdyChange>,
    pub(crate) raise: Vec<RdyChange>,
    pub(crate) unmet: bool,
}

/// RDY for every node of `nodes` (in a stable order: rotation walks it), within
/// `max_in_flight`. See the module documentation.
pub(crate) fn plan(
    max_in_flight: u32,
    closing: bool,
    phase: Phase,
    rotation: usize,
    nodes: &[NodeRdy],
) -> Plan {
    let max = max_in_flight;
    let live: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.connected && !n.stopping)
        .map(|(i, _)| i)
        .collect();
    let mut targets: Vec<Option<u32>> = vec![None; nodes.len()];
    let n = live.len();
    if n > 0 && !closing {
        match phase {
            Phase::Paused(_) => {}
            Phase::Testing => targets[live[rotation % n]] = Some(1),
            Phase::Normal if n <= max as usize => {
                let base = max / n as u32;
                let extra = (max % n as u32) as usize;
                for (k, &i) in live.iter().enumerate() {
                    targets[i] = Some(base + u32::from(k < extra));
                }
            }
            Phase::Normal => {
                for k in 0..max as usize {
                    targets[live[(rotation + k) % n]] = Some(1);
                }
            }
        }
    }
    // Cap by nsqd's max RDY.
    for (t, node) in targets.iter_mut().zip(nodes) {
        if let Some(t) = t {
            *t = (*t).min(node.max_rdy.max(1));
        }
    }
    let mut rdy: Vec<u32> = nodes.iter().map(|n| n.rdy).collect();
    let mut out = Plan::default();
    for (i, node) in nodes.iter().enumerate() {
        let target = targets[i].unwrap_or(0);
        if node.connected && target < rdy[i] {
            rdy[i] = target;
            out.lower.push(RdyChange {
                node: i,
                rdy: target,
            });
        }
    }
    let usage = |j: usize, rdy: &[u32]| {
        NodeRdy {
            rdy: rdy[j],
            ..nodes[j]
        }
        .usage()
    };
    for (i, target) in targets.iter().enumerate() {
        let Some(target) = *target else { continue };
        if target <= rdy[i] {
            continue;
        }
        let others: u32 = (0..nodes.len())
            .filter(|&j| j != i)
            .map(|j| usage(j, &rdy))
            .sum();
        let grant = target.min(max.saturating_sub(others));
        if grant > rdy[i] {
            rdy[i] = grant;
            out.raise.push(RdyChange {
                node: i,
                rdy: grant,
            });
        }
        if rdy[i] < target {
            out.unmet = true;
        }
    }
    out
}

/// The rotation after a redistribution tick: RDY 1 moves on to the next `max_in_flight`
/// connections when there are more `connected` than that, and stays put otherwise.
pub(crate) fn rotate(rotation: usize, connected: usize, max_in_flight: u32) -> usize {
    if connected > max_in_flight as usize {
        rotation.wrapping_add(max_in_flight as usize)
    } else {
        rotation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    /// A connected node with this RDY and in-flight count, and nsqd's default max RDY.
    fn conn(rdy: u32, in_flight: u32) -> NodeRdy {
        NodeRdy {
            connected: true,
            stopping: false,
            rdy,
            in_flight,
            max_rdy: 2500,
        }
    }

    fn idle() -> NodeRdy {
        conn(0, 0)
    }

    /// Every node's RDY after applying `p`.
    fn after(nodes: &[NodeRdy], p: &Plan) -> Vec<u32> {
        let mut rdy: Vec<u32> = nodes.iter().map(|n| n.rdy).collect();
        for c in p.lower.iter().chain(&p.raise) {
            rdy[c.node] = c.rdy;
        }
        rdy
    }

    #[test]
    fn normal_phase_spreads_the_budget_evenly() {
        // (max_in_flight, nodes, expected RDY per node)
        let cases: &[(u32, Vec<NodeRdy>, Vec<u32>)] = &[
            (1, vec![idle()], vec![1]),
            (10, vec![idle()], vec![10]),
            (10, vec![idle(), idle()], vec![5, 5]),
            // The remainder goes to the first nodes.
            (10, vec![idle(), idle(), idle()], vec![4, 3, 3]),
            (3, vec![idle(), idle(), idle()], vec![1, 1, 1]),
            // Disconnected nodes take no share.
            (10, vec![idle(), NodeRdy::default(), idle()], vec![5, 0, 5]),
            // nsqd's max RDY caps a target; 0 (unknown) counts as 1.
            (
                10,
                vec![NodeRdy {
                    max_rdy: 2,
                    ..idle()
                }],
                vec![2],
            ),
            (
                10,
                vec![NodeRdy {
                    max_rdy: 0,
                    ..idle()
                }],
                vec![1],
            ),
            // Already at target: nothing to do.
            (10, vec![conn(5, 5), conn(5, 0)], vec![5, 5]),
        ];
        for (max, nodes, expected) in cases {
            let p = plan(*max, false, Phase::Normal, 0, nodes);
            assert_eq!(&after(nodes, &p), expected, "max {max}, nodes {nodes:?}");
            assert!(!p.unmet, "max {max}, nodes {nodes:?}: {p:?}");
        }
    }

    #[test]
    fn in_flight_of_a_lowered_connection_still_counts() {
        // Node 0 held RDY 10 and still has 8 in flight; a second node appears. Node 0 drops to
        // 5 at once, but node 1 gets only what the 8 leave, and the plan says it waits.
        let nodes = [conn(10, 8), idle()];
        let p = plan(10, false, Phase::Normal, 0, &nodes);
        assert_eq!(p.lower, vec![RdyChange { node: 0, rdy: 5 }]);
        assert_eq!(p.raise, vec![RdyChange { node: 1, rdy: 2 }]);
        assert!(p.unmet);
        // Once node 0's in-flight drains to its RDY, node 1 reaches its target.
        let nodes = [conn(5, 5), conn(2, 0)];
        let p = plan(10, false, Phase::Normal, 0, &nodes);
        assert_eq!(p.raise, vec![RdyChange { node: 1, rdy: 5 }]);
        assert!(p.lower.is_empty());
        assert!(!p.unmet);
    }

    #[test]
    fn a_node_that_appears_gets_its_share_as_the_others_drain() {
        // Two nodes share 10; a third connects while both are full.
        let nodes = [conn(5, 5), conn(5, 5), idle()];
        let p = plan(10, false, Phase::Normal, 0, &nodes);
        assert_eq!(after(&nodes, &p), vec![4, 3, 0]);
        assert!(p.unmet, "node 2 waits for in-flight messages to end");
        // Their in-flight drained to the new RDY: node 2 gets its 3.
        let nodes = [conn(4, 4), conn(3, 3), idle()];
        let p = plan(10, false, Phase::Normal, 0, &nodes);
        assert_eq!(after(&nodes, &p), vec![4, 3, 3]);
        assert!(!p.unmet);
    }

    #[test]
    fn a_node_that_goes_away_frees_its_share() {
        // Node 1 disconnected (the manager resets its RDY to 0 on Down).
        let nodes = [conn(4, 4), NodeRdy::default(), conn(3, 3)];
        let p = plan(10, false, Phase::Normal, 0, &nodes);
        assert_eq!(after(&nodes, &p), vec![5, 0, 5]);
        assert!(p.lower.is_empty());
        assert!(!p.unmet);
        // A stopping node (lookupd no longer lists it) gets RDY 0 at once, but its in-flight
        // messages keep their share of the budget until they end.
        let stopping = NodeRdy {
            stopping: true,
            ..conn(3, 3)
        };
        let nodes = [conn(4, 4), stopping, conn(3, 3)];
        let p = plan(10, false, Phase::Normal, 0, &nodes);
        assert_eq!(p.lower, vec![RdyChange { node: 1, rdy: 0 }]);
        assert_eq!(after(&nodes, &p), vec![4, 0, 3]);
        assert!(p.raise.is_empty());
        assert!(p.unmet, "nodes 0 and 2 wait for node 1's 3 in flight");
        let drained = NodeRdy {
            rdy: 0,
            in_flight: 0,
            ..stopping
        };
        let nodes = [conn(4, 4), drained, conn(3, 3)];
        let p = plan(10, false, Phase::Normal, 0, &nodes);
        assert_eq!(after(&nodes, &p), vec![5, 0, 5]);
        assert!(!p.unmet);
    }

    #[test]
    fn more_nodes_than_max_in_flight_rotate_rdy_1() {
        // (rotation, expected RDY) for max_in_flight 2 over 5 idle nodes.
        let cases: &[(usize, [u32; 5])] = &[
            (0, [1, 1, 0, 0, 0]),
            (2, [0, 0, 1, 1, 0]),
            (4, [1, 0, 0, 0, 1]),
            (7, [0, 0, 1, 1, 0]),
        ];
        let nodes = [idle(); 5];
        for (rotation, expected) in cases {
            let p = plan(2, false, Phase::Normal, *rotation, &nodes);
            assert_eq!(after(&nodes, &p), expected.to_vec(), "rotation {rotation}");
        }
        // The window moves on: nodes 0 and 1 lose RDY 1, but node 0 still has a message in
        // flight, so node 3 waits for it.
        let nodes = [conn(1, 1), conn(1, 0), idle(), idle(), idle()];
        let p = plan(2, false, Phase::Normal, 2, &nodes);
        assert_eq!(
            p.lower,
            vec![RdyChange { node: 0, rdy: 0 }, RdyChange { node: 1, rdy: 0 }]
        );
        assert_eq!(p.raise, vec![RdyChange { node: 2, rdy: 1 }]);
        assert!(p.unmet);
    }

    #[test]
    fn rotation_moves_only_when_nodes_outnumber_the_budget() {
        // (rotation, connected, max_in_flight, next rotation)
        let cases: &[(usize, usize, u32, usize)] = &[
            (0, 5, 2, 2),
            (2, 5, 2, 4),
            (0, 2, 2, 0),
            (3, 1, 10, 3),
            (0, 0, 1, 0),
            (usize::MAX, 5, 2, 1),
        ];
        for &(rotation, connected, max, expected) in cases {
            assert_eq!(
                rotate(rotation, connected, max),
                expected,
                "rotate({rotation}, {connected}, {max})"
            );
        }
    }

    #[test]
    fn backoff_phases_and_closing_limit_rdy() {
        let now = Instant::now();
        let nodes = [conn(5, 0), conn(5, 2), idle()];
        // (closing, phase, rotation, expected RDY)
        let cases: &[(bool, Phase, usize, [u32; 3])] = &[
            (false, Phase::Paused(now), 0, [0, 0, 0]),
            (false, Phase::Testing, 0, [1, 0, 0]),
            (false, Phase::Testing, 4, [0, 1, 0]),
            (true, Phase::Normal, 0, [0, 0, 0]),
            (true, Phase::Testing, 0, [0, 0, 0]),
        ];
        for (closing, phase, rotation, expected) in cases {
            let p = plan(10, *closing, *phase, *rotation, &nodes);
            assert_eq!(
                after(&nodes, &p),
                expected.to_vec(),
                "closing {closing}, {phase:?}, rotation {rotation}"
            );
            assert!(!p.unmet);
        }
    }

    proptest! {
        /// Whatever the nodes, RDY only ever moves towards the target and the budget holds
        /// after the plan whenever it held before (in-flight counts above RDY, from a lowered
        /// connection, may break it before).
        #[test]
        fn the_budget_holds(
            max in 1u32..20,
            closing in any::<bool>(),
            phase in 0u8..3,
            rotation in 0usize..50,
            nodes in prop::collection::vec(
                (any::<bool>(), any::<bool>(), 0u32..12, 0u32..12, 0u32..12),
                0..8,
            ),
        ) {
            let phase = match phase {
                0 => Phase::Normal,
                1 => Phase::Testing,
                _ => Phase::Paused(Instant::now()),
            };
            let nodes: Vec<NodeRdy> = nodes
                .into_iter()
                .map(|(connected, stopping, rdy, in_flight, max_rdy)| NodeRdy {
                    connected,
                    stopping,
                    rdy: if connected { rdy } else { 0 },
                    in_flight: if connected { in_flight } else { 0 },
                    max_rdy,
                })
                .collect();
            let before: u32 = nodes.iter().map(NodeRdy::usage).sum();
            let p = plan(max, closing, phase, rotation, &nodes);
            let rdy = after(&nodes, &p);
            let used: u32 = nodes
                .iter()
                .zip(&rdy)
                .map(|(n, &r)| NodeRdy { rdy: r, ..*n }.usage())
                .sum();
            prop_assert!(used <= max.max(before), "{used} > {max} (before {before}): {p:?}");
            if before <= max {
                prop_assert!(used <= max);
            }
            for c in &p.raise {
                let n = &nodes[c.node];
                prop_assert!(n.connected && !n.stopping && !closing);
                prop_assert!(c.rdy > n.rdy && c.rdy <= n.max_rdy.max(1));
            }
            for c in &p.lower {
                prop_assert!(c.rdy < nodes[c.node].rdy);
            }
            prop_assert!(rdy.iter().filter(|r| **r > 0).count() <= max as usize);
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Ev {
        Fail,
        Ok,
        PauseOver,
    }

    #[test]
    fn failure_backoff_enters_and_walks_back_out() {
        let t0 = Instant::now();
        let mut b = FailureBackoff::new(100 * MS, 1000 * MS);
        // (at ms, event, expected change, expected phase (pause end in ms after t0))
        enum P {
            Normal,
            Paused(u32),
            Testing,
        }
        let steps: &[(u32, Ev, Change, P)] = &[
            (0, Ev::Ok, Change::None, P::Normal),
            (
                0,
                Ev::Fail,
                Change::Failed {
                    level: 1,
                    pause: 100 * MS,
                },
                P::Paused(100),
            ),
            // Outcomes of messages delivered before the pause do not move it.
            (50, Ev::Fail, Change::None, P::Paused(100)),
            (60, Ev::Ok, Change::None, P::Paused(100)),
            (100, Ev::PauseOver, Change::None, P::Testing),
            // The test message failed too: level 2, twice the pause.
            (
                110,
                Ev::Fail,
                Change::Failed {
                    level: 2,
                    pause: 200 * MS,
                },
                P::Paused(310),
            ),
            (310, Ev::PauseOver, Change::None, P::Testing),
            (
                320,
                Ev::Fail,
                Change::Failed {
                    level: 3,
                    pause: 400 * MS,
                },
                P::Paused(720),
            ),
            (720, Ev::PauseOver, Change::None, P::Testing),
            // Successes walk it down, pausing again for the shorter time.
            (
                730,
                Ev::Ok,
                Change::Eased {
                    level: 2,
                    pause: 200 * MS,
                },
                P::Paused(930),
            ),
            (930, Ev::PauseOver, Change::None, P::Testing),
            (
                940,
                Ev::Ok,
                Change::Eased {
                    level: 1,
                    pause: 100 * MS,
                },
                P::Paused(1040),
            ),
            (1040, Ev::PauseOver, Change::None, P::Testing),
            (1050, Ev::Ok, Change::Resumed, P::Normal),
            (1060, Ev::Ok, Change::None, P::Normal),
            // A stray timer outside a pause changes nothing.
            (1070, Ev::PauseOver, Change::None, P::Normal),
        ];
        for (i, (at, ev, change, phase)) in steps.iter().enumerate() {
            let now = t0 + *at * MS;
            let got = match ev {
                Ev::Fail => b.failure(now),
                Ev::Ok => b.success(now),
                Ev::PauseOver => {
                    b.pause_over();
                    Change::None
                }
            };
            assert_eq!(got, *change, "step {i}: {ev:?} at {at} ms");
            let expected = match phase {
                P::Normal => Phase::Normal,
                P::Paused(end) => Phase::Paused(t0 + *end * MS),
                P::Testing => Phase::Testing,
            };
            assert_eq!(b.phase(), expected, "step {i}: {ev:?} at {at} ms");
            assert_eq!(
                b.paused_until(),
                match expected {
                    Phase::Paused(t) => Some(t),
                    _ => None,
                }
            );
        }
    }

    #[test]
    fn failure_backoff_level_and_pause_are_capped() {
        let t0 = Instant::now();
        let mut b = FailureBackoff::new(100 * MS, 1000 * MS);
        let mut last = Change::None;
        for _ in 0..100 {
            last = b.failure(t0);
            b.pause_over();
        }
        assert_eq!(
            last,
            Change::Failed {
                level: MAX_LEVEL,
                pause: 1000 * MS
            }
        );
        // MAX_LEVEL successes, not 100, bring it back.
        for _ in 1..MAX_LEVEL {
            assert!(matches!(b.success(t0), Change::Eased { .. }));
            b.pause_over();
        }
        assert_eq!(b.success(t0), Change::Resumed);
        assert_eq!(b.phase(), Phase::Normal);
    }
}
