//! Reading an HTTP answer with a cap: whoever answers (nsqd, nsqlookupd, Consul, another
//! service) cannot make this process hold more than `max` bytes of it.
//!
//! ```no_run
//! # async fn example() -> Result<(), suite_common::body::BodyError> {
//! let response = reqwest::get("http://127.0.0.1:4161/lookup?topic=results").await?;
//! let body = suite_common::body::read_capped(response, 1 << 20).await?;
//! # drop(body); Ok(()) }
//! ```

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The answer is (or says it is) longer than the cap; nothing past the cap was read.
    #[error("the answer is longer than {max} bytes, the most accepted here")]
    TooLong {
        /// The cap, in bytes.
        max: usize,
    },
    /// The connection failed or timed out while reading.
    #[error("reading the answer failed: {0}")]
    Read(#[from] reqwest::Error),
}

/// The whole body of `response`, at most `max` bytes; [`BodyError::TooLong`] as soon as its
/// `Content-Length` or the bytes received pass `max`.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    let cap = u64::try_from(max).unwrap_or(u64::MAX);
    if response.content_length().is_some_and(|n| n > cap) {
        return Err(BodyError::TooLong { max });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLong { max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Answers one request on 127.0.0.1 with `head` then `body`; returns the URL.
    async fn serve_once(head: String, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await.unwrap();
            stream.write_all(head.as_bytes()).await.unwrap();
            // The client may hang up once the cap is passed.
            let _ = stream.write_all(&body).await;
        });
        format!("http://{addr}/")
    }

    /// A 200 answer with `Content-Length`.
    async fn sized(len: usize) -> reqwest::Response {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n");
        reqwest::get(serve_once(head, vec![b'x'; len]).await)
            .await
            .unwrap()
    }

    /// A 200 answer of `len` bytes in chunks of 1000, without `Content-Length`.
    async fn chunked(len: usize) -> reqwest::Response {
        let head =
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_owned();
        let mut body = Vec::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(1000);
            body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            body.extend(std::iter::repeat_n(b'x', n));
            body.extend_from_slice(b"\r\n");
            left -= n;
        }
        body.extend_from_slice(b"0\r\n\r\n");
        reqwest::get(serve_once(head, body).await).await.unwrap()
    }

    #[tokio::test]
    async fn a_body_up_to_the_cap_is_read_whole() {
        assert_eq!(
            read_capped(sized(4096).await, 4096).await.unwrap().len(),
            4096
        );
        assert_eq!(
            read_capped(chunked(4096).await, 4096).await.unwrap().len(),
            4096
        );
        assert!(read_capped(sized(0).await, 4096).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_an_error_that_names_the_cap() {
        for response in [sized(4097).await, chunked(4097).await] {
            let e = read_capped(response, 4096).await.unwrap_err();
            assert!(matches!(e, BodyError::TooLong { max: 4096 }), "{e:?}");
            assert_eq!(
                e.to_string(),
                "the answer is longer than 4096 bytes, the most accepted here"
            );
        }
    }
}
