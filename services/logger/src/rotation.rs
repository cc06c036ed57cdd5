//! Rotation of the output: the names of the files, the order they sort in, and gzip.
//!
//! With `--output /data/results.jsonl` the logger's files are, in `/data`:
//!
//! | file | what |
//! |---|---|
//! | `results.jsonl` | the current file, the only one written to |
//! | `results.20261201T140638.123456789Z.jsonl` | a closed file: the current file as it was when it was closed (the UTC time of closing, to the nanosecond) |
//! | `results.20261201T140638.123456789Z.jsonl.gz` | the same, compressed (`--rotate-gzip`) |
//! | `results.state` | what the output holds, compactly ([`crate::state`]) |
//! | `results.lost.jsonl` | the loss list ([`crate::lost`]) |
//!
//! The timestamp has a fixed width, so the closed files sort by name in the order they were
//! closed (`ls` shows the history in order), and a name is never used twice: a rotation
//! within the same nanosecond as the last one (or after the clock went back) takes the last
//! one's time plus 1 ns.
//!
//! Gzip runs on a thread of its own ([`Gzipper`]), off the path of the writes, and is
//! crash-safe: it writes `<closed>.gz.tmp`, fsyncs it, renames it to `<closed>.gz`, syncs
//! the directory and only then removes the plain file. At start, [`Files::tidy`] finishes
//! what a crash interrupted: a `.gz.tmp` is removed, a plain file whose `.gz` exists is
//! removed, and a plain file without one is compressed again.

use std::{
    fmt,
    fs::{self, File},
    io::{self, BufReader, BufWriter},
    path::{Path, PathBuf},
    str::FromStr,
    sync::mpsc,
    time::{Duration, SystemTime},
};

use flate2::{write::GzEncoder, Compression};
use suite_common::setting::Invalid;

/// When the output is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rotation {
    /// Rotate once the current file holds at least this many bytes (0: never by size).
    pub size: u64,
    /// Rotate once the current file is this old and not empty (`None`: never by age).
    pub interval: Option<Duration>,
    /// Gzip closed files.
    pub gzip: bool,
    /// Fault injection (`--rotate-pause`, tests): a pause between writing the state file
    /// and closing the current file.
    pub pause: Duration,
}

impl Rotation {
    /// No rotation.
    pub const OFF: Self = Self {
        size: 0,
        interval: None,
        gzip: false,
        pause: Duration::ZERO,
    };

    /// Whether the output rotates at all.
    pub fn enabled(&self) -> bool {
        self.size > 0 || self.interval.is_some()
    }

    /// Whether a current file of `len` bytes, opened `age` ago, is due.
    pub fn due(&self, len: u64, age: Duration) -> bool {
        len > 0 && ((self.size > 0 && len >= self.size) || self.interval.is_some_and(|i| age >= i))
    }
}

/// A size in bytes, written like `256MiB`, `1GiB`, `500KiB`, `1000000` or `0`; printed as
/// given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteSize {
    /// The size in bytes.
    bytes: u64,
    /// The text it was parsed from.
    text: String,
}

impl ByteSize {
    /// The size in bytes.
    pub fn get(&self) -> u64 {
        self.bytes
    }
}

impl FromStr for ByteSize {
    type Err = Invalid;

    fn from_str(text: &str) -> Result<Self, Invalid> {
        let trimmed = text.trim();
        let invalid = || {
            Invalid::Value(format!(
                "'{text}' is not a size such as 256MiB, 1GiB, 500KiB or a number of bytes \
                 (0: never)"
            ))
        };
        let digits = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            _ => return Err(invalid()),
        };
        let bytes = number.checked_mul(factor).ok_or_else(invalid)?;
        Ok(Self {
            bytes,
            text: trimmed.to_owned(),
        })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

suite_common::setting_type!(ByteSize);

/// Width of a closing timestamp: `20261201T140638.123456789Z`.
const STAMP_LEN: usize = 26;

/// The closing timestamp of `time`: UTC, fixed width, sorts as it reads.
pub fn stamp(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// The time of a closing timestamp, if `text` is one.
pub fn parse_stamp(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let shape = b.len() == STAMP_LEN
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'.'
        && b[16..25].iter().all(u8::is_ascii_digit)
        && b[25] == b'Z';
    if !shape {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..]
    );
    humantime::parse_rfc3339(&rfc).ok()
}

/// A closed file found in the output's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Its closing timestamp (the order of the history).
    pub stamp: String,
    /// The file to read: the plain one if it exists, else the `.gz`.
    pub path: PathBuf,
    /// Whether `path` is the `.gz`.
    pub gz: bool,
    /// The plain file, when a complete `.gz` of it exists too (a crash between the two
    /// steps of gzip): to be removed.
    pub plain_too: Option<PathBuf>,
}

/// The names of the files that belong to one `--output` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The current file.
    current: PathBuf,
    /// Its directory (`.` for a bare name).
    dir: PathBuf,
    /// Its name without the last extension: `results`.
    stem: String,
    /// Its last extension, if any: `jsonl`.
    ext: Option<String>,
}

impl Files {
    /// The files of `--output current`.
    pub fn new(current: &Path) -> Self {
        let dir = match current.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let stem = current
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".to_owned());
        let ext = current
            .extension()
            .map(|e| e.to_string_lossy().into_owned());
        Self {
            current: current.to_owned(),
            dir,
            stem,
            ext,
        }
    }

    /// The current file.
    pub fn current(&self) -> &Path {
        &self.current
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file: `results.state`.
    pub fn state(&self) -> PathBuf {
        self.dir.join(format!("{}.state", self.stem))
    }

    /// The name of the file closed at `stamp`: `results.<stamp>.jsonl`.
    pub fn closed_name(&self, stamp: &str) -> String {
        match &self.ext {
            Some(ext) => format!("{}.{stamp}.{ext}", self.stem),
            None => format!("{}.{stamp}", self.stem),
        }
    }

    /// The path of the file closed at `stamp`.
    pub fn closed_path(&self, stamp: &str) -> PathBuf {
        self.dir.join(self.closed_name(stamp))
    }

    /// The stamp of a closed file's name, and whether it is the `.gz`; `None` for any other
    /// name (the current file, the state, the loss list, a `.gz.tmp`, foreign files).
    pub fn parse_closed(&self, name: &str) -> Option<(String, bool)> {
        let rest = name.strip_prefix(&self.stem)?.strip_prefix('.')?;
        let (rest, gz) = match rest.strip_suffix(".gz") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let stamp = match &self.ext {
            Some(ext) => rest.strip_suffix(ext.as_str())?.strip_suffix('.')?,
            None => rest,
        };
        parse_stamp(stamp).map(|_| (stamp.to_owned(), gz))
    }

    /// The closed files, oldest first, one per stamp; and the `.gz.tmp` files a crash left.
    pub fn list(&self) -> io::Result<(Vec<Closed>, Vec<PathBuf>)> {
        let mut plain = std::collections::BTreeMap::<String, PathBuf>::new();
        let mut gz = std::collections::BTreeMap::<String, PathBuf>::new();
        let mut temporary = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = name.strip_suffix(".gz.tmp") {
                if self.parse_closed(base).is_some_and(|(_, g)| !g) {
                    temporary.push(entry.path());
                }
                continue;
            }
            if let Some((stamp, is_gz)) = self.parse_closed(name) {
                if is_gz {
                    gz.insert(stamp, entry.path());
                } else {
                    plain.insert(stamp, entry.path());
                }
            }
        }
        let mut stamps: Vec<String> = plain.keys().chain(gz.keys()).cloned().collect();
        stamps.sort_unstable();
        stamps.dedup();
        let closed = stamps
            .into_iter()
            .filter_map(|stamp| {
                let (p, g) = (plain.remove(&stamp), gz.remove(&stamp));
                match (p, g) {
                    (Some(p), Some(g)) => Some(Closed {
                        stamp,
                        path: g,
                        gz: true,
                        plain_too: Some(p),
                    }),
                    (Some(p), None) => Some(Closed {
                        stamp,
                        path: p,
                        gz: false,
                        plain_too: None,
                    }),
                    (None, Some(g)) => Some(Closed {
                        stamp,
                        path: g,
                        gz: true,
                        plain_too: None,
                    }),
                    (None, None) => None,
                }
            })
            .collect();
        Ok((closed, temporary))
    }

    /// Finishes what a crash interrupted (see the module's guide); returns the plain closed
    /// files still to compress when `gzip` is on.
    pub fn tidy(&self, closed: &[Closed], temporary: &[PathBuf], gzip: bool) -> Vec<PathBuf> {
        for tmp in temporary {
            remove_logged(tmp, "an incomplete .gz.tmp left by a crash");
        }
        let mut todo = Vec::new();
        for c in closed {
            if let Some(plain) = &c.plain_too {
                remove_logged(plain, "a closed file whose complete .gz exists");
            } else if gzip && !c.gz {
                todo.push(c.path.clone());
            }
        }
        todo
    }
}

/// Removes `path`, logging what and why (and a failure, which is not fatal).
fn remove_logged(path: &Path, why: &str) {
    match fs::remove_file(path) {
        Ok(()) => tracing::info!(file = %path.display(), "removed {why}"),
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot remove {why}"),
    }
}

/// Syncs a directory, so that a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Compresses the closed file `plain` to `plain.gz`, crash-safely (see the module's guide);
/// returns the path of the `.gz`.
pub fn gzip_file(plain: &Path) -> io::Result<PathBuf> {
    let name = plain
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let dir = match plain.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let gz = dir.join(format!("{name}.gz"));
    let tmp = dir.join(format!("{name}.gz.tmp"));
    let result = (|| {
        let mut input = BufReader::with_capacity(1 << 20, File::open(plain)?);
        let out = File::create(&tmp)?;
        let mut encoder = GzEncoder::new(
            BufWriter::with_capacity(1 << 20, out),
            Compression::default(),
        );
        io::copy(&mut input, &mut encoder)?;
        let out = encoder
            .finish()?
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        out.sync_all()?;
        fs::rename(&tmp, &gz)?;
        sync_dir(&dir)?;
        fs::remove_file(plain)?;
        sync_dir(&dir)
    })();
    if let Err(e) = result {
        // The plain file stays (it is still read); a next start compresses it again.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(gz)
}

/// A thread that gzips closed files one after another, off the path of the writes.
///
/// A shutdown does not wait for it (a compression of 256 MiB takes seconds): a next start
/// finishes what it left.
#[derive(Debug)]
pub struct Gzipper {
    /// Files to compress.
    queue: mpsc::Sender<PathBuf>,
    /// The thread.
    thread: std::thread::JoinHandle<()>,
}

impl Gzipper {
    /// Starts the thread.
    pub fn start() -> io::Result<Self> {
        let (queue, files) = mpsc::channel::<PathBuf>();
        let thread = std::thread::Builder::new()
            .name("logger-gzip".to_owned())
            .spawn(move || {
                for plain in files {
                    let started = std::time::Instant::now();
                    match gzip_file(&plain) {
                        Ok(gz) => tracing::info!(
                            file = %gz.display(),
                            took = ?started.elapsed(),
                            "closed output file compressed"
                        ),
                        Err(e) => tracing::warn!(
                            file = %plain.display(),
                            error = %e,
                            "cannot gzip a closed output file: it stays uncompressed (tried \
                             again at the next start)"
                        ),
                    }
                }
            })?;
        Ok(Self { queue, thread })
    }

    /// Waits until every queued file is compressed (or failed), and ends the thread.
    pub fn finish(self) {
        drop(self.queue);
        if self.thread.join().is_err() {
            tracing::warn!("the gzip thread panicked");
        }
    }

    /// Queues `plain` for compression.
    pub fn compress(&self, plain: PathBuf) {
        if let Err(mpsc::SendError(plain)) = self.queue.send(plain) {
            tracing::warn!(file = %plain.display(), "the gzip thread is gone: file left uncompressed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn stamps_have_a_fixed_width_sort_in_time_order_and_parse_back() {
        let times = [
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_597_998),
            SystemTime::UNIX_EPOCH + Duration::new(1_764_597_998, 1),
            SystemTime::UNIX_EPOCH + Duration::new(1_764_597_999, 999_999_999),
            SystemTime::UNIX_EPOCH + Duration::new(4_102_444_800, 5),
        ];
        let stamps: Vec<String> = times.iter().map(|t| stamp(*t)).collect();
        assert_eq!(stamps[0], "20251201T140638.000000000Z");
        for (s, t) in stamps.iter().zip(times) {
            assert_eq!(s.len(), STAMP_LEN, "{s}");
            assert_eq!(parse_stamp(s), Some(t), "{s}");
        }
        let mut sorted = stamps.clone();
        sorted.sort();
        assert_eq!(sorted, stamps, "name order is time order");
        for bad in [
            "",
            "lost",
            "20251201T140638Z",
            "20251201T140638.00000000xZ",
            "20251341T140638.000000000Z",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_of_the_files_of_an_output() {
        let f = Files::new(Path::new("/data/results.jsonl"));
        let s = "20261201T140638.123456789Z";
        assert_eq!(f.state(), Path::new("/data/results.state"));
        assert_eq!(
            f.closed_path(s),
            Path::new("/data/results.20261201T140638.123456789Z.jsonl")
        );
        let name = f.closed_name(s);
        assert_eq!(f.parse_closed(&name), Some((s.to_owned(), false)));
        assert_eq!(
            f.parse_closed(&format!("{name}.gz")),
            Some((s.to_owned(), true))
        );
        for other in [
            "results.jsonl",
            "results.state",
            "results.lost.jsonl",
            "results.state.tmp",
            "other.20261201T140638.123456789Z.jsonl",
            "results.20261201T140638.123456789Z.json",
        ] {
            assert_eq!(f.parse_closed(other), None, "{other}");
        }
        let bare = Files::new(Path::new("out"));
        assert_eq!(
            bare.closed_path(s),
            Path::new("./out.20261201T140638.123456789Z")
        );
        assert_eq!(
            bare.parse_closed(&format!("out.{s}")),
            Some((s.to_owned(), false))
        );
        assert_eq!(bare.state(), Path::new("./out.state"));
    }

    #[test]
    fn listing_orders_by_time_and_pairs_plain_with_gz() {
        let dir = tempfile::tempdir().unwrap();
        let f = Files::new(&dir.path().join("results.jsonl"));
        let stamps = [
            "20261201T140638.000000002Z",
            "20261201T140638.000000001Z",
            "20251231T235959.999999999Z",
        ];
        fs::write(f.closed_path(stamps[0]), "a\n").unwrap();
        fs::write(f.closed_path(stamps[1]), "b\n").unwrap();
        fs::write(format!("{}.gz", f.closed_path(stamps[1]).display()), "").unwrap();
        fs::write(format!("{}.gz", f.closed_path(stamps[2]).display()), "").unwrap();
        fs::write(format!("{}.gz.tmp", f.closed_path(stamps[0]).display()), "").unwrap();
        fs::write(dir.path().join("results.jsonl"), "").unwrap();
        fs::write(dir.path().join("results.lost.jsonl"), "").unwrap();
        let (closed, tmp) = f.list().unwrap();
        let order: Vec<(&str, bool, bool)> = closed
            .iter()
            .map(|c| (c.stamp.as_str(), c.gz, c.plain_too.is_some()))
            .collect();
        assert_eq!(
            order,
            [
                (stamps[2], true, false),
                (stamps[1], true, true),
                (stamps[0], false, false)
            ]
        );
        assert_eq!(tmp.len(), 1);
        let todo = f.tidy(&closed, &tmp, true);
        assert_eq!(todo, [f.closed_path(stamps[0])]);
        assert!(
            !f.closed_path(stamps[1]).exists(),
            "plain beside its .gz removed"
        );
        let (_, tmp) = f.list().unwrap();
        assert!(tmp.is_empty());
    }

    #[test]
    fn gzip_replaces_the_file_by_an_identical_gz() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("results.20261201T140638.123456789Z.jsonl");
        let text = "{\"a\":1}\n".repeat(10_000);
        fs::write(&plain, &text).unwrap();
        let gz = gzip_file(&plain).unwrap();
        assert!(!plain.exists());
        let mut back = String::new();
        flate2::read::MultiGzDecoder::new(File::open(&gz).unwrap())
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
        assert!(fs::metadata(&gz).unwrap().len() < text.len() as u64 / 10);
        assert!(gzip_file(&plain).is_err(), "nothing left to compress");
        assert!(gz.exists(), "a failed gzip leaves the .gz alone");
    }

    #[test]
    fn sizes_parse_with_units() {
        let cases = [
            ("0", 0),
            ("1000", 1000),
            ("500KiB", 500 << 10),
            ("256MiB", 256 << 20),
            ("256M", 256 << 20),
            ("1GiB", 1 << 30),
            ("2 GiB", 2 << 30),
        ];
        for (text, bytes) in cases {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!((size.get(), size.to_string()), (bytes, text.to_owned()));
        }
        for bad in ["", "MiB", "1.5GiB", "-1", "1PB", "99999999999999TiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn due_by_size_or_age_never_when_empty() {
        let r = Rotation {
            size: 100,
            interval: Some(Duration::from_secs(60)),
            ..Rotation::OFF
        };
        assert!(!r.due(0, Duration::from_secs(3600)), "empty: never");
        assert!(!r.due(99, Duration::from_secs(59)));
        assert!(r.due(100, Duration::ZERO));
        assert!(r.due(1, Duration::from_secs(60)));
        assert!(!Rotation::OFF.due(u64::MAX, Duration::MAX));
        assert!(!Rotation::OFF.enabled() && r.enabled());
    }
}
