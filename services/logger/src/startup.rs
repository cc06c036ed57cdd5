//! Building and running the logger: [`Application::build`] then
//! [`Application::run_until_stopped`].
//!
//! `build` checks the settings that depend on each other (a usage error, exit code 2), opens
//! the output and rebuilds the de-duplication state from it, installs the metrics recorder
//! and binds the HTTP port. `run_until_stopped` starts the consumer and writes batches: it
//! takes a message, then whatever else has already arrived (up to `--max-in-flight`), and
//! hands the batch to the [`Sink`]. When the shutdown future resolves it closes the consumer
//! (CLS) while still writing what arrives, until every message is finished or requeued.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use anyhow::Context as _;
use axum::{extract::State, routing::get, Json, Router};
use nsq::{ConnectionConfig, ConsumerConfig, Message};
use suite_common::{
    consul::{self, Discovery, Registration},
    http::{self, HttpServer, Readiness},
    service::Base,
    shutdown::CancellationToken,
};

use crate::{
    channels::{self, ChannelWatch, Channels},
    config::Config,
    gaps::{Gaps, GapsReport},
    lost::LossList,
    metrics as m,
    output::Output,
    replay::Replay,
    seen::Seen,
    sink::Sink,
    workers::{Snapshot, WorkerWindow},
};

/// Name of the service, in `/health`, in the metrics' `service` label and in nsqadmin.
pub const SERVICE: &str = "logger";

/// A built logger, ready to run.
pub struct Application {
    /// The settings.
    settings: Arc<Config>,
    /// The output and the state derived from it.
    sink: Sink,
    /// Per-worker counts, shared with `GET /workers`.
    workers: Arc<Mutex<WorkerWindow>>,
    /// Whether the last write succeeded.
    writable: Arc<AtomicBool>,
    /// Start of the worker window's clock.
    started: Instant,
    /// What `/ready` reports: ready while consuming from at least one nsqd with a writable
    /// output.
    readiness: Readiness,
    /// The gap tracker, shared with `GET /gaps`.
    gaps: Arc<Mutex<Gaps>>,
    /// The loss list, when gap detection is on.
    losses: Option<LossList>,
    /// The bound HTTP port.
    http: HttpServer,
    /// All HTTP routes.
    router: Router,
    /// Consul, with --consul-http-address: registration, nsqlookupd and nsqd by name.
    discovery: Option<Arc<Discovery>>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("logger_id", &self.settings.logger_id)
            .field("http", &self.http.local_addr())
            .finish_non_exhaustive()
    }
}

suite_common::impl_service!(Application, Config);

/// State of `GET /workers`.
#[derive(Debug, Clone)]
struct WorkersState {
    /// The window.
    workers: Arc<Mutex<WorkerWindow>>,
    /// Start of the window's clock.
    started: Instant,
}

impl Application {
    /// Validates `config`, opens the output (rebuilding the de-duplication state from it)
    /// and binds the HTTP port.
    ///
    /// Must be called inside a tokio runtime. Fails with a usage error for a bad setting, or
    /// when the output cannot be used, the HTTP port bound or the metrics recorder installed.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.check()?;
        let settings = Arc::new(config);
        let Base {
            readiness,
            router,
            http,
        } = Base::start(SERVICE, &settings.logger_id, &*settings, "starting").await?;
        m::describe();
        m::register(&settings.topic, &settings.channel);

        let (output, seen) = open_output(&settings).await?;
        let gaps = Arc::new(Mutex::new(Gaps::new(settings.gaps())));
        let losses = if settings.detect_gaps {
            m::describe_gaps();
            Some(open_loss_list(&settings, &gaps).await?)
        } else {
            tracing::info!(
                "gap detection off (--detect-gaps=false): missing readings are not asked for"
            );
            None
        };
        // The epochs this logger consumed before are answered for from seq 1.
        if let Ok(mut gaps) = gaps.lock() {
            gaps.restored(&seen);
        }
        let started = Instant::now();
        let workers = Arc::new(Mutex::new(WorkerWindow::new(
            settings.summary_interval.get(),
        )));
        let writable = Arc::new(AtomicBool::new(true));
        let sink = Sink::new(
            Arc::clone(&settings),
            output,
            seen,
            Arc::clone(&workers),
            Arc::clone(&writable),
            started,
        );

        let router = router
            .merge(
                Router::new()
                    .route("/workers", get(workers_route))
                    .with_state(WorkersState {
                        workers: Arc::clone(&workers),
                        started,
                    }),
            )
            .merge(
                Router::new()
                    .route("/gaps", get(gaps_route))
                    .with_state(GapsState {
                        gaps: Arc::clone(&gaps),
                        enabled: settings.detect_gaps,
                    }),
            );
        let discovery = Discovery::from_args(&settings.consul)?.map(Arc::new);
        tracing::info!(
            http_address = %http.local_addr(),
            logger_id = %settings.logger_id,
            topic = %settings.topic,
            channel = %settings.channel,
            "logger started"
        );
        Ok(Self {
            settings,
            sink,
            workers,
            writable,
            started,
            readiness,
            gaps,
            losses,
            http,
            router,
            discovery,
        })
    }

    /// The readiness reported by `/ready`.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The keys already in the output (rebuilt from it at start-up).
    pub fn seen(&self) -> &Seen {
        self.sink.seen()
    }

    /// Consumes and writes until `shutdown` resolves, then stops cleanly: CLS, every
    /// delivered message written and finished (or requeued).
    ///
    /// Fails when the output can no longer be trusted (see [`Sink::handle_batch`]).
    pub async fn run_until_stopped<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Self {
            settings: s,
            mut sink,
            workers,
            writable,
            started,
            readiness,
            gaps,
            losses,
            http,
            router,
            discovery,
        } = self;
        let connection = s.nsq.resolve()?;
        // The replay machinery first: if it cannot start, nothing else was started; if the
        // consumer then cannot start, the replay machinery is closed again.
        let mut replay = match losses {
            Some(losses) => Some(Replay::start(
                Arc::clone(&s),
                discovery.as_deref(),
                gaps,
                losses,
            )?),
            None => None,
        };
        let started_consumer = consul::consumer(
            discovery.as_deref(),
            &s.topic,
            &s.channel,
            ConsumerConfig {
                connection: connection.apply(ConnectionConfig {
                    client_id: s.logger_id.clone(),
                    user_agent: format!("nsq-suite-{SERVICE}/{}", env!("CARGO_PKG_VERSION")),
                    output_buffer_size: s.consumer.output_buffer_size(),
                    ..ConnectionConfig::default()
                }),
                nsqd_tcp_addresses: s.consumer.nsqd_addresses(),
                lookupd_http_addresses: s.consumer.lookupd_urls(),
                lookupd_poll_interval: s.consumer.lookupd_poll_interval.get(),
                max_in_flight: s.consumer.max_in_flight,
                // The logger never gives up on a result: a write that keeps failing is an
                // operator's problem, visible in /ready and the logs, not a reason to drop.
                max_attempts: 0,
                output_buffer_timeout: s.consumer.output_buffer_timeout(),
                ..ConsumerConfig::default()
            },
        );
        let (consumer, mut messages) = match started_consumer {
            Ok(started) => started,
            Err(e) => {
                if let Some(replay) = replay {
                    replay.close().await;
                }
                return Err(anyhow::Error::new(e).context("starting the consumer"));
            }
        };
        if let Some(replay) = replay.as_mut() {
            replay.watch_results(consumer.clone());
        }

        let stop_http = CancellationToken::new();
        let http_addr = http.local_addr();
        let http_task = tokio::spawn(http.run(router, stop_http.clone().cancelled_owned()));
        if let Some(discovery) = &discovery {
            discovery.keep_registered(Registration::new(
                SERVICE,
                &s.logger_id,
                http_addr,
                &s.consul,
            ));
        }
        let sampler = {
            let writable = Arc::clone(&writable);
            tokio::spawn(http::sample_consumer(
                consumer.clone(),
                &s.topic,
                &s.channel,
                readiness.clone(),
                discovery.clone(),
                move || {
                    (!writable.load(Ordering::Relaxed))
                        .then(|| "the output is not writable (see the logs)".to_owned())
                },
            ))
        };
        // The topic's channels (depth, clients), for the summary line and the gauges.
        let channels = Arc::new(Mutex::new(Channels::new()));
        let consul_lookupds = discovery
            .as_ref()
            .map(|d| d.watch(suite_common::consul::Watched::Nsqlookupd));
        let channel_watch = ChannelWatch::new(s.consumer.lookupd_urls(), consul_lookupds, &s.topic)
            .map(|watch| {
                channels::describe();
                tokio::spawn(channels::run(
                    watch,
                    s.summary_interval.get(),
                    Arc::clone(&channels),
                ))
            });
        let mut summary = tokio::time::interval_at(
            tokio::time::Instant::now() + s.summary_interval.get(),
            s.summary_interval.get(),
        );
        summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let max_batch = s.consumer.max_in_flight as usize;
        let mut closing: Option<tokio::task::JoinHandle<()>> = None;
        let mut failure: Option<anyhow::Error> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown, if closing.is_none() => {
                    tracing::info!(
                        in_flight = consumer.stats().in_flight(),
                        "stopping: closing the consumer (CLS) and writing the messages in flight"
                    );
                    sampler.abort();
                    readiness.set_not_ready("stopping");
                    let consumer = consumer.clone();
                    closing = Some(tokio::spawn(async move { consumer.close().await }));
                }
                _ = summary.tick() => {
                    log_summary(&workers, started, &s.topic, &channels);
                    // Idle outputs rotate by age too; complete epochs leave memory.
                    sink.retire();
                    if let Err(e) = sink.rotate_if_due().await {
                        failure = Some(e);
                        break;
                    }
                }
                event = next_replay_event(&mut replay) => {
                    if let Some(replay) = replay.as_mut() {
                        replay.handle(event, sink.seen());
                    }
                }
                msg = messages.recv() => match msg {
                    Some(first) => {
                        let batch = take_batch(first, &mut messages, max_batch);
                        if let Err(e) = sink.handle_batch(batch).await {
                            failure = Some(e);
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        sampler.abort();
        if let Some(watch) = channel_watch {
            watch.abort();
        }
        if let Some(replay) = replay {
            replay.close().await;
        }
        if let Some(e) = failure {
            tracing::error!(error = %format!("{e:#}"), "stopping: the output cannot be trusted");
            readiness.set_not_ready("failed");
            if let Some(discovery) = &discovery {
                discovery.deregister().await;
            }
            consumer.close_and_requeue(messages).await;
            stop_http.cancel();
            let _ = http_task.await;
            return Err(e);
        }
        if let Some(closing) = closing {
            let _ = closing.await;
        }
        readiness.set_not_ready("stopped");
        sink.close().await;
        if let Some(discovery) = &discovery {
            discovery.deregister().await;
        }
        log_summary(&workers, started, &s.topic, &channels);
        stop_http.cancel();
        match http_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "http server failed"),
            Err(e) => tracing::warn!(error = %e, "http server task failed"),
        }
        tracing::info!(readings = sink.seen().len(), "logger stopped");
        Ok(())
    }
}

/// The next event of the replay machinery, or never when gap detection is off.
async fn next_replay_event(replay: &mut Option<Replay>) -> crate::replay::Event {
    match replay {
        Some(replay) => replay.next().await,
        None => std::future::pending().await,
    }
}

/// Opens the loss list (if any) and restores what it holds into the gap tracker.
async fn open_loss_list(settings: &Config, gaps: &Mutex<Gaps>) -> anyhow::Result<LossList> {
    let Some(path) = settings.lost_output() else {
        tracing::info!("no loss list (stdout output, no --lost-output): losses are only logged, counted and shown by GET /gaps");
        return Ok(LossList::none());
    };
    let (list, records) = tokio::task::spawn_blocking(move || LossList::open(&path))
        .await
        .context("the task opening the loss list failed")??;
    let restored = match gaps.lock() {
        Ok(mut gaps) => {
            for r in &records {
                if r.reason == crate::gaps::LossReason::Recovered {
                    gaps.unmark_lost(&r.sensor_id, r.epoch, r.from_seq, r.to_seq);
                } else {
                    gaps.mark_lost(&r.sensor_id, r.epoch, r.from_seq, r.to_seq);
                }
            }
            gaps.report(Instant::now()).lost
        }
        Err(_) => 0,
    };
    if restored > 0 {
        tracing::warn!(
            loss_list = %list.describe(),
            ranges = records.len(),
            readings = restored,
            "readings reported lost before this start (not asked for again)"
        );
    }
    Ok(list)
}

/// State of `GET /gaps`.
#[derive(Debug, Clone)]
struct GapsState {
    /// The tracker.
    gaps: Arc<Mutex<Gaps>>,
    /// Whether gap detection is on.
    enabled: bool,
}

/// `GET /gaps`: missing, pending and lost ranges per sensor epoch.
async fn gaps_route(State(state): State<GapsState>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !state.enabled {
        return (
            axum::http::StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "gap detection is off (--detect-gaps=false)"})),
        )
            .into_response();
    }
    let now = Instant::now();
    let report: GapsReport = match state.gaps.lock() {
        Ok(gaps) => gaps.report(now),
        Err(poisoned) => poisoned.into_inner().report(now),
    };
    Json(report).into_response()
}

/// Logs the per-worker summary, when there was work in the window, with the depth of the
/// topic's channels; or the channels alone when one holds messages.
fn log_summary(
    workers: &Mutex<WorkerWindow>,
    started: Instant,
    topic: &str,
    channels: &Mutex<Channels>,
) {
    let snapshot = match workers.lock() {
        Ok(mut w) => w.snapshot(started.elapsed().as_secs()),
        Err(poisoned) => poisoned.into_inner().snapshot(started.elapsed().as_secs()),
    };
    let (channel_part, backlog) = match channels.lock() {
        Ok(c) => (
            channels::summary(topic, &c),
            c.values().any(|c| c.depth > 0),
        ),
        Err(_) => (String::new(), false),
    };
    let line = match (snapshot.count > 0, channel_part.is_empty()) {
        (true, true) => snapshot.summary(),
        (true, false) => format!("{}; {channel_part}", snapshot.summary()),
        (false, false) if backlog => channel_part,
        _ => return,
    };
    tracing::info!(window_seconds = snapshot.window_seconds, "{line}");
}

/// Opens the output named in the settings, or stdout; returns it with the keys it holds.
async fn open_output(settings: &Config) -> anyhow::Result<(Output, Seen)> {
    let Some(path) = settings.output.clone() else {
        tracing::info!("writing to stdout: duplicates are recognised within this run only");
        return Ok((Output::stdout(), Seen::default()));
    };
    let options = settings.output_options();
    let started = Instant::now();
    let (output, recovered) =
        tokio::task::spawn_blocking(move || Output::open_with(&path, &options))
            .await
            .context("the task opening the output failed")??;
    if let Some(problem) = &recovered.state_problem {
        tracing::warn!(
            output = %output.describe(),
            problem = %problem,
            closed_files_read = recovered.closed_read,
            "state file not used: rebuilt the de-duplication state from the output files"
        );
    }
    if recovered.truncated_bytes > 0 {
        tracing::warn!(
            output = %output.describe(),
            bytes = recovered.truncated_bytes,
            "the output ended with an incomplete line (a crash during a write): cut it off; \
             its message was not finished and will be delivered again"
        );
    }
    if recovered.duplicate_lines > 0 {
        tracing::warn!(
            output = %output.describe(),
            lines = recovered.duplicate_lines,
            "the output holds lines with the same (sensor_id, epoch, seq) as an earlier line"
        );
    }
    if !output.is_durable() {
        tracing::warn!(
            output = %output.describe(),
            "the output is not a regular file: duplicates are recognised within this run only"
        );
    }
    tracing::info!(
        output = %output.describe(),
        from_state_file = recovered.from_state,
        closed_files_read = recovered.closed_read,
        bytes_read = recovered.bytes_read,
        lines = recovered.lines,
        readings = recovered.seen.len(),
        sensor_epochs = recovered.seen.epochs(),
        took = ?started.elapsed(),
        "de-duplication state rebuilt from the output"
    );
    Ok((output, recovered.seen))
}

/// `first` and whatever else has already arrived, up to `max` messages.
fn take_batch(first: Message, messages: &mut nsq::Messages, max: usize) -> Vec<Message> {
    let mut batch = Vec::with_capacity(max.min(1024));
    batch.push(first);
    while batch.len() < max {
        match messages.try_recv() {
            Some(msg) => batch.push(msg),
            None => break,
        }
    }
    batch
}

/// `GET /workers`: the per-worker window at this second.
async fn workers_route(State(state): State<WorkersState>) -> Json<Snapshot> {
    let now = state.started.elapsed().as_secs();
    let snapshot = match state.workers.lock() {
        Ok(mut window) => window.snapshot(now),
        Err(poisoned) => poisoned.into_inner().snapshot(now),
    };
    Json(snapshot)
}
