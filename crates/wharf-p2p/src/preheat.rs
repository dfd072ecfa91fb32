//! `wharf preheat`: an image's blobs (every platform of an index), listed through the registry client with the
//! caller's credentials, queued on the schedulers for the seed nodes to fetch now.

use wharf_remote::{Reference, Registry, RemoteError, pull_scope};

use crate::P2pError;
use crate::node::Clients;
use crate::proto::{Preheat, PreheatBlob};

/// What was queued.
pub struct Queued {
    pub blobs: usize,
    pub bytes: u64,
}

/// Every blob of the image `reference` names (configs and layers of every manifest under an index), once each.
pub async fn image_blobs(registry: &Registry, reference: &Reference) -> Result<Vec<PreheatBlob>, P2pError> {
    let repo = &reference.repository;
    let scopes = [pull_scope(repo)];
    let mut blobs = Vec::new();
    let mut manifests = vec![(reference.manifest_reference(), reference.digest.clone())];
    while let Some((r, expected)) = manifests.pop() {
        let m = registry.manifest(repo, &r, expected.as_ref(), &scopes).await?;
        let view = wharf_oci::manifest::ManifestView::parse(&m.bytes, Some(&m.media_type)).map_err(|e| {
            RemoteError::Protocol {
                what: format!("manifest {repo}@{}", m.digest),
                registry: registry.name().to_owned(),
                reason: e.to_string(),
            }
        })?;
        manifests.extend(
            view.manifests
                .iter()
                .map(|d| (d.digest.to_string(), Some(d.digest.clone()))),
        );
        for d in view.config.iter().chain(&view.layers) {
            blobs.push(PreheatBlob {
                repository: repo.clone(),
                digest: d.digest.to_string(),
                size: d.size,
            });
        }
    }
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    blobs.dedup_by(|a, b| a.digest == b.digest);
    Ok(blobs)
}

/// Lists the image's blobs and queues them on every scheduler.
pub async fn preheat(registry: &Registry, reference: &Reference, schedulers: &Clients) -> Result<Queued, P2pError> {
    let blobs = image_blobs(registry, reference).await?;
    let queued = Queued {
        blobs: blobs.len(),
        bytes: blobs.iter().map(|b| b.size).sum(),
    };
    schedulers.preheat(&Preheat { blobs }).await?;
    Ok(queued)
}
