//! Garbage collection of an object store (S3 on moto's server) with `delete_untagged`: the untagged revisions
//! nothing kept reaches go, with their referrers and the blobs only they named; tagged images, their index
//! children and their referrers stay whole. A dry run reports the same and deletes nothing.

#[path = "../../wharf/tests/common/services.rs"]
#[allow(dead_code)]
mod services;

use std::io;
use std::time::Duration;

use bytes::Bytes;
use services::S3Server;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;
use wharf_storage::gc::GcOptions;
use wharf_storage::stack::{Backend, CacheKind, Collectable, StackConfig, open};
use wharf_storage::{ByteStream, NewManifest, Reference, RegistryStore};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const REPO: &str = "team/app";

fn body(data: &[u8]) -> ByteStream {
    let chunk: Result<Bytes, io::Error> = Ok(Bytes::copy_from_slice(data));
    Box::pin(futures_util::stream::iter(vec![chunk]))
}

/// Pushes an image (config and one layer made from `seed`), tagged `tag` if given, as a referrer of `subject` if
/// given. Returns its manifest digest and its layer's digest.
async fn push(s: &dyn RegistryStore, seed: u8, tag: Option<&str>, subject: Option<&(Digest, u64)>) -> (Digest, Digest) {
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let layer = vec![seed; 1000 + usize::from(seed)];
    let (cd, ld) = (Digest::sha256_of(&config), Digest::sha256_of(&layer));
    s.put_blob(REPO, &cd, body(&config)).await.unwrap();
    s.put_blob(REPO, &ld, body(&layer)).await.unwrap();
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": layer.len()}],
    });
    if let Some((d, size)) = subject {
        m["subject"] = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d, "size": size});
        m["artifactType"] = "application/vnd.example.sig".into();
    }
    let m = Bytes::from(serde_json::to_vec(&m).unwrap());
    let md = Digest::sha256_of(&m);
    let referrer = subject.map(|(d, _)| {
        let desc: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": md, "size": m.len(), "artifactType": "application/vnd.example.sig"
        }))
        .unwrap();
        (d.clone(), desc)
    });
    s.put_manifest(
        REPO,
        NewManifest {
            digest: md.clone(),
            media_type: OCI_MANIFEST.into(),
            body: m,
            tags: tag.into_iter().map(str::to_owned).collect(),
            referrer,
        },
    )
    .await
    .unwrap();
    (md, ld)
}

async fn manifest_len(s: &dyn RegistryStore, d: &Digest) -> u64 {
    let m = s
        .get_manifest(REPO, &Reference::Digest(d.clone()))
        .await
        .unwrap()
        .unwrap();
    m.body.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_revisions_and_what_only_they_name_go_tagged_images_stay_whole() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("gc-untagged");
    let config = StackConfig {
        backend: Backend::S3,
        options: s3.options("gc-untagged"),
        part_size: 5 << 20,
        cache: CacheKind::Memory,
        ..Default::default()
    };
    let stack = open(&config).await.unwrap();
    let s = stack.store.as_ref();
    let Collectable::Object(collectable) = stack.collectable else {
        panic!("an object store stack");
    };

    let (tagged, tagged_layer) = push(s, 1, Some("v1"), None).await;
    let tagged_len = manifest_len(s, &tagged).await;
    let (signature, signature_layer) = push(s, 2, None, Some(&(tagged.clone(), tagged_len))).await;
    let (untagged, untagged_layer) = push(s, 3, None, None).await;
    let untagged_len = manifest_len(s, &untagged).await;
    let (orphan_sig, orphan_sig_layer) = push(s, 4, None, Some(&(untagged.clone(), untagged_len))).await;
    // Bucket times are whole seconds and the collector allows a 2 s margin: everything above must be older than
    // the run's start less the margin.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    let opts = |dry_run| GcOptions {
        grace_period: Duration::ZERO,
        delete_untagged: true,
        dry_run,
        ..GcOptions::default()
    };
    let dry = wharf_storage::object::gc::collect(collectable.as_ref(), &opts(true))
        .await
        .unwrap();
    let mut reported: Vec<&Digest> = dry.manifests.iter().map(|m| &m.digest).collect();
    reported.sort();
    let mut expected = vec![&untagged, &orphan_sig];
    expected.sort();
    assert_eq!(reported, expected, "{dry:?}");
    assert!(
        s.get_manifest(REPO, &Reference::Digest(untagged.clone()))
            .await
            .unwrap()
            .is_some(),
        "a dry run deletes nothing"
    );

    let report = wharf_storage::object::gc::collect(collectable.as_ref(), &opts(false))
        .await
        .unwrap();
    assert_eq!(report.manifests.len(), 2, "{report:?}");
    for gone in [&untagged, &orphan_sig] {
        assert!(
            s.get_manifest(REPO, &Reference::Digest(gone.clone()))
                .await
                .unwrap()
                .is_none(),
            "{gone}"
        );
    }
    for gone in [&untagged_layer, &orphan_sig_layer] {
        assert_eq!(
            s.blob_size(gone).await.unwrap(),
            None,
            "{gone} was named only by untagged revisions"
        );
    }
    // The tagged image and its signature are whole.
    assert_eq!(
        s.get_manifest(REPO, &Reference::Tag("v1".into()))
            .await
            .unwrap()
            .map(|m| m.digest),
        Some(tagged.clone())
    );
    assert!(
        s.get_manifest(REPO, &Reference::Digest(signature.clone()))
            .await
            .unwrap()
            .is_some()
    );
    let referrers = s.referrers(REPO, &tagged).await.unwrap();
    assert_eq!(referrers.iter().map(|d| &d.digest).collect::<Vec<_>>(), [&signature]);
    for kept in [&tagged_layer, &signature_layer] {
        assert!(s.blob_size(kept).await.unwrap().is_some(), "{kept}");
    }
}
