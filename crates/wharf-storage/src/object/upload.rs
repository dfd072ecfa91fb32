//! Upload sessions of [`ObjectStore`]. Object stores cannot append, so each append is its own chunk object
//! (`_uploads/<id>/chunks/...`), written in full before the session state records it; the state (in the bucket or
//! in Redis, see [`SessionStore`]) carries the offset and the digest state after the last chunk, so any replica can
//! take the next chunk or commit. A replica killed mid-chunk never records that chunk: the client asks for the
//! upload's status and resends from the recorded offset.
//!
//! Commit checks the digest from the saved state (no second pass over the data unless the client names another
//! algorithm), then assembles the blob: server-side part copies where the backend has them and every chunk but the
//! last is a legal part (S3: at least 5 MiB), otherwise by streaming the chunks through in order; the blob is
//! visible only once complete.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use wharf_oci::{Algorithm, Digest, DigestHasher};

use super::session::{Chunk, SessionState};
use super::{ObjectStore, abort, keys, now};
use crate::{ByteStream, Result, StorageError, UploadStatus, Uploads};

/// Smallest part a multipart upload accepts except the last (S3's limit; others' are smaller).
const MIN_PART: u64 = 5 << 20;
/// Largest range one part copy may take (S3: 5 GiB); longer chunks are copied in several even parts.
const MAX_COPY: u64 = 4 << 30;

fn canonical_id(id: &str) -> Option<String> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.hyphenated().to_string())
}

fn parse_algorithm(s: &str) -> Result<Algorithm> {
    match s {
        "sha256" => Ok(Algorithm::Sha256),
        "sha512" => Ok(Algorithm::Sha512),
        other => Err(StorageError::backend(
            "read an upload session",
            format!("unknown algorithm {other:?}"),
        )),
    }
}

fn hasher_of(state: &SessionState) -> Result<DigestHasher> {
    let raw = hex::decode(&state.hash_state).map_err(|e| StorageError::backend("read an upload session", e))?;
    DigestHasher::restore_state(parse_algorithm(&state.algorithm)?, &raw)
        .map_err(|e| StorageError::backend("read an upload session", e))
}

/// Even pieces of `size` bytes, none longer than [`MAX_COPY`].
fn copy_ranges(size: u64) -> Vec<(u64, u64)> {
    let n = size.div_ceil(MAX_COPY).max(1);
    let piece = size.div_ceil(n);
    (0..n)
        .map(|i| (i * piece, ((i + 1) * piece).min(size)))
        .filter(|(a, b)| a < b)
        .collect()
}

impl ObjectStore {
    fn session_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.session_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(id.to_owned()).or_default().clone()
    }

    /// The session `id` of `repo`, or [`StorageError::UploadUnknown`].
    async fn session(&self, repo: &str, id: &str) -> Result<(String, SessionState)> {
        let unknown = || StorageError::UploadUnknown(id.to_owned());
        let id = canonical_id(id).ok_or_else(unknown)?;
        match self.sessions.load(&id).await? {
            Some(s) if s.repo == repo => Ok((id, s)),
            _ => Err(unknown()),
        }
    }

    /// Forgets a session and deletes its objects. Leftovers (a failed delete) are only space: nothing reads them.
    pub(super) async fn discard(&self, id: &str) {
        if let Err(e) = self.sessions.remove(id).await {
            tracing::warn!(upload = id, error = %e, "could not forget an upload session");
        }
        if let Err(e) = self.op.delete_with(&keys::upload_dir(id)).recursive(true).await {
            tracing::warn!(upload = id, error = %e, "could not delete an upload's chunks");
        }
    }

    /// The digest of the chunks under another algorithm than the session's (a client committing a sha512 upload).
    async fn rehash(&self, chunks: &[Chunk], algorithm: Algorithm) -> Result<Digest> {
        let mut hasher = DigestHasher::new(algorithm);
        for c in chunks {
            let mut stream = self.chunk_stream(&c.key).await?;
            while let Some(b) = stream.next().await {
                hasher.update(&b.map_err(|e| StorageError::backend(format!("read {}", c.key), e))?);
            }
        }
        Ok(hasher.finish())
    }

    async fn chunk_stream(&self, key: &str) -> Result<opendal::FuturesBytesStream> {
        let reader = self
            .op
            .reader_with(key)
            .chunk(self.part_size)
            .concurrent(2)
            .await
            .map_err(|e| StorageError::backend(format!("open {key}"), e))?;
        reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| StorageError::backend(format!("read {key}"), e))
    }

    /// Writes the verified chunks, in order, as the object `blob`; visible only once complete.
    async fn assemble(&self, blob: &str, chunks: &[Chunk]) -> Result<()> {
        if chunks.is_empty() {
            return self.put_small(blob, Bytes::new()).await;
        }
        let native = self.op.info().capability().write_can_copy_from
            && chunks[..chunks.len() - 1].iter().all(|c| c.size >= MIN_PART);
        let mut w = self.writer(blob).await?;
        let result = async {
            for c in chunks {
                if native {
                    for (a, b) in copy_ranges(c.size) {
                        w.copy_from(&c.key, a..b)
                            .await
                            .map_err(|e| StorageError::backend(format!("copy {} into {blob}", c.key), e))?;
                    }
                } else {
                    let mut stream = self.chunk_stream(&c.key).await?;
                    while let Some(b) = stream.next().await {
                        let b = b.map_err(|e| StorageError::backend(format!("read {}", c.key), e))?;
                        w.write(b)
                            .await
                            .map_err(|e| StorageError::backend(format!("write {blob}"), e))?;
                    }
                }
            }
            w.close()
                .await
                .map_err(|e| StorageError::backend(format!("complete {blob}"), e))
        }
        .await;
        if result.is_err() {
            abort(Some(&mut w)).await;
        }
        result.map(|_| ())
    }
}

#[async_trait]
impl Uploads for ObjectStore {
    async fn start_upload(&self, repo: &str) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let state = SessionState {
            repo: repo.to_owned(),
            offset: 0,
            algorithm: Algorithm::Sha256.as_str().to_owned(),
            hash_state: hex::encode(DigestHasher::new(Algorithm::Sha256).save_state()),
            chunks: Vec::new(),
            started: now(),
        };
        if !self.sessions.save(&id, &state, None).await? {
            return Err(StorageError::backend("start an upload", "a fresh session id was taken"));
        }
        Ok(UploadStatus { id, offset: 0 })
    }

    async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
        let (id, state) = self.session(repo, id).await?;
        Ok(UploadStatus {
            id,
            offset: state.offset,
        })
    }

    async fn append_upload(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        mut body: ByteStream,
    ) -> Result<UploadStatus> {
        // One lock per session, whatever spelling of its UUID the client uses.
        let lock = self.session_lock(&canonical_id(id).unwrap_or_else(|| id.to_owned()));
        let _held = lock.lock().await;
        let (id, state) = self.session(repo, id).await?;
        if let Some(start) = start
            && start != state.offset
        {
            return Err(StorageError::RangeMismatch {
                expected: state.offset,
                got: start,
            });
        }
        let mut hasher = hasher_of(&state)?;
        let key = keys::upload_chunk(&id, state.offset);
        let mut writer = None;
        let mut size = 0u64;
        let mut broke = None;
        while let Some(item) = body.next().await {
            let chunk = match item {
                Ok(c) if c.is_empty() => continue,
                Ok(c) => c,
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            };
            if writer.is_none() {
                writer = Some(self.writer(&key).await?);
            }
            if let Some(w) = writer.as_mut()
                && let Err(e) = w.write(chunk.clone()).await
            {
                abort(writer.as_mut()).await;
                return Err(StorageError::backend(format!("write {key}"), e));
            }
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        let Some(mut w) = writer else {
            return match broke {
                Some(source) => Err(StorageError::BodyInterrupted {
                    kept: state.offset,
                    source,
                }),
                None => Ok(UploadStatus {
                    id,
                    offset: state.offset,
                }),
            };
        };
        // What arrived before a broken body is kept, as on the filesystem: the chunk is completed and recorded.
        if let Err(e) = w.close().await {
            let _ = w.abort().await;
            return Err(StorageError::backend(format!("complete {key}"), e));
        }
        let mut next = state.clone();
        next.offset += size;
        next.hash_state = hex::encode(hasher.save_state());
        next.chunks.push(Chunk { key: key.clone(), size });
        if !self.sessions.save(&id, &next, Some(state.offset)).await? {
            // Another replica appended first: this chunk was never recorded, so it goes.
            let _ = self.op.delete(&key).await;
            let current = self.session(repo, &id).await?.1.offset;
            return Err(StorageError::RangeMismatch {
                expected: current,
                got: state.offset,
            });
        }
        match broke {
            Some(source) => Err(StorageError::BodyInterrupted {
                kept: next.offset,
                source,
            }),
            None => Ok(UploadStatus {
                id,
                offset: next.offset,
            }),
        }
    }

    async fn commit_upload(&self, repo: &str, id: &str, expected: &Digest) -> Result<u64> {
        // One lock per session, whatever spelling of its UUID the client uses.
        let lock = self.session_lock(&canonical_id(id).unwrap_or_else(|| id.to_owned()));
        let _held = lock.lock().await;
        let (id, state) = self.session(repo, id).await?;
        let computed = if parse_algorithm(&state.algorithm)? == expected.algorithm() {
            hasher_of(&state)?.finish()
        } else {
            self.rehash(&state.chunks, expected.algorithm()).await?
        };
        if computed != *expected {
            self.discard(&id).await;
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                computed,
            });
        }
        // A new blob is young, so no collection running now takes it; an existing one is reused in `link`'s write
        // section, which also checks it is still there.
        let blob = keys::blob(expected);
        if self.size_of(&blob).await?.is_none() {
            self.assemble(&blob, &state.chunks).await?;
        }
        self.link(repo, expected).await?;
        self.discard(&id).await;
        Ok(state.offset)
    }

    async fn cancel_upload(&self, repo: &str, id: &str) -> Result<()> {
        let (id, _) = self.session(repo, id).await?;
        self.discard(&id).await;
        Ok(())
    }

    async fn put_blob(&self, repo: &str, expected: &Digest, body: ByteStream) -> Result<u64> {
        let size = self.write_verified(expected, body).await?;
        self.link(repo, expected).await?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges_cover_the_chunk_in_legal_parts() {
        assert_eq!(copy_ranges(10), vec![(0, 10)]);
        let big = 9 << 30;
        let r = copy_ranges(big);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].0, 0);
        assert_eq!(r.last().map(|x| x.1), Some(big));
        assert!(r.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(r.iter().all(|(a, b)| b - a <= MAX_COPY && b - a >= MIN_PART));
    }
}
