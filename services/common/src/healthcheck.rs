//! The `healthcheck` subcommand's probe: `GET /health` on the service's own HTTP port.
//!
//! The runtime container image has no curl, so each service binary answers Docker's
//! `HEALTHCHECK` itself (`worker healthcheck`, exit 0 or 1) with this deliberately tiny,
//! blocking HTTP/1.0 client over a plain `TcpStream`. It is the one place in the suite where
//! an HTTP request is written by hand; everything has a deadline ([`PROBE_TIMEOUT`] in
//! total), the answer is bounded in size, and anything but a `200` status is an error
//! carrying the status line.
//!
//! The address is the service's configured `http_address`. A wildcard listen address
//! (`0.0.0.0`, `[::]`) is probed on the loopback address of the same family.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

/// Total time a probe may take: connect, send, receive.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes of an answer that are read (the health answer is under 100 bytes).
const MAX_RESPONSE: usize = 16 * 1024;

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The address could not be resolved.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// The address probed.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No connection could be made in time.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address probed.
        addr: String,
        /// The last connection error.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be sent or the answer not read in time.
    #[error("no answer from {addr}: {source}")]
    Io {
        /// The address probed.
        addr: String,
        /// The I/O error (a timeout shows as `WouldBlock`/`TimedOut`).
        #[source]
        source: std::io::Error,
    },
    /// The answer is not an HTTP response.
    #[error("{addr} did not answer HTTP: {first_line:?}")]
    NotHttp {
        /// The address probed.
        addr: String,
        /// The beginning of what came back.
        first_line: String,
    },
    /// The service answered with a status other than 200.
    #[error("{addr} answered {status_line}")]
    Status {
        /// The address probed.
        addr: String,
        /// The response's status line, e.g. `HTTP/1.1 503 Service Unavailable`.
        status_line: String,
    },
}

/// Probes `GET /health` on `addr` (`host:port`) within [`PROBE_TIMEOUT`].
pub fn probe(addr: &str) -> Result<(), ProbeError> {
    probe_path(addr, "/health", PROBE_TIMEOUT)
}

/// Probes `GET <path>` on `addr`; `Ok` only for a `200` status.
pub fn probe_path(addr: &str, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let deadline = Instant::now() + timeout;
    let targets: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| ProbeError::Resolve {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .map(loopback_if_unspecified)
        .collect();
    if targets.is_empty() {
        return Err(ProbeError::Resolve {
            addr: addr.to_owned(),
            reason: "no address".to_owned(),
        });
    }

    let mut last_error = None;
    let mut stream = None;
    for target in &targets {
        let Some(left) = remaining(deadline) else {
            break;
        };
        match TcpStream::connect_timeout(target, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| ProbeError::Connect {
        addr: addr.to_owned(),
        source: last_error
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")),
    })?;

    let io_error = |source| ProbeError::Io {
        addr: addr.to_owned(),
        source,
    };
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    set_timeouts(&stream, deadline).map_err(io_error)?;
    stream.write_all(request.as_bytes()).map_err(io_error)?;

    // Read until the status line is complete (or the answer ends), within the deadline.
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !answer.contains(&b'\n') && answer.len() < MAX_RESPONSE {
        set_timeouts(&stream, deadline).map_err(io_error)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        }
    }

    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or("").trim().to_owned();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(not_http(addr, &status_line));
    };
    if !version.starts_with("HTTP/") || code.len() != 3 || !code.chars().all(|c| c.is_ascii_digit())
    {
        return Err(not_http(addr, &status_line));
    }
    if code != "200" {
        return Err(ProbeError::Status {
            addr: addr.to_owned(),
            status_line,
        });
    }
    Ok(())
}

fn not_http(addr: &str, first_line: &str) -> ProbeError {
    ProbeError::NotHttp {
        addr: addr.to_owned(),
        first_line: first_line.chars().take(80).collect(),
    }
}

/// Time left before `deadline`, `None` when it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Sets read and write timeouts to the time left, failing when none is left.
fn set_timeouts(stream: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let left = remaining(deadline)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?;
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))
}

/// `0.0.0.0` and `[::]` are listen addresses, not destinations: probe the loopback instead.
fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, thread};

    use super::*;

    /// A one-shot server that answers the first connection with `answer`.
    fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(answer);
            }
        });
        addr
    }

    #[test]
    fn ok_on_200() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        probe(&addr.to_string()).unwrap();
    }

    #[test]
    fn status_line_in_the_error() {
        let addr = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = probe(&addr.to_string()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{addr} answered HTTP/1.1 503 Service Unavailable")
        );
    }

    #[test]
    fn garbage_is_not_http() {
        let addr = serve_once(b"+OK redis here\r\n");
        assert!(matches!(
            probe(&addr.to_string()),
            Err(ProbeError::NotHttp { .. })
        ));
        let addr = serve_once(b"");
        assert!(matches!(
            probe(&addr.to_string()),
            Err(ProbeError::NotHttp { .. })
        ));
    }

    #[test]
    fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepted by the kernel backlog, never answered.
        let started = Instant::now();
        let err = probe_path(&addr.to_string(), "/health", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ProbeError::Io { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    #[test]
    fn refused_connection() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is dropped: nothing listens there now.
        let err = probe(&addr.to_string()).unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err}");
    }

    #[test]
    fn unresolvable_address() {
        assert!(matches!(probe("no-port"), Err(ProbeError::Resolve { .. })));
    }

    #[test]
    fn wildcard_is_probed_on_loopback() {
        let addr: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert_eq!(loopback_if_unspecified(addr).to_string(), "127.0.0.1:80");
        let addr: SocketAddr = "[::]:80".parse().unwrap();
        assert_eq!(loopback_if_unspecified(addr).to_string(), "[::1]:80");
    }
}
