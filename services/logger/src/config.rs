//! The logger's command line and settings.
//!
//! Every setting is a field of [`Config`], declared once with its type, help and default; it
//! comes from a flag, else the environment variable `LOGGER_<KEY>` (upper case; lists
//! comma-separated), else the `--config` TOML file, else its default. A bad value is a usage
//! error that names the flag (exit code 2); [`Config::check`] adds the rules that involve
//! several settings.

use std::path::PathBuf;

use clap::{builder::BoolishValueParser, ArgAction};
use serde::Serialize;
use suite_common::{
    addr::{HostPort, ListenAddr},
    cli::{ConsumerArgs, LogArgs, ServiceConfig},
    config::ConfigError,
    consul::ConsulArgs,
    security::NsqSecurityArgs,
    setting::{at_least_one, non_empty, Channel, HumanDuration, Invalid, Parse, Topic},
};

use crate::{
    gaps::GapSettings,
    output::Options,
    rotation::{ByteSize, Rotation},
    seen::SeenLimits,
};

/// Prefix of the logger's environment variables (`LOGGER_OUTPUT`, ...).
pub const ENV_PREFIX: &str = "LOGGER";

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
at start-up from <output stem>.state and the current file (a truncated last line, left by a
crash, is cut off); without a usable state file, from every output file.

Rotation: the current file (--output) is closed at --rotate-size or --rotate-interval as
<stem>.<UTC time>.<ext> (names sort by time), gzipped with --rotate-gzip.

Gaps: a seq still missing --gap-grace after a later one (or a sensor's announced last seq)
arrived is asked for on --replay-topic, again with a doubling pause from --replay-backoff, at
most --replay-max-attempts times. A range the sensor no longer holds, or that is never
answered, is reported lost: a WARN log, nsq_suite_readings_lost_total, and a line in the loss
list (--lost-output, by default <output stem>.lost.jsonl beside --output). GET /gaps shows
the missing and lost ranges.

Nothing is asked for before the results consumer consumes, nor, for an epoch that began
before that, below the first results this logger received (they went by before its channel
existed): a logger joining a running suite does not make the sensor replay its history,
unless --backfill. Once an epoch's final seq came and nothing of it is missing, the logger
announces it on --complete-topic, so that a sensor with --count may exit.";

/// The logger's command line: its [`Config`] and what every service has.
pub type Cli = suite_common::cli::Cli<Config>;

/// The logger's settings, as parsed and as printed by `--print-config`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize)]
pub struct Config {
    /// Topic to consume
    #[arg(long, value_name = "TOPIC", default_value = messages::RESULTS_TOPIC)]
    pub topic: Topic,

    /// Channel to consume on
    #[arg(long, value_name = "CHANNEL", default_value = "logger")]
    pub channel: Channel,

    /// Where and how to consume.
    #[command(flatten)]
    #[serde(flatten)]
    pub consumer: ConsumerArgs<1000>,

    /// File the JSON lines are appended to (unset: stdout)
    #[arg(long, value_name = "PATH", value_parser = Parse(output_path))]
    pub output: Option<PathBuf>,

    /// Close the current output file once it holds this many bytes (0: never by size), as
    /// <output stem>.<UTC time of closing>.<ext>, e.g. results.20261201T140638.123456789Z.jsonl
    #[arg(long, value_name = "SIZE", default_value = "256MiB")]
    pub rotate_size: ByteSize,

    /// Close the current output file once it is this old and not empty (0s: never by age)
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub rotate_interval: HumanDuration,

    /// Gzip each closed output file (on a thread of its own; .gz.tmp, fsync, rename, then
    /// the plain file is removed)
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = true,
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new()
    )]
    pub rotate_gzip: bool,

    /// How long a complete sensor epoch (its sensor has a newer one) stays in the
    /// de-duplication state after its last write; then only its sensor's highest dropped
    /// epoch is kept, and results of that epoch or older count as already written
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub epoch_retention: HumanDuration,

    /// fsync the output after each batch, not only flush it
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = false,
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new()
    )]
    pub fsync: bool,

    /// How often the per-worker summary is logged
    #[arg(
        long,
        value_name = "DURATION",
        default_value_t = HumanDuration::from_secs(5),
        value_parser = Parse(HumanDuration::nonzero)
    )]
    pub summary_interval: HumanDuration,

    /// Name of this logger in the metrics and in nsqadmin (the short host name)
    #[arg(long, value_name = "ID", default_value_t = default_logger_id(), value_parser = Parse(non_empty))]
    pub logger_id: String,

    /// Detect missing readings and ask the sensors to replay them
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = true,
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new()
    )]
    pub detect_gaps: bool,

    /// How long a seq may be missing before it is asked for again
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration::from_secs(3))]
    pub gap_grace: HumanDuration,

    /// Also ask for the readings of an epoch that went by before this logger consumed (a
    /// logger joining a running suite): without it, an epoch is answered for from the first
    /// results this logger received
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = false,
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new()
    )]
    pub backfill: bool,

    /// Topic the EpochComplete announcements are published to, once a sensor epoch's final
    /// seq came and nothing of it is missing (a sensor with --count waits for one)
    #[arg(long, value_name = "TOPIC", default_value = messages::COMPLETE_TOPIC)]
    pub complete_topic: Topic,

    /// Topic of the sensors' SensorStatus announcements, consumed on --channel
    #[arg(long, value_name = "TOPIC", default_value = messages::STATUS_TOPIC)]
    pub status_topic: Topic,

    /// Topic the ReplayRequests are published to
    #[arg(long, value_name = "TOPIC", default_value = messages::REPLAY_TOPIC)]
    pub replay_topic: Topic,

    /// Topic of the sensors' ReplayUnavailable answers, consumed on --channel
    #[arg(long, value_name = "TOPIC", default_value = messages::REPLAY_UNAVAILABLE_TOPIC)]
    pub replay_unavailable_topic: Topic,

    /// nsqd TCP address the ReplayRequests are published to (unset: the first
    /// --nsqd-tcp-address, else 127.0.0.1:4150)
    #[arg(long, value_name = "HOST:PORT")]
    pub replay_nsqd_tcp_address: Option<HostPort>,

    /// Replay requests for one gap before it is reported lost
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = Parse(replay_max_attempts))]
    pub replay_max_attempts: u32,

    /// Pause after a replay request before asking again; doubles per request, up to 16
    /// times this
    #[arg(
        long,
        value_name = "DURATION",
        default_value_t = HumanDuration::from_secs(2),
        value_parser = Parse(HumanDuration::nonzero)
    )]
    pub replay_backoff: HumanDuration,

    /// Most sensor epochs tracked for de-duplication and for gaps; past it the epochs with
    /// the fewest readings, then the least recently active, are forgotten (a WARN, and
    /// nsq_suite_dedup_epochs_forgotten_total / nsq_suite_sensor_epochs_dropped_total)
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = Parse(at_least_one::<usize>))]
    pub max_sensor_epochs: usize,

    /// Most seq ranges (runs of consecutive seqs) held for de-duplication over all epochs;
    /// past it the epoch with the most ranges is forgotten
    #[arg(long, value_name = "N", default_value_t = 200_000, value_parser = Parse(at_least_one::<usize>))]
    pub max_seq_ranges: usize,

    /// Most replay requests made per tick (every 50-250 ms, a quarter of --gap-grace), over
    /// all sensor epochs; a longer backlog of due requests waits for the next ticks
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = Parse(at_least_one::<usize>))]
    pub replay_requests_per_tick: usize,

    /// How many seqs beyond those written (or lost) without a hole a gap may reach: longer
    /// than any sensor history; a forged seq further out opens no gap
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = Parse(at_least_one::<u64>))]
    pub replay_window: u64,

    /// File the ranges reported lost are appended to (unset: beside --output, named after
    /// it: results.jsonl -> results.lost.jsonl; none with stdout)
    #[arg(long, value_name = "PATH", value_parser = Parse(lost_output_path))]
    pub lost_output: Option<PathBuf>,

    /// Fault injection (tests): wait this long between writing a batch and finishing its
    /// messages, so that a crash lands between the two
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration::from_secs(0))]
    pub fin_delay: HumanDuration,

    /// Fault injection (tests): at each rotation, wait this long between writing the state
    /// file and closing the current file, so that a crash lands between the two
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration::from_secs(0))]
    pub rotate_pause: HumanDuration,

    /// Address of the HTTP port (/health, /ready, /metrics, /gaps)
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

/// The short host name.
fn default_logger_id() -> String {
    let host = nsq::hostname();
    host.split('.').next().unwrap_or("logger").to_owned()
}

/// Parses `--output`: a path, not empty.
fn output_path(text: &str) -> Result<PathBuf, Invalid> {
    if text.is_empty() {
        return Err(Invalid::Value(
            "must not be empty (leave it out to write to stdout)".to_owned(),
        ));
    }
    Ok(PathBuf::from(text))
}

/// Parses `--lost-output`: a path, not empty.
fn lost_output_path(text: &str) -> Result<PathBuf, Invalid> {
    if text.is_empty() {
        return Err(Invalid::Value("must not be empty".to_owned()));
    }
    Ok(PathBuf::from(text))
}

/// Parses `--replay-max-attempts`: at least 1.
fn replay_max_attempts(text: &str) -> Result<u32, Invalid> {
    suite_common::setting::at_least_one(text).map_err(|e| match e {
        Invalid::Value(m) if m == "must be at least 1" => {
            Invalid::Value("must be at least 1 (use --detect-gaps=false to never ask)".to_owned())
        }
        other => other,
    })
}

impl Config {
    /// Checks the rules that involve several settings, naming the flags.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.consul.enabled() {
            self.consumer.require_source("logger", ENV_PREFIX)?;
        }
        self.nsq.resolve()?;
        self.consul.resolve().map(drop)
    }

    /// nsqd the replay requests are published to: `--replay-nsqd-tcp-address`, else the
    /// first `--nsqd-tcp-address`, else [`DEFAULT_REPLAY_NSQD`].
    pub fn replay_nsqd(&self) -> String {
        self.fixed_replay_nsqd()
            .unwrap_or_else(|| DEFAULT_REPLAY_NSQD.to_owned())
    }

    /// [`Config::replay_nsqd`] when an address is given; `None` when none is given and Consul
    /// is on (Consul's nsqd is used).
    pub fn fixed_replay_nsqd(&self) -> Option<String> {
        let given = self
            .replay_nsqd_tcp_address
            .as_ref()
            .or(self.consumer.nsqd_tcp_address.first())
            .map(ToString::to_string);
        match given {
            None if !self.consul.enabled() => Some(DEFAULT_REPLAY_NSQD.to_owned()),
            other => other,
        }
    }

    /// The loss list file: `--lost-output`, else beside `--output` (`None` with stdout:
    /// losses are only logged, counted and shown).
    pub fn lost_output(&self) -> Option<PathBuf> {
        self.lost_output
            .clone()
            .or_else(|| self.output.as_deref().map(crate::lost::default_path))
    }

    /// How gaps are detected and asked for.
    pub fn gaps(&self) -> GapSettings {
        let backoff = self.replay_backoff.get();
        GapSettings {
            grace: self.gap_grace.get(),
            max_attempts: self.replay_max_attempts,
            backoff,
            backoff_max: backoff.saturating_mul(16),
            replay_window: self.replay_window,
            max_requests_per_tick: self.replay_requests_per_tick,
            max_epochs: self.max_sensor_epochs,
            backfill: self.backfill,
            ..GapSettings::default()
        }
    }

    /// When the output rotates.
    pub fn rotation(&self) -> Rotation {
        let interval = self.rotate_interval.get();
        Rotation {
            size: self.rotate_size.get(),
            interval: (!interval.is_zero()).then_some(interval),
            gzip: self.rotate_gzip,
            pause: self.rotate_pause.get(),
        }
    }

    /// How the output file is opened.
    pub fn output_options(&self) -> Options {
        Options {
            fsync: self.fsync,
            rotation: self.rotation(),
            limits: self.seen_limits(),
        }
    }

    /// The bounds of the de-duplication state.
    pub fn seen_limits(&self) -> SeenLimits {
        SeenLimits {
            max_epochs: self.max_sensor_epochs,
            max_ranges: self.max_seq_ranges,
        }
    }
}

impl ServiceConfig for Config {
    const NAME: &'static str = "logger";
    const ENV_PREFIX: &'static str = ENV_PREFIX;
    const ABOUT: &'static str =
        "Consumes WorkResults from NSQ and appends each one once, as a JSON line";
    const AFTER_HELP: &'static str = AFTER_HELP;

    fn adjust(command: clap::Command) -> clap::Command {
        command.mut_arg("max_in_flight", |arg| {
            arg.help("Most messages in flight, over all nsqd; also the largest write batch")
        })
    }

    fn http_address(&self) -> &ListenAddr {
        &self.http_address
    }

    fn log(&self) -> &LogArgs {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use suite_common::cli::ServiceCli as _;

    use super::*;

    fn settings(args: &[&str], e: &[(&str, &str)]) -> Result<Config, String> {
        let config = Cli::config_from(args, e)?;
        config.check().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults() {
        let s = settings(&["--nsqd-tcp-address", "127.0.0.1:4150"], &[]).unwrap();
        assert_eq!((&*s.topic, &*s.channel), ("results", "logger"));
        assert_eq!(s.consumer.max_in_flight, 1000);
        assert_eq!(s.output, None);
        assert!(!s.fsync);
        assert_eq!(s.summary_interval.get(), Duration::from_secs(5));
        assert_eq!(s.http_address.to_string(), DEFAULT_HTTP_ADDRESS);
        assert!(s.detect_gaps);
        let gaps = s.gaps();
        assert_eq!(gaps.grace, Duration::from_secs(3));
        assert_eq!(gaps.max_attempts, 5);
        assert_eq!(gaps.backoff, Duration::from_secs(2));
        assert_eq!(gaps.backoff_max, Duration::from_secs(32));
        assert_eq!(
            (&*s.status_topic, &*s.replay_topic),
            ("sensor_status", "sensor_replay")
        );
        assert_eq!(&*s.replay_unavailable_topic, "sensor_replay_unavailable");
        assert_eq!(s.replay_nsqd(), "127.0.0.1:4150");
        assert_eq!(s.lost_output(), None, "no loss list with stdout");
        // Shipped rotation: 256 MiB or daily, gzipped; complete epochs kept a day.
        let r = s.rotation();
        assert_eq!(
            (r.size, r.interval, r.gzip),
            (256 << 20, Some(Duration::from_secs(86_400)), true)
        );
        assert_eq!(s.epoch_retention.get(), Duration::from_secs(86_400));
    }

    #[test]
    fn rotation_settings() {
        let s = settings(
            &[
                "--nsqd-tcp-address=a:1",
                "--rotate-size=0",
                "--rotate-interval=1h",
                "--rotate-gzip=false",
            ],
            &[],
        )
        .unwrap();
        let r = s.rotation();
        assert_eq!(
            (r.size, r.interval, r.gzip),
            (0, Some(Duration::from_secs(3600)), false)
        );
        let s = settings(
            &["--nsqd-tcp-address=a:1", "--rotate-interval=0s"],
            &[("LOGGER_ROTATE_SIZE", "1GiB")],
        )
        .unwrap();
        assert_eq!((s.rotation().size, s.rotation().interval), (1 << 30, None));
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
        assert_eq!(s.replay_nsqd(), DEFAULT_REPLAY_NSQD);
        assert_eq!(s.lost_output(), Some(PathBuf::from("/data/r.lost.jsonl")));
        let gaps = s.gaps();
        assert_eq!(gaps.grace, Duration::from_millis(500));
        assert_eq!(
            (gaps.max_attempts, gaps.backoff),
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
        assert_eq!(s.replay_nsqd(), "n1:4150", "the first nsqd");
        assert_eq!(s.lost_output(), Some(PathBuf::from("/x/lost.jsonl")));
        let s = settings(
            &[
                "--nsqd-tcp-address=n1:4150",
                "--replay-nsqd-tcp-address=r:4150",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.replay_nsqd(), "r:4150");
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
        assert_eq!(s.consumer.lookupd_urls(), ["http://l:4161"]);
        let err = settings(&[], &[]).unwrap_err();
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
            (&["--rotate-size", "big"], "invalid `--rotate-size`"),
            (
                &["--rotate-interval", "daily"],
                "invalid `--rotate-interval`",
            ),
            (&["--epoch-retention", "x"], "invalid `--epoch-retention`"),
            (
                &["--replay-nsqd-tcp-address", "x"],
                "`--replay-nsqd-tcp-address` 'x'",
            ),
            (&["--http-address", "h"], "`--http-address` 'h'"),
        ];
        for (args, expected) in cases {
            let mut all = vec!["--nsqd-tcp-address", "127.0.0.1:4150"];
            all.extend_from_slice(args);
            let err = settings(&all, &[]).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        // The environment can give an empty --output.
        let err = settings(&["--nsqd-tcp-address", "a:1"], &[("LOGGER_OUTPUT", "")]).unwrap_err();
        assert!(err.contains("invalid `--output`"), "{err}");
        assert!(err.contains("LOGGER_OUTPUT"), "{err}");
    }

    #[test]
    fn help_names_every_env_var_and_its_real_default() {
        let command = Cli::command_with_env();
        let help = command.clone().render_help().to_string();
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let var = format!("LOGGER_{}", key.to_ascii_uppercase());
            assert!(help.contains(&var), "{var} missing from --help:\n{help}");
        }
        let mismatches = suite_common::config::help_mismatches(&command, &Config::default());
        assert!(mismatches.is_empty(), "{mismatches:#?}");
        assert!(
            help.contains("also the largest write batch [default: 1000]"),
            "{help}"
        );
    }
}
