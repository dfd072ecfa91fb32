//! The object store on OpenDAL's in-memory service (the S3 path is tested against a real S3 server in
//! `crates/wharf/tests/s3.rs`).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use super::*;
use crate::Uploads;
use crate::{ByteStream, NewManifest, Reference, RegistryStore, StorageError};

fn memory_op() -> Operator {
    Operator::new(opendal::services::Memory::default()).expect("the memory service always builds")
}

fn store_on(op: Operator, sessions: Arc<dyn SessionStore>) -> ObjectStore {
    ObjectStore::new(op, sessions, &ObjectConfig::default())
}

fn store() -> ObjectStore {
    let op = memory_op();
    store_on(op.clone(), Arc::new(BucketSessions::new(op)))
}

fn stream(chunks: Vec<Result<Vec<u8>, io::Error>>) -> ByteStream {
    Box::pin(futures_util::stream::iter(
        chunks.into_iter().map(|c| c.map(Bytes::from)),
    ))
}

async fn read_all(s: &ObjectStore, repo: &str, d: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
    let blob = s.open_blob(repo, d).await.unwrap().expect("blob is linked");
    let parts: Vec<Bytes> = blob.source.read(range).await.unwrap().try_collect().await.unwrap();
    parts.concat()
}

#[tokio::test]
async fn monolithic_blobs_are_verified_linked_and_ranged() {
    let s = store();
    let data = b"0123456789".repeat(1000);
    let d = Digest::sha256_of(&data);
    assert_eq!(
        s.put_blob("a/b", &d, stream(vec![Ok(data.clone())])).await.unwrap(),
        10_000
    );
    assert_eq!(s.blob_size(&d).await.unwrap(), Some(10_000));
    assert_eq!(s.repo_blob_size("a/b", &d).await.unwrap(), Some(10_000));
    assert_eq!(s.repo_blob_size("other", &d).await.unwrap(), None);
    assert_eq!(read_all(&s, "a/b", &d, None).await, data);
    assert_eq!(read_all(&s, "a/b", &d, Some((5, 15))).await, &data[5..15]);
    assert_eq!(s.repositories().await.unwrap(), vec!["a/b".to_owned()]);
}

#[tokio::test]
async fn a_wrong_digest_or_a_broken_body_leaves_no_blob() {
    let s = store();
    let data = b"payload".to_vec();
    let claimed = Digest::sha256_of(b"something else");
    let err = s.put_blob("r", &claimed, stream(vec![Ok(data)])).await.unwrap_err();
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
    assert_eq!(s.blob_size(&claimed).await.unwrap(), None);

    let d = Digest::sha256_of(b"abcdef");
    let broken = stream(vec![Ok(b"abc".to_vec()), Err(io::Error::other("client went away"))]);
    assert!(s.put_blob("r", &d, broken).await.is_err());
    assert_eq!(s.blob_size(&d).await.unwrap(), None);
    assert!(
        s.operator()
            .list_with("blobs/")
            .recursive(true)
            .await
            .unwrap()
            .iter()
            .all(|e| !e.metadata().is_file())
    );
}

#[tokio::test]
async fn chunked_uploads_resume_after_a_break_and_commit_without_rehashing() {
    let s = store();
    let up = s.start_upload("r").await.unwrap();
    let st = s
        .append_upload("r", &up.id, Some(0), stream(vec![Ok(b"hello ".to_vec())]))
        .await
        .unwrap();
    assert_eq!(st.offset, 6);
    // A body that breaks off keeps what arrived.
    let err = s
        .append_upload(
            "r",
            &up.id,
            Some(6),
            stream(vec![Ok(b"wor".to_vec()), Err(io::Error::other("cut"))]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::BodyInterrupted { kept: 9, .. }), "{err}");
    assert_eq!(s.upload_status("r", &up.id).await.unwrap().offset, 9);
    // Out of order: refused with the real offset.
    let err = s
        .append_upload("r", &up.id, Some(6), stream(vec![Ok(b"x".to_vec())]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::RangeMismatch { expected: 9, got: 6 }),
        "{err}"
    );
    s.append_upload("r", &up.id, Some(9), stream(vec![Ok(b"ld".to_vec())]))
        .await
        .unwrap();
    // Another repository cannot see the session.
    assert!(matches!(
        s.upload_status("q", &up.id).await,
        Err(StorageError::UploadUnknown(_))
    ));
    let want = Digest::sha256_of(b"hello world");
    assert_eq!(s.commit_upload("r", &up.id, &want).await.unwrap(), 11);
    assert_eq!(read_all(&s, "r", &want, None).await, b"hello world");
    // The session and its chunks are gone.
    assert!(matches!(
        s.upload_status("r", &up.id).await,
        Err(StorageError::UploadUnknown(_))
    ));
    assert!(
        s.operator()
            .list_with(keys::UPLOADS)
            .recursive(true)
            .await
            .unwrap()
            .iter()
            .all(|e| !e.metadata().is_file())
    );
}

#[tokio::test]
async fn a_mismatched_commit_discards_the_session_and_stores_nothing() {
    let s = store();
    let up = s.start_upload("r").await.unwrap();
    s.append_upload("r", &up.id, None, stream(vec![Ok(b"data".to_vec())]))
        .await
        .unwrap();
    let wrong = Digest::sha256_of(b"other");
    assert!(matches!(
        s.commit_upload("r", &up.id, &wrong).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(s.blob_size(&wrong).await.unwrap(), None);
    assert!(matches!(
        s.upload_status("r", &up.id).await,
        Err(StorageError::UploadUnknown(_))
    ));
}

#[tokio::test]
async fn sha512_commits_rehash_the_chunks() {
    let s = store();
    let up = s.start_upload("r").await.unwrap();
    s.append_upload("r", &up.id, None, stream(vec![Ok(b"big".to_vec())]))
        .await
        .unwrap();
    s.append_upload("r", &up.id, None, stream(vec![Ok(b" layer".to_vec())]))
        .await
        .unwrap();
    let want = Digest::of(wharf_oci::Algorithm::Sha512, b"big layer");
    assert_eq!(s.commit_upload("r", &up.id, &want).await.unwrap(), 9);
    assert_eq!(read_all(&s, "r", &want, None).await, b"big layer");
}

#[tokio::test]
async fn a_session_continues_on_another_replica() {
    let op = memory_op();
    let sessions: Arc<dyn SessionStore> = Arc::new(BucketSessions::new(op.clone()));
    let a = store_on(op.clone(), sessions.clone());
    let b = store_on(op, sessions);
    let up = a.start_upload("r").await.unwrap();
    a.append_upload("r", &up.id, Some(0), stream(vec![Ok(b"first ".to_vec())]))
        .await
        .unwrap();
    assert_eq!(b.upload_status("r", &up.id).await.unwrap().offset, 6);
    b.append_upload("r", &up.id, Some(6), stream(vec![Ok(b"second".to_vec())]))
        .await
        .unwrap();
    let want = Digest::sha256_of(b"first second");
    b.commit_upload("r", &up.id, &want).await.unwrap();
    assert_eq!(read_all(&a, "r", &want, None).await, b"first second");
}

#[tokio::test]
async fn a_lost_compare_and_set_drops_the_chunk() {
    // Two replicas append at the same offset: the state store lets one win; the loser's chunk is deleted.
    let op = memory_op();
    let sessions = MemorySessions::default();
    let a = store_on(op.clone(), Arc::new(sessions.clone()));
    let up = a.start_upload("r").await.unwrap();
    let state = sessions.load(&up.id).await.unwrap().unwrap();
    let mut moved = state.clone();
    moved.offset = 3;
    assert!(sessions.save(&up.id, &moved, Some(0)).await.unwrap());
    assert!(!sessions.save(&up.id, &moved, Some(0)).await.unwrap());
    let err = a
        .append_upload("r", &up.id, None, stream(vec![Ok(b"xyz".to_vec())]))
        .await;
    // The state said offset 3 with no chunks; this append started at 3 and wins against nobody: it is recorded.
    assert_eq!(err.unwrap().offset, 6);
}

fn manifest(config: &Digest, layer: &Digest, subject: Option<&Digest>) -> (Digest, Bytes) {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": 1}],
    });
    if let Some(s) = subject {
        m["subject"] = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": s.to_string(), "size": 1});
    }
    let body = Bytes::from(serde_json::to_vec(&m).unwrap());
    (Digest::sha256_of(&body), body)
}

#[tokio::test]
async fn manifests_tags_referrers_and_deletes() {
    let s = store();
    let (cfg, layer) = (Digest::sha256_of(b"{}"), Digest::sha256_of(b"l"));
    // A manifest's blobs must be stored first: the store checks them.
    let (d, body) = manifest(&cfg, &layer, None);
    let mt = "application/vnd.oci.image.manifest.v1+json".to_owned();
    let early = NewManifest {
        digest: d.clone(),
        media_type: mt.clone(),
        body: body.clone(),
        tags: vec![],
        referrer: None,
    };
    assert!(matches!(
        s.put_manifest("app", early).await,
        Err(StorageError::BlobUnknown(_))
    ));
    s.put_blob("app", &cfg, stream(vec![Ok(b"{}".to_vec())])).await.unwrap();
    s.put_blob("app", &layer, stream(vec![Ok(b"l".to_vec())]))
        .await
        .unwrap();
    s.put_manifest(
        "app",
        NewManifest {
            digest: d.clone(),
            media_type: mt.clone(),
            body: body.clone(),
            tags: vec!["v1".into(), "latest".into()],
            referrer: None,
        },
    )
    .await
    .unwrap();
    let got = s
        .get_manifest("app", &Reference::Tag("v1".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.digest.clone(), got.body.clone(), got.media_type.clone()),
        (d.clone(), body.clone(), mt.clone())
    );
    assert_eq!(
        s.tags("app").await.unwrap(),
        Some(vec!["latest".to_owned(), "v1".to_owned()])
    );
    assert_eq!(s.tags("nope").await.unwrap(), None);

    let (sig, sig_body) = manifest(&cfg, &layer, Some(&d));
    let desc = Descriptor {
        media_type: mt.clone(),
        digest: sig.clone(),
        size: sig_body.len() as u64,
        artifact_type: None,
        annotations: None,
        urls: None,
        platform: None,
    };
    s.put_manifest(
        "app",
        NewManifest {
            digest: sig.clone(),
            media_type: mt.clone(),
            body: sig_body,
            tags: vec![],
            referrer: Some((d.clone(), desc)),
        },
    )
    .await
    .unwrap();
    let refs = s.referrers("app", &d).await.unwrap();
    assert_eq!(
        refs.iter().map(|r| r.digest.clone()).collect::<Vec<_>>(),
        vec![sig.clone()]
    );

    assert!(s.delete_tag("app", "latest").await.unwrap());
    assert!(!s.delete_tag("app", "latest").await.unwrap());
    assert!(s.delete_manifest("app", &d).await.unwrap());
    assert!(
        s.get_manifest("app", &Reference::Tag("v1".into()))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.get_manifest("app", &Reference::Digest(d.clone()))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.tags("app").await.unwrap(), Some(vec![]));
    assert!(s.delete_manifest("app", &sig).await.unwrap());
    assert!(s.referrers("app", &d).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_catalog_lists_repositories_without_walking_blobs() {
    let s = store();
    for repo in ["b/nested/deep", "a", "b"] {
        let d = Digest::sha256_of(repo.as_bytes());
        s.put_blob(repo, &d, stream(vec![Ok(repo.as_bytes().to_vec())]))
            .await
            .unwrap();
    }
    assert_eq!(s.repositories().await.unwrap(), vec!["a", "b", "b/nested/deep"]);
}

#[tokio::test]
async fn mounts_link_and_unlinks_forget() {
    let s = store();
    let d = Digest::sha256_of(b"shared");
    s.put_blob("one", &d, stream(vec![Ok(b"shared".to_vec())]))
        .await
        .unwrap();
    s.link_blob("two", &d).await.unwrap();
    assert_eq!(s.repo_blob_size("two", &d).await.unwrap(), Some(6));
    assert!(s.unlink_blob("two", &d).await.unwrap());
    assert!(s.open_blob("two", &d).await.unwrap().is_none());
    assert!(s.remove_blob(&d).await.unwrap());
    assert_eq!(s.blob_size(&d).await.unwrap(), None);
}
