//! Reading a `docker save` stream in one pass, as it arrives.
//!
//! `manifest.json`, which says which entries are the image's config and layers, comes last in the stream (Docker
//! tars a directory in name order), and the Docker engine of Debian 12 names layers by a legacy v1 id, not by
//! digest. So the stream is taken as it comes: every large `.tar` entry (or large `blobs/sha256/*` entry) is a
//! layer and is sent on at once, while the next entries are read (to the destination, compressed on every core,
//! when it stores compressed layers, else into the local content store), its digest computed on the way; small
//! entries (configs, `manifest.json`) are kept in memory. At the end `manifest.json` names the image's layers and
//! their order, and the computed digests are checked against the config's `diff_ids` before any manifest is
//! written. No temporary file is written for a registry or OCI-layout destination.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;
use wharf_oci::media;

use crate::compress::{Compression, compress};
use crate::store::ContentStore;
use crate::{BlobStream, Error, ImageDestination};

/// Entries up to this size are kept in memory; larger `.tar` and `blobs/` entries are layers.
const SMALL: u64 = 8 << 20;
const PIECE: usize = 1 << 20;

/// One image of `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SaveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(default)]
    pub layers: Vec<String>,
}

/// Where the layers of the stream go as they are read.
pub(crate) enum Sink<'a> {
    /// Compressed (unless already compressed) straight to a destination that stores compressed layers.
    Destination {
        dst: &'a dyn ImageDestination,
        compression: Compression,
        workers: usize,
    },
    /// Into the local content store, as they are.
    Store(&'a ContentStore),
}

/// A layer as read from the stream.
#[derive(Debug, Clone)]
pub(crate) struct ReadLayer {
    /// Digest of the uncompressed tar (the config's `diff_id`), when the entry was an uncompressed tar.
    pub diff_id: Option<Digest>,
    /// The blob as stored (at the destination, or in the content store).
    pub stored: Descriptor,
}

/// What one pass over a `docker save` stream found.
pub(crate) struct ReadArchive {
    pub small: HashMap<String, Bytes>,
    pub layers: HashMap<String, ReadLayer>,
    /// Symbolic links between entries (Docker 25+ links legacy `*/layer.tar` to `blobs/sha256/*`).
    pub links: HashMap<String, String>,
    /// Bytes read from the stream.
    pub bytes_read: u64,
}

enum Event {
    Layer {
        path: String,
        size: u64,
        compressed: Option<crate::compress::Algorithm>,
        rx: mpsc::Receiver<Result<Bytes, Error>>,
    },
    Small {
        path: String,
        bytes: Bytes,
    },
}

/// Reads the whole stream, sending layers to `sink` as they come.
pub(crate) async fn read(input: BlobStream, what: &str, sink: &Sink<'_>) -> Result<ReadArchive, Error> {
    let read_bytes = Arc::new(AtomicU64::new(0));
    let counter = read_bytes.clone();
    let counted = input.inspect_ok(move |b| {
        counter.fetch_add(b.len() as u64, Ordering::Relaxed);
    });
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
        counted.map_err(|e| std::io::Error::other(e.to_string())),
    ));
    let (events_tx, mut events) = mpsc::channel::<Event>(4);
    let label = what.to_owned();
    let walker = tokio::task::spawn_blocking(move || walk(reader, &label, events_tx));

    let mut small = HashMap::new();
    let mut layers = HashMap::new();
    let mut transfers = FuturesUnordered::new();
    let mut events_open = true;
    while events_open || !transfers.is_empty() {
        tokio::select! {
            event = events.recv(), if events_open => match event {
                Some(Event::Small { path, bytes }) => {
                    small.insert(path, bytes);
                }
                Some(Event::Layer {
                    path,
                    size,
                    compressed,
                    rx,
                }) => {
                    let stream = futures_util::stream::poll_fn({
                        let mut rx = rx;
                        move |cx| rx.poll_recv(cx)
                    })
                    .boxed();
                    transfers.push(async move {
                        let layer = send_layer(sink, stream, size, compressed).await;
                        (path, layer)
                    });
                }
                None => events_open = false,
            },
            Some((path, layer)) = transfers.next(), if !transfers.is_empty() => {
                let layer = layer.map_err(|e| Error::Archive { path: what.to_owned(), reason: format!("{path}: {e}") })?;
                layers.insert(path, layer);
            }
        }
    }
    let links = walker.await.map_err(|e| Error::Archive {
        path: what.to_owned(),
        reason: format!("reader failed: {e}"),
    })??;
    Ok(ReadArchive {
        small,
        layers,
        links,
        bytes_read: read_bytes.load(Ordering::Relaxed),
    })
}

/// The blocking side: walks the tar entries, handing layers over piece by piece. Returns the symbolic links.
fn walk(reader: impl Read, what: &str, events: mpsc::Sender<Event>) -> Result<HashMap<String, String>, Error> {
    let fail = |reason: String| Error::Archive {
        path: what.to_owned(),
        reason,
    };
    let mut archive = tar::Archive::new(reader);
    let mut links = HashMap::new();
    let entries = archive.entries().map_err(|e| fail(format!("not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail(format!("reading the tar stream: {e}")))?;
        let path = normalize(&entry.path().map_err(|e| fail(e.to_string()))?.to_string_lossy());
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            links.extend(link_target(&path, &entry));
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.size();
        let layer_like = path.ends_with(".tar") || path.starts_with("blobs/");
        if size > SMALL && layer_like {
            let (tx, rx) = mpsc::channel(8);
            let mut first = vec![0u8; PIECE.min(size as usize)];
            let n = read_full(&mut entry, &mut first).map_err(|e| fail(format!("{path}: {e}")))?;
            first.truncate(n);
            let compressed = sniff(&first);
            if events
                .blocking_send(Event::Layer {
                    path: path.clone(),
                    size,
                    compressed,
                    rx,
                })
                .is_err()
            {
                return Err(fail("stopped".into()));
            }
            if tx.blocking_send(Ok(Bytes::from(first))).is_err() {
                return Err(fail(format!("{path}: the layer transfer stopped")));
            }
            pump(&mut entry, &tx).map_err(|e| fail(format!("{path}: {e}")))?;
        } else if size <= SMALL {
            let mut buf = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut buf).map_err(|e| fail(format!("{path}: {e}")))?;
            if events
                .blocking_send(Event::Small {
                    path,
                    bytes: buf.into(),
                })
                .is_err()
            {
                return Err(fail("stopped".into()));
            }
        }
        // Anything else (a large file that is not a layer) is skipped by the next entries() step.
    }
    Ok(links)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Hands an entry's remaining bytes over; a read error is passed on to the transfer too.
fn pump(entry: &mut impl Read, tx: &mpsc::Sender<Result<Bytes, Error>>) -> std::io::Result<()> {
    loop {
        let mut buf = BytesMut::zeroed(PIECE);
        let n = match read_full(entry, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Err(Error::io(
                    "reading the archive",
                    std::io::Error::new(e.kind(), e.to_string()),
                )));
                return Err(e);
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        if tx.blocking_send(Ok(buf.freeze())).is_err() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the layer transfer stopped",
            ));
        }
        if n < PIECE {
            return Ok(());
        }
    }
}

pub(crate) fn sniff(head: &[u8]) -> Option<crate::compress::Algorithm> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(crate::compress::Algorithm::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(crate::compress::Algorithm::Zstd)
    } else {
        None
    }
}

/// Sends one layer to the sink; the returned descriptor is the blob as stored.
pub(crate) async fn send_layer(
    sink: &Sink<'_>,
    stream: BlobStream,
    size: u64,
    compressed: Option<crate::compress::Algorithm>,
) -> Result<ReadLayer, Error> {
    let media_type = match compressed {
        Some(crate::compress::Algorithm::Gzip) => media::OCI_LAYER_GZIP,
        Some(crate::compress::Algorithm::Zstd) => media::OCI_LAYER_ZSTD,
        None => media::OCI_LAYER_TAR,
    };
    match sink {
        Sink::Destination {
            dst,
            compression,
            workers,
        } if compressed.is_none() => {
            // The same gzip blocks as a layer read in place, so both paths give the same digests.
            let (out, diff_id) = compress(stream, *compression, *workers, Some(size));
            let (digest, size) = dst.put_new_blob(out).await?;
            let diff_id = crate::verify::hashed(&diff_id, "layer")?.0;
            Ok(ReadLayer {
                diff_id: Some(diff_id),
                stored: descriptor(&compression.layer_media_type(media::OCI_LAYER_TAR), digest, size),
            })
        }
        Sink::Destination { dst, .. } => {
            let (digest, size) = dst.put_new_blob(stream).await?;
            Ok(ReadLayer {
                diff_id: None,
                stored: descriptor(media_type, digest, size),
            })
        }
        Sink::Store(store) => {
            let (stream, slot) = crate::verify::hashing(stream);
            let (digest, size) = store.put_new(stream, &slot).await?;
            Ok(ReadLayer {
                diff_id: compressed.is_none().then(|| digest.clone()),
                stored: descriptor(media_type, digest, size),
            })
        }
    }
}

pub(crate) fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        artifact_type: None,
        annotations: None,
        urls: None,
        platform: None,
    }
}

/// A symbolic link entry at `path`, as (`path`, its target resolved inside the archive).
pub(crate) fn link_target<R: Read>(path: &str, entry: &tar::Entry<R>) -> Option<(String, String)> {
    let target = entry.link_name().ok()??;
    let base = path.rsplit_once('/').map_or("", |(d, _)| d);
    Some((path.to_owned(), join(base, &target.to_string_lossy())))
}

/// `./a/b` → `a/b`.
pub(crate) fn normalize(path: &str) -> String {
    path.trim_start_matches("./").trim_start_matches('/').to_owned()
}

/// Resolves a link target relative to the directory holding the link, inside the archive.
pub(crate) fn join(base: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|p| !p.is_empty()).collect()
    };
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl ReadArchive {
    /// An entry's path with links followed.
    pub(crate) fn resolve<'a>(&'a self, path: &'a str) -> String {
        let mut p = normalize(path);
        for _ in 0..8 {
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        p
    }

    /// The image of `manifest.json` the user asked for (`wanted`, a `RepoTags` entry), or the only one.
    pub(crate) fn image(&self, what: &str, wanted: Option<&str>) -> Result<SaveEntry, Error> {
        let fail = |reason: String| Error::Archive {
            path: what.to_owned(),
            reason,
        };
        let raw = self
            .small
            .get("manifest.json")
            .ok_or_else(|| fail("no manifest.json: not a docker save archive".into()))?;
        let entries: Vec<SaveEntry> =
            serde_json::from_slice(raw).map_err(|e| fail(format!("bad manifest.json: {e}")))?;
        let tags = |e: &SaveEntry| e.repo_tags.clone().unwrap_or_default();
        match wanted {
            Some(w) => {
                let alt = if w.contains(':') {
                    w.to_owned()
                } else {
                    format!("{w}:latest")
                };
                entries
                    .iter()
                    .find(|e| tags(e).iter().any(|t| t == w || *t == alt || short(t) == short(&alt)))
                    .cloned()
                    .ok_or_else(|| {
                        let all: Vec<String> = entries.iter().flat_map(tags).collect();
                        fail(format!("no image tagged {w} (it has: {})", all.join(", ")))
                    })
            }
            None if entries.len() == 1 => Ok(entries[0].clone()),
            None if entries.is_empty() => Err(fail("manifest.json lists no image".into())),
            None => {
                let all: Vec<String> = entries.iter().flat_map(tags).collect();
                Err(fail(format!(
                    "it holds {} images; name one as docker-archive:PATH:REF (tags: {})",
                    entries.len(),
                    all.join(", ")
                )))
            }
        }
    }
}

/// `docker.io/library/x:t` → `x:t`, as `docker save` writes tags.
fn short(tag: &str) -> &str {
    tag.strip_prefix("docker.io/library/")
        .or_else(|| tag.strip_prefix("docker.io/"))
        .unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_resolve_inside_the_archive() {
        assert_eq!(join("abc", "../blobs/sha256/ff"), "blobs/sha256/ff");
        assert_eq!(join("a/b", "./c"), "a/b/c");
        assert_eq!(join("a", "../../x"), "x");
        assert_eq!(normalize("./manifest.json"), "manifest.json");
        assert_eq!(short("docker.io/library/alpine:3"), "alpine:3");
    }
}
