//! The output: where lines are appended, and how the de-duplication state is rebuilt from it.
//!
//! The output file is the logger's only state. At start-up [`Output::open`] reads it and
//! rebuilds the set of keys already written ([`Seen`]); a last line without its newline
//! (the logger was killed in the middle of a write) is cut off with a warning, since its
//! message was never finished and will be delivered again. Because the state is derived from
//! the file, the two cannot disagree after a crash.
//!
//! [`Output::write_batch`] appends a whole batch with one `write_all`, flushes it (and
//! `fsync`s it with `--fsync`), and only then reports success, after which the caller
//! finishes the batch's messages. When a write fails, the file is cut back to its length
//! before the batch, so that a partly written batch cannot leave lines that would be written
//! again on redelivery ([`WriteError::Failed`]); if even that fails, the output can no longer
//! be trusted ([`WriteError::Corrupt`]) and the logger stops (a restart rebuilds a consistent
//! state from the file).
//!
//! Standard output, and files that are not regular files (pipes, devices), are written the
//! same way but cannot be read back or cut: de-duplication then only covers the current run.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
};

use crate::{line::parse_key, seen::Seen};

/// What [`Output::open`] found in an existing output file.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Keys of the lines already written.
    pub seen: Seen,
    /// Complete lines read.
    pub lines: u64,
    /// Lines whose key was already in an earlier line (not expected; reported).
    pub duplicate_lines: u64,
    /// Bytes of an incomplete last line that were cut off (0 when none).
    pub truncated_bytes: u64,
}

/// Why the output could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file could not be opened, read or cut.
    #[error("cannot use the output file {}: {source}", path.display())]
    Io {
        /// The output path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A complete line of the file is not a result line: the file is not this logger's
    /// output, or was damaged in a way a crash cannot explain.
    #[error(
        "output file {} line {line} is not a result line ({error}); move the file away or \
         repair it",
        path.display()
    )]
    NotAResultLine {
        /// The output path.
        path: PathBuf,
        /// The line number (1-based).
        line: u64,
        /// What the JSON parser said.
        error: String,
    },
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Nothing of the batch is in the output; the batch may be tried again.
    #[error("cannot write to {target}: {source}")]
    Failed {
        /// The output, as displayed.
        target: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Part of the batch may be in the output and could not be removed.
    #[error("cannot write to {target} ({write}) nor cut it back to its last complete batch ({truncate})")]
    Corrupt {
        /// The output, as displayed.
        target: String,
        /// The write error.
        write: io::Error,
        /// The error cutting the file back.
        truncate: io::Error,
    },
}

/// Where the lines go.
#[derive(Debug)]
enum Target {
    /// Standard output.
    Stdout,
    /// A file opened for appending.
    File {
        /// Its path, for messages.
        path: PathBuf,
        /// The open file (append mode).
        file: File,
        /// Whether it is a regular file (can be read back and cut).
        regular: bool,
        /// Its length after the last complete batch (regular files only).
        len: u64,
    },
}

/// The output of the logger.
#[derive(Debug)]
pub struct Output {
    /// Where the lines go.
    target: Target,
    /// Whether each batch is fsynced.
    fsync: bool,
}

impl Output {
    /// Standard output.
    pub fn stdout() -> Self {
        Self {
            target: Target::Stdout,
            fsync: false,
        }
    }

    /// Opens (or creates) the output file for appending and reads back what it holds.
    pub fn open(path: &Path, fsync: bool) -> Result<(Self, Recovered), OpenError> {
        let io_error = |source| OpenError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_error)?;
        let regular = file.metadata().map_err(io_error)?.file_type().is_file();
        let mut recovered = Recovered::default();
        let mut len = 0;
        if regular {
            let (complete, total) = read_back(&file, path, &mut recovered)?;
            if complete < total {
                recovered.truncated_bytes = total - complete;
                file.set_len(complete).map_err(io_error)?;
                file.sync_all().map_err(io_error)?;
            }
            len = complete;
        }
        let output = Self {
            target: Target::File {
                path: path.to_owned(),
                file,
                regular,
                len,
            },
            fsync,
        };
        Ok((output, recovered))
    }

    /// The output, for messages: its path, or `stdout`.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Stdout => "stdout".to_owned(),
            Target::File { path, .. } => path.display().to_string(),
        }
    }

    /// Whether the output can be read back (a regular file): de-duplication then survives
    /// restarts.
    pub fn is_durable(&self) -> bool {
        matches!(self.target, Target::File { regular: true, .. })
    }

    /// Appends `bytes` (whole lines), flushes them and, with `--fsync`, syncs them to disk.
    pub fn write_batch(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        let target = self.describe();
        let fsync = self.fsync;
        match &mut self.target {
            Target::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|()| out.flush())
                    .map_err(|source| WriteError::Failed { target, source })
            }
            Target::File {
                file, regular, len, ..
            } => {
                let written = file
                    .write_all(bytes)
                    .and_then(|()| file.flush())
                    .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
                match written {
                    Ok(()) => {
                        *len += bytes.len() as u64;
                        Ok(())
                    }
                    Err(write) if *regular => match file.set_len(*len) {
                        Ok(()) => Err(WriteError::Failed {
                            target,
                            source: write,
                        }),
                        Err(truncate) => Err(WriteError::Corrupt {
                            target,
                            write,
                            truncate,
                        }),
                    },
                    Err(source) => Err(WriteError::Failed { target, source }),
                }
            }
        }
    }
}

/// Reads every complete line of `file` into `recovered`; returns the length of the complete
/// lines and the file's total length.
fn read_back(file: &File, path: &Path, recovered: &mut Recovered) -> Result<(u64, u64), OpenError> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(512);
    let mut complete = 0u64;
    let mut total = 0u64;
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| OpenError::Io {
                path: path.to_owned(),
                source,
            })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if buf.last() != Some(&b'\n') {
            // The last line, cut short by a crash: its message was not finished.
            break;
        }
        line_no += 1;
        complete = total;
        let content = buf[..n - 1].trim_ascii();
        if content.is_empty() {
            continue;
        }
        let key = parse_key(content).map_err(|e| OpenError::NotAResultLine {
            path: path.to_owned(),
            line: line_no,
            error: e.to_string(),
        })?;
        recovered.lines += 1;
        if !recovered.seen.insert(&key) {
            recovered.duplicate_lines += 1;
        }
    }
    Ok((complete, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Key;

    fn line(seq: u64) -> String {
        format!(
            "{{\"sensor_id\":\"s\",\"epoch\":1,\"seq\":{seq},\"values\":[1],\"squares\":[1],\
             \"worker_id\":\"w\",\"taken_at\":1,\"computed_at\":2,\"written_at\":3,\"stale\":false}}\n"
        )
    }

    fn key(seq: u64) -> Key {
        Key {
            sensor_id: "s".to_owned(),
            epoch: 1,
            seq,
        }
    }

    #[test]
    fn new_file_is_created_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let (output, recovered) = Output::open(&path, false).unwrap();
        assert!(path.exists());
        assert!(recovered.seen.is_empty());
        assert!(output.is_durable());
    }

    #[test]
    fn rebuilds_from_the_file_and_cuts_a_truncated_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let partial = &line(3)[..20];
        std::fs::write(
            &path,
            format!("{}{}\n{}{partial}", line(1), line(2), line(2)),
        )
        .unwrap();
        let (mut output, recovered) = Output::open(&path, false).unwrap();
        assert_eq!(recovered.lines, 3);
        assert_eq!(recovered.duplicate_lines, 1);
        assert_eq!(recovered.truncated_bytes, 20);
        assert!(recovered.seen.contains(&key(1)) && recovered.seen.contains(&key(2)));
        assert!(!recovered.seen.contains(&key(3)));
        // The cut line is gone; new lines are appended after the last complete one.
        output.write_batch(line(3).as_bytes()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("{}{}\n{}{}", line(1), line(2), line(2), line(3))
        );
    }

    #[test]
    fn a_foreign_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, format!("{}hello\n{}", line(1), line(2))).unwrap();
        let err = Output::open(&path, false).unwrap_err().to_string();
        assert!(err.contains("line 2 is not a result line"), "{err}");
    }

    #[test]
    fn fsync_writes_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let (mut output, _) = Output::open(&path, true).unwrap();
        output.write_batch(line(1).as_bytes()).unwrap();
        output.write_batch(line(2).as_bytes()).unwrap();
        let (_, recovered) = Output::open(&path, true).unwrap();
        assert_eq!(recovered.lines, 2);
    }

    #[test]
    fn a_failing_device_is_a_recoverable_error() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let (mut output, recovered) = Output::open(Path::new("/dev/full"), false).unwrap();
        assert!(!output.is_durable());
        assert!(recovered.seen.is_empty());
        let err = output.write_batch(line(1).as_bytes()).unwrap_err();
        assert!(matches!(err, WriteError::Failed { .. }), "{err}");
    }
}
