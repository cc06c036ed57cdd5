//! Parsing and validation of the addresses a service is configured with.
//!
//! Addresses arrive as strings (from flags, environment or file) and are validated once,
//! right after the configuration is loaded, so that a typo fails at start-up with exit code 2
//! and a message naming the setting, rather than as a connection error later:
//!
//! ```
//! use suite_common::addr;
//!
//! let nsqd = addr::host_port("--nsqd-tcp-address", "127.0.0.1:4150")?;
//! assert_eq!(nsqd.port(), 4150);
//!
//! let lookupd = addr::lookupd_url("--lookupd-http-address", "nsqlookupd:4161")?;
//! assert_eq!(lookupd, "http://nsqlookupd:4161");
//!
//! let err = addr::host_port("--nsqd-tcp-address", "foo").unwrap_err();
//! assert_eq!(err.to_string(), "`--nsqd-tcp-address` 'foo' is not host:port (e.g. 127.0.0.1:4150)");
//! # Ok::<(), addr::AddrError>(())
//! ```
//!
//! Names are not resolved here: a host name is only checked for shape, because the host may
//! legitimately not exist yet when the service starts (containers starting together).

use std::{fmt, net::Ipv6Addr, str::FromStr};

/// An address setting that is not valid.
///
/// Its message names the setting, quotes the value and says what is wrong; it is a
/// configuration error (exit code 2, see [`crate::exit`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` '{value}' {reason}")]
pub struct AddrError {
    /// The setting, as the user knows it (the flag name, e.g. `--nsqd-tcp-address`).
    pub name: String,
    /// The value that was given.
    pub value: String,
    /// What is wrong with it, e.g. `is not host:port (e.g. 127.0.0.1:4150)`.
    pub reason: String,
}

impl AddrError {
    fn new(name: &str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A validated `host:port` pair.
///
/// The host is a name, an IPv4 address or an IPv6 address (written `[::1]:4150`). It is kept
/// as text so that names are resolved when connecting, not when parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP address, without brackets.
    host: String,
    /// Port number (0 only in listen addresses: "any free port").
    port: u16,
}

impl HostPort {
    /// The host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for HostPort {
    /// Formats as `host:port`, bracketing IPv6 hosts (`[::1]:4150`), so that the output can be
    /// passed to `TcpStream::connect` or parsed again.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

const NOT_HOST_PORT: &str = "is not host:port (e.g. 127.0.0.1:4150)";

/// Parses a `host:port` address to connect to (port 1-65535).
///
/// `name` is the setting's name used in the error, e.g. `--nsqd-tcp-address`.
pub fn host_port(name: &str, value: &str) -> Result<HostPort, AddrError> {
    let parsed = parse(name, value)?;
    if parsed.port == 0 {
        return Err(AddrError::new(name, value, "has port 0 (must be 1-65535)"));
    }
    Ok(parsed)
}

/// Parses a `host:port` address to listen on; port 0 means "any free port".
pub fn listen_address(name: &str, value: &str) -> Result<HostPort, AddrError> {
    parse(name, value)
}

/// Parses an nsqlookupd HTTP address, `host:port` or `http://host:port`, into a base URL
/// `http://host:port` (no trailing slash).
pub fn lookupd_url(name: &str, value: &str) -> Result<String, AddrError> {
    let trimmed = value.trim();
    let rest = match trimmed.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => {
            return Err(AddrError::new(
                name,
                value,
                "is not host:port or http://host:port (only http is supported)",
            ))
        }
        None => trimmed,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(AddrError::new(
            name,
            value,
            "is not host:port or http://host:port (no path allowed)",
        ));
    }
    let host_port = host_port(name, rest).map_err(|mut e| {
        e.value = value.to_owned();
        e
    })?;
    Ok(format!("http://{host_port}"))
}

/// Parses each of a repeatable setting's values with [`host_port`].
pub fn host_ports(name: &str, values: &[String]) -> Result<Vec<HostPort>, AddrError> {
    values.iter().map(|v| host_port(name, v)).collect()
}

/// Parses each of a repeatable setting's values with [`lookupd_url`].
pub fn lookupd_urls(name: &str, values: &[String]) -> Result<Vec<String>, AddrError> {
    values.iter().map(|v| lookupd_url(name, v)).collect()
}

fn parse(name: &str, value: &str) -> Result<HostPort, AddrError> {
    let err = |reason: &str| AddrError::new(name, value, reason);
    let trimmed = value.trim();
    let (host, port) = if let Some(rest) = trimmed.strip_prefix('[') {
        // [IPv6]:port
        let (host, port) = rest.split_once("]:").ok_or_else(|| err(NOT_HOST_PORT))?;
        Ipv6Addr::from_str(host).map_err(|_| err("has an invalid IPv6 address"))?;
        (host, port)
    } else {
        let (host, port) = trimmed.rsplit_once(':').ok_or_else(|| err(NOT_HOST_PORT))?;
        if host.contains(':') {
            if Ipv6Addr::from_str(host).is_ok() || Ipv6Addr::from_str(trimmed).is_ok() {
                return Err(err(
                    "is not host:port (write IPv6 addresses in brackets: [::1]:4150)",
                ));
            }
            return Err(err(NOT_HOST_PORT));
        }
        if host.is_empty() {
            return Err(err("has no host (e.g. 127.0.0.1:4150)"));
        }
        let valid = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(err(NOT_HOST_PORT));
        }
        (host, port)
    };
    if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
        return Err(err(NOT_HOST_PORT));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| err("has an invalid port (must be 0-65535)"))?;
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_host_ports() {
        let cases = [
            ("127.0.0.1:4150", "127.0.0.1", 4150, "127.0.0.1:4150"),
            ("nsqd:4150", "nsqd", 4150, "nsqd:4150"),
            (
                " my-host.example_1:1 ",
                "my-host.example_1",
                1,
                "my-host.example_1:1",
            ),
            ("[::1]:4150", "::1", 4150, "[::1]:4150"),
            ("localhost:65535", "localhost", 65535, "localhost:65535"),
        ];
        for (input, host, port, display) in cases {
            let hp = host_port("--x", input).unwrap();
            assert_eq!((hp.host(), hp.port()), (host, port), "{input}");
            assert_eq!(hp.to_string(), display);
        }
    }

    #[test]
    fn invalid_host_ports_name_the_setting_and_value() {
        let cases = [
            ("foo", "is not host:port (e.g. 127.0.0.1:4150)"),
            ("", "is not host:port (e.g. 127.0.0.1:4150)"),
            (":4150", "has no host (e.g. 127.0.0.1:4150)"),
            ("host:", "is not host:port (e.g. 127.0.0.1:4150)"),
            ("host:http", "is not host:port (e.g. 127.0.0.1:4150)"),
            ("host:-1", "is not host:port (e.g. 127.0.0.1:4150)"),
            ("host:65536", "has an invalid port (must be 0-65535)"),
            ("host:0", "has port 0 (must be 1-65535)"),
            ("ho st:1", "is not host:port (e.g. 127.0.0.1:4150)"),
            ("http://host:1", "is not host:port (e.g. 127.0.0.1:4150)"),
            (
                "::1:4150",
                "is not host:port (write IPv6 addresses in brackets: [::1]:4150)",
            ),
            ("[zz]:1", "has an invalid IPv6 address"),
            ("[::1]4150", "is not host:port (e.g. 127.0.0.1:4150)"),
        ];
        for (input, reason) in cases {
            let err = host_port("--nsqd-tcp-address", input).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("`--nsqd-tcp-address` '{input}' {reason}")
            );
        }
    }

    #[test]
    fn listen_address_allows_port_zero() {
        assert_eq!(
            listen_address("--http-address", "127.0.0.1:0")
                .unwrap()
                .port(),
            0
        );
        assert!(listen_address("--http-address", "127.0.0.1").is_err());
    }

    #[test]
    fn lookupd_addresses_are_normalised_to_urls() {
        let cases = [
            ("127.0.0.1:4161", "http://127.0.0.1:4161"),
            ("http://127.0.0.1:4161", "http://127.0.0.1:4161"),
            ("HTTP://lookupd:4161/", "http://lookupd:4161"),
            ("[::1]:4161", "http://[::1]:4161"),
        ];
        for (input, url) in cases {
            assert_eq!(lookupd_url("--lookupd-http-address", input).unwrap(), url);
        }
    }

    #[test]
    fn invalid_lookupd_addresses() {
        let cases = [
            (
                "https://host:4161",
                "is not host:port or http://host:port (only http is supported)",
            ),
            (
                "http://host:4161/lookup",
                "is not host:port or http://host:port (no path allowed)",
            ),
            ("http://host", "is not host:port (e.g. 127.0.0.1:4150)"),
            ("lookupd", "is not host:port (e.g. 127.0.0.1:4150)"),
        ];
        for (input, reason) in cases {
            let err = lookupd_url("--lookupd-http-address", input).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("`--lookupd-http-address` '{input}' {reason}")
            );
        }
    }

    #[test]
    fn lists_stop_at_the_first_bad_value() {
        let good = vec!["a:1".to_owned(), "b:2".to_owned()];
        assert_eq!(host_ports("--x", &good).unwrap().len(), 2);
        let bad = vec!["a:1".to_owned(), "b".to_owned()];
        assert_eq!(host_ports("--x", &bad).unwrap_err().value, "b");
        assert_eq!(
            lookupd_urls("--y", &good).unwrap(),
            ["http://a:1", "http://b:2"]
        );
    }
}
