//! The NSQ TCP protocol V2 on the wire: command encoding, frame decoding, name rules.
//!
//! Everything here is pure (no I/O), so it is unit-tested byte for byte. The format follows
//! <https://nsq.io/clients/tcp_protocol_spec.html>: every integer is big endian; a frame is
//! `size: u32 | frame type: u32 | data`, where `size` counts the frame type and the data.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;

/// The four bytes a client sends first to choose protocol V2.
pub const MAGIC_V2: &[u8; 4] = b"  V2";

/// Frame type of a response (`OK`, `_heartbeat_`, `CLOSE_WAIT`, IDENTIFY's JSON).
pub const FRAME_RESPONSE: u32 = 0;
/// Frame type of an error (`E_INVALID ...`).
pub const FRAME_ERROR: u32 = 1;
/// Frame type of a message pushed to a subscribed consumer.
pub const FRAME_MESSAGE: u32 = 2;

/// The heartbeat nsqd sends; the client must answer with a command (`NOP`).
pub const HEARTBEAT: &[u8] = b"_heartbeat_";
/// nsqd's answer to `CLS`.
pub const CLOSE_WAIT: &[u8] = b"CLOSE_WAIT";
/// nsqd's plain success response.
pub const OK: &[u8] = b"OK";

/// Length of a message ID on the wire (16 ASCII hex digits).
pub const MSG_ID_LEN: usize = 16;
/// Bytes before the body in a message frame: timestamp (8), attempts (2), id (16).
const MESSAGE_HEADER_LEN: usize = 8 + 2 + MSG_ID_LEN;

/// Largest frame we accept from nsqd. nsqd's own limits are far lower (`--max-msg-size`
/// defaults to 1 MiB); this bound only protects us from a corrupt size prefix.
pub const MAX_FRAME_SIZE: usize = 256 * 1024 * 1024;

/// nsqd's default `--max-msg-size`. nsqd v1.3.0 does not announce its limit in the
/// IDENTIFY response, so producers check against a configured value that defaults to this.
pub const DEFAULT_MAX_MSG_SIZE: usize = 1024 * 1024;
/// nsqd's default `--max-body-size` (the whole MPUB body).
pub const DEFAULT_MAX_BODY_SIZE: usize = 5 * 1024 * 1024;

/// A message ID as nsqd sends it: 16 ASCII bytes, echoed back in FIN/REQ/TOUCH.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(pub [u8; MSG_ID_LEN]);

impl MessageId {
    /// The ID as text (nsqd's IDs are ASCII hex).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("<non-utf8 id>")
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message frame's content.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// When nsqd first received the message (unix nanoseconds).
    pub timestamp: i64,
    /// How many times nsqd has delivered it, this delivery included.
    pub attempts: u16,
    /// nsqd's ID for the message.
    pub id: MessageId,
    /// The payload, shared with the read buffer (no copy).
    pub body: Bytes,
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A response frame.
    Response(Bytes),
    /// An error frame (`E_... text`).
    Error(Bytes),
    /// A message frame.
    Message(RawMessage),
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when more bytes are
/// needed. Malformed input gives an error rather than a panic.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if size < 4 {
        return Err(ProtocolError::Malformed(format!(
            "frame size {size} is smaller than 4"
        )));
    }
    if size > MAX_FRAME_SIZE {
        return Err(ProtocolError::Malformed(format!(
            "frame size {size} is larger than {MAX_FRAME_SIZE}"
        )));
    }
    if buf.len() < 4 + size {
        // No `reserve(size)` here: the size is only announced, and reserving it would let
        // 8 bytes claim up to MAX_FRAME_SIZE of memory. The reader grows the buffer as the
        // bytes actually arrive.
        return Ok(None);
    }
    buf.advance(4);
    let mut frame = buf.split_to(size).freeze();
    let frame_type = frame.get_u32();
    match frame_type {
        FRAME_RESPONSE => Ok(Some(Frame::Response(frame))),
        FRAME_ERROR => Ok(Some(Frame::Error(frame))),
        FRAME_MESSAGE => {
            if frame.len() < MESSAGE_HEADER_LEN {
                return Err(ProtocolError::Malformed(format!(
                    "message frame of {} bytes is shorter than its {MESSAGE_HEADER_LEN}-byte header",
                    frame.len()
                )));
            }
            let timestamp = frame.get_i64();
            let attempts = frame.get_u16();
            let mut id = [0u8; MSG_ID_LEN];
            frame.copy_to_slice(&mut id);
            Ok(Some(Frame::Message(RawMessage {
                timestamp,
                attempts,
                id: MessageId(id),
                body: frame,
            })))
        }
        other => Err(ProtocolError::Malformed(format!(
            "unknown frame type {other}"
        ))),
    }
}

/// Appends commands to an output buffer. The buffer is written out by a connection's writer,
/// many commands at a time.
pub mod encode {
    use super::*;

    fn body(out: &mut BytesMut, body: &[u8]) {
        out.put_u32(body.len() as u32);
        out.put_slice(body);
    }

    /// `IDENTIFY\n` + JSON body.
    pub fn identify(out: &mut BytesMut, json: &[u8]) {
        out.put_slice(b"IDENTIFY\n");
        body(out, json);
    }

    /// `AUTH\n` + secret.
    pub fn auth(out: &mut BytesMut, secret: &[u8]) {
        out.put_slice(b"AUTH\n");
        body(out, secret);
    }

    /// `SUB <topic> <channel>\n`.
    pub fn sub(out: &mut BytesMut, topic: &str, channel: &str) {
        out.put_slice(b"SUB ");
        out.put_slice(topic.as_bytes());
        out.put_u8(b' ');
        out.put_slice(channel.as_bytes());
        out.put_u8(b'\n');
    }

    /// `PUB <topic>\n` + body.
    pub fn publish(out: &mut BytesMut, topic: &str, msg: &[u8]) {
        out.put_slice(b"PUB ");
        out.put_slice(topic.as_bytes());
        out.put_u8(b'\n');
        body(out, msg);
    }

    /// `DPUB <topic> <defer_ms>\n` + body.
    pub fn deferred_publish(out: &mut BytesMut, topic: &str, defer_ms: u64, msg: &[u8]) {
        out.put_slice(b"DPUB ");
        out.put_slice(topic.as_bytes());
        out.put_u8(b' ');
        out.put_slice(defer_ms.to_string().as_bytes());
        out.put_u8(b'\n');
        body(out, msg);
    }

    /// `MPUB <topic>\n` + body size + count + (size + body)*.
    pub fn multi_publish(out: &mut BytesMut, topic: &str, msgs: &[Bytes]) {
        out.put_slice(b"MPUB ");
        out.put_slice(topic.as_bytes());
        out.put_u8(b'\n');
        let total: usize = 4 + msgs.iter().map(|m| 4 + m.len()).sum::<usize>();
        out.put_u32(total as u32);
        out.put_u32(msgs.len() as u32);
        for m in msgs {
            body(out, m);
        }
    }

    /// `RDY <count>\n`.
    pub fn rdy(out: &mut BytesMut, count: u32) {
        out.put_slice(b"RDY ");
        out.put_slice(count.to_string().as_bytes());
        out.put_u8(b'\n');
    }

    /// `FIN <id>\n`.
    pub fn fin(out: &mut BytesMut, id: &MessageId) {
        out.put_slice(b"FIN ");
        out.put_slice(&id.0);
        out.put_u8(b'\n');
    }

    /// `REQ <id> <timeout_ms>\n`.
    pub fn req(out: &mut BytesMut, id: &MessageId, delay_ms: u64) {
        out.put_slice(b"REQ ");
        out.put_slice(&id.0);
        out.put_u8(b' ');
        out.put_slice(delay_ms.to_string().as_bytes());
        out.put_u8(b'\n');
    }

    /// `TOUCH <id>\n`.
    pub fn touch(out: &mut BytesMut, id: &MessageId) {
        out.put_slice(b"TOUCH ");
        out.put_slice(&id.0);
        out.put_u8(b'\n');
    }

    /// `NOP\n`, the answer to a heartbeat.
    pub fn nop(out: &mut BytesMut) {
        out.put_slice(b"NOP\n");
    }

    /// `CLS\n`: the consumer wants to close; nsqd answers `CLOSE_WAIT` and sends no more.
    pub fn cls(out: &mut BytesMut) {
        out.put_slice(b"CLS\n");
    }
}

/// True when `name` is a valid topic name: 1 to 64 characters of `[.a-zA-Z0-9_-]`, optionally
/// ending in `#ephemeral` (nsqd's `protocol.IsValidTopicName`).
pub fn is_valid_topic_name(name: &str) -> bool {
    is_valid_name(name)
}

/// True when `name` is a valid channel name (same rule as topics).
pub fn is_valid_channel_name(name: &str) -> bool {
    is_valid_name(name)
}

fn is_valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 64 {
        return false;
    }
    let base = name.strip_suffix("#ephemeral").unwrap_or(name);
    !base.is_empty()
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The IDENTIFY body we send (only the fields we use).
#[derive(Debug, Clone, Serialize)]
pub struct Identify {
    /// Shown by nsqadmin as the client's name.
    pub client_id: String,
    /// Shown by nsqadmin as the client's host.
    pub hostname: String,
    /// Library/application name and version, shown by nsqadmin.
    pub user_agent: String,
    /// Ask nsqd to answer with its settings as JSON.
    pub feature_negotiation: bool,
    /// Heartbeat interval in ms (nsqd drops a client that misses two).
    pub heartbeat_interval: i64,
    /// Upgrade the connection to TLS right after IDENTIFY.
    pub tls_v1: bool,
    /// Per-connection message timeout in ms (0: nsqd's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_timeout: Option<u64>,
    /// nsqd's output buffer for this client, in bytes (-1 disables buffering).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_buffer_size: Option<i64>,
    /// How long nsqd may hold buffered output, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_buffer_timeout: Option<i64>,
}

/// nsqd's answer to IDENTIFY with feature negotiation (fields we read).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct IdentifyResponse {
    /// Largest RDY nsqd accepts (`--max-rdy-count`).
    #[serde(default)]
    pub max_rdy_count: i64,
    /// nsqd's version.
    #[serde(default)]
    pub version: String,
    /// The message timeout in effect for this connection (ms).
    #[serde(default)]
    pub msg_timeout: i64,
    /// Largest timeout a TOUCH can extend to (ms).
    #[serde(default)]
    pub max_msg_timeout: i64,
    /// Whether nsqd will now upgrade the connection to TLS.
    #[serde(default)]
    pub tls_v1: bool,
    /// Whether nsqd requires AUTH before anything else.
    #[serde(default)]
    pub auth_required: bool,
    /// The output-buffer timeout in effect for this connection (ms; 0: no timer).
    #[serde(default)]
    pub output_buffer_timeout: i64,
}

/// nsqd's answer to AUTH (the auth server's decision, relayed).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
pub struct AuthResponse {
    /// Who the secret identified.
    #[serde(default)]
    pub identity: String,
    /// Where that identity is described.
    #[serde(default)]
    pub identity_url: String,
    /// How many authorizations the identity has.
    #[serde(default)]
    pub permission_count: i64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn frame(frame_type: u32, data: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(4 + data.len() as u32);
        b.put_u32(frame_type);
        b.put_slice(data);
        b
    }

    #[test]
    fn decodes_response_error_and_message_frames() {
        let mut buf = frame(FRAME_RESPONSE, b"OK");
        buf.extend_from_slice(&frame(FRAME_ERROR, b"E_INVALID bad"));
        let mut msg = Vec::new();
        msg.extend_from_slice(&42i64.to_be_bytes());
        msg.extend_from_slice(&3u16.to_be_bytes());
        msg.extend_from_slice(b"0123456789abcdef");
        msg.extend_from_slice(b"hello");
        buf.extend_from_slice(&frame(FRAME_MESSAGE, &msg));

        match decode_frame(&mut buf).unwrap() {
            Some(Frame::Response(r)) => assert_eq!(&r[..], b"OK"),
            other => panic!("unexpected {other:?}"),
        }
        match decode_frame(&mut buf).unwrap() {
            Some(Frame::Error(e)) => assert_eq!(&e[..], b"E_INVALID bad"),
            other => panic!("unexpected {other:?}"),
        }
        match decode_frame(&mut buf).unwrap() {
            Some(Frame::Message(m)) => {
                assert_eq!(m.timestamp, 42);
                assert_eq!(m.attempts, 3);
                assert_eq!(m.id.as_str(), "0123456789abcdef");
                assert_eq!(&m.body[..], b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode_frame(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let full = frame(FRAME_RESPONSE, b"_heartbeat_");
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert!(decode_frame(&mut part).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let mut tiny = BytesMut::from(&[0u8, 0, 0, 2, 0, 0][..]);
        assert!(decode_frame(&mut tiny).is_err());
        let mut short_msg = frame(FRAME_MESSAGE, b"too short");
        assert!(decode_frame(&mut short_msg).is_err());
        let mut unknown = frame(7, b"x");
        assert!(decode_frame(&mut unknown).is_err());
        let mut huge = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(decode_frame(&mut huge).is_err());
    }

    #[test]
    fn encodes_commands_byte_for_byte() {
        let mut out = BytesMut::new();
        encode::publish(&mut out, "t", b"ab");
        assert_eq!(&out[..], b"PUB t\n\x00\x00\x00\x02ab");

        let mut out = BytesMut::new();
        encode::multi_publish(
            &mut out,
            "t",
            &[Bytes::from_static(b"a"), Bytes::from_static(b"bc")],
        );
        assert_eq!(
            &out[..],
            b"MPUB t\n\x00\x00\x00\x0f\x00\x00\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x02bc"
        );

        let mut out = BytesMut::new();
        encode::deferred_publish(&mut out, "t", 1500, b"x");
        assert_eq!(&out[..], b"DPUB t 1500\n\x00\x00\x00\x01x");

        let id = MessageId(*b"0123456789abcdef");
        let mut out = BytesMut::new();
        encode::req(&mut out, &id, 250);
        encode::fin(&mut out, &id);
        encode::touch(&mut out, &id);
        encode::rdy(&mut out, 10);
        encode::sub(&mut out, "t", "c#ephemeral");
        assert_eq!(
            &out[..],
            &b"REQ 0123456789abcdef 250\nFIN 0123456789abcdef\nTOUCH 0123456789abcdef\nRDY 10\nSUB t c#ephemeral\n"[..]
        );
    }

    #[test]
    fn name_rules_match_nsqd() {
        for ok in [
            "a",
            "sensor_data",
            "a.b-c_d",
            "x#ephemeral",
            &"a".repeat(64),
        ] {
            assert!(is_valid_topic_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "ü",
            "#ephemeral",
            "a#b",
            &"a".repeat(65),
            "a/b",
            "a:b",
        ] {
            assert!(!is_valid_topic_name(bad), "{bad}");
        }
    }

    /// Property tests: arbitrary and near-valid bytes from nsqd (or from whatever answers on
    /// its port) never panic the decoder and never cost memory the bytes do not justify.
    /// `PROPTEST_CASES` scales every property (README, "Test it").
    pub(crate) mod props {
        use super::*;
        use crate::test_alloc::peak_during;
        use proptest::prelude::*;

        /// The default case count (256, or `PROPTEST_CASES`) divided by `div`, for the
        /// properties whose cases cost more.
        pub(crate) fn config(div: u32) -> ProptestConfig {
            let base = ProptestConfig::default();
            ProptestConfig {
                cases: (base.cases / div).max(1),
                ..base
            }
        }

        /// What a test means to send: a frame before encoding.
        #[derive(Debug, Clone, PartialEq)]
        pub(crate) enum Model {
            Response(Vec<u8>),
            Error(Vec<u8>),
            Message {
                timestamp: i64,
                attempts: u16,
                id: [u8; MSG_ID_LEN],
                body: Vec<u8>,
            },
        }

        impl Model {
            pub(crate) fn encode(&self, out: &mut Vec<u8>) {
                let (frame_type, data) = match self {
                    Model::Response(d) => (FRAME_RESPONSE, d.clone()),
                    Model::Error(d) => (FRAME_ERROR, d.clone()),
                    Model::Message {
                        timestamp,
                        attempts,
                        id,
                        body,
                    } => {
                        let mut d = Vec::new();
                        d.extend_from_slice(&timestamp.to_be_bytes());
                        d.extend_from_slice(&attempts.to_be_bytes());
                        d.extend_from_slice(id);
                        d.extend_from_slice(body);
                        (FRAME_MESSAGE, d)
                    }
                };
                out.extend_from_slice(&(4 + data.len() as u32).to_be_bytes());
                out.extend_from_slice(&frame_type.to_be_bytes());
                out.extend_from_slice(&data);
            }

            pub(crate) fn matches(&self, frame: &Frame) -> bool {
                match (self, frame) {
                    (Model::Response(d), Frame::Response(r)) => d[..] == r[..],
                    (Model::Error(d), Frame::Error(e)) => d[..] == e[..],
                    (
                        Model::Message {
                            timestamp,
                            attempts,
                            id,
                            body,
                        },
                        Frame::Message(m),
                    ) => {
                        *timestamp == m.timestamp
                            && *attempts == m.attempts
                            && *id == m.id.0
                            && body[..] == m.body[..]
                    }
                    _ => false,
                }
            }
        }

        pub(crate) fn model(max_body: usize) -> impl Strategy<Value = Model> {
            let body = proptest::collection::vec(any::<u8>(), 0..max_body);
            prop_oneof![
                body.clone().prop_map(Model::Response),
                body.clone().prop_map(Model::Error),
                (any::<i64>(), any::<u16>(), any::<[u8; MSG_ID_LEN]>(), body).prop_map(
                    |(timestamp, attempts, id, body)| Model::Message {
                        timestamp,
                        attempts,
                        id,
                        body
                    }
                ),
            ]
        }

        pub(crate) fn stream(frames: &[Model]) -> Vec<u8> {
            let mut out = Vec::new();
            for f in frames {
                f.encode(&mut out);
            }
            out
        }

        /// Decodes every complete frame of `buf`; stops at the first error.
        fn drain(buf: &mut BytesMut) -> (Vec<Frame>, Option<ProtocolError>) {
            let mut frames = Vec::new();
            loop {
                match decode_frame(buf) {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => return (frames, None),
                    Err(e) => return (frames, Some(e)),
                }
            }
        }

        /// Bytes a decoded frame holds (its data; header bytes are not in a `Frame`).
        fn data_len(f: &Frame) -> usize {
            match f {
                Frame::Response(b) | Frame::Error(b) => b.len(),
                Frame::Message(m) => m.body.len() + MESSAGE_HEADER_LEN,
            }
        }

        /// Memory one `drain` may take besides the input it was given: a `Vec<Frame>` of at
        /// most `len / 8` frames (a frame is at least 8 bytes on the wire) that doubles as
        /// it grows, and a constant for the shared-buffer header `split_to` creates and an
        /// error message (well under 1 KiB; 4 KiB leaves a wide margin). Decoding itself
        /// never copies data: frames share the input buffer.
        fn drain_bound(len: usize) -> usize {
            2 * (len / 8 + 1) * std::mem::size_of::<Frame>() + 4096
        }

        proptest! {
            #![proptest_config(config(1))]

            /// Any valid frame stream, cut into any chunks as TCP may deliver it, decodes to
            /// exactly the frames that were sent, and nothing is left over.
            #[test]
            fn frames_round_trip_through_any_chunking(
                frames in proptest::collection::vec(model(300), 0..8),
                chunks in proptest::collection::vec(1usize..64, 1..16),
            ) {
                let bytes = stream(&frames);
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                let (mut at, mut k) = (0, 0);
                while at < bytes.len() {
                    let n = chunks[k % chunks.len()].min(bytes.len() - at);
                    buf.extend_from_slice(&bytes[at..at + n]);
                    at += n;
                    k += 1;
                    let (decoded, err) = drain(&mut buf);
                    prop_assert!(err.is_none(), "{err:?}");
                    got.extend(decoded);
                }
                prop_assert_eq!(got.len(), frames.len());
                for (model, frame) in frames.iter().zip(&got) {
                    prop_assert!(model.matches(frame), "{model:?} != {frame:?}");
                }
                prop_assert!(buf.is_empty());
            }

            /// Arbitrary bytes give frames, "need more" or an error, never a panic, and the
            /// decoder allocates no more than `drain_bound` (it never copies the data).
            #[test]
            fn arbitrary_bytes_never_panic_nor_overallocate(
                bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            ) {
                let mut buf = BytesMut::from(&bytes[..]);
                let ((frames, _err), peak) = peak_during(|| drain(&mut buf));
                let used: usize = frames.iter().map(|f| data_len(f) + 8).sum();
                prop_assert!(used + buf.len() <= bytes.len());
                prop_assert!(peak <= drain_bound(bytes.len()), "peak {peak} for {} bytes", bytes.len());
            }

            /// A header announcing a frame larger than what follows is "need more bytes"
            /// (or an error past MAX_FRAME_SIZE), and reserves nothing for the announced size.
            #[test]
            fn announced_sizes_are_not_reserved(
                size in any::<u32>(),
                frame_type in prop_oneof![Just(FRAME_RESPONSE), Just(FRAME_ERROR), Just(FRAME_MESSAGE), any::<u32>()],
                data in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let size = size.max(4 + data.len() as u32 + 1);
                let mut buf = BytesMut::new();
                buf.put_u32(size);
                buf.put_u32(frame_type);
                buf.put_slice(&data);
                let before = buf.capacity();
                let (result, peak) = peak_during(|| decode_frame(&mut buf));
                if size as usize > MAX_FRAME_SIZE {
                    prop_assert!(matches!(result, Err(ProtocolError::Malformed(_))), "{result:?}");
                } else {
                    prop_assert!(matches!(result, Ok(None)), "{result:?}");
                }
                // Only an error message may be allocated; the buffer did not grow.
                prop_assert!(peak <= 1024, "peak {peak} for a {size}-byte announcement");
                prop_assert_eq!(buf.capacity(), before);
            }

            /// A valid stream with some bytes overwritten never panics, and what decodes
            /// fits in the input.
            #[test]
            fn mutated_streams_never_panic(
                frames in proptest::collection::vec(model(64), 1..6),
                mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            ) {
                let mut bytes = stream(&frames);
                for (i, b) in &mutations {
                    let i = i.index(bytes.len());
                    bytes[i] = *b;
                }
                let mut buf = BytesMut::from(&bytes[..]);
                let ((frames, _err), peak) = peak_during(|| drain(&mut buf));
                let used: usize = frames.iter().map(|f| data_len(f) + 8).sum();
                prop_assert!(used + buf.len() <= bytes.len());
                prop_assert!(peak <= drain_bound(bytes.len()), "peak {peak} for {} bytes", bytes.len());
            }
        }

        proptest! {
            #![proptest_config(config(4))]

            /// A valid stream cut at every length decodes to exactly the frames that are
            /// complete in the prefix, then waits for more; never an error.
            #[test]
            fn truncated_at_every_length(frames in proptest::collection::vec(model(40), 1..5)) {
                let bytes = stream(&frames);
                let mut ends = Vec::new();
                let mut end = 0;
                for f in &frames {
                    let mut one = Vec::new();
                    f.encode(&mut one);
                    end += one.len();
                    ends.push(end);
                }
                for cut in 0..=bytes.len() {
                    let mut buf = BytesMut::from(&bytes[..cut]);
                    let (got, err) = drain(&mut buf);
                    prop_assert!(err.is_none(), "cut {cut}: {err:?}");
                    let complete = ends.iter().filter(|e| **e <= cut).count();
                    prop_assert_eq!(got.len(), complete, "cut {}", cut);
                    for (model, frame) in frames.iter().zip(&got) {
                        prop_assert!(model.matches(frame));
                    }
                    prop_assert_eq!(buf.len(), cut - ends[..complete].last().copied().unwrap_or(0));
                }
            }
        }

        proptest! {
            /// nsqd's JSON answers (IDENTIFY, AUTH) decode or fail cleanly on any bytes.
            #[test]
            fn handshake_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = serde_json::from_slice::<IdentifyResponse>(&bytes);
                let _ = serde_json::from_slice::<AuthResponse>(&bytes);
            }

            /// A real IDENTIFY answer with bytes overwritten or cut decodes or fails cleanly.
            #[test]
            fn mutated_identify_answers_never_panic(
                cut in any::<prop::sample::Index>(),
                mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            ) {
                let mut json = br#"{"max_rdy_count":2500,"version":"1.3.0","max_msg_timeout":900000,"msg_timeout":60000,"tls_v1":false,"deflate":false,"snappy":false,"sample_rate":0,"auth_required":false,"output_buffer_size":16384,"output_buffer_timeout":250}"#.to_vec();
                for (i, b) in &mutations {
                    let i = i.index(json.len());
                    json[i] = *b;
                }
                json.truncate(cut.index(json.len() + 1));
                let _ = serde_json::from_slice::<IdentifyResponse>(&json);
            }
        }
    }
}
