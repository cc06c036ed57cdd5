//! Reading back a JSON-lines file the logger appends to (the output, the loss list): every
//! complete line, and where the complete lines end. A last line without its newline is what a
//! crash during a write leaves; its message was never finished, so the caller cuts it off
//! ([`cut`]) and nsqd delivers the message again.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
};

/// Where a file's complete lines end, and where the file ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length of the complete lines (each ending with `\n`).
    pub complete: u64,
    /// Length of the file as read.
    pub total: u64,
}

impl Extent {
    /// Bytes of a torn last line (0 when the file ends with a newline).
    pub fn torn(&self) -> u64 {
        self.total - self.complete
    }
}

/// Reads `file` from its start, calling `line(line_no, content)` for each complete, non-blank
/// line (content trimmed, without its newline; lines numbered from 1). Stops at the first
/// error of `line`; `io` turns a read error into the caller's error type.
pub fn read_lines<E>(
    file: impl Read,
    mut line: impl FnMut(u64, &[u8]) -> Result<(), E>,
    io: impl Fn(io::Error) -> E,
) -> Result<Extent, E> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(512);
    let mut extent = Extent {
        complete: 0,
        total: 0,
    };
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(&io)?;
        if n == 0 {
            break;
        }
        extent.total += n as u64;
        if buf.last() != Some(&b'\n') {
            // The last line, cut short by a crash.
            break;
        }
        line_no += 1;
        extent.complete = extent.total;
        let content = buf[..n - 1].trim_ascii();
        if !content.is_empty() {
            line(line_no, content)?;
        }
    }
    Ok(extent)
}

/// Cuts `file` after its complete lines and syncs it.
pub fn cut(file: &File, extent: Extent) -> io::Result<()> {
    file.set_len(extent.complete)?;
    file.sync_all()
}

/// What the property tests of the files read back with [`read_lines`] (the output, the loss
/// list) share: their case count and the contents a crash, or anything else, may leave.
#[cfg(test)]
pub(crate) mod props {
    use proptest::prelude::*;

    /// A quarter of the default case count (`PROPTEST_CASES` scales it): each case writes,
    /// reads back and syncs a real file.
    pub fn config() -> ProptestConfig {
        let base = ProptestConfig::default();
        ProptestConfig {
            cases: (base.cases / 4).max(1),
            ..base
        }
    }

    /// Any bytes, or a valid `text` (not empty) with a few bytes overwritten (newlines too).
    pub fn any_content(
        text: impl Strategy<Value = Vec<u8>> + 'static,
    ) -> impl Strategy<Value = Vec<u8>> {
        let mutations = proptest::collection::vec(
            (
                any::<prop::sample::Index>(),
                prop_oneof![Just(b'\n'), any::<u8>()],
            ),
            1..4,
        );
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..400),
            (text, mutations).prop_map(|(mut t, mutations)| {
                for (i, b) in mutations {
                    let i = i.index(t.len());
                    t[i] = b;
                }
                t
            }),
        ]
    }
}
