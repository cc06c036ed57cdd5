//! The output: where lines are appended, how it rotates, and how the de-duplication state is
//! rebuilt from it.
//!
//! The output files are the logger's state. At start-up [`Output::open_with`] reads the
//! state file ([`crate::state`]) and the current file from the byte the state covers, and
//! so rebuilds the set of keys already written ([`Seen`]) in a time that does not grow with
//! the history. Without a usable state file (none, damaged, or older than the newest closed
//! file) it reads every closed file (plain or gzipped, oldest first) and the current file,
//! with a WARN. A last line without its newline (the logger was killed in the middle of a
//! write) is cut off with a warning, since its message was never finished and will be
//! delivered again. Because the state is derived from the files, or written only for lines
//! already in them, the two cannot disagree after a crash.
//!
//! [`Output::rotate`] closes the current file under a name that sorts by time, after
//! writing the state file that covers it ([`crate::rotation`] has the names and the order
//! of the steps).
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
    io::{self, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    jsonl::{self, Extent},
    line::parse_key,
    rotation::{self, Closed, Files, Gzipper, Rotation},
    seen::{Seen, SeenLimits, Snapshot},
    state::{self, State},
};

/// How long to wait before trying a failed rotation again.
const ROTATE_RETRY: Duration = Duration::from_secs(10);

/// How the output is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// fsync each batch (`--fsync`).
    pub fsync: bool,
    /// When to rotate, and whether to gzip.
    pub rotation: Rotation,
    /// The bounds of the de-duplication state (and so of the state file).
    pub limits: SeenLimits,
}

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
    /// Whether the state file was used (else every file was read).
    pub from_state: bool,
    /// Closed files read (0 when the state file was used).
    pub closed_read: usize,
    /// Bytes read from the output files (uncompressed).
    pub bytes_read: u64,
    /// Why the state file was not used, when that is worth a WARN.
    pub state_problem: Option<String>,
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
        "output file {} line {line}{} is not a result line ({error}); move the file away or \
         repair it",
        path.display(),
        counted_from(*from_byte)
    )]
    NotAResultLine {
        /// The output path.
        path: PathBuf,
        /// The line number (1-based, counted from `from_byte`).
        line: u64,
        /// Where the reading started (0: the start of the file).
        from_byte: u64,
        /// What the JSON parser said.
        error: String,
    },
}

/// Where line numbers were counted from, for [`OpenError::NotAResultLine`].
fn counted_from(byte: u64) -> String {
    if byte == 0 {
        String::new()
    } else {
        format!(" (counted from byte {byte}, where the state file ends)")
    }
}

/// Why the output could not be rotated.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// Nothing changed but perhaps the state file (which stays true); tried again later.
    #[error("cannot rotate {target}: {source}")]
    Failed {
        /// The output, as displayed.
        target: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The current file was closed but a new one cannot be opened: the logger must stop (a
    /// restart creates it).
    #[error("closed {target} but cannot open a new one: {source}")]
    NoCurrentFile {
        /// The output, as displayed.
        target: String,
        /// The I/O error.
        #[source]
        source: io::Error,
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
// One per logger: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
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
        /// The names of the closed files and of the state file.
        files: Files,
        /// When the current file was opened (for `--rotate-interval`).
        opened: Instant,
        /// Stamp of the newest closed file (or the newest the state file names).
        last_stamp: Option<String>,
        /// When a failed rotation may be tried again.
        retry_at: Option<Instant>,
        /// The gzip thread, with `--rotate-gzip`.
        gzipper: Option<Gzipper>,
    },
}

/// The output of the logger.
#[derive(Debug)]
pub struct Output {
    /// Where the lines go.
    target: Target,
    /// Whether each batch is fsynced.
    fsync: bool,
    /// When to rotate (regular files only).
    rotation: Rotation,
}

impl Output {
    /// Standard output.
    pub fn stdout() -> Self {
        Self {
            target: Target::Stdout,
            fsync: false,
            rotation: Rotation::OFF,
        }
    }

    /// Opens (or creates) the output file for appending and reads back what it holds,
    /// without rotation.
    pub fn open(path: &Path, fsync: bool) -> Result<(Self, Recovered), OpenError> {
        Self::open_with(
            path,
            &Options {
                fsync,
                ..Options::default()
            },
        )
    }

    /// Opens (or creates) the current output file for appending and rebuilds what the
    /// output holds: from the state file and the current file, else from every file (see
    /// the module's guide). Starts the gzip of closed files a crash left uncompressed.
    pub fn open_with(path: &Path, options: &Options) -> Result<(Self, Recovered), OpenError> {
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
        let files = Files::new(path);
        let mut recovered = Recovered {
            seen: Seen::with_limits(options.limits),
            ..Recovered::default()
        };
        let mut len = 0;
        let mut last_stamp = None;
        let mut gzipper = None;
        if regular {
            let dir_error = |source| OpenError::Io {
                path: files.dir().to_owned(),
                source,
            };
            let (closed, temporary) = files.list().map_err(dir_error)?;
            last_stamp = closed.last().map(|c| c.stamp.clone());
            let mut start = 0;
            match usable_state(&files, &closed, options.limits) {
                Ok(state) => {
                    recovered.from_state = true;
                    recovered.seen = Seen::restore(state.seen, options.limits);
                    last_stamp = last_stamp.max(state.closed_through);
                    start = covered(&file, state.current_len).map_err(io_error)?;
                    if start != state.current_len {
                        recovered.state_problem = Some(format!(
                            "the state file covers {} bytes of {}, which does not end a \
                             line there: read it whole",
                            state.current_len,
                            path.display()
                        ));
                    }
                }
                Err(problem) => {
                    recovered.state_problem = problem;
                    for c in &closed {
                        read_closed(c, &mut recovered)?;
                    }
                }
            }
            let extent = read_back(&file, path, start, &mut recovered)?;
            if extent.torn() > 0 {
                recovered.truncated_bytes = extent.torn();
                jsonl::cut(&file, extent).map_err(io_error)?;
            }
            len = extent.complete;
            let todo = files.tidy(&closed, &temporary, options.rotation.gzip);
            if options.rotation.gzip {
                let g = Gzipper::start().map_err(io_error)?;
                for plain in todo {
                    g.compress(plain);
                }
                gzipper = Some(g);
            }
        }
        let output = Self {
            target: Target::File {
                path: path.to_owned(),
                file,
                regular,
                len,
                files,
                opened: Instant::now(),
                last_stamp,
                retry_at: None,
                gzipper,
            },
            fsync: options.fsync,
            rotation: options.rotation,
        };
        Ok((output, recovered))
    }

    /// Whether the current file is due for rotation (never for stdout or a non-regular
    /// file; not again within [`ROTATE_RETRY`] of a failure).
    pub fn rotation_due(&self) -> bool {
        match &self.target {
            Target::File {
                regular: true,
                len,
                opened,
                retry_at,
                ..
            } => {
                self.rotation.due(*len, opened.elapsed())
                    && retry_at.is_none_or(|t| Instant::now() >= t)
            }
            _ => false,
        }
    }

    /// Closes the current file under a name that sorts by time and opens a new one.
    ///
    /// `seen` must hold every key written (the keys of the current file included): it is
    /// saved as the state file, which then covers the closed file, before the rename.
    /// Returns the closed file's path (`None` for an output that does not rotate).
    pub fn rotate(&mut self, seen: Snapshot) -> Result<Option<PathBuf>, RotateError> {
        let target = self.describe();
        let Target::File {
            path,
            file,
            regular: true,
            len,
            files,
            opened,
            last_stamp,
            retry_at,
            gzipper,
        } = &mut self.target
        else {
            return Ok(None);
        };
        let pause = self.rotation.pause;
        let failed = |source| RotateError::Failed {
            target: target.clone(),
            source,
        };
        let closed = (|| {
            file.sync_all()?;
            let stamp = next_stamp(last_stamp.as_deref(), SystemTime::now());
            let state = State {
                closed_through: Some(stamp.clone()),
                current_len: 0,
                seen,
            };
            state::write(&files.state(), &state)?;
            *last_stamp = Some(stamp.clone());
            if !pause.is_zero() {
                // Fault injection (--rotate-pause): a crash now finds the state file
                // covering a current file that was not closed.
                tracing::info!(pause = ?pause, "rotation paused after writing the state file");
                std::thread::sleep(pause);
            }
            let closed = files.closed_path(&stamp);
            std::fs::rename(&*path, &closed)?;
            Ok(closed)
        })();
        let closed = match closed {
            Ok(c) => c,
            Err(e) => {
                *retry_at = Some(Instant::now() + ROTATE_RETRY);
                return Err(failed(e));
            }
        };
        if let Err(e) = rotation::sync_dir(files.dir()) {
            tracing::warn!(dir = %files.dir().display(), error = %e, "cannot sync the output directory after a rotation");
        }
        let new = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&*path)
            .map_err(|source| RotateError::NoCurrentFile {
                target: target.clone(),
                source,
            })?;
        if let Err(e) = rotation::sync_dir(files.dir()) {
            tracing::warn!(dir = %files.dir().display(), error = %e, "cannot sync the output directory after a rotation");
        }
        *file = new;
        *len = 0;
        *opened = Instant::now();
        *retry_at = None;
        if let Some(g) = gzipper {
            g.compress(closed.clone());
        }
        Ok(Some(closed))
    }

    /// Waits for the gzip thread to compress what it was given (tests, and a caller that
    /// wants the files compressed before it goes on; a shutdown does not wait).
    pub fn finish_gzip(&mut self) {
        if let Target::File { gzipper, .. } = &mut self.target {
            if let Some(g) = gzipper.take() {
                g.finish();
            }
        }
    }

    /// Saves `seen` as the state file covering the whole current file (at a clean
    /// shutdown), so that the next start reads neither the history nor the current file.
    /// Does nothing for stdout or a non-regular file.
    pub fn save_state(&mut self, seen: Snapshot) -> io::Result<()> {
        let Target::File {
            file,
            regular: true,
            len,
            files,
            last_stamp,
            ..
        } = &mut self.target
        else {
            return Ok(());
        };
        file.sync_all()?;
        state::write(
            &files.state(),
            &State {
                closed_through: last_stamp.clone(),
                current_len: *len,
                seen,
            },
        )
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

/// A stamp after `last` (if any), at `now` when the clock allows: names never repeat and
/// sort in the order the files were closed.
fn next_stamp(last: Option<&str>, now: SystemTime) -> String {
    let mut at = now;
    if let Some(last) = last.and_then(rotation::parse_stamp) {
        if at <= last {
            at = last + Duration::from_nanos(1);
        }
    }
    rotation::stamp(at)
}

/// The state file, if it can be used; else why not (`None`: nothing to warn about, there
/// is simply no history yet).
fn usable_state(
    files: &Files,
    closed: &[Closed],
    limits: SeenLimits,
) -> Result<State, Option<String>> {
    let newest = closed.last().map(|c| c.stamp.as_str());
    match state::read(&files.state(), limits) {
        Ok(Some(state)) => match (state.closed_through.as_deref(), newest) {
            (_, None) => Ok(state),
            (Some(through), Some(newest)) if through >= newest => Ok(state),
            (through, Some(newest)) => Err(Some(format!(
                "the state file covers closed files up to {} but {newest} exists (an old \
                 state file?)",
                through.unwrap_or("none")
            ))),
        },
        Ok(None) if closed.is_empty() => Err(None),
        Ok(None) => Err(Some(format!(
            "no state file {} beside {} closed files",
            files.state().display(),
            closed.len()
        ))),
        Err(e) => Err(Some(e.to_string())),
    }
}

/// `len` if the current file has a complete line ending there, else 0 (read it whole).
fn covered(file: &File, len: u64) -> io::Result<u64> {
    if len == 0 || file.metadata()?.len() < len {
        return Ok(0);
    }
    let mut f: &File = file;
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(if last[0] == b'\n' { len } else { 0 })
}

/// Reads the keys of a closed file (plain or gzipped) into `recovered`.
fn read_closed(closed: &Closed, recovered: &mut Recovered) -> Result<(), OpenError> {
    let io_error = |source| OpenError::Io {
        path: closed.path.clone(),
        source,
    };
    let file = File::open(&closed.path).map_err(io_error)?;
    let extent = if closed.gz {
        let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file));
        read_keys(gz, &closed.path, 0, recovered)?
    } else {
        read_keys(&file, &closed.path, 0, recovered)?
    };
    if extent.torn() > 0 {
        tracing::warn!(
            file = %closed.path.display(),
            bytes = extent.torn(),
            "a closed output file ends with an incomplete line: ignored"
        );
    }
    recovered.closed_read += 1;
    Ok(())
}

/// Reads every complete line of the current file from byte `start` into `recovered`;
/// returns where the complete lines and the file end.
fn read_back(
    file: &File,
    path: &Path,
    start: u64,
    recovered: &mut Recovered,
) -> Result<Extent, OpenError> {
    let io_error = |source| OpenError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f: &File = file;
    f.seek(SeekFrom::Start(start)).map_err(io_error)?;
    let extent = read_keys(f, path, start, recovered)?;
    Ok(Extent {
        complete: start + extent.complete,
        total: start + extent.total,
    })
}

/// Reads the keys of every complete line of `reader` into `recovered`.
fn read_keys(
    reader: impl io::Read,
    path: &Path,
    from_byte: u64,
    recovered: &mut Recovered,
) -> Result<Extent, OpenError> {
    // With a state file, the current file may repeat what the state holds (a crash between
    // writing the state and closing the file): not a duplicate line.
    let count_duplicates = !recovered.from_state;
    // One clock read per file: the time of the rebuild stands for the time of the writes,
    // which only delays dropping complete epochs (see `Seen::retire`).
    let now = crate::seen::unix_secs();
    let extent = jsonl::read_lines(
        reader,
        |line_no, content| {
            let key = parse_key(content).map_err(|e| OpenError::NotAResultLine {
                path: path.to_owned(),
                line: line_no,
                from_byte,
                error: e.to_string(),
            })?;
            recovered.lines += 1;
            if !recovered.seen.insert_at(&key, now) && count_duplicates {
                recovered.duplicate_lines += 1;
            }
            Ok(())
        },
        |source| OpenError::Io {
            path: path.to_owned(),
            source,
        },
    )?;
    recovered.bytes_read += extent.total;
    Ok(extent)
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

    /// A line of sensor `s`, epoch 1, `seq`.
    fn line_of(seq: u64) -> Vec<u8> {
        line(seq).into_bytes()
    }

    fn rotating(size: u64, gzip: bool) -> Options {
        Options {
            rotation: Rotation {
                size,
                gzip,
                ..Rotation::OFF
            },
            ..Options::default()
        }
    }

    /// Writes `seqs` one batch each, rotating when due (as the sink does).
    fn write_seqs(output: &mut Output, seen: &mut Seen, seqs: impl IntoIterator<Item = u64>) {
        for seq in seqs {
            output.write_batch(&line_of(seq)).unwrap();
            seen.insert(&key(seq));
            if output.rotation_due() {
                output.rotate(seen.snapshot()).unwrap();
            }
        }
    }

    /// Every key of every output file (closed ones decompressed), with repeats.
    fn keys_in_files(dir: &Path) -> Vec<u64> {
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = if name.ends_with(".jsonl.gz") {
                let mut t = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::MultiGzDecoder::new(File::open(&path).unwrap()),
                    &mut t,
                )
                .unwrap();
                t
            } else if name.ends_with(".jsonl") {
                std::fs::read_to_string(&path).unwrap()
            } else {
                continue;
            };
            seqs.extend(text.lines().map(|l| parse_key(l.as_bytes()).unwrap().seq));
        }
        seqs.sort_unstable();
        seqs
    }

    #[test]
    fn rotation_closes_files_that_sort_by_time_and_a_restart_reads_only_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        // ~135 bytes a line: a file closes every 3 lines.
        let options = rotating(400, false);
        let (mut output, recovered) = Output::open_with(&path, &options).unwrap();
        let mut seen = recovered.seen;
        write_seqs(&mut output, &mut seen, 1..=10);
        let (closed, _) = Files::new(&path).list().unwrap();
        assert_eq!(closed.len(), 3);
        let mut names: Vec<String> = closed.iter().map(|c| c.stamp.clone()).collect();
        names.sort();
        assert_eq!(
            names,
            closed.iter().map(|c| c.stamp.clone()).collect::<Vec<_>>()
        );
        // The oldest file has the first lines.
        let first = std::fs::read_to_string(&closed[0].path).unwrap();
        assert!(
            first.starts_with(&line(1)) && first.ends_with(&line(3)),
            "{first}"
        );
        drop(output);

        // A kill -9 now: the restart reads the state (3 closed files) and the current file.
        let (_, recovered) = Output::open_with(&path, &options).unwrap();
        assert!(recovered.from_state && recovered.state_problem.is_none());
        assert_eq!(
            (recovered.closed_read, recovered.lines),
            (0, 1),
            "only seq 10"
        );
        assert_eq!(recovered.seen.len(), 10);
        assert_eq!(keys_in_files(dir.path()), (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_crash_between_the_state_and_the_rename_loses_nothing_and_doubles_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let options = rotating(400, false);
        let (mut output, recovered) = Output::open_with(&path, &options).unwrap();
        let mut seen = recovered.seen;
        write_seqs(&mut output, &mut seen, 1..=4);
        output.write_batch(&line_of(5)).unwrap();
        seen.insert(&key(5));
        // What a rotation does before its rename: the state covers seqs 1..=5, and 4..=5
        // are still in the current file.
        let files = Files::new(&path);
        let stamp = rotation::stamp(SystemTime::now() + Duration::from_secs(1));
        state::write(
            &files.state(),
            &State {
                closed_through: Some(stamp.clone()),
                current_len: 0,
                seen: seen.snapshot(),
            },
        )
        .unwrap();
        drop(output);
        let (mut output, recovered) = Output::open_with(&path, &options).unwrap();
        assert!(recovered.from_state);
        assert_eq!(
            recovered.duplicate_lines, 0,
            "expected repeats, not reported"
        );
        let mut seen = recovered.seen;
        assert_eq!(seen.len(), 5);
        // Redeliveries of 4 and 5 are recognised; new lines go on, and the next closed
        // file sorts after the stamp the state named.
        assert!(seen.contains(&key(4)) && seen.contains(&key(5)));
        write_seqs(&mut output, &mut seen, 6..=9);
        let (closed, _) = files.list().unwrap();
        assert!(closed.last().unwrap().stamp > stamp);
        assert_eq!(keys_in_files(dir.path()), (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn without_a_usable_state_every_file_is_read_gzipped_ones_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let options = rotating(400, false);
        let (mut output, recovered) = Output::open_with(&path, &options).unwrap();
        let mut seen = recovered.seen;
        write_seqs(&mut output, &mut seen, 1..=10);
        drop(output);
        let files = Files::new(&path);
        let (closed, _) = files.list().unwrap();
        rotation::gzip_file(&closed[1].path).unwrap();
        let state = std::fs::read(files.state()).unwrap();

        let cases: [(&str, Option<Vec<u8>>); 3] = [
            ("no state file", None),
            ("not a valid state file", Some(b"garbage".to_vec())),
            (
                "checksum",
                Some({
                    let mut s = state.clone();
                    let at = s.len() - 3;
                    s[at] ^= 1;
                    s
                }),
            ),
        ];
        for (problem, content) in cases {
            match content {
                Some(c) => std::fs::write(files.state(), c).unwrap(),
                None => {
                    let _ = std::fs::remove_file(files.state());
                }
            }
            let (_, recovered) = Output::open_with(&path, &options).unwrap();
            assert!(!recovered.from_state);
            let said = recovered.state_problem.unwrap_or_default();
            assert!(said.contains(problem), "{problem}: {said}");
            assert_eq!((recovered.closed_read, recovered.seen.len()), (3, 10));
        }

        // A state older than the newest closed file is not trusted either.
        std::fs::write(files.state(), &state).unwrap();
        let later = files.closed_path(&rotation::stamp(
            SystemTime::now() + Duration::from_secs(60),
        ));
        std::fs::write(&later, line(11)).unwrap();
        let (_, recovered) = Output::open_with(&path, &options).unwrap();
        assert!(recovered
            .state_problem
            .unwrap_or_default()
            .contains("an old state file"));
        assert_eq!(recovered.seen.len(), 11);
    }

    #[test]
    fn a_clean_shutdown_saves_a_state_that_covers_the_current_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let (mut output, recovered) = Output::open_with(&path, &Options::default()).unwrap();
        let mut seen = recovered.seen;
        write_seqs(&mut output, &mut seen, 1..=5);
        output.save_state(seen.snapshot()).unwrap();
        drop(output);
        let (mut output, recovered) = Output::open_with(&path, &Options::default()).unwrap();
        assert!(recovered.from_state);
        assert_eq!((recovered.bytes_read, recovered.seen.len()), (0, 5));
        // Then a kill -9 after more lines: those are read from where the state ends.
        let mut seen = recovered.seen;
        write_seqs(&mut output, &mut seen, 6..=7);
        drop(output);
        let (_, recovered) = Output::open_with(&path, &Options::default()).unwrap();
        assert_eq!((recovered.lines, recovered.seen.len()), (2, 7));
        // A current file that does not match the state (replaced by hand) is read whole.
        std::fs::write(&path, format!("{}{}", line(1), line(8))).unwrap();
        let (_, recovered) = Output::open_with(&path, &Options::default()).unwrap();
        assert!(recovered
            .state_problem
            .unwrap_or_default()
            .contains("read it whole"));
        assert!(recovered.seen.contains(&key(8)));
    }

    #[test]
    fn gzip_at_open_finishes_what_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let (mut output, recovered) = Output::open_with(&path, &rotating(400, false)).unwrap();
        let mut seen = recovered.seen;
        write_seqs(&mut output, &mut seen, 1..=7);
        drop(output);
        let files = Files::new(&path);
        let (closed, _) = files.list().unwrap();
        // A crash in the middle of a gzip left a partial .gz.tmp.
        std::fs::write(format!("{}.gz.tmp", closed[0].path.display()), b"\x1f\x8b").unwrap();
        let (output, recovered) = Output::open_with(&path, &rotating(400, true)).unwrap();
        assert!(recovered.from_state);
        drop(output); // the gzip thread finishes its queue, then ends
        wait_for(|| {
            let (closed, tmp) = files.list().unwrap();
            closed.iter().all(|c| c.gz && c.plain_too.is_none()) && tmp.is_empty()
        });
        // A new file is compressed once closed.
        let (mut output, recovered) = Output::open_with(&path, &rotating(400, true)).unwrap();
        let mut seen = recovered.seen;
        write_seqs(&mut output, &mut seen, 8..=9);
        output.finish_gzip();
        let (closed, _) = files.list().unwrap();
        assert_eq!(closed.len(), 3);
        assert!(closed.iter().all(|c| c.gz));
        drop(output);
        assert_eq!(keys_in_files(dir.path()), (1..=9).collect::<Vec<_>>());
    }

    /// Polls `done` every 10 ms, for up to 20 s (a gzip of a few lines takes milliseconds;
    /// the margin is for a loaded 2-core machine).
    fn wait_for(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "not done within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
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

        use crate::jsonl::props::{any_content, config};

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

            /// Any run of batches, rotations (tiny files, gzip or not), kills at any step of
            /// a rotation and clean stops: after each restart the state holds exactly the
            /// keys in the files, and every key is in exactly one file.
            #[test]
            fn rotations_and_crashes_keep_each_key_exactly_once(
                steps in proptest::collection::vec((1u64..4, 0u8..6), 1..20),
                size in 200u64..900,
                gzip in any::<bool>(),
            ) {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("out.jsonl");
                let options = rotating(size, gzip);
                let (mut output, recovered) = Output::open_with(&path, &options).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut seen = recovered.seen;
                let mut next = 1u64;
                for (batch, event) in steps {
                    // A batch of new seqs, and a redelivery of one already written.
                    let mut bytes = Vec::new();
                    let mut keys = Vec::new();
                    for seq in next..next + batch {
                        bytes.extend_from_slice(&line_of(seq));
                        keys.push(key(seq));
                    }
                    next += batch;
                    output.write_batch(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for k in &keys {
                        seen.insert(k);
                    }
                    prop_assert!(seen.contains(&key(next - 1)));
                    match event {
                        // A kill between the state and the rename.
                        0 => {
                            let files = Files::new(&path);
                            let stamp = rotation::stamp(SystemTime::now());
                            state::write(&files.state(), &State {
                                closed_through: Some(stamp),
                                current_len: 0,
                                seen: seen.snapshot(),
                            })?;
                        }
                        // A clean stop.
                        1 => output.save_state(seen.snapshot())?,
                        // A rotation when due.
                        _ => {
                            if output.rotation_due() {
                                output.rotate(seen.snapshot()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                            }
                        }
                    }
                    if event <= 2 {
                        // Restart (a kill -9 after any of the above). The gzip thread of a
                        // killed logger dies with it; here it must end before the next
                        // one starts (a start's tidy-up would race with it).
                        output.finish_gzip();
                        drop(output);
                        let (o, recovered) = Output::open_with(&path, &options).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(recovered.state_problem, None);
                        prop_assert_eq!(recovered.seen.len(), next - 1);
                        output = o;
                        seen = recovered.seen;
                    }
                }
                output.finish_gzip();
                drop(output);
                // Every gzip finished: each closed file once, plain or .gz.
                let (closed, tmp) = Files::new(&path).list()?;
                prop_assert!(tmp.is_empty() && closed.iter().all(|c| c.plain_too.is_none()));
                prop_assert!(!gzip || closed.iter().all(|c| c.gz));
                let in_files = keys_in_files(dir.path());
                prop_assert_eq!(in_files, (1..next).collect::<Vec<_>>());
            }

            /// Any bytes at all: no panic. Either the file is accepted and cut just after its
            /// last newline, or it is refused with the number of a line that is not a
            /// result line, and left as it was.
            #[test]
            fn any_content_is_accepted_and_cut_or_refused_untouched(
                content in any_content(
                    proptest::collection::vec(log_line(), 1..4).prop_map(|lines| text_of(&lines)),
                ),
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
