//! The loss list: the readings the logger gave up on, kept durably beside the output.
//!
//! One JSON object per lost range, appended and synced to disk before the logger
//! acknowledges the answer that made it lost:
//!
//! ```json
//! {"sensor_id":"s1","epoch":1732712345678,"from_seq":1001,"to_seq":1450,"count":450,"reason":"unavailable","at":1732712399000000000}
//! ```
//!
//! `reason` is `unavailable` (the sensor answered that the readings are no longer in its
//! history) or `unanswered` (the sensor did not answer `--replay-max-attempts` requests).
//! A later record with reason `recovered` cancels that range: the readings arrived after all
//! (late) and are in the output. The readings lost are the ranges of the loss records minus
//! those of the `recovered` records that follow them.
//! At start-up the logger reads the list back, so that it does not ask again for what it
//! already gave up on; an incomplete last line (a crash during a write) is cut off.
//!
//! With `--output` the list is `<output stem>.lost.jsonl` beside the output unless
//! `--lost-output` names another file; with stdout as output and no `--lost-output`, losses
//! are only logged, counted and shown by `GET /gaps`.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    gaps::{Loss, LossReason},
    jsonl,
};

/// One line of the loss list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossRecord {
    /// The sensor.
    pub sensor_id: String,
    /// Its epoch.
    pub epoch: u64,
    /// First lost seq.
    pub from_seq: u64,
    /// Last lost seq (inclusive).
    pub to_seq: u64,
    /// `to_seq - from_seq + 1`, for readers.
    pub count: u64,
    /// Why the readings are lost.
    pub reason: LossReason,
    /// When the loss was recorded (Unix nanoseconds).
    pub at: u64,
}

impl LossRecord {
    /// The record of `loss`, made at `at`.
    pub fn new(loss: &Loss, at: u64) -> Self {
        Self {
            sensor_id: loss.sensor_id.clone(),
            epoch: loss.epoch,
            from_seq: loss.from,
            to_seq: loss.to,
            count: loss.count(),
            reason: loss.reason,
            at,
        }
    }
}

/// The default loss list of an output file: `<dir>/<stem>.lost.jsonl`.
pub fn default_path(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_owned());
    output.with_file_name(format!("{stem}.lost.jsonl"))
}

/// Where losses are recorded.
#[derive(Debug)]
pub struct LossList {
    /// The file and its path; `None` when losses are only logged.
    file: Option<(PathBuf, File)>,
}

impl LossList {
    /// A list that records nothing durably (losses are still logged and counted).
    pub fn none() -> Self {
        Self { file: None }
    }

    /// Opens (or creates) the list at `path` and reads back the records it holds.
    pub fn open(path: &Path) -> anyhow::Result<(Self, Vec<LossRecord>)> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("cannot open the loss list {}", path.display()))?;
        let mut records = Vec::new();
        let extent = jsonl::read_lines(
            &file,
            |line_no, content| {
                let record: LossRecord = serde_json::from_slice(content).with_context(|| {
                    format!(
                        "loss list {} line {line_no} is not a loss record; move the file away \
                         or repair it",
                        path.display()
                    )
                })?;
                records.push(record);
                Ok(())
            },
            |e| {
                anyhow::Error::new(e)
                    .context(format!("cannot read the loss list {}", path.display()))
            },
        )?;
        if extent.torn() > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = extent.torn(),
                "the loss list ended with an incomplete line (a crash during a write): cut it off"
            );
            jsonl::cut(&file, extent)
                .with_context(|| format!("cannot cut the loss list {}", path.display()))?;
        }
        Ok((
            Self {
                file: Some((path.to_owned(), file)),
            },
            records,
        ))
    }

    /// The list's path, or `none`.
    pub fn describe(&self) -> String {
        match &self.file {
            Some((path, _)) => path.display().to_string(),
            None => "none".to_owned(),
        }
    }

    /// Appends `records` and syncs them to disk.
    pub fn append(&mut self, records: &[LossRecord]) -> io::Result<()> {
        let Some((_, file)) = &mut self.file else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(records.len() * 160);
        for r in records {
            serde_json::to_writer(&mut bytes, r)?;
            bytes.push(b'\n');
        }
        file.write_all(&bytes)?;
        file.flush()?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(from: u64, to: u64) -> Loss {
        Loss {
            sensor_id: "s1".to_owned(),
            epoch: 7,
            from,
            to,
            reason: LossReason::Unavailable,
        }
    }

    #[test]
    fn default_path_is_beside_the_output() {
        assert_eq!(
            default_path(Path::new("/data/results.jsonl")),
            Path::new("/data/results.lost.jsonl")
        );
        assert_eq!(default_path(Path::new("out")), Path::new("out.lost.jsonl"));
    }

    #[test]
    fn records_survive_a_reopen_and_a_torn_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lost.jsonl");
        let (mut list, records) = LossList::open(&path).unwrap();
        assert!(records.is_empty());
        list.append(&[LossRecord::new(&loss(5, 9), 1)]).unwrap();
        list.append(&[LossRecord::new(&loss(20, 20), 2)]).unwrap();
        drop(list);
        let mut text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(
            "{\"sensor_id\":\"s1\",\"epoch\":7,\"from_seq\":5,\"to_seq\":9,\"count\":5,\
             \"reason\":\"unavailable\",\"at\":1}\n"
        ));
        text.push_str("{\"sensor_id\":\"s1\",\"ep");
        std::fs::write(&path, &text).unwrap();
        let (_, records) = LossList::open(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!((records[1].from_seq, records[1].count), (20, 1));
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));
    }

    #[test]
    fn a_foreign_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lost.jsonl");
        std::fs::write(&path, "hello\n").unwrap();
        let err = format!("{:#}", LossList::open(&path).unwrap_err());
        assert!(err.contains("line 1 is not a loss record"), "{err}");
    }

    #[test]
    fn none_records_nothing() {
        let mut list = LossList::none();
        list.append(&[LossRecord::new(&loss(1, 1), 1)]).unwrap();
        assert_eq!(list.describe(), "none");
    }

    /// Property tests of the loss list's start-up recovery, as for the output: complete
    /// records kept, a torn tail cut, idempotent, and garbage refused without touching the
    /// file. `PROPTEST_CASES` scales them; real files, hence a quarter of the default count.
    mod props {
        use super::*;
        use proptest::prelude::*;

        use crate::jsonl::props::{any_content, config};

        prop_compose! {
            fn record()(
                sensor_id in prop_oneof![any::<String>(), "[a-z0-9-]{1,8}"],
                epoch in any::<u64>(), from_seq in any::<u64>(), to_seq in any::<u64>(),
                count in any::<u64>(),
                reason in prop_oneof![
                    Just(LossReason::Unavailable),
                    Just(LossReason::Unanswered),
                    Just(LossReason::Recovered),
                ],
                at in any::<u64>(),
            ) -> LossRecord {
                LossRecord { sensor_id, epoch, from_seq, to_seq, count, reason, at }
            }
        }

        fn text_of(records: &[LossRecord]) -> Vec<u8> {
            let mut out = Vec::new();
            for r in records {
                serde_json::to_writer(&mut out, r).expect("a LossRecord serializes");
                out.push(b'\n');
            }
            out
        }

        proptest! {
            #![proptest_config(config())]

            /// Records then a torn last line: the records come back equal, the tail is cut,
            /// and a second open reads the same records from the same bytes.
            #[test]
            fn a_torn_tail_is_cut_and_recovery_is_idempotent(
                records in proptest::collection::vec(record(), 0..6),
                tail in prop_oneof![
                    proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..200),
                    (record(), any::<prop::sample::Index>()).prop_map(|(r, cut)| {
                        let mut t = serde_json::to_vec(&r).expect("a LossRecord serializes");
                        t.truncate(cut.index(t.len() + 1));
                        t
                    }),
                ],
            ) {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("x.lost.jsonl");
                let valid = text_of(&records);
                let mut content = valid.clone();
                content.extend_from_slice(&tail);
                std::fs::write(&path, &content)?;

                let (_, first) = LossList::open(&path).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                prop_assert_eq!(&first, &records);
                prop_assert_eq!(std::fs::read(&path)?, valid.clone());
                let (_, second) = LossList::open(&path).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                prop_assert_eq!(&second, &records);
                prop_assert_eq!(std::fs::read(&path)?, valid);
            }

            /// Any bytes: no panic; accepted and cut after the last newline, or refused
            /// naming the line, with the file untouched.
            #[test]
            fn any_content_is_accepted_and_cut_or_refused_untouched(
                content in any_content(
                    proptest::collection::vec(record(), 1..4).prop_map(|records| text_of(&records)),
                ),
            ) {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("x.lost.jsonl");
                std::fs::write(&path, &content)?;
                let complete = content.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                match LossList::open(&path) {
                    Ok((_, records)) => {
                        prop_assert_eq!(std::fs::read(&path)?, content[..complete].to_vec());
                        let (_, again) = LossList::open(&path).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
                        prop_assert_eq!(again, records);
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        prop_assert!(e.contains("is not a loss record"), "{e}");
                        prop_assert_eq!(std::fs::read(&path)?, content);
                    }
                }
            }
        }
    }
}
