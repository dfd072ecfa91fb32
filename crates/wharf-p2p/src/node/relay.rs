//! Cut-through: a piece this node is receiving (from a peer, or from the origin as its lease holder), readable by
//! other peers while it arrives.
//!
//! The fetch appends each chunk as it comes ([`Incoming::push`]); readers get every chunk but the newest, and the
//! last one only once the fetch has verified the whole piece against its digest ([`Incoming::complete`]). So a
//! reader never receives a whole piece that this node would reject: if the piece fails here (its source cut it
//! short, or sent bad bytes), the readers' answers end early, cleanly ([`Incoming::fail`], or the writer's guard
//! dropped): a short answer is this relay's source failing, while a connection cut mid-answer is this node gone.

use std::sync::Mutex;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

/// How far a piece has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    /// Chunks readers may have.
    published: usize,
    end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Complete,
    Failed,
}

pub struct Incoming {
    chunks: Mutex<Vec<Bytes>>,
    flow: watch::Sender<Flow>,
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming {
            chunks: Mutex::new(Vec::new()),
            flow: watch::channel(Flow {
                published: 0,
                end: End::Open,
            })
            .0,
        }
    }
}

impl Incoming {
    /// Appends a chunk as it arrived; the one before it becomes readable.
    pub fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let Ok(mut chunks) = self.chunks.lock() else { return };
        chunks.push(chunk);
        let published = chunks.len() - 1;
        drop(chunks);
        self.flow.send_if_modified(|f| {
            let changed = f.end == End::Open && f.published != published;
            if changed {
                f.published = published;
            }
            changed
        });
    }

    /// The piece is whole and verified: readers get the rest.
    pub fn complete(&self) {
        let published = self.chunks.lock().map(|c| c.len()).unwrap_or(0);
        self.flow.send_if_modified(|f| {
            let changed = f.end == End::Open;
            if changed {
                *f = Flow {
                    published,
                    end: End::Complete,
                };
            }
            changed
        });
    }

    /// The piece will not be whole here: readers' answers are cut short.
    pub fn fail(&self) {
        self.flow.send_if_modified(|f| {
            let changed = f.end == End::Open;
            f.end = if changed { End::Failed } else { f.end };
            changed
        });
    }

    /// The piece's bytes as they become readable; ends early if the piece fails here.
    pub fn read(self: std::sync::Arc<Self>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let rx = self.flow.subscribe();
        futures_util::stream::unfold((self, rx, 0usize), |(me, mut rx, next)| async move {
            loop {
                let flow = *rx.borrow_and_update();
                if next < flow.published {
                    let chunk = me.chunks.lock().ok().and_then(|c| c.get(next).cloned());
                    return chunk.map(|c| (Ok(c), (me, rx, next + 1)));
                }
                match flow.end {
                    End::Complete | End::Failed => return None,
                    End::Open => {
                        // The sender lives in `me`, so this only fails if it were dropped: end (short) then too.
                        rx.changed().await.ok()?;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt;

    use super::*;

    async fn next(s: &mut (impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin)) -> Option<Result<Bytes, ()>> {
        let item = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
            .await
            .expect("the stream stalled");
        item.map(|r| r.map_err(|_| ()))
    }

    #[tokio::test]
    async fn readers_get_all_but_the_newest_chunk_until_the_piece_is_verified() {
        let inc = Arc::new(Incoming::default());
        inc.push(Bytes::from_static(b"ab"));
        let mut early = Box::pin(inc.clone().read());
        // Only chunk is the newest: nothing readable yet.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), early.next())
                .await
                .is_err()
        );
        inc.push(Bytes::from_static(b"cd"));
        assert_eq!(next(&mut early).await, Some(Ok(Bytes::from_static(b"ab"))));
        inc.push(Bytes::from_static(b"ef"));
        assert_eq!(next(&mut early).await, Some(Ok(Bytes::from_static(b"cd"))));
        inc.complete();
        assert_eq!(next(&mut early).await, Some(Ok(Bytes::from_static(b"ef"))));
        assert_eq!(next(&mut early).await, None);
        // A reader that comes late gets everything at once.
        let late: Vec<_> = inc.clone().read().collect().await;
        let bytes: Vec<u8> = late.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(bytes, b"abcdef");
    }

    #[tokio::test]
    async fn a_failed_piece_ends_its_readers_early_and_never_hands_over_the_end() {
        let inc = Arc::new(Incoming::default());
        let mut reader = Box::pin(inc.clone().read());
        inc.push(Bytes::from_static(b"ab"));
        inc.push(Bytes::from_static(b"cd"));
        assert_eq!(next(&mut reader).await, Some(Ok(Bytes::from_static(b"ab"))));
        inc.fail();
        // Verification failed: "cd" is never readable; the answer just ends, short.
        assert_eq!(next(&mut reader).await, None);
        inc.complete();
        let late: Vec<_> = inc.clone().read().collect().await;
        assert_eq!(late.len(), 1, "{late:?}");
    }
}
