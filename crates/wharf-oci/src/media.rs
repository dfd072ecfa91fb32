//! Media types a registry needs to tell apart.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// An uncompressed OCI layer (what `docker save` holds).
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker's name for an uncompressed layer (seen in images built by some tools; not in Docker's own pushes).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Layer media types whose bytes a registry need not hold (the spec's non-distributable layers and Docker's
/// foreign layers): a manifest may reference them without pushing them.
pub const NON_DISTRIBUTABLE: &[&str] = &[
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// True for the media types of an index (OCI index or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Whether an `Accept` header value admits `media_type`. An absent or empty header, `*/*` and `application/*`
/// admit everything; parameters (`;q=...`) are ignored.
pub fn accepts(accept: &[&str], media_type: &str) -> bool {
    let mut any_listed = false;
    for value in accept {
        for item in value.split(',') {
            let item = item.split(';').next().unwrap_or("").trim();
            if item.is_empty() {
                continue;
            }
            any_listed = true;
            if item == media_type || item == "*/*" || item == "application/*" || item == "application/json" {
                return true;
            }
        }
    }
    !any_listed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_rules() {
        assert!(accepts(&[], OCI_MANIFEST));
        assert!(accepts(&[""], OCI_MANIFEST));
        assert!(accepts(
            &["application/vnd.oci.image.manifest.v1+json; q=0.5"],
            OCI_MANIFEST
        ));
        assert!(accepts(&[DOCKER_MANIFEST, "*/*"], OCI_MANIFEST));
        assert!(accepts(&[&format!("{DOCKER_MANIFEST}, {OCI_INDEX}")], OCI_INDEX));
        assert!(!accepts(&[DOCKER_MANIFEST], OCI_MANIFEST));
    }
}
