//! One behavioural suite for every store a configuration can assemble (`stack::open`): the filesystem and S3 (moto's
//! server on loopback), each with the memory cache, no cache, and (S3) the Redis cache replicas share and Redis
//! sessions. Every combination must answer the same: blobs by digest with ranges, uploads that resume, refuse a
//! wrong digest and leave nothing behind, manifests by tag and digest, tags, referrers, links, deletes.

#[path = "../../wharf/tests/common/services.rs"]
#[allow(dead_code)]
mod services;

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use services::{RedisServer, S3Server};
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;
use wharf_storage::stack::{Backend, CacheKind, StackConfig, open};
use wharf_storage::{ByteStream, NewManifest, Reference, RegistryStore, StorageError};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn body(chunks: &[&[u8]]) -> ByteStream {
    let chunks: Vec<Result<Bytes, io::Error>> = chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Box::pin(futures_util::stream::iter(chunks))
}

fn broken(first: &[u8]) -> ByteStream {
    let chunks: Vec<Result<Bytes, io::Error>> = vec![
        Ok(Bytes::copy_from_slice(first)),
        Err(io::Error::new(io::ErrorKind::ConnectionReset, "client went away")),
    ];
    Box::pin(futures_util::stream::iter(chunks))
}

async fn read(store: &dyn RegistryStore, repo: &str, d: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
    let blob = store.open_blob(repo, d).await.unwrap().expect("the blob is linked");
    let parts: Vec<Bytes> = blob.source.read(range).await.unwrap().try_collect().await.unwrap();
    parts.concat()
}

fn manifest(
    config: &Digest,
    config_len: usize,
    layer: &Digest,
    layer_len: usize,
    subject: Option<&Descriptor>,
) -> Bytes {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_len}],
    });
    if let Some(s) = subject {
        m["subject"] = serde_json::to_value(s).unwrap();
        m["artifactType"] = "application/vnd.example.sig".into();
    }
    Bytes::from(serde_json::to_vec(&m).unwrap())
}

/// The suite. `label` names the combination in failures.
async fn contract(label: &str, store: Arc<dyn RegistryStore>) {
    let s = store.as_ref();
    let repo = "team/app";

    // Blobs: one PUT, visible by digest in its repository only, ranges read.
    let layer = (0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    let ld = Digest::sha256_of(&layer);
    assert_eq!(
        s.put_blob(repo, &ld, body(&[&layer])).await.unwrap(),
        layer.len() as u64,
        "{label}"
    );
    assert_eq!(s.blob_size(&ld).await.unwrap(), Some(layer.len() as u64), "{label}");
    assert_eq!(
        s.repo_blob_size(repo, &ld).await.unwrap(),
        Some(layer.len() as u64),
        "{label}"
    );
    assert_eq!(
        s.repo_blob_size("team/other", &ld).await.unwrap(),
        None,
        "{label}: links are per repository"
    );
    assert_eq!(read(s, repo, &ld, None).await, layer, "{label}");
    assert_eq!(read(s, repo, &ld, Some((10, 1000))).await, &layer[10..1000], "{label}");

    // A wrong digest stores nothing.
    let wrong = Digest::sha256_of(b"something else");
    let err = s.put_blob(repo, &wrong, body(&[b"these bytes"])).await.unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{label}: {err}");
    assert_eq!(s.blob_size(&wrong).await.unwrap(), None, "{label}");
    assert_eq!(
        s.blob_size(&Digest::sha256_of(b"these bytes")).await.unwrap(),
        None,
        "{label}"
    );

    // Uploads: in chunks, with the offset checked, a broken body kept up to what was stored, then committed.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let cd = Digest::sha256_of(&config);
    let up = s.start_upload(repo).await.unwrap();
    assert_eq!(up.offset, 0, "{label}");
    let st = s
        .append_upload(repo, &up.id, Some(0), body(&[&config[..10]]))
        .await
        .unwrap();
    assert_eq!(st.offset, 10, "{label}");
    let err = s
        .append_upload(repo, &up.id, Some(3), body(&[&config[3..]]))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::RangeMismatch { .. }), "{label}: {err}");
    assert_eq!(s.upload_status(repo, &up.id).await.unwrap().offset, 10, "{label}");
    let st = s
        .append_upload(repo, &up.id, Some(10), body(&[&config[10..]]))
        .await
        .unwrap();
    assert_eq!(st.offset, config.len() as u64, "{label}");
    assert_eq!(
        s.commit_upload(repo, &up.id, &cd).await.unwrap(),
        config.len() as u64,
        "{label}"
    );
    assert_eq!(
        s.repo_blob_size(repo, &cd).await.unwrap(),
        Some(config.len() as u64),
        "{label}"
    );
    assert!(
        s.upload_status(repo, &up.id).await.is_err(),
        "{label}: a committed session is gone"
    );

    // An upload committed under the wrong digest leaves no blob; a cancelled one is gone.
    let up = s.start_upload(repo).await.unwrap();
    s.append_upload(repo, &up.id, None, body(&[b"abc"])).await.unwrap();
    let err = s.commit_upload(repo, &up.id, &wrong).await.unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{label}: {err}");
    assert_eq!(s.blob_size(&wrong).await.unwrap(), None, "{label}");
    let up = s.start_upload(repo).await.unwrap();
    let kept = s.append_upload(repo, &up.id, None, broken(b"first part")).await;
    if let Err(StorageError::BodyInterrupted { kept, .. }) = &kept {
        assert_eq!(s.upload_status(repo, &up.id).await.unwrap().offset, *kept, "{label}");
    }
    s.cancel_upload(repo, &up.id).await.unwrap();
    assert!(s.upload_status(repo, &up.id).await.is_err(), "{label}: cancelled");

    // Manifests: by tag and digest, byte-exact, tags listed.
    let m = manifest(&cd, config.len(), &ld, layer.len(), None);
    let md = Digest::sha256_of(&m);
    s.put_manifest(
        repo,
        NewManifest {
            digest: md.clone(),
            media_type: OCI_MANIFEST.into(),
            body: m.clone(),
            tags: vec!["v1".into()],
            referrer: None,
        },
    )
    .await
    .unwrap();
    for r in [Reference::Tag("v1".into()), Reference::Digest(md.clone())] {
        let got = s.get_manifest(repo, &r).await.unwrap().expect("stored");
        assert_eq!(
            (got.body, got.media_type.as_str(), &got.digest),
            (m.clone(), OCI_MANIFEST, &md),
            "{label}"
        );
    }
    assert_eq!(s.tags(repo).await.unwrap(), Some(vec!["v1".to_owned()]), "{label}");
    assert_eq!(s.tags("team/none").await.unwrap(), None, "{label}");
    assert!(s.repositories().await.unwrap().contains(&repo.to_owned()), "{label}");

    // A referrer of it is listed under its subject.
    let subject: Descriptor =
        serde_json::from_value(serde_json::json!({"mediaType": OCI_MANIFEST, "digest": md, "size": m.len()})).unwrap();
    let sig = manifest(&cd, config.len(), &ld, layer.len(), Some(&subject));
    let sd = Digest::sha256_of(&sig);
    let sig_desc: Descriptor = serde_json::from_value(serde_json::json!({
        "mediaType": OCI_MANIFEST, "digest": sd, "size": sig.len(), "artifactType": "application/vnd.example.sig"
    }))
    .unwrap();
    s.put_manifest(
        repo,
        NewManifest {
            digest: sd.clone(),
            media_type: OCI_MANIFEST.into(),
            body: sig,
            tags: vec![],
            referrer: Some((md.clone(), sig_desc)),
        },
    )
    .await
    .unwrap();
    let refs = s.referrers(repo, &md).await.unwrap();
    assert_eq!(refs.iter().map(|d| &d.digest).collect::<Vec<_>>(), [&sd], "{label}");

    // Links: a mount into another repository, then an unlink.
    s.link_blob("team/other", &ld).await.unwrap();
    assert_eq!(
        s.repo_blob_size("team/other", &ld).await.unwrap(),
        Some(layer.len() as u64),
        "{label}"
    );
    assert!(s.unlink_blob("team/other", &ld).await.unwrap(), "{label}");
    assert_eq!(
        s.repo_blob_size("team/other", &ld).await.unwrap(),
        None,
        "{label}: the unlink is seen at once"
    );

    // Deletes: the tag, then the manifest; both seen at once (through every cache).
    assert!(s.delete_tag(repo, "v1").await.unwrap(), "{label}");
    assert!(
        s.get_manifest(repo, &Reference::Tag("v1".into()))
            .await
            .unwrap()
            .is_none(),
        "{label}"
    );
    assert!(!s.delete_tag(repo, "v1").await.unwrap(), "{label}: already gone");
    assert!(s.delete_manifest(repo, &md).await.unwrap(), "{label}");
    assert!(
        s.get_manifest(repo, &Reference::Digest(md.clone()))
            .await
            .unwrap()
            .is_none(),
        "{label}"
    );
}

fn fs_config(dir: &std::path::Path, cache: CacheKind) -> StackConfig {
    StackConfig {
        backend: Backend::Fs,
        root: dir.to_owned(),
        cache,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_filesystem_with_every_cache() {
    for cache in [CacheKind::Memory, CacheKind::Off] {
        let dir = tempfile::tempdir().unwrap();
        let stack = open(&fs_config(dir.path(), cache)).await.unwrap();
        contract(&format!("fs/{cache}"), stack.store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_with_every_cache_and_session_store() {
    let Some(s3) = S3Server::start() else { return };
    let Some(redis) = RedisServer::start() else { return };
    let combos = [
        (CacheKind::Memory, false),
        (CacheKind::Off, false),
        (CacheKind::Off, true),
        (CacheKind::Redis, true),
    ];
    for (i, (cache, with_redis)) in combos.into_iter().enumerate() {
        let bucket = format!("contract-{i}");
        s3.create_bucket(&bucket);
        let config = StackConfig {
            backend: Backend::S3,
            options: s3.options(&bucket),
            part_size: 5 << 20,
            cache,
            redis: with_redis.then(|| (redis.url(), format!("contract{i}:"))),
            ..Default::default()
        };
        let stack = open(&config).await.unwrap();
        let label = format!("s3/{cache}{}", if with_redis { "+redis" } else { "" });
        contract(&label, stack.store).await;
    }
}
