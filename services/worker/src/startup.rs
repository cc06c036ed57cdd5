//! Building and running the worker: [`Application::build`] then
//! [`Application::run_until_stopped`].
//!
//! `build` validates the configuration (a usage error, exit code 2, when it is bad), installs
//! the metrics recorder, starts the producer for results and dead letters, and binds the HTTP
//! port. `run_until_stopped` starts the consumer and handles each message in its own task
//! (at most `--max-in-flight` at once, since nsqd delivers no more). When the shutdown future
//! resolves it closes the consumer (CLS) while still handling what arrives, waits until every
//! message is finished or requeued, then closes the producer.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use nsq::{ConnectionConfig, ConsumerConfig, Producer, ProducerConfig};
use suite_common::{
    config::ConfigError,
    consul::{self, Discovery, Registration},
    http::{self, HttpServer, Readiness},
    service::Base,
    shutdown::CancellationToken,
};
use tokio::task::JoinSet;

use crate::{config::Config, handler::Handler, metrics as m};

/// Name of the service, in `/health`, in the metrics' `service` label and in nsqadmin.
pub const SERVICE: &str = "worker";

/// Time allowed for the producer to close after the last message.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A built worker, ready to run.
pub struct Application {
    /// The validated configuration.
    settings: Arc<Config>,
    /// Publishes results and dead letters (already connecting).
    producer: Producer,
    /// Consul, with --consul-http-address: registration, nsqlookupd and nsqd by name.
    discovery: Option<Arc<Discovery>>,
    /// What `/ready` reports: ready while consuming from at least one nsqd and the producer
    /// is connected.
    readiness: Readiness,
    /// The bound HTTP port.
    http: HttpServer,
    /// All HTTP routes.
    router: axum::Router,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("worker_id", &self.settings.worker_id)
            .field("http", &self.http.local_addr())
            .finish_non_exhaustive()
    }
}

suite_common::impl_service!(Application, Config);

impl Application {
    /// Validates `config`, starts the producer and binds the HTTP port.
    ///
    /// Must be called inside a tokio runtime. Fails with a usage error for a bad setting, or
    /// when the HTTP port cannot be bound or the metrics recorder installed.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.check()?;
        let settings = Arc::new(config);
        let Base {
            readiness,
            router,
            http,
        } = Base::start(SERVICE, &settings.worker_id, &*settings, "starting").await?;
        m::describe();
        m::register(
            &settings.topic,
            &settings.channel,
            &settings.destination_topic,
        );
        let discovery = Discovery::from_args(&settings.consul)?.map(Arc::new);
        let producer = consul::producer(
            discovery.as_deref(),
            settings.destination_nsqd(),
            crate::config::DEFAULT_NSQD,
            ProducerConfig {
                connection: connection_config(&settings)?,
                ..ProducerConfig::default()
            },
        )
        .context("starting the nsqd producer")?;
        tracing::info!(
            http_address = %http.local_addr(),
            worker_id = %settings.worker_id,
            topic = %settings.topic,
            channel = %settings.channel,
            "worker started"
        );
        Ok(Self {
            settings,
            producer,
            discovery,
            readiness,
            http,
            router,
        })
    }

    /// The worker id stamped into the results.
    pub fn worker_id(&self) -> &str {
        &self.settings.worker_id
    }

    /// The readiness reported by `/ready`.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Consumes and handles messages until `shutdown` resolves, then stops cleanly: CLS,
    /// every delivered message finished or requeued, producer closed.
    pub async fn run_until_stopped<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let s = Arc::clone(&self.settings);
        let (consumer, mut messages) = consul::consumer(
            self.discovery.as_deref(),
            &s.topic,
            &s.channel,
            ConsumerConfig {
                connection: ConnectionConfig {
                    output_buffer_size: s.consumer.output_buffer_size(),
                    ..connection_config(&s)?
                },
                nsqd_tcp_addresses: s.consumer.nsqd_addresses(),
                lookupd_http_addresses: s.consumer.lookupd_urls(),
                lookupd_poll_interval: s.consumer.lookupd_poll_interval.get(),
                max_in_flight: s.consumer.max_in_flight,
                max_attempts: s.max_attempts,
                output_buffer_timeout: s.consumer.output_buffer_timeout(),
                ..ConsumerConfig::default()
            },
        )
        .context("starting the consumer")?;

        let stop_http = CancellationToken::new();
        let http_addr = self.http.local_addr();
        let http_task = tokio::spawn(
            self.http
                .run(self.router, stop_http.clone().cancelled_owned()),
        );
        if let Some(discovery) = &self.discovery {
            discovery.keep_registered(Registration::new(
                SERVICE,
                &s.worker_id,
                http_addr,
                &s.consul,
            ));
        }
        let sampler = tokio::spawn(http::sample_consumer(
            consumer.clone(),
            &s.topic,
            &s.channel,
            self.readiness.clone(),
            self.discovery.clone(),
            producer_problem(self.producer.clone()),
        ));

        let handler = Handler::new(Arc::clone(&s), self.producer.clone());
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut closing: Option<tokio::task::JoinHandle<()>> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown, if closing.is_none() => {
                    tracing::info!(
                        in_flight = consumer.stats().in_flight(),
                        "stopping: closing the consumer (CLS) and finishing the messages in flight"
                    );
                    sampler.abort();
                    self.readiness.set_not_ready("stopping");
                    let consumer = consumer.clone();
                    closing = Some(tokio::spawn(async move { consumer.close().await }));
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        // A panicking handler drops its message, which requeues it.
                        tracing::error!(error = %e, "a message handler failed; the message is requeued");
                    }
                }
                msg = messages.recv() => match msg {
                    Some(msg) => {
                        let handler = handler.clone();
                        tasks.spawn(async move {
                            handler.handle(msg).await;
                        });
                    }
                    None => break,
                },
            }
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                tracing::error!(error = %e, "a message handler failed; the message is requeued");
            }
        }
        if let Some(closing) = closing {
            let _ = closing.await;
        }
        sampler.abort();
        self.readiness.set_not_ready("stopped");
        if let Some(discovery) = &self.discovery {
            discovery.deregister().await;
        }
        if tokio::time::timeout(CLOSE_TIMEOUT, self.producer.close())
            .await
            .is_err()
        {
            tracing::warn!("the producer did not close in time");
        }
        stop_http.cancel();
        match http_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "http server failed"),
            Err(e) => tracing::warn!(error = %e, "http server task failed"),
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Connection settings that make the worker recognisable in nsqadmin.
fn connection_config(s: &Config) -> Result<ConnectionConfig, ConfigError> {
    Ok(s.nsq.resolve()?.apply(ConnectionConfig {
        client_id: s.worker_id.clone(),
        user_agent: format!("nsq-suite-{SERVICE}/{}", env!("CARGO_PKG_VERSION")),
        ..ConnectionConfig::default()
    }))
}

/// The worker's part of the sampler: the producer's connection gauge, and why `/ready` is
/// not ready while the destination nsqd is not connected.
fn producer_problem(producer: Producer) -> impl FnMut() -> Option<String> + Send + 'static {
    move || {
        let producer_up = producer.is_connected();
        let destination = producer.addr();
        metrics::gauge!(m::CONNECTIONS, "role" => "producer", "nsqd" => destination.clone())
            .set(if producer_up { 1.0 } else { 0.0 });
        if producer_up {
            None
        } else if destination.is_empty() {
            Some("no destination nsqd yet: waiting for Consul to list one".to_owned())
        } else {
            Some(format!(
                "not connected to the destination nsqd: {}",
                http::producer_reason(&producer.state().borrow(), &destination)
            ))
        }
    }
}
