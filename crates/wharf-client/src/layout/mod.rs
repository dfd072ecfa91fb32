//! The OCI image layout transport (`oci:PATH[:TAG]`): `oci-layout`, `index.json` (the tag is the
//! `org.opencontainers.image.ref.name` annotation of an entry) and `blobs/<alg>/<hex>`.

mod dest;
mod source;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use crate::Error;

pub use dest::LayoutDestination;
pub use source::LayoutSource;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";

/// `index.json`, keeping whatever fields we do not know (so an update changes only what it must).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Paths inside one layout. Every blob path is built from a validated [`Digest`], whose hex is safe as a name.
#[derive(Debug, Clone)]
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Layout {
        Layout { root: root.to_owned() }
    }

    fn blob_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm().as_str())
    }

    fn blob(&self, digest: &Digest) -> PathBuf {
        self.blob_dir(digest).join(digest.hex())
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Layout {
            path: self.root.display().to_string(),
            reason: reason.into(),
        }
    }

    async fn read_index(&self) -> Result<Option<Index>, Error> {
        let path = self.root.join(INDEX_FILE);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.error(format!("index.json is not a valid index: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
}
