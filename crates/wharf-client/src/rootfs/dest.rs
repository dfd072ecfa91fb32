//! `rootfs:PATH` as a destination: download, decompress and extract as one streaming pipeline.
//!
//! The copy engine announces the image manifest first ([`ImageDestination::prepare`]), so the layer order is known
//! before any byte arrives. Each layer's stream is then teed: into the local content store (so the next pull of an
//! image with the same base layers downloads only what is new) and into its own decompressor thread, which runs
//! ahead into a bounded buffer ([`LAYER_BUFFER`]); one applier applies the layers strictly in order, each as soon
//! as the previous one is done. So layers download and decompress in parallel while they are applied in order. A
//! layer already in the content store is applied from there. Every decompressed layer is hashed and checked against
//! the config's `diff_ids` at the end.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use wharf_oci::manifest::{Descriptor, ManifestView};
use wharf_oci::{Digest, DigestHasher, media};

use super::{ApplyOptions, apply_layer};
use crate::compress::decompressing_reader;
use crate::store::ContentStore;
use crate::{BlobStream, Error, ImageDestination, Manifest};

/// Decompressed bytes one layer may hold while it waits for its turn.
const LAYER_BUFFER: usize = 128 << 20;
const PIECE: usize = 1 << 20;

/// Where a layer's compressed bytes come from.
enum LayerSource {
    /// A decompressor thread's output.
    Stream(std::sync::mpsc::Receiver<Piece>),
    /// The content store already has it.
    Store(Digest),
}

struct Plan {
    layers: Vec<Digest>,
    senders: Vec<Option<oneshot::Sender<LayerSource>>>,
    applier: Option<tokio::task::JoinHandle<Result<Vec<Digest>, Error>>>,
}

pub struct RootfsDestination {
    root: PathBuf,
    store: ContentStore,
    plan: Mutex<Option<Plan>>,
    /// Most bytes of file contents the image's layers may write together.
    limit: Option<u64>,
}

impl RootfsDestination {
    /// The directory is created if missing; an existing one must be empty (layers are applied onto nothing).
    pub async fn create(root: &Path, store: ContentStore) -> Result<RootfsDestination, Error> {
        let ctx = || format!("rootfs {}", root.display());
        tokio::fs::create_dir_all(root).await.map_err(|e| Error::io(ctx(), e))?;
        let mut entries = tokio::fs::read_dir(root).await.map_err(|e| Error::io(ctx(), e))?;
        if entries.next_entry().await.map_err(|e| Error::io(ctx(), e))?.is_some() {
            return Err(Error::BadOption(format!(
                "rootfs {}: the directory is not empty; unpack into a new one",
                root.display()
            )));
        }
        Ok(RootfsDestination {
            root: root.to_path_buf(),
            store,
            plan: Mutex::new(None),
            limit: None,
        })
    }

    /// Bounds what the image's layers may write together (file sizes, holes included).
    pub fn with_limit(mut self, limit: Option<u64>) -> RootfsDestination {
        self.limit = limit;
        self
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Option<Plan>> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands layer `digest`'s source to the applier; false when it is not a layer of the plan (or already taken).
    fn give(&self, digest: &Digest, source: LayerSource) -> bool {
        let mut plan = self.plan();
        let Some(plan) = plan.as_mut() else {
            return false;
        };
        let mut given = false;
        let mut source = Some(source);
        for (i, d) in plan.layers.iter().enumerate() {
            if d == digest
                && let Some(tx) = plan.senders[i].take()
                && let Some(s) = source.take()
            {
                let _ = tx.send(s);
                given = true;
                // The same blob twice in one image: the second use reads the store copy.
                source = Some(LayerSource::Store(digest.clone()));
            }
        }
        given
    }

    fn is_layer(&self, digest: &Digest) -> bool {
        self.plan().as_ref().is_some_and(|p| p.layers.contains(digest))
    }

    /// Whether layer `digest` still waits for its bytes (a failed layer has handed its slot to the applier already).
    fn awaits(&self, digest: &Digest) -> bool {
        self.plan().as_ref().is_some_and(|p| {
            p.layers
                .iter()
                .zip(&p.senders)
                .any(|(d, tx)| d == digest && tx.is_some())
        })
    }
}

impl Drop for RootfsDestination {
    fn drop(&mut self) {
        if let Some(plan) = self.plan().as_mut()
            && let Some(h) = plan.applier.take()
        {
            h.abort();
        }
    }
}

#[async_trait]
impl ImageDestination for RootfsDestination {
    fn describe(&self) -> String {
        format!("rootfs:{}", self.root.display())
    }

    fn restartable(&self) -> bool {
        false
    }

    async fn prepare(&self, manifest: &Manifest) -> Result<(), Error> {
        let view = parse(manifest)?;
        let mut plan = self.plan();
        if plan.is_some() {
            return Err(Error::BadOption(format!(
                "{} takes one image: choose one with --platform",
                self.describe()
            )));
        }
        let layers: Vec<Digest> = view.layers.iter().map(|l| l.digest.clone()).collect();
        let (senders, receivers): (Vec<_>, Vec<_>) = layers
            .iter()
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                (Some(tx), rx)
            })
            .unzip();
        if let Some(foreign) = view
            .layers
            .iter()
            .find(|l| wharf_oci::media::NON_DISTRIBUTABLE.contains(&l.media_type.as_str()))
        {
            return Err(Error::BadOption(format!(
                "{}: layer {} is non-distributable ({}); wharf does not fetch such layers",
                self.describe(),
                foreign.digest,
                foreign.media_type
            )));
        }
        let root = self.root.clone();
        let applier = tokio::spawn(apply_in_order(root, self.store.clone(), receivers, self.limit));
        *plan = Some(Plan {
            layers,
            senders,
            applier: Some(applier),
        });
        Ok(())
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool, Error> {
        if !self.store.has(&desc.digest, desc.size).await {
            return Ok(false);
        }
        if self.is_layer(&desc.digest) {
            self.give(&desc.digest, LayerSource::Store(desc.digest.clone()));
        }
        Ok(true)
    }

    async fn put_blob(&self, desc: &Descriptor, stream: BlobStream) -> Result<(), Error> {
        if !self.is_layer(&desc.digest) {
            return self.store.put(&desc.digest, stream).await.map(|_| ());
        }
        if !self.awaits(&desc.digest) {
            // A second attempt after a failed one: the applier has already failed on the first.
            return Err(Error::BadOption(format!(
                "{}: layer {} failed while being unpacked and cannot be sent again; pull into a new directory",
                self.describe(),
                desc.digest
            )));
        }
        // Tee: the store gets every byte; the decompressor gets a copy as it passes.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
        let tee = stream
            .then(move |item| {
                let tx = tx.clone();
                async move {
                    let copy = match &item {
                        Ok(b) => Ok(b.clone()),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    };
                    // A closed decompressor (the applier failed) is reported by the applier, not here.
                    let _ = tx.send(copy).await;
                    item
                }
            })
            .boxed();
        let (out_tx, out_rx) = std::sync::mpsc::sync_channel(LAYER_BUFFER / PIECE);
        let input = tokio_util::io::StreamReader::new(futures_util::stream::poll_fn({
            let mut rx = rx;
            move |cx| rx.poll_recv(cx)
        }));
        let input = tokio_util::io::SyncIoBridge::new(input);
        let label = desc.digest.to_string();
        tokio::task::spawn_blocking(move || decompress_into(input, &label, out_tx));
        self.give(&desc.digest, LayerSource::Stream(out_rx));
        self.store.put(&desc.digest, tee).await.map(|_| ())
    }

    async fn put_manifest(&self, manifest: &Manifest, top_level: bool) -> Result<(), Error> {
        if !top_level {
            return Ok(());
        }
        if media::is_index(&manifest.media_type) {
            return Err(Error::BadOption(format!(
                "{} takes one image, not an index: choose one with --platform",
                self.describe()
            )));
        }
        let view = parse(manifest)?;
        let applier = self.plan().as_mut().and_then(|p| p.applier.take());
        let Some(applier) = applier else {
            return Err(Error::BadOption("rootfs: the manifest was not announced".into()));
        };
        let diff_ids = applier
            .await
            .map_err(|e| Error::BadOption(format!("rootfs applier: {e}")))??;
        // The config (in the store by now) says what the uncompressed layers must be.
        let config = view.config.ok_or_else(|| Error::Manifest {
            what: manifest.digest.to_string(),
            reason: "no config".into(),
        })?;
        let bytes = tokio::fs::read(self.store.path(&config.digest))
            .await
            .map_err(|e| Error::io("reading the image config from the content store", e))?;
        if Digest::sha256_of(&bytes) != config.digest {
            return Err(Error::BadOption(format!(
                "the image config {} in the content store is damaged",
                config.digest
            )));
        }
        let expected: Vec<Digest> = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("rootfs")?.get("diff_ids").cloned())
            .and_then(|d| serde_json::from_value(d).ok())
            .unwrap_or_default();
        if expected != diff_ids {
            return Err(Error::BadOption(format!(
                "{}: the unpacked layers do not match the config's diff_ids (got {:?}, expected {:?})",
                self.describe(),
                diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                expected.iter().map(|d| d.to_string()).collect::<Vec<_>>()
            )));
        }
        Ok(())
    }
}

fn parse(m: &Manifest) -> Result<ManifestView, Error> {
    ManifestView::parse(&m.bytes, Some(&m.media_type)).map_err(|e| Error::Manifest {
        what: m.digest.to_string(),
        reason: e.to_string(),
    })
}

/// What a decompressor thread hands to the applier.
enum Piece {
    Data(Bytes),
    /// The end of the layer, with the digest of everything decompressed (its diff_id).
    End(Digest),
    Failed(String),
}

/// The decompressor thread of one layer: decompresses and hashes (the diff_id), so that the applier's thread does
/// nothing but file system work.
fn decompress_into(input: impl Read, label: &str, out: std::sync::mpsc::SyncSender<Piece>) {
    let mut hasher = DigestHasher::new(wharf_oci::Algorithm::Sha256);
    let result = (|| -> std::io::Result<()> {
        let mut reader = decompressing_reader(input)?;
        loop {
            let mut buf = vec![0u8; PIECE];
            let mut n = 0;
            while n < PIECE {
                match reader.read(&mut buf[n..])? {
                    0 => break,
                    k => n += k,
                }
            }
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            hasher.update(&buf);
            if out.send(Piece::Data(Bytes::from(buf))).is_err() {
                return Ok(()); // the applier stopped; it reports why
            }
            if n < PIECE {
                return Ok(());
            }
        }
    })();
    let last = match result {
        Ok(()) => Piece::End(hasher.finish()),
        Err(e) => Piece::Failed(format!("layer {label}: {e}")),
    };
    let _ = out.send(last);
}

/// Applies the layers in order as their sources arrive; returns the digest of each uncompressed layer.
async fn apply_in_order(
    root: PathBuf,
    store: ContentStore,
    sources: Vec<oneshot::Receiver<LayerSource>>,
    limit: Option<u64>,
) -> Result<Vec<Digest>, Error> {
    let mut diff_ids = Vec::new();
    let mut written = 0u64;
    for (i, rx) in sources.into_iter().enumerate() {
        let source = rx
            .await
            .map_err(|_| Error::BadOption(format!("layer {i} never arrived")))?;
        let rx = match source {
            LayerSource::Stream(rx) => rx,
            LayerSource::Store(digest) => {
                // From the content store, verified as it is read: the same decompressor thread.
                let f = store
                    .open_verified(&digest)
                    .map_err(|e| Error::io(format!("opening {digest} in the content store"), e))?;
                let (tx, rx) = std::sync::mpsc::sync_channel(LAYER_BUFFER / PIECE);
                let label = digest.to_string();
                tokio::task::spawn_blocking(move || decompress_into(f, &label, tx));
                rx
            }
        };
        let root = root.clone();
        let (diff_id, bytes) = tokio::task::spawn_blocking(move || -> Result<(Digest, u64), Error> {
            let mut reader = ChannelReader {
                rx,
                current: Bytes::new(),
                end: None,
            };
            let options = ApplyOptions {
                max_bytes: limit.map(|l| l.saturating_sub(written)),
                ..ApplyOptions::default()
            };
            let stats = apply_layer(&root, &mut reader, &options).map_err(|cause| Error::Unpack {
                layer: format!("{i}"),
                cause,
            })?;
            // apply_layer reads to the end of the stream; the decompressor's last word is the diff_id.
            std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| Error::io("reading a layer", e))?;
            let diff_id = reader
                .end
                .ok_or_else(|| Error::BadOption(format!("layer {i}: the decompressor stopped early")))?;
            Ok((diff_id, stats.bytes))
        })
        .await
        .map_err(|e| Error::BadOption(format!("layer {i}: {e}")))??;
        written += bytes;
        diff_ids.push(diff_id);
    }
    Ok(diff_ids)
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Piece>,
    current: Bytes,
    end: Option<Digest>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.end.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Data(b)) => self.current = b,
                Ok(Piece::End(d)) => self.end = Some(d),
                Ok(Piece::Failed(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
