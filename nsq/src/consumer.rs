//! The consumer: one connection per nsqd, found from fixed addresses and nsqlookupd, with RDY
//! spread so that the total in flight never exceeds `max_in_flight`.
//!
//! Three kinds of task cooperate:
//! - a **connection task** per nsqd connects, subscribes, turns message frames into
//!   [`Message`]s, answers heartbeats, and writes FIN/REQ/TOUCH/RDY/CLS in batches. It
//!   reconnects with jittered backoff until its node is removed or the consumer closes;
//! - a **lookup task** per consumer asks every nsqlookupd for the topic's producers on an
//!   interval and reports the union;
//! - the **manager** owns the set of nodes, adds and drops them, and applies every RDY count
//!   that the pure planner in `rdy` decides (with its failure backoff; unit-tested there).
//!
//! RDY budget: the manager counts, per connection, `max(rdy, in_flight)` (a connection whose
//! RDY was lowered still holds its in-flight messages) and never grants a connection more
//! than what `max_in_flight` leaves after the others. With more nsqd nodes than
//! `max_in_flight`, RDY 1 rotates over the nodes, as go-nsq does. After a failed message
//! ([`Message::requeue`]) every connection goes to RDY 0 for a growing, capped time, then one
//! connection tests with RDY 1; successes walk the backoff back down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::{check_tcp_address, lookupd_url, output_buffer_timeout_ms, ConsumerConfig};
use crate::conn::{self, ReadError};
use crate::error::{ConfigError, InvalidInput};
use crate::events::{Event, Events};
use crate::message::{ConnCommand, ConnHandle, Message, Outcome};
use crate::protocol::{self, encode, Frame};
use crate::rdy::{self, Change, FailureBackoff, NodeRdy};

/// Messages delivered to this consumer. `recv` returns `None` once the consumer is closed
/// and every connection has ended.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::UnboundedReceiver<Message>,
    /// The manager's loop iterations, so that a test can see it idle (not spinning).
    #[cfg(test)]
    wakeups: Arc<std::sync::atomic::AtomicU64>,
}

impl Messages {
    /// The next message, or `None` after close.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// A message if one is already waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }
}

/// One nsqd as the consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStats {
    /// The nsqd address.
    pub addr: String,
    /// Whether a connection is open and subscribed.
    pub connected: bool,
    /// RDY last sent on it.
    pub rdy: u32,
    /// Messages delivered on it and not yet finished or requeued.
    pub in_flight: u32,
    /// How long nsqd may hold a message for this connection in its output buffer, as nsqd
    /// reported in its IDENTIFY answer (`None` when not connected, or when nsqd runs no flush
    /// timer). The requested [`ConsumerConfig::output_buffer_timeout`] when nsqd granted it,
    /// nsqd's `--output-buffer-timeout` when it refused it.
    pub output_buffer_timeout: Option<Duration>,
}

/// A snapshot of the consumer's connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Every node in use.
    pub nodes: Vec<NodeStats>,
}

impl ConsumerStats {
    /// Open, subscribed connections.
    pub fn connections(&self) -> usize {
        self.nodes.iter().filter(|n| n.connected).count()
    }

    /// Messages in flight over all connections.
    pub fn in_flight(&self) -> u32 {
        self.nodes.iter().map(|n| n.in_flight).sum()
    }
}

enum Control {
    Close,
    /// New nsqlookupd base URLs (see [`Consumer::set_lookupd_http_addresses`]).
    Lookupds(Vec<String>),
}

/// Reports from connection and lookup tasks to the manager.
enum Report {
    Up {
        addr: String,
        handle: Arc<ConnHandle>,
        max_rdy: u32,
        output_buffer_timeout: Option<Duration>,
    },
    Down {
        addr: String,
    },
    Ended {
        addr: String,
    },
    Discovered(BTreeSet<String>),
}

struct NodeCtl {
    stop: AtomicBool,
    wake: Notify,
}

/// How connection writers wake the manager when in-flight counts drop while an RDY target
/// waits for them (more nodes than the budget spreads evenly, or RDY moving between nodes).
///
/// The manager sets `waiting` before it reads the in-flight counts; a writer lowers its count
/// before it reads `waiting`. Both use `SeqCst`, so either the manager sees the lower count
/// or the writer sees `waiting` and notifies (a notification with nobody waiting is kept).
#[derive(Default)]
struct RdyWake {
    waiting: AtomicBool,
    notify: Notify,
}

impl RdyWake {
    /// Called by a writer after it lowered a connection's in-flight count.
    fn drained(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

/// A node's open, subscribed connection.
struct Live {
    handle: Arc<ConnHandle>,
    /// nsqd's max RDY for it, from its IDENTIFY answer.
    max_rdy: u32,
}

struct Node {
    fixed: bool,
    discovered: bool,
    ctl: Arc<NodeCtl>,
    live: Option<Live>,
    rdy: u32,
    stopping: bool,
    /// The live connection's output-buffer timeout, from nsqd's IDENTIFY answer.
    output_buffer_timeout: Option<Duration>,
}

/// What [`Consumer::stats`] reads of one node.
struct NodeSnapshot {
    /// The live connection (its in-flight count is read when asked).
    handle: Option<Arc<ConnHandle>>,
    rdy: u32,
    output_buffer_timeout: Option<Duration>,
}

/// Every node's [`NodeSnapshot`] by address, as the manager last published it.
type Snapshot = Arc<Mutex<BTreeMap<String, NodeSnapshot>>>;

struct Shared {
    control: mpsc::UnboundedSender<Control>,
    events: Events,
    snapshot: Snapshot,
    done: watch::Receiver<bool>,
    topic: String,
    channel: String,
}

/// Consumes one topic on one channel from every nsqd that carries it.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let config = nsq::ConsumerConfig {
///     lookupd_http_addresses: vec!["127.0.0.1:4161".into()],
///     max_in_flight: 200,
///     ..Default::default()
/// };
/// let (consumer, mut messages) = nsq::Consumer::new("sensor_data", "worker", config)?;
/// while let Some(msg) = messages.recv().await {
///     // ... handle msg.body() ...
///     msg.finish();
/// }
/// # consumer.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Consumer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.shared.topic)
            .field("channel", &self.shared.channel)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Starts consuming `topic` on `channel`. Connections are made in the background; the
    /// returned [`Messages`] yields what they deliver. Must be called inside a tokio runtime.
    pub fn new(
        topic: &str,
        channel: &str,
        config: ConsumerConfig,
    ) -> Result<(Consumer, Messages), ConfigError> {
        if config.nsqd_tcp_addresses.is_empty() && config.lookupd_http_addresses.is_empty() {
            return Err(ConfigError::NoSources);
        }
        Self::start(topic, channel, config)
    }

    /// Starts like [`Consumer::new`], but accepts a configuration without any nsqd or
    /// nsqlookupd address: they are to come later through
    /// [`Consumer::set_lookupd_http_addresses`] (e.g. from service discovery). Until then it
    /// consumes from the fixed nsqd addresses only, if any.
    pub fn new_awaiting_lookupds(
        topic: &str,
        channel: &str,
        config: ConsumerConfig,
    ) -> Result<(Consumer, Messages), ConfigError> {
        Self::start(topic, channel, config)
    }

    fn start(
        topic: &str,
        channel: &str,
        config: ConsumerConfig,
    ) -> Result<(Consumer, Messages), ConfigError> {
        if !protocol::is_valid_topic_name(topic) {
            return Err(InvalidInput::TopicName(topic.to_string()).into());
        }
        if !protocol::is_valid_channel_name(channel) {
            return Err(InvalidInput::ChannelName(channel.to_string()).into());
        }
        if config.max_in_flight == 0 {
            return Err(ConfigError::MaxInFlight);
        }
        if let Some(d) = config.output_buffer_timeout {
            output_buffer_timeout_ms(d)?;
        }
        for a in &config.nsqd_tcp_addresses {
            check_tcp_address(a)?;
        }
        let lookupds = config
            .lookupd_http_addresses
            .iter()
            .map(|a| lookupd_url(a))
            .collect::<Result<Vec<_>, _>>()?;

        #[cfg(test)]
        let wakeups: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let (msg_tx, msg_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = watch::channel(false);
        let events = Events::new();
        let snapshot: Snapshot = Arc::default();
        let shared = Arc::new(Shared {
            control: control_tx,
            events: events.clone(),
            snapshot: Arc::clone(&snapshot),
            done: done_rx,
            topic: topic.to_string(),
            channel: channel.to_string(),
        });
        #[allow(unused_mut)]
        let mut manager = Manager::new(
            topic.to_string(),
            channel.to_string(),
            config,
            lookupds,
            events,
            snapshot,
            msg_tx,
        );
        #[cfg(test)]
        {
            manager.wakeups = Arc::clone(&wakeups);
        }
        tokio::spawn(async move {
            manager.run(control_rx).await;
            let _ = done_tx.send(true);
        });
        Ok((
            Consumer { shared },
            Messages {
                rx: msg_rx,
                #[cfg(test)]
                wakeups,
            },
        ))
    }

    /// Replaces the nsqlookupd addresses (`host:port` or `http://host:port`), e.g. with the
    /// instances service discovery lists now. The lookup starts over at once with the new set;
    /// nsqd nodes the new set no longer lists are dropped as with any lookup (a connected one
    /// keeps serving until its connection ends). An empty set stops the lookups and keeps the
    /// nodes found so far. The fixed nsqd addresses are not affected.
    pub fn set_lookupd_http_addresses(&self, addrs: &[String]) -> Result<(), ConfigError> {
        let urls = addrs
            .iter()
            .map(|a| lookupd_url(a))
            .collect::<Result<Vec<_>, _>>()?;
        let _ = self.shared.control.send(Control::Lookupds(urls));
        Ok(())
    }

    /// Every connection event from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The topic consumed.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The channel consumed.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// Connections and in-flight counts right now.
    pub fn stats(&self) -> ConsumerStats {
        let nodes = self
            .shared
            .snapshot
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(addr, node)| NodeStats {
                        addr: addr.clone(),
                        connected: node.handle.is_some(),
                        rdy: node.rdy,
                        output_buffer_timeout: node.output_buffer_timeout,
                        in_flight: node
                            .handle
                            .as_ref()
                            .map(|h| h.in_flight.load(Ordering::Relaxed))
                            .unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ConsumerStats { nodes }
    }

    /// Closes cleanly: sends CLS on every connection, waits (up to `close_timeout`) until
    /// every delivered message is finished or requeued, then closes the connections. Keep
    /// handling messages while this runs; [`Messages::recv`] returns `None` at the end.
    pub async fn close(&self) {
        let _ = self.shared.control.send(Control::Close);
        let mut done = self.shared.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Closes like [`Consumer::close`] for a caller that stops handling at once: every
    /// message delivered but not yet taken from `messages` is requeued (REQ 0) instead of
    /// waiting out `close_timeout`.
    pub async fn close_and_requeue(&self, mut messages: Messages) {
        let _ = self.shared.control.send(Control::Close);
        let mut done = self.shared.done.clone();
        loop {
            tokio::select! {
                m = messages.recv() => match m {
                    Some(m) => drop(m), // Drop sends REQ 0.
                    None => break,
                },
                _ = done.wait_for(|d| *d) => break,
            }
        }
        let _ = done.wait_for(|d| *d).await;
    }
}

struct Manager {
    topic: String,
    channel: String,
    config: ConsumerConfig,
    lookupds: Vec<String>,
    events: Events,
    snapshot: Snapshot,
    msg_tx: Option<mpsc::UnboundedSender<Message>>,
    nodes: BTreeMap<String, Node>,
    /// The nsqd nodes the last successful lookup listed.
    listed: BTreeSet<String>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports_rx: mpsc::UnboundedReceiver<Report>,
    outcomes_tx: mpsc::UnboundedSender<Outcome>,
    outcomes_rx: mpsc::UnboundedReceiver<Outcome>,
    report_success: Arc<AtomicBool>,
    closing: bool,
    backoff: FailureBackoff,
    /// Where RDY 1 starts when there are more connections than `max_in_flight`.
    rotation: usize,
    rdy_wake: Arc<RdyWake>,
    #[cfg(test)]
    wakeups: Arc<std::sync::atomic::AtomicU64>,
}

impl Manager {
    fn new(
        topic: String,
        channel: String,
        config: ConsumerConfig,
        lookupds: Vec<String>,
        events: Events,
        snapshot: Snapshot,
        msg_tx: mpsc::UnboundedSender<Message>,
    ) -> Self {
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        let backoff = FailureBackoff::new(config.backoff_initial, config.backoff_max);
        Manager {
            topic,
            channel,
            config,
            lookupds,
            events,
            snapshot,
            msg_tx: Some(msg_tx),
            nodes: BTreeMap::new(),
            listed: BTreeSet::new(),
            reports_tx,
            reports_rx,
            outcomes_tx,
            outcomes_rx,
            report_success: Arc::new(AtomicBool::new(false)),
            closing: false,
            backoff,
            rotation: 0,
            rdy_wake: Arc::default(),
            #[cfg(test)]
            wakeups: Arc::default(),
        }
    }

    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        for addr in self.config.nsqd_tcp_addresses.clone() {
            self.add_node(addr, true);
        }
        let mut lookup_task = self.spawn_lookup();
        // False once every `Consumer` handle is gone: `recv` would then return `None` at once,
        // for ever, and the loop would spin while the connections drain.
        let mut control_open = true;
        // An RDY target waits for in-flight messages to end (see `RdyWake`).
        let mut unmet = false;
        let rdy_wake = Arc::clone(&self.rdy_wake);
        let mut rotate = tokio::time::interval(
            self.config
                .rdy_redistribute_interval
                .max(Duration::from_millis(10)),
        );
        rotate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.closing && self.nodes.is_empty() {
                break;
            }
            let pause_until = self.backoff.paused_until();
            let far = Instant::now() + Duration::from_secs(3600);
            #[cfg(test)]
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                c = control.recv(), if control_open => match c {
                    Some(Control::Lookupds(urls)) => {
                        if !self.closing && urls != self.lookupds {
                            tracing::info!(topic = %self.topic, lookupd = ?urls, "nsqlookupd addresses replaced");
                            if let Some(t) = lookup_task.take() { t.abort(); }
                            self.lookupds = urls;
                            lookup_task = self.spawn_lookup();
                        }
                        continue;
                    }
                    // close(), or every handle dropped without close(): close all the same.
                    c => {
                        control_open = c.is_some();
                        if !self.closing {
                            self.start_close();
                            if let Some(t) = &lookup_task { t.abort(); }
                        }
                    }
                },
                Some(report) = self.reports_rx.recv() => self.on_report(report),
                Some(outcome) = self.outcomes_rx.recv() => self.on_outcome(outcome),
                _ = tokio::time::sleep_until(pause_until.unwrap_or(far)), if pause_until.is_some() => {
                    self.backoff.pause_over();
                }
                _ = rdy_wake.notify.notified(), if unmet => {}
                _ = rotate.tick() => {
                    // With nothing to rotate, the targets are still re-applied below in case
                    // in-flight messages drained.
                    let live = self.nodes.values().filter(|n| n.live.is_some()).count();
                    self.rotation = rdy::rotate(self.rotation, live, self.config.max_in_flight);
                }
            }
            self.rdy_wake.waiting.store(true, Ordering::SeqCst);
            unmet = self.rebalance();
            self.rdy_wake.waiting.store(unmet, Ordering::SeqCst);
            self.publish_snapshot();
        }
        if let Some(t) = lookup_task {
            t.abort();
        }
        // Dropping the last sender ends `Messages`.
        self.msg_tx = None;
    }

    /// Starts the lookup task for the current nsqlookupd set (none for an empty set).
    fn spawn_lookup(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.lookupds.is_empty() {
            return None;
        }
        Some(tokio::spawn(lookup_loop(
            self.lookupds.clone(),
            self.topic.clone(),
            self.config.lookupd_poll_interval,
            self.reports_tx.clone(),
            self.events.clone(),
        )))
    }

    fn add_node(&mut self, addr: String, fixed: bool) {
        if let Some(node) = self.nodes.get_mut(&addr) {
            node.fixed |= fixed;
            node.discovered |= !fixed;
            return;
        }
        let Some(msg_tx) = self.msg_tx.clone() else {
            return;
        };
        let ctl = Arc::new(NodeCtl {
            stop: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let task = ConnTask {
            addr: addr.clone(),
            topic: self.topic.clone(),
            channel: self.channel.clone(),
            config: self.config.clone(),
            ctl: Arc::clone(&ctl),
            reports: self.reports_tx.clone(),
            outcomes: self.outcomes_tx.clone(),
            report_success: Arc::clone(&self.report_success),
            msg_tx,
            events: self.events.clone(),
            rdy_wake: Arc::clone(&self.rdy_wake),
        };
        tokio::spawn(task.run());
        self.events.emit(Event::NodeAdded { addr: addr.clone() });
        self.nodes.insert(
            addr,
            Node {
                fixed,
                discovered: !fixed,
                ctl,
                live: None,
                rdy: 0,
                stopping: false,
                output_buffer_timeout: None,
            },
        );
    }

    fn stop_node(&mut self, addr: &str) {
        if let Some(node) = self.nodes.get_mut(addr) {
            if node.stopping {
                return;
            }
            node.stopping = true;
            node.ctl.stop.store(true, Ordering::SeqCst);
            node.ctl.wake.notify_one();
            if let Some(live) = &node.live {
                let _ = live.handle.tx.send(ConnCommand::Cls);
            }
        }
    }

    fn start_close(&mut self) {
        self.closing = true;
        let addrs: Vec<String> = self.nodes.keys().cloned().collect();
        for addr in addrs {
            self.stop_node(&addr);
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Up {
                addr,
                handle,
                max_rdy,
                output_buffer_timeout,
            } => {
                if let Some(node) = self.nodes.get_mut(&addr) {
                    if node.stopping {
                        let _ = handle.tx.send(ConnCommand::Cls);
                    }
                    node.live = Some(Live { handle, max_rdy });
                    node.rdy = 0;
                    node.output_buffer_timeout = output_buffer_timeout;
                }
            }
            Report::Down { addr } => {
                if let Some(node) = self.nodes.get_mut(&addr) {
                    node.live = None;
                    node.rdy = 0;
                    node.output_buffer_timeout = None;
                }
                // A discovered node that lookupd stopped listing is kept only while it is
                // connected; once its connection ends it is dropped, not retried.
                if self.unlisted(&addr) {
                    tracing::info!(nsqd = %addr, topic = %self.topic, "disconnected nsqd no longer listed by nsqlookupd: dropping it");
                    self.stop_node(&addr);
                }
            }
            Report::Ended { addr } => {
                if self.nodes.remove(&addr).is_some() {
                    self.events.emit(Event::NodeRemoved { addr });
                }
            }
            Report::Discovered(found) => {
                if self.closing {
                    return;
                }
                for addr in &found {
                    self.add_node(addr.clone(), false);
                }
                self.listed = found;
                // Drop discovered nodes that no lookupd lists and that are not connected (an
                // nsqd that went away). A connected node that vanished from lookupd (a lookupd
                // restart, an nsqd between two pings) keeps serving until its connection
                // ends: dropping it would cut consumers off from a healthy nsqd.
                let gone: Vec<String> = self
                    .nodes
                    .keys()
                    .filter(|a| self.unlisted(a))
                    .filter(|a| self.nodes.get(*a).is_some_and(|n| n.live.is_none()))
                    .cloned()
                    .collect();
                for addr in gone {
                    tracing::info!(nsqd = %addr, topic = %self.topic, "nsqlookupd no longer lists this unreachable nsqd: dropping it");
                    self.stop_node(&addr);
                }
            }
        }
    }

    /// True for a node found only through lookupd that the last lookup no longer listed.
    fn unlisted(&self, addr: &str) -> bool {
        self.nodes
            .get(addr)
            .is_some_and(|n| n.discovered && !n.fixed && !self.listed.contains(addr))
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        let now = Instant::now();
        let change = match outcome {
            Outcome::Failure => self.backoff.failure(now),
            Outcome::Success => self.backoff.success(now),
        };
        match change {
            Change::None | Change::Eased { .. } => {}
            Change::Failed { level, pause } => {
                tracing::warn!(level, pause = ?pause, topic = %self.topic, channel = %self.channel, "message failed: backing off (RDY 0)");
                self.report_success.store(true, Ordering::Relaxed);
            }
            Change::Resumed => {
                tracing::info!(topic = %self.topic, channel = %self.channel, "backoff over: resuming full RDY");
                self.report_success.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Sets RDY on every connection towards its target without breaking the budget (see
    /// [`rdy::plan`]). Returns true when some target could not be met yet (in-flight still
    /// draining). The caller has set `RdyWake::waiting` before: the in-flight counts are read
    /// after it.
    fn rebalance(&mut self) -> bool {
        let (addrs, views): (Vec<String>, Vec<NodeRdy>) = self
            .nodes
            .iter()
            .map(|(addr, node)| {
                let view = match &node.live {
                    Some(live) => NodeRdy {
                        connected: true,
                        stopping: node.stopping,
                        rdy: node.rdy,
                        in_flight: live.handle.in_flight.load(Ordering::SeqCst),
                        max_rdy: live.max_rdy,
                    },
                    None => NodeRdy {
                        stopping: node.stopping,
                        rdy: node.rdy,
                        ..NodeRdy::default()
                    },
                };
                (addr.clone(), view)
            })
            .unzip();
        let plan = rdy::plan(
            self.config.max_in_flight,
            self.closing,
            self.backoff.phase(),
            self.rotation,
            &views,
        );
        // Lower first, then raise, so that the budget holds at every step.
        for change in plan.lower.iter().chain(&plan.raise) {
            let Some(node) = self.nodes.get_mut(&addrs[change.node]) else {
                continue;
            };
            node.rdy = change.rdy;
            if let (Some(live), false) = (&node.live, node.stopping) {
                let _ = live.handle.tx.send(ConnCommand::Rdy(change.rdy));
            }
        }
        plan.unmet
    }

    fn publish_snapshot(&self) {
        if let Ok(mut s) = self.snapshot.lock() {
            s.clear();
            for (addr, node) in &self.nodes {
                s.insert(
                    addr.clone(),
                    NodeSnapshot {
                        handle: node.live.as_ref().map(|l| Arc::clone(&l.handle)),
                        rdy: node.rdy,
                        output_buffer_timeout: node.output_buffer_timeout,
                    },
                );
            }
        }
    }
}

/// A connection that nsqd identified and subscribed.
struct Subscribed {
    connection: conn::Connection,
    /// nsqd's max RDY count.
    max_rdy: u32,
    /// The output-buffer timeout in effect (see [`NodeStats::output_buffer_timeout`]).
    output_buffer_timeout: Option<Duration>,
}

/// Everything one connection task needs.
struct ConnTask {
    addr: String,
    topic: String,
    channel: String,
    config: ConsumerConfig,
    ctl: Arc<NodeCtl>,
    reports: mpsc::UnboundedSender<Report>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    report_success: Arc<AtomicBool>,
    msg_tx: mpsc::UnboundedSender<Message>,
    events: Events,
    rdy_wake: Arc<RdyWake>,
}

impl ConnTask {
    async fn run(self) {
        let mut backoff = Backoff::new(
            self.config.connection.reconnect_initial,
            self.config.connection.reconnect_max,
        );
        loop {
            if self.ctl.stop.load(Ordering::SeqCst) {
                break;
            }
            let reason = match self.connect_and_subscribe().await {
                Ok(Subscribed {
                    connection,
                    max_rdy,
                    output_buffer_timeout,
                }) => {
                    backoff.reset();
                    let (tx, rx) = mpsc::unbounded_channel();
                    let handle = Arc::new(ConnHandle {
                        addr: self.addr.clone(),
                        tx,
                        in_flight: AtomicU32::new(0),
                        report_success: Arc::clone(&self.report_success),
                        outcomes: self.outcomes.clone(),
                    });
                    self.events.emit(Event::Connected {
                        addr: self.addr.clone(),
                    });
                    let _ = self.reports.send(Report::Up {
                        addr: self.addr.clone(),
                        handle: Arc::clone(&handle),
                        max_rdy,
                        output_buffer_timeout,
                    });
                    let end = self.pump(connection, &handle, rx).await;
                    handle.in_flight.store(0, Ordering::Relaxed);
                    let _ = self.reports.send(Report::Down {
                        addr: self.addr.clone(),
                    });
                    match end {
                        Ok(()) => {
                            self.events.emit(Event::Disconnected {
                                addr: self.addr.clone(),
                                reason: "closed (CLS)".into(),
                            });
                            break;
                        }
                        Err(reason) => reason,
                    }
                }
                Err(reason) => reason,
            };
            self.events.emit(Event::Disconnected {
                addr: self.addr.clone(),
                reason,
            });
            if self.ctl.stop.load(Ordering::SeqCst) {
                break;
            }
            let delay = backoff.next_delay();
            self.events.emit(Event::Reconnecting {
                addr: self.addr.clone(),
                attempt: backoff.attempt(),
                delay,
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.ctl.wake.notified() => {}
            }
        }
        let _ = self.reports.send(Report::Ended {
            addr: self.addr.clone(),
        });
    }

    /// Connects, identifies and subscribes.
    async fn connect_and_subscribe(&self) -> Result<Subscribed, String> {
        let mut connection = self.connect().await?;
        let mut out = BytesMut::new();
        encode::sub(&mut out, &self.topic, &self.channel);
        connection
            .writer
            .send(&out)
            .await
            .map_err(|e| format!("SUB: {e}"))?;
        let resp = conn::handshake_response(
            &self.addr,
            "SUB",
            self.config.connection.connect_timeout,
            &mut connection.reader,
        )
        .await
        .map_err(|e| e.to_string())?;
        if resp.as_ref() != protocol::OK {
            return Err(format!(
                "unexpected answer to SUB: {}",
                String::from_utf8_lossy(&resp)
            ));
        }
        let max_rdy = u32::try_from(connection.identify.max_rdy_count)
            .ok()
            .filter(|m| *m > 0)
            .unwrap_or(2500);
        let output_buffer_timeout = u64::try_from(connection.identify.output_buffer_timeout)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        Ok(Subscribed {
            connection,
            max_rdy,
            output_buffer_timeout,
        })
    }

    /// Opens and identifies a connection, asking for the configured output-buffer timeout.
    /// When nsqd refuses it (below its `--min-output-buffer-timeout`), connects again without
    /// it: messages still flow, on nsqd's default flush timer, and the event (and one WARN per
    /// consumer) says which nsqd flag to change. Each new connection asks again.
    async fn connect(&self) -> Result<conn::Connection, String> {
        let requested = self.config.output_buffer_timeout;
        // Checked in Consumer::new; a value that fails here is simply not asked for.
        let ms = requested.and_then(|d| output_buffer_timeout_ms(d).ok());
        match conn::connect(&self.addr, &self.config.connection, ms).await {
            Ok(c) => Ok(c),
            Err(e) if ms.is_some() && conn::refused_output_buffer_timeout(&e) => {
                self.events.emit(Event::OutputBufferTimeoutRefused {
                    addr: self.addr.clone(),
                    requested: requested.unwrap_or_default(),
                    reason: e.to_string(),
                });
                conn::connect(&self.addr, &self.config.connection, None)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs a subscribed connection. `Ok(())` after a clean CLS drain, `Err(reason)` when it
    /// failed.
    async fn pump(
        &self,
        connection: conn::Connection,
        handle: &Arc<ConnHandle>,
        mut rx: mpsc::UnboundedReceiver<ConnCommand>,
    ) -> Result<(), String> {
        let conn::Connection {
            mut reader,
            mut writer,
            ..
        } = connection;
        let nop = Notify::new();
        let close_wait = AtomicBool::new(false);
        let drained = Notify::new();
        let max_attempts = self.config.max_attempts;
        let close_timeout = self.config.close_timeout;

        let read_loop = async {
            let mut last_error: Option<String> = None;
            loop {
                let frame = match reader.next().await {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        return Err(match &last_error {
                            Some(e) => format!("nsqd closed the connection after: {e}"),
                            None => "nsqd closed the connection".to_string(),
                        })
                    }
                    Err(ReadError::Io(e)) => return Err(format!("read failed: {e}")),
                    Err(ReadError::Protocol(e)) => return Err(e.to_string()),
                };
                match frame {
                    Frame::Message(raw) => {
                        handle.in_flight.fetch_add(1, Ordering::Relaxed);
                        if close_wait.load(Ordering::SeqCst) {
                            // nsqd may send one message it had picked before CLS: wait for it.
                            drained.notify_one();
                        }
                        let msg = Message::new(raw, Arc::clone(handle), max_attempts);
                        if let Err(mpsc::error::SendError(msg)) = self.msg_tx.send(msg) {
                            // Nobody reads any more: the drop requeues it.
                            drop(msg);
                        }
                    }
                    Frame::Response(r) if r.as_ref() == protocol::HEARTBEAT => nop.notify_one(),
                    Frame::Response(r) if r.as_ref() == protocol::CLOSE_WAIT => {
                        tracing::debug!(nsqd = %self.addr, "CLOSE_WAIT: draining in-flight messages");
                        close_wait.store(true, Ordering::SeqCst);
                        drained.notify_one();
                    }
                    Frame::Response(r) => {
                        tracing::debug!(nsqd = %self.addr, response = %String::from_utf8_lossy(&r), "response");
                    }
                    Frame::Error(e) => {
                        // E_FIN_FAILED, E_REQ_FAILED, E_TOUCH_FAILED are not fatal (the message
                        // timed out and was redelivered); fatal errors are followed by nsqd
                        // closing the connection, which the read above reports.
                        let text = String::from_utf8_lossy(&e).into_owned();
                        tracing::warn!(nsqd = %self.addr, error = %text, "nsqd error");
                        last_error = Some(text);
                    }
                }
            }
        };

        let write_loop = async {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            let mut deadline: Option<Instant> = None;
            // After CLOSE_WAIT with nothing in flight, nsqd may still deliver a message it
            // picked just before CLS (its message pump runs beside the command loop). Linger
            // briefly so that such a message is handled and finished, not redelivered.
            let mut linger: Option<Instant> = None;
            loop {
                let far = Instant::now() + Duration::from_secs(3600);
                if close_wait.load(Ordering::SeqCst)
                    && handle.in_flight.load(Ordering::Relaxed) == 0
                {
                    match linger {
                        Some(t) if Instant::now() >= t => return Ok(()),
                        Some(_) => {}
                        None => linger = Some(Instant::now() + CLOSE_LINGER),
                    }
                } else {
                    linger = None;
                }
                let mut finished = 0u32;
                tokio::select! {
                    biased;
                    _ = nop.notified() => encode::nop(&mut buf),
                    _ = drained.notified() => {}
                    _ = tokio::time::sleep_until(linger.unwrap_or(far)), if linger.is_some() => {}
                    _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                        let left = handle.in_flight.load(Ordering::Relaxed);
                        tracing::warn!(nsqd = %self.addr, in_flight = left, "close timeout: closing with messages in flight (nsqd requeues them)");
                        return Ok(());
                    }
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => {
                            if matches!(cmd, ConnCommand::Cls) && deadline.is_none() {
                                deadline = Some(Instant::now() + close_timeout);
                            }
                            finished += encode_cmd(&mut buf, cmd);
                        }
                        None => return Err("connection handle dropped".to_string()),
                    },
                }
                while buf.len() < 64 * 1024 {
                    match rx.try_recv() {
                        Ok(cmd) => {
                            if matches!(cmd, ConnCommand::Cls) && deadline.is_none() {
                                deadline = Some(Instant::now() + close_timeout);
                            }
                            finished += encode_cmd(&mut buf, cmd);
                        }
                        Err(_) => break,
                    }
                }
                if !buf.is_empty() {
                    writer.send(&buf).await?;
                    buf.clear();
                }
                if finished > 0 {
                    // Saturating: a FIN for a message that timed out is still counted once.
                    let _ =
                        handle
                            .in_flight
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                                Some(v.saturating_sub(finished))
                            });
                    self.rdy_wake.drained();
                }
            }
        };

        let result = tokio::select! {
            r = read_loop => r,
            r = write_loop => r,
        };
        if result.is_ok() {
            let _ = writer.shutdown().await;
        }
        result
    }
}

/// How long a closing connection waits, with nothing in flight, for a late message.
const CLOSE_LINGER: Duration = Duration::from_millis(30);

/// Encodes one command; returns 1 when it ends a message's flight (FIN or REQ).
fn encode_cmd(buf: &mut BytesMut, cmd: ConnCommand) -> u32 {
    match cmd {
        ConnCommand::Fin(id) => {
            encode::fin(buf, &id);
            1
        }
        ConnCommand::Req(id, delay) => {
            encode::req(buf, &id, delay);
            1
        }
        ConnCommand::Touch(id) => {
            encode::touch(buf, &id);
            0
        }
        ConnCommand::Rdy(n) => {
            encode::rdy(buf, n);
            0
        }
        ConnCommand::Cls => {
            encode::cls(buf);
            0
        }
    }
}

#[derive(serde::Deserialize)]
struct LookupResponse {
    #[serde(default)]
    producers: Vec<LookupProducer>,
}

#[derive(serde::Deserialize)]
struct LookupProducer {
    broadcast_address: String,
    tcp_port: u16,
}

/// Asks every lookupd on an interval; reports the union of the nodes of those that answered.
async fn lookup_loop(
    urls: Vec<String>,
    topic: String,
    interval: Duration,
    reports: mpsc::UnboundedSender<Report>,
    events: Events,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            events.emit(Event::LookupFailed {
                url: urls.join(","),
                reason: format!("cannot build an HTTP client: {e}"),
            });
            return;
        }
    };
    let mut schedule = PollSchedule::new(interval);
    loop {
        let mut set = tokio::task::JoinSet::new();
        for url in &urls {
            let client = client.clone();
            let url = url.clone();
            let topic = topic.clone();
            set.spawn(async move {
                let r = query_lookupd(&client, &url, &topic).await;
                (url, r)
            });
        }
        let mut found = BTreeSet::new();
        let mut any_ok = false;
        while let Some(joined) = set.join_next().await {
            let Ok((url, result)) = joined else { continue };
            match result {
                Ok(nodes) => {
                    any_ok = true;
                    found.extend(nodes);
                }
                Err(reason) => events.emit(Event::LookupFailed { url, reason }),
            }
        }
        let carried = any_ok && !found.is_empty();
        if any_ok {
            events.emit(Event::Looked {
                nodes: found.iter().cloned().collect(),
            });
            if reports.send(Report::Discovered(found)).is_err() {
                return;
            }
        }
        // An answer listing no nsqd (or none at all) means the topic may appear any moment:
        // poll fast, backing off to the interval.
        let delay = schedule.next(carried);
        let jitter = rand::Rng::random_range(&mut rand::rng(), 0.9..1.1);
        tokio::time::sleep(delay.mul_f64(jitter)).await;
    }
}

/// First pause of the fast lookupd polling, while no nsqd carries the topic.
const FAST_POLL_INITIAL: Duration = Duration::from_millis(100);

/// When to ask nsqlookupd again. While no nsqd is known for the topic (nobody has published
/// it yet, or every node carrying it went away), the topic may appear any moment and a
/// consumer polling only every `interval` would find it up to one interval late, at every
/// hop of a pipeline started before its producers. So the pause starts at
/// [`FAST_POLL_INITIAL`] and doubles back up to `interval`; once a node is known, it is
/// `interval`. A topic that never appears costs a handful of extra polls, then the usual
/// rate.
#[derive(Debug, Clone)]
struct PollSchedule {
    /// `--lookupd-poll-interval`.
    interval: Duration,
    /// Polls in a row that found no nsqd.
    empty: u32,
}

impl PollSchedule {
    fn new(interval: Duration) -> Self {
        Self { interval, empty: 0 }
    }

    /// The pause before the next poll, after one that found some nsqd (`found`) or none.
    fn next(&mut self, found: bool) -> Duration {
        if found {
            self.empty = 0;
            return self.interval;
        }
        let delay = crate::backoff::exponential(
            FAST_POLL_INITIAL.min(self.interval),
            self.interval,
            self.empty,
        );
        self.empty = self.empty.saturating_add(1);
        delay
    }
}

async fn query_lookupd(
    client: &reqwest::Client,
    base: &str,
    topic: &str,
) -> Result<BTreeSet<String>, String> {
    let url = format!("{base}/lookup");
    let resp = client
        .get(&url)
        .query(&[("topic", topic)])
        .header("Accept", "application/vnd.nsq; version=1.0")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        // TOPIC_NOT_FOUND: nobody has published it yet.
        return Ok(BTreeSet::new());
    }
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let body: LookupResponse = resp
        .json()
        .await
        .map_err(|e| format!("bad /lookup answer: {e}"))?;
    Ok(body
        .producers
        .into_iter()
        .map(|p| join_host_port(&p.broadcast_address, p.tcp_port))
        .collect())
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod poll_tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn polls_fast_while_no_nsqd_carries_the_topic_then_backs_off_to_the_interval() {
        let mut s = PollSchedule::new(Duration::from_secs(5));
        let pauses: Vec<Duration> = (0..9).map(|_| s.next(false)).collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(ms)
        );
        // Found: the interval; lost again: fast from the start.
        assert_eq!(s.next(true), ms(5000));
        assert_eq!(s.next(true), ms(5000));
        assert_eq!(s.next(false), ms(100));
        assert_eq!(s.next(false), ms(200));
    }

    #[test]
    fn an_interval_shorter_than_the_fast_start_is_kept() {
        let mut s = PollSchedule::new(ms(50));
        assert_eq!(
            (s.next(false), s.next(false), s.next(true)),
            (ms(50), ms(50), ms(50))
        );
        let mut s = PollSchedule::new(ms(300));
        let pauses: Vec<Duration> = (0..4).map(|_| s.next(false)).collect();
        assert_eq!(pauses, [100, 200, 300, 300].map(ms));
    }

    #[test]
    fn never_overflows() {
        let mut s = PollSchedule::new(Duration::from_secs(3600));
        for _ in 0..1000 {
            assert!(s.next(false) <= Duration::from_secs(3600));
        }
    }
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;
    use crate::testkit::Nsqd;

    /// A consumer started without sources follows the nsqlookupd set it is given: it finds
    /// the nsqd of the first lookupd, then, once the set is replaced by a second lookupd (with
    /// its own nsqd), that one's nsqd too; the first nsqd, connected, keeps serving.
    #[tokio::test]
    async fn follows_replaced_lookupd_addresses() {
        use crate::testkit::Nsqlookupd;
        let (l1, l2) = (Nsqlookupd::start().await, Nsqlookupd::start().await);
        let n1 = Nsqd::builder().lookupd(&l1).start().await;
        let n2 = Nsqd::builder().lookupd(&l2).start().await;
        for n in [&n1, &n2] {
            n.create_channel("moved", "test").await;
        }
        let config = ConsumerConfig {
            lookupd_poll_interval: Duration::from_millis(100),
            ..Default::default()
        };
        assert!(matches!(
            Consumer::new("moved", "test", config.clone()),
            Err(ConfigError::NoSources)
        ));
        let (consumer, mut messages) =
            Consumer::new_awaiting_lookupds("moved", "test", config).unwrap();
        assert!(consumer
            .set_lookupd_http_addresses(&["no port".into()])
            .is_err());
        // 20 s: nsqd registers its topic with nsqlookupd within a second of the channel's
        // creation, and the lookup runs every 100 ms; the margin is for a loaded machine.
        async fn recv(messages: &mut Messages) -> Vec<u8> {
            let msg = tokio::time::timeout(Duration::from_secs(20), messages.recv())
                .await
                .expect("a message within 20 s")
                .expect("the consumer is open");
            let body = msg.body().to_vec();
            msg.finish();
            body
        }
        let p1 = crate::Producer::connect(&n1.tcp_address(), Default::default()).unwrap();
        let p2 = crate::Producer::connect(&n2.tcp_address(), Default::default()).unwrap();
        p1.publish("moved", &b"one"[..]).await.unwrap();
        p2.publish("moved", &b"two"[..]).await.unwrap();
        consumer
            .set_lookupd_http_addresses(&[l1.http_address()])
            .unwrap();
        assert_eq!(recv(&mut messages).await, b"one");
        assert_eq!(consumer.stats().nodes.len(), 1, "only nsqd 1 is known");

        consumer
            .set_lookupd_http_addresses(&[format!("http://{}", l2.http_address())])
            .unwrap();
        assert_eq!(recv(&mut messages).await, b"two");
        p1.publish("moved", &b"three"[..]).await.unwrap();
        assert_eq!(
            recv(&mut messages).await,
            b"three",
            "the connected nsqd 1 keeps serving"
        );
        consumer.close().await;
        p1.close().await;
        p2.close().await;
    }

    /// Every `Consumer` handle dropped without `close()` closes the consumer, and the manager
    /// waits idle (not spinning) while the connection drains, then ends.
    ///
    /// The observable is the manager's loop count, not CPU time: a spinning manager turns its
    /// loop at least thousands of times in the window even with a small share of a loaded
    /// CPU (each turn is microseconds), while an idle one wakes only for events (none here)
    /// and the RDY rotation tick (every 2 s): a handful at most.
    #[tokio::test]
    async fn dropped_handles_close_without_spinning() {
        let nsqd = Nsqd::start().await;
        nsqd.create_channel("dropped", "test").await;
        let producer =
            crate::Producer::connect(&nsqd.tcp_address(), crate::ProducerConfig::default())
                .unwrap();
        producer
            .publish("dropped", bytes::Bytes::from_static(b"held"))
            .await
            .unwrap();
        let config = ConsumerConfig {
            nsqd_tcp_addresses: vec![nsqd.tcp_address()],
            // Longer than the test: the held message keeps the connection draining.
            close_timeout: Duration::from_secs(120),
            ..Default::default()
        };
        let (consumer, mut messages) = Consumer::new("dropped", "test", config).unwrap();
        let held = tokio::time::timeout(Duration::from_secs(20), messages.recv())
            .await
            .expect("a message within 20 s")
            .expect("the consumer is open");
        drop(consumer);

        // The manager has started to close (CLS sent); the held message keeps it waiting.
        let before = messages.wakeups.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let turns = messages.wakeups.load(Ordering::Relaxed) - before;
        assert!(
            turns < 100,
            "the manager turned {turns} times in 500 ms with nothing to do"
        );

        // Finishing the last message lets the connection close and the manager end, which
        // ends the message stream.
        held.finish();
        let end = tokio::time::timeout(Duration::from_secs(20), messages.recv()).await;
        assert!(
            matches!(end, Ok(None)),
            "the stream ends once the manager ended"
        );
        producer.close().await;
    }
}
