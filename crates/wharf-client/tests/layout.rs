//! OCI layout → OCI layout copies through the library, on real directories.

mod common;

use std::path::Path;

use common::{bytes, write_image, write_index};
use wharf_client::{CopyOptions, Error, ImageName, TransportOptions, copy, parse_image_name};
use wharf_oci::Digest;

async fn run(src: &str, dst: &str) -> Result<wharf_client::CopyReport, Error> {
    let t = TransportOptions::default();
    let s = parse_image_name(src)?.open_source(&t).await?;
    let store = wharf_client::store::ContentStore::at(std::env::temp_dir().join("wharf-test-unused-store"));
    let d = parse_image_name(dst)?.open_destination(&t, &store).await?;
    copy(s.as_ref(), d.as_ref(), &CopyOptions::default()).await
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test]
async fn layout_to_layout_is_byte_exact_and_skips_the_second_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (digest, size) = write_image(&a, 1, &[300_000, 1, 0]);
    write_index(&a, "v1", &digest, size);

    let r = run(&format!("oci:{}:v1", a.display()), &format!("oci:{}:v1", b.display()))
        .await
        .unwrap();
    assert_eq!(r.digest, digest);
    assert_eq!((r.blobs_copied, r.blobs_skipped, r.manifests), (4, 0, 1));
    assert_eq!(
        files_under(&a.join("blobs/sha256")),
        files_under(&b.join("blobs/sha256"))
    );
    for name in files_under(&a.join("blobs/sha256")) {
        let p = Path::new("blobs/sha256").join(&name);
        assert_eq!(
            std::fs::read(a.join(&p)).unwrap(),
            std::fs::read(b.join(&p)).unwrap(),
            "{name}"
        );
    }
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );

    let again = run(&format!("oci:{}:v1", a.display()), &format!("oci:{}:v2", b.display()))
        .await
        .unwrap();
    assert_eq!((again.bytes_moved, again.blobs_skipped), (0, 4));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "v1 and v2 both tagged");
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (digest, size) = write_image(&a, 2, &[200_000]);
    write_index(&a, "v1", &digest, size);
    let layer = Digest::sha256_of(&bytes(200, 200_000));
    // Same size, different content: only hashing can tell.
    std::fs::write(a.join("blobs/sha256").join(layer.hex()), bytes(999, 200_000)).unwrap();

    let err = run(&format!("oci:{}:v1", a.display()), &format!("oci:{}:v1", b.display()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer.to_string()), "{err}");
    let written = files_under(&b.join("blobs/sha256"));
    assert!(!written.contains(&layer.hex().to_owned()), "nothing under the digest");
    assert!(
        !written.iter().any(|n| n.ends_with(".tmp")),
        "no temp file left: {written:?}"
    );
    assert!(
        !b.join("index.json").exists(),
        "no manifest written after a failed blob"
    );
}

#[tokio::test]
async fn missing_tag_and_bad_names_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let (digest, size) = write_image(&a, 3, &[10]);
    write_index(&a, "v1", &digest, size);
    let err = run(
        &format!("oci:{}:nope", a.display()),
        &format!("oci:{}/b", tmp.path().display()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no image tagged \"nope\""), "{err}");
    assert!(matches!(
        parse_image_name("docker://Upper/Case"),
        Err(Error::BadName { .. })
    ));
    assert!(matches!(parse_image_name("oci:/x"), Ok(ImageName::Oci { .. })));
}
