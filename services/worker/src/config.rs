//! The worker's command line and settings.
//!
//! Every setting is a field of [`Config`], declared once with its type, help and default; it
//! comes from a flag, else the environment variable `WORKER_<KEY>` (upper case; lists
//! comma-separated), else the `--config` TOML file, else its default. A bad value is a usage
//! error that names the flag (exit code 2); [`Config::check`] adds the rules that involve
//! several settings.

use std::time::Duration;

use serde::Serialize;
use suite_common::{
    addr::{HostPort, ListenAddr},
    cli::{ConsumerArgs, LogArgs, ServiceConfig},
    config::ConfigError,
    consul::ConsulArgs,
    security::NsqSecurityArgs,
    setting::{message_id, Channel, HumanDuration, Invalid, Parse, Topic},
};

/// Prefix of the worker's environment variables (`WORKER_TOPIC`, ...).
pub const ENV_PREFIX: &str = "WORKER";

/// Default `--http-address`.
pub const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:4191";

/// The nsqd the results go to when neither `--destination-nsqd-tcp-address` nor Consul says.
pub const DEFAULT_NSQD: &str = "127.0.0.1:4150";

/// Text after the flags in `--help`: the layering and the staleness policies.
const AFTER_HELP: &str = "\
Every flag can also be set with the environment variable shown next to it (lists
comma-separated), or as a key of the TOML file given with --config (the flag's name with '_'
for '-', e.g. max_in_flight = 200). Precedence: flags, then environment, then file, then
defaults. --print-config shows the result. Durations are written like 500ms, 30s, 2m.

Stale readings (--max-age): with --stale-policy flag (the default) a reading older than
--max-age is processed and its result carries stale = true; with --stale-policy drop it is
finished without a result, counted and logged. Dropped readings leave a gap downstream.";

/// The worker's command line: its [`Config`] and what every service has.
pub type Cli = suite_common::cli::Cli<Config>;

/// What happens to a reading older than `--max-age`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StalePolicy {
    /// Finish it without a result; count and log it.
    Drop,
    /// Process it and set `stale = true` in its result.
    #[default]
    Flag,
}

impl StalePolicy {
    /// The policy's name, as in the flag and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StalePolicy::Drop => "drop",
            StalePolicy::Flag => "flag",
        }
    }
}

/// The worker's settings, as parsed and as printed by `--print-config`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct Config {
    /// Topic to consume
    #[arg(long, value_name = "TOPIC", default_value = messages::SENSOR_DATA_TOPIC)]
    pub topic: Topic,

    /// Channel to consume on; replicas sharing it share the work
    #[arg(long, value_name = "CHANNEL", default_value = "worker")]
    pub channel: Channel,

    /// Where and how to consume.
    #[command(flatten)]
    #[serde(flatten)]
    pub consumer: ConsumerArgs<200>,

    /// Topic of the results
    #[arg(long, value_name = "TOPIC", default_value = messages::RESULTS_TOPIC)]
    pub destination_topic: Topic,

    /// nsqd TCP address the results (and dead letters) are published to (unset: with
    /// --consul-http-address a passing nsqd from Consul, else 127.0.0.1:4150)
    #[arg(long, value_name = "HOST:PORT")]
    pub destination_nsqd_tcp_address: Option<HostPort>,

    /// Simulated computation time per message, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub work_ms: u64,

    /// Name of this worker in the results and in nsqadmin (the host name and the process id)
    #[arg(long, value_name = "ID", default_value_t = default_worker_id(), value_parser = Parse(message_id))]
    pub worker_id: String,

    /// Deliveries after which a message is dead-lettered; 0 for no limit
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_attempts: u16,

    /// Topic of the messages given up on (unset: TOPIC.dead)
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter_topic: Option<Topic>,

    /// Readings older than this (since taken) are stale, e.g. 30s (unset: never)
    #[arg(long, value_name = "DURATION", value_parser = Parse(max_age))]
    pub max_age: Option<HumanDuration>,

    /// What happens to stale readings
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = StalePolicy::Flag)]
    pub stale_policy: StalePolicy,

    /// Fault injection (tests): every N-th first delivery this worker gets is handled
    /// --slow-ms slower, e.g. past nsqd's --msg-timeout; 0 turns it off
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub slow_every: u64,

    /// Fault injection (tests): the extra time of a slow message, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub slow_ms: u64,

    /// Address of the HTTP port (/health, /ready, /metrics)
    #[arg(long, value_name = "HOST:PORT", global = true, default_value = DEFAULT_HTTP_ADDRESS)]
    pub http_address: ListenAddr,

    /// TLS and AUTH of every NSQ connection.
    #[command(flatten)]
    #[serde(flatten)]
    pub nsq: NsqSecurityArgs,

    /// Service discovery with Consul (off unless --consul-http-address is given).
    #[command(flatten)]
    #[serde(flatten)]
    pub consul: ConsulArgs,

    /// Logging.
    #[command(flatten)]
    #[serde(flatten)]
    pub log: LogArgs,
}

impl Default for Config {
    fn default() -> Self {
        suite_common::config::defaults()
    }
}

/// `<short host name>-<pid>`.
fn default_worker_id() -> String {
    let host = nsq::hostname();
    let short = host.split('.').next().unwrap_or("worker");
    format!("{short}-{}", std::process::id())
}

/// Parses `--max-age`: a duration, not 0.
fn max_age(text: &str) -> Result<HumanDuration, Invalid> {
    HumanDuration::nonzero(text).map_err(|e| match e {
        Invalid::Value(m) if m == "must not be 0" => {
            Invalid::Value("must not be 0 (leave it out to turn staleness off)".to_owned())
        }
        other => other,
    })
}

impl Config {
    /// Checks the rules that involve several settings, naming the flags.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.consul.enabled() {
            self.consumer.require_source("worker", ENV_PREFIX)?;
        }
        self.nsq.resolve()?;
        self.consul.resolve()?;
        let dead = self.dead_letter_topic();
        if !nsq::is_valid_topic_name(&dead) {
            return Err(ConfigError::value(
                "--dead-letter-topic",
                format!(
                    "'{dead}' (--topic + {}) is too long for a topic name; set it",
                    messages::DEAD_LETTER_SUFFIX
                ),
            ));
        }
        Ok(())
    }

    /// The nsqd the results go to, when fixed: `--destination-nsqd-tcp-address`, else (without
    /// Consul) [`DEFAULT_NSQD`]; `None` with Consul and no address given (Consul's nsqd).
    pub fn destination_nsqd(&self) -> Option<String> {
        match &self.destination_nsqd_tcp_address {
            Some(addr) => Some(addr.to_string()),
            None if self.consul.enabled() => None,
            None => Some(DEFAULT_NSQD.to_owned()),
        }
    }

    /// The dead-letter topic: `--dead-letter-topic`, else the consumed topic + `.dead`.
    pub fn dead_letter_topic(&self) -> String {
        match &self.dead_letter_topic {
            Some(topic) => topic.to_string(),
            None => format!("{}{}", self.topic, messages::DEAD_LETTER_SUFFIX),
        }
    }

    /// Simulated work per message.
    pub fn work(&self) -> Duration {
        Duration::from_millis(self.work_ms)
    }

    /// Fault injection: the extra time of a slow message.
    pub fn slow(&self) -> Duration {
        Duration::from_millis(self.slow_ms)
    }

    /// Age after which a reading is stale (`None`: never).
    pub fn max_age(&self) -> Option<Duration> {
        self.max_age.as_ref().map(HumanDuration::get)
    }
}

impl ServiceConfig for Config {
    const NAME: &'static str = "worker";
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const ABOUT: &'static str =
        "Consumes SensorReadings from NSQ, publishes WorkResults (the squares of the values)";
    const AFTER_HELP: &'static str = AFTER_HELP;

    fn http_address(&self) -> &ListenAddr {
        &self.http_address
    }

    fn log(&self) -> &LogArgs {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use suite_common::cli::ServiceCli as _;

    use super::*;

    fn load(args: &[&str], e: &[(&str, &str)]) -> Result<Config, String> {
        let config = Cli::config_from(args, e)?;
        config.check().map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn settings(args: &[&str]) -> Result<Config, String> {
        load(args, &[])
    }

    #[test]
    fn consul_alone_is_enough_and_replaces_the_default_destination() {
        let s = load(&[], &[("WORKER_CONSUL_HTTP_ADDRESS", "127.0.0.1:8500")]).unwrap();
        assert!(s.consul.enabled());
        assert_eq!(
            s.destination_nsqd(),
            None,
            "Consul's nsqd, not 127.0.0.1:4150"
        );
        let s = settings(&[
            "--consul-http-address=c:8500",
            "--destination-nsqd-tcp-address=d:4150",
        ])
        .unwrap();
        assert_eq!(s.destination_nsqd().as_deref(), Some("d:4150"));
        let e = settings(&["--consul-token=t", "--nsqd-tcp-address=n:4150"]).unwrap_err();
        assert!(e.contains("add --consul-http-address"), "{e}");
        let e = settings(&[]).unwrap_err();
        assert!(e.contains("at least one nsqlookupd or nsqd"), "{e}");
    }

    #[test]
    fn defaults() {
        let s = settings(&["--nsqd-tcp-address", "127.0.0.1:4150"]).unwrap();
        assert_eq!((&*s.topic, &*s.channel), ("sensor_data", "worker"));
        assert_eq!(&*s.destination_topic, "results");
        assert_eq!(s.destination_nsqd().as_deref(), Some(DEFAULT_NSQD));
        assert_eq!(s.dead_letter_topic(), "sensor_data.dead");
        assert_eq!((s.consumer.max_in_flight, s.max_attempts), (200, 5));
        assert_eq!(s.max_age(), None);
        assert_eq!(s.stale_policy, StalePolicy::Flag);
        assert_eq!(s.http_address.to_string(), DEFAULT_HTTP_ADDRESS);
        assert!(s.worker_id.ends_with(&format!("-{}", std::process::id())));
        assert_eq!(
            s.consumer.lookupd_poll_interval.get(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn repeatable_addresses_and_env_lists() {
        let s = settings(&[
            "--lookupd-http-address",
            "l1:4161",
            "--lookupd-http-address",
            "http://l2:4161",
        ])
        .unwrap();
        assert_eq!(
            s.consumer.lookupd_urls(),
            ["http://l1:4161", "http://l2:4161"]
        );
        let e = [("WORKER_NSQD_TCP_ADDRESS", "a:4150, b:4150")];
        let s = load(&[], &e).unwrap();
        assert_eq!(s.consumer.nsqd_addresses(), ["a:4150", "b:4150"]);
        let s = load(&["--nsqd-tcp-address", "c:1"], &e).unwrap();
        assert_eq!(
            s.consumer.nsqd_addresses(),
            ["c:1"],
            "flags replace the env list"
        );
    }

    #[test]
    fn slow_knob_is_off_by_default() {
        let s = settings(&["--nsqd-tcp-address", "a:1"]).unwrap();
        assert_eq!((s.slow_every, s.slow()), (0, Duration::ZERO));
        let s = settings(&[
            "--nsqd-tcp-address",
            "a:1",
            "--slow-every",
            "50",
            "--slow-ms",
            "1500",
        ])
        .unwrap();
        assert_eq!((s.slow_every, s.slow()), (50, Duration::from_millis(1500)));
    }

    #[test]
    fn a_source_is_required() {
        let err = settings(&[]).unwrap_err();
        assert!(
            err.contains("--lookupd-http-address / --nsqd-tcp-address"),
            "{err}"
        );
        assert!(err.contains("at least one"), "{err}");
    }

    #[test]
    fn staleness_settings() {
        let s = settings(&[
            "--nsqd-tcp-address",
            "a:1",
            "--max-age",
            "30s",
            "--stale-policy",
            "drop",
        ])
        .unwrap();
        assert_eq!(s.max_age(), Some(Duration::from_secs(30)));
        assert_eq!(s.stale_policy, StalePolicy::Drop);
        assert!(settings(&["--nsqd-tcp-address", "a:1", "--stale-policy", "keep"]).is_err());
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let long_topic = "t".repeat(64);
        let cases: &[(&[&str], &str)] = &[
            (
                &["--nsqd-tcp-address", "nope"],
                "`--nsqd-tcp-address` 'nope'",
            ),
            (
                &["--lookupd-http-address", "https://l:1"],
                "`--lookupd-http-address`",
            ),
            (
                &["--destination-nsqd-tcp-address", "x"],
                "`--destination-nsqd-tcp-address`",
            ),
            (&["--topic", "a b"], "invalid `--topic`"),
            (&["--topic", &long_topic], "invalid `--dead-letter-topic`"),
            (&["--channel", "a/b"], "invalid `--channel`"),
            (
                &["--destination-topic", ""],
                "invalid `--destination-topic`",
            ),
            (
                &["--dead-letter-topic", "x!"],
                "invalid `--dead-letter-topic`",
            ),
            (&["--max-in-flight", "0"], "invalid `--max-in-flight`"),
            (
                &["--output-buffer-size", "10"],
                "invalid `--output-buffer-size`",
            ),
            (&["--max-age", "old"], "invalid `--max-age`"),
            (&["--max-age", "0s"], "invalid `--max-age`"),
            (&["--worker-id", ""], "invalid `--worker-id`"),
            (
                &["--lookupd-poll-interval", "0ms"],
                "invalid `--lookupd-poll-interval`",
            ),
        ];
        for (args, expected) in cases {
            let mut all = vec!["--nsqd-tcp-address", "127.0.0.1:4150"];
            if args[0] == "--nsqd-tcp-address" {
                all.clear();
            }
            all.extend_from_slice(args);
            let err = settings(&all).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn bad_env_values_name_the_flag_and_the_variable() {
        let err = load(
            &[],
            &[
                ("WORKER_MAX_IN_FLIGHT", "0"),
                ("WORKER_NSQD_TCP_ADDRESS", "a:1"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            "invalid `--max-in-flight`: must be at least 1 \
             (in environment variable WORKER_MAX_IN_FLIGHT)"
        );
    }

    #[test]
    fn help_names_every_env_var_and_its_real_default() {
        let command = Cli::command_with_env();
        let help = command.clone().render_help().to_string();
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let var = format!("WORKER_{}", key.to_ascii_uppercase());
            assert!(help.contains(&var), "{var} missing from --help:\n{help}");
        }
        let mismatches = suite_common::config::help_mismatches(&command, &Config::default());
        assert!(mismatches.is_empty(), "{mismatches:#?}");
        assert!(help.contains("[default: 200]"), "{help}");
    }
}
