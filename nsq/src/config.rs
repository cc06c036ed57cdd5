//! Settings for connections, producers and consumers, with defaults that are fast and safe.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ConfigError;

/// What every connection sends in IDENTIFY and how it connects.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// Shown in nsqadmin as the client's name (`client_id`).
    pub client_id: String,
    /// Shown in nsqadmin as the client's host.
    pub hostname: String,
    /// Shown in nsqadmin as the client library, e.g. `nsq-suite-worker/0.1.0`.
    pub user_agent: String,
    /// How often nsqd sends heartbeats; a client that misses two is disconnected.
    pub heartbeat_interval: Duration,
    /// Time allowed for TCP connect and each handshake step.
    pub connect_timeout: Duration,
    /// TLS, when set: the connection is upgraded right after IDENTIFY.
    pub tls: Option<TlsSettings>,
    /// Secret sent with AUTH when nsqd asks for it (`--auth-http-address` on nsqd).
    pub auth_secret: Option<String>,
    /// Per-connection message timeout (nsqd's `--msg-timeout` when `None`).
    pub msg_timeout: Option<Duration>,
    /// nsqd's output buffer for this connection in bytes; `Some(-1)` disables it, which gives
    /// the lowest latency at low rates (nsqd otherwise holds a lone message up to
    /// `output_buffer_timeout`).
    pub output_buffer_size: Option<i64>,
    /// First delay before reconnecting; doubles per failure, with jitter.
    pub reconnect_initial: Duration,
    /// Longest delay between reconnect attempts.
    pub reconnect_max: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        let hostname = hostname();
        ConnectionConfig {
            client_id: hostname
                .split('.')
                .next()
                .unwrap_or("nsq-client")
                .to_string(),
            hostname,
            user_agent: concat!("nsq-suite-client/", env!("CARGO_PKG_VERSION")).to_string(),
            heartbeat_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            tls: None,
            auth_secret: None,
            msg_timeout: None,
            output_buffer_size: None,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
        }
    }
}

/// The machine's host name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// A ready TLS client configuration (certificates are read and checked once, up front).
#[derive(Clone)]
pub struct TlsSettings {
    pub(crate) client_config: Arc<rustls::ClientConfig>,
    /// Name to verify the certificate against; the host of the address when `None`.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Trusts the CA certificates in `ca_file` (PEM) and, when given, presents a client
    /// certificate (`cert_file` and `key_file`, PEM). Certificates are verified for real:
    /// chain, validity period and host name.
    pub fn new(
        ca_file: &Path,
        client_cert: Option<(&Path, &Path)>,
        server_name: Option<String>,
    ) -> Result<Self, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let mut roots = rustls::RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(ca_file).map_err(|e| {
            ConfigError::Tls(format!("cannot read CA file {}: {e}", ca_file.display()))
        })?;
        for ca in cas {
            let ca = ca.map_err(|e| {
                ConfigError::Tls(format!(
                    "bad certificate in CA file {}: {e}",
                    ca_file.display()
                ))
            })?;
            roots.add(ca).map_err(|e| {
                ConfigError::Tls(format!(
                    "unusable CA certificate in {}: {e}",
                    ca_file.display()
                ))
            })?;
        }
        if roots.is_empty() {
            return Err(ConfigError::Tls(format!(
                "CA file {} holds no certificate",
                ca_file.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
                    .map_err(|e| {
                        ConfigError::Tls(format!("cannot read {}: {e}", cert_file.display()))
                    })?
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        ConfigError::Tls(format!("bad certificate in {}: {e}", cert_file.display()))
                    })?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                    ConfigError::Tls(format!("cannot read key {}: {e}", key_file.display()))
                })?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| ConfigError::Tls(format!("client certificate rejected: {e}")))?
            }
        };
        Ok(TlsSettings {
            client_config: Arc::new(config),
            server_name,
        })
    }

    /// Same as [`TlsSettings::new`] from owned paths, for configuration structs.
    pub fn from_paths(
        ca_file: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
        server_name: Option<String>,
    ) -> Result<Self, ConfigError> {
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Tls(
                    "a client certificate needs both the certificate and the key file".into(),
                ))
            }
        };
        Self::new(ca_file, client, server_name)
    }
}

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Connection settings.
    pub connection: ConnectionConfig,
    /// How long a publish may wait for nsqd's answer, queueing while disconnected included.
    pub publish_timeout: Duration,
    /// Largest single message (nsqd `--max-msg-size`; nsqd v1.3.0 does not announce it).
    pub max_msg_size: usize,
    /// Largest MPUB body (nsqd `--max-body-size`).
    pub max_body_size: usize,
    /// Publishes queued for the connection before `publish` waits for room.
    pub queue_capacity: usize,
    /// Send PUBs to one topic that are queued together as one MPUB (atomic: all confirmed or
    /// all failed). Nothing waits to form a batch; a lone PUB stays a PUB.
    pub coalesce_pubs: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            connection: ConnectionConfig::default(),
            publish_timeout: Duration::from_secs(10),
            max_msg_size: crate::protocol::DEFAULT_MAX_MSG_SIZE,
            max_body_size: crate::protocol::DEFAULT_MAX_BODY_SIZE,
            queue_capacity: 16 * 1024,
            coalesce_pubs: true,
        }
    }
}

/// The output-buffer timeout a consumer asks nsqd for by default: 1 ms, the smallest nsqd
/// accepts (it counts whole milliseconds, and 0 means "your default").
///
/// nsqd buffers what it writes to a consumer and flushes the buffer when the client's RDY is
/// used up, when the buffer (16 KiB) is full, or on a ticker of this period. A lone message
/// therefore waits up to one period on every hop: with nsqd's 250 ms default that is the whole
/// latency of a light pipeline. At 1 ms a light load is written within a millisecond, and a
/// heavy one still batches: the ticker is a bound, a full buffer flushes first. nsqd only
/// grants values within its `--min-output-buffer-timeout` (25 ms by default), so the
/// configurations shipped with this suite start nsqd with `--min-output-buffer-timeout=1ms`.
pub const DEFAULT_OUTPUT_BUFFER_TIMEOUT: Duration = Duration::from_millis(1);

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Connection settings (one connection per nsqd).
    pub connection: ConnectionConfig,
    /// nsqd TCP addresses to consume from directly (`host:port`).
    pub nsqd_tcp_addresses: Vec<String>,
    /// nsqlookupd HTTP addresses (`host:port` or `http://host:port`) to discover nsqd nodes.
    pub lookupd_http_addresses: Vec<String>,
    /// How often to ask the lookupds (with ±10 % jitter). While no lookupd lists an nsqd
    /// for the topic, the consumer asks sooner: after 100 ms, doubling back up to this.
    pub lookupd_poll_interval: Duration,
    /// Most messages in flight over all connections together.
    pub max_in_flight: u32,
    /// Deliveries after which [`crate::Message::over_max_attempts`] is true (0: no limit).
    pub max_attempts: u16,
    /// First RDY-0 pause after a failed message (go-nsq's backoff); doubles per failure.
    pub backoff_initial: Duration,
    /// Longest backoff pause.
    pub backoff_max: Duration,
    /// With more nsqd nodes than `max_in_flight`, how often RDY moves to starved connections.
    pub rdy_redistribute_interval: Duration,
    /// How long `close()` waits for in-flight messages to be finished or requeued.
    pub close_timeout: Duration,
    /// The longest nsqd may hold a message for this consumer in its output buffer (IDENTIFY
    /// `output_buffer_timeout`; whole milliseconds, at least 1 ms). `None` leaves nsqd's own
    /// `--output-buffer-timeout` (250 ms unless changed). Default:
    /// [`DEFAULT_OUTPUT_BUFFER_TIMEOUT`].
    ///
    /// nsqd refuses a value outside its `--min-output-buffer-timeout` (25 ms by default) ..
    /// `--max-output-buffer-timeout` range, and closes the connection. The consumer then
    /// connects again without the setting (nsqd's default applies), emits
    /// [`crate::Event::OutputBufferTimeoutRefused`] and logs one WARN per consumer that names
    /// the nsqd flag to change. Every new connection asks again, so fixing nsqd's flags takes
    /// effect at the next reconnect. [`crate::NodeStats::output_buffer_timeout`] shows the
    /// value in effect.
    pub output_buffer_timeout: Option<Duration>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            connection: ConnectionConfig::default(),
            nsqd_tcp_addresses: Vec::new(),
            lookupd_http_addresses: Vec::new(),
            lookupd_poll_interval: Duration::from_secs(5),
            max_in_flight: 1,
            max_attempts: 5,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            rdy_redistribute_interval: Duration::from_secs(2),
            close_timeout: Duration::from_secs(30),
            output_buffer_timeout: Some(DEFAULT_OUTPUT_BUFFER_TIMEOUT),
        }
    }
}

/// Checks an output-buffer timeout for IDENTIFY and returns it in milliseconds: nsqd counts
/// whole milliseconds and reads 0 as "keep the default" and -1 as "no timer" (which holds a
/// lone message until the next heartbeat), so only whole milliseconds from 1 ms are accepted.
pub fn output_buffer_timeout_ms(d: Duration) -> Result<i64, ConfigError> {
    let bad = || ConfigError::OutputBufferTimeout(d);
    if d < Duration::from_millis(1) || d.subsec_nanos() % 1_000_000 != 0 {
        return Err(bad());
    }
    i64::try_from(d.as_millis()).map_err(|_| bad())
}

/// Normalises a lookupd address to a base URL (`http://host:port`).
///
/// Only `http` is accepted: nsqlookupd serves plain HTTP, and the client is built without an
/// HTTPS stack, so an `https://` address would fail at every poll; it is refused here, the
/// rule `suite_common`'s `LookupdAddr` applies too.
pub fn lookupd_url(addr: &str) -> Result<String, ConfigError> {
    let trimmed = addr.trim();
    let url = match trimmed.split_once("://") {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => trimmed.to_string(),
        Some((scheme, _)) => {
            return Err(ConfigError::Address {
                addr: addr.to_string(),
                reason: format!(
                    "scheme {scheme:?} is not supported: give host:port or http://host:port \
                     (nsqlookupd serves plain HTTP)"
                ),
            })
        }
        None => format!("http://{trimmed}"),
    };
    let url = match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.trim_end_matches('/')),
        None => url,
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| ConfigError::Address {
        addr: addr.to_string(),
        reason: format!("not a host:port or URL ({e})"),
    })?;
    if parsed.host_str().is_none_or(|h| h.is_empty()) {
        return Err(ConfigError::Address {
            addr: addr.to_string(),
            reason: "no host".into(),
        });
    }
    Ok(url)
}

/// Checks that `addr` is `host:port` with a numeric port.
pub fn check_tcp_address(addr: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError::Address {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("expected host:port, the host is empty"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))
        .and_then(|p| if p == 0 { Err(bad("port 0")) } else { Ok(()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookupd_urls_are_normalised() {
        assert_eq!(
            lookupd_url("127.0.0.1:4161").unwrap(),
            "http://127.0.0.1:4161"
        );
        assert_eq!(lookupd_url("http://h:1/").unwrap(), "http://h:1");
        assert!(lookupd_url("http://").is_err());
        let https = lookupd_url("https://h:4161").unwrap_err().to_string();
        assert!(https.contains("not supported"), "{https}");
    }

    #[test]
    fn output_buffer_timeouts_are_whole_milliseconds() {
        assert_eq!(
            output_buffer_timeout_ms(Duration::from_millis(1)).unwrap(),
            1
        );
        assert_eq!(
            output_buffer_timeout_ms(Duration::from_secs(2)).unwrap(),
            2000
        );
        assert!(output_buffer_timeout_ms(Duration::ZERO).is_err());
        assert!(output_buffer_timeout_ms(Duration::from_micros(500)).is_err());
        assert!(output_buffer_timeout_ms(Duration::from_micros(1500)).is_err());
    }

    #[test]
    fn tcp_addresses_are_checked() {
        assert!(check_tcp_address("127.0.0.1:4150").is_ok());
        assert!(check_tcp_address("nsqd:4150").is_ok());
        assert!(check_tcp_address("nsqd").is_err());
        assert!(check_tcp_address(":4150").is_err());
        assert!(check_tcp_address("h:99999").is_err());
        assert!(check_tcp_address("h:x").is_err());
    }
}
