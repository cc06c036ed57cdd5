//! The logger's command line and configuration.
//!
//! Every setting is a key of [`Config`]; it comes from a flag, else the environment variable
//! `LOGGER_<KEY>` (upper case; lists comma-separated), else the `--config` TOML file, else
//! [`Config::default`]. [`Config::validate`] turns the loaded strings into [`Settings`], or a
//! usage error that names the flag (exit code 2).

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use serde::{Deserialize, Serialize};
use suite_common::{
    cli::{CommonArgs, CommonCommand, ServiceCli},
    config::{duration, ConfigError},
    telemetry::LogFormat,
};

use crate::gaps::GapSettings;

/// Prefix of the logger's environment variables (`LOGGER_OUTPUT`, ...).
pub const ENV_PREFIX: &str = "LOGGER";

/// Keys whose environment value is a comma-separated list.
pub const LIST_KEYS: &[&str] = &["lookupd_http_address", "nsqd_tcp_address"];

/// Default `--http-address`.
pub const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:4192";

/// Default `--replay-nsqd-tcp-address` when no `--nsqd-tcp-address` is given.
pub const DEFAULT_REPLAY_NSQD: &str = "127.0.0.1:4150";

/// Text after the flags in `--help`: the layering and the de-duplication promise.
const AFTER_HELP: &str = "\
Every flag can also be set with the environment variable shown next to it (lists
comma-separated), or as a key of the TOML file given with --config (the flag's name with '_'
for '-', e.g. max_in_flight = 1000). Precedence: flags, then environment, then file, then
defaults. --print-config shows the result. Durations are written like 500ms, 5s, 2m.

Each result is written once: a result whose (sensor_id, epoch, seq) is already in the output
is finished without being written again. With --output, the logger rebuilds that knowledge
from the file at start-up (a truncated last line, left by a crash, is cut off).

Gaps: a seq still missing --gap-grace after a later one (or a sensor's announced last seq)
arrived is asked for on --replay-topic, again with a doubling pause from --replay-backoff, at
most --replay-max-attempts times. A range the sensor no longer holds, or that is never
answered, is reported lost: a WARN log, nsq_suite_readings_lost_total, and a line in the loss
list (--lost-output, by default <output stem>.lost.jsonl beside --output). GET /gaps shows
the missing and lost ranges.";

/// The logger's command line.
#[derive(Debug, Parser)]
#[command(
    name = "logger",
    version,
    about = "Consumes WorkResults from NSQ and appends each one once, as a JSON line",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Flags every service has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The logger's own flags.
    #[command(flatten)]
    pub flags: Flags,
    /// `healthcheck`, or nothing to run the logger.
    #[command(subcommand)]
    pub command: Option<CommonCommand>,
}

/// The logger's own flags: each overrides the configuration key of the same name.
#[derive(Debug, Default, Clone, clap::Args, Serialize)]
pub struct Flags {
    /// Topic to consume [default: results]
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,

    /// Channel to consume on [default: logger]
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

    /// Most messages in flight, over all nsqd; also the largest write batch [default: 1000]
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,

    /// nsqd's output buffer for this consumer, in bytes: 0 keeps nsqd's default (16 KiB,
    /// flushed at least every 250 ms: best throughput, but a lone message can wait up to
    /// 250 ms); 64 makes nsqd write every message at once (lowest latency, more syscalls in
    /// nsqd); -1 disables the buffer [default: 0]
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub output_buffer_size: Option<i64>,

    /// Longest nsqd may hold a message for this logger in its output buffer, in whole
    /// milliseconds: a lone message waits up to this long per hop. nsqd grants it only at or
    /// above its --min-output-buffer-timeout (25ms unless changed; the suite's configurations
    /// set 1ms); otherwise the logger falls back to nsqd's --output-buffer-timeout (250ms)
    /// with one WARN. 0 asks for nothing (nsqd's default) [default: 1ms]
    #[arg(long, value_name = "DURATION")]
    pub output_buffer_timeout: Option<String>,

    /// File the JSON lines are appended to [default: stdout]
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// fsync the output after each batch, not only flush it [default: false]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub fsync: Option<bool>,

    /// How often the per-worker summary is logged [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub summary_interval: Option<String>,

    /// Name of this logger in the metrics and in nsqadmin [default: the host name]
    #[arg(long, value_name = "ID")]
    pub logger_id: Option<String>,

    /// Detect missing readings and ask the sensors to replay them [default: true]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub detect_gaps: Option<bool>,

    /// How long a seq may be missing before it is asked for again [default: 3s]
    #[arg(long, value_name = "DURATION")]
    pub gap_grace: Option<String>,

    /// Topic of the sensors' SensorStatus announcements, consumed on --channel [default:
    /// sensor_status]
    #[arg(long, value_name = "TOPIC")]
    pub status_topic: Option<String>,

    /// Topic the ReplayRequests are published to [default: sensor_replay]
    #[arg(long, value_name = "TOPIC")]
    pub replay_topic: Option<String>,

    /// Topic of the sensors' ReplayUnavailable answers, consumed on --channel [default:
    /// sensor_replay_unavailable]
    #[arg(long, value_name = "TOPIC")]
    pub replay_unavailable_topic: Option<String>,

    /// nsqd TCP address the ReplayRequests are published to [default: the first
    /// --nsqd-tcp-address, else 127.0.0.1:4150]
    #[arg(long, value_name = "HOST:PORT")]
    pub replay_nsqd_tcp_address: Option<String>,

    /// Replay requests for one gap before it is reported lost [default: 5]
    #[arg(long, value_name = "N")]
    pub replay_max_attempts: Option<u32>,

    /// Pause after a replay request before asking again; doubles per request, up to 16
    /// times this [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub replay_backoff: Option<String>,

    /// File the ranges reported lost are appended to [default: beside --output, named after
    /// it: results.jsonl -> results.lost.jsonl; none with stdout]
    #[arg(long, value_name = "PATH")]
    pub lost_output: Option<PathBuf>,

    /// Fault injection (tests): wait this long between writing a batch and finishing its
    /// messages, so that a crash lands between the two [default: 0s]
    #[arg(long, value_name = "DURATION")]
    pub fin_delay: Option<String>,
}

/// The logger's configuration, as loaded and as printed by `--print-config`.
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
    /// Most messages in flight (and largest write batch).
    pub max_in_flight: u32,
    /// nsqd's output buffer for this consumer in bytes (0: nsqd's default).
    pub output_buffer_size: i64,
    /// Longest nsqd may hold a message in that buffer (`0`: nsqd's default).
    pub output_buffer_timeout: String,
    /// Output file (`None`: stdout).
    pub output: Option<PathBuf>,
    /// Whether each batch is fsynced.
    pub fsync: bool,
    /// Period of the per-worker summary log line (a duration such as `5s`).
    pub summary_interval: String,
    /// This logger's name.
    pub logger_id: String,
    /// Whether missing readings are detected and asked for.
    pub detect_gaps: bool,
    /// Grace period of a missing seq (a duration such as `3s`).
    pub gap_grace: String,
    /// Topic of the sensors' status announcements.
    pub status_topic: String,
    /// Topic the replay requests are published to.
    pub replay_topic: String,
    /// Topic of the sensors' "unavailable" answers.
    pub replay_unavailable_topic: String,
    /// nsqd the replay requests are published to (`None`: the first `nsqd_tcp_address`, else
    /// `127.0.0.1:4150`).
    pub replay_nsqd_tcp_address: Option<String>,
    /// Replay requests per gap before it is reported lost.
    pub replay_max_attempts: u32,
    /// First pause between two replay requests for a gap (a duration such as `2s`).
    pub replay_backoff: String,
    /// Loss list file (`None`: beside `output`, or none with stdout).
    pub lost_output: Option<PathBuf>,
    /// Fault injection: pause between a batch's write and its FINs (a duration).
    pub fin_delay: String,
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
        Self {
            topic: messages::RESULTS_TOPIC.to_owned(),
            channel: "logger".to_owned(),
            lookupd_http_address: Vec::new(),
            nsqd_tcp_address: Vec::new(),
            lookupd_poll_interval: "5s".to_owned(),
            max_in_flight: 1000,
            output_buffer_size: 0,
            output_buffer_timeout: "1ms".to_owned(),
            output: None,
            fsync: false,
            summary_interval: "5s".to_owned(),
            logger_id: host.split('.').next().unwrap_or("logger").to_owned(),
            detect_gaps: true,
            gap_grace: "3s".to_owned(),
            status_topic: messages::STATUS_TOPIC.to_owned(),
            replay_topic: messages::REPLAY_TOPIC.to_owned(),
            replay_unavailable_topic: messages::REPLAY_UNAVAILABLE_TOPIC.to_owned(),
            replay_nsqd_tcp_address: None,
            replay_max_attempts: 5,
            replay_backoff: "2s".to_owned(),
            lost_output: None,
            fin_delay: "0s".to_owned(),
            http_address: DEFAULT_HTTP_ADDRESS.to_owned(),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
        }
    }
}

/// The validated configuration the logger runs with.
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
    /// Most messages in flight (at least 1).
    pub max_in_flight: u32,
    /// nsqd's output buffer for this consumer: `None` keeps nsqd's default.
    pub output_buffer_size: Option<i64>,
    /// Output-buffer timeout asked of nsqd: `None` keeps nsqd's default.
    pub output_buffer_timeout: Option<Duration>,
    /// Output file (`None`: stdout).
    pub output: Option<PathBuf>,
    /// Whether each batch is fsynced.
    pub fsync: bool,
    /// Period of the per-worker summary.
    pub summary_interval: Duration,
    /// This logger's name.
    pub logger_id: String,
    /// Whether missing readings are detected and asked for.
    pub detect_gaps: bool,
    /// How gaps are detected and asked for.
    pub gaps: GapSettings,
    /// Topic of the sensors' status announcements (a valid NSQ topic name).
    pub status_topic: String,
    /// Topic the replay requests are published to.
    pub replay_topic: String,
    /// Topic of the sensors' "unavailable" answers.
    pub replay_unavailable_topic: String,
    /// nsqd the replay requests are published to (`host:port`).
    pub replay_nsqd_tcp_address: String,
    /// Loss list file (`None`: losses are only logged, counted and shown).
    pub lost_output: Option<PathBuf>,
    /// Fault injection: pause between a batch's write and its FINs (zero: none).
    pub fin_delay: Duration,
    /// HTTP listen address (`host:port`, port 0 allowed).
    pub http_address: String,
}

impl Config {
    /// Checks every setting, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        use suite_common::addr;

        for (flag, topic) in [
            ("--topic", &self.topic),
            ("--status-topic", &self.status_topic),
            ("--replay-topic", &self.replay_topic),
            ("--replay-unavailable-topic", &self.replay_unavailable_topic),
        ] {
            if !nsq::protocol::is_valid_topic_name(topic) {
                return Err(ConfigError::value(
                    flag,
                    format!(
                        "'{topic}' is not a valid NSQ topic name (1-64 characters of \
                         [.a-zA-Z0-9_-])"
                    ),
                ));
            }
        }
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
                "none given: the logger needs at least one nsqlookupd or nsqd to consume from \
                 (or LOGGER_LOOKUPD_HTTP_ADDRESS / LOGGER_NSQD_TCP_ADDRESS)",
            ));
        }
        let http = addr::listen_address("--http-address", &self.http_address)?;
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
        if self
            .output
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::value(
                "--output",
                "must not be empty (leave it out to write to stdout)",
            ));
        }
        let logger_id = self.logger_id.trim();
        if logger_id.is_empty() {
            return Err(ConfigError::value("--logger-id", "must not be empty"));
        }
        let summary_interval = duration("--summary-interval", &self.summary_interval)?;
        if summary_interval.is_zero() {
            return Err(ConfigError::value("--summary-interval", "must not be 0"));
        }
        let lookupd_poll_interval =
            duration("--lookupd-poll-interval", &self.lookupd_poll_interval)?;
        if lookupd_poll_interval.is_zero() {
            return Err(ConfigError::value(
                "--lookupd-poll-interval",
                "must not be 0",
            ));
        }
        let gap_grace = duration("--gap-grace", &self.gap_grace)?;
        if self.replay_max_attempts == 0 {
            return Err(ConfigError::value(
                "--replay-max-attempts",
                "must be at least 1 (use --detect-gaps=false to never ask)",
            ));
        }
        let replay_backoff = duration("--replay-backoff", &self.replay_backoff)?;
        if replay_backoff.is_zero() {
            return Err(ConfigError::value("--replay-backoff", "must not be 0"));
        }
        let replay_nsqd = match &self.replay_nsqd_tcp_address {
            Some(a) => addr::host_port("--replay-nsqd-tcp-address", a)?.to_string(),
            None => nsqd
                .first()
                .map(ToString::to_string)
                .unwrap_or_else(|| DEFAULT_REPLAY_NSQD.to_owned()),
        };
        if self
            .lost_output
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::value("--lost-output", "must not be empty"));
        }
        let lost_output = self
            .lost_output
            .clone()
            .or_else(|| self.output.as_deref().map(crate::lost::default_path));
        Ok(Settings {
            topic: self.topic.clone(),
            channel: self.channel.clone(),
            lookupd_http_addresses: lookupd,
            nsqd_tcp_addresses: nsqd.iter().map(ToString::to_string).collect(),
            lookupd_poll_interval,
            max_in_flight: self.max_in_flight,
            output_buffer_size: (self.output_buffer_size != 0).then_some(self.output_buffer_size),
            output_buffer_timeout,
            output: self.output.clone(),
            fsync: self.fsync,
            summary_interval,
            logger_id: logger_id.to_owned(),
            detect_gaps: self.detect_gaps,
            gaps: GapSettings {
                grace: gap_grace,
                max_attempts: self.replay_max_attempts,
                backoff: replay_backoff,
                backoff_max: replay_backoff.saturating_mul(16),
                ..GapSettings::default()
            },
            status_topic: self.status_topic.clone(),
            replay_topic: self.replay_topic.clone(),
            replay_unavailable_topic: self.replay_unavailable_topic.clone(),
            replay_nsqd_tcp_address: replay_nsqd,
            lost_output,
            fin_delay: duration("--fin-delay", &self.fin_delay)?,
            http_address: http.to_string(),
        })
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
        let mut all = vec!["logger"];
        all.extend_from_slice(args);
        Cli::try_parse_args(all).unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn settings(args: &[&str], e: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        cli(args).load_config_with_env(&env(e)).unwrap().validate()
    }

    #[test]
    fn defaults() {
        let s = settings(&["--nsqd-tcp-address", "127.0.0.1:4150"], &[]).unwrap();
        assert_eq!(
            (s.topic.as_str(), s.channel.as_str()),
            ("results", "logger")
        );
        assert_eq!(s.max_in_flight, 1000);
        assert_eq!(s.output, None);
        assert!(!s.fsync);
        assert_eq!(s.summary_interval, Duration::from_secs(5));
        assert_eq!(s.http_address, DEFAULT_HTTP_ADDRESS);
        assert!(s.detect_gaps);
        assert_eq!(s.gaps.grace, Duration::from_secs(3));
        assert_eq!(s.gaps.max_attempts, 5);
        assert_eq!(s.gaps.backoff, Duration::from_secs(2));
        assert_eq!(s.gaps.backoff_max, Duration::from_secs(32));
        assert_eq!(
            (s.status_topic.as_str(), s.replay_topic.as_str()),
            ("sensor_status", "sensor_replay")
        );
        assert_eq!(s.replay_unavailable_topic, "sensor_replay_unavailable");
        assert_eq!(s.replay_nsqd_tcp_address, "127.0.0.1:4150");
        assert_eq!(s.lost_output, None, "no loss list with stdout");
    }

    #[test]
    fn replay_settings() {
        let s = settings(
            &[
                "--lookupd-http-address",
                "l:4161",
                "--output",
                "/data/r.jsonl",
                "--gap-grace=500ms",
                "--replay-max-attempts=2",
                "--replay-backoff=100ms",
                "--detect-gaps=false",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.replay_nsqd_tcp_address, DEFAULT_REPLAY_NSQD);
        assert_eq!(s.lost_output, Some(PathBuf::from("/data/r.lost.jsonl")));
        assert_eq!(s.gaps.grace, Duration::from_millis(500));
        assert_eq!(
            (s.gaps.max_attempts, s.gaps.backoff),
            (2, Duration::from_millis(100))
        );
        assert!(!s.detect_gaps);
        let s = settings(
            &[
                "--nsqd-tcp-address=n1:4150",
                "--nsqd-tcp-address=n2:4150",
                "--lost-output=/x/lost.jsonl",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.replay_nsqd_tcp_address, "n1:4150", "the first nsqd");
        assert_eq!(s.lost_output, Some(PathBuf::from("/x/lost.jsonl")));
        let s = settings(
            &[
                "--nsqd-tcp-address=n1:4150",
                "--replay-nsqd-tcp-address=r:4150",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.replay_nsqd_tcp_address, "r:4150");
    }

    #[test]
    fn fsync_flag_forms() {
        let base = ["--nsqd-tcp-address", "a:1"];
        let with = |extra: &[&str], e: &[(&str, &str)]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            settings(&args, e).unwrap().fsync
        };
        assert!(with(&["--fsync"], &[]));
        assert!(with(&["--fsync=true"], &[]));
        assert!(
            !with(&["--fsync=false"], &[("LOGGER_FSYNC", "true")]),
            "flag beats env"
        );
        assert!(with(&[], &[("LOGGER_FSYNC", "true")]), "env when no flag");
        assert!(!with(&[], &[]));
    }

    #[test]
    fn output_and_sources() {
        let s = settings(
            &[
                "--lookupd-http-address",
                "l:4161",
                "--output",
                "/tmp/x.jsonl",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.output, Some(PathBuf::from("/tmp/x.jsonl")));
        assert_eq!(s.lookupd_http_addresses, ["http://l:4161"]);
        let err = settings(&[], &[]).unwrap_err().to_string();
        assert!(err.contains("at least one nsqlookupd or nsqd"), "{err}");
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--topic", "a b"], "invalid `--topic`"),
            (&["--channel", "a/b"], "invalid `--channel`"),
            (&["--max-in-flight", "0"], "invalid `--max-in-flight`"),
            (
                &["--output-buffer-size", "10"],
                "invalid `--output-buffer-size`",
            ),
            (
                &["--output-buffer-timeout", "500us"],
                "invalid `--output-buffer-timeout`",
            ),
            (
                &["--summary-interval", "often"],
                "invalid `--summary-interval`",
            ),
            (&["--logger-id", " "], "invalid `--logger-id`"),
            (&["--gap-grace", "soon"], "invalid `--gap-grace`"),
            (&["--replay-topic", "a b"], "invalid `--replay-topic`"),
            (&["--status-topic", "a/b"], "invalid `--status-topic`"),
            (
                &["--replay-unavailable-topic", "!"],
                "invalid `--replay-unavailable-topic`",
            ),
            (
                &["--replay-max-attempts", "0"],
                "invalid `--replay-max-attempts`",
            ),
            (&["--replay-backoff", "0s"], "invalid `--replay-backoff`"),
            (&["--fin-delay", "x"], "invalid `--fin-delay`"),
            (
                &["--replay-nsqd-tcp-address", "x"],
                "`--replay-nsqd-tcp-address` 'x'",
            ),
            (&["--http-address", "h"], "`--http-address` 'h'"),
        ];
        for (args, expected) in cases {
            let mut all = vec!["--nsqd-tcp-address", "127.0.0.1:4150"];
            all.extend_from_slice(args);
            let err = settings(&all, &[]).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        // clap refuses an empty --output itself; the environment can still give one.
        let err = settings(&["--nsqd-tcp-address", "a:1"], &[("LOGGER_OUTPUT", "")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid `--output`"), "{err}");
    }

    #[test]
    fn help_names_every_env_var() {
        let help = Cli::command_with_env().render_help().to_string();
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let var = format!("LOGGER_{}", key.to_ascii_uppercase());
            assert!(help.contains(&var), "{var} missing from --help:\n{help}");
        }
    }
}
