//! Typed errors. Callers decide on the kind: a rejected publish is the caller's bug and will not
//! pass on retry, a lost connection may.

use std::time::Duration;

/// Why a publish was not confirmed by nsqd.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The input was rejected before anything was sent; the connection is unaffected.
    #[error("invalid publish: {0}")]
    Invalid(#[from] InvalidInput),
    /// nsqd answered with an error frame (for example `E_PUB_FAILED`).
    #[error("nsqd rejected the publish: {code}: {text}")]
    Rejected {
        /// The error code, such as `E_BAD_MESSAGE`.
        code: String,
        /// nsqd's whole error text.
        text: String,
    },
    /// The command was written but the connection dropped before nsqd answered, so it is not
    /// known whether nsqd took the message. Retrying may publish it twice (at-least-once).
    #[error("connection to nsqd {addr} lost before the publish was confirmed: {reason}")]
    ConnectionLost {
        /// The nsqd address.
        addr: String,
        /// Why the connection ended.
        reason: String,
    },
    /// No answer within the configured publish timeout (nsqd unreachable or too slow). The
    /// command was either never sent or not confirmed.
    #[error("publish to nsqd {addr} not confirmed within {timeout:?} (nsqd unreachable or slow)")]
    Timeout {
        /// The nsqd address.
        addr: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The producer was closed.
    #[error("producer is closed")]
    Closed,
}

impl PublishError {
    /// True when trying again later may succeed (the connection failed, not the input).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PublishError::ConnectionLost { .. } | PublishError::Timeout { .. }
        ) || matches!(self, PublishError::Rejected { code, .. } if code == "E_PUB_FAILED" || code == "E_MPUB_FAILED" || code == "E_DPUB_FAILED")
    }
}

/// Input that nsqd would reject (and close the connection for), caught before sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// Topic name outside nsqd's rules.
    #[error("topic name {0:?} is not valid: use 1-64 characters of [.a-zA-Z0-9_-], optionally ending in #ephemeral")]
    TopicName(String),
    /// Channel name outside nsqd's rules.
    #[error("channel name {0:?} is not valid: use 1-64 characters of [.a-zA-Z0-9_-], optionally ending in #ephemeral")]
    ChannelName(String),
    /// nsqd rejects empty message bodies.
    #[error("message body is empty; nsqd rejects empty messages")]
    EmptyBody,
    /// A body over the size nsqd accepts.
    #[error("message body of {size} bytes is over the {max}-byte limit (nsqd --max-msg-size)")]
    BodyTooLarge {
        /// The body's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An MPUB whose whole body is over nsqd's `--max-body-size`.
    #[error(
        "MPUB of {size} bytes is over the {max}-byte limit (nsqd --max-body-size); split the batch"
    )]
    BatchTooLarge {
        /// The batch's encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// MPUB with no messages.
    #[error("MPUB needs at least one message")]
    EmptyBatch,
    /// DPUB delay over what the protocol carries.
    #[error("defer of {0:?} is too long (nsqd --max-req-timeout, 1 hour by default)")]
    DeferTooLong(Duration),
}

/// Errors while talking to nsqd at the protocol level.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Bytes that are not a valid frame.
    #[error("malformed data from nsqd: {0}")]
    Malformed(String),
    /// An error frame where the protocol does not allow one to be survived.
    #[error("nsqd error: {0}")]
    Nsqd(String),
    /// Something unexpected in the handshake.
    #[error("unexpected response from nsqd during {stage}: {got}")]
    Unexpected {
        /// Which step of the handshake.
        stage: &'static str,
        /// What came instead.
        got: String,
    },
}

/// Why a connection could not be made or ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP-level failure.
    #[error("cannot connect to nsqd {addr}: {source}")]
    Io {
        /// The nsqd address.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// TLS failure (handshake, certificate).
    #[error("TLS with nsqd {addr} failed: {reason}")]
    Tls {
        /// The nsqd address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// nsqd requires TLS or AUTH and we are not set up for it, or it refused.
    #[error("nsqd {addr} refused the handshake: {reason}")]
    Handshake {
        /// The nsqd address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// A protocol violation.
    #[error("protocol error with nsqd {addr}: {source}")]
    Protocol {
        /// The nsqd address.
        addr: String,
        /// The violation.
        #[source]
        source: ProtocolError,
    },
    /// No answer in time.
    #[error("nsqd {addr} did not answer within {timeout:?} during {stage}")]
    Timeout {
        /// The nsqd address.
        addr: String,
        /// Which step.
        stage: &'static str,
        /// The configured timeout.
        timeout: Duration,
    },
}

/// Configuration that cannot work, reported when a producer or consumer is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A bad topic or channel name.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// A consumer with neither nsqd addresses nor lookupd addresses.
    #[error("no nsqd address and no nsqlookupd address given: a consumer needs at least one")]
    NoSources,
    /// An address that does not parse.
    #[error("address {addr:?} is not valid: {reason}")]
    Address {
        /// The address as given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// TLS files that cannot be used.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// max_in_flight of 0.
    #[error("max_in_flight must be at least 1")]
    MaxInFlight,
    /// An output-buffer timeout nsqd cannot take.
    #[error("output buffer timeout {0:?} is not valid: use whole milliseconds from 1ms (or none for nsqd's default)")]
    OutputBufferTimeout(Duration),
}
