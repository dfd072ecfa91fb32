//! The transport traits (containers/image's `ImageSource`/`ImageDestination`, reduced to what a copy needs).

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use crate::Error;

/// A blob's bytes as they arrive.
pub type BlobStream = BoxStream<'static, Result<Bytes, Error>>;

/// A manifest or index, byte-exact, with the media type it is served as and its digest.
pub use wharf_remote::Manifest;

/// Where a source's blobs live in a registry, so that a destination in the same registry can mount them instead
/// of receiving their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOrigin {
    /// `host[:port]` as normalized by [`crate::Reference`].
    pub registry: String,
    pub repository: String,
}

/// A compressed blob that holds a layer, as a registry's layer index reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownLayer {
    pub blob: Descriptor,
    /// A repository of the same registry the caller may pull it from.
    pub repository: Option<String>,
}

#[async_trait]
pub trait ImageSource: Send + Sync {
    /// A short name for messages (`docker://host/repo:tag`, `oci:/path:tag`).
    fn describe(&self) -> String;

    /// The manifest the name points at (`None`), or a child of an index by its descriptor. The digest of what
    /// is returned is verified against the descriptor (or the name's digest) by the source.
    async fn get_manifest(&self, child: Option<&Descriptor>) -> Result<Manifest, Error>;

    /// Opens a blob. The stream is not verified here: [`crate::copy`] hashes it on the way through.
    async fn get_blob(&self, desc: &Descriptor) -> Result<BlobStream, Error>;

    /// Set when the blobs live in a registry repository (mount source).
    fn mount_origin(&self) -> Option<MountOrigin> {
        None
    }
}

#[async_trait]
pub trait ImageDestination: Send + Sync {
    fn describe(&self) -> String;

    /// Whether the destination already holds this blob (then it is skipped).
    async fn has_blob(&self, desc: &Descriptor) -> Result<bool, Error>;

    /// The registry repository this destination writes to, when it is one (for mount hints).
    fn mount_target(&self) -> Option<MountOrigin> {
        None
    }

    /// Asks the destination to take the blob from `origin` without its bytes. `Ok(false)`: not possible here.
    async fn try_mount(&self, _desc: &Descriptor, _origin: &MountOrigin) -> Result<bool, Error> {
        Ok(false)
    }

    /// Compressed blobs the destination knows to hold the layer whose uncompressed digest is `diff_id`, and a
    /// repository of its registry to mount each from (wharf's layer index, `GET /wharf/v1/layers/<diff_id>`).
    /// Empty where there is no such index (any other registry, a layout): never an error.
    async fn known_layers(&self, _diff_id: &Digest) -> Vec<KnownLayer> {
        Vec::new()
    }

    /// Stores a blob from `stream`. The stream yields exactly `desc.size` verified bytes or ends with an error;
    /// on an error nothing may become visible under `desc.digest`.
    async fn put_blob(&self, desc: &Descriptor, stream: BlobStream) -> Result<(), Error>;

    /// Whether uncompressed layers should be compressed on the way here (registries and OCI layouts: yes; the
    /// Docker engine, docker archives and unpacked root filesystems take layers as they come).
    fn compresses_layers(&self) -> bool {
        false
    }

    /// Stores a blob whose digest is known only once its last byte is produced (a layer compressed on the way).
    /// The destination hashes the stream; returns the digest and size it stored the blob under. Only called when
    /// [`ImageDestination::compresses_layers`] is true.
    async fn put_new_blob(&self, _stream: BlobStream) -> Result<(Digest, u64), Error> {
        Err(Error::BadOption(format!(
            "{} cannot take a blob of unknown digest",
            self.describe()
        )))
    }

    /// Whether a copy that failed half-way may be tried again into this destination from another source (the
    /// docker-daemon fallback). False for a destination that cannot take the same image twice (rootfs).
    fn restartable(&self) -> bool {
        true
    }

    /// Announces an image manifest before its blobs arrive, when the source knows it up front, so a destination
    /// that applies layers in order (rootfs) can start as soon as the first layer streams in.
    async fn prepare(&self, _manifest: &Manifest) -> Result<(), Error> {
        Ok(())
    }

    /// Stores a manifest once every blob it references is in place. `top_level` is the manifest the destination
    /// name (its tag) points at; children of an index are stored by digest only.
    async fn put_manifest(&self, manifest: &Manifest, top_level: bool) -> Result<(), Error>;
}
