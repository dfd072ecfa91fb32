//! A stream adapter that hashes a blob on its way from source to destination and withholds the last chunk when
//! the digest or the size is wrong: the destination then sees an error instead of a complete blob, so it never
//! commits bytes under a digest they do not have.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use wharf_oci::{Digest, DigestHasher};

use crate::{BlobStream, Error};

pub(crate) struct Verifying {
    inner: BlobStream,
    hasher: Option<DigestHasher>,
    expected: Digest,
    size: u64,
    seen: u64,
    from: String,
    /// Bytes passed on, shared with the caller for the report.
    moved: Arc<AtomicU64>,
    done: bool,
}

impl Verifying {
    pub(crate) fn new(inner: BlobStream, expected: Digest, size: u64, from: String, moved: Arc<AtomicU64>) -> Self {
        Verifying {
            inner,
            hasher: Some(DigestHasher::new(expected.algorithm())),
            expected,
            size,
            seen: 0,
            from,
            moved,
            done: false,
        }
    }

    /// Called once every byte has been hashed: the final verdict.
    fn check(&mut self) -> Result<(), Error> {
        let computed = self.hasher.take().map(DigestHasher::finish);
        match computed {
            Some(c) if c != self.expected => Err(Error::DigestMismatch {
                expected: self.expected.clone(),
                computed: c,
                from: self.from.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn size_error(&self, actual: u64) -> Error {
        Error::SizeMismatch {
            digest: self.expected.clone(),
            expected: self.size,
            actual,
            from: self.from.clone(),
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Bytes, Error>>> {
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }
}

impl Stream for Verifying {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => this.fail(e),
            Poll::Ready(Some(Ok(chunk))) => {
                let total = this.seen + chunk.len() as u64;
                if total > this.size {
                    let e = this.size_error(total);
                    return this.fail(e);
                }
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                }
                this.seen = total;
                if total == this.size
                    && let Err(e) = this.check()
                {
                    return this.fail(e);
                }
                this.moved.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.done = true;
                if this.seen < this.size {
                    let e = this.size_error(this.seen);
                    return this.fail(e);
                }
                // Only an empty blob reaches here unchecked.
                match this.check() {
                    Ok(()) => Poll::Ready(None),
                    Err(e) => this.fail(e),
                }
            }
        }
    }
}

/// The digest and size of a stream whose digest is not known in advance, set when the stream ends.
pub(crate) type HashSlot = Arc<std::sync::Mutex<Option<(Digest, u64)>>>;

/// Passes a stream through, hashing it with sha256; the slot is filled when (and only when) it ends cleanly.
pub(crate) fn hashing(inner: BlobStream) -> (BlobStream, HashSlot) {
    use futures_util::StreamExt;
    let slot: HashSlot = Arc::default();
    let out = slot.clone();
    let state = (inner, Some(DigestHasher::new(wharf_oci::Algorithm::Sha256)), 0u64, slot);
    let stream = futures_util::stream::unfold(state, |(mut inner, mut hasher, mut n, slot)| async move {
        match inner.next().await {
            Some(Ok(b)) => {
                if let Some(h) = hasher.as_mut() {
                    h.update(&b);
                }
                n += b.len() as u64;
                Some((Ok(b), (inner, hasher, n, slot)))
            }
            Some(Err(e)) => Some((Err(e), (inner, None, n, slot))),
            None => {
                if let Some(h) = hasher.take() {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((h.finish(), n));
                }
                None
            }
        }
    })
    .boxed();
    (stream, out)
}

/// What a [`hashing`] stream computed, or an error when it did not end cleanly.
pub(crate) fn hashed(slot: &HashSlot, what: &str) -> Result<(Digest, u64), Error> {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| Error::BadOption(format!("{what}: the stream ended before its last byte")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn stream_of(chunks: &[&'static [u8]]) -> BlobStream {
        let v: Vec<Result<Bytes, Error>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        futures_util::stream::iter(v).boxed()
    }

    async fn run(chunks: &[&'static [u8]], digest_of: &[u8], size: u64) -> (Vec<u8>, Option<Error>) {
        let moved = Arc::new(AtomicU64::new(0));
        let mut s = Verifying::new(
            stream_of(chunks),
            Digest::sha256_of(digest_of),
            size,
            "test".into(),
            moved,
        );
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn passes_good_bytes() {
        let (out, err) = run(&[b"hello ", b"world"], b"hello world", 11).await;
        assert_eq!(out, b"hello world");
        assert!(err.is_none());
        let (out, err) = run(&[], b"", 0).await;
        assert!(out.is_empty() && err.is_none());
    }

    #[tokio::test]
    async fn withholds_the_last_chunk_of_a_wrong_blob() {
        let (out, err) = run(&[b"hello ", b"WORLD"], b"hello world", 11).await;
        assert_eq!(out, b"hello ", "the last chunk is never released");
        assert!(matches!(err, Some(Error::DigestMismatch { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn rejects_short_and_long_blobs() {
        let (_, err) = run(&[b"hello"], b"hello world", 11).await;
        assert!(matches!(err, Some(Error::SizeMismatch { actual: 5, .. })), "{err:?}");
        let (out, err) = run(&[b"hello world", b"!"], b"hello world", 11).await;
        assert_eq!(out, b"hello world", "a chunk past the size is not released");
        assert!(matches!(err, Some(Error::SizeMismatch { actual: 12, .. })), "{err:?}");
    }
}
