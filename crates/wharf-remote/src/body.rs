//! Reading an HTTP answer of known length chunk by chunk: a range of a blob from a registry, a range of a file from
//! a file server (P2P URL tasks), a piece from a peer. Each chunk is handed on as it arrives (peers relay it), more
//! than asked for is refused as soon as it shows, and an answer that ends short is told apart from a failed read.

use std::future::Future;

use bytes::{Bytes, BytesMut};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the answer: {0}")]
    Read(#[source] reqwest::Error),
    #[error("more bytes than asked for")]
    TooLong,
    #[error("ended after {got} bytes")]
    Short { got: usize },
}

/// Reads `resp`'s body, which must be exactly `want` bytes, passing each chunk to `on_chunk` (and awaiting it: a
/// reader may pace itself there) after it is kept.
pub async fn read_exact<F, Fut>(resp: &mut reqwest::Response, want: usize, mut on_chunk: F) -> Result<Bytes, BodyError>
where
    F: FnMut(Bytes) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut body = BytesMut::with_capacity(want.min(64 << 20));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > want {
            return Err(BodyError::TooLong);
        }
        body.extend_from_slice(&chunk);
        on_chunk(chunk).await;
    }
    if body.len() != want {
        return Err(BodyError::Short { got: body.len() });
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &'static [u8]) -> reqwest::Response {
        reqwest::Response::from(axum::http::Response::new(body.to_vec()))
    }

    #[tokio::test]
    async fn exactly_the_length_asked_for_is_read_and_handed_on_the_rest_refused() {
        let mut seen = Vec::new();
        let got = read_exact(&mut answer(b"0123456789"), 10, |c| {
            seen.extend_from_slice(&c);
            std::future::ready(())
        })
        .await
        .unwrap();
        assert_eq!((&got[..], &seen[..]), (&b"0123456789"[..], &b"0123456789"[..]));
        let nothing = |_| std::future::ready(());
        let e = read_exact(&mut answer(b"0123456789"), 9, nothing).await.unwrap_err();
        assert!(matches!(e, BodyError::TooLong), "{e}");
        let e = read_exact(&mut answer(b"0123456789"), 11, nothing).await.unwrap_err();
        assert!(matches!(e, BodyError::Short { got: 10 }), "{e}");
    }
}
