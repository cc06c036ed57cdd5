//! The wire contract of the nsq-suite: every message that crosses NSQ, and its codec.
//!
//! # Overview
//!
//! The suite's services never call each other; they publish to and consume from NSQ topics.
//! What travels on a topic is defined here and nowhere else, so that the sensor, the worker,
//! the logger and a client written in another language agree byte for byte:
//!
//! | type                  | topic                        | published by | read by          |
//! |-----------------------|------------------------------|--------------|------------------|
//! | [`SensorReading`]     | [`SENSOR_DATA_TOPIC`]        | sensor       | worker           |
//! | [`WorkResult`]        | [`RESULTS_TOPIC`]            | worker       | logger           |
//! | [`ReplayRequest`]     | [`REPLAY_TOPIC`]             | logger       | sensor           |
//! | [`ReplayUnavailable`] | [`REPLAY_UNAVAILABLE_TOPIC`] | sensor       | logger           |
//! | [`SensorStatus`]      | [`STATUS_TOPIC`]             | sensor       | logger           |
//! | [`EpochComplete`]     | [`COMPLETE_TOPIC`]           | logger       | sensor           |
//! | [`DeadLetter`]        | topic + [`DEAD_LETTER_SUFFIX`] | any consumer | operators        |
//!
//! This crate holds types and their codec only: no logic, no I/O, no clock. It is the one
//! crate every service depends on, which is exactly why it must stay this small.
//!
//! # Encoding
//!
//! Messages are MessagePack maps with named fields (`rmp_serde::to_vec_named`), so any
//! MessagePack library decodes them into a plain map. Each type has the same two methods:
//!
//! ```
//! use messages::{SensorReading, SCHEMA_VERSION};
//!
//! let reading = SensorReading {
//!     schema: SCHEMA_VERSION,
//!     sensor_id: "sensor-1".to_owned(),
//!     epoch: 1_700_000_000,
//!     seq: 42,
//!     taken_at: 1_700_000_000_123_456_789,
//!     values: vec![3, 4],
//! };
//! let bytes = reading.encode()?;
//! assert_eq!(SensorReading::decode(&bytes)?, reading);
//! # Ok::<(), messages::CodecError>(())
//! ```
//!
//! The [`Message`] trait exposes the same pair for code that is generic over the message
//! type (a consumer that decodes, or dead-letters what it cannot decode).
//!
//! # Versioning rule
//!
//! * Every message carries `schema`, the version of its type's layout; the current one is
//!   [`SCHEMA_VERSION`].
//! * A reader ignores fields it does not know, so a writer may add fields at any time.
//! * New fields are optional (`#[serde(default)]`): a reader accepts messages written before
//!   the field existed.
//! * A schema newer than [`SCHEMA_VERSION`] is still decoded when its fields fit (forward
//!   compatible). A missing schema or schema `0` is an error ([`CodecError::InvalidSchema`]).
//! * Removing or changing the type of a required field is a breaking change: it needs a new
//!   type or a new topic, never an in-place edit.
//!
//! The golden byte vectors in `tests/` and `testdata/` pin the format; if a change makes
//! them fail, the change breaks the wire contract.

#![warn(missing_docs)]

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Current schema version of every message type in this crate.
///
/// Writers stamp it into `schema`; readers accept any version `>= 1`.
pub const SCHEMA_VERSION: u8 = 1;

/// Topic of [`SensorReading`]s, published by the sensor and consumed by the workers.
pub const SENSOR_DATA_TOPIC: &str = "sensor_data";

/// Topic of [`WorkResult`]s, published by the workers and consumed by the logger.
pub const RESULTS_TOPIC: &str = "results";

/// Topic of [`ReplayRequest`]s, published by the logger and consumed by the sensors.
pub const REPLAY_TOPIC: &str = "sensor_replay";

/// Topic of [`ReplayUnavailable`] answers, published by a sensor for ranges it no longer holds.
pub const REPLAY_UNAVAILABLE_TOPIC: &str = "sensor_replay_unavailable";

/// Topic of [`SensorStatus`] announcements, published by the sensors periodically and at
/// shutdown so that the logger can detect readings missing at the tail of an epoch.
pub const STATUS_TOPIC: &str = "sensor_status";

/// Topic of [`EpochComplete`] announcements, published by a logger once nothing of a sensor
/// epoch can still be asked for, so that a sensor that is done may exit.
pub const COMPLETE_TOPIC: &str = "sensor_complete";

/// Suffix appended to a topic name to form its dead-letter topic, e.g. `sensor_data.dead`.
///
/// A message that a consumer gives up on is published there as a [`DeadLetter`].
pub const DEAD_LETTER_SUFFIX: &str = ".dead";

/// Longest `sensor_id` or `worker_id`, in bytes. Readers keep ids in memory per sensor epoch
/// and per worker, so they reject a message with a longer one; writers never make one.
pub const MAX_ID_BYTES: usize = 256;

/// Deepest nesting of MessagePack containers a decoder accepts.
///
/// The contract's own messages nest two levels (a map holding arrays); the margin is for
/// unknown fields added by newer writers. rmp-serde's default (1024) overflows the stack of
/// a 2 MiB thread in debug builds on hostile input.
const MAX_DEPTH: usize = 32;

/// Deserializes a `Vec` whose capacity grows with the elements actually read.
///
/// serde's own `Vec` reserves for the length the header announces (up to 1 MiB), so a
/// 5-byte `values` field (`0xdd ff ff ff ff`) would cost 1 MiB per message.
fn bounded_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Elements<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Elements<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(element) = seq.next_element()? {
                out.push(element);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Elements(std::marker::PhantomData))
}

/// Errors of the codec.
///
/// A decode error means the bytes are not the expected message: callers dead-letter such
/// messages rather than retrying them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be serialized (not expected for the types of this crate).
    #[error("cannot encode a {message}: {source}")]
    Encode {
        /// Name of the message type, e.g. `SensorReading`.
        message: &'static str,
        /// What rmp-serde reported.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// The bytes are not a MessagePack encoding of the expected type.
    #[error("not a {message}: {source}")]
    Decode {
        /// Name of the expected message type.
        message: &'static str,
        /// What rmp-serde reported (missing field, wrong type, truncated input...).
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// The bytes hold a complete message followed by more bytes.
    #[error("not a {message}: {trailing} unexpected byte(s) after the message")]
    TrailingBytes {
        /// Name of the expected message type.
        message: &'static str,
        /// How many bytes were left over.
        trailing: usize,
    },
    /// The message decoded but its schema version is not a valid one (`0`).
    #[error(
        "not a {message}: invalid schema version {found} (expected {SCHEMA_VERSION} or later)"
    )]
    InvalidSchema {
        /// Name of the expected message type.
        message: &'static str,
        /// The schema version found in the message.
        found: u8,
    },
}

/// What every message type of the contract has in common.
///
/// The inherent `encode`/`decode` methods of each type do the same; this trait is for code
/// that is generic over the message type.
pub trait Message: Serialize + DeserializeOwned {
    /// Name of the type, as used in error messages (`"SensorReading"`).
    const NAME: &'static str;

    /// The schema version carried by this message.
    fn schema(&self) -> u8;

    /// About how many bytes the encoded message takes (no less, if possible): the buffer
    /// [`Message::encode`] starts with.
    fn encoded_len_hint(&self) -> usize {
        128
    }

    /// Encodes the message as a MessagePack map with named fields.
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        // Sized up front, so that the buffer is not grown several times on the way: growing
        // it was a tenth of the worker's CPU in a profile.
        let mut buf = Vec::with_capacity(self.encoded_len_hint());
        rmp_serde::encode::write_named(&mut buf, self).map_err(|source| CodecError::Encode {
            message: Self::NAME,
            source,
        })?;
        Ok(buf)
    }

    /// Decodes a message, ignoring unknown fields and rejecting a missing or zero schema.
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        // A cursor rather than `from_read_ref`, because the cursor tells how much was read.
        // Its reader copies strings through `Read::take`, so a forged length prefix cannot
        // make it allocate more than the input holds.
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
        de.set_max_depth(MAX_DEPTH);
        let value = Self::deserialize(&mut de).map_err(|source| CodecError::Decode {
            message: Self::NAME,
            source,
        })?;
        let read = usize::try_from(de.position()).unwrap_or(usize::MAX);
        let trailing = bytes.len().saturating_sub(read);
        if trailing != 0 {
            return Err(CodecError::TrailingBytes {
                message: Self::NAME,
                trailing,
            });
        }
        if value.schema() == 0 {
            return Err(CodecError::InvalidSchema {
                message: Self::NAME,
                found: 0,
            });
        }
        Ok(value)
    }
}

/// Implements [`Message`] and the inherent `encode`/`decode` pair for a message type.
macro_rules! message {
    ($ty:ident) => {
        message!($ty, |_m| 128);
    };
    ($ty:ident, |$m:ident| $hint:expr) => {
        impl Message for $ty {
            const NAME: &'static str = stringify!($ty);

            fn schema(&self) -> u8 {
                self.schema
            }

            fn encoded_len_hint(&self) -> usize {
                let $m = self;
                $hint
            }
        }

        impl $ty {
            /// Encodes the message as a MessagePack map with named fields.
            pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
                <Self as Message>::encode(self)
            }

            /// Decodes a message; see the crate's versioning rule for what is accepted.
            pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
                <Self as Message>::decode(bytes)
            }
        }
    };
}

/// One measurement taken by a sensor, published on [`SENSOR_DATA_TOPIC`].
///
/// `(sensor_id, epoch, seq)` identifies a reading everywhere in the suite: it is how
/// duplicates are recognised and gaps detected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorReading {
    /// Layout version of this message ([`SCHEMA_VERSION`] when written by this crate).
    pub schema: u8,
    /// Stable name of the sensor that took the reading.
    pub sensor_id: String,
    /// Changes every time the sensor starts, so that `seq` may restart from 1.
    pub epoch: u64,
    /// Position of the reading in its epoch: increases by exactly one per reading.
    pub seq: u64,
    /// When the reading was taken, in nanoseconds since the Unix epoch (drives staleness).
    pub taken_at: u64,
    /// The measured values.
    #[serde(deserialize_with = "bounded_vec")]
    pub values: Vec<u32>,
}

/// A worker's answer to one [`SensorReading`], published on [`RESULTS_TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkResult {
    /// Layout version of this message.
    pub schema: u8,
    /// `sensor_id` of the reading this result is for.
    pub sensor_id: String,
    /// `epoch` of the reading this result is for.
    pub epoch: u64,
    /// `seq` of the reading this result is for.
    pub seq: u64,
    /// `taken_at` of the reading (Unix nanoseconds), kept to measure end-to-end latency.
    pub taken_at: u64,
    /// The reading's values, copied so that the result stands on its own.
    #[serde(deserialize_with = "bounded_vec")]
    pub values: Vec<u32>,
    /// The square of each value, in the same order.
    #[serde(deserialize_with = "bounded_vec")]
    pub squares: Vec<u64>,
    /// Which worker instance computed the result (for tracing a message through replicas).
    pub worker_id: String,
    /// When the result was computed, in nanoseconds since the Unix epoch.
    pub computed_at: u64,
    /// True when the reading was processed although older than the configured maximum age.
    /// Optional on the wire: absent means `false`.
    #[serde(default)]
    pub stale: bool,
}

/// The logger's request to re-publish the readings `from_seq..=to_seq` of one sensor epoch,
/// published on [`REPLAY_TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// Layout version of this message.
    pub schema: u8,
    /// The sensor that should replay; other sensors ignore the request.
    pub sensor_id: String,
    /// The epoch the missing readings belong to; a sensor in another epoch cannot answer.
    pub epoch: u64,
    /// First missing seq.
    pub from_seq: u64,
    /// Last missing seq (inclusive).
    pub to_seq: u64,
    /// Which logger instance asked (for logs and metrics).
    pub requested_by: String,
    /// When the request was made, in nanoseconds since the Unix epoch.
    pub requested_at: u64,
}

/// A sensor's answer for a replay range it no longer holds, published on
/// [`REPLAY_UNAVAILABLE_TOPIC`]. The readings `from_seq..=to_seq` are lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayUnavailable {
    /// Layout version of this message.
    pub schema: u8,
    /// The sensor that answers.
    pub sensor_id: String,
    /// The epoch of the lost readings.
    pub epoch: u64,
    /// First seq that cannot be replayed.
    pub from_seq: u64,
    /// Last seq that cannot be replayed (inclusive).
    pub to_seq: u64,
    /// When the sensor answered, in nanoseconds since the Unix epoch.
    pub at: u64,
}

/// A sensor's announcement of the latest seq it published, on [`STATUS_TOPIC`].
///
/// Sent periodically and once more at shutdown (`final_ = true`), so that readings missing
/// at the tail of an epoch are detectable: without it, the logger could not tell a lost last
/// reading from one not yet taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorStatus {
    /// Layout version of this message.
    pub schema: u8,
    /// The announcing sensor.
    pub sensor_id: String,
    /// The sensor's current epoch.
    pub epoch: u64,
    /// Highest seq published so far in this epoch (0 when none yet).
    pub last_seq: u64,
    /// When the announcement was made, in nanoseconds since the Unix epoch.
    pub at: u64,
    /// True for the last announcement of the epoch, sent when the sensor shuts down.
    #[serde(rename = "final")]
    pub final_: bool,
    /// Oldest seq the sensor still holds for replay: `oldest_seq..=last_seq` can be asked
    /// for, anything older cannot. Optional on the wire: absent (or 0) means not announced,
    /// as written by sensors older than this field.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub oldest_seq: u64,
}

/// A logger's announcement that a sensor epoch is complete, on [`COMPLETE_TOPIC`]: the sensor
/// announced its final seq, and every seq `from_seq..=to_seq` is in the logger's output or
/// recorded as lost, so the logger will ask for none of them again.
///
/// A sensor that stays after its last reading only to answer replay requests may exit on it.
/// It is a hint, not a command: a forged one can at worst make a sensor exit early.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochComplete {
    /// Layout version of this message.
    pub schema: u8,
    /// The sensor whose epoch is complete.
    pub sensor_id: String,
    /// The complete epoch.
    pub epoch: u64,
    /// First seq the logger answers for (1: the whole epoch).
    pub from_seq: u64,
    /// The epoch's final seq, as the sensor announced it.
    pub to_seq: u64,
    /// Which logger instance announces it.
    pub logger_id: String,
    /// When the announcement was made, in nanoseconds since the Unix epoch.
    pub at: u64,
}

/// Whether an optional number is absent (serde's `skip_serializing_if`).
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A message that a consumer gave up on, published on `<topic>` + [`DEAD_LETTER_SUFFIX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Layout version of this message.
    pub schema: u8,
    /// The message body exactly as it was received (MessagePack `bin`).
    #[serde(with = "serde_bytes")]
    pub original: Vec<u8>,
    /// Topic the message was consumed from.
    pub topic: String,
    /// Channel the message was consumed from.
    pub channel: String,
    /// How many delivery attempts were made before giving up.
    pub attempts: u16,
    /// Why the consumer gave up (the last error, in words).
    pub error: String,
    /// When the message was dead-lettered, in nanoseconds since the Unix epoch.
    pub at: u64,
}

// Field names and fixed fields take under 100 bytes; a u32 value takes at most 5 bytes, a
// u64 square at most 9.
message!(SensorReading, |m| 100
    + m.sensor_id.len()
    + 5 * m.values.len());
message!(WorkResult, |m| 160
    + m.sensor_id.len()
    + m.worker_id.len()
    + 14 * m.values.len().max(m.squares.len()));
message!(EpochComplete);
message!(ReplayRequest);
message!(ReplayUnavailable);
message!(SensorStatus);
message!(DeadLetter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_the_type_and_the_missing_field() {
        // A map with only `schema`.
        let bytes = rmp_serde::to_vec_named(&SchemaOnly { schema: 1 }).unwrap();
        let err = SensorReading::decode(&bytes).unwrap_err().to_string();
        assert!(err.starts_with("not a SensorReading: "), "{err}");
        assert!(err.contains("missing field `sensor_id`"), "{err}");
    }

    #[derive(Serialize)]
    struct SchemaOnly {
        schema: u8,
    }
}
