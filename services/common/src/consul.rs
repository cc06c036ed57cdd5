//! Service discovery with Consul (optional): registration with a health check, and the
//! addresses of nsqlookupd and nsqd found by name.
//!
//! Without `--consul-http-address` nothing here runs and the services work as they always
//! did, from their fixed addresses. With it, a service:
//!
//! * **registers itself** with the local agent (`PUT /v1/agent/service/register`): its name
//!   (`sensor`, `worker`, `logger`), a unique id per instance ([`Registration::service_id`]),
//!   its HTTP address, `--consul-tag`s, and an HTTP check on its own `/ready` every
//!   `--consul-check-interval` with `DeregisterCriticalServiceAfter`
//!   (`--consul-deregister-critical-after`), so that a killed instance disappears by itself.
//!   [`Discovery::keep_registered`] checks the registration every [`RESYNC`] and registers
//!   again when the agent forgot it (an agent restarted without its state);
//!   [`Discovery::deregister`] removes it on SIGTERM, before the service exits;
//! * **finds nsqlookupd and nsqd** through the health API with blocking queries
//!   (`GET /v1/health/service/<name>?passing&index=…&wait=…`): [`Discovery::watch`] gives a
//!   `watch` channel of the passing instances' addresses, which changes as soon as Consul
//!   sees an instance turn critical, leave or arrive;
//! * **outlives Consul**: when the agent is unreachable, every task keeps the last known
//!   addresses and retries with [`nsq::backoff::Backoff`]; [`Discovery::problem`] says so,
//!   for `/ready`. Nothing about Consul is ever fatal after start-up.
//!
//! The token (`--consul-token`, or `--consul-token-file`) goes in the `X-Consul-Token`
//! header and is redacted like every secret. The HTTP client is `reqwest`, with a timeout on
//! every request (a blocking query's is its `wait` plus a margin).
//!
//! How the addresses combine with the fixed ones (`--lookupd-http-address`,
//! `--nsqd-tcp-address`) is [`union`]: fixed first, then Consul's, without duplicates.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    addr::LookupdAddr,
    config::ConfigError,
    security::Secret,
    setting::{HumanDuration, Invalid, Parse},
};

/// How often a registration is checked to still be there.
pub const RESYNC: Duration = Duration::from_secs(5);

/// How long a blocking query waits for a change before Consul answers anyway.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(30);

/// Timeout of a plain (not blocking) request to the agent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a health check on `/ready` may take before Consul counts it as failed.
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a deregistration on shutdown may delay the exit.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// Retry pauses after a failed request: 500 ms doubling to 10 s, jittered.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Most instances taken from one answer: Consul is the operator's, but one bad answer must
/// not make a service open thousands of connections.
const MAX_INSTANCES: usize = 256;

/// Largest answer read from the agent: a health answer of thousands of instances (about 2 KB
/// each) fits; a bigger one is an error rather than unbounded memory.
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// Most of an error answer read, for its first 200 characters in the message.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// Consul 1.13 raises a shorter `DeregisterCriticalServiceAfter` to one minute (its
/// `check_deregister_interval_min`, not configurable).
const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// The Consul settings every service has; flatten into its settings with
/// `#[command(flatten)]` and `#[serde(flatten)]`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct ConsulArgs {
    /// HTTP address of the local Consul agent (host:port or http://host:port); when set the
    /// service registers itself there and finds nsqlookupd and nsqd there (unset: no Consul)
    #[arg(long, value_name = "ADDR")]
    pub consul_http_address: Option<LookupdAddr>,

    /// ACL token for Consul (sent as X-Consul-Token); prefer --consul-token-file
    #[arg(long, value_name = "TOKEN")]
    pub consul_token: Option<Secret>,

    /// File holding the Consul ACL token (e.g. a Docker secret); surrounding white space is
    /// ignored
    #[arg(long, value_name = "PATH")]
    pub consul_token_file: Option<PathBuf>,

    /// Host Consul's health check (and anyone who asks Consul) reaches this service's HTTP
    /// port at (unset: the host of --http-address, or this machine's host name when that is
    /// 0.0.0.0 or ::)
    #[arg(long, value_name = "HOST")]
    pub consul_service_address: Option<String>,

    /// Tag of this service's Consul registration; repeatable
    #[arg(long, value_name = "TAG")]
    pub consul_tag: Vec<String>,

    /// How often Consul checks this service's /ready (the check times out after this or 3s,
    /// whichever is shorter)
    #[arg(
        long,
        value_name = "DURATION",
        default_value_t = HumanDuration::from_secs(5),
        value_parser = Parse(HumanDuration::nonzero)
    )]
    pub consul_check_interval: HumanDuration,

    /// How long this service's check may stay critical (e.g. after kill -9) before Consul
    /// removes the registration; at least 1m (Consul 1.13's minimum; its reaper runs every
    /// 30s, so removal comes up to 30s later)
    #[arg(
        long,
        value_name = "DURATION",
        default_value_t = HumanDuration::from_secs(60),
        value_parser = Parse(deregister_after)
    )]
    pub consul_deregister_critical_after: HumanDuration,
}

impl Default for ConsulArgs {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// Parses `--consul-deregister-critical-after`: at least one minute.
fn deregister_after(text: &str) -> Result<HumanDuration, Invalid> {
    let d: HumanDuration = text.parse()?;
    if d.get() < MIN_DEREGISTER_AFTER {
        return Err(Invalid::Value(format!(
            "'{text}' is below 1m, which Consul 1.13 would silently raise to 1m; give 1m or more"
        )));
    }
    Ok(d)
}

/// Why a request to Consul failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// No answer (connection refused, timeout, ...).
    #[error("Consul at {url} unreachable: {reason}")]
    Unreachable {
        /// The agent's base URL.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// An answer that is not a success, or not the expected JSON.
    #[error("Consul at {url} answered {path}: {reason}")]
    Answer {
        /// The agent's base URL.
        url: String,
        /// The API path asked.
        path: String,
        /// The status and body, or the decoding error.
        reason: String,
    },
}

/// The Consul agent's HTTP API, as far as the suite uses it. Cheap to clone.
#[derive(Clone)]
pub struct Consul {
    /// `http://host:port`.
    base: String,
    /// The ACL token, sent as `X-Consul-Token`.
    token: Option<String>,
    /// Connect timeout 2 s; every request sets its own total timeout.
    client: reqwest::Client,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One instance of a service, as the health API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The service id.
    pub id: String,
    /// The service's address, else its node's.
    pub address: String,
    /// The registered port.
    pub port: u16,
    /// The registration's metadata.
    pub meta: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: HealthNode,
    service: HealthService,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthNode {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

impl ConsulArgs {
    /// The agent's client when `--consul-http-address` is set: checks the token settings and
    /// reads the token file; an error names the flag and says what to do.
    pub fn resolve(&self) -> Result<Option<Consul>, ConfigError> {
        let token = match (&self.consul_token, &self.consul_token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::value(
                    "--consul-token / --consul-token-file",
                    "give one of the two, not both",
                ))
            }
            (Some(token), None) => Some(non_empty_token("--consul-token", &token.0)?),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::value(
                        "--consul-token-file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(non_empty_token("--consul-token-file", &text)?)
            }
            (None, None) => None,
        };
        let Some(addr) = &self.consul_http_address else {
            let set = [
                ("--consul-token", self.consul_token.is_some()),
                ("--consul-token-file", self.consul_token_file.is_some()),
                (
                    "--consul-service-address",
                    self.consul_service_address.is_some(),
                ),
                ("--consul-tag", !self.consul_tag.is_empty()),
            ];
            if let Some((flag, _)) = set.iter().find(|(_, on)| *on) {
                return Err(ConfigError::value(
                    *flag,
                    "is set but Consul is off: add --consul-http-address (or drop this setting)",
                ));
            }
            return Ok(None);
        };
        if let Some(host) = &self.consul_service_address {
            let valid = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
            if !valid {
                return Err(ConfigError::value(
                    "--consul-service-address",
                    format!("'{host}' is not a host name or IP address"),
                ));
            }
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| {
                ConfigError::value(
                    "--consul-http-address",
                    format!("cannot build an HTTP client: {e}"),
                )
            })?;
        Ok(Some(Consul {
            base: addr.url(),
            token,
            client,
        }))
    }

    /// Whether Consul is on (`--consul-http-address` given).
    pub fn enabled(&self) -> bool {
        self.consul_http_address.is_some()
    }
}

/// The token without surrounding white space; an empty one is an error.
fn non_empty_token(flag: &str, text: &str) -> Result<String, ConfigError> {
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::value(flag, "the Consul token is empty"));
    }
    Ok(token.to_owned())
}

/// A Go duration (what Consul parses) for `d`, in whole milliseconds (at least 1 ms).
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

impl Consul {
    /// The agent's base URL, `http://host:port`.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT);
        if let Some(token) = &self.token {
            r = r.header("X-Consul-Token", token);
        }
        r
    }

    async fn send(
        &self,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ConsulError> {
        let response = request.send().await.map_err(|e| ConsulError::Unreachable {
            url: self.base.clone(),
            reason: error_chain(&e),
        })?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(response);
        }
        let body = crate::body::read_capped(response, MAX_ERROR_BYTES)
            .await
            .unwrap_or_default();
        let body: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        Err(ConsulError::Answer {
            url: self.base.clone(),
            path: path.to_owned(),
            reason: format!("HTTP {status}: {}", body.trim()),
        })
    }

    /// Registers (or updates) `registration` with the agent.
    pub async fn register(&self, registration: &Registration) -> Result<(), ConsulError> {
        let path = "/v1/agent/service/register";
        let r = self.request(reqwest::Method::PUT, path);
        let response = self.send(path, r.json(&registration.body())).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(ConsulError::Answer {
                url: self.base.clone(),
                path: path.to_owned(),
                reason: "HTTP 404 (is this a Consul agent?)".to_owned(),
            });
        }
        Ok(())
    }

    /// Whether the agent has the service `id` registered.
    pub async fn is_registered(&self, id: &str) -> Result<bool, ConsulError> {
        let path = format!("/v1/agent/service/{id}");
        let r = self.request(reqwest::Method::GET, &path);
        let response = self.send(&path, r).await?;
        Ok(response.status() != reqwest::StatusCode::NOT_FOUND)
    }

    /// Removes the service `id` from the agent.
    pub async fn deregister(&self, id: &str) -> Result<(), ConsulError> {
        let path = format!("/v1/agent/service/deregister/{id}");
        let r = self.request(reqwest::Method::PUT, &path);
        self.send(&path, r).await.map(drop)
    }

    /// The passing instances of `service`; with `index`, a blocking query that answers when
    /// the list changes or after `wait`. Returns the instances and the new index.
    pub async fn passing(
        &self,
        service: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(Vec<Instance>, u64), ConsulError> {
        let path = format!("/v1/health/service/{service}");
        let mut r = self
            .request(reqwest::Method::GET, &path)
            .query(&[("passing", "true")]);
        if let Some(index) = index {
            // Consul adds up to wait/16 of jitter; the margin covers it and a slow answer.
            r = r
                .query(&[("index", index.to_string()), ("wait", go_duration(wait))])
                .timeout(wait + wait / 16 + REQUEST_TIMEOUT);
        }
        let response = self.send(&path, r).await?;
        let answer = |reason: String| ConsulError::Answer {
            url: self.base.clone(),
            path: path.clone(),
            reason,
        };
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(answer("HTTP 404 (is this a Consul agent?)".to_owned()));
        }
        let new_index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| answer("no X-Consul-Index header".to_owned()))?;
        let body = crate::body::read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| answer(e.to_string()))?;
        let entries: Vec<HealthEntry> = serde_json::from_slice(&body)
            .map_err(|e| answer(format!("not the health API's JSON: {e}")))?;
        let instances = entries
            .into_iter()
            .take(MAX_INSTANCES)
            .map(|e| Instance {
                id: e.service.id,
                address: if e.service.address.is_empty() {
                    e.node.address
                } else {
                    e.service.address
                },
                port: e.service.port,
                meta: e.service.meta.unwrap_or_default(),
            })
            .collect();
        Ok((instances, new_index))
    }
}

/// The error and its sources on one line (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A service's registration: what [`Consul::register`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// `sensor`, `worker`, `logger`.
    pub name: String,
    /// Unique among the agent's services: see [`Registration::service_id`].
    pub id: String,
    /// Host the service's HTTP port is reached at.
    pub address: String,
    /// The HTTP port.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata (the instance id, the version).
    pub meta: BTreeMap<String, String>,
    /// How often Consul checks `/ready`.
    pub check_interval: Duration,
    /// How long critical before Consul removes the registration.
    pub deregister_after: Duration,
}

impl Registration {
    /// The registration of service `name`, instance `instance` (the sensor, worker or logger
    /// id), whose HTTP port is bound at `http`, with the settings of `args`.
    pub fn new(name: &str, instance: &str, http: SocketAddr, args: &ConsulArgs) -> Self {
        let address = match &args.consul_service_address {
            Some(host) => host.clone(),
            None if http.ip().is_unspecified() => nsq::hostname(),
            None => http.ip().to_string(),
        };
        Self {
            name: name.to_owned(),
            id: Self::service_id(name, instance, http.port()),
            address,
            port: http.port(),
            tags: args.consul_tag.clone(),
            meta: BTreeMap::from([
                ("instance".to_owned(), instance.chars().take(256).collect()),
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ]),
            check_interval: args.consul_check_interval.get(),
            deregister_after: args.consul_deregister_critical_after.get(),
        }
    }

    /// `<name>-<instance>-<http port>`, with every character other than `[A-Za-z0-9_.-]`
    /// replaced by `-` (it goes into URL paths) and the instance cut to 64 characters.
    /// Unique on one agent: two instances on one host differ by their HTTP port.
    pub fn service_id(name: &str, instance: &str, port: u16) -> String {
        let clean: String = instance
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{name}-{clean}-{port}")
    }

    /// The URL of the health check: this service's `/ready`.
    pub fn check_url(&self) -> String {
        if self.address.contains(':') {
            format!("http://[{}]:{}/ready", self.address, self.port)
        } else {
            format!("http://{}:{}/ready", self.address, self.port)
        }
    }

    /// The JSON body of `/v1/agent/service/register`.
    fn body(&self) -> serde_json::Value {
        json!({
            "ID": self.id,
            "Name": self.name,
            "Tags": self.tags,
            "Address": self.address,
            "Port": self.port,
            "Meta": self.meta,
            "Check": {
                "Name": format!("{} /ready", self.name),
                "HTTP": self.check_url(),
                "Method": "GET",
                "Interval": go_duration(self.check_interval),
                "Timeout": go_duration(self.check_interval.min(MAX_CHECK_TIMEOUT)),
                "DeregisterCriticalServiceAfter": go_duration(self.deregister_after),
            },
        })
    }
}

/// What the Consul tasks of one service report for `/ready`: the last failure of each task,
/// cleared by its next success. Cheap to clone; [`ConsulHealth::changed`] waits for a change.
#[derive(Debug, Clone)]
pub struct ConsulHealth {
    /// Last error by task (`registration`, `nsqlookupd`, `nsqd`).
    problems: Arc<watch::Sender<BTreeMap<String, String>>>,
    /// Follows `problems`, for [`ConsulHealth::changed`].
    seen: watch::Receiver<BTreeMap<String, String>>,
}

impl Default for ConsulHealth {
    fn default() -> Self {
        let (tx, rx) = watch::channel(BTreeMap::new());
        Self {
            problems: Arc::new(tx),
            seen: rx,
        }
    }
}

impl ConsulHealth {
    fn set(&self, task: &str, problem: Option<String>) {
        self.problems.send_if_modified(|problems| match problem {
            Some(p) => problems.insert(task.to_owned(), p.clone()).as_ref() != Some(&p),
            None => problems.remove(task).is_some(),
        });
    }

    /// Why Consul cannot be used right now, for `/ready` (`None` when every task's last
    /// request succeeded).
    pub fn problem(&self) -> Option<String> {
        let problems = self.problems.borrow();
        let (task, why) = problems.iter().next()?;
        let why: String = why.chars().take(200).collect();
        Some(format!(
            "Consul: {task}: {why}; retrying, using the last known addresses"
        ))
    }

    /// Resolves at the next change of [`ConsulHealth::problem`] (never, once every task
    /// ended).
    pub async fn changed(&mut self) {
        if self.seen.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The service names [`Discovery::watch`] knows how to turn into addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// `nsqlookupd`: `host:port` of its HTTP port (meta `http_port`, else the service port).
    Nsqlookupd,
    /// `nsqd`: `host:port` of its TCP port (meta `tcp_port`, else the service port).
    Nsqd,
}

impl Watched {
    /// The Consul service name.
    pub fn name(self) -> &'static str {
        match self {
            Watched::Nsqlookupd => "nsqlookupd",
            Watched::Nsqd => "nsqd",
        }
    }

    /// The metadata key that overrides the service port.
    fn port_meta(self) -> &'static str {
        match self {
            Watched::Nsqlookupd => "http_port",
            Watched::Nsqd => "tcp_port",
        }
    }

    /// `host:port` of an instance (`None` without a usable address or port).
    pub fn address(self, instance: &Instance) -> Option<String> {
        let port = match instance.meta.get(self.port_meta()) {
            Some(p) => p.trim().parse::<u16>().ok()?,
            None => instance.port,
        };
        if port == 0 || instance.address.is_empty() {
            return None;
        }
        Some(if instance.address.contains(':') {
            format!("[{}]:{port}", instance.address)
        } else {
            format!("{}:{port}", instance.address)
        })
    }
}

/// `fixed` then the addresses of `found` that are not in it: how the fixed addresses of a
/// service combine with those Consul lists.
pub fn union(fixed: &[String], found: &[String]) -> Vec<String> {
    let mut all = fixed.to_vec();
    for a in found {
        if !all.contains(a) {
            all.push(a.clone());
        }
    }
    all
}

/// A service's use of Consul: its registration and the lists it watches, with their
/// health for `/ready`. Share it with an `Arc`: every method takes `&self`.
#[derive(Debug)]
pub struct Discovery {
    /// The agent.
    consul: Consul,
    /// What the tasks report.
    health: ConsulHealth,
    /// The tasks, the registration and the watches, behind one lock.
    inner: std::sync::Mutex<Inner>,
}

/// What [`Discovery`] keeps behind its lock.
#[derive(Debug, Default)]
struct Inner {
    /// The registration kept in place, once [`Discovery::keep_registered`] was called.
    registered: Option<(Registration, JoinHandle<()>)>,
    /// One watch per service name, shared by everyone who asks for it.
    watches: BTreeMap<&'static str, watch::Receiver<Vec<String>>>,
    /// Every task started, aborted on drop.
    tasks: Vec<JoinHandle<()>>,
}

impl Discovery {
    /// The service's Consul use, when `--consul-http-address` is set.
    pub fn from_args(args: &ConsulArgs) -> Result<Option<Self>, ConfigError> {
        Ok(args.resolve()?.map(|consul| Self {
            consul,
            health: ConsulHealth::default(),
            inner: std::sync::Mutex::new(Inner::default()),
        }))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The agent.
    pub fn consul(&self) -> &Consul {
        &self.consul
    }

    /// Why Consul cannot be used right now, for `/ready`.
    pub fn problem(&self) -> Option<String> {
        self.health.problem()
    }

    /// The health handle (to wait for changes of [`Discovery::problem`]).
    pub fn health(&self) -> ConsulHealth {
        self.health.clone()
    }

    /// Registers the service and keeps it registered until [`Discovery::deregister`]:
    /// checks every [`RESYNC`] that the agent still has it, registers again when not;
    /// retries with backoff while the agent is unreachable.
    pub fn keep_registered(&self, registration: Registration) {
        let consul = self.consul.clone();
        let health = self.health.clone();
        let reg = registration.clone();
        let task = tokio::spawn(async move {
            let mut backoff = nsq::backoff::Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
            let mut registered = false;
            loop {
                let result = if registered {
                    consul.is_registered(&reg.id).await
                } else {
                    consul.register(&reg).await.map(|()| true)
                };
                match result {
                    Ok(true) => {
                        if !registered {
                            tracing::info!(consul = %consul.base, id = %reg.id, check = %reg.check_url(), "registered with Consul");
                        }
                        registered = true;
                        health.set("registration", None);
                        backoff.reset();
                        tokio::time::sleep(RESYNC).await;
                    }
                    Ok(false) => {
                        tracing::warn!(consul = %consul.base, id = %reg.id, "Consul no longer has this service (agent restarted?): registering again");
                        registered = false;
                    }
                    Err(e) => {
                        registered = false;
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "cannot register with Consul");
                        health.set("registration", Some(e.to_string()));
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
        if let Some((_, old)) = self.inner().registered.replace((registration, task)) {
            old.abort();
        }
    }

    /// Stops keeping the registration and removes it from the agent (on SIGTERM, before the
    /// service exits), waiting at most 3 s: an unreachable agent never holds the exit up (the
    /// check then turns critical and the registration is removed by Consul).
    pub async fn deregister(&self) {
        let Some((registration, task)) = self.inner().registered.take() else {
            return;
        };
        task.abort();
        let _ = task.await;
        match tokio::time::timeout(DEREGISTER_TIMEOUT, self.consul.deregister(&registration.id))
            .await
        {
            Ok(Ok(())) => {
                tracing::info!(id = %registration.id, "deregistered from Consul")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, id = %registration.id, "cannot deregister from Consul; it removes the registration once the check has been critical for --consul-deregister-critical-after")
            }
            Err(_) => {
                tracing::warn!(id = %registration.id, "Consul did not answer the deregistration in time; it removes the registration once the check has been critical for --consul-deregister-critical-after")
            }
        }
    }

    /// The addresses of the passing instances of `service`, kept current with blocking
    /// queries: the channel changes as soon as Consul's list does. It starts empty; while
    /// the agent is unreachable it keeps the last list. An instance without a usable address
    /// is skipped (with a WARN). One query per service, whoever asks.
    pub fn watch(&self, service: Watched) -> watch::Receiver<Vec<String>> {
        let mut inner = self.inner();
        if let Some(rx) = inner.watches.get(service.name()) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(Vec::new());
        let consul = self.consul.clone();
        let health = self.health.clone();
        inner.tasks.push(tokio::spawn(async move {
            let name = service.name();
            let mut backoff = nsq::backoff::Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
            let mut index: Option<u64> = None;
            loop {
                match consul.passing(name, index, BLOCKING_WAIT).await {
                    Ok((instances, new_index)) => {
                        health.set(name, None);
                        backoff.reset();
                        // As Consul's documentation asks: an index that went backwards (the
                        // agent restarted, its state reset) starts over; 0 would not block.
                        let new_index = match index {
                            Some(old) if new_index < old => 0,
                            _ => new_index,
                        };
                        index = Some(new_index.max(1));
                        let mut addrs: Vec<String> = Vec::new();
                        for instance in &instances {
                            match service.address(instance) {
                                Some(a) => addrs.push(a),
                                None => tracing::warn!(service = name, id = %instance.id, "Consul lists an instance without a usable address or port: skipped"),
                            }
                        }
                        addrs.sort();
                        addrs.dedup();
                        let changed = tx.send_if_modified(|current| {
                            if *current == addrs {
                                false
                            } else {
                                current.clone_from(&addrs);
                                true
                            }
                        });
                        if changed {
                            tracing::info!(service = name, addresses = ?addrs, "passing instances in Consul");
                        }
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(service = name, error = %e, retry_in = ?delay, "cannot ask Consul; keeping the last known addresses");
                        health.set(name, Some(e.to_string()));
                        index = None;
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }));
        inner.watches.insert(service.name(), rx.clone());
        rx
    }

    /// Keeps `consumer`'s nsqlookupd set to `fixed` (base URLs or `host:port`) plus the
    /// passing `nsqlookupd` instances in Consul ([`union`]), from now on. While Consul lists
    /// none and nothing is fixed, the last non-empty set stays.
    pub fn follow_lookupds(&self, consumer: nsq::Consumer, fixed: Vec<String>) {
        let mut found = self.watch(Watched::Nsqlookupd);
        self.inner().tasks.push(tokio::spawn(async move {
            loop {
                let all = union(&fixed, &found.borrow_and_update());
                if !all.is_empty() {
                    if let Err(e) = consumer.set_lookupd_http_addresses(&all) {
                        tracing::warn!(error = %e, "nsqlookupd addresses from Consul refused");
                    }
                }
                if found.changed().await.is_err() {
                    return;
                }
            }
        }));
    }

    /// The nsqd addresses for a producer ([`nsq::Producer::connect_any`]): `fixed` (when
    /// given) first, then the passing `nsqd` instances in Consul ([`union`]). The producer
    /// starts on the first and moves down the list when a connection fails.
    pub fn nsqd_for_producer(&self, fixed: Option<String>) -> watch::Receiver<Vec<String>> {
        let fixed: Vec<String> = fixed.into_iter().collect();
        let mut found = self.watch(Watched::Nsqd);
        let (tx, rx) = watch::channel(union(&fixed, &found.borrow_and_update()));
        self.inner().tasks.push(tokio::spawn(async move {
            loop {
                if found.changed().await.is_err() {
                    return;
                }
                let all = union(&fixed, &found.borrow_and_update());
                tx.send_if_modified(|current| {
                    let changed = *current != all;
                    if changed {
                        current.clone_from(&all);
                    }
                    changed
                });
            }
        }));
        rx
    }
}

/// Starts an NSQ consumer: as configured without Consul; with Consul, also on the nsqlookupd
/// instances Consul lists ([`union`] with the configured ones), of which there may be none
/// yet (then it waits for them, consuming from any fixed nsqd meanwhile).
pub fn consumer(
    discovery: Option<&Discovery>,
    topic: &str,
    channel: &str,
    config: nsq::ConsumerConfig,
) -> Result<(nsq::Consumer, nsq::Messages), nsq::ConfigError> {
    let Some(discovery) = discovery else {
        return nsq::Consumer::new(topic, channel, config);
    };
    let fixed = config.lookupd_http_addresses.clone();
    let (consumer, messages) = nsq::Consumer::new_awaiting_lookupds(topic, channel, config)?;
    discovery.follow_lookupds(consumer.clone(), fixed);
    Ok((consumer, messages))
}

/// Starts an NSQ producer: to `fixed` (else `default`) without Consul; with Consul to `fixed`
/// if given, then to the passing nsqd Consul lists, moving down that list when a connection
/// fails ([`nsq::Producer::connect_any`]).
pub fn producer(
    discovery: Option<&Discovery>,
    fixed: Option<String>,
    default: &str,
    config: nsq::ProducerConfig,
) -> Result<nsq::Producer, nsq::ConfigError> {
    match discovery {
        Some(discovery) => nsq::Producer::connect_any(discovery.nsqd_for_producer(fixed), config),
        None => nsq::Producer::connect(fixed.as_deref().unwrap_or(default), config),
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let inner = self.inner();
        for task in &inner.tasks {
            task.abort();
        }
        if let Some((_, task)) = &inner.registered {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        consul: ConsulArgs,
    }

    fn parse(args: &[&str]) -> Result<ConsulArgs, String> {
        let mut all = vec!["svc"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map(|c| c.consul)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_and_the_other_settings_need_the_address() {
        let args = ConsulArgs::default();
        assert!(!args.enabled());
        assert!(args.resolve().unwrap().is_none());
        for extra in [
            "--consul-token=t",
            "--consul-tag=blue",
            "--consul-service-address=h",
        ] {
            let e = parse(&[extra]).unwrap().resolve().unwrap_err().to_string();
            assert!(e.contains("add --consul-http-address"), "{extra}: {e}");
        }
    }

    #[test]
    fn durations_and_addresses_are_checked() {
        let e = parse(&[
            "--consul-http-address=c:8500",
            "--consul-deregister-critical-after=10s",
        ])
        .unwrap_err();
        assert!(e.contains("below 1m"), "{e}");
        assert!(parse(&["--consul-check-interval=0s"]).is_err());
        assert!(parse(&["--consul-http-address=https://c:8500"]).is_err());
        let args = parse(&["--consul-http-address=http://c:8500/", "--consul-tag=a"]).unwrap();
        let consul = args.resolve().unwrap().unwrap();
        assert_eq!(consul.url(), "http://c:8500");
        let e = parse(&[
            "--consul-http-address=c:8500",
            "--consul-service-address=a b",
        ])
        .unwrap()
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("not a host name"), "{e}");
    }

    #[test]
    fn the_token_comes_from_a_file_trimmed_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let args = parse(&[
            "--consul-http-address=c:8500",
            &format!("--consul-token-file={}", path.display()),
        ])
        .unwrap();
        let consul = args.resolve().unwrap().unwrap();
        assert_eq!(consul.token.as_deref(), Some("s3cr3t"));
        assert!(!format!("{consul:?}").contains("s3cr3t"));
        let args = parse(&["--consul-http-address=c:8500", "--consul-token=s3cr3t"]).unwrap();
        assert!(!format!("{args:?}").contains("s3cr3t"));
        std::fs::write(&path, "  \n").unwrap();
        let args = parse(&[
            "--consul-http-address=c:8500",
            &format!("--consul-token-file={}", path.display()),
        ])
        .unwrap();
        assert!(args.resolve().unwrap_err().to_string().contains("empty"));
        let args = parse(&[
            "--consul-http-address=c:8500",
            "--consul-token=a",
            "--consul-token-file=b",
        ])
        .unwrap();
        assert!(args.resolve().unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn registration_body() {
        let args = parse(&[
            "--consul-http-address=c:8500",
            "--consul-tag=blue",
            "--consul-check-interval=10s",
        ])
        .unwrap();
        let http: SocketAddr = "127.0.0.1:4191".parse().unwrap();
        let reg = Registration::new("worker", "host/1 ü", http, &args);
        assert_eq!(reg.id, "worker-host-1---4191");
        let body = reg.body();
        assert_eq!(body["Name"], "worker");
        assert_eq!(body["Address"], "127.0.0.1");
        assert_eq!(body["Port"], 4191);
        assert_eq!(body["Tags"], json!(["blue"]));
        assert_eq!(body["Meta"]["instance"], "host/1 ü");
        assert_eq!(body["Check"]["HTTP"], "http://127.0.0.1:4191/ready");
        assert_eq!(body["Check"]["Interval"], "10000ms");
        assert_eq!(body["Check"]["Timeout"], "3000ms");
        assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "60000ms");
        let any: SocketAddr = "0.0.0.0:4191".parse().unwrap();
        assert_eq!(
            Registration::new("worker", "w", any, &args).address,
            nsq::hostname()
        );
    }

    #[test]
    fn instance_addresses_and_union() {
        let mut i = Instance {
            id: "x".into(),
            address: "10.0.0.1".into(),
            port: 4161,
            meta: BTreeMap::new(),
        };
        assert_eq!(
            Watched::Nsqlookupd.address(&i).as_deref(),
            Some("10.0.0.1:4161")
        );
        i.meta.insert("tcp_port".into(), "4150".into());
        assert_eq!(Watched::Nsqd.address(&i).as_deref(), Some("10.0.0.1:4150"));
        i.meta.insert("tcp_port".into(), "nope".into());
        assert_eq!(Watched::Nsqd.address(&i), None);
        i.address = "::1".into();
        assert_eq!(
            Watched::Nsqlookupd.address(&i).as_deref(),
            Some("[::1]:4161")
        );
        i.port = 0;
        assert_eq!(Watched::Nsqlookupd.address(&i), None);
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            union(&s(&["a:1", "b:2"]), &s(&["b:2", "c:3"])),
            s(&["a:1", "b:2", "c:3"])
        );
    }

    #[test]
    fn health_names_the_failing_task_until_it_succeeds() {
        let h = ConsulHealth::default();
        assert_eq!(h.problem(), None);
        h.set(
            "nsqlookupd",
            Some("Consul at http://c:8500 unreachable: refused".into()),
        );
        let p = h.problem().unwrap();
        assert!(p.contains("nsqlookupd") && p.contains("last known"), "{p}");
        h.set("nsqlookupd", None);
        assert_eq!(h.problem(), None);
    }
}
