//! The producer: publishes that resolve only when nsqd has answered.
//!
//! One background task owns the connection and reconnects forever with capped, jittered
//! backoff. Publishes are pipelined: the writer encodes every queued command into one buffer
//! and writes it as soon as it has drained the queue (no timer), and records the caller's reply
//! slot in write order; the reader answers those slots in the same order as nsqd's responses
//! arrive. A command that was written but not answered when the connection drops fails with
//! [`PublishError::ConnectionLost`]; one that was never written stays queued for the next
//! connection until its caller's timeout. Nothing is reported as published that nsqd did not
//! confirm.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::backoff::Backoff;
use crate::config::{check_tcp_address, ProducerConfig};
use crate::conn::{self, ReadError};
use crate::error::{ConfigError, InvalidInput, PublishError};
use crate::events::{Event, Events};
use crate::protocol::{self, encode, Frame};

type Reply = oneshot::Sender<Result<(), PublishError>>;

/// The callers waiting for one command on the wire: one, or all those whose PUBs were
/// coalesced into one MPUB.
enum Replies {
    One(Reply),
    Many(Vec<Reply>),
}

impl Replies {
    fn send(self, result: Result<(), PublishError>) {
        match self {
            Replies::One(r) => {
                let _ = r.send(result);
            }
            Replies::Many(rs) => {
                for r in rs {
                    let _ = r.send(result.clone());
                }
            }
        }
    }
}

/// PUBs to one topic, queued back to back, being gathered into one MPUB.
struct OpenBatch {
    topic: String,
    bodies: Vec<Bytes>,
    /// MPUB body size so far (count + each size prefix and body).
    size: usize,
    replies: Vec<Reply>,
}

/// Encodes queued requests into the write buffer and records whom each command answers.
/// Consecutive PUBs to the same topic that are already queued together are sent as one MPUB
/// (nsqd handles a batch far more cheaply than as many PUBs); nothing waits to form a batch.
struct Encoder<'a> {
    pending: &'a Mutex<VecDeque<Replies>>,
    coalesce: bool,
    max_body_size: usize,
    open: Option<OpenBatch>,
}

impl Encoder<'_> {
    fn queue(&mut self, buf: &mut BytesMut, req: Request) {
        // A caller that gave up (timeout, dropped future) must not have its message sent later.
        if req.reply.is_closed() {
            return;
        }
        if let (true, Command::Pub { topic, body }) = (self.coalesce, &req.cmd) {
            let add = 4 + body.len();
            if let Some(open) = &mut self.open {
                if open.topic == *topic
                    && open.size + add <= self.max_body_size
                    && open.bodies.len() < MAX_COALESCED
                {
                    open.bodies.push(body.clone());
                    open.size += add;
                    open.replies.push(req.reply);
                    return;
                }
            }
            self.flush(buf);
            self.open = Some(OpenBatch {
                topic: topic.clone(),
                bodies: vec![body.clone()],
                size: 4 + add,
                replies: vec![req.reply],
            });
            return;
        }
        self.flush(buf);
        match &req.cmd {
            Command::Pub { topic, body } => encode::publish(buf, topic, body),
            Command::MPub { topic, bodies } => encode::multi_publish(buf, topic, bodies),
            Command::DPub {
                topic,
                defer_ms,
                body,
            } => encode::deferred_publish(buf, topic, *defer_ms, body),
        }
        self.push(Replies::One(req.reply));
    }

    /// Encodes the open batch: a lone PUB stays a PUB.
    fn flush(&mut self, buf: &mut BytesMut) {
        let Some(open) = self.open.take() else {
            return;
        };
        if open.bodies.len() == 1 {
            encode::publish(buf, &open.topic, &open.bodies[0]);
            if let Some(reply) = open.replies.into_iter().next() {
                self.push(Replies::One(reply));
            }
        } else {
            encode::multi_publish(buf, &open.topic, &open.bodies);
            self.push(Replies::Many(open.replies));
        }
    }

    fn push(&self, replies: Replies) {
        lock(self.pending).push_back(replies);
    }
}

/// Locks `m`, taking the guard back if a panic elsewhere poisoned it: the queues it guards
/// are changed by single push/pop/drain calls that leave them whole, and dropping a reply
/// slot instead (as ignoring the poisoned lock did) would pair nsqd's next answers with the
/// wrong callers.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Most PUBs gathered into one MPUB.
const MAX_COALESCED: usize = 1000;

enum Command {
    Pub {
        topic: String,
        body: Bytes,
    },
    MPub {
        topic: String,
        bodies: Vec<Bytes>,
    },
    DPub {
        topic: String,
        defer_ms: u64,
        body: Bytes,
    },
}

struct Request {
    cmd: Command,
    reply: Reply,
}

/// Whether the producer's connection is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected yet, or reconnecting.
    Connecting,
    /// Connected and identified.
    Connected,
    /// The last attempt or connection failed.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// `close()` was called.
    Closed,
}

struct Shared {
    /// The nsqd in use (or last tried).
    addr: Arc<Mutex<String>>,
    config: ProducerConfig,
    /// Dropping the last `Producer` drops this sender, which ends the connection task.
    tx: mpsc::Sender<Request>,
    ctl: Arc<Control>,
    state: Arc<watch::Sender<ConnectionState>>,
    events: Events,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the connection task shares with the handles, without keeping them alive.
struct Control {
    closed: AtomicBool,
    close_now: Notify,
}

/// What the connection task owns.
struct Task {
    addr: Arc<Mutex<String>>,
    /// The nsqd to choose from on each (re)connection, for [`Producer::connect_any`].
    choices: Option<watch::Receiver<Vec<String>>>,
    config: ProducerConfig,
    ctl: Arc<Control>,
    state: Arc<watch::Sender<ConnectionState>>,
    events: Events,
}

/// Publishes to one nsqd. Cheap to clone; all clones share one connection.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let producer = nsq::Producer::connect("127.0.0.1:4150", nsq::ProducerConfig::default())?;
/// producer.publish("sensor_data", &b"hello"[..]).await?; // resolves when nsqd said OK
/// producer.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("addr", &*lock(&self.shared.addr))
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Starts a producer for nsqd at `addr` (`host:port`). It connects in the background and
    /// keeps reconnecting; publishes wait for the connection up to `publish_timeout`.
    /// Must be called inside a tokio runtime.
    pub fn connect(addr: &str, config: ProducerConfig) -> Result<Producer, ConfigError> {
        check_tcp_address(addr)?;
        Ok(Self::start(addr.to_string(), None, config))
    }

    /// Starts a producer for any one nsqd of a set that may change (e.g. the passing nsqd
    /// instances that service discovery lists). It connects to the first address; after a
    /// failed attempt or a lost connection it moves to the next address of the set as it is
    /// then, and it stays on a working connection whatever the set becomes (so that
    /// publishes are not cut off by a discovery hiccup). While the set is empty it waits for
    /// one (publishes wait up to `publish_timeout`). Addresses that are not `host:port` are
    /// skipped with a WARN. Must be called inside a tokio runtime.
    pub fn connect_any(
        addrs: watch::Receiver<Vec<String>>,
        config: ProducerConfig,
    ) -> Result<Producer, ConfigError> {
        let first = addrs.borrow().first().cloned().unwrap_or_default();
        Ok(Self::start(first, Some(addrs), config))
    }

    fn start(
        addr: String,
        choices: Option<watch::Receiver<Vec<String>>>,
        config: ProducerConfig,
    ) -> Producer {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (state, _) = watch::channel(ConnectionState::Connecting);
        let ctl = Arc::new(Control {
            closed: AtomicBool::new(false),
            close_now: Notify::new(),
        });
        let state = Arc::new(state);
        let events = Events::new();
        let addr = Arc::new(Mutex::new(addr));
        let task = Task {
            addr: Arc::clone(&addr),
            choices,
            config: config.clone(),
            ctl: Arc::clone(&ctl),
            state: Arc::clone(&state),
            events: events.clone(),
        };
        let shared = Arc::new(Shared {
            addr,
            config,
            tx,
            ctl,
            state,
            events,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(run(task, rx));
        *lock(&shared.task) = Some(task);
        Producer { shared }
    }

    /// The nsqd address in use (or being tried; empty while [`Producer::connect_any`] waits
    /// for an address).
    pub fn addr(&self) -> String {
        lock(&self.shared.addr).clone()
    }

    /// The connection state, as a watch channel (for readiness checks).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        *self.shared.state.borrow() == ConnectionState::Connected
    }

    /// Every connection event from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Publishes one message; resolves when nsqd answered OK.
    pub async fn publish(&self, topic: &str, body: impl Into<Bytes>) -> Result<(), PublishError> {
        let body = body.into();
        self.check_topic(topic)?;
        self.check_body(&body)?;
        self.send(Command::Pub {
            topic: topic.to_string(),
            body,
        })
        .await
    }

    /// Publishes a batch atomically with MPUB; resolves when nsqd answered OK for all of it.
    pub async fn multi_publish(&self, topic: &str, bodies: Vec<Bytes>) -> Result<(), PublishError> {
        self.check_topic(topic)?;
        if bodies.is_empty() {
            return Err(InvalidInput::EmptyBatch.into());
        }
        let mut total = 4usize;
        for b in &bodies {
            self.check_body(b)?;
            total += 4 + b.len();
        }
        if total > self.shared.config.max_body_size {
            return Err(InvalidInput::BatchTooLarge {
                size: total,
                max: self.shared.config.max_body_size,
            }
            .into());
        }
        self.send(Command::MPub {
            topic: topic.to_string(),
            bodies,
        })
        .await
    }

    /// Publishes one message that nsqd delivers only after `defer` (DPUB).
    pub async fn deferred_publish(
        &self,
        topic: &str,
        body: impl Into<Bytes>,
        defer: Duration,
    ) -> Result<(), PublishError> {
        let body = body.into();
        self.check_topic(topic)?;
        self.check_body(&body)?;
        if defer > Duration::from_secs(3600) {
            return Err(InvalidInput::DeferTooLong(defer).into());
        }
        self.send(Command::DPub {
            topic: topic.to_string(),
            defer_ms: defer.as_millis() as u64,
            body,
        })
        .await
    }

    /// Stops the producer: new publishes fail with [`PublishError::Closed`], those already
    /// written are awaited (up to `publish_timeout`), then the connection is closed.
    pub async fn close(&self) {
        self.shared.ctl.closed.store(true, Ordering::SeqCst);
        self.shared.ctl.close_now.notify_one();
        let task = lock(&self.shared.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.shared.state.send_replace(ConnectionState::Closed);
    }

    fn check_topic(&self, topic: &str) -> Result<(), PublishError> {
        if protocol::is_valid_topic_name(topic) {
            Ok(())
        } else {
            Err(InvalidInput::TopicName(topic.to_string()).into())
        }
    }

    fn check_body(&self, body: &[u8]) -> Result<(), PublishError> {
        if body.is_empty() {
            return Err(InvalidInput::EmptyBody.into());
        }
        let max = self.shared.config.max_msg_size;
        if body.len() > max {
            return Err(InvalidInput::BodyTooLarge {
                size: body.len(),
                max,
            }
            .into());
        }
        Ok(())
    }

    async fn send(&self, cmd: Command) -> Result<(), PublishError> {
        if self.shared.ctl.closed.load(Ordering::SeqCst) {
            return Err(PublishError::Closed);
        }
        let timeout = self.shared.config.publish_timeout;
        let (reply, rx) = oneshot::channel();
        let fut = async {
            self.shared
                .tx
                .send(Request { cmd, reply })
                .await
                .map_err(|_| PublishError::Closed)?;
            rx.await.map_err(|_| PublishError::Closed)?
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Timeout {
                addr: lock(&self.shared.addr).clone(),
                timeout,
            }),
        }
    }
}

/// The connection task: connect, pump, reconnect, until closed or every handle is dropped.
async fn run(task: Task, mut rx: mpsc::Receiver<Request>) {
    let Task {
        addr: current,
        mut choices,
        config,
        ctl,
        state,
        events,
    } = task;
    let mut backoff = Backoff::new(
        config.connection.reconnect_initial,
        config.connection.reconnect_max,
    );
    let mut addr = lock(&current).clone();
    // Whether the last attempt or connection to `addr` failed: then the next address is tried.
    let mut failed = false;
    loop {
        if ctl.closed.load(Ordering::SeqCst) || rx.is_closed() {
            break;
        }
        if let Some(choices) = &mut choices {
            match choose(choices, &addr, failed, &ctl).await {
                Some(next) => addr = next,
                None => break, // closed while waiting for an address
            }
            *lock(&current) = addr.clone();
        }
        state.send_replace(ConnectionState::Connecting);
        let reason = match conn::connect(&addr, &config.connection, None).await {
            Ok(connection) => {
                backoff.reset();
                state.send_replace(ConnectionState::Connected);
                events.emit(Event::Connected { addr: addr.clone() });
                match pump(&addr, &config, &ctl, connection, &mut rx).await {
                    PumpEnd::Closed => break,
                    PumpEnd::Failed(r) => r,
                }
            }
            Err(e) => e.to_string(),
        };
        failed = true;
        state.send_replace(ConnectionState::Disconnected {
            reason: reason.clone(),
        });
        events.emit(Event::Disconnected {
            addr: addr.clone(),
            reason,
        });
        if ctl.closed.load(Ordering::SeqCst) {
            break;
        }
        let delay = backoff.next_delay();
        events.emit(Event::Reconnecting {
            addr: addr.clone(),
            attempt: backoff.attempt(),
            delay,
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctl.close_now.notified() => {}
        }
    }
    // Whatever is still queued was never written: fail it.
    rx.close();
    while let Ok(req) = rx.try_recv() {
        let _ = req.reply.send(Err(PublishError::Closed));
    }
    state.send_replace(ConnectionState::Closed);
}

/// The address to connect to next, for [`Producer::connect_any`]: `addr` again while it is
/// listed and did not fail, else the one after it in the list (the first when `addr` is not
/// listed). Waits while the list has no valid address; `None` when the producer is closed
/// meanwhile or the list's sender is gone with nothing listed.
async fn choose(
    choices: &mut watch::Receiver<Vec<String>>,
    addr: &str,
    failed: bool,
    ctl: &Control,
) -> Option<String> {
    loop {
        let valid: Vec<String> = choices
            .borrow_and_update()
            .iter()
            .filter(|a| match check_tcp_address(a) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(nsqd = %a, error = %e, "skipping an nsqd address that is not valid");
                    false
                }
            })
            .cloned()
            .collect();
        if !valid.is_empty() {
            let at = valid.iter().position(|a| a == addr);
            return Some(match at {
                Some(i) if failed => valid[(i + 1) % valid.len()].clone(),
                Some(i) => valid[i].clone(),
                None => valid[0].clone(),
            });
        }
        if ctl.closed.load(Ordering::SeqCst) {
            return None;
        }
        tokio::select! {
            changed = choices.changed() => {
                if changed.is_err() && choices.borrow().is_empty() {
                    return None;
                }
            }
            _ = ctl.close_now.notified() => return None,
        }
    }
}

enum PumpEnd {
    Closed,
    Failed(String),
}

/// Runs one connection until it fails or the producer is closed and drained.
async fn pump(
    addr: &str,
    config: &ProducerConfig,
    ctl: &Control,
    connection: conn::Connection,
    rx: &mut mpsc::Receiver<Request>,
) -> PumpEnd {
    let conn::Connection {
        mut reader,
        mut writer,
        ..
    } = connection;
    let pending: Mutex<VecDeque<Replies>> = Mutex::new(VecDeque::new());
    let nop = Notify::new();
    let drained = Notify::new();

    let write_loop = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut closing = false;
        let mut encoder = Encoder {
            pending: &pending,
            coalesce: config.coalesce_pubs,
            max_body_size: config.max_body_size,
            open: None,
        };
        loop {
            if closing {
                // Wait for every written command to be answered, then end.
                let empty = lock(&pending).is_empty();
                if empty {
                    return Ok::<PumpEnd, String>(PumpEnd::Closed);
                }
                let waited = tokio::time::timeout(config.publish_timeout, drained.notified()).await;
                if waited.is_err() {
                    return Ok(PumpEnd::Closed);
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = nop.notified() => {
                    encode::nop(&mut buf);
                }
                _ = ctl.close_now.notified() => {
                    closing = true;
                }
                req = rx.recv() => match req {
                    Some(req) => encoder.queue(&mut buf, req),
                    None => closing = true,
                },
            }
            if ctl.closed.load(Ordering::SeqCst) {
                closing = true;
            }
            // Drain what else is queued into the same write.
            while !closing && buf.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(req) => encoder.queue(&mut buf, req),
                    Err(_) => break,
                }
            }
            encoder.flush(&mut buf);
            if !buf.is_empty() {
                writer.send(&buf).await?;
                buf.clear();
                if buf.capacity() > 4 * 1024 * 1024 {
                    buf = BytesMut::with_capacity(64 * 1024);
                }
            }
        }
    };

    let read_loop = async {
        // nsqd sends a fatal error frame, then closes: the error is the reason.
        let mut last_error: Option<String> = None;
        loop {
            let frame = match reader.next().await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Err::<PumpEnd, String>(match &last_error {
                        Some(e) => format!("nsqd closed the connection after: {e}"),
                        None => "nsqd closed the connection".into(),
                    })
                }
                Err(ReadError::Io(e)) => return Err(format!("read failed: {e}")),
                Err(ReadError::Protocol(e)) => return Err(e.to_string()),
            };
            match frame {
                Frame::Response(r) if r.as_ref() == protocol::HEARTBEAT => nop.notify_one(),
                Frame::Response(r) => {
                    let reply = lock(&pending).pop_front();
                    match reply {
                        Some(reply) => {
                            if r.as_ref() != protocol::OK {
                                tracing::warn!(nsqd = addr, response = %String::from_utf8_lossy(&r), "unexpected publish response, counted as success");
                            }
                            reply.send(Ok(()));
                        }
                        None => {
                            return Err(format!(
                                "response {:?} with no publish waiting for it",
                                String::from_utf8_lossy(&r)
                            ))
                        }
                    }
                    if lock(&pending).is_empty() {
                        drained.notify_one();
                    }
                }
                Frame::Error(e) => {
                    let text = String::from_utf8_lossy(&e).into_owned();
                    let code = text
                        .split_whitespace()
                        .next()
                        .unwrap_or("E_UNKNOWN")
                        .to_string();
                    tracing::warn!(nsqd = addr, error = %text, "nsqd rejected a publish");
                    last_error = Some(text.clone());
                    if let Some(reply) = lock(&pending).pop_front() {
                        reply.send(Err(PublishError::Rejected { code, text }));
                    }
                    if lock(&pending).is_empty() {
                        drained.notify_one();
                    }
                }
                Frame::Message(_) => {
                    return Err("nsqd sent a message to a producer connection".into());
                }
            }
        }
    };

    let end = tokio::select! {
        r = write_loop => r,
        r = read_loop => r,
    };
    let end = match end {
        Ok(end) => end,
        Err(reason) => PumpEnd::Failed(reason),
    };
    let reason = match &end {
        PumpEnd::Closed => "producer closed".to_string(),
        PumpEnd::Failed(r) => r.clone(),
    };
    // Written but unanswered: nsqd may or may not have it. Fail each, never claim success.
    {
        for reply in lock(&pending).drain(..) {
            reply.send(Err(PublishError::ConnectionLost {
                addr: addr.to_string(),
                reason: reason.clone(),
            }));
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_back_not_skipped() {
        let m = std::sync::Arc::new(Mutex::new(std::collections::VecDeque::from([1u8])));
        let poisoner = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(m.is_poisoned());
        lock(&m).push_back(2);
        assert_eq!(lock(&m).iter().copied().collect::<Vec<_>>(), [1, 2]);
    }

    fn req(cmd: Command) -> (Request, oneshot::Receiver<Result<(), PublishError>>) {
        let (reply, rx) = oneshot::channel();
        (Request { cmd, reply }, rx)
    }

    fn pub_(topic: &str, body: &'static [u8]) -> Command {
        Command::Pub {
            topic: topic.into(),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn queued_pubs_to_one_topic_become_one_mpub_and_all_callers_get_its_answer() {
        let pending = Mutex::new(VecDeque::new());
        let mut enc = Encoder {
            pending: &pending,
            coalesce: true,
            max_body_size: 1024,
            open: None,
        };
        let mut buf = BytesMut::new();
        let mut rxs = Vec::new();
        for cmd in [
            pub_("a", b"1"),
            pub_("a", b"22"),
            pub_("a", b"333"),
            pub_("b", b"x"),
            Command::DPub {
                topic: "a".into(),
                defer_ms: 5,
                body: Bytes::from_static(b"d"),
            },
        ] {
            let (r, rx) = req(cmd);
            enc.queue(&mut buf, r);
            rxs.push(rx);
        }
        enc.flush(&mut buf);
        let mut expected = BytesMut::new();
        encode::multi_publish(
            &mut expected,
            "a",
            &[
                Bytes::from_static(b"1"),
                Bytes::from_static(b"22"),
                Bytes::from_static(b"333"),
            ],
        );
        encode::publish(&mut expected, "b", b"x");
        encode::deferred_publish(&mut expected, "a", 5, b"d");
        assert_eq!(buf, expected);

        let mut p = pending.lock().unwrap();
        assert_eq!(p.len(), 3, "three commands on the wire");
        // nsqd rejects the MPUB: all three of its callers see the error, the others do not.
        p.pop_front().unwrap().send(Err(PublishError::Rejected {
            code: "E_MPUB_FAILED".into(),
            text: "E_MPUB_FAILED x".into(),
        }));
        p.pop_front().unwrap().send(Ok(()));
        p.pop_front().unwrap().send(Ok(()));
        let results: Vec<bool> = rxs
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap().is_ok())
            .collect();
        assert_eq!(results, vec![false, false, false, true, true]);
    }

    #[test]
    fn batches_respect_the_body_limit_and_abandoned_publishes_are_not_sent() {
        let pending = Mutex::new(VecDeque::new());
        let mut enc = Encoder {
            pending: &pending,
            coalesce: true,
            max_body_size: 4 + 2 * (4 + 10),
            open: None,
        };
        let mut buf = BytesMut::new();
        let mut keep = Vec::new();
        for _ in 0..3 {
            let (r, rx) = req(pub_("a", b"0123456789"));
            enc.queue(&mut buf, r);
            keep.push(rx);
        }
        let (r, rx) = req(pub_("a", b"gone"));
        drop(rx); // the caller gave up
        enc.queue(&mut buf, r);
        enc.flush(&mut buf);
        let p = pending.lock().unwrap();
        assert_eq!(p.len(), 2, "an MPUB of two, then a PUB of one");
        assert!(buf.starts_with(b"MPUB a\n"));
        assert!(!buf.windows(4).any(|w| w == b"gone"));
    }
}
