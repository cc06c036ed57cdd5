//! The sensor's command line and configuration.
//!
//! Every setting is a key of [`Config`]; it comes from a flag, else the environment variable
//! `SENSOR_<KEY>` (upper case), else the `--config` TOML file, else [`Config::default`]. The
//! flags are [`Flags`] (all optional, so that an absent flag leaves the lower layers alone)
//! plus the common ones of [`CommonArgs`]. [`Config::validate`] turns the loaded strings into
//! [`Settings`], or a usage error that names the flag (exit code 2).

use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use suite_common::{
    cli::{CommonArgs, CommonCommand, ServiceCli},
    config::{duration, ConfigError},
    telemetry::LogFormat,
};

/// Prefix of the sensor's environment variables (`SENSOR_TOPIC`, ...).
pub const ENV_PREFIX: &str = "SENSOR";

/// Keys whose environment value is a comma-separated list.
pub const LIST_KEYS: &[&str] = &["lookupd_http_address"];

/// Default `--http-address` (NSQ's own daemons use 415x/416x/417x; the suite uses 419x).
pub const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:4190";

/// Largest `--values`: keeps one reading far below nsqd's default 1 MiB message limit.
pub const MAX_VALUES: u32 = 10_000;

/// Text after the flags in `--help`: how settings are layered.
const AFTER_HELP: &str = "\
Every flag can also be set with the environment variable shown next to it, or as a key of the
TOML file given with --config (the flag's name with '_' for '-', e.g. status_interval = \"1s\").
Precedence: flags, then environment, then file, then defaults. --print-config shows the result.
Durations are written like 500ms, 1s, 2m.";

/// The sensor's command line.
#[derive(Debug, Parser)]
#[command(
    name = "sensor",
    version,
    about = "Publishes SensorReadings to NSQ (topic sensor_data), keeps a replayable history",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Flags every service has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The sensor's own flags.
    #[command(flatten)]
    pub flags: Flags,
    /// `healthcheck`, or nothing to run the sensor.
    #[command(subcommand)]
    pub command: Option<CommonCommand>,
}

/// The sensor's own flags: each overrides the configuration key of the same name.
#[derive(Debug, Default, Clone, clap::Args, Serialize)]
pub struct Flags {
    /// nsqd TCP address to publish to [default: 127.0.0.1:4150]
    #[arg(long, value_name = "HOST:PORT")]
    pub nsqd_tcp_address: Option<String>,

    /// Topic of the readings [default: sensor_data]
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,

    /// Topic of the periodic SensorStatus announcements [default: sensor_status]
    #[arg(long, value_name = "TOPIC")]
    pub status_topic: Option<String>,

    /// Readings per second; 0 publishes as fast as nsqd confirms, in MPUB batches [default: 10]
    #[arg(long, value_name = "N")]
    pub rate: Option<u32>,

    /// Stop after N readings, exiting 0 once nsqd confirmed all of them [default: run until
    /// SIGTERM]
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Name of this sensor in every reading [default: the host name]
    #[arg(long, value_name = "ID")]
    pub sensor_id: Option<String>,

    /// How many random values a reading has [default: 3]
    #[arg(long, value_name = "N")]
    pub values: Option<u32>,

    /// Readings waiting for nsqd (e.g. while it is down) before the oldest are dropped
    /// [default: 100000]
    #[arg(long, value_name = "N")]
    pub outbox_size: Option<usize>,

    /// Recent readings kept in memory for replay and GET /readings [default: 100000]
    #[arg(long, value_name = "N")]
    pub history: Option<usize>,

    /// How often the latest seq is announced on the status topic [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub status_interval: Option<String>,

    /// How long a stopping sensor tries to publish what is still in its outbox [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub flush_timeout: Option<String>,

    /// nsqlookupd HTTP address (host:port or http://host:port) to find the nsqd carrying
    /// replay requests; repeatable [default: none: read them from --nsqd-tcp-address]
    #[arg(long, value_name = "ADDR")]
    pub lookupd_http_address: Vec<String>,

    /// How often nsqlookupd is asked for new nsqd [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub lookupd_poll_interval: Option<String>,

    /// Topic of the loggers' ReplayRequests, consumed on an ephemeral channel of this sensor
    /// epoch [default: sensor_replay]
    #[arg(long, value_name = "TOPIC")]
    pub replay_topic: Option<String>,

    /// Topic of the answers for ranges no longer in the history [default:
    /// sensor_replay_unavailable]
    #[arg(long, value_name = "TOPIC")]
    pub replay_unavailable_topic: Option<String>,

    /// Longest nsqd may hold a replay request for this sensor in its output buffer, in whole
    /// milliseconds. nsqd grants it only at or above its --min-output-buffer-timeout (25ms
    /// unless changed; the suite's configurations set 1ms); otherwise the sensor falls back to
    /// nsqd's --output-buffer-timeout (250ms) with one WARN. 0 asks for nothing (nsqd's
    /// default) [default: 1ms]
    #[arg(long, value_name = "DURATION")]
    pub output_buffer_timeout: Option<String>,

    /// With --count: after the last reading is confirmed, keep answering replay requests
    /// and announcing the status this long before exiting (SIGTERM ends it sooner)
    /// [default: 0s]
    #[arg(long, value_name = "DURATION")]
    pub linger: Option<String>,
}

/// The sensor's configuration, as loaded and as printed by `--print-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// nsqd TCP address to publish to (`host:port`).
    pub nsqd_tcp_address: String,
    /// Topic the readings are published to.
    pub topic: String,
    /// Topic of the [`messages::SensorStatus`] announcements.
    pub status_topic: String,
    /// Readings per second; 0 means as fast as nsqd confirms them.
    pub rate: u32,
    /// Stop after this many readings (`None`: run until SIGTERM).
    pub count: Option<u64>,
    /// Name of this sensor, stamped into every reading.
    pub sensor_id: String,
    /// How many values a reading has.
    pub values: u32,
    /// Capacity of the outbox of readings not yet confirmed by nsqd.
    pub outbox_size: usize,
    /// How many recent readings are kept for replay.
    pub history: usize,
    /// Period of the status announcements (a duration such as `1s`).
    pub status_interval: String,
    /// Bounded wait for the outbox to drain at shutdown (a duration such as `5s`).
    pub flush_timeout: String,
    /// nsqlookupd HTTP addresses used to find the replay requests (empty: `nsqd_tcp_address`).
    pub lookupd_http_address: Vec<String>,
    /// Period of the nsqlookupd queries (a duration such as `5s`).
    pub lookupd_poll_interval: String,
    /// Topic of the replay requests.
    pub replay_topic: String,
    /// Topic of the "unavailable" answers.
    pub replay_unavailable_topic: String,
    /// Output-buffer timeout asked of nsqd for the replay requests (`0`: nsqd's default).
    pub output_buffer_timeout: String,
    /// With `count`: how long to keep serving replays after the last reading (a duration).
    pub linger: String,
    /// Address of the HTTP port (`/health`, `/ready`, `/metrics`, `/readings`).
    pub http_address: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Log level or filter.
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nsqd_tcp_address: "127.0.0.1:4150".to_owned(),
            topic: messages::SENSOR_DATA_TOPIC.to_owned(),
            status_topic: messages::STATUS_TOPIC.to_owned(),
            rate: 10,
            count: None,
            sensor_id: nsq::hostname(),
            values: 3,
            outbox_size: 100_000,
            history: 100_000,
            status_interval: "1s".to_owned(),
            flush_timeout: "5s".to_owned(),
            lookupd_http_address: Vec::new(),
            lookupd_poll_interval: "5s".to_owned(),
            replay_topic: messages::REPLAY_TOPIC.to_owned(),
            replay_unavailable_topic: messages::REPLAY_UNAVAILABLE_TOPIC.to_owned(),
            output_buffer_timeout: "1ms".to_owned(),
            linger: "0s".to_owned(),
            http_address: DEFAULT_HTTP_ADDRESS.to_owned(),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
        }
    }
}

/// The validated configuration the sensor runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// nsqd TCP address, normalised `host:port`.
    pub nsqd_tcp_address: String,
    /// Topic of the readings (a valid NSQ topic name).
    pub topic: String,
    /// Topic of the status announcements (a valid NSQ topic name).
    pub status_topic: String,
    /// Readings per second (0: as fast as possible).
    pub rate: u32,
    /// Readings to take before stopping (`None`: until shutdown).
    pub count: Option<u64>,
    /// This sensor's name.
    pub sensor_id: String,
    /// Values per reading (1..=[`MAX_VALUES`]).
    pub values: usize,
    /// Outbox capacity (at least 1).
    pub outbox_size: usize,
    /// History capacity (0 keeps none).
    pub history: usize,
    /// Period of the status announcements (non-zero).
    pub status_interval: Duration,
    /// Bounded wait for the outbox at shutdown.
    pub flush_timeout: Duration,
    /// nsqlookupd base URLs (`http://host:port`) for the replay requests; empty: read them
    /// from `nsqd_tcp_address`.
    pub lookupd_http_addresses: Vec<String>,
    /// Period of the nsqlookupd queries.
    pub lookupd_poll_interval: Duration,
    /// Topic of the replay requests (a valid NSQ topic name).
    pub replay_topic: String,
    /// Topic of the "unavailable" answers (a valid NSQ topic name).
    pub replay_unavailable_topic: String,
    /// Output-buffer timeout asked of nsqd for the replay requests: `None` keeps nsqd's.
    pub output_buffer_timeout: Option<Duration>,
    /// With `count`: how long to keep serving replays after the last reading.
    pub linger: Duration,
    /// HTTP listen address (`host:port`, port 0 allowed).
    pub http_address: String,
}

impl Config {
    /// Checks every setting, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let nsqd = suite_common::addr::host_port("--nsqd-tcp-address", &self.nsqd_tcp_address)?;
        let http = suite_common::addr::listen_address("--http-address", &self.http_address)?;
        topic_name("--topic", &self.topic)?;
        topic_name("--status-topic", &self.status_topic)?;
        topic_name("--replay-topic", &self.replay_topic)?;
        topic_name("--replay-unavailable-topic", &self.replay_unavailable_topic)?;
        let lookupd =
            suite_common::addr::lookupd_urls("--lookupd-http-address", &self.lookupd_http_address)?;
        let lookupd_poll_interval =
            duration("--lookupd-poll-interval", &self.lookupd_poll_interval)?;
        if lookupd_poll_interval.is_zero() {
            return Err(ConfigError::value(
                "--lookupd-poll-interval",
                "must not be 0",
            ));
        }
        let linger = duration("--linger", &self.linger)?;
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
        if self.count == Some(0) {
            return Err(ConfigError::value(
                "--count",
                "must be at least 1 (leave it out to run until SIGTERM)",
            ));
        }
        let sensor_id = self.sensor_id.trim();
        if sensor_id.is_empty() {
            return Err(ConfigError::value("--sensor-id", "must not be empty"));
        }
        if !(1..=MAX_VALUES).contains(&self.values) {
            return Err(ConfigError::value(
                "--values",
                format!("must be from 1 to {MAX_VALUES}, not {}", self.values),
            ));
        }
        if self.outbox_size == 0 {
            return Err(ConfigError::value("--outbox-size", "must be at least 1"));
        }
        let status_interval = duration("--status-interval", &self.status_interval)?;
        if status_interval.is_zero() {
            return Err(ConfigError::value("--status-interval", "must not be 0"));
        }
        Ok(Settings {
            nsqd_tcp_address: nsqd.to_string(),
            topic: self.topic.clone(),
            status_topic: self.status_topic.clone(),
            rate: self.rate,
            count: self.count,
            sensor_id: sensor_id.to_owned(),
            values: self.values as usize,
            outbox_size: self.outbox_size,
            history: self.history,
            status_interval,
            flush_timeout: duration("--flush-timeout", &self.flush_timeout)?,
            lookupd_http_addresses: lookupd,
            lookupd_poll_interval,
            replay_topic: self.replay_topic.clone(),
            output_buffer_timeout,
            replay_unavailable_topic: self.replay_unavailable_topic.clone(),
            linger,
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
        let mut all = vec!["sensor"];
        all.extend_from_slice(args);
        Cli::try_parse_args(all).unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let config = cli(&[]).load_config_with_env(&env(&[])).unwrap();
        assert_eq!(config.nsqd_tcp_address, "127.0.0.1:4150");
        assert_eq!(config.topic, "sensor_data");
        assert_eq!(config.rate, 10);
        assert_eq!(config.values, 3);
        assert!(!config.sensor_id.is_empty());
        let settings = config.validate().unwrap();
        assert_eq!(settings.status_interval, Duration::from_secs(1));
        assert_eq!(settings.http_address, DEFAULT_HTTP_ADDRESS);
        assert!(settings.lookupd_http_addresses.is_empty());
        assert_eq!(settings.replay_topic, "sensor_replay");
        assert_eq!(
            settings.replay_unavailable_topic,
            "sensor_replay_unavailable"
        );
        assert_eq!(settings.linger, Duration::ZERO);
    }

    #[test]
    fn flags_beat_env_which_beats_defaults() {
        let e = env(&[("SENSOR_RATE", "50"), ("SENSOR_TOPIC", "t_env")]);
        let config = cli(&["--rate", "7", "--count", "3"])
            .load_config_with_env(&e)
            .unwrap();
        assert_eq!(config.rate, 7);
        assert_eq!(config.topic, "t_env");
        assert_eq!(config.count, Some(3));
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--nsqd-tcp-address", "nope"],
                "`--nsqd-tcp-address` 'nope'",
            ),
            (&["--http-address", "x"], "`--http-address` 'x'"),
            (&["--topic", "bad topic"], "invalid `--topic`"),
            (&["--count", "0"], "invalid `--count`"),
            (&["--values", "0"], "invalid `--values`"),
            (&["--outbox-size", "0"], "invalid `--outbox-size`"),
            (
                &["--status-interval", "soon"],
                "invalid `--status-interval`",
            ),
            (&["--status-interval", "0s"], "invalid `--status-interval`"),
            (
                &["--flush-timeout", "1 parsec"],
                "invalid `--flush-timeout`",
            ),
            (&["--sensor-id", " "], "invalid `--sensor-id`"),
            (&["--replay-topic", "a b"], "invalid `--replay-topic`"),
            (
                &["--replay-unavailable-topic", "a/b"],
                "invalid `--replay-unavailable-topic`",
            ),
            (&["--linger", "long"], "invalid `--linger`"),
            (
                &["--lookupd-poll-interval", "0s"],
                "invalid `--lookupd-poll-interval`",
            ),
            (
                &["--output-buffer-timeout", "500us"],
                "invalid `--output-buffer-timeout`",
            ),
            (
                &["--lookupd-http-address", "http://"],
                "lookupd-http-address",
            ),
        ];
        for (args, expected) in cases {
            let config = cli(args).load_config_with_env(&env(&[])).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn replay_sources() {
        let config = cli(&[
            "--lookupd-http-address",
            "l1:4161",
            "--lookupd-http-address=http://l2:4161",
            "--linger=1m",
        ])
        .load_config_with_env(&env(&[]))
        .unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(
            settings.lookupd_http_addresses,
            ["http://l1:4161", "http://l2:4161"]
        );
        assert_eq!(settings.linger, Duration::from_secs(60));
        let config = cli(&[])
            .load_config_with_env(&env(&[("SENSOR_LOOKUPD_HTTP_ADDRESS", "a:1,b:2")]))
            .unwrap();
        assert_eq!(config.lookupd_http_address, ["a:1", "b:2"]);
    }

    #[test]
    fn help_names_every_env_var() {
        let help = Cli::command_with_env().render_help().to_string();
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let var = format!("SENSOR_{}", key.to_ascii_uppercase());
            assert!(help.contains(&var), "{var} missing from --help:\n{help}");
        }
    }
}
