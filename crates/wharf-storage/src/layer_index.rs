//! The layer index, as stored: a layer's uncompressed digest (its `diff_id`) → the compressed blobs that hold it →
//! the repositories that link each. The registry writes it on every image manifest PUT (before the manifest, see
//! `wharf_registry::layers`) and answers `GET /wharf/v1/layers/<diff_id>` from it; a client about to compress a
//! layer asks it first.
//!
//! Same layout on a filesystem (under `layer-index/`) and in a bucket (under `_layer_index/`):
//!
//! ```text
//! <alg>/<diff hex>/<blob alg>-<blob hex>/_claim           {"mediaType", "digest", "size"} as a manifest claimed it
//! <alg>/<diff hex>/<blob alg>-<blob hex>/_descriptor      the same, once the registry checked the claim: the blob
//!                                                         decompresses to the layer <diff hex> names
//! <alg>/<diff hex>/<blob alg>-<blob hex>/<repo>           empty: <repo> linked the blob ('/' written as '+')
//! _complete                                               empty: built from every manifest once
//! ```
//!
//! One small file per fact, each written once and never rewritten, so concurrent pushes (and replicas) never race a
//! read-modify-write. Repository names never contain `+` and start with `[a-z0-9]`, so `_descriptor` cannot be a
//! repository and the encoding is reversible; at most 255 bytes, like a file name.
//!
//! A manifest's word that a blob holds a layer is a claim: anyone who may push somewhere can make one. Only a form
//! whose claim the registry checked (decompressed the blob and hashed it) is answered; see `wharf_registry::layers`.
//! The index is a hint beyond that: the registry checks every answer against the repository's links before it gives
//! it, and drops what it finds stale. Garbage collection prunes the entries of the blobs it deletes. A form's
//! descriptor is removed only with its blob: concurrent writers never lose one to a prune.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use wharf_oci::Digest;

/// Compressed forms read per layer.
pub const MAX_FORMS: usize = 8;
/// Repositories read per form.
pub const MAX_REPOS: usize = 64;

/// The name of a form's checked descriptor inside its directory.
pub(crate) const DESCRIPTOR: &str = "_descriptor";
/// The name of a form's claimed descriptor, until it is checked.
pub(crate) const CLAIM: &str = "_claim";
/// The marker of an index built from every manifest.
pub(crate) const COMPLETE: &str = "_complete";

/// A compressed blob holding a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// What the index holds for one layer: its compressed forms, each with repositories that linked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerForm {
    pub blob: LayerBlob,
    pub repositories: Vec<String>,
}

/// One fact to record: `repository` links `blob`, which holds the layer `diff_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub diff_id: Digest,
    pub blob: LayerBlob,
    pub repository: String,
}

/// Which entries a prune removes.
#[derive(Debug, Clone, Copy)]
pub enum Prune<'a> {
    /// Those of these blobs (garbage collection deleted them), if they are still gone (a push may have brought one
    /// back since).
    Blobs(&'a HashSet<Digest>),
    /// Those whose repository no longer links the blob, or whose blob is gone (a rebuild's check of everything).
    Unlinked,
}

/// `<alg>/<hex>/` of a layer, relative to the index's root.
pub(crate) fn layer_dir(diff_id: &Digest) -> String {
    format!("{}/{}/", diff_id.algorithm(), diff_id.hex())
}

/// `<alg>-<hex>` of a blob: the name of its form's directory.
pub(crate) fn form_name(blob: &Digest) -> String {
    format!("{}-{}", blob.algorithm(), blob.hex())
}

/// The blob digest a form directory is named for.
pub(crate) fn form_digest(name: &str) -> Option<Digest> {
    let (alg, hex) = name.split_once('-')?;
    format!("{alg}:{hex}").parse().ok()
}

/// A repository name as one path component.
pub(crate) fn repo_file(repo: &str) -> String {
    repo.replace('/', "+")
}

/// The repository a component names, if it is a valid name.
pub(crate) fn repo_of_file(name: &str) -> Option<String> {
    let repo = name.replace('+', "/");
    wharf_oci::name::is_valid_repository(&repo).then_some(repo)
}

/// A form's descriptor file, parsed; `None` if it is unreadable or names another blob (a torn write).
pub(crate) fn parse_descriptor(raw: &[u8], expected: &Digest) -> Option<LayerBlob> {
    serde_json::from_slice::<LayerBlob>(raw)
        .ok()
        .filter(|b| b.digest == *expected)
}

pub(crate) fn descriptor_bytes(blob: &LayerBlob) -> Vec<u8> {
    // A struct of strings and numbers always serializes.
    serde_json::to_vec(blob).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegistryStore as _;

    #[test]
    fn names_round_trip_and_refuse_what_is_not_a_name() {
        let d = Digest::sha256_of(b"layer");
        assert_eq!(form_digest(&form_name(&d)), Some(d.clone()));
        assert_eq!(form_digest("_descriptor"), None);
        assert_eq!(repo_file("team/app/web"), "team+app+web");
        assert_eq!(repo_of_file("team+app+web").as_deref(), Some("team/app/web"));
        assert_eq!(repo_of_file(DESCRIPTOR), None);
        assert_eq!(repo_of_file("Team"), None);
        let blob = LayerBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: d.clone(),
            size: 7,
        };
        assert_eq!(parse_descriptor(&descriptor_bytes(&blob), &d), Some(blob.clone()));
        assert_eq!(parse_descriptor(b"", &d), None);
        let other = LayerBlob {
            digest: Digest::sha256_of(b"other"),
            ..blob
        };
        assert_eq!(parse_descriptor(&descriptor_bytes(&other), &d), None);
    }

    /// Two blobs (gzip and zstd) of one layer, in two repositories; the repository linking each is real.
    async fn exercise(store: &dyn crate::RegistryStore) {
        let diff_id = Digest::sha256_of(b"layer");
        let mut entries = Vec::new();
        for (kind, repo) in [("gzip", "team/app"), ("gzip", "other"), ("zstd", "team/app")] {
            let data = format!("{kind} bytes").into_bytes();
            let digest = Digest::sha256_of(&data);
            let body: crate::ByteStream = Box::pin(futures_util::stream::iter([Ok(bytes::Bytes::from(data))]));
            store.put_blob(repo, &digest, body).await.unwrap();
            entries.push(LayerEntry {
                diff_id: diff_id.clone(),
                blob: LayerBlob {
                    media_type: format!("application/vnd.oci.image.layer.v1.tar+{kind}"),
                    digest,
                    size: 10,
                },
                repository: repo.to_owned(),
            });
        }
        assert_eq!(store.layer_index_complete().await.unwrap(), Some(false));
        assert!(store.layer_forms(&diff_id).await.unwrap().is_empty());
        store.record_layers(&entries).await.unwrap();
        // Idempotent.
        store.record_layers(&entries[..1]).await.unwrap();
        // Claims until checked: not answered.
        assert!(store.layer_forms(&diff_id).await.unwrap().is_empty());
        let mut claims = store.layer_claims(10).await.unwrap();
        claims.sort_by(|a, b| a.blob.media_type.cmp(&b.blob.media_type));
        assert_eq!(claims.len(), 2, "{claims:?}");
        assert_eq!(store.layer_claims(1).await.unwrap().len(), 1);
        // A false claim goes whole; a checked one is answered.
        let false_claim = LayerEntry {
            diff_id: Digest::sha256_of(b"another layer"),
            ..entries[0].clone()
        };
        store.record_layers(std::slice::from_ref(&false_claim)).await.unwrap();
        store
            .refuse_layer_claim(&false_claim.diff_id, &false_claim.blob.digest)
            .await
            .unwrap();
        for c in &claims {
            store.confirm_layer(&c.diff_id, &c.blob).await.unwrap();
        }
        assert!(store.layer_claims(10).await.unwrap().is_empty());
        assert!(store.layer_forms(&false_claim.diff_id).await.unwrap().is_empty());
        let mut forms = store.layer_forms(&diff_id).await.unwrap();
        forms.sort_by(|a, b| a.blob.media_type.cmp(&b.blob.media_type));
        assert_eq!(forms.len(), 2, "{forms:?}");
        assert_eq!(forms[0].blob, entries[0].blob);
        assert_eq!(forms[0].repositories, vec!["other".to_owned(), "team/app".to_owned()]);
        assert_eq!(forms[1].repositories, vec!["team/app".to_owned()]);
        assert!(
            store
                .layer_forms(&Digest::sha256_of(b"unknown"))
                .await
                .unwrap()
                .is_empty()
        );

        // One fact forgotten; a form left with no repository is not answered.
        assert!(store.forget_layer(&entries[2]).await.unwrap());
        assert!(!store.forget_layer(&entries[2]).await.unwrap());
        assert_eq!(store.layer_forms(&diff_id).await.unwrap().len(), 1);

        // A rebuild's prune: "other" no longer links the gzip blob.
        assert!(store.unlink_blob("other", &entries[1].blob.digest).await.unwrap());
        assert_eq!(store.prune_layer_index(Prune::Unlinked).await.unwrap(), 1);
        let forms = store.layer_forms(&diff_id).await.unwrap();
        assert_eq!(forms[0].repositories, vec!["team/app".to_owned()]);

        // A collection's prune: only what is still gone goes (a push may have brought a blob back meanwhile).
        let gone: HashSet<Digest> = [entries[0].blob.digest.clone()].into();
        assert_eq!(store.prune_layer_index(Prune::Blobs(&gone)).await.unwrap(), 0);
        assert_eq!(store.layer_forms(&diff_id).await.unwrap().len(), 1);
        assert!(store.remove_blob(&entries[0].blob.digest).await.unwrap());
        assert_eq!(store.prune_layer_index(Prune::Blobs(&gone)).await.unwrap(), 1);
        assert!(store.layer_forms(&diff_id).await.unwrap().is_empty());

        store.set_layer_index_complete(true).await.unwrap();
        assert_eq!(store.layer_index_complete().await.unwrap(), Some(true));
        store.set_layer_index_complete(false).await.unwrap();
        assert_eq!(store.layer_index_complete().await.unwrap(), Some(false));
    }

    #[tokio::test]
    async fn every_backend_records_answers_forgets_and_prunes_alike() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&crate::FsStore::open(dir.path().join("fs")).unwrap()).await;
        let cached = crate::CachedStore::new(
            crate::FsStore::open(dir.path().join("cached")).unwrap(),
            crate::CacheConfig::default(),
        );
        exercise(&cached).await;
        let op = opendal::Operator::new(opendal::services::Memory::default()).unwrap();
        let sessions = std::sync::Arc::new(crate::object::BucketSessions::new(op.clone()));
        exercise(&crate::object::ObjectStore::new(op, sessions, &Default::default())).await;
    }

    /// Replicas share the Redis cache: what one records, the other's next lookup sees (its cached answer is stale).
    #[tokio::test]
    async fn the_redis_cache_answers_for_every_replica_and_hears_their_writes() {
        use crate::redis_meta::testing::{RedisServer, meta};
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let url = format!("redis://127.0.0.1:{}/", redis.port);
        let dir = tempfile::tempdir().unwrap();
        exercise(&crate::RedisCache::new(
            crate::FsStore::open(dir.path().join("alone")).unwrap(),
            meta(&url).await,
            Default::default(),
        ))
        .await;
        let shared = dir.path().join("shared");
        let a = crate::RedisCache::new(
            crate::FsStore::open(&shared).unwrap(),
            meta(&url).await,
            Default::default(),
        );
        let b = crate::RedisCache::new(
            crate::FsStore::open(&shared).unwrap(),
            meta(&url).await,
            Default::default(),
        );
        let diff_id = Digest::sha256_of(b"shared layer");
        let entry = |n: u8, repo: &str| LayerEntry {
            diff_id: diff_id.clone(),
            blob: LayerBlob {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                digest: Digest::sha256_of(&[n]),
                size: 1,
            },
            repository: repo.into(),
        };
        a.record_layers(&[entry(1, "one")]).await.unwrap();
        a.confirm_layer(&diff_id, &entry(1, "one").blob).await.unwrap();
        assert_eq!(b.layer_forms(&diff_id).await.unwrap().len(), 1);
        // Now cached in Redis: b answers from it even with the files gone...
        std::fs::remove_dir_all(shared.join("layer-index")).unwrap();
        assert_eq!(a.layer_forms(&diff_id).await.unwrap().len(), 1);
        // ...until a replica writes: then every replica reads the store again.
        b.record_layers(&[entry(2, "two")]).await.unwrap();
        b.confirm_layer(&diff_id, &entry(2, "two").blob).await.unwrap();
        let forms = a.layer_forms(&diff_id).await.unwrap();
        assert_eq!(forms.len(), 1);
        assert_eq!(forms[0].repositories, vec!["two".to_owned()]);
    }
}
