//! Where everything lives on a filesystem store. All layout knowledge is here.
//!
//! ```text
//! <root>/
//!   blobs/<alg>/<first 2 hex>/<hex>                    blob bytes, content-addressed, stored once
//!   repositories/<name>/
//!     _layers/<alg>/<hex>                              empty file: the repository links this blob
//!     _manifests/revisions/<alg>/<hex>                 media type of a manifest revision (bytes are a blob)
//!     _manifests/tags/<tag>                            digest the tag points at
//!     _referrers/<subject alg>/<subject hex>/<alg>-<hex>.json  descriptor of a manifest whose subject it is
//!   uploads/<uuid>/data                                bytes received so far
//!   uploads/<uuid>/state.json                          repository, offset and hasher state (see fs/upload.rs)
//!   layer-index/<alg>/<hex>/<alg>-<hex>/...            the layer index: diff_id → blobs → repositories
//!                                                      (see layer_index.rs)
//!   tmp/                                               staging for atomic writes of small files
//!   tmp/gc-clock                                       touched as a garbage collection starts (see gc.rs)
//!   gc.lock                                            flock: shared by each `wharf serve`, exclusive by `wharf gc`
//! ```
//!
//! Repository components start with `[a-z0-9]`, so `_layers` and friends never collide with a nested repository.
//! Every path component comes from a validated name, tag, digest or UUID: nothing from a request is joined raw.

use std::path::{Path, PathBuf};

use wharf_oci::Digest;

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    pub fn repositories(&self) -> PathBuf {
        self.root.join("repositories")
    }

    pub fn repo(&self, repo: &str) -> PathBuf {
        self.repositories().join(repo)
    }

    pub fn layer_link(&self, repo: &str, d: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_layers")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    pub fn revision(&self, repo: &str, d: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_manifests/revisions")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    pub fn tags(&self, repo: &str) -> PathBuf {
        self.repo(repo).join("_manifests/tags")
    }

    pub fn tag(&self, repo: &str, tag: &str) -> PathBuf {
        self.tags(repo).join(tag)
    }

    pub fn referrers(&self, repo: &str, subject: &Digest) -> PathBuf {
        self.repo(repo)
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex())
    }

    pub fn referrer(&self, repo: &str, subject: &Digest, d: &Digest) -> PathBuf {
        self.referrers(repo, subject)
            .join(format!("{}-{}.json", d.algorithm(), d.hex()))
    }

    pub fn uploads(&self) -> PathBuf {
        self.root.join("uploads")
    }

    pub fn upload_dir(&self, id: &str) -> PathBuf {
        self.uploads().join(id)
    }

    /// The layer index's root (its layout is in `layer_index.rs`).
    pub fn layer_index(&self) -> PathBuf {
        self.root.join("layer-index")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
}
