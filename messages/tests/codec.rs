//! Pins the wire format: golden byte vectors, round trips, and hostile input.
//!
//! The golden vectors were produced once by this encoder and are pinned here and in
//! `testdata/` (the latter for the Python test). If one of these tests fails after a change,
//! the change breaks the wire contract; see the versioning rule in the crate docs.
//!
//! To regenerate `testdata/` after a deliberate, versioned change, run
//! `MESSAGES_BLESS=1 cargo test -p messages --test codec` and update the hex constants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure fails the test

use std::{collections::BTreeMap, path::PathBuf};

use messages::{
    CodecError, DeadLetter, EpochComplete, Message, ReplayRequest, ReplayUnavailable,
    SensorReading, SensorStatus, WorkResult, SCHEMA_VERSION,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::de::IgnoredAny;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Fixtures and their pinned encodings.

fn reading() -> SensorReading {
    SensorReading {
        schema: SCHEMA_VERSION,
        sensor_id: "sensor-1".to_owned(),
        epoch: 1_700_000_000,
        seq: 42,
        taken_at: 1_700_000_000_123_456_789,
        values: vec![0, 7, 65_535, u32::MAX],
    }
}

fn work_result() -> WorkResult {
    WorkResult {
        schema: SCHEMA_VERSION,
        sensor_id: "sensor-1".to_owned(),
        epoch: 1_700_000_000,
        seq: 42,
        taken_at: 1_700_000_000_123_456_789,
        values: vec![0, 7, 65_535, u32::MAX],
        squares: vec![0, 49, 4_294_836_225, 18_446_744_065_119_617_025],
        worker_id: "worker-a".to_owned(),
        computed_at: 1_700_000_000_223_456_789,
        stale: true,
    }
}

fn replay_request() -> ReplayRequest {
    ReplayRequest {
        schema: SCHEMA_VERSION,
        sensor_id: "sensor-1".to_owned(),
        epoch: 1_700_000_000,
        from_seq: 40,
        to_seq: 41,
        requested_by: "logger-1".to_owned(),
        requested_at: 1_700_000_005_000_000_000,
    }
}

fn replay_unavailable() -> ReplayUnavailable {
    ReplayUnavailable {
        schema: SCHEMA_VERSION,
        sensor_id: "sensor-1".to_owned(),
        epoch: 1_700_000_000,
        from_seq: 1,
        to_seq: 39,
        at: 1_700_000_005_100_000_000,
    }
}

fn sensor_status() -> SensorStatus {
    SensorStatus {
        schema: SCHEMA_VERSION,
        sensor_id: "sensor-1".to_owned(),
        epoch: 1_700_000_000,
        last_seq: 42,
        at: 1_700_000_006_000_000_000,
        final_: true,
        oldest_seq: 0,
    }
}

fn epoch_complete() -> EpochComplete {
    EpochComplete {
        schema: SCHEMA_VERSION,
        sensor_id: "sensor-1".to_owned(),
        epoch: 1_700_000_000,
        from_seq: 1,
        to_seq: 42,
        logger_id: "logger-1".to_owned(),
        at: 1_700_000_007_000_000_000,
    }
}

fn dead_letter() -> DeadLetter {
    DeadLetter {
        schema: SCHEMA_VERSION,
        original: vec![0xc1, 0x00, 0xff],
        topic: "sensor_data".to_owned(),
        channel: "worker".to_owned(),
        attempts: 5,
        error: "not a SensorReading: invalid marker".to_owned(),
        at: 1_700_000_007_000_000_000,
    }
}

const READING_HEX: &str = concat!(
    "86a6736368656d6101a973656e736f725f6964a873656e736f722d31a565706f6368ce6553f100a3",
    "7365712aa874616b656e5f6174cf17979cfe3d85cd15a676616c756573940007cdffffceffffffff",
);
const WORK_RESULT_HEX: &str = concat!(
    "8aa6736368656d6101a973656e736f725f6964a873656e736f722d31a565706f6368ce6553f100a3",
    "7365712aa874616b656e5f6174cf17979cfe3d85cd15a676616c756573940007cdffffceffffffff",
    "a773717561726573940031cefffe0001cffffffffe00000001a9776f726b65725f6964a8776f726b",
    "65722d61ab636f6d70757465645f6174cf17979cfe437bae15a57374616c65c3",
);
const REPLAY_REQUEST_HEX: &str = concat!(
    "87a6736368656d6101a973656e736f725f6964a873656e736f722d31a565706f6368ce6553f100a8",
    "66726f6d5f73657128a6746f5f73657129ac7265717565737465645f6279a86c6f676765722d31ac",
    "7265717565737465645f6174cf17979cff602ff200",
);
const REPLAY_UNAVAILABLE_HEX: &str = concat!(
    "86a6736368656d6101a973656e736f725f6964a873656e736f722d31a565706f6368ce6553f100a8",
    "66726f6d5f73657101a6746f5f73657127a26174cf17979cff6625d300",
);
const SENSOR_STATUS_HEX: &str = concat!(
    "86a6736368656d6101a973656e736f725f6964a873656e736f722d31a565706f6368ce6553f100a8",
    "6c6173745f7365712aa26174cf17979cff9bcabc00a566696e616cc3",
);
const DEAD_LETTER_HEX: &str = concat!(
    "87a6736368656d6101a86f726967696e616cc403c100ffa5746f706963ab73656e736f725f646174",
    "61a76368616e6e656ca6776f726b6572a8617474656d70747305a56572726f72d9236e6f74206120",
    "53656e736f7252656164696e673a20696e76616c6964206d61726b6572a26174cf17979cffd76586",
    "00",
);

const EPOCH_COMPLETE_HEX: &str = concat!(
    "87a6736368656d6101a973656e736f725f6964a873656e736f722d31a565706f6368ce6553f100a8",
    "66726f6d5f73657101a6746f5f7365712aa96c6f676765725f6964a86c6f676765722d31a26174cf",
    "17979cffd7658600",
);

/// One golden case, type-erased so that every test below runs over all message types.
struct Case {
    /// File stem in `testdata/`.
    name: &'static str,
    /// The pinned encoding.
    hex: &'static str,
    /// The fixture encoded by the current encoder.
    encode: fn() -> Vec<u8>,
    /// The fixture as JSON (what `testdata/<name>.json` holds).
    json: fn() -> Value,
    /// Decodes bytes and says whether the result equals the fixture.
    decode_eq: fn(&[u8]) -> Result<bool, CodecError>,
    /// Required fields (every field but the optional ones).
    required: &'static [&'static str],
}

macro_rules! case {
    ($name:literal, $hex:ident, $ty:ty, $fixture:ident, $required:expr) => {
        Case {
            name: $name,
            hex: $hex,
            encode: || $fixture().encode().unwrap(),
            json: || serde_json::to_value($fixture()).unwrap(),
            decode_eq: |bytes| <$ty>::decode(bytes).map(|m| m == $fixture()),
            required: $required,
        }
    };
}

fn cases() -> Vec<Case> {
    vec![
        case!(
            "sensor_reading",
            READING_HEX,
            SensorReading,
            reading,
            &["schema", "sensor_id", "epoch", "seq", "taken_at", "values"]
        ),
        case!(
            "work_result",
            WORK_RESULT_HEX,
            WorkResult,
            work_result,
            &[
                "schema",
                "sensor_id",
                "epoch",
                "seq",
                "taken_at",
                "values",
                "squares",
                "worker_id",
                "computed_at",
            ]
        ),
        case!(
            "replay_request",
            REPLAY_REQUEST_HEX,
            ReplayRequest,
            replay_request,
            &[
                "schema",
                "sensor_id",
                "epoch",
                "from_seq",
                "to_seq",
                "requested_by",
                "requested_at",
            ]
        ),
        case!(
            "replay_unavailable",
            REPLAY_UNAVAILABLE_HEX,
            ReplayUnavailable,
            replay_unavailable,
            &["schema", "sensor_id", "epoch", "from_seq", "to_seq", "at"]
        ),
        case!(
            "sensor_status",
            SENSOR_STATUS_HEX,
            SensorStatus,
            sensor_status,
            &["schema", "sensor_id", "epoch", "last_seq", "at", "final"]
        ),
        case!(
            "epoch_complete",
            EPOCH_COMPLETE_HEX,
            EpochComplete,
            epoch_complete,
            &[
                "schema",
                "sensor_id",
                "epoch",
                "from_seq",
                "to_seq",
                "logger_id",
                "at"
            ]
        ),
        case!(
            "dead_letter",
            DEAD_LETTER_HEX,
            DeadLetter,
            dead_letter,
            &["schema", "original", "topic", "channel", "attempts", "error", "at",]
        ),
    ]
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn testdata(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(file)
}

/// Encodes a JSON map as a MessagePack map with the same keys, the way another writer would.
fn msgpack_of(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Golden vectors.

#[test]
fn encoder_output_matches_the_pinned_bytes() {
    for case in cases() {
        assert_eq!(
            to_hex(&(case.encode)()),
            case.hex,
            "encoding of {} changed: this breaks the wire contract",
            case.name
        );
    }
}

#[test]
fn pinned_bytes_decode_to_the_fixture() {
    for case in cases() {
        assert!(
            (case.decode_eq)(&from_hex(case.hex)).unwrap(),
            "{} decodes to another value",
            case.name
        );
    }
}

#[test]
fn testdata_files_match_the_encoder() {
    if std::env::var_os("MESSAGES_BLESS").is_some() {
        for case in cases() {
            let bin = testdata(&format!("{}.msgpack", case.name));
            std::fs::write(&bin, (case.encode)()).unwrap();
            let text = serde_json::to_string_pretty(&(case.json)()).unwrap() + "\n";
            std::fs::write(testdata(&format!("{}.json", case.name)), text).unwrap();
        }
    }
    for case in cases() {
        let bin = testdata(&format!("{}.msgpack", case.name));
        let json = testdata(&format!("{}.json", case.name));
        let on_disk = std::fs::read(&bin).unwrap();
        assert_eq!(to_hex(&on_disk), case.hex, "{} differs", bin.display());
        let on_disk: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(on_disk, (case.json)(), "{} differs", json.display());
    }
}

#[test]
fn golden_bytes_are_maps_with_named_fields() {
    // What a reader in another language sees: a map whose keys are the JSON keys.
    for case in cases() {
        let decoded: BTreeMap<String, IgnoredAny> =
            rmp_serde::from_slice(&from_hex(case.hex)).unwrap();
        let keys: Vec<String> = decoded.into_keys().collect();
        let json = (case.json)();
        let mut expected: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
        expected.sort();
        assert_eq!(keys, expected, "{}", case.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips.

#[test]
fn round_trips_with_edge_values() {
    let readings = [
        SensorReading {
            values: vec![],
            sensor_id: String::new(),
            ..reading()
        },
        SensorReading {
            schema: u8::MAX,
            sensor_id: "capteur-é-🌡".to_owned(),
            epoch: u64::MAX,
            seq: u64::MAX,
            taken_at: 0,
            values: (0..10_000).collect(),
        },
    ];
    for r in readings {
        assert_eq!(SensorReading::decode(&r.encode().unwrap()).unwrap(), r);
    }

    let results = [
        work_result(),
        WorkResult {
            stale: false,
            squares: vec![],
            values: vec![],
            ..work_result()
        },
    ];
    for r in results {
        assert_eq!(WorkResult::decode(&r.encode().unwrap()).unwrap(), r);
    }

    let status = SensorStatus {
        final_: false,
        ..sensor_status()
    };
    assert_eq!(
        SensorStatus::decode(&status.encode().unwrap()).unwrap(),
        status
    );

    let letter = DeadLetter {
        original: (0..=255).collect(),
        ..dead_letter()
    };
    assert_eq!(
        DeadLetter::decode(&letter.encode().unwrap()).unwrap(),
        letter
    );

    let request = replay_request();
    assert_eq!(
        ReplayRequest::decode(&request.encode().unwrap()).unwrap(),
        request
    );
    let unavailable = replay_unavailable();
    assert_eq!(
        ReplayUnavailable::decode(&unavailable.encode().unwrap()).unwrap(),
        unavailable
    );
}

#[test]
fn generic_code_can_use_the_message_trait() {
    fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: M) {
        let bytes = Message::encode(&m).unwrap();
        assert_eq!(<M as Message>::decode(&bytes).unwrap(), m);
    }
    round_trip(reading());
    round_trip(dead_letter());
    assert_eq!(SensorReading::NAME, "SensorReading");
}

#[test]
fn sensor_status_final_is_named_final_on_the_wire() {
    let value: Value = rmp_serde::from_slice(&sensor_status().encode().unwrap()).unwrap();
    // (serde_json::Value works here because SensorStatus has no bin field.)
    assert_eq!(value["final"], json!(true));
    assert!(value.get("final_").is_none());
}

#[test]
fn sensor_status_oldest_seq_is_optional() {
    // Written only when announced, so that the pinned bytes (a status without it) still
    // stand, and a status from an older sensor decodes with 0, "not announced".
    assert!(from_hex(SENSOR_STATUS_HEX) == sensor_status().encode().unwrap());
    assert_eq!(
        SensorStatus::decode(&from_hex(SENSOR_STATUS_HEX))
            .unwrap()
            .oldest_seq,
        0
    );
    let status = SensorStatus {
        oldest_seq: 7,
        ..sensor_status()
    };
    let bytes = status.encode().unwrap();
    let value: Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(value["oldest_seq"], json!(7));
    assert_eq!(SensorStatus::decode(&bytes).unwrap(), status);
}

#[test]
fn dead_letter_original_is_msgpack_bin() {
    // 0xc4 = bin 8: other languages get a byte string, not an array of integers.
    let bytes = dead_letter().encode().unwrap();
    let needle = [0xc4, 3, 0xc1, 0x00, 0xff];
    assert!(bytes.windows(needle.len()).any(|w| w == needle));
}

// ---------------------------------------------------------------------------------------------
// Compatibility rules.

#[test]
fn unknown_fields_are_ignored() {
    for case in cases() {
        let mut value = (case.json)();
        let map = value.as_object_mut().unwrap();
        map.insert(
            "added_in_v2".to_owned(),
            json!({"nested": [1, "two", null]}),
        );
        map.insert("zz_note".to_owned(), json!("hello"));
        assert!(
            (case.decode_eq)(&msgpack_of(&value)).unwrap(),
            "{} with extra fields",
            case.name
        );
    }
}

#[test]
fn missing_required_field_is_an_error_naming_it() {
    for case in cases() {
        for field in case.required {
            let mut value = (case.json)();
            value.as_object_mut().unwrap().remove(*field);
            let err = (case.decode_eq)(&msgpack_of(&value))
                .expect_err(&format!("{} without {field}", case.name));
            let text = err.to_string();
            assert!(
                text.contains(&format!("missing field `{field}`")),
                "{}: {text}",
                case.name
            );
            assert!(text.starts_with("not a "), "{text}");
        }
    }
}

#[test]
fn stale_is_optional_and_defaults_to_false() {
    let mut value = serde_json::to_value(work_result()).unwrap();
    value.as_object_mut().unwrap().remove("stale");
    let decoded = WorkResult::decode(&msgpack_of(&value)).unwrap();
    assert!(!decoded.stale);
    assert_eq!(
        decoded,
        WorkResult {
            stale: false,
            ..work_result()
        }
    );
}

#[test]
fn schema_zero_is_rejected() {
    for case in cases() {
        let mut value = (case.json)();
        value["schema"] = json!(0);
        let err = (case.decode_eq)(&msgpack_of(&value)).unwrap_err();
        assert!(
            matches!(err, CodecError::InvalidSchema { found: 0, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("invalid schema version 0"),
            "{err}"
        );
    }
}

#[test]
fn newer_schema_still_decodes_when_fields_fit() {
    let mut value = serde_json::to_value(reading()).unwrap();
    value["schema"] = json!(SCHEMA_VERSION + 1);
    value["humidity"] = json!(0.5);
    let decoded = SensorReading::decode(&msgpack_of(&value)).unwrap();
    assert_eq!(decoded.schema, SCHEMA_VERSION + 1);
    assert_eq!(decoded.values, reading().values);
}

#[test]
fn wrong_field_type_is_an_error() {
    let mut value = serde_json::to_value(reading()).unwrap();
    value["seq"] = json!("42");
    let err = SensorReading::decode(&msgpack_of(&value)).unwrap_err();
    assert!(matches!(err, CodecError::Decode { .. }), "{err}");

    let mut value = serde_json::to_value(reading()).unwrap();
    value["values"] = json!([1, -1]);
    assert!(SensorReading::decode(&msgpack_of(&value)).is_err());

    let mut value = serde_json::to_value(reading()).unwrap();
    value["schema"] = json!(256);
    assert!(SensorReading::decode(&msgpack_of(&value)).is_err());
}

#[test]
fn another_message_type_is_rejected() {
    let status = sensor_status().encode().unwrap();
    let err = SensorReading::decode(&status).unwrap_err().to_string();
    assert!(err.starts_with("not a SensorReading: "), "{err}");
    assert!(err.contains("missing field `seq`"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hostile input: errors, never panics.

#[test]
fn empty_input_is_an_error() {
    for case in cases() {
        assert!((case.decode_eq)(&[]).is_err(), "{}", case.name);
    }
}

#[test]
fn every_truncation_is_an_error() {
    for case in cases() {
        let bytes = from_hex(case.hex);
        for len in 0..bytes.len() {
            assert!(
                (case.decode_eq)(&bytes[..len]).is_err(),
                "{} truncated to {len} bytes decoded",
                case.name
            );
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = reading().encode().unwrap();
    bytes.extend_from_slice(&[0x01, 0x02]);
    let err = SensorReading::decode(&bytes).unwrap_err();
    assert!(
        matches!(err, CodecError::TrailingBytes { trailing: 2, .. }),
        "{err}"
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for _ in 0..20_000 {
        let len = rng.random_range(0..64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        for case in cases() {
            let _ = (case.decode_eq)(&bytes);
        }
    }
}

#[test]
fn mutated_golden_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0xbad);
    for case in cases() {
        let golden = from_hex(case.hex);
        for _ in 0..2_000 {
            let mut bytes = golden.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            let _ = (case.decode_eq)(&bytes);
        }
    }
}

#[test]
fn forged_lengths_do_not_allocate_or_panic() {
    // map32 with 4 billion entries; str32 and bin32 claiming 4 GiB.
    let inputs: [&[u8]; 4] = [
        &[0xdf, 0xff, 0xff, 0xff, 0xff],
        &[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b's'],
        &[
            0x81, 0xa6, b'v', b'a', b'l', b'u', b'e', b's', 0xdd, 0xff, 0xff, 0xff, 0xff,
        ],
        &[
            0x81, 0xa8, b'o', b'r', b'i', b'g', b'i', b'n', b'a', b'l', 0xc6, 0xff, 0xff, 0xff,
            0xff,
        ],
    ];
    for bytes in inputs {
        for case in cases() {
            assert!((case.decode_eq)(bytes).is_err());
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // An unknown field holding 100k nested arrays.
    let mut bytes = vec![0x81, 0xa1, b'x'];
    bytes.extend(std::iter::repeat_n(0x91, 100_000));
    bytes.push(0xc0);
    for case in cases() {
        assert!((case.decode_eq)(&bytes).is_err());
    }
}

/// `encode` sizes its buffer up front for the two messages of the hot path: the hint is never
/// below the encoded length (no growth on the way) and not far above it (the sensor keeps
/// encoded readings in its outbox).
#[test]
fn the_encode_buffer_is_sized_up_front() {
    use messages::Message as _;
    for n in [0usize, 1, 3, 44, 200] {
        let reading = SensorReading {
            schema: SCHEMA_VERSION,
            sensor_id: "sensor-with-a-long-name".into(),
            epoch: u64::MAX,
            seq: u64::MAX,
            taken_at: u64::MAX,
            values: vec![u32::MAX; n],
        };
        let bytes = reading.encode().unwrap();
        let hint = reading.encoded_len_hint();
        assert!(
            hint >= bytes.len(),
            "reading, {n} values: {hint} < {}",
            bytes.len()
        );
        assert!(hint <= bytes.len() + 128, "reading, {n} values: {hint}");
        let result = WorkResult {
            schema: SCHEMA_VERSION,
            squares: vec![u64::MAX; n],
            sensor_id: reading.sensor_id.clone(),
            epoch: u64::MAX,
            seq: u64::MAX,
            taken_at: u64::MAX,
            values: reading.values.clone(),
            worker_id: "worker-with-a-long-name-12345".into(),
            computed_at: u64::MAX,
            stale: true,
        };
        let bytes = result.encode().unwrap();
        let hint = result.encoded_len_hint();
        assert!(
            hint >= bytes.len(),
            "result, {n} values: {hint} < {}",
            bytes.len()
        );
        assert!(hint <= bytes.len() + 256, "result, {n} values: {hint}");
    }
}
