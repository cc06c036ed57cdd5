//! The worker's command line and configuration.
//!
//! Every setting is a key of [`Config`]; it comes from a flag, else the environment variable
//! `WORKER_<KEY>` (upper case; lists comma-separated), else the `--config` TOML file, else
//! [`Config::default`]. [`Config::validate`] turns the loaded strings into [`Settings`], or a
//! usage error that names the flag (exit code 2).

use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use suite_common::{
    cli::{CommonArgs, CommonCommand, ServiceCli},
    config::{duration, ConfigError},
    telemetry::LogFormat,
};

/// Prefix of the worker's environment variables (`WORKER_TOPIC`, ...).
pub const ENV_PREFIX: &str = "WORKER";

/// Keys whose environment value is a comma-separated list.
pub const LIST_KEYS: &[&str] = &["lookupd_http_address", "nsqd_tcp_address"];

/// Default `--http-address`.
pub const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:4191";

/// Text after the flags in `--help`: the layering and the staleness policies.
const AFTER_HELP: &str = "\
Every flag can also be set with the environment variable shown next to it (lists
comma-separated), or as a key of the TOML file given with --config (the flag's name with '_'
for '-', e.g. max_in_flight = 200). Precedence: flags, then environment, then file, then
defaults. --print-config shows the result. Durations are written like 500ms, 30s, 2m.

Stale readings (--max-age): with --stale-policy flag (the default) a reading older than
--max-age is processed and its result carries stale = true; with --stale-policy drop it is
finished without a result, counted and logged. Dropped readings leave a gap downstream.";

/// The worker's command line.
#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "Consumes SensorReadings from NSQ, publishes WorkResults (the squares of the values)",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Flags every service has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The worker's own flags.
    #[command(flatten)]
    pub flags: Flags,
    /// `healthcheck`, or nothing to run the worker.
    #[command(subcommand)]
    pub command: Option<CommonCommand>,
}

/// What happens to a reading older than `--max-age`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
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

/// The worker's own flags: each overrides the configuration key of the same name.
#[derive(Debug, Default, Clone, clap::Args, Serialize)]
pub struct Flags {
    /// Topic to consume [default: sensor_data]
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,

    /// Channel to consume on; replicas sharing it share the work [default: worker]
    #[arg(long, value_name = "CHANNEL")]
    pub channel: Option<String>,

    /// nsqlookupd HTTP address (host:port or http://host:port) to discover nsqd; repeatable
    #[arg(long, value_name = "ADDR")]
    pub lookupd_http_address: Vec<String>,

    /// nsqd TCP address to consume from directly; repeatable
    #[arg(long, value_name = "HOST:PORT")]
    pub nsqd_tcp_address: Vec<String>,

    /// How often nsqlookupd is asked for new nsqd [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub lookupd_poll_interval: Option<String>,

    /// Topic of the results [default: results]
    #[arg(long, value_name = "TOPIC")]
    pub destination_topic: Option<String>,

    /// nsqd TCP address the results (and dead letters) are published to [default:
    /// 127.0.0.1:4150]
    #[arg(long, value_name = "HOST:PORT")]
    pub destination_nsqd_tcp_address: Option<String>,

    /// Most messages handled at once, over all nsqd [default: 200]
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,

    /// nsqd's output buffer for this consumer, in bytes: 0 keeps nsqd's default (16 KiB,
    /// flushed at least every 250 ms: best throughput, but a lone message can wait up to
    /// 250 ms); 64 makes nsqd write every message at once (lowest latency, more syscalls in
    /// nsqd); -1 disables the buffer [default: 0]
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub output_buffer_size: Option<i64>,

    /// Longest nsqd may hold a message for this worker in its output buffer, in whole
    /// milliseconds: a lone message waits up to this long per hop. nsqd grants it only at or
    /// above its --min-output-buffer-timeout (25ms unless changed; the suite's configurations
    /// set 1ms); otherwise the worker falls back to nsqd's --output-buffer-timeout (250ms)
    /// with one WARN. 0 asks for nothing (nsqd's default) [default: 1ms]
    #[arg(long, value_name = "DURATION")]
    pub output_buffer_timeout: Option<String>,

    /// Simulated computation time per message, in milliseconds [default: 0]
    #[arg(long, value_name = "MS")]
    pub work_ms: Option<u64>,

    /// Name of this worker in the results and in nsqadmin [default: HOSTNAME-PID]
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,

    /// Deliveries after which a message is dead-lettered; 0 for no limit [default: 5]
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u16>,

    /// Topic of the messages given up on [default: TOPIC.dead]
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Readings older than this (since taken) are stale, e.g. 30s [default: off]
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<String>,

    /// What happens to stale readings [default: flag]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub stale_policy: Option<StalePolicy>,

    /// Fault injection (tests): every N-th first delivery this worker gets is handled
    /// --slow-ms slower, e.g. past nsqd's --msg-timeout; 0 turns it off [default: 0]
    #[arg(long, value_name = "N")]
    pub slow_every: Option<u64>,

    /// Fault injection (tests): the extra time of a slow message, in milliseconds [default: 0]
    #[arg(long, value_name = "MS")]
    pub slow_ms: Option<u64>,
}

/// The worker's configuration, as loaded and as printed by `--print-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Topic consumed.
    pub topic: String,
    /// Channel consumed on.
    pub channel: String,
    /// nsqlookupd HTTP addresses used to discover nsqd.
    pub lookupd_http_address: Vec<String>,
    /// nsqd TCP addresses consumed from directly.
    pub nsqd_tcp_address: Vec<String>,
    /// Period of the nsqlookupd queries (a duration such as `5s`).
    pub lookupd_poll_interval: String,
    /// Topic the results are published to.
    pub destination_topic: String,
    /// nsqd the results and dead letters are published to.
    pub destination_nsqd_tcp_address: String,
    /// Most messages in flight.
    pub max_in_flight: u32,
    /// nsqd's output buffer for this consumer in bytes (0: nsqd's default).
    pub output_buffer_size: i64,
    /// Longest nsqd may hold a message in that buffer (`0`: nsqd's default).
    pub output_buffer_timeout: String,
    /// Simulated work per message, in milliseconds.
    pub work_ms: u64,
    /// This worker's name.
    pub worker_id: String,
    /// Deliveries before a message is dead-lettered (0: no limit).
    pub max_attempts: u16,
    /// Dead-letter topic (`None`: the consumed topic + `.dead`).
    pub dead_letter_topic: Option<String>,
    /// Age after which a reading is stale (`None`: never).
    pub max_age: Option<String>,
    /// What happens to stale readings.
    pub stale_policy: StalePolicy,
    /// Fault injection: every N-th first delivery is slow (0: never).
    pub slow_every: u64,
    /// Fault injection: extra time of a slow message, in milliseconds.
    pub slow_ms: u64,
    /// Address of the HTTP port.
    pub http_address: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level or filter.
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        let host = nsq::hostname();
        let short = host.split('.').next().unwrap_or("worker");
        Self {
            topic: messages::SENSOR_DATA_TOPIC.to_owned(),
            channel: "worker".to_owned(),
            lookupd_http_address: Vec::new(),
            nsqd_tcp_address: Vec::new(),
            lookupd_poll_interval: "5s".to_owned(),
            destination_topic: messages::RESULTS_TOPIC.to_owned(),
            destination_nsqd_tcp_address: "127.0.0.1:4150".to_owned(),
            max_in_flight: 200,
            output_buffer_size: 0,
            output_buffer_timeout: "1ms".to_owned(),
            work_ms: 0,
            worker_id: format!("{short}-{}", std::process::id()),
            max_attempts: 5,
            dead_letter_topic: None,
            max_age: None,
            stale_policy: StalePolicy::default(),
            slow_every: 0,
            slow_ms: 0,
            http_address: DEFAULT_HTTP_ADDRESS.to_owned(),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
        }
    }
}

/// The validated configuration the worker runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Topic consumed (a valid NSQ topic name).
    pub topic: String,
    /// Channel consumed on (a valid NSQ channel name).
    pub channel: String,
    /// nsqlookupd base URLs (`http://host:port`).
    pub lookupd_http_addresses: Vec<String>,
    /// nsqd TCP addresses (`host:port`).
    pub nsqd_tcp_addresses: Vec<String>,
    /// Period of the nsqlookupd queries.
    pub lookupd_poll_interval: Duration,
    /// Topic of the results.
    pub destination_topic: String,
    /// nsqd of the results and dead letters (`host:port`).
    pub destination_nsqd_tcp_address: String,
    /// Most messages in flight (at least 1).
    pub max_in_flight: u32,
    /// nsqd's output buffer for this consumer: `None` keeps nsqd's default.
    pub output_buffer_size: Option<i64>,
    /// Output-buffer timeout asked of nsqd: `None` keeps nsqd's default.
    pub output_buffer_timeout: Option<Duration>,
    /// Simulated work per message.
    pub work: Duration,
    /// This worker's name.
    pub worker_id: String,
    /// Deliveries before dead-lettering (0: no limit).
    pub max_attempts: u16,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Age after which a reading is stale.
    pub max_age: Option<Duration>,
    /// What happens to stale readings.
    pub stale_policy: StalePolicy,
    /// Fault injection: every N-th first delivery is handled `slow` slower (0: never).
    pub slow_every: u64,
    /// Fault injection: the extra time of a slow message.
    pub slow: Duration,
    /// HTTP listen address (`host:port`, port 0 allowed).
    pub http_address: String,
}

impl Config {
    /// Checks every setting, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        use suite_common::addr;

        topic_name("--topic", &self.topic)?;
        if !nsq::protocol::is_valid_channel_name(&self.channel) {
            return Err(ConfigError::value(
                "--channel",
                format!(
                    "'{}' is not a valid NSQ channel name (1-64 characters of [.a-zA-Z0-9_-], \
                     optionally ending in #ephemeral)",
                    self.channel
                ),
            ));
        }
        let lookupd = addr::lookupd_urls("--lookupd-http-address", &self.lookupd_http_address)?;
        let nsqd = addr::host_ports("--nsqd-tcp-address", &self.nsqd_tcp_address)?;
        if lookupd.is_empty() && nsqd.is_empty() {
            return Err(ConfigError::value(
                "--lookupd-http-address / --nsqd-tcp-address",
                "none given: the worker needs at least one nsqlookupd or nsqd to consume from \
                 (or WORKER_LOOKUPD_HTTP_ADDRESS / WORKER_NSQD_TCP_ADDRESS)",
            ));
        }
        let destination = addr::host_port(
            "--destination-nsqd-tcp-address",
            &self.destination_nsqd_tcp_address,
        )?;
        let http = addr::listen_address("--http-address", &self.http_address)?;
        topic_name("--destination-topic", &self.destination_topic)?;
        let dead_letter_topic = self
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.topic, messages::DEAD_LETTER_SUFFIX));
        topic_name("--dead-letter-topic", &dead_letter_topic)?;
        if self.max_in_flight == 0 {
            return Err(ConfigError::value("--max-in-flight", "must be at least 1"));
        }
        if !matches!(self.output_buffer_size, -1 | 0 | 64..=65_536) {
            return Err(ConfigError::value(
                "--output-buffer-size",
                "must be 0 (nsqd's default), -1 (no buffer) or 64 to 65536 bytes",
            ));
        }
        let output_buffer_timeout =
            duration("--output-buffer-timeout", &self.output_buffer_timeout)?;
        let output_buffer_timeout = (!output_buffer_timeout.is_zero())
            .then_some(output_buffer_timeout)
            .map(|d| nsq::output_buffer_timeout_ms(d).map(|_| d))
            .transpose()
            .map_err(|_| {
                ConfigError::value(
                    "--output-buffer-timeout",
                    "must be 0 (nsqd's default) or whole milliseconds from 1ms, e.g. 1ms",
                )
            })?;
        let worker_id = self.worker_id.trim();
        if worker_id.is_empty() {
            return Err(ConfigError::value("--worker-id", "must not be empty"));
        }
        let max_age = match &self.max_age {
            None => None,
            Some(text) => {
                let age = duration("--max-age", text)?;
                if age.is_zero() {
                    return Err(ConfigError::value(
                        "--max-age",
                        "must not be 0 (leave it out to turn staleness off)",
                    ));
                }
                Some(age)
            }
        };
        let lookupd_poll_interval =
            duration("--lookupd-poll-interval", &self.lookupd_poll_interval)?;
        if lookupd_poll_interval.is_zero() {
            return Err(ConfigError::value(
                "--lookupd-poll-interval",
                "must not be 0",
            ));
        }
        Ok(Settings {
            topic: self.topic.clone(),
            channel: self.channel.clone(),
            lookupd_http_addresses: lookupd,
            nsqd_tcp_addresses: nsqd.iter().map(ToString::to_string).collect(),
            lookupd_poll_interval,
            destination_topic: self.destination_topic.clone(),
            destination_nsqd_tcp_address: destination.to_string(),
            max_in_flight: self.max_in_flight,
            output_buffer_size: (self.output_buffer_size != 0).then_some(self.output_buffer_size),
            output_buffer_timeout,
            work: Duration::from_millis(self.work_ms),
            worker_id: worker_id.to_owned(),
            max_attempts: self.max_attempts,
            dead_letter_topic,
            max_age,
            stale_policy: self.stale_policy,
            slow_every: self.slow_every,
            slow: Duration::from_millis(self.slow_ms),
            http_address: http.to_string(),
        })
    }
}

/// Checks an NSQ topic name, naming the flag when it is not valid.
fn topic_name(flag: &str, topic: &str) -> Result<(), ConfigError> {
    if nsq::protocol::is_valid_topic_name(topic) {
        Ok(())
    } else {
        Err(ConfigError::value(
            flag,
            format!("'{topic}' is not a valid NSQ topic name (1-64 characters of [.a-zA-Z0-9_-])"),
        ))
    }
}

impl ServiceCli for Cli {
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const LIST_KEYS: &'static [&'static str] = LIST_KEYS;
    const DEFAULT_HTTP_ADDRESS: &'static str = DEFAULT_HTTP_ADDRESS;
    type Config = Config;
    type Flags = Flags;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn flags(&self) -> &Flags {
        &self.flags
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["worker"];
        all.extend_from_slice(args);
        Cli::try_parse_args(all).unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn settings(args: &[&str]) -> Result<Settings, ConfigError> {
        cli(args)
            .load_config_with_env(&env(&[]))
            .unwrap()
            .validate()
    }

    #[test]
    fn defaults() {
        let s = settings(&["--nsqd-tcp-address", "127.0.0.1:4150"]).unwrap();
        assert_eq!(
            (s.topic.as_str(), s.channel.as_str()),
            ("sensor_data", "worker")
        );
        assert_eq!(s.destination_topic, "results");
        assert_eq!(s.destination_nsqd_tcp_address, "127.0.0.1:4150");
        assert_eq!(s.dead_letter_topic, "sensor_data.dead");
        assert_eq!((s.max_in_flight, s.max_attempts), (200, 5));
        assert_eq!(s.max_age, None);
        assert_eq!(s.stale_policy, StalePolicy::Flag);
        assert_eq!(s.http_address, DEFAULT_HTTP_ADDRESS);
        assert!(s.worker_id.ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn output_buffer_timeout_asks_for_1ms_by_default_and_0_asks_for_nothing() {
        let base = ["--nsqd-tcp-address", "127.0.0.1:4150"];
        let s = settings(&base).unwrap();
        assert_eq!(s.output_buffer_timeout, Some(Duration::from_millis(1)));
        let s = settings(&[&base[..], &["--output-buffer-timeout", "5ms"]].concat()).unwrap();
        assert_eq!(s.output_buffer_timeout, Some(Duration::from_millis(5)));
        let s = settings(&[&base[..], &["--output-buffer-timeout", "0"]].concat()).unwrap();
        assert_eq!(s.output_buffer_timeout, None);
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
            s.lookupd_http_addresses,
            ["http://l1:4161", "http://l2:4161"]
        );
        let e = env(&[("WORKER_NSQD_TCP_ADDRESS", "a:4150, b:4150")]);
        let s = cli(&[])
            .load_config_with_env(&e)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.nsqd_tcp_addresses, ["a:4150", "b:4150"]);
        let s = cli(&["--nsqd-tcp-address", "c:1"])
            .load_config_with_env(&e)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.nsqd_tcp_addresses, ["c:1"], "flags replace the env list");
    }

    #[test]
    fn slow_knob_is_off_by_default() {
        let s = settings(&["--nsqd-tcp-address", "a:1"]).unwrap();
        assert_eq!((s.slow_every, s.slow), (0, Duration::ZERO));
        let s = settings(&[
            "--nsqd-tcp-address",
            "a:1",
            "--slow-every",
            "50",
            "--slow-ms",
            "1500",
        ])
        .unwrap();
        assert_eq!((s.slow_every, s.slow), (50, Duration::from_millis(1500)));
    }

    #[test]
    fn a_source_is_required() {
        let err = settings(&[]).unwrap_err().to_string();
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
        assert_eq!(s.max_age, Some(Duration::from_secs(30)));
        assert_eq!(s.stale_policy, StalePolicy::Drop);
        assert!(Cli::try_parse_args(["worker", "--stale-policy", "keep"]).is_err());
    }

    #[test]
    fn bad_settings_name_the_flag() {
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
            (
                &["--output-buffer-timeout", "500us"],
                "invalid `--output-buffer-timeout`",
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
            let err = settings(&all).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn help_names_every_env_var() {
        let help = Cli::command_with_env().render_help().to_string();
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let var = format!("WORKER_{}", key.to_ascii_uppercase());
            assert!(help.contains(&var), "{var} missing from --help:\n{help}");
        }
    }
}
