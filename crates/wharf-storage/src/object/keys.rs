//! Where everything lives in a bucket. All key knowledge of the object store is here; the layout follows the
//! filesystem store's (`paths.rs`) so the two read alike, plus a catalog index.
//!
//! ```text
//! blobs/<alg>/<first 2 hex>/<hex>                         blob bytes (manifests too), written only once verified
//! repositories/<name>/_layers/<alg>/<hex>                 empty: the repository links this blob
//! repositories/<name>/_manifests/revisions/<alg>/<hex>    media type of a manifest revision
//! repositories/<name>/_manifests/tags/<tag>               digest the tag points at
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>  descriptor of a manifest whose subject is <alg>:<hex>
//! _catalog/<name>/_repo                                   empty: <name> exists (the catalog lists only these)
//! _uploads/<uuid>/chunks/<start>-<nonce>                  bytes of one append to an upload session
//! _uploads/<uuid>/state.json                              session state, when Redis does not hold it
//! ```
//!
//! Listing `_catalog/` touches one small object per repository instead of walking every link in the bucket (the
//! S3 catalog walk CNCF distribution is known for). Every component comes from a validated name, tag, digest or
//! UUID.

use wharf_oci::Digest;

pub fn blob(d: &Digest) -> String {
    let hex = d.hex();
    format!("blobs/{}/{}/{hex}", d.algorithm(), &hex[..2])
}

pub fn layer_link(repo: &str, d: &Digest) -> String {
    format!("repositories/{repo}/_layers/{}/{}", d.algorithm(), d.hex())
}

pub fn revision(repo: &str, d: &Digest) -> String {
    format!("repositories/{repo}/_manifests/revisions/{}/{}", d.algorithm(), d.hex())
}

pub fn tags(repo: &str) -> String {
    format!("repositories/{repo}/_manifests/tags/")
}

pub fn tag(repo: &str, tag: &str) -> String {
    format!("repositories/{repo}/_manifests/tags/{tag}")
}

pub fn referrers(repo: &str, subject: &Digest) -> String {
    format!(
        "repositories/{repo}/_referrers/{}/{}/",
        subject.algorithm(),
        subject.hex()
    )
}

pub fn referrer(repo: &str, subject: &Digest, d: &Digest) -> String {
    format!("{}{}-{}", referrers(repo, subject), d.algorithm(), d.hex())
}

pub const CATALOG: &str = "_catalog/";

pub fn catalog_entry(repo: &str) -> String {
    format!("{CATALOG}{repo}/_repo")
}

/// The repository name of a key under [`CATALOG`], if it is a catalog entry.
pub fn catalog_name(key: &str) -> Option<&str> {
    key.strip_prefix(CATALOG)?.strip_suffix("/_repo")
}

pub const UPLOADS: &str = "_uploads/";

pub fn upload_dir(id: &str) -> String {
    format!("{UPLOADS}{id}/")
}

pub fn upload_state(id: &str) -> String {
    format!("{UPLOADS}{id}/state.json")
}

/// A chunk key: the start offset, zero-padded so keys sort in byte order, and a nonce so a retried or racing append
/// never overwrites a chunk another request already recorded.
pub fn upload_chunk(id: &str, start: u64) -> String {
    format!("{UPLOADS}{id}/chunks/{start:020}-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_entries_round_trip() {
        let key = catalog_entry("library/alpine");
        assert_eq!(key, "_catalog/library/alpine/_repo");
        assert_eq!(catalog_name(&key), Some("library/alpine"));
        assert_eq!(catalog_name("_catalog/library/alpine/other"), None);
    }

    #[test]
    fn blob_keys_fan_out() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(blob(&d), format!("blobs/sha256/{}/{}", &d.hex()[..2], d.hex()));
    }
}
