//! Checking the layer index's claims. A manifest says "blob X holds the layer D" (its config's `diff_ids` beside its
//! `layers`), and anyone who may push somewhere can say it of any blob. Answered unchecked, a false claim would have
//! other users' clients mount X into their images in place of their own layer D: a supply-chain attack on everyone
//! who may pull the claimant's repository. So the index records a claim, and answers the form only once the registry
//! has decompressed X and found D: once per blob, in the background, one at a time (the push that made the claim is
//! not slowed; the form is answered a moment later).
//!
//! Claims are checked in the order they are made by one task ([`ClaimChecker`]); a claim the queue cannot take, or
//! that a restart cut off, stays in the store and is checked by the pass that runs when the server starts
//! ([`ClaimChecker::check_pending`]).

use std::io::Read;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use wharf_oci::{DigestHasher, media};
use wharf_storage::{LayerEntry, RegistryStore};

/// Claims waiting in the queue at most; more wait in the store for the next start.
const QUEUE: usize = 10_000;
/// Claims read from the store per round of the startup pass.
const PENDING_BATCH: usize = 1_000;

/// The task that checks claims, and its queue (cheap to clone).
#[derive(Clone)]
pub struct ClaimChecker {
    queue: mpsc::Sender<LayerEntry>,
}

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The blob holds the layer: answered from now on.
    True,
    /// It does not (or its size or media type is not what the claim says): the claim is dropped.
    False(String),
    /// The blob is not in the repository any more (or could not be read): left for later.
    Unreadable,
}

impl ClaimChecker {
    /// Starts the task (on the current runtime).
    pub fn start(store: Arc<dyn RegistryStore>) -> ClaimChecker {
        let (queue, mut rx) = mpsc::channel::<LayerEntry>(QUEUE);
        tokio::spawn(async move {
            while let Some(claim) = rx.recv().await {
                settle(store.as_ref(), &claim).await;
            }
        });
        ClaimChecker { queue }
    }

    /// Queues claims; those the queue cannot take wait in the store.
    pub fn submit(&self, claims: Vec<LayerEntry>) {
        for claim in claims {
            if self.queue.try_send(claim).is_err() {
                tracing::debug!("layer claims: the queue is full; the claim waits for the next start");
                return;
            }
        }
    }

    /// Checks every claim the store holds unchecked (those a restart cut off), in rounds; returns how many were
    /// decided.
    pub async fn check_pending(store: &dyn RegistryStore) -> usize {
        let mut checked = 0usize;
        loop {
            let claims = match store.layer_claims(PENDING_BATCH).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "layer claims: cannot list the unchecked ones");
                    return checked;
                }
            };
            let before = checked;
            for claim in &claims {
                if settle(store, claim).await != Verdict::Unreadable {
                    checked += 1;
                }
            }
            // Nothing settled this round (all unreadable, or none left): stop.
            if claims.len() < PENDING_BATCH || checked == before {
                break;
            }
        }
        if checked > 0 {
            tracing::info!(checked, "layer claims left unchecked checked");
        }
        checked
    }
}

/// Checks one claim and records the verdict.
async fn settle(store: &dyn RegistryStore, claim: &LayerEntry) -> Verdict {
    let verdict = check(store, claim).await;
    let recorded = match &verdict {
        Verdict::True => store.confirm_layer(&claim.diff_id, &claim.blob).await,
        Verdict::False(why) => {
            tracing::warn!(repository = %claim.repository, blob = %claim.blob.digest, diff_id = %claim.diff_id,
                why, "layer claim refused: the manifest's config names a layer its blob does not hold");
            metrics::counter!("wharf_layer_claims_refused_total").increment(1);
            store.refuse_layer_claim(&claim.diff_id, &claim.blob.digest).await
        }
        Verdict::Unreadable => Ok(()),
    };
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "layer claims: cannot record a verdict");
    }
    verdict
}

/// Decompresses the claimed blob (as its media type says) and compares the tar's digest with the claimed layer.
pub async fn check(store: &dyn RegistryStore, claim: &LayerEntry) -> Verdict {
    enum Codec {
        Tar,
        Gzip,
        Zstd,
    }
    let mt = claim.blob.media_type.as_str();
    let codec = if mt == media::OCI_LAYER_TAR || mt == media::DOCKER_LAYER_TAR {
        Codec::Tar
    } else if mt.ends_with("gzip") {
        Codec::Gzip
    } else if mt.ends_with("zstd") {
        Codec::Zstd
    } else {
        return Verdict::False(format!("media type {mt} is not a layer wharf indexes"));
    };
    let blob = match store.open_blob(&claim.repository, &claim.blob.digest).await {
        Ok(Some(b)) => b,
        _ => return Verdict::Unreadable,
    };
    if blob.size != claim.blob.size {
        return Verdict::False(format!(
            "the blob has {} bytes, the claim says {}",
            blob.size, claim.blob.size
        ));
    }
    let stream = match blob.source.read(None).await {
        Ok(s) => s,
        Err(_) => return Verdict::Unreadable,
    };
    let algorithm = claim.diff_id.algorithm();
    let hashed = tokio::task::spawn_blocking(move || {
        let raw = SyncIoBridge::new(StreamReader::new(stream));
        let mut reader: Box<dyn Read> = match codec {
            Codec::Tar => Box::new(raw),
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(raw))),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(raw)?),
        };
        let mut hasher = DigestHasher::new(algorithm);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok::<_, std::io::Error>(hasher.finish())
    })
    .await;
    match hashed {
        Ok(Ok(d)) if d == claim.diff_id => Verdict::True,
        Ok(Ok(d)) => Verdict::False(format!("it decompresses to {d}")),
        Ok(Err(e)) => Verdict::False(format!("it does not decompress: {e}")),
        Err(_) => Verdict::Unreadable,
    }
}
