//! OCI layouts written by hand for the tests.

#![allow(dead_code)]

use std::path::Path;

use wharf_oci::Digest;

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn put_blob(root: &Path, data: &[u8]) -> String {
    let d = Digest::sha256_of(data);
    let dir = root.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.hex()), data).unwrap();
    d.to_string()
}

/// Writes an image (config + layers) into the layout at `root` and returns its manifest digest and size.
pub fn write_image(root: &Path, seed: u64, layers: &[usize]) -> (String, usize) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let config_digest = put_blob(root, &config);
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .enumerate()
        .map(|(i, len)| {
            let data = bytes(seed * 100 + i as u64, *len);
            let d = put_blob(root, &data);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": len})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    (put_blob(root, &manifest), manifest.len())
}

pub fn write_index(root: &Path, tag: &str, digest: &str, size: usize) {
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}
