//! Opening a connection to nsqd: TCP, the V2 magic, IDENTIFY, the optional TLS upgrade and
//! AUTH. What comes out is a framed reader and a writer, used by the producer and the consumer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{ConnectionConfig, TlsSettings};
use crate::error::{ConnectError, ProtocolError};
use crate::protocol::{self, encode, AuthResponse, Frame, Identify, IdentifyResponse};

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The read side of a connection, plain or TLS.
pub(crate) enum ReadHalf {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>),
}

/// The write side of a connection, plain or TLS.
pub(crate) enum WriteHalf {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl WriteHalf {
    /// Writes `buf` out and flushes (TLS buffers inside); the error as a disconnect reason.
    pub(crate) async fn send(&mut self, buf: &[u8]) -> Result<(), String> {
        self.write_all(buf)
            .await
            .map_err(|e| format!("write failed: {e}"))?;
        self.flush().await.map_err(|e| format!("flush failed: {e}"))
    }
}

/// Reads whole frames off a stream, reusing one buffer.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next frame; `Ok(None)` when the peer closed the connection cleanly between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = protocol::decode_frame(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a frame",
                )));
            }
        }
    }

    fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }
}

/// Failure reading frames.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
}

/// An open, identified connection.
pub(crate) struct Connection {
    pub(crate) reader: FrameReader<ReadHalf>,
    pub(crate) writer: WriteHalf,
    pub(crate) identify: IdentifyResponse,
}

/// Opens and identifies a connection to `addr` (`host:port`), asking for
/// `output_buffer_timeout` (in ms, see [`crate::config::output_buffer_timeout_ms`]) when given.
pub(crate) async fn connect(
    addr: &str,
    config: &ConnectionConfig,
    output_buffer_timeout: Option<i64>,
) -> Result<Connection, ConnectError> {
    let timeout = config.connect_timeout;
    let io_err = |source| ConnectError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut tcp = with_timeout(addr, "connect", timeout, TcpStream::connect(addr))
        .await?
        .map_err(io_err)?;
    tcp.set_nodelay(true).map_err(io_err)?;

    let identify = Identify {
        client_id: config.client_id.clone(),
        hostname: config.hostname.clone(),
        user_agent: config.user_agent.clone(),
        feature_negotiation: true,
        heartbeat_interval: config.heartbeat_interval.as_millis() as i64,
        tls_v1: config.tls.is_some(),
        msg_timeout: config.msg_timeout.map(|d| d.as_millis() as u64),
        output_buffer_size: config.output_buffer_size,
        output_buffer_timeout,
    };
    let json = serde_json::to_vec(&identify).map_err(|e| ConnectError::Handshake {
        addr: addr.to_string(),
        reason: format!("cannot encode IDENTIFY: {e}"),
    })?;
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(protocol::MAGIC_V2);
    encode::identify(&mut out, &json);
    tcp.write_all(&out).await.map_err(io_err)?;

    let mut reader = FrameReader::new(tcp);
    let resp = handshake_response(addr, "IDENTIFY", timeout, &mut reader).await?;
    let identify: IdentifyResponse =
        serde_json::from_slice(&resp).map_err(|e| ConnectError::Protocol {
            addr: addr.to_string(),
            source: ProtocolError::Unexpected {
                stage: "IDENTIFY",
                got: format!("{} ({e})", String::from_utf8_lossy(&resp)),
            },
        })?;

    tracing::debug!(
        nsqd = addr,
        version = %identify.version,
        msg_timeout_ms = identify.msg_timeout,
        max_msg_timeout_ms = identify.max_msg_timeout,
        max_rdy_count = identify.max_rdy_count,
        "nsqd answered IDENTIFY"
    );
    let (mut reader, mut writer) = match &config.tls {
        Some(tls) => {
            if !identify.tls_v1 {
                return Err(ConnectError::Handshake {
                    addr: addr.to_string(),
                    reason: "TLS was asked for but nsqd has no TLS configured (start it with --tls-cert/--tls-key)".into(),
                });
            }
            let (tcp, leftover) = reader.into_parts();
            if !leftover.is_empty() {
                return Err(ConnectError::Protocol {
                    addr: addr.to_string(),
                    source: ProtocolError::Malformed("bytes after IDENTIFY before TLS".into()),
                });
            }
            let stream = tls_upgrade(addr, tls, tcp, timeout).await?;
            let (r, w) = tokio::io::split(stream);
            let mut reader = FrameReader::new(ReadHalf::Tls(r));
            let ok = handshake_response(addr, "TLS upgrade", timeout, &mut reader).await?;
            expect_ok(addr, "TLS upgrade", &ok)?;
            (reader, WriteHalf::Tls(w))
        }
        None => {
            let (tcp, leftover) = reader.into_parts();
            let (r, w) = tcp.into_split();
            let mut reader = FrameReader::new(ReadHalf::Tcp(r));
            reader.buf = leftover;
            (reader, WriteHalf::Tcp(w))
        }
    };

    if identify.auth_required {
        let Some(secret) = &config.auth_secret else {
            return Err(ConnectError::Handshake {
                addr: addr.to_string(),
                reason: "nsqd requires AUTH but no auth secret is configured".into(),
            });
        };
        let mut out = BytesMut::new();
        encode::auth(&mut out, secret.as_bytes());
        writer.write_all(&out).await.map_err(io_err)?;
        writer.flush().await.map_err(io_err)?;
        let resp = handshake_response(addr, "AUTH", timeout, &mut reader).await?;
        let auth: AuthResponse =
            serde_json::from_slice(&resp).map_err(|e| ConnectError::Handshake {
                addr: addr.to_string(),
                reason: format!(
                    "AUTH answer is not JSON: {} ({e})",
                    String::from_utf8_lossy(&resp)
                ),
            })?;
        tracing::info!(nsqd = addr, identity = %auth.identity, permissions = auth.permission_count, "authenticated with nsqd");
    }

    Ok(Connection {
        reader,
        writer,
        identify,
    })
}

/// True when nsqd refused IDENTIFY because of the output-buffer timeout asked for: outside its
/// `--min-output-buffer-timeout` .. `--max-output-buffer-timeout`. nsqd v1.3.0 answers
/// `E_BAD_BODY IDENTIFY output buffer timeout (N) is invalid` (`clientV2.SetOutputBuffer`)
/// and closes the connection.
pub(crate) fn refused_output_buffer_timeout(err: &ConnectError) -> bool {
    matches!(err, ConnectError::Handshake { reason, .. }
        if reason.contains("E_BAD_BODY") && reason.contains("output buffer timeout (") && reason.contains("is invalid"))
}

async fn with_timeout<T>(
    addr: &str,
    stage: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, ConnectError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: addr.to_string(),
            stage,
            timeout,
        })
}

/// Reads the answer to a handshake command: a response frame's data, or the error nsqd sent.
pub(crate) async fn handshake_response<R: AsyncRead + Unpin>(
    addr: &str,
    stage: &'static str,
    timeout: Duration,
    reader: &mut FrameReader<R>,
) -> Result<bytes::Bytes, ConnectError> {
    loop {
        let frame = with_timeout(addr, stage, timeout, reader.next()).await?;
        let frame = frame.map_err(|e| match e {
            ReadError::Io(source) => ConnectError::Io {
                addr: addr.to_string(),
                source,
            },
            ReadError::Protocol(source) => ConnectError::Protocol {
                addr: addr.to_string(),
                source,
            },
        })?;
        match frame {
            Some(Frame::Response(r)) if r.as_ref() == protocol::HEARTBEAT => continue,
            Some(Frame::Response(r)) => return Ok(r),
            Some(Frame::Error(e)) => {
                return Err(ConnectError::Handshake {
                    addr: addr.to_string(),
                    reason: format!("{stage}: {}", String::from_utf8_lossy(&e)),
                })
            }
            Some(Frame::Message(_)) => {
                return Err(ConnectError::Protocol {
                    addr: addr.to_string(),
                    source: ProtocolError::Unexpected {
                        stage,
                        got: "a message frame".into(),
                    },
                })
            }
            None => {
                return Err(ConnectError::Io {
                    addr: addr.to_string(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("nsqd closed the connection during {stage}"),
                    ),
                })
            }
        }
    }
}

fn expect_ok(addr: &str, stage: &'static str, resp: &[u8]) -> Result<(), ConnectError> {
    if resp == protocol::OK {
        Ok(())
    } else {
        Err(ConnectError::Protocol {
            addr: addr.to_string(),
            source: ProtocolError::Unexpected {
                stage,
                got: String::from_utf8_lossy(resp).into_owned(),
            },
        })
    }
}

async fn tls_upgrade(
    addr: &str,
    tls: &TlsSettings,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<TlsStream, ConnectError> {
    let host = match &tls.server_name {
        Some(name) => name.clone(),
        None => host_of(addr).to_string(),
    };
    let server_name =
        rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| ConnectError::Tls {
            addr: addr.to_string(),
            reason: format!("{host:?} is not a valid TLS server name: {e}"),
        })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client_config));
    with_timeout(
        addr,
        "TLS handshake",
        timeout,
        connector.connect(server_name, tcp),
    )
    .await?
    .map_err(|e| ConnectError::Tls {
        addr: addr.to_string(),
        reason: e.to_string(),
    })
}

/// The host part of `host:port` (`[v6]:port` too).
pub(crate) fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod props {
    use std::future::Future;
    use std::task::Waker;

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::tests::props::{config, model, stream};
    use crate::test_alloc::peak_during;

    /// An in-memory stream that hands out at most `chunk` bytes per read, as TCP may.
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this
                .chunk
                .min(buf.remaining())
                .min(this.data.len() - this.at);
            buf.put_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Polls `fut` once: the readers here never wait, so it is ready at once.
    fn now<F: Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("an in-memory read waited"),
        }
    }

    /// Reads frames until the end or an error: the frames, and how it ended.
    fn read_all(reader: &mut FrameReader<Chunked>) -> (Vec<Frame>, Result<(), ReadError>) {
        let mut frames = Vec::new();
        loop {
            match now(reader.next()) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, Ok(())),
                Err(e) => return (frames, Err(e)),
            }
        }
    }

    /// What a `FrameReader` may hold for `len` bytes received: its 64 KiB start buffer, one
    /// more 64 KiB step, and twice what arrived (the buffer grows by doubling), plus the
    /// decoded frames' list and an error message (`4 KiB` is far above both for these sizes).
    fn reader_bound(len: usize) -> usize {
        2 * 64 * 1024 + 2 * len + 2 * (len / 8 + 1) * std::mem::size_of::<Frame>() + 4096
    }

    proptest! {
        #![proptest_config(config(1))]

        /// Frames read off a stream arriving in any chunk size are the frames sent; a stream
        /// cut in the middle of a frame is an `UnexpectedEof` error, cut between frames a
        /// clean end.
        #[test]
        fn reader_round_trips_and_reports_torn_frames(
            frames in proptest::collection::vec(model(300), 0..6),
            chunk in 1usize..100,
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = stream(&frames);
            let cut = cut.index(bytes.len() + 1);
            let mut ends = vec![0];
            let mut end = 0;
            for f in &frames {
                let mut one = Vec::new();
                f.encode(&mut one);
                end += one.len();
                ends.push(end);
            }
            let mut reader = FrameReader::new(Chunked { data: bytes[..cut].to_vec(), at: 0, chunk });
            let (got, end) = read_all(&mut reader);
            let complete = ends.iter().filter(|e| **e <= cut).count() - 1;
            prop_assert_eq!(got.len(), complete);
            for (model, frame) in frames.iter().zip(&got) {
                prop_assert!(model.matches(frame), "{model:?} != {frame:?}");
            }
            if ends.contains(&cut) {
                prop_assert!(end.is_ok(), "{end:?}");
            } else {
                prop_assert!(
                    matches!(&end, Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof),
                    "{end:?}"
                );
            }
        }

        /// Arbitrary bytes, and headers announcing huge frames with little behind them,
        /// never panic the reader, and it holds no more than `reader_bound`.
        #[test]
        fn reader_allocates_what_arrives_not_what_is_announced(
            size in prop_oneof![any::<u32>(), (crate::protocol::MAX_FRAME_SIZE as u32 - 64)..=crate::protocol::MAX_FRAME_SIZE as u32],
            tail in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..5000,
        ) {
            let mut bytes = size.to_be_bytes().to_vec();
            bytes.extend_from_slice(&tail);
            let len = bytes.len();
            let ((frames, _end), peak) = peak_during(|| {
                let mut reader = FrameReader::new(Chunked { data: bytes, at: 0, chunk });
                read_all(&mut reader)
            });
            prop_assert!(frames.len() <= len / 8);
            prop_assert!(peak <= reader_bound(len), "peak {peak} for {len} bytes");
        }
    }

    proptest! {
        #![proptest_config(config(8))]

        /// One big frame trickling in: the buffer grows with what arrived (doubling), so
        /// the peak stays within `reader_bound` of the frame's real size.
        #[test]
        fn a_big_frame_costs_its_size(
            len in 0usize..400_000,
            chunk in 1000usize..20_000,
        ) {
            let mut bytes = Vec::with_capacity(len + 8);
            bytes.extend_from_slice(&(4 + len as u32).to_be_bytes());
            bytes.extend_from_slice(&protocol::FRAME_RESPONSE.to_be_bytes());
            bytes.resize(len + 8, b'x');
            let total = bytes.len();
            let ((frames, end), peak) = peak_during(|| {
                let mut reader = FrameReader::new(Chunked { data: bytes, at: 0, chunk });
                read_all(&mut reader)
            });
            prop_assert!(end.is_ok(), "{end:?}");
            prop_assert!(matches!(&frames[..], [Frame::Response(r)] if r.len() == len));
            prop_assert!(peak <= reader_bound(total), "peak {peak} for {total} bytes");
        }
    }

    proptest! {
        #![proptest_config(config(2))]

        /// Whatever nsqd (or an impostor on its port) answers to IDENTIFY, the handshake
        /// returns the response or an error; it never panics.
        #[test]
        fn handshake_answers_never_panic(
            frames in proptest::collection::vec(model(64), 0..3),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
            chunk in 1usize..64,
        ) {
            let mut bytes = stream(&frames);
            bytes.extend_from_slice(&garbage);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut reader = FrameReader::new(Chunked { data: bytes, at: 0, chunk });
            let result = rt.block_on(handshake_response(
                "127.0.0.1:4150",
                "IDENTIFY",
                Duration::from_secs(5),
                &mut reader,
            ));
            if let Ok(resp) = result {
                prop_assert!(resp.as_ref() != protocol::HEARTBEAT);
            }
        }
    }
}
