//! Gap detection: which readings are missing, when to ask the sensor for them again, and
//! when to give up and report them as lost. Free of I/O and of the clock (every call takes
//! `now`), so that it is tested without waiting.
//!
//! # The model
//!
//! For every sensor epoch the tracker knows three things:
//!
//! * the seqs **written** to the output (the de-duplication state, [`Seen`]);
//! * the highest seq the sensor **announced** ([`messages::SensorStatus`]): without it, readings
//!   lost at the tail of an epoch would be invisible, since no later seq reveals them;
//! * the seqs reported **lost** (answered unavailable by the sensor, or never answered).
//!
//! A seq is *missing* when it is at most the epoch's high-water mark (the highest seq written
//! or announced) and neither written nor lost. With several workers, results arrive out of
//! order, so a missing seq is normal for a moment: it becomes *due* only once the high-water
//! mark has been at or above it for the grace period (`--gap-grace`). The tracker keeps a
//! short history of the high-water mark for that purpose, so that the grace is measured per
//! seq, from the moment the seq could first be known to exist.
//!
//! # Asking, retrying, giving up
//!
//! Due seqs are grouped into gaps (ranges). [`Gaps::tick`] asks for a gap at once, then again
//! after a pause that doubles from `backoff` up to `backoff_max`, at most `max_attempts`
//! times; a gap still missing after its last request's pause is reported lost
//! ([`LossReason::Unanswered`]). Seqs that arrive meanwhile simply leave the gap. Gaps close
//! to each other (at most `coalesce` written seqs apart) are asked for in one request, at most
//! `max_span` seqs long: the sensor replays a few readings twice, the logger drops the
//! repeats. A sensor's answer that a range is no longer in its history
//! ([`Gaps::unavailable`], then [`Gaps::mark_lost`]) ends the asking for that range at once.
//!
//! # Where an epoch starts for this logger
//!
//! A logger cannot receive what went by before it consumed: results published before its
//! channel existed are not in it (NSQ copies a message to the channels a topic has when it is
//! published), and before its results consumer has a connection with RDY > 0 nothing arrives
//! at all, while the sensor's announcements may already come in on another topic. Counting
//! those readings as missing would ask the sensor to push them through the workers again, at
//! every start of the suite and whenever a logger joins (a *replay storm*). So:
//!
//! * nothing is asked for before the results consumer is consuming ([`Gaps::start_consuming`]);
//!   the grace of what was known before counts from that moment;
//! * every epoch has a *floor*, the first seq this logger answers for; below it nothing is
//!   missing. It is 1 for an epoch already in the output or the loss list at start (this
//!   logger was consuming it before), for an epoch that began after this logger started
//!   consuming (its epoch number is the sensor's start time in Unix milliseconds, so the
//!   logger compares it with its own clock), for an epoch whose seq 1 arrived, and with
//!   `--backfill`. Otherwise it is fixed a grace period after the epoch's first result arrived:
//!   above every hole among the seqs that had arrived within half a grace period (the results
//!   that the workers finished out of order while the channel was being created: some went by
//!   before it existed, some after), and at least the lowest seq written. Until then nothing of
//!   the epoch is asked for;
//! * with `backfill`, the floor is 1 everywhere: a late logger asks for exactly the readings it
//!   missed, once results flow.
//!
//! A real loss below the floor (for example an nsqd crash just as a logger joins an epoch that
//! began earlier) is not asked for by that logger; it is by a logger that was consuming, and
//! the replayed readings then reach every channel, this one's too.
//!
//! # Bounded whatever arrives
//!
//! Announcements, results and answers on the topics are untrusted: anyone who reaches nsqd
//! can publish them. So no message may cost more than a bounded amount of work or memory:
//!
//! * seqs count for gaps only up to `replay_window` beyond the epoch's covered prefix (every
//!   seq up to it written or lost), so a forged `last_seq` or seq of 10^15 makes at most a
//!   window missing, looked at a window at a time;
//! * what is below the oldest seq the sensor announced it holds is lost at once, unasked;
//! * requests are made a slice at a time, at most `max_requests_per_tick` per tick over all
//!   epochs; a gap is never materialised as a list of requests;
//! * at most `max_epochs` epochs are tracked (the one with the fewest readings
//!   written, then the least recently active, is forgotten), and
//!   a complete epoch leaves a minute after its final announcement;
//! * an "unavailable" answer counts only up to the epoch's high-water mark;
//! * `GET /gaps` lists at most [`REPORT_MAX_EPOCHS`] epochs of [`REPORT_MAX_RANGES`] ranges.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::seen::{lowest, EpochSet, Seen, SeqSet};

/// How gaps are detected and asked for (from the logger's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapSettings {
    /// How long a seq may be missing before it is asked for (`--gap-grace`).
    pub grace: Duration,
    /// Requests per gap before it is reported lost (`--replay-max-attempts`, at least 1).
    pub max_attempts: u32,
    /// Pause after the first request before asking again (`--replay-backoff`); doubles per
    /// request.
    pub backoff: Duration,
    /// Longest pause between two requests for the same gap.
    pub backoff_max: Duration,
    /// Gaps separated by at most this many written seqs are asked for in one request.
    pub coalesce: u64,
    /// Most seqs in one request.
    pub max_span: u64,
    /// Most requests made in one tick, over all sensor epochs: a huge gap (or thousands of
    /// them) is asked for a slice at a time, never materialised whole.
    pub max_requests_per_tick: usize,
    /// How far beyond the covered prefix of an epoch (every seq up to it written or lost)
    /// written or announced seqs count for gaps. Longer than any sensor history, so that a
    /// real gap is seen whole, but a forged seq of 10^15 does not make 10^15 seqs missing:
    /// such a gap is looked at a window at a time.
    pub replay_window: u64,
    /// Most sensor epochs tracked; past it the one with the fewest readings written, then the
    /// least recently active, is forgotten
    /// (`--max-sensor-epochs`).
    pub max_epochs: usize,
    /// Ask for the readings of an epoch that this logger could not have received, because
    /// they went by before it consumed (`--backfill`): see [Where an epoch starts for this
    /// logger](self#where-an-epoch-starts-for-this-logger).
    pub backfill: bool,
}

impl Default for GapSettings {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3),
            max_attempts: 5,
            backoff: Duration::from_secs(2),
            backoff_max: Duration::from_secs(30),
            coalesce: 16,
            max_span: 10_000,
            max_requests_per_tick: 16,
            replay_window: 1_000_000,
            max_epochs: 4096,
            backfill: false,
        }
    }
}

/// A replay request to publish: "sensor, re-publish `from..=to` of this epoch".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The sensor that should replay.
    pub sensor_id: String,
    /// The epoch of the missing readings.
    pub epoch: u64,
    /// First seq asked for.
    pub from: u64,
    /// Last seq asked for (inclusive).
    pub to: u64,
    /// The highest request number of the gaps in it (1 for a first request).
    pub attempt: u32,
}

/// Why readings are reported lost, or that they are not lost after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossReason {
    /// The sensor answered that they are no longer in its history.
    Unavailable,
    /// The sensor did not answer `--replay-max-attempts` requests (gone, or another epoch).
    Unanswered,
    /// Not a loss: readings reported lost earlier arrived after all (late, for example from
    /// an overloaded sensor) and are in the output. Cancels the earlier record's range.
    Recovered,
}

impl LossReason {
    /// The name, as in the loss list and the metric's `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::Unavailable => "unavailable",
            LossReason::Unanswered => "unanswered",
            LossReason::Recovered => "recovered",
        }
    }
}

/// A range of readings given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The sensor.
    pub sensor_id: String,
    /// Its epoch.
    pub epoch: u64,
    /// First lost seq.
    pub from: u64,
    /// Last lost seq (inclusive).
    pub to: u64,
    /// Why.
    pub reason: LossReason,
}

impl Loss {
    /// How many readings the range holds.
    pub fn count(&self) -> u64 {
        self.to - self.from + 1
    }
}

/// What one [`Gaps::tick`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TickOutcome {
    /// Requests to publish now.
    pub asks: Vec<Ask>,
    /// Gaps given up on (already recorded as lost in the tracker; the caller reports and
    /// persists them): [`LossReason::Unanswered`] after the last request, or
    /// [`LossReason::Unavailable`] at once for seqs older than the sensor holds.
    pub losses: Vec<Loss>,
    /// Due requests left for a later tick (`max_requests_per_tick` was reached).
    pub deferred: u64,
    /// Sensor epochs forgotten since the last tick because `max_epochs` was reached, and one
    /// of them for the log.
    pub evicted: u64,
    /// One of the `evicted` epochs, `(sensor_id, epoch)`.
    pub evicted_example: Option<(String, u64)>,
    /// Complete epochs (final announcement, nothing missing) dropped since the last tick.
    pub completed: u64,
    /// Epochs whose written or announced seqs reach beyond `replay_window`, at this tick
    /// (looked at a window at a time), and one of them.
    pub beyond_window: u64,
    /// One of the `beyond_window` epochs, `(sensor_id, epoch, highest seq known)`.
    pub beyond_window_example: Option<(String, u64, u64)>,
    /// Epochs that became complete at this tick, each listed once: the sensor announced
    /// its final seq, this logger answers for the epoch from seq 1, and every seq up to the
    /// final one is written or lost. `(sensor_id, epoch, final seq)`.
    pub complete: Vec<(String, u64, u64)>,
    /// Ranges reported lost that are in the output after all (reason
    /// [`LossReason::Recovered`]; already removed from the tracker's losses).
    pub recovered: Vec<Loss>,
}

/// A due range of missing seqs and the state of its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gap {
    /// First missing seq.
    from: u64,
    /// Last missing seq (inclusive).
    to: u64,
    /// Requests made so far.
    attempts: u32,
    /// When to ask again (or give up).
    next_at: Instant,
}

/// What the tracker knows of one sensor epoch.
#[derive(Debug)]
struct EpochState {
    /// Highest `last_seq` the sensor announced.
    announced: u64,
    /// Highest `oldest_seq` the sensor announced: older seqs cannot be replayed (0: not
    /// announced).
    oldest: u64,
    /// Whether the sensor announced the end of the epoch.
    final_: bool,
    /// Last time anything happened to this epoch (an announcement, a new seq written): the
    /// least recently active epoch is the one forgotten at `max_epochs`.
    active_at: Instant,
    /// Since when the epoch is complete (final, nothing missing, nothing asked for).
    complete_since: Option<Instant>,
    /// `(when, high-water mark)` each time the mark rose; the oldest kept is the newest one
    /// older than the grace period.
    highs: VecDeque<(Instant, u64)>,
    /// The due gaps, in seq order, disjoint.
    gaps: Vec<Gap>,
    /// Seqs reported lost.
    lost: SeqSet,
    /// Requests made for this epoch.
    asked: u64,
    /// Seqs missing at the last tick, due or not.
    missing: u64,
    /// Seqs written, at the last tick.
    written: u64,
    /// Highest seq written, at the last tick.
    highest_written: u64,
    /// The first seq this logger answers for (see the module documentation).
    floor: Floor,
    /// Whether [`TickOutcome::complete`] already listed this epoch.
    announced_complete: bool,
}

/// Where an epoch starts for this logger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Floor {
    /// Not known yet: nothing of the epoch is asked for.
    Unknown {
        /// When its first result was seen written (the floor is fixed a grace period later).
        first_write: Option<Instant>,
        /// The highest seq written up to half a grace period after the first result: the
        /// results that went by while the channel was being created are below it.
        band_top: u64,
    },
    /// Seqs from this one on are asked for when missing.
    Known(u64),
}

impl EpochState {
    /// A new epoch's state, active `now`.
    fn new(now: Instant, floor: Floor) -> Self {
        Self {
            floor,
            announced_complete: false,
            announced: 0,
            oldest: 0,
            final_: false,
            active_at: now,
            complete_since: None,
            highs: VecDeque::new(),
            gaps: Vec::new(),
            lost: SeqSet::default(),
            asked: 0,
            missing: 0,
            written: 0,
            highest_written: 0,
        }
    }
}

/// How long an epoch stays in the tracker (and in `GET /gaps`) once complete.
const COMPLETE_LINGER: Duration = Duration::from_secs(60);

/// The gap tracker of one logger: see the module documentation.
#[derive(Debug)]
pub struct Gaps {
    /// The settings.
    settings: GapSettings,
    /// Per `(sensor_id, epoch)`, at most `settings.max_epochs`.
    epochs: HashMap<(String, u64), EpochState>,
    /// Epochs dropped as complete, or forgotten at `max_epochs`: not tracked again (at most
    /// `max_epochs` remembered), so that the results of a forgotten epoch are not taken for
    /// a gap covering everything before them.
    dropped: EpochSet,
    /// Epochs forgotten at `max_epochs` since the last tick, and one of them.
    evicted: (u64, Option<(String, u64)>),
    /// Complete epochs dropped since the last tick.
    completed: u64,
    /// Since when the results consumer consumes: the instant, and the logger's clock in
    /// Unix milliseconds (to compare with epochs). `None`: nothing is asked for yet.
    consuming: Option<(Instant, u64)>,
}

impl Gaps {
    /// An empty tracker.
    pub fn new(mut settings: GapSettings) -> Self {
        settings.max_attempts = settings.max_attempts.max(1);
        settings.max_span = settings.max_span.max(1);
        settings.max_requests_per_tick = settings.max_requests_per_tick.max(1);
        settings.replay_window = settings.replay_window.max(1);
        settings.max_epochs = settings.max_epochs.max(1);
        Self {
            settings,
            epochs: HashMap::new(),
            dropped: EpochSet::default(),
            evicted: (0, None),
            completed: 0,
            consuming: None,
        }
    }

    /// The results consumer consumes from now on (`unix_ms` is now on the logger's clock):
    /// gaps may be asked for from here, and the grace of what was announced before counts
    /// from now. Only the first call counts.
    pub fn start_consuming(&mut self, now: Instant, unix_ms: u64) {
        if self.consuming.is_some() {
            return;
        }
        self.consuming = Some((now, unix_ms));
        for state in self.epochs.values_mut() {
            for (t, _) in &mut state.highs {
                *t = (*t).max(now);
            }
        }
    }

    /// Whether [`Gaps::start_consuming`] was called.
    pub fn is_consuming(&self) -> bool {
        self.consuming.is_some()
    }

    /// Start-up, before any message: the epochs in the output (`seen`) and those already
    /// tracked (restored from the loss list) were consumed by this logger before, so they
    /// are answered for from seq 1.
    pub fn restored(&mut self, seen: &Seen) {
        let now = Instant::now();
        for (sensor_id, epoch, _) in seen.iter() {
            if let Some(state) = self.state(sensor_id, epoch, now) {
                state.floor = Floor::Known(1);
            }
        }
        for state in self.epochs.values_mut() {
            state.floor = Floor::Known(1);
        }
    }

    /// Number of sensor epochs tracked.
    pub fn epoch_count(&self) -> usize {
        self.epochs.len()
    }

    /// The settings in use.
    pub fn settings(&self) -> &GapSettings {
        &self.settings
    }

    /// Takes note of a sensor's announcement of its latest seq and of the oldest one it
    /// still holds (0: not announced). An epoch already dropped (complete, or forgotten) is
    /// not tracked again.
    pub fn on_status(
        &mut self,
        sensor_id: &str,
        epoch: u64,
        last_seq: u64,
        oldest_seq: u64,
        final_: bool,
        now: Instant,
    ) {
        let Some(state) = self.state(sensor_id, epoch, now) else {
            return;
        };
        state.announced = state.announced.max(last_seq);
        state.oldest = state.oldest.max(oldest_seq);
        state.final_ |= final_;
        state.active_at = now;
    }

    /// Records a range as lost without reporting it (restoring the loss list at start-up, or
    /// after the caller persisted the result of [`Gaps::unavailable`]). Returns how many seqs
    /// were not already recorded.
    pub fn mark_lost(&mut self, sensor_id: &str, epoch: u64, from: u64, to: u64) -> u64 {
        let Some(state) = self.state(sensor_id, epoch, Instant::now()) else {
            return 0;
        };
        let added = state.lost.insert_range(from, to);
        state.gaps = subtract_gaps(std::mem::take(&mut state.gaps), from, to);
        added
    }

    /// Takes a range out of the losses (restoring a `recovered` record at start-up).
    pub fn unmark_lost(&mut self, sensor_id: &str, epoch: u64, from: u64, to: u64) -> u64 {
        self.state(sensor_id, epoch, Instant::now())
            .map_or(0, |state| state.lost.remove_range(from, to))
    }

    /// The parts of `from..=to` that a sensor's "unavailable" answer makes lost: those neither
    /// written nor already recorded as lost, up to the epoch's high-water mark (a seq beyond
    /// every one written or announced cannot be missing, so an answer about it is ignored, as
    /// is one about an epoch not tracked). Nothing is recorded: persist them, then call
    /// [`Gaps::mark_lost`].
    pub fn unavailable(
        &self,
        sensor_id: &str,
        epoch: u64,
        from: u64,
        to: u64,
        seen: &Seen,
    ) -> Vec<(u64, u64)> {
        let written = seen.epoch(sensor_id, epoch);
        let state = self.epochs.get(&(sensor_id.to_owned(), epoch));
        if state.is_none() && written.is_none() {
            return Vec::new();
        }
        let from = match state.map(|s| s.floor) {
            Some(Floor::Known(floor)) => from.max(floor),
            // Not answering for this epoch yet (or not tracking it): nothing of it is lost
            // to this logger; if the seqs are still missing later, it asks for them itself.
            _ => return Vec::new(),
        };
        let lost = state.map(|s| &s.lost);
        let high = written
            .map_or(0, SeqSet::max)
            .max(state.map_or(0, |s| s.announced));
        let to = to.min(high);
        let mut out = Vec::new();
        let not_written = match written {
            Some(set) => set.subtract_from(from, to),
            None if from <= to => vec![(from, to)],
            None => Vec::new(),
        };
        for (a, b) in not_written {
            match lost {
                Some(lost) => out.extend(lost.subtract_from(a, b)),
                None => out.push((a, b)),
            }
        }
        out
    }

    /// A request could not be published: it does not count as an attempt, and is retried
    /// after the first backoff pause.
    pub fn ask_failed(&mut self, ask: &Ask, now: Instant) {
        let retry_at = now + self.settings.backoff;
        if let Some(state) = self.epochs.get_mut(&(ask.sensor_id.clone(), ask.epoch)) {
            for gap in &mut state.gaps {
                if gap.to >= ask.from && gap.from <= ask.to {
                    gap.attempts = gap.attempts.saturating_sub(1);
                    gap.next_at = gap.next_at.min(retry_at);
                }
            }
        }
    }

    /// Looks at every sensor epoch: updates the gaps from what is written and announced, and
    /// says which ranges to ask for and which to give up on.
    pub fn tick(&mut self, now: Instant, seen: &Seen) -> TickOutcome {
        // Epochs the de-duplication state forgot at its limits are not checked either: their
        // next results would look like a gap covering everything before them.
        let forgotten: Vec<(String, u64)> = self
            .epochs
            .keys()
            .filter(|k| seen.is_forgotten(k))
            .cloned()
            .collect();
        for key in forgotten {
            self.epochs.remove(&key);
            self.dropped.insert(key, self.settings.max_epochs);
        }
        for (sensor_id, epoch, _) in seen.iter() {
            let key = (sensor_id.to_owned(), epoch);
            if !self.epochs.contains_key(&key)
                && !self.dropped.contains(&key)
                && !seen.is_forgotten(&key)
            {
                self.state(sensor_id, epoch, now);
            }
        }
        let settings = self.settings.clone();
        let mut outcome = TickOutcome::default();
        let mut budget = settings.max_requests_per_tick;
        for ((sensor_id, epoch), state) in &mut self.epochs {
            let written = seen.epoch(sensor_id, *epoch);
            if let Some(written) = written {
                for (from, to) in state.found(written) {
                    outcome.recovered.push(Loss {
                        sensor_id: sensor_id.clone(),
                        epoch: *epoch,
                        from,
                        to,
                        reason: LossReason::Recovered,
                    });
                }
            }
            let EpochTick {
                asks,
                losses,
                unavailable,
                deferred,
                beyond_window,
                complete,
            } = state.tick(&settings, now, *epoch, self.consuming, written, &mut budget);
            if let Some(last_seq) = complete {
                outcome.complete.push((sensor_id.clone(), *epoch, last_seq));
            }
            outcome.deferred += deferred;
            if let Some(highest) = beyond_window {
                outcome.beyond_window += 1;
                outcome
                    .beyond_window_example
                    .get_or_insert_with(|| (sensor_id.clone(), *epoch, highest));
            }
            outcome
                .losses
                .extend(unavailable.into_iter().map(|(from, to)| Loss {
                    sensor_id: sensor_id.clone(),
                    epoch: *epoch,
                    from,
                    to,
                    reason: LossReason::Unavailable,
                }));
            outcome
                .asks
                .extend(asks.into_iter().map(|(from, to, attempt)| Ask {
                    sensor_id: sensor_id.clone(),
                    epoch: *epoch,
                    from,
                    to,
                    attempt,
                }));
            outcome
                .losses
                .extend(losses.into_iter().map(|(from, to)| Loss {
                    sensor_id: sensor_id.clone(),
                    epoch: *epoch,
                    from,
                    to,
                    reason: LossReason::Unanswered,
                }));
        }
        outcome
            .asks
            .sort_by(|a, b| (&a.sensor_id, a.epoch, a.from).cmp(&(&b.sensor_id, b.epoch, b.from)));

        // Complete epochs leave once they have been complete for a while.
        let done: Vec<(String, u64)> = self
            .epochs
            .iter()
            .filter(|(_, s)| {
                s.complete_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= COMPLETE_LINGER)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            self.epochs.remove(&key);
            self.dropped.insert(key, self.settings.max_epochs);
            self.completed += 1;
        }
        outcome.completed = std::mem::take(&mut self.completed);
        let (evicted, example) = std::mem::take(&mut self.evicted);
        outcome.evicted = evicted;
        outcome.evicted_example = example;
        outcome
    }

    /// The totals over every epoch (as of the last tick), without building a report.
    pub fn totals(&self) -> GapTotals {
        let mut t = GapTotals {
            epochs: self.epochs.len(),
            ..GapTotals::default()
        };
        for s in self.epochs.values() {
            t.missing += s.missing;
            t.pending += s.gaps.iter().map(|g| g.to - g.from + 1).sum::<u64>();
            t.lost += s.lost.len();
            t.replay_requests += s.asked;
        }
        t
    }

    /// What the tracker knows, for `GET /gaps` (as of the last tick). Bounded whatever the
    /// input: the [`REPORT_MAX_EPOCHS`] epochs with the most missing seqs, each with its
    /// first [`REPORT_MAX_RANGES`] gaps and lost ranges; the totals count everything.
    pub fn report(&self, now: Instant) -> GapsReport {
        let mut order: Vec<(&(String, u64), &EpochState)> = self.epochs.iter().collect();
        order.sort_by(|(ka, a), (kb, b)| b.missing.cmp(&a.missing).then_with(|| ka.cmp(kb)));
        order.truncate(REPORT_MAX_EPOCHS);
        let mut epochs: Vec<EpochReport> = order
            .into_iter()
            .map(|((sensor_id, epoch), s)| EpochReport {
                sensor_id: sensor_id.clone(),
                epoch: *epoch,
                written: s.written,
                highest_written: s.highest_written,
                announced_last_seq: s.announced,
                announced_oldest_seq: s.oldest,
                floor_seq: match s.floor {
                    Floor::Known(f) => f,
                    Floor::Unknown { .. } => 0,
                },
                final_: s.final_,
                missing: s.missing,
                lost: s.lost.len(),
                replay_requests: s.asked,
                gap_count: s.gaps.len(),
                gaps: s
                    .gaps
                    .iter()
                    .take(REPORT_MAX_RANGES)
                    .map(|g| GapReport {
                        from_seq: g.from,
                        to_seq: g.to,
                        requests: g.attempts,
                        next_request_in_ms: g.next_at.saturating_duration_since(now).as_millis()
                            as u64,
                    })
                    .collect(),
                lost_range_count: s.lost.range_count(),
                lost_ranges: s
                    .lost
                    .ranges()
                    .take(REPORT_MAX_RANGES)
                    .map(|(from_seq, to_seq)| SeqRange { from_seq, to_seq })
                    .collect(),
            })
            .collect();
        epochs.sort_by(|a, b| (&a.sensor_id, a.epoch).cmp(&(&b.sensor_id, b.epoch)));
        let totals = self.totals();
        GapsReport {
            grace_ms: self.settings.grace.as_millis() as u64,
            missing: totals.missing,
            pending: totals.pending,
            lost: totals.lost,
            replay_requests: totals.replay_requests,
            epochs_tracked: totals.epochs,
            epochs,
        }
    }

    /// The state of one sensor epoch, created empty when new; `None` for an epoch dropped
    /// earlier. Creating one beyond `max_epochs` forgets the epochs with the fewest readings
    /// written, then the least recently active (a sixteenth of the limit at once).
    fn state(&mut self, sensor_id: &str, epoch: u64, now: Instant) -> Option<&mut EpochState> {
        let key = (sensor_id.to_owned(), epoch);
        if self.dropped.contains(&key) {
            return None;
        }
        if !self.epochs.contains_key(&key) && self.epochs.len() >= self.settings.max_epochs {
            // Fewest readings written first (an epoch only announced, as a forged one is,
            // has none), then the least recently active. A sixteenth of the limit goes at
            // once, so that the scan is paid once per many new epochs.
            let count = (self.settings.max_epochs / 16).clamp(1, self.epochs.len());
            let victims = lowest(
                self.epochs
                    .iter()
                    .map(|(k, s)| ((s.written, s.active_at), k)),
                count,
            );
            for victim in victims {
                self.epochs.remove(&victim);
                self.dropped
                    .insert(victim.clone(), self.settings.max_epochs);
                self.evicted.0 += 1;
                self.evicted.1.get_or_insert(victim);
            }
        }
        let floor = if self.settings.backfill {
            Floor::Known(1)
        } else {
            Floor::Unknown {
                first_write: None,
                band_top: 0,
            }
        };
        Some(
            self.epochs
                .entry(key)
                .or_insert_with(|| EpochState::new(now, floor)),
        )
    }
}

/// What one epoch's tick decided.
struct EpochTick {
    /// Requests as `(from, to, attempt)`.
    asks: Vec<(u64, u64, u32)>,
    /// Ranges given up on after the last request.
    losses: Vec<(u64, u64)>,
    /// Due ranges older than the sensor can replay: lost at once.
    unavailable: Vec<(u64, u64)>,
    /// Due gaps not asked for in this tick for lack of budget.
    deferred: u64,
    /// The highest seq known when it is beyond the window.
    beyond_window: Option<u64>,
    /// The final seq, when the epoch became complete at this tick (listed once).
    complete: Option<u64>,
}

impl EpochState {
    /// Takes the seqs reported lost but written after all out of the losses; returns them.
    fn found(&mut self, written: &SeqSet) -> Vec<(u64, u64)> {
        if self.lost.is_empty() {
            return Vec::new();
        }
        let found: Vec<(u64, u64)> = self
            .lost
            .ranges()
            .flat_map(|(a, b)| written.intersect(a, b))
            .collect();
        for (a, b) in &found {
            self.lost.remove_range(*a, *b);
        }
        found
    }

    /// One tick for this epoch. `budget` is how many requests may still be made in this
    /// tick; what is due beyond it waits for the next tick.
    #[allow(clippy::too_many_arguments)]
    fn tick(
        &mut self,
        s: &GapSettings,
        now: Instant,
        epoch: u64,
        consuming: Option<(Instant, u64)>,
        written: Option<&SeqSet>,
        budget: &mut usize,
    ) -> EpochTick {
        let empty = SeqSet::default();
        let written = written.unwrap_or(&empty);
        if written.len() != self.written {
            self.active_at = now;
        }
        self.written = written.len();
        self.highest_written = written.max();
        let lowest_written = written.ranges().next().map(|(a, _)| a);

        // Where the epoch starts for this logger (see the module documentation).
        if let (
            Floor::Unknown {
                first_write,
                band_top,
            },
            Some((_, since_ms)),
        ) = (self.floor, consuming)
        {
            self.floor = match (first_write, lowest_written) {
                // Began after this logger consumed: every reading of it should be here.
                _ if epoch >= since_ms => Floor::Known(1),
                (_, None) => self.floor,
                (None, Some(_)) => Floor::Unknown {
                    first_write: Some(now),
                    band_top: written.max(),
                },
                (Some(t), Some(lowest)) => {
                    let waited = now.saturating_duration_since(t);
                    if waited < s.grace / 2 {
                        Floor::Unknown {
                            first_write,
                            band_top: written.max(),
                        }
                    } else if waited < s.grace {
                        self.floor
                    } else if lowest == 1 {
                        // It has the epoch from its start: every hole is a real one.
                        Floor::Known(1)
                    } else {
                        // Holes among the first results are readings whose results went by
                        // before the channel existed (the workers finish them out of order).
                        let band_hole = written.missing(band_top).last().map_or(0, |(_, b)| *b);
                        Floor::Known(lowest.max(band_hole.saturating_add(1)))
                    }
                }
            };
        }
        // Below the floor nothing is missing; while it is unknown, the lowest seq written
        // stands in for the count of what is missing, and nothing is due.
        let (floor, answering) = match self.floor {
            Floor::Known(f) => (f.max(1), consuming.is_some()),
            Floor::Unknown { .. } => (lowest_written.unwrap_or(u64::MAX), false),
        };

        // The high-water mark, and what it was a grace period ago. Seqs written or announced
        // count up to `replay_window` beyond the covered prefix (every seq up to it written
        // or lost): no sensor history reaches further, and a forged `last_seq` or result seq
        // of 10^15 must not make 10^15 seqs missing. The window moves on as the prefix grows.
        let limit = covered_prefix(written, &self.lost, floor).saturating_add(s.replay_window);
        let high = written.max_at_most(limit).max(self.announced.min(limit));
        let highest_known = written.max().max(self.announced);
        let beyond_window = (highest_known > limit).then_some(highest_known);
        if self.highs.back().is_none_or(|(_, h)| *h < high) && high > 0 {
            self.highs.push_back((now, high));
        }
        while self.highs.len() >= 2
            && self
                .highs
                .get(1)
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= s.grace)
        {
            self.highs.pop_front();
        }
        let due_high = match self.highs.front() {
            Some((t, h)) if now.saturating_duration_since(*t) >= s.grace => *h,
            _ => 0,
        };

        let not_lost = |ranges: Vec<(u64, u64)>, lost: &SeqSet| -> Vec<(u64, u64)> {
            ranges
                .into_iter()
                .filter(|(_, b)| *b >= floor)
                .flat_map(|(a, b)| lost.subtract_from(a.max(floor), b))
                .collect()
        };
        self.missing = not_lost(written.missing(high), &self.lost)
            .iter()
            .map(|(a, b)| b - a + 1)
            .sum();
        let due_high = if answering { due_high } else { 0 };
        let mut due = not_lost(written.missing(due_high), &self.lost);

        // What is due but older than the sensor can replay is lost at once, without asking:
        // below the oldest seq it announced it still holds.
        let held_from = self.oldest.max(1);
        let mut unavailable = Vec::new();
        if due.first().is_some_and(|(from, _)| *from < held_from) {
            let mut rest = Vec::with_capacity(due.len());
            for (from, to) in due {
                if from >= held_from {
                    rest.push((from, to));
                    continue;
                }
                unavailable.push((from, to.min(held_from - 1)));
                if to >= held_from {
                    rest.push((held_from, to));
                }
            }
            due = rest;
        }
        for (from, to) in &unavailable {
            self.lost.insert_range(*from, *to);
            self.missing = self.missing.saturating_sub(to - from + 1);
        }

        // Carry the request state of the previous gaps over to what is still missing.
        let mut gaps = Vec::with_capacity(due.len());
        let old = std::mem::take(&mut self.gaps);
        let mut i = 0;
        for (from, to) in due {
            while i < old.len() && old[i].to < from {
                i += 1;
            }
            let mut cursor = from;
            let mut j = i;
            while j < old.len() && old[j].from <= to {
                let g = &old[j];
                if g.from > cursor {
                    gaps.push(fresh(cursor, g.from - 1, now));
                }
                let (a, b) = (g.from.max(cursor), g.to.min(to));
                if a <= b {
                    gaps.push(Gap {
                        from: a,
                        to: b,
                        attempts: g.attempts,
                        next_at: g.next_at,
                    });
                }
                cursor = b.saturating_add(1).max(cursor);
                if g.to > to {
                    break;
                }
                j += 1;
            }
            if cursor <= to {
                gaps.push(fresh(cursor, to, now));
            }
        }

        // Ask for what is due, a slice at a time within the budget; give up on what was
        // asked for too often.
        let mut asks: Vec<(u64, u64, u32)> = Vec::new();
        let mut losses = Vec::new();
        let mut deferred = 0;
        let mut kept = Vec::with_capacity(gaps.len() + 1);
        for mut g in gaps {
            if g.next_at > now {
                kept.push(g);
                continue;
            }
            if g.attempts >= s.max_attempts {
                losses.push((g.from, g.to));
                continue;
            }
            if *budget == 0 {
                deferred += 1;
                kept.push(g);
                continue;
            }
            // At most `budget` requests of `max_span` seqs: the rest of a longer gap stays
            // due, as a gap of its own, for the next tick.
            let most = s.max_span.saturating_mul(*budget as u64);
            if g.to - g.from >= most {
                let rest = Gap {
                    from: g.from + most,
                    ..g.clone()
                };
                g.to = g.from + most - 1;
                g.attempts += 1;
                g.next_at = now + backoff(s, g.attempts);
                *budget = budget.saturating_sub(span_requests(g.from, g.to, s.max_span));
                asks.push((g.from, g.to, g.attempts));
                kept.push(g);
                kept.push(rest);
                deferred += 1;
                continue;
            }
            g.attempts += 1;
            g.next_at = now + backoff(s, g.attempts);
            *budget = budget.saturating_sub(span_requests(g.from, g.to, s.max_span));
            asks.push((g.from, g.to, g.attempts));
            kept.push(g);
        }
        for (from, to) in &losses {
            self.lost.insert_range(*from, *to);
            self.missing = self.missing.saturating_sub(to - from + 1);
        }
        self.gaps = kept;
        let asks = coalesce(asks, s.coalesce, s.max_span);
        self.asked += asks.len() as u64;

        let complete = self.final_ && self.missing == 0 && self.gaps.is_empty();
        self.complete_since = match (complete, self.complete_since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, since) => since,
        };
        // Announced once, and only by a logger that answers for the whole epoch and has
        // seen results flow: one that joined late cannot say the sensor may go.
        let announce = complete
            && answering
            && floor == 1
            && !self.announced_complete
            && high >= self.announced;
        self.announced_complete |= announce;
        EpochTick {
            asks,
            losses,
            unavailable,
            deferred,
            beyond_window,
            complete: announce.then_some(self.announced),
        }
    }
}

/// The highest seq `h` such that every seq of `floor..=h` is written or lost (`floor - 1`
/// when `floor` is neither). Costs one step per range passed.
fn covered_prefix(written: &SeqSet, lost: &SeqSet, floor: u64) -> u64 {
    let mut h = floor.saturating_sub(1);
    loop {
        let Some(next) = h.checked_add(1) else {
            return h;
        };
        match written.range_end(next).or_else(|| lost.range_end(next)) {
            Some(end) => h = end,
            None => return h,
        }
    }
}

/// How many requests of at most `max_span` seqs `from..=to` takes.
fn span_requests(from: u64, to: u64, max_span: u64) -> usize {
    usize::try_from((to - from) / max_span + 1).unwrap_or(usize::MAX)
}

/// A gap seen for the first time: due now.
fn fresh(from: u64, to: u64, now: Instant) -> Gap {
    Gap {
        from,
        to,
        attempts: 0,
        next_at: now,
    }
}

/// The pause after request number `attempts` (1 for the first).
fn backoff(s: &GapSettings, attempts: u32) -> Duration {
    // At most 2^20 times `backoff`: a tiny `--replay-backoff` stops doubling there.
    let doublings = attempts.saturating_sub(1).min(20);
    nsq::backoff::exponential(s.backoff, s.backoff_max, doublings)
}

/// Merges requests at most `distance` seqs apart into requests of at most `max_span` seqs,
/// and splits longer ones. The input is in seq order.
fn coalesce(asks: Vec<(u64, u64, u32)>, distance: u64, max_span: u64) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<(u64, u64, u32)> = Vec::new();
    for (from, to, attempt) in asks {
        if let Some(last) = out.last_mut() {
            let hole = from.saturating_sub(last.1).saturating_sub(1);
            if hole <= distance && to - last.0 < max_span {
                last.1 = to;
                last.2 = last.2.max(attempt);
                continue;
            }
        }
        let mut start = from;
        loop {
            let end = to.min(start.saturating_add(max_span - 1));
            out.push((start, end, attempt));
            if end >= to {
                break;
            }
            start = end + 1;
        }
    }
    out
}

/// `gaps` without the seqs `from..=to`.
fn subtract_gaps(gaps: Vec<Gap>, from: u64, to: u64) -> Vec<Gap> {
    let mut out = Vec::with_capacity(gaps.len());
    for g in gaps {
        if g.to < from || g.from > to {
            out.push(g);
            continue;
        }
        if g.from < from {
            out.push(Gap {
                to: from - 1,
                ..g.clone()
            });
        }
        if g.to > to {
            out.push(Gap {
                from: to + 1,
                ..g.clone()
            });
        }
    }
    out
}

/// Most epochs listed by `GET /gaps`.
pub const REPORT_MAX_EPOCHS: usize = 100;

/// Most gaps, and most lost ranges, listed per epoch by `GET /gaps`.
pub const REPORT_MAX_RANGES: usize = 100;

/// Totals over every tracked epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapTotals {
    /// Sensor epochs tracked.
    pub epochs: usize,
    /// Seqs missing (within the grace period or not).
    pub missing: u64,
    /// Seqs past the grace period, being asked for.
    pub pending: u64,
    /// Readings reported lost.
    pub lost: u64,
    /// Replay requests made.
    pub replay_requests: u64,
}

/// An inclusive range of seqs, as in `GET /gaps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeqRange {
    /// First seq.
    pub from_seq: u64,
    /// Last seq (inclusive).
    pub to_seq: u64,
}

/// A gap being asked for, as in `GET /gaps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapReport {
    /// First missing seq.
    pub from_seq: u64,
    /// Last missing seq (inclusive).
    pub to_seq: u64,
    /// Replay requests made for it so far.
    pub requests: u32,
    /// When it is asked for again (or given up on), from now.
    pub next_request_in_ms: u64,
}

/// One sensor epoch, as in `GET /gaps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EpochReport {
    /// The sensor.
    pub sensor_id: String,
    /// Its epoch.
    pub epoch: u64,
    /// Readings written to the output.
    pub written: u64,
    /// Highest seq written.
    pub highest_written: u64,
    /// Highest seq the sensor announced (0 when no announcement arrived).
    pub announced_last_seq: u64,
    /// Oldest seq the sensor announced it still holds (0 when not announced).
    pub announced_oldest_seq: u64,
    /// The first seq this logger answers for (0 while not known; see the module docs).
    pub floor_seq: u64,
    /// Whether the sensor announced the end of the epoch.
    #[serde(rename = "final")]
    pub final_: bool,
    /// Seqs missing (neither written nor lost), within the grace period or not.
    pub missing: u64,
    /// Readings reported lost.
    pub lost: u64,
    /// Replay requests made.
    pub replay_requests: u64,
    /// How many gaps are being asked for.
    pub gap_count: usize,
    /// Missing ranges past the grace period, being asked for (the first
    /// [`REPORT_MAX_RANGES`]).
    pub gaps: Vec<GapReport>,
    /// How many ranges are reported lost.
    pub lost_range_count: usize,
    /// Ranges reported lost (the first [`REPORT_MAX_RANGES`]).
    pub lost_ranges: Vec<SeqRange>,
}

/// The answer of `GET /gaps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapsReport {
    /// `--gap-grace`, in milliseconds.
    pub grace_ms: u64,
    /// Seqs missing over all epochs (within the grace period or not).
    pub missing: u64,
    /// Seqs past the grace period, being asked for.
    pub pending: u64,
    /// Readings reported lost over all epochs.
    pub lost: u64,
    /// Replay requests made over all epochs.
    pub replay_requests: u64,
    /// Sensor epochs tracked.
    pub epochs_tracked: usize,
    /// Per sensor epoch: the [`REPORT_MAX_EPOCHS`] with the most missing seqs, by id.
    pub epochs: Vec<EpochReport>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Key;

    const MS: Duration = Duration::from_millis(1);

    fn settings() -> GapSettings {
        GapSettings {
            grace: 1000 * MS,
            max_attempts: 3,
            backoff: 500 * MS,
            backoff_max: 1000 * MS,
            coalesce: 2,
            max_span: 100,
            ..GapSettings::default()
        }
    }

    fn seen(seqs: impl IntoIterator<Item = u64>) -> Seen {
        let mut seen = Seen::default();
        for seq in seqs {
            seen.insert(&Key {
                sensor_id: "s".to_owned(),
                epoch: 1,
                seq,
            });
        }
        seen
    }

    /// A tracker whose results consumer consumes since before any epoch of the tests
    /// (epoch numbers 1, 2, ... are "Unix milliseconds" after 0).
    fn consuming(settings: GapSettings) -> Gaps {
        let mut g = Gaps::new(settings);
        g.start_consuming(Instant::now(), 0);
        g
    }

    fn seen_epoch(epoch: u64, seqs: impl IntoIterator<Item = u64>) -> Seen {
        let mut seen = Seen::default();
        for seq in seqs {
            seen.insert(&Key {
                sensor_id: "s".to_owned(),
                epoch,
                seq,
            });
        }
        seen
    }

    /// An epoch number later than any test's consuming start on the logger's clock.
    const LATE_EPOCH: u64 = 2_000_000_000_000;

    #[test]
    fn nothing_is_asked_before_the_results_consumer_consumes() {
        let t0 = Instant::now();
        let mut g = Gaps::new(settings());
        // The status consumer already runs: the sensor announced 2,100 readings.
        g.on_status("s", 1, 2100, 1, false, t0);
        for ms in [0, 1000, 5000] {
            let out = g.tick(t0 + ms * MS, &Seen::default());
            assert!(out.asks.is_empty() && out.losses.is_empty(), "{out:?}");
        }
        // Results flow from 5 s on; the grace counts from then.
        g.start_consuming(t0 + 5000 * MS, 1);
        let written = seen(1..=2100);
        assert!(g.tick(t0 + 5100 * MS, &written).asks.is_empty());
        assert_eq!(g.tick(t0 + 6100 * MS, &written), TickOutcome::default());
        assert_eq!(g.report(t0).missing, 0);
    }

    #[test]
    fn the_grace_of_what_was_announced_before_consuming_counts_from_consuming() {
        let t0 = Instant::now();
        let mut g = Gaps::new(settings());
        g.on_status("s", 1, 20, 1, false, t0);
        g.tick(t0, &Seen::default());
        g.start_consuming(t0 + 5000 * MS, 1);
        let written = seen((1..=10).chain(13..=20));
        assert!(g.tick(t0 + 5999 * MS, &written).asks.is_empty());
        assert_eq!(asks(&g.tick(t0 + 6000 * MS, &written)), [(11, 12, 1)]);
    }

    #[test]
    fn a_late_logger_answers_from_the_first_seqs_it_received() {
        let t0 = Instant::now();
        let mut g = Gaps::new(settings());
        // The epoch began (Unix ms 1,000) before this logger consumed (Unix ms 9,000).
        g.start_consuming(t0, 9_000);
        g.on_status("s", 1_000, 1197, 1, false, t0);
        assert!(g.tick(t0, &Seen::default()).asks.is_empty());
        // Its first results overtake one another: 1,201 first, 1,198 within the grace.
        let first = seen_epoch(1_000, [1201, 1203]);
        assert!(g.tick(t0 + 100 * MS, &first).asks.is_empty());
        let then = seen_epoch(1_000, [1198, 1201, 1203, 1205]);
        assert!(g.tick(t0 + 900 * MS, &then).asks.is_empty());
        // An epoch whose seq 1 arrived is answered for from 1, holes and all.
        let mut whole = Gaps::new(settings());
        whole.start_consuming(t0, 9_000);
        let from_1 = seen_epoch(1_000, [1, 2, 5]);
        whole.tick(t0, &from_1);
        assert_eq!(asks(&whole.tick(t0 + 1000 * MS, &from_1)), [(3, 4, 1)]);
        g.on_status("s", 1_000, 1210, 1, false, t0 + 1100 * MS);
        // Floor 1,203 from here on: the holes among the first results (1,199, 1,200, 1,202:
        // their results went by before the channel existed) and 1..=1,197 are never missing;
        // what is above is.
        assert!(g.tick(t0 + 1100 * MS, &then).asks.is_empty());
        let report = g.report(t0 + 1100 * MS);
        assert_eq!(report.missing, 1 + 5, "{report:?}");
        let out = g.tick(t0 + 2100 * MS, &then);
        assert_eq!(asks(&out), [(1204, 1210, 1)]);
        // An "unavailable" answer below the floor is not this logger's loss.
        assert!(g.unavailable("s", 1_000, 1, 1202, &then).is_empty());
        assert_eq!(g.unavailable("s", 1_000, 1, 1204, &then), [(1204, 1204)]);
    }

    #[test]
    fn with_backfill_a_late_logger_asks_for_exactly_what_it_missed() {
        let t0 = Instant::now();
        let mut g = Gaps::new(GapSettings {
            backfill: true,
            ..settings()
        });
        g.start_consuming(t0, 9_000);
        g.on_status("s", 1_000, 1200, 1, false, t0);
        let written = seen_epoch(1_000, 1198..=1200);
        assert!(g.tick(t0, &written).asks.is_empty());
        let out = g.tick(t0 + 1000 * MS, &written);
        assert_eq!(
            out.asks.iter().map(|a| (a.from, a.to)).collect::<Vec<_>>(),
            [
                (1, 100),
                (101, 200),
                (201, 300),
                (301, 400),
                (401, 500),
                (501, 600),
                (601, 700),
                (701, 800),
                (801, 900),
                (901, 1000),
                (1001, 1100),
                (1101, 1197)
            ]
        );
    }

    #[test]
    fn an_epoch_that_began_after_consuming_is_answered_for_from_seq_1() {
        let t0 = Instant::now();
        let mut g = Gaps::new(settings());
        g.start_consuming(t0, 9_000);
        // Every result of it was lost (an nsqd crash), only the announcement came.
        g.on_status("s", LATE_EPOCH, 5, 1, false, t0);
        g.tick(t0, &Seen::default());
        assert_eq!(asks(&g.tick(t0 + 1000 * MS, &Seen::default())), [(1, 5, 1)]);
    }

    #[test]
    fn epochs_in_the_output_at_start_are_answered_for_from_seq_1() {
        let t0 = Instant::now();
        let mut g = Gaps::new(settings());
        let written = seen_epoch(1_000, 10..=20);
        g.restored(&written);
        g.start_consuming(t0, 9_000);
        g.tick(t0, &written);
        assert_eq!(asks(&g.tick(t0 + 1000 * MS, &written)), [(1, 9, 1)]);
    }

    #[test]
    fn a_complete_epoch_is_listed_once() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen(1..=10);
        g.on_status("s", 1, 10, 1, false, t0);
        assert!(g.tick(t0, &written).complete.is_empty());
        g.on_status("s", 1, 10, 1, true, t0);
        assert_eq!(g.tick(t0, &written).complete, [("s".to_owned(), 1, 10)]);
        assert!(g.tick(t0 + 100 * MS, &written).complete.is_empty());
        // A late logger (floor above 1) never says an epoch is complete.
        let mut late = Gaps::new(settings());
        late.start_consuming(t0, 9_000);
        let part = seen_epoch(1_000, 5..=10);
        late.on_status("s", 1_000, 10, 1, true, t0);
        for ms in [0, 1000, 2000] {
            assert!(late.tick(t0 + ms * MS, &part).complete.is_empty());
        }
        assert_eq!(late.report(t0).missing, 0);
    }

    fn asks(outcome: &TickOutcome) -> Vec<(u64, u64, u32)> {
        outcome
            .asks
            .iter()
            .map(|a| (a.from, a.to, a.attempt))
            .collect()
    }

    #[test]
    fn a_gap_is_asked_for_only_after_the_grace_period() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen((1..=10).chain(13..=20));
        assert!(g.tick(t0, &written).asks.is_empty());
        assert!(g.tick(t0 + 999 * MS, &written).asks.is_empty());
        let out = g.tick(t0 + 1000 * MS, &written);
        assert_eq!(asks(&out), [(11, 12, 1)]);
        assert!(out.losses.is_empty());
        let report = g.report(t0 + 1000 * MS);
        assert_eq!((report.missing, report.pending, report.lost), (2, 2, 0));
    }

    #[test]
    fn the_grace_is_counted_from_when_a_seq_could_be_known() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        g.tick(t0, &seen(1..=10));
        // At t0 + 800 ms seq 15 arrives: 11..=14 are missing since then, not since t0.
        let later = seen((1..=10).chain([15]));
        assert!(g.tick(t0 + 800 * MS, &later).asks.is_empty());
        assert!(g.tick(t0 + 1500 * MS, &later).asks.is_empty());
        assert_eq!(asks(&g.tick(t0 + 1800 * MS, &later)), [(11, 14, 1)]);
    }

    #[test]
    fn a_tail_gap_needs_the_announcement() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen(1..=10);
        g.tick(t0, &written);
        assert!(
            g.tick(t0 + 5000 * MS, &written).asks.is_empty(),
            "nothing known beyond 10"
        );
        g.on_status("s", 1, 14, 0, true, t0);
        g.tick(t0 + 5000 * MS, &written);
        assert_eq!(asks(&g.tick(t0 + 6000 * MS, &written)), [(11, 14, 1)]);
        // An epoch only announced, with nothing written: all of it is missing.
        g.on_status("other", 7, 3, 0, false, t0);
        g.tick(t0 + 6000 * MS, &written);
        let out = g.tick(t0 + 7000 * MS, &written);
        let other: Vec<_> = out
            .asks
            .iter()
            .filter(|a| a.sensor_id == "other")
            .map(|a| (a.epoch, a.from, a.to))
            .collect();
        assert_eq!(other, [(7, 1, 3)]);
    }

    #[test]
    fn requests_back_off_then_the_gap_is_lost_as_unanswered() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen((1..=10).chain(13..=20));
        g.tick(t0, &written);
        let t = t0 + 1000 * MS;
        assert_eq!(asks(&g.tick(t, &written)), [(11, 12, 1)]);
        assert!(
            g.tick(t + 499 * MS, &written).asks.is_empty(),
            "waits 500 ms"
        );
        assert_eq!(asks(&g.tick(t + 500 * MS, &written)), [(11, 12, 2)]);
        assert!(g.tick(t + 1499 * MS, &written).asks.is_empty(), "waits 1 s");
        assert_eq!(asks(&g.tick(t + 1500 * MS, &written)), [(11, 12, 3)]);
        let out = g.tick(t + 2500 * MS, &written);
        assert!(out.asks.is_empty());
        assert_eq!(
            out.losses,
            [Loss {
                sensor_id: "s".to_owned(),
                epoch: 1,
                from: 11,
                to: 12,
                reason: LossReason::Unanswered
            }]
        );
        let report = g.report(t + 2500 * MS);
        assert_eq!((report.missing, report.pending, report.lost), (0, 0, 2));
        assert!(
            g.tick(t + 9000 * MS, &written).losses.is_empty(),
            "reported once"
        );
    }

    #[test]
    fn what_arrives_leaves_the_gap_and_the_rest_keeps_its_state() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        g.tick(t0, &seen((1..=10).chain([30])));
        let t = t0 + 1000 * MS;
        assert_eq!(asks(&g.tick(t, &seen((1..=10).chain([30])))), [(11, 29, 1)]);
        // 15..=20 arrive; the rest is asked for again together (holes of 2 are coalesced, 6
        // are not) with its attempt count.
        let now = seen((1..=10).chain(15..=20).chain([30]));
        assert!(g.tick(t + 100 * MS, &now).asks.is_empty());
        assert_eq!(
            asks(&g.tick(t + 500 * MS, &now)),
            [(11, 14, 2), (21, 29, 2)]
        );
        let now = seen((1..=10).chain(13..=20).chain([30]));
        assert_eq!(
            asks(&g.tick(t + 1500 * MS, &now)),
            [(11, 12, 3), (21, 29, 3)]
        );
    }

    #[test]
    fn new_missing_seqs_next_to_an_asked_gap_are_asked_for_at_once() {
        let t0 = Instant::now();
        let mut g = consuming(GapSettings {
            backoff: 2000 * MS,
            backoff_max: 4000 * MS,
            ..settings()
        });
        let written = seen(1..=10);
        g.on_status("s", 1, 20, 0, false, t0);
        g.tick(t0, &written);
        assert_eq!(asks(&g.tick(t0 + 1000 * MS, &written)), [(11, 20, 1)]);
        g.on_status("s", 1, 30, 0, false, t0);
        g.tick(t0 + 1100 * MS, &written);
        // 21..=30 are new and due a grace period later; 11..=20 still wait for their backoff.
        // The two are adjacent but asked for separately, each with its own attempt.
        assert_eq!(asks(&g.tick(t0 + 2100 * MS, &written)), [(21, 30, 1)]);
    }

    #[test]
    fn unavailable_ranges_exclude_what_is_written_or_already_lost() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen((1..=10).chain(15..=20).chain([30]));
        g.tick(t0, &written);
        g.tick(t0 + 1000 * MS, &written);
        let lost = g.unavailable("s", 1, 5, 25, &written);
        assert_eq!(lost, [(11, 14), (21, 25)]);
        for (a, b) in &lost {
            g.mark_lost("s", 1, *a, *b);
        }
        assert_eq!(g.unavailable("s", 1, 5, 25, &written), []);
        // Only 26..=29 is still asked for.
        assert_eq!(asks(&g.tick(t0 + 1500 * MS, &written)), [(26, 29, 2)]);
        assert_eq!(g.report(t0).lost, 9);
        assert_eq!(
            g.unavailable("x", 9, 1, 2, &written),
            [],
            "an epoch nothing is known of has nothing missing"
        );
    }

    #[test]
    fn a_lost_reading_that_arrives_after_all_is_recovered() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen((1..=10).chain([20]));
        g.mark_lost("s", 1, 11, 19);
        assert!(g.tick(t0, &written).recovered.is_empty());
        let later = seen((1..=10).chain([12, 13, 20]));
        let out = g.tick(t0 + 100 * MS, &later);
        assert_eq!(
            out.recovered
                .iter()
                .map(|l| (l.from, l.to, l.reason))
                .collect::<Vec<_>>(),
            [(12, 13, LossReason::Recovered)]
        );
        assert_eq!(g.report(t0).lost, 7);
        assert!(g.tick(t0 + 200 * MS, &later).recovered.is_empty(), "once");
        assert_eq!(g.unmark_lost("s", 1, 11, 11), 1);
        assert_eq!(g.report(t0).lost, 6);
    }

    #[test]
    fn a_failed_publish_is_not_an_attempt() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen((1..=10).chain([20]));
        g.tick(t0, &written);
        let out = g.tick(t0 + 1000 * MS, &written);
        g.ask_failed(&out.asks[0], t0 + 1000 * MS);
        assert_eq!(asks(&g.tick(t0 + 1500 * MS, &written)), [(11, 19, 1)]);
    }

    #[test]
    fn a_forged_huge_announcement_costs_bounded_work() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let s = g.settings().clone();
        let written = seen(1..=10);
        g.on_status("s", 1, 1_000_000_000_000_000, 0, false, t0);
        g.tick(t0, &written);
        let out = g.tick(t0 + 1000 * MS, &written);
        // The announcement counts only up to the replay window beyond what is written...
        let report = g.report(t0 + 1000 * MS);
        assert_eq!(report.missing, s.replay_window);
        assert_eq!(out.beyond_window, 1);
        // ... and that is asked for a slice at a time.
        assert!(
            out.asks.len() <= s.max_requests_per_tick,
            "{}",
            out.asks.len()
        );
        assert!(out.asks.iter().all(|a| a.to - a.from < s.max_span));
        assert_eq!(out.asks[0].from, 11);
        assert!(out.deferred > 0);
        let next = g.tick(t0 + 1001 * MS, &written);
        assert!(next.asks.len() <= s.max_requests_per_tick);
        assert_eq!(next.asks[0].from, out.asks.last().map_or(0, |a| a.to + 1));
        assert!(g.report(t0).epochs[0].gaps.len() <= REPORT_MAX_RANGES);
        // Given up on a window at a time: what is missing never exceeds the window, and
        // the tracker's state stays small.
        let mut t = t0 + 1002 * MS;
        for _ in 0..2_000 {
            let out = g.tick(t, &written);
            assert!(out.asks.len() <= s.max_requests_per_tick);
            t += 100 * MS;
        }
        let report = g.report(t);
        assert!(report.missing <= s.replay_window, "{}", report.missing);
        assert!(report.lost >= s.replay_window, "{}", report.lost);
        assert!(
            report.epochs[0].gap_count < 1_000,
            "{:?}",
            report.epochs[0].gap_count
        );
        assert_eq!(report.epochs[0].lost_range_count, 1);
    }

    #[test]
    fn a_forged_result_far_beyond_the_rest_opens_no_gap() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen((1..=10).chain([1_000_000_000_000_000]));
        g.tick(t0, &written);
        let out = g.tick(t0 + 1000 * MS, &written);
        assert!(out.asks.is_empty() && out.losses.is_empty());
        assert_eq!(g.report(t0).missing, 0);
    }

    #[test]
    fn a_gap_longer_than_the_window_is_asked_for_a_window_at_a_time() {
        let t0 = Instant::now();
        let mut g = consuming(GapSettings {
            replay_window: 100,
            ..settings()
        });
        let written = seen([1, 1000]);
        g.on_status("s", 1, 1000, 0, false, t0);
        g.tick(t0, &written);
        assert_eq!(asks(&g.tick(t0 + 1000 * MS, &written)), [(2, 101, 1)]);
        // Once that part is written (or lost), the window moves on.
        let more = seen((1..=101).chain([1000]));
        g.tick(t0 + 1100 * MS, &more);
        assert_eq!(asks(&g.tick(t0 + 2100 * MS, &more)), [(102, 201, 1)]);
    }

    #[test]
    fn seqs_older_than_the_sensor_holds_are_lost_without_asking() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen((1..=10).chain([100]));
        g.on_status("s", 1, 120, 50, false, t0);
        g.tick(t0, &written);
        let out = g.tick(t0 + 1000 * MS, &written);
        assert_eq!(
            out.losses
                .iter()
                .map(|l| (l.from, l.to, l.reason))
                .collect::<Vec<_>>(),
            [(11, 49, LossReason::Unavailable)]
        );
        assert_eq!(asks(&out), [(50, 120, 1)], "100 is written: one request");
        assert_eq!(g.report(t0).lost, 39);
    }

    #[test]
    fn requests_per_tick_are_capped_over_all_epochs() {
        let t0 = Instant::now();
        let mut g = consuming(GapSettings {
            max_requests_per_tick: 4,
            ..settings()
        });
        let written = seen([]);
        for n in 0..10 {
            g.on_status(&format!("s{n}"), 1, 5, 0, false, t0);
        }
        g.tick(t0, &written);
        let first = g.tick(t0 + 1000 * MS, &written);
        assert_eq!((first.asks.len(), first.deferred), (4, 6));
        let second = g.tick(t0 + 1001 * MS, &written);
        assert_eq!((second.asks.len(), second.deferred), (4, 2));
        let third = g.tick(t0 + 1002 * MS, &written);
        assert_eq!((third.asks.len(), third.deferred), (2, 0));
        let mut all: Vec<String> = [first, second, third]
            .into_iter()
            .flat_map(|o| o.asks)
            .map(|a| a.sensor_id)
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10, "every epoch asked once");
    }

    #[test]
    fn a_complete_epoch_leaves_after_a_while_and_is_not_tracked_again() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen(1..=10);
        g.on_status("s", 1, 10, 1, true, t0);
        g.tick(t0, &written);
        assert_eq!(g.epoch_count(), 1);
        let out = g.tick(t0 + COMPLETE_LINGER, &written);
        assert_eq!((out.completed, g.epoch_count()), (1, 0));
        assert_eq!(g.tick(t0 + COMPLETE_LINGER * 2, &written).completed, 0);
        assert_eq!(g.epoch_count(), 0, "not recreated from the written seqs");
        g.on_status("s", 1, 10, 1, true, t0 + COMPLETE_LINGER * 2);
        assert_eq!(g.epoch_count(), 0, "nor from a late announcement");
    }

    #[test]
    fn epochs_beyond_the_limit_are_forgotten_least_recently_active_first() {
        let t0 = Instant::now();
        let mut g = consuming(GapSettings {
            max_epochs: 3,
            ..settings()
        });
        g.on_status("real", 1, 5, 0, false, t0 + 100 * MS);
        for n in 0..50 {
            g.on_status(&format!("forged-{n}"), 1, 5, 0, false, t0);
        }
        let out = g.tick(t0 + 200 * MS, &seen([]));
        assert_eq!(g.epoch_count(), 3);
        assert_eq!(out.evicted, 48);
        assert!(g.report(t0).epochs.iter().any(|e| e.sensor_id == "real"));
    }

    #[test]
    fn an_unavailable_answer_beyond_what_is_known_is_ignored() {
        let t0 = Instant::now();
        let mut g = consuming(settings());
        let written = seen((1..=10).chain([20]));
        g.tick(t0, &written);
        assert_eq!(
            g.unavailable("s", 1, 1, 1_000_000_000_000, &written),
            [(11, 19)]
        );
        assert_eq!(g.unavailable("nobody", 1, 1, 100, &written), []);
    }

    #[test]
    fn coalescing_and_splitting() {
        assert_eq!(
            coalesce(vec![(1, 2, 1), (5, 6, 2), (10, 10, 1)], 2, 100),
            [(1, 6, 2), (10, 10, 1)]
        );
        assert_eq!(
            coalesce(vec![(1, 250, 1)], 0, 100),
            [(1, 100, 1), (101, 200, 1), (201, 250, 1)]
        );
        assert_eq!(
            coalesce(vec![(1, 60, 1), (61, 120, 1)], 5, 100),
            [(1, 60, 1), (61, 120, 1)]
        );
    }
}
