//! The addresses a service is configured with, as types that validate while they parse.
//!
//! [`HostPort`] (an address to connect to), [`ListenAddr`] (an address to listen on, port 0
//! allowed) and [`LookupdAddr`] (an nsqlookupd HTTP address) implement `FromStr`, and clap
//! parses settings of these types with [`crate::setting::Parse`], so that a typo fails at
//! start-up with exit code 2 and a message naming the flag (or the environment variable, or
//! the file), rather than as a connection error later:
//!
//! ```
//! use suite_common::addr::{self, HostPort, LookupdAddr};
//!
//! let nsqd: HostPort = "127.0.0.1:4150".parse()?;
//! assert_eq!(nsqd.port(), 4150);
//!
//! let lookupd: LookupdAddr = "nsqlookupd:4161".parse()?;
//! assert_eq!(lookupd.url(), "http://nsqlookupd:4161");
//! assert_eq!(lookupd.to_string(), "nsqlookupd:4161", "printed as given");
//!
//! let err = addr::host_port("--nsqd-tcp-address", "foo").unwrap_err();
//! assert_eq!(err.to_string(), "`--nsqd-tcp-address` 'foo' is not host:port (e.g. 127.0.0.1:4150)");
//! # Ok::<(), suite_common::setting::Invalid>(())
//! ```
//!
//! Names are not resolved here: a host name is only checked for shape, because the host may
//! legitimately not exist yet when the service starts (containers starting together).

use std::{fmt, net::Ipv6Addr, str::FromStr};

use crate::setting::Invalid;

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

impl FromStr for HostPort {
    type Err = Invalid;

    /// Parses a `host:port` address to connect to (port 1-65535).
    fn from_str(value: &str) -> Result<Self, Invalid> {
        let parsed = parse(value).map_err(Invalid::Address)?;
        if parsed.port == 0 {
            return Err(Invalid::Address("has port 0 (must be 1-65535)".to_owned()));
        }
        Ok(parsed)
    }
}

/// A validated `host:port` to listen on; port 0 means "any free port".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddr(HostPort);

impl ListenAddr {
    /// `127.0.0.1:<port>`, e.g. a service's default.
    pub fn loopback(port: u16) -> Self {
        Self(HostPort {
            host: "127.0.0.1".to_owned(),
            port,
        })
    }

    /// The address, e.g. for [`crate::http::HttpServer::bind`].
    pub fn host_port(&self) -> &HostPort {
        &self.0
    }
}

impl FromStr for ListenAddr {
    type Err = Invalid;

    fn from_str(value: &str) -> Result<Self, Invalid> {
        parse(value).map(Self).map_err(Invalid::Address)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A validated nsqlookupd HTTP address, `host:port` or `http://host:port`.
///
/// It prints as it was given (so that `--print-config` shows the value of the environment
/// variable or flag); [`LookupdAddr::url`] is the base URL to query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupdAddr {
    /// The address as given, trimmed.
    text: String,
    /// Host and port.
    addr: HostPort,
}

impl LookupdAddr {
    /// The base URL, `http://host:port` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl FromStr for LookupdAddr {
    type Err = Invalid;

    fn from_str(value: &str) -> Result<Self, Invalid> {
        let trimmed = value.trim();
        let rest = match trimmed.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => {
                return Err(Invalid::Address(
                    "is not host:port or http://host:port (only http is supported)".to_owned(),
                ))
            }
            None => trimmed,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(Invalid::Address(
                "is not host:port or http://host:port (no path allowed)".to_owned(),
            ));
        }
        Ok(Self {
            text: trimmed.to_owned(),
            addr: rest.parse()?,
        })
    }
}

impl fmt::Display for LookupdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

crate::setting_type!(HostPort, ListenAddr, LookupdAddr);

/// A peer's HTTP base address, `host:port` or `http://host:port`, read like an nsqlookupd
/// address ([`LookupdAddr::url`] gives `http://host:port`); used by the REST version's
/// services for the peers they call.
pub type HttpAddr = LookupdAddr;

/// The base URLs of nsqlookupd addresses (see [`LookupdAddr::url`]).
pub fn lookupd_urls(addrs: &[LookupdAddr]) -> Vec<String> {
    addrs.iter().map(LookupdAddr::url).collect()
}

/// The `host:port` texts of addresses, as the NSQ client takes them.
pub fn to_strings(addrs: &[HostPort]) -> Vec<String> {
    addrs.iter().map(ToString::to_string).collect()
}

/// Parses `value` as `T`, with an error naming the setting `name` (e.g. `--nsqd-tcp-address`).
fn named<T: FromStr<Err = Invalid>>(name: &str, value: &str) -> Result<T, AddrError> {
    value.parse().map_err(|e: Invalid| AddrError {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: e.reason().to_owned(),
    })
}

/// Parses a `host:port` address to connect to (port 1-65535), naming the setting `name`
/// (e.g. `--nsqd-tcp-address`) in the error.
pub fn host_port(name: &str, value: &str) -> Result<HostPort, AddrError> {
    named(name, value)
}

/// Parses a `host:port` address to listen on; port 0 means "any free port".
pub fn listen_address(name: &str, value: &str) -> Result<ListenAddr, AddrError> {
    named(name, value)
}

/// Parses an nsqlookupd HTTP address, `host:port` or `http://host:port`, into a base URL
/// `http://host:port` (no trailing slash).
pub fn lookupd_url(name: &str, value: &str) -> Result<String, AddrError> {
    named::<LookupdAddr>(name, value).map(|a| a.url())
}

fn parse(value: &str) -> Result<HostPort, String> {
    let err = |reason: &str| reason.to_owned();
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
                .host_port()
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
    fn lookupd_addresses_print_as_given() {
        let addrs: Vec<LookupdAddr> = ["a:1", " http://b:2/ "]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(addrs[0].to_string(), "a:1");
        assert_eq!(addrs[1].to_string(), "http://b:2/");
        assert_eq!(lookupd_urls(&addrs), ["http://a:1", "http://b:2"]);
    }
}
