//! Calling the other services: one `reqwest` client per process (it keeps connections open and
//! reuses them), a time limit on every request, bounded answers, and the client-side round
//! robin that stands in for a load balancer.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use serde::{de::DeserializeOwned, Serialize};
use suite_common::{
    addr::HttpAddr,
    body::{read_capped, BodyError},
};

use crate::MAX_BODY_BYTES;

/// Why a call to another service failed. The message names the URL.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Not reachable, timed out, or the connection broke.
    #[error("{url}: {}", chain(source))]
    Transport {
        /// The URL called.
        url: String,
        /// What happened.
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The URL called.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The start of the answer's text.
        body: String,
    },
    /// The answer was not what was expected (too big, not the JSON type).
    #[error("{url} answered something unusable: {reason}")]
    Answer {
        /// The URL called.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// An error with its causes, e.g. "error sending request: client error (Connect): tcp
/// connect error: Connection refused (os error 111)": reqwest's own message alone does not
/// say what went wrong.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text = format!("{text}: {e}");
        cause = e.source();
    }
    text
}

/// The HTTP client of a service: connections kept open and reused, `timeout` on every
/// request (connecting included).
pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?)
}

/// Base URLs taken in turn: the client-side load balancing a REST caller has to do itself.
#[derive(Debug)]
pub struct RoundRobin {
    /// `http://host:port/path` for each peer.
    urls: Vec<String>,
    /// The next one to use.
    next: AtomicUsize,
}

impl RoundRobin {
    /// `path` on each of `peers`, in turn.
    pub fn new(peers: &[HttpAddr], path: &str) -> Self {
        Self {
            urls: peers.iter().map(|p| format!("{}{path}", p.url())).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The URL of the next call (`None` when there are no peers).
    pub fn next(&self) -> Option<&str> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.urls
            .get(i % self.urls.len().max(1))
            .map(String::as_str)
    }
}

/// `GET url`, the answer decoded as JSON.
pub async fn get_json<R: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> Result<R, CallError> {
    answer(url, client.get(url).send().await).await
}

/// `POST url` with `body` as JSON, the answer decoded as JSON.
pub async fn post_json<B: Serialize, R: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    body: &B,
) -> Result<R, CallError> {
    answer(url, client.post(url).json(body).send().await).await
}

/// Reads an answer of at most [`MAX_BODY_BYTES`], and decodes it when the status is a
/// success.
async fn answer<R: DeserializeOwned>(
    url: &str,
    sent: reqwest::Result<reqwest::Response>,
) -> Result<R, CallError> {
    let transport = |source| CallError::Transport {
        url: url.to_owned(),
        source,
    };
    let response = sent.map_err(transport)?;
    let status = response.status();
    let body = match read_capped(response, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(BodyError::Read(source)) => return Err(transport(source)),
        Err(e @ BodyError::TooLong { .. }) => {
            return Err(CallError::Answer {
                url: url.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(CallError::Status {
            url: url.to_owned(),
            status,
            body: text.chars().take(200).collect(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| CallError::Answer {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// Counts a failed call (`rest_requests_failed_total{call}`) and logs it, at most once a
/// second with the number held back.
pub fn failed(
    limiter: &std::sync::Mutex<suite_common::log_limit::LogLimiter>,
    call: &'static str,
    error: &CallError,
) {
    metrics::counter!(crate::metrics::REQUESTS_FAILED, "call" => call).increment(1);
    let allowed = limiter.lock().map(|mut l| l.check()).unwrap_or(None);
    if let Some(held_back) = allowed {
        tracing::warn!(%error, call, held_back, "request failed; its reading is lost (no retry in the REST version)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_each_peer_in_turn() {
        let peers: Vec<HttpAddr> = ["a:1", "http://b:2"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let rr = RoundRobin::new(&peers, "/square");
        let got: Vec<_> = (0..4).map(|_| rr.next().unwrap().to_owned()).collect();
        assert_eq!(
            got,
            [
                "http://a:1/square",
                "http://b:2/square",
                "http://a:1/square",
                "http://b:2/square"
            ]
        );
        assert_eq!(RoundRobin::new(&[], "/x").next(), None);
    }
}
