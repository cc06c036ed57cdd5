//! The state file: what the output holds, compactly, so that a restart need not read it all.
//!
//! `results.state` (beside `--output`, see [`crate::rotation`]) holds the de-duplication
//! state ([`Seen`]: per sensor epoch the ranges of seqs written, and the epochs dropped as
//! complete), the name of the newest closed file it covers and how many bytes of the
//! current file it covers. A restart reads the state and the current file from that byte
//! on: its time depends on the limits of the state (`--max-seq-ranges`,
//! `--max-sensor-epochs`) and on `--rotate-size`, not on the length of the history.
//!
//! # Written when
//!
//! * At each rotation, before the current file is renamed: the state then covers every
//!   closed file including the one about to be made, and 0 bytes of the (new) current
//!   file. A crash between the state and the rename leaves a state that already covers the
//!   current file: reading it again adds nothing (the union is the same set).
//! * At a clean shutdown, covering the whole current file.
//!
//! Each time it is written to `results.state.tmp`, fsynced, renamed over `results.state`,
//! and the directory is synced: a crash leaves the old state or the new one, never a mix.
//! The state only names keys that are in a file (the current file is synced first), so the
//! state plus what follows it in the current file is exactly what the output holds.
//!
//! # Format
//!
//! A header line, then a JSON body:
//!
//! ```text
//! nsq-suite-logger-state 1 <crc32 of the body, 8 hex digits> <body length>
//! {"closed_through":"20261201T140638.123456789Z","current_len":0,
//!  "epochs":[{"sensor_id":"s1","epoch":1764597998000,"written_secs":1764597999,"ranges":[[1,5000]]}],
//!  "retired":[["s1",1764500000000]]}
//! ```
//!
//! The file is untrusted input like any other: [`decode`] refuses (with a reason) a file
//! longer than the limits allow, a wrong header or checksum, ranges out of order, overlapping
//! or touching, ids that are empty or too long, or an epoch listed twice, and never panics.
//! A start whose state is missing, refused or older than the newest closed file rebuilds the
//! state from all the files instead, with a WARN ([`crate::output::Output::open`]).

use std::{
    fs::{self, File},
    io::{self, Read as _, Write as _},
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::{
    line::{check_id, MAX_ID_BYTES},
    rotation::{parse_stamp, sync_dir},
    seen::{EpochRecord, SeenLimits, Snapshot},
};

/// First word of the header.
const MAGIC: &str = "nsq-suite-logger-state";

/// Version of the format.
const VERSION: u32 = 1;

/// What a state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Stamp of the newest closed file covered (`None`: no closed file yet).
    pub closed_through: Option<String>,
    /// Bytes of the current file covered (its complete lines up to there).
    pub current_len: u64,
    /// The de-duplication state.
    pub seen: Snapshot,
}

/// Why a state file was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The state file.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// It is not a valid state file.
    #[error("{path} is not a valid state file: {reason}")]
    Invalid {
        /// The state file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The body of the file, as serialized.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    closed_through: Option<String>,
    current_len: u64,
    epochs: Vec<EpochBody>,
    retired: Vec<(String, u64)>,
}

/// One epoch in the body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochBody {
    sensor_id: String,
    epoch: u64,
    written_secs: u64,
    ranges: Vec<(u64, u64)>,
}

/// The longest state file accepted within `limits`: generous for what [`Seen`] can hold
/// (ids escaped at up to 6 bytes a byte, numbers at 20 digits), and what bounds the memory
/// a refused or forged file can cost.
///
/// [`Seen`]: crate::seen::Seen
pub fn max_len(limits: SeenLimits) -> u64 {
    let per_epoch = (MAX_ID_BYTES as u64) * 6 + 128;
    let per_range = 48u64;
    (1u64 << 20)
        .saturating_add((limits.max_epochs as u64).saturating_mul(2 * per_epoch))
        .saturating_add((limits.max_ranges as u64).saturating_mul(per_range))
}

/// The bytes of a state file.
pub fn encode(state: &State) -> serde_json::Result<Vec<u8>> {
    let body = Body {
        closed_through: state.closed_through.clone(),
        current_len: state.current_len,
        epochs: state
            .seen
            .epochs
            .iter()
            .map(|e| EpochBody {
                sensor_id: e.sensor_id.clone(),
                epoch: e.epoch,
                written_secs: e.written_secs,
                ranges: e.ranges.clone(),
            })
            .collect(),
        retired: state.seen.retired.clone(),
    };
    let json = serde_json::to_vec(&body)?;
    let crc = crc32fast::hash(&json);
    let mut out = format!("{MAGIC} {VERSION} {crc:08x} {}\n", json.len()).into_bytes();
    out.extend_from_slice(&json);
    Ok(out)
}

/// Reads a state file's bytes back; the error says what is wrong.
pub fn decode(bytes: &[u8]) -> Result<State, String> {
    let newline = bytes
        .iter()
        .take(128)
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "the header is not text")?;
    let body = &bytes[newline + 1..];
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, version, crc, len] = fields[..] else {
        return Err(format!("the header '{header}' does not have 4 fields"));
    };
    if magic != MAGIC {
        return Err(format!("it does not start with '{MAGIC}'"));
    }
    if version != VERSION.to_string() {
        return Err(format!("version {version} (this logger reads {VERSION})"));
    }
    let len: usize = len.parse().map_err(|_| format!("bad length '{len}'"))?;
    if len != body.len() {
        return Err(format!(
            "the body is {} bytes, the header says {len} (cut short?)",
            body.len()
        ));
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum '{crc}'"))?;
    if crc32fast::hash(body) != crc {
        return Err("the checksum does not match the body (damaged)".to_owned());
    }
    let body: Body = serde_json::from_slice(body).map_err(|e| format!("bad body: {e}"))?;
    if let Some(stamp) = &body.closed_through {
        if parse_stamp(stamp).is_none() {
            return Err(format!(
                "closed_through '{stamp}' is not a closing timestamp"
            ));
        }
    }
    let mut epochs = Vec::with_capacity(body.epochs.len());
    let mut previous: Option<(String, u64)> = None;
    for e in body.epochs {
        check_id("sensor_id", &e.sensor_id)?;
        let key = (e.sensor_id, e.epoch);
        if previous.as_ref().is_some_and(|p| *p >= key) {
            return Err(format!(
                "epoch {} of sensor '{}' is out of order or listed twice",
                key.1, key.0
            ));
        }
        let mut next_from = 0u64;
        for (i, (from, to)) in e.ranges.iter().enumerate() {
            if from > to || (i > 0 && *from < next_from) {
                return Err(format!(
                    "sensor '{}' epoch {}: range {from}..={to} is empty, out of order, \
                     overlapping or touching the one before",
                    key.0, key.1
                ));
            }
            // Ranges touch when the next starts right after; u64::MAX cannot be followed.
            next_from = to.checked_add(2).unwrap_or(u64::MAX);
            if *to == u64::MAX && i + 1 < e.ranges.len() {
                return Err(format!(
                    "sensor '{}' epoch {}: a range follows one ending at the largest seq",
                    key.0, key.1
                ));
            }
        }
        if e.ranges.is_empty() {
            return Err(format!("sensor '{}' epoch {} has no range", key.0, key.1));
        }
        previous = Some(key.clone());
        epochs.push(EpochRecord {
            sensor_id: key.0,
            epoch: key.1,
            written_secs: e.written_secs,
            ranges: e.ranges,
        });
    }
    let mut retired_previous: Option<&str> = None;
    for (sensor_id, _) in &body.retired {
        check_id("sensor_id", sensor_id)?;
        if retired_previous.is_some_and(|p| p >= sensor_id.as_str()) {
            return Err(format!(
                "retired sensor '{sensor_id}' is out of order or listed twice"
            ));
        }
        retired_previous = Some(sensor_id);
    }
    Ok(State {
        closed_through: body.closed_through,
        current_len: body.current_len,
        seen: Snapshot {
            epochs,
            retired: body.retired,
        },
    })
}

/// Reads the state file at `path`: `Ok(None)` when there is none.
pub fn read(path: &Path, limits: SeenLimits) -> Result<Option<State>, StateError> {
    let shown = path.display().to_string();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: shown,
                source,
            })
        }
    };
    let max = max_len(limits);
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| StateError::Io {
            path: shown.clone(),
            source,
        })?;
    if bytes.len() as u64 > max {
        return Err(StateError::Invalid {
            path: shown,
            reason: format!(
                "longer than the {max} bytes the limits (--max-sensor-epochs, \
                 --max-seq-ranges) allow"
            ),
        });
    }
    decode(&bytes)
        .map(Some)
        .map_err(|reason| StateError::Invalid {
            path: shown,
            reason,
        })
}

/// Writes `state` to `path` crash-safely: a `.tmp` beside it, fsync, rename, sync the
/// directory.
pub fn write(path: &Path, state: &State) -> io::Result<()> {
    let bytes = encode(state).map_err(io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{line::Key, seen::Seen};
    use proptest::prelude::*;

    fn sample() -> State {
        let mut seen = Seen::default();
        for seq in (1..=100).chain(150..=160) {
            seen.insert_at(
                &Key {
                    sensor_id: "s1".to_owned(),
                    epoch: 7,
                    seq,
                },
                1000,
            );
        }
        seen.insert_at(
            &Key {
                sensor_id: "s\"2\u{e9}".to_owned(),
                epoch: 1,
                seq: u64::MAX,
            },
            2000,
        );
        State {
            closed_through: Some("20261201T140638.123456789Z".to_owned()),
            current_len: 12345,
            seen: seen.snapshot(),
        }
    }

    #[test]
    fn round_trip() {
        let state = sample();
        let bytes = encode(&state).unwrap();
        assert!(bytes.starts_with(b"nsq-suite-logger-state 1 "));
        assert_eq!(decode(&bytes).unwrap(), state);
        let seen = Seen::restore(decode(&bytes).unwrap().seen, SeenLimits::default());
        assert_eq!(seen.len(), 112);
        assert_eq!(seen.epoch("s1", 7).unwrap().range_count(), 2);
    }

    #[test]
    fn damage_is_refused_with_a_reason() {
        let bytes = encode(&sample()).unwrap();
        let newline = bytes.iter().position(|b| *b == b'\n').unwrap();
        let mut flipped = bytes.clone();
        let at = bytes.len() - 10;
        flipped[at] ^= 0x01;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "no header line"),
            (bytes[..bytes.len() - 1].to_vec(), "cut short"),
            (flipped, "checksum"),
            (b"hello 1 0 0\n".to_vec(), "does not start with"),
            (
                String::from_utf8_lossy(&bytes)
                    .replacen(" 1 ", " 2 ", 1)
                    .into_bytes(),
                "version 2",
            ),
            (bytes[newline + 1..].to_vec(), "header"),
        ];
        for (input, expected) in cases {
            let err = decode(&input).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    /// A body with a valid header and checksum (what a bug or a forger could write).
    fn framed(json: &str) -> Vec<u8> {
        let crc = crc32fast::hash(json.as_bytes());
        let mut out = format!("{MAGIC} 1 {crc:08x} {}\n", json.len()).into_bytes();
        out.extend_from_slice(json.as_bytes());
        out
    }

    #[test]
    fn inconsistent_bodies_are_refused() {
        let epoch = |ranges: &str| {
            format!(
                r#"{{"closed_through":null,"current_len":0,"epochs":[{{"sensor_id":"s","epoch":1,"written_secs":0,"ranges":{ranges}}}],"retired":[]}}"#
            )
        };
        assert!(decode(&framed(&epoch("[[1,5],[7,9]]"))).is_ok());
        for ranges in [
            "[[5,1]]",
            "[[1,5],[6,9]]",
            "[[1,5],[3,9]]",
            "[[7,9],[1,5]]",
            "[]",
        ] {
            let err = decode(&framed(&epoch(ranges))).unwrap_err();
            assert!(err.contains("sensor 's' epoch 1"), "{ranges}: {err}");
        }
        let twice = r#"{"closed_through":null,"current_len":0,"epochs":[{"sensor_id":"s","epoch":1,"written_secs":0,"ranges":[[1,1]]},{"sensor_id":"s","epoch":1,"written_secs":0,"ranges":[[3,3]]}],"retired":[]}"#;
        assert!(decode(&framed(twice)).unwrap_err().contains("listed twice"));
        let bad_stamp =
            r#"{"closed_through":"yesterday","current_len":0,"epochs":[],"retired":[]}"#;
        assert!(decode(&framed(bad_stamp))
            .unwrap_err()
            .contains("closed_through"));
        let long_id = format!(
            r#"{{"closed_through":null,"current_len":0,"epochs":[],"retired":[["{}",1]]}}"#,
            "x".repeat(MAX_ID_BYTES + 1)
        );
        assert!(decode(&framed(&long_id))
            .unwrap_err()
            .contains("bytes long"));
        let unknown = r#"{"closed_through":null,"current_len":0,"epochs":[],"retired":[],"x":1}"#;
        assert!(decode(&framed(unknown)).is_err());
    }

    #[test]
    fn write_then_read_and_a_file_past_the_limits_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.state");
        assert!(read(&path, SeenLimits::default()).unwrap().is_none());
        write(&path, &sample()).unwrap();
        assert_eq!(read(&path, SeenLimits::default()).unwrap(), Some(sample()));
        assert!(!dir.path().join("results.state.tmp").exists());
        let tiny = SeenLimits {
            max_epochs: 1,
            max_ranges: 1,
        };
        fs::write(&path, vec![b' '; max_len(tiny) as usize + 1]).unwrap();
        let err = read(&path, tiny).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
    }

    proptest! {
        /// Whatever the bytes, decoding returns (never panics); and any state survives a
        /// round trip.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
            let mut framed_bytes = framed(&String::from_utf8_lossy(&bytes));
            let _ = decode(&framed_bytes);
            framed_bytes.truncate(framed_bytes.len() / 2);
            let _ = decode(&framed_bytes);
        }

        #[test]
        fn any_seen_round_trips(
            keys in proptest::collection::vec(("[a-c]{1,3}", 0u64..4, 0u64..200, 0u64..5000), 0..200),
            retired in proptest::collection::btree_map("[d-f]{1,3}", any::<u64>(), 0..5),
            closed in proptest::option::of(0u64..4_000_000_000),
            current_len in any::<u64>(),
        ) {
            let mut seen = Seen::default();
            for (sensor_id, epoch, seq, at) in keys {
                seen.insert_at(&Key { sensor_id, epoch, seq }, at);
            }
            let mut snapshot = seen.snapshot();
            snapshot.retired = retired.into_iter().collect();
            let state = State {
                closed_through: closed.map(|s| crate::rotation::stamp(
                    std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))),
                current_len,
                seen: snapshot,
            };
            let back = decode(&encode(&state).unwrap()).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&back, &state);
            let restored = Seen::restore(back.seen, SeenLimits::default());
            prop_assert_eq!(restored.snapshot(), state.seen);
        }
    }
}
