//! A task's bytes in order, for a reader that is not a peer (the engine through the registry API, `wharf get`):
//! each piece as soon as it is held, the piece holding the blob's last byte only once the whole content has matched
//! its digest, so no reader is ever handed a complete wrong blob.

use std::sync::Arc;

use bytes::Bytes;

use super::task::{Phase, Task};

/// The task's bytes in order.
pub fn stream(task: Arc<Task>) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let size = task.size;
    stream_range(task, 0, size)
}

/// Bytes `start..end` of the task, in order (a `Range` request). Pieces before the last are verified one by one
/// against their published digests; a range that reaches the last piece waits for the whole content's check.
pub fn stream_range(
    task: Arc<Task>,
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let guard = task.reader();
    let rx = task.subscribe();
    let generation = rx.borrow().generation;
    let piece_len = task.piece_len.max(1);
    let end = end.min(task.size);
    let first = u32::try_from(start / piece_len).unwrap_or(u32::MAX);
    // One past the last piece the range touches.
    let stop = if end <= start {
        first
    } else {
        u32::try_from((end - 1) / piece_len + 1).unwrap_or(u32::MAX)
    };
    futures_util::stream::unfold((first, rx, task, guard), move |(n, mut rx, task, guard)| async move {
        if n >= stop || n >= task.pieces {
            return None;
        }
        let last = n + 1 == task.pieces;
        let fail = |e: std::io::Error, rx, task: Arc<Task>, guard| Some((Err(e), (stop, rx, task, guard)));
        loop {
            let p = rx.borrow_and_update().clone();
            if p.generation != generation {
                return fail(std::io::Error::other("the download started over"), rx, task, guard);
            }
            if let Phase::Failed(e) = &p.phase {
                return fail(std::io::Error::other(e.clone()), rx, task, guard);
            }
            if p.have[n as usize] && (!last || p.phase == Phase::Done) {
                break;
            }
            if rx.changed().await.is_err() {
                return fail(std::io::Error::other("download ended"), rx, task, guard);
            }
        }
        let t = task.clone();
        let data = match tokio::task::spawn_blocking(move || t.read_piece(n)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return fail(e, rx, task, guard),
            Err(e) => return fail(std::io::Error::other(e.to_string()), rx, task, guard),
        };
        // The part of this piece inside the range.
        let offset = u64::from(n) * piece_len;
        let from = usize::try_from(start.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(data.len());
        let to = usize::try_from(end - offset).unwrap_or(usize::MAX).min(data.len());
        let mut data = Bytes::from(data);
        let chunk = data.split_to(to).split_off(from);
        Some((Ok(chunk), (n + 1, rx, task, guard)))
    })
}
