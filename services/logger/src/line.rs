//! The output format: one JSON object per line, one line per result.
//!
//! ```json
//! {"sensor_id":"s1","epoch":1732712345678,"seq":42,"values":[3,4],"squares":[9,16],
//!  "worker_id":"host-123","taken_at":1732712345679000000,"computed_at":1732712345680000000,
//!  "written_at":1732712345681000000,"stale":false}
//! ```
//!
//! Times are Unix nanoseconds. `(sensor_id, epoch, seq)` is the line's [`Key`]; the logger
//! writes a key at most once.

use messages::WorkResult;
use serde::{Deserialize, Serialize};

/// Identity of a reading, and so of its result and its line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// The sensor that took the reading.
    pub sensor_id: String,
    /// The sensor's epoch.
    pub epoch: u64,
    /// The reading's seq in its epoch.
    pub seq: u64,
}

/// One line of the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The sensor that took the reading.
    pub sensor_id: String,
    /// The sensor's epoch.
    pub epoch: u64,
    /// The reading's seq in its epoch.
    pub seq: u64,
    /// The reading's values.
    pub values: Vec<u32>,
    /// Their squares, as computed by the worker.
    pub squares: Vec<u64>,
    /// The worker that computed the result.
    pub worker_id: String,
    /// When the reading was taken (Unix nanoseconds).
    pub taken_at: u64,
    /// When the result was computed (Unix nanoseconds).
    pub computed_at: u64,
    /// When the line was written (Unix nanoseconds).
    pub written_at: u64,
    /// Whether the worker processed the reading although it was older than its `--max-age`.
    pub stale: bool,
}

impl LogLine {
    /// The line for `result`, written at `written_at`.
    pub fn new(result: WorkResult, written_at: u64) -> Self {
        Self {
            sensor_id: result.sensor_id,
            epoch: result.epoch,
            seq: result.seq,
            values: result.values,
            squares: result.squares,
            worker_id: result.worker_id,
            taken_at: result.taken_at,
            computed_at: result.computed_at,
            written_at,
            stale: result.stale,
        }
    }

    /// The line's identity.
    pub fn key(&self) -> Key {
        Key {
            sensor_id: self.sensor_id.clone(),
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// Appends the line, with its newline, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        out.push(b'\n');
        Ok(())
    }
}

/// Longest `sensor_id` or `worker_id` accepted, in bytes. Ids are kept in memory per
/// sensor epoch and per worker, so a forged message with a megabyte-long id must not be.
pub use messages::MAX_ID_BYTES;

/// Checks an id read from a message: not empty, at most [`MAX_ID_BYTES`]; the error says
/// which field and why.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "{field} is {} bytes long, more than the {MAX_ID_BYTES} accepted",
            id.len()
        ));
    }
    Ok(())
}

/// Checks what the logger keeps of a result: its ids (see [`check_id`]).
pub fn check_result(result: &WorkResult) -> Result<(), String> {
    check_id("sensor_id", &result.sensor_id)?;
    check_id("worker_id", &result.worker_id)
}

/// The key of an output line (without its newline); other fields are not checked.
pub fn parse_key(line: &[u8]) -> serde_json::Result<Key> {
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded() {
        assert!(check_id("sensor_id", "s1").is_ok());
        assert!(check_id("sensor_id", &"x".repeat(MAX_ID_BYTES)).is_ok());
        let long = check_id("sensor_id", &"x".repeat(MAX_ID_BYTES + 1)).unwrap_err();
        assert!(long.contains("sensor_id is 257 bytes long"), "{long}");
        assert_eq!(check_id("worker_id", "").unwrap_err(), "worker_id is empty");
        let forged = WorkResult {
            worker_id: "w".repeat(10_000),
            ..result()
        };
        assert!(check_result(&forged).unwrap_err().starts_with("worker_id"));
        assert!(check_result(&result()).is_ok());
    }

    fn result() -> WorkResult {
        WorkResult {
            schema: 1,
            sensor_id: "s1".to_owned(),
            epoch: 7,
            seq: 42,
            taken_at: 1,
            values: vec![3, 4],
            squares: vec![9, 16],
            worker_id: "w1".to_owned(),
            computed_at: 2,
            stale: true,
        }
    }

    #[test]
    fn line_format() {
        let line = LogLine::new(result(), 3);
        let mut out = Vec::new();
        line.write_to(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\"sensor_id\":\"s1\",\"epoch\":7,\"seq\":42,\"values\":[3,4],\"squares\":[9,16],\
             \"worker_id\":\"w1\",\"taken_at\":1,\"computed_at\":2,\"written_at\":3,\"stale\":true}\n"
        );
        let key = parse_key(&out[..out.len() - 1]).unwrap();
        assert_eq!(key, line.key());
        assert_eq!(
            key,
            Key {
                sensor_id: "s1".to_owned(),
                epoch: 7,
                seq: 42
            }
        );
    }

    #[test]
    fn bad_lines_do_not_parse() {
        assert!(parse_key(b"{\"sensor_id\":\"s1\",\"ep").is_err());
        assert!(parse_key(b"{\"sensor_id\":\"s1\",\"epoch\":1}").is_err());
        assert!(parse_key(b"hello").is_err());
    }
}
