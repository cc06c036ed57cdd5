//! The sensor's command line and settings.
//!
//! Every setting is a field of [`Config`], declared once with its type, help and default; it
//! comes from a flag, else the environment variable `SENSOR_<KEY>` (upper case; lists
//! comma-separated), else the `--config` TOML file, else its default. A bad value is a usage
//! error that names the flag (exit code 2).

use std::time::Duration;

use serde::Serialize;
use suite_common::{
    addr::{HostPort, ListenAddr, LookupdAddr},
    cli::{FlushArgs, LogArgs, ServiceConfig},
    consul::ConsulArgs,
    security::NsqSecurityArgs,
    setting::{at_least_one, message_id, HumanDuration, Invalid, Parse, Topic},
};

/// Prefix of the sensor's environment variables (`SENSOR_TOPIC`, ...).
pub const ENV_PREFIX: &str = "SENSOR";

/// Default `--http-address` (NSQ's own daemons use 415x/416x/417x; the suite uses 419x).
pub const DEFAULT_HTTP_ADDRESS: &str = "127.0.0.1:4190";

/// The nsqd the readings go to when neither `--nsqd-tcp-address` nor Consul says.
pub const DEFAULT_NSQD: &str = "127.0.0.1:4150";

/// Largest `--values`: keeps one reading far below nsqd's default 1 MiB message limit.
pub const MAX_VALUES: u32 = 10_000;

/// Text after the flags in `--help`: how settings are layered.
const AFTER_HELP: &str = "\
Every flag can also be set with the environment variable shown next to it, or as a key of the
TOML file given with --config (the flag's name with '_' for '-', e.g. status_interval = \"1s\").
Precedence: flags, then environment, then file, then defaults. --print-config shows the result.
Durations are written like 500ms, 1s, 2m.";

/// The sensor's command line: its [`Config`] and what every service has.
pub type Cli = suite_common::cli::Cli<Config>;

/// The sensor's settings, as parsed and as printed by `--print-config`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct Config {
    /// nsqd TCP address to publish to (unset: with --consul-http-address a passing nsqd from
    /// Consul, else 127.0.0.1:4150)
    #[arg(long, value_name = "HOST:PORT")]
    pub nsqd_tcp_address: Option<HostPort>,

    /// Topic of the readings
    #[arg(long, value_name = "TOPIC", default_value = messages::SENSOR_DATA_TOPIC)]
    pub topic: Topic,

    /// Topic of the periodic SensorStatus announcements
    #[arg(long, value_name = "TOPIC", default_value = messages::STATUS_TOPIC)]
    pub status_topic: Topic,

    /// Readings per second; 0 publishes as fast as nsqd confirms, in MPUB batches
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub rate: u32,

    /// Stop after N readings, exiting 0 once nsqd confirmed all of them (unset: run until
    /// SIGTERM)
    #[arg(long, value_name = "N", value_parser = Parse(at_least_one::<u64>))]
    pub count: Option<u64>,

    /// Name of this sensor in every reading (the host name)
    #[arg(long, value_name = "ID", default_value_t = nsq::hostname(), value_parser = Parse(message_id))]
    pub sensor_id: String,

    /// How many random values a reading has
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = Parse(values))]
    pub values: usize,

    /// Readings waiting for nsqd (e.g. while it is down) before the oldest are dropped
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = Parse(at_least_one::<usize>))]
    pub outbox_size: usize,

    /// Recent readings kept in memory for replay and GET /readings
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub history: usize,

    /// Most memory the history may take, in bytes: a reading costs 8 + 4 x --values bytes
    /// (20 with 3 values), so with many values fewer than --history readings are kept
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub history_bytes: usize,

    /// How often the latest seq is announced on the status topic
    #[arg(
        long,
        value_name = "DURATION",
        default_value_t = HumanDuration::from_secs(1),
        value_parser = Parse(HumanDuration::nonzero)
    )]
    pub status_interval: HumanDuration,

    /// How long a stopping sensor tries to publish what is still in its outbox
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration::from_secs(5))]
    pub flush_timeout: HumanDuration,

    /// nsqlookupd HTTP address (host:port or http://host:port) to find the nsqd carrying
    /// replay requests; repeatable (none: read them from --nsqd-tcp-address)
    #[arg(long, value_name = "ADDR")]
    pub lookupd_http_address: Vec<LookupdAddr>,

    /// How often nsqlookupd is asked for new nsqd
    #[arg(
        long,
        value_name = "DURATION",
        default_value_t = HumanDuration::from_secs(5),
        value_parser = Parse(HumanDuration::nonzero)
    )]
    pub lookupd_poll_interval: HumanDuration,

    /// Topic of the loggers' ReplayRequests, consumed on an ephemeral channel of this sensor
    /// epoch
    #[arg(long, value_name = "TOPIC", default_value = messages::REPLAY_TOPIC)]
    pub replay_topic: Topic,

    /// Topic of the answers for ranges no longer in the history
    #[arg(long, value_name = "TOPIC", default_value = messages::REPLAY_UNAVAILABLE_TOPIC)]
    pub replay_unavailable_topic: Topic,

    /// How long nsqd may hold the replay requests it sends this sensor.
    #[command(flatten)]
    #[serde(flatten)]
    pub flush: FlushArgs,

    /// With --count: after the last reading is confirmed, keep answering replay requests
    /// until a logger announces the epoch complete on --complete-topic, at most this long
    /// (SIGTERM ends it sooner; 0: exit at once)
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration::from_secs(30))]
    pub linger: HumanDuration,

    /// Topic of the loggers' EpochComplete announcements, consumed on an ephemeral channel
    /// of this sensor epoch
    #[arg(long, value_name = "TOPIC", default_value = messages::COMPLETE_TOPIC)]
    pub complete_topic: Topic,

    /// Address of the HTTP port (/health, /ready, /metrics, /readings)
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

/// Parses `--values`: 1 to [`MAX_VALUES`].
fn values(text: &str) -> Result<usize, Invalid> {
    let n: u32 = text
        .trim()
        .parse()
        .map_err(|e| Invalid::Value(format!("'{text}' is not a whole number ({e})")))?;
    if !(1..=MAX_VALUES).contains(&n) {
        return Err(Invalid::Value(format!(
            "must be from 1 to {MAX_VALUES}, not {n}"
        )));
    }
    Ok(n as usize)
}

impl Config {
    /// The nsqlookupd base URLs (`http://host:port`) for the replay requests; empty: read
    /// them from `nsqd_tcp_address`.
    pub fn lookupd_urls(&self) -> Vec<String> {
        suite_common::addr::lookupd_urls(&self.lookupd_http_address)
    }

    /// The nsqd the readings go to, when fixed: `--nsqd-tcp-address`, else (without Consul)
    /// [`DEFAULT_NSQD`]; `None` with Consul and no address given (Consul's nsqd).
    pub fn nsqd(&self) -> Option<String> {
        match &self.nsqd_tcp_address {
            Some(addr) => Some(addr.to_string()),
            None if self.consul.enabled() => None,
            None => Some(DEFAULT_NSQD.to_owned()),
        }
    }

    /// Bounded wait for the outbox at shutdown.
    pub fn flush_timeout(&self) -> Duration {
        self.flush_timeout.get()
    }
}

impl ServiceConfig for Config {
    const NAME: &'static str = "sensor";
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const ABOUT: &'static str =
        "Publishes SensorReadings to NSQ (topic sensor_data), keeps a replayable history";
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
        Cli::config_from(args, e)
    }

    #[test]
    fn defaults_are_valid() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.nsqd().as_deref(), Some(DEFAULT_NSQD));
        assert_eq!(&*config.topic, "sensor_data");
        assert_eq!(config.rate, 10);
        assert_eq!(config.values, 3);
        assert!(!config.sensor_id.is_empty());
        assert_eq!(config.status_interval.get(), Duration::from_secs(1));
        assert_eq!(config.http_address.to_string(), DEFAULT_HTTP_ADDRESS);
        assert!(config.lookupd_http_address.is_empty());
        assert_eq!(&*config.replay_topic, "sensor_replay");
        assert_eq!(
            &*config.replay_unavailable_topic,
            "sensor_replay_unavailable"
        );
        assert_eq!(config.linger.get(), Duration::from_secs(30));
        assert_eq!(&*config.complete_topic, "sensor_complete");
    }

    #[test]
    fn flags_beat_env_which_beats_defaults() {
        let e = [("SENSOR_RATE", "50"), ("SENSOR_TOPIC", "t_env")];
        let config = load(&["--rate", "7", "--count", "3"], &e).unwrap();
        assert_eq!(config.rate, 7);
        assert_eq!(&*config.topic, "t_env");
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
            (&["--values", "10001"], "invalid `--values`"),
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
                &["--lookupd-http-address", "http://"],
                "lookupd-http-address",
            ),
        ];
        for (args, expected) in cases {
            let err = load(args, &[]).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn replay_sources() {
        let config = load(
            &[
                "--lookupd-http-address",
                "l1:4161",
                "--lookupd-http-address=http://l2:4161",
                "--linger=1m",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(config.lookupd_urls(), ["http://l1:4161", "http://l2:4161"]);
        assert_eq!(config.linger.get(), Duration::from_secs(60));
        let config = load(&[], &[("SENSOR_LOOKUPD_HTTP_ADDRESS", "a:1,b:2")]).unwrap();
        assert_eq!(config.lookupd_urls(), ["http://a:1", "http://b:2"]);
    }

    #[test]
    fn help_names_every_env_var_and_its_real_default() {
        let command = Cli::command_with_env();
        let help = command.clone().render_help().to_string();
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let var = format!("SENSOR_{}", key.to_ascii_uppercase());
            assert!(help.contains(&var), "{var} missing from --help:\n{help}");
        }
        let mismatches = suite_common::config::help_mismatches(&command, &Config::default());
        assert!(mismatches.is_empty(), "{mismatches:#?}");
        assert!(help.contains("[default: 100000]"), "{help}");
    }
}
