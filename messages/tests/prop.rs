//! Property tests of every decoder of the contract: round trips of arbitrary messages, and
//! hostile bodies (arbitrary bytes, valid encodings with bytes overwritten or cut, headers
//! announcing huge arrays, strings, binaries or maps, deep nesting) that must give an error,
//! never a panic, and never cost memory the body does not justify.
//!
//! A counting global allocator (per thread, so that tests running in parallel do not disturb
//! a measurement) reports the peak a decode holds. `PROPTEST_CASES` scales every property
//! (README, "Test it").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use messages::{
    CodecError, DeadLetter, EpochComplete, ReplayRequest, ReplayUnavailable, SensorReading,
    SensorStatus, WorkResult,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Measuring allocation.

/// `System`, counting what each thread holds.
struct Counting;

thread_local! {
    /// Bytes this thread allocated minus the bytes it freed.
    static HELD: Cell<isize> = const { Cell::new(0) };
    /// Highest `HELD` since the last `peak_during` started.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(bytes: isize) {
    let _ = HELD.try_with(|held| {
        let now = held.get() + bytes;
        held.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counting touches only
// const-initialised thread-local cells, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f`; returns the most bytes this thread held above its level at the start while `f`
/// ran.
fn peak_during(f: impl FnOnce()) -> usize {
    let base = HELD.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    f();
    usize::try_from(PEAK.with(Cell::get) - base).unwrap_or(0)
}

/// The most one decode of `len` bytes may hold.
///
/// What a decoder keeps is the decoded message: a string costs its wire bytes, and an
/// element of `squares` (u64, 8 bytes in memory) takes at least 1 byte on the wire, so the
/// message holds at most 8 bytes per input byte; `Vec`s and the reader's scratch buffer
/// grow by doubling, hence 16. The constant covers what does not depend on the input:
/// rmp-serde's 128-byte scratch buffer, `read_to_end`'s first 32-byte probe, serde_bytes'
/// capacity for a `bin` sent as an array (at most 4 KiB), and an error message (well under
/// 1 KiB): 8 KiB leaves a margin.
fn decode_bound(len: usize) -> usize {
    16 * len + 8 * 1024
}

/// Decodes `bytes` as every message type; returns the largest peak of the seven.
fn decode_all(bytes: &[u8]) -> usize {
    let mut worst = 0;
    let mut measure = |f: &dyn Fn(&[u8]) -> bool| {
        worst = worst.max(peak_during(|| {
            std::hint::black_box(f(bytes));
        }));
    };
    measure(&|b| SensorReading::decode(b).is_ok());
    measure(&|b| WorkResult::decode(b).is_ok());
    measure(&|b| ReplayRequest::decode(b).is_ok());
    measure(&|b| ReplayUnavailable::decode(b).is_ok());
    measure(&|b| SensorStatus::decode(b).is_ok());
    measure(&|b| DeadLetter::decode(b).is_ok());
    measure(&|b| EpochComplete::decode(b).is_ok());
    worst
}

/// The default case count (256, or `PROPTEST_CASES`) divided by `div`, for the properties
/// whose cases cost more.
fn config(div: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: (base.cases / div).max(1),
        ..base
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary messages.

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9-]{0,16}"]
}

fn schema() -> impl Strategy<Value = u8> {
    1..=u8::MAX
}

prop_compose! {
    fn sensor_reading()(
        schema in schema(), sensor_id in text(), epoch in any::<u64>(), seq in any::<u64>(),
        taken_at in any::<u64>(), values in proptest::collection::vec(any::<u32>(), 0..32),
    ) -> SensorReading {
        SensorReading { schema, sensor_id, epoch, seq, taken_at, values }
    }
}

prop_compose! {
    fn work_result()(
        schema in schema(), sensor_id in text(), epoch in any::<u64>(), seq in any::<u64>(),
        taken_at in any::<u64>(), values in proptest::collection::vec(any::<u32>(), 0..32),
        squares in proptest::collection::vec(any::<u64>(), 0..32), worker_id in text(),
        computed_at in any::<u64>(), stale in any::<bool>(),
    ) -> WorkResult {
        WorkResult {
            schema, sensor_id, epoch, seq, taken_at, values, squares, worker_id, computed_at,
            stale,
        }
    }
}

prop_compose! {
    fn replay_request()(
        schema in schema(), sensor_id in text(), epoch in any::<u64>(), from_seq in any::<u64>(),
        to_seq in any::<u64>(), requested_by in text(), requested_at in any::<u64>(),
    ) -> ReplayRequest {
        ReplayRequest { schema, sensor_id, epoch, from_seq, to_seq, requested_by, requested_at }
    }
}

prop_compose! {
    fn replay_unavailable()(
        schema in schema(), sensor_id in text(), epoch in any::<u64>(), from_seq in any::<u64>(),
        to_seq in any::<u64>(), at in any::<u64>(),
    ) -> ReplayUnavailable {
        ReplayUnavailable { schema, sensor_id, epoch, from_seq, to_seq, at }
    }
}

prop_compose! {
    // Built through serde rather than a struct literal, so that optional fields added to the
    // type later take their default here without editing this test.
    fn sensor_status()(
        schema in schema(), sensor_id in text(), epoch in any::<u64>(), last_seq in any::<u64>(),
        at in any::<u64>(), final_ in any::<bool>(),
    ) -> SensorStatus {
        let json = serde_json::json!({
            "schema": schema, "sensor_id": sensor_id, "epoch": epoch, "last_seq": last_seq,
            "at": at, "final": final_,
        });
        serde_json::from_value(json).expect("the fields of SensorStatus")
    }
}

prop_compose! {
    fn dead_letter()(
        schema in schema(), original in proptest::collection::vec(any::<u8>(), 0..128),
        topic in text(), channel in text(), attempts in any::<u16>(), error in text(),
        at in any::<u64>(),
    ) -> DeadLetter {
        DeadLetter { schema, original, topic, channel, attempts, error, at }
    }
}

/// A valid encoding of any of the six types.
fn any_encoding() -> impl Strategy<Value = Vec<u8>> {
    let enc = |r: Result<Vec<u8>, CodecError>| r.expect("encoding a valid message");
    prop_oneof![
        sensor_reading().prop_map(move |m| enc(m.encode())),
        work_result().prop_map(move |m| enc(m.encode())),
        replay_request().prop_map(move |m| enc(m.encode())),
        replay_unavailable().prop_map(move |m| enc(m.encode())),
        sensor_status().prop_map(move |m| enc(m.encode())),
        dead_letter().prop_map(move |m| enc(m.encode())),
    ]
}

// ---------------------------------------------------------------------------------------------
// Hostile MessagePack.

/// Field names of the contract, so that hostile values land where a decoder reads them.
const FIELDS: &[&str] = &[
    "schema",
    "sensor_id",
    "epoch",
    "seq",
    "taken_at",
    "values",
    "squares",
    "worker_id",
    "computed_at",
    "stale",
    "from_seq",
    "to_seq",
    "requested_by",
    "requested_at",
    "at",
    "last_seq",
    "final",
    "original",
    "topic",
    "channel",
    "attempts",
    "error",
    "unknown",
];

/// A MessagePack value that lies or is odd: a container or string header announcing up to
/// 4 GiB with a few bytes behind it, deep nesting, or a plain small value.
fn hostile_value() -> impl Strategy<Value = Vec<u8>> {
    let huge = prop_oneof![
        Just(u32::MAX),
        Just(u32::MAX / 2),
        Just(1 << 20),
        0u32..100_000
    ];
    let tail = proptest::collection::vec(any::<u8>(), 0..16);
    prop_oneof![
        // array32 / map32 / str32 / bin32 with the announced length, then a few bytes.
        (
            prop_oneof![Just(0xddu8), Just(0xdf), Just(0xdb), Just(0xc6)],
            huge.clone(),
            tail.clone()
        )
            .prop_map(|(marker, len, tail)| {
                let mut v = vec![marker];
                v.extend_from_slice(&len.to_be_bytes());
                v.extend_from_slice(&tail);
                v
            }),
        // array16 / map16 / str16 / bin16.
        (
            prop_oneof![Just(0xdcu8), Just(0xde), Just(0xda), Just(0xc5)],
            any::<u16>(),
            tail.clone()
        )
            .prop_map(|(marker, len, tail)| {
                let mut v = vec![marker];
                v.extend_from_slice(&len.to_be_bytes());
                v.extend_from_slice(&tail);
                v
            }),
        // Nested arrays (0x91) or one-entry maps keyed "x" (0x81 0xa1 'x').
        (1usize..2000, any::<bool>()).prop_map(|(depth, maps)| {
            let mut v = Vec::new();
            for _ in 0..depth {
                if maps {
                    v.extend_from_slice(&[0x81, 0xa1, b'x']);
                } else {
                    v.push(0x91);
                }
            }
            v.push(0xc0);
            v
        }),
        // An array of small positive integers (a plausible `values`).
        proptest::collection::vec(0u8..0x80, 0..16).prop_map(|items| {
            let mut v = vec![0xdc];
            v.extend_from_slice(&(items.len() as u16).to_be_bytes());
            v.extend_from_slice(&items);
            v
        }),
        // A small positive integer, or a short string.
        (0u8..0x80).prop_map(|n| vec![n]),
        "[a-z]{0,8}".prop_map(|s| {
            let mut v = vec![0xa0 | s.len() as u8];
            v.extend_from_slice(s.as_bytes());
            v
        }),
    ]
}

/// A map of contract field names to hostile values; `announced` entries claimed.
fn hostile_map() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec((proptest::sample::select(FIELDS), hostile_value()), 0..8),
        prop_oneof![Just(None), Just(Some(u32::MAX)), (0u32..64).prop_map(Some)],
    )
        .prop_map(|(entries, announced)| {
            let mut v = vec![0xdf];
            let n = announced.unwrap_or(entries.len() as u32);
            v.extend_from_slice(&n.to_be_bytes());
            for (name, value) in entries {
                v.push(0xa0 | name.len() as u8);
                v.extend_from_slice(name.as_bytes());
                v.extend_from_slice(&value);
            }
            v
        })
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config(1))]

    /// Encoding then decoding gives back the message, for every type.
    #[test]
    fn every_message_round_trips(
        r in sensor_reading(), w in work_result(), q in replay_request(),
        u in replay_unavailable(), s in sensor_status(), d in dead_letter(),
    ) {
        prop_assert_eq!(SensorReading::decode(&r.encode()?)?, r);
        prop_assert_eq!(WorkResult::decode(&w.encode()?)?, w);
        prop_assert_eq!(ReplayRequest::decode(&q.encode()?)?, q);
        prop_assert_eq!(ReplayUnavailable::decode(&u.encode()?)?, u);
        prop_assert_eq!(SensorStatus::decode(&s.encode()?)?, s);
        prop_assert_eq!(DeadLetter::decode(&d.encode()?)?, d);
    }

    /// Arbitrary bytes: an error or a message, never a panic, and a bounded peak.
    #[test]
    fn arbitrary_bytes_are_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let peak = decode_all(&bytes);
        prop_assert!(peak <= decode_bound(bytes.len()), "peak {peak} for {} bytes", bytes.len());
    }

    /// Valid encodings with bytes overwritten: never a panic, and a bounded peak.
    #[test]
    fn mutated_encodings_are_bounded(
        bytes in any_encoding(),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = bytes;
        for (i, b) in &mutations {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        let peak = decode_all(&bytes);
        prop_assert!(peak <= decode_bound(bytes.len()), "peak {peak} for {} bytes", bytes.len());
    }

    /// Maps whose fields announce huge arrays, strings, binaries or maps, or nest deeply:
    /// an error, never a panic, and no memory for what is only announced.
    #[test]
    fn announced_lengths_are_not_trusted(bytes in hostile_map()) {
        let peak = decode_all(&bytes);
        prop_assert!(peak <= decode_bound(bytes.len()), "peak {peak} for {} bytes", bytes.len());
    }
}

proptest! {
    #![proptest_config(config(4))]

    /// A valid encoding cut at any length short of its end is an error (a map cannot be
    /// complete early), with a bounded peak.
    #[test]
    fn every_truncation_is_an_error(bytes in any_encoding()) {
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            prop_assert!(SensorReading::decode(part).is_err(), "cut {}", cut);
            prop_assert!(WorkResult::decode(part).is_err(), "cut {}", cut);
            prop_assert!(ReplayRequest::decode(part).is_err(), "cut {}", cut);
            prop_assert!(ReplayUnavailable::decode(part).is_err(), "cut {}", cut);
            prop_assert!(SensorStatus::decode(part).is_err(), "cut {}", cut);
            prop_assert!(DeadLetter::decode(part).is_err(), "cut {}", cut);
            let peak = decode_all(part);
            prop_assert!(peak <= decode_bound(cut), "peak {peak} for {cut} bytes");
        }
    }
}
