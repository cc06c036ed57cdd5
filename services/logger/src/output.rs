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
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use crate::{
    jsonl::{self, Extent},
    line::parse_key,
    seen::Seen,
};

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
            let extent = read_back(&file, path, &mut recovered)?;
            if extent.torn() > 0 {
                recovered.truncated_bytes = extent.torn();
                jsonl::cut(&file, extent).map_err(io_error)?;
            }
            len = extent.complete;
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

/// Reads every complete line of `file` into `recovered`; returns where the complete lines
/// and the file end.
fn read_back(file: &File, path: &Path, recovered: &mut Recovered) -> Result<Extent, OpenError> {
    jsonl::read_lines(
        file,
        |line_no, content| {
            let key = parse_key(content).map_err(|e| OpenError::NotAResultLine {
                path: path.to_owned(),
                line: line_no,
                error: e.to_string(),
            })?;
            recovered.lines += 1;
            if !recovered.seen.insert(&key) {
                recovered.duplicate_lines += 1;
            }
            Ok(())
        },
        |source| OpenError::Io {
            path: path.to_owned(),
            source,
        },
    )
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

    /// Property tests of the start-up recovery: whatever a crash (or anything else) left in
    /// the file, `Output::open` never panics, keeps exactly the complete lines and cuts the
    /// rest, or refuses the file without touching it. `PROPTEST_CASES` scales them (README,
    /// "Test it"); each case writes, reads back and syncs a real file, hence a quarter of
    /// the default count.
    mod props {
        use super::*;
        use crate::line::LogLine;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            let base = ProptestConfig::default();
            ProptestConfig {
                cases: (base.cases / 4).max(1),
                ..base
            }
        }

        prop_compose! {
            fn log_line()(
                sensor_id in prop_oneof![any::<String>(), "[a-z0-9-]{1,8}"],
                epoch in any::<u64>(), seq in any::<u64>(),
                values in proptest::collection::vec(any::<u32>(), 0..4),
                squares in proptest::collection::vec(any::<u64>(), 0..4),
                worker_id in "[a-z0-9-]{0,8}", taken_at in any::<u64>(),
                computed_at in any::<u64>(), written_at in any::<u64>(), stale in any::<bool>(),
            ) -> LogLine {
                LogLine {
                    sensor_id, epoch, seq, values, squares, worker_id, taken_at, computed_at,
                    written_at, stale,
                }
            }
        }

        fn text_of(lines: &[LogLine]) -> Vec<u8> {
            let mut out = Vec::new();
            for l in lines {
                l.write_to(&mut out).expect("a LogLine serializes");
            }
            out
        }

        /// Opens `path`, or the error as text (the error type is not `PartialEq`).
        fn open(path: &Path) -> Result<Recovered, String> {
            Output::open(path, false)
                .map(|(_, r)| r)
                .map_err(|e| e.to_string())
        }

        proptest! {
            #![proptest_config(config())]

            /// Valid lines then a torn last line (any bytes without a newline, a cut line
            /// among them): the valid lines are all kept and counted, the tail is cut to
            /// the byte, and opening again changes nothing (recovery is idempotent).
            #[test]
            fn a_torn_tail_is_cut_and_recovery_is_idempotent(
                lines in proptest::collection::vec(log_line(), 0..6),
                tail in prop_oneof![
                    proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..200),
                    (log_line(), any::<prop::sample::Index>()).prop_map(|(l, cut)| {
                        let mut t = Vec::new();
                        l.write_to(&mut t).expect("a LogLine serializes");
                        t.truncate(cut.index(t.len()));
                        t
                    }),
                ],
            ) {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("out.jsonl");
                let valid = text_of(&lines);
                let mut content = valid.clone();
                content.extend_from_slice(&tail);
                std::fs::write(&path, &content)?;

                let first = open(&path).map_err(TestCaseError::fail)?;
                prop_assert_eq!(first.lines, lines.len() as u64);
                prop_assert_eq!(first.truncated_bytes, tail.len() as u64);
                for l in &lines {
                    prop_assert!(first.seen.contains(&l.key()));
                }
                let distinct: std::collections::HashSet<_> = lines.iter().map(LogLine::key).collect();
                prop_assert_eq!(first.seen.len(), distinct.len() as u64);
                prop_assert_eq!(first.duplicate_lines, (lines.len() - distinct.len()) as u64);
                prop_assert_eq!(std::fs::read(&path)?, valid.clone());

                let second = open(&path).map_err(TestCaseError::fail)?;
                prop_assert_eq!(second.lines, first.lines);
                prop_assert_eq!(second.duplicate_lines, first.duplicate_lines);
                prop_assert_eq!(second.truncated_bytes, 0);
                prop_assert_eq!(second.seen.len(), first.seen.len());
                prop_assert_eq!(std::fs::read(&path)?, valid);
            }

            /// Any bytes at all: no panic. Either the file is accepted and cut just after its
            /// last newline, or it is refused with the number of a line that is not a
            /// result line, and left as it was.
            #[test]
            fn any_content_is_accepted_and_cut_or_refused_untouched(
                content in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..400),
                    // Valid lines with a few bytes overwritten (newlines too).
                    (
                        proptest::collection::vec(log_line(), 1..4),
                        proptest::collection::vec((any::<prop::sample::Index>(), prop_oneof![Just(b'\n'), any::<u8>()]), 1..4),
                    ).prop_map(|(lines, mutations)| {
                        let mut t = text_of(&lines);
                        for (i, b) in mutations {
                            let i = i.index(t.len());
                            t[i] = b;
                        }
                        t
                    }),
                ],
            ) {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("out.jsonl");
                std::fs::write(&path, &content)?;
                let complete = content.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                match open(&path) {
                    Ok(recovered) => {
                        prop_assert_eq!(recovered.truncated_bytes, (content.len() - complete) as u64);
                        prop_assert_eq!(std::fs::read(&path)?, content[..complete].to_vec());
                        let again = open(&path).map_err(TestCaseError::fail)?;
                        prop_assert_eq!(again.lines, recovered.lines);
                        prop_assert_eq!(again.truncated_bytes, 0);
                    }
                    Err(e) => {
                        prop_assert!(e.contains("is not a result line"), "{e}");
                        prop_assert_eq!(std::fs::read(&path)?, content);
                    }
                }
            }
        }
    }
}
