/*!
The smart client of wharf: images move between *transports* through one [`copy::copy`].

Like skopeo and go-containerregistry, every transport is a pair of small traits: an [`ImageSource`] hands out
manifests (byte-exact, with their media type) and blob streams; an [`ImageDestination`] says whether it already
holds a blob, may mount it from a sibling repository, accepts a blob as a stream and finally a manifest.
[`transport::parse_image_name`] turns skopeo's syntax (`docker://REF`, `oci:PATH[:TAG]`, a bare `REF`) into an
[`transport::ImageName`] that opens either side.

[`copy::copy`] does the rest: it resolves the manifest (one platform of an index, or the whole index with
`all`), moves the blobs in parallel (HEAD first, then a cross-repository mount, else a stream from source to
destination hashed on the fly and cut before its last byte when the digest does not match), and writes the
manifests last, so a destination never references a blob it does not hold. Digests are preserved, except that
uncompressed layers from a non-registry source are compressed for a registry or layout (see [`copy`]).

Transports today: [`registry`] (the distribution API, anonymous/bearer/basic auth, retries) and [`layout`] (an OCI
image layout directory).
*/

pub mod archive;
pub mod compress;
pub mod copy;
mod error;
mod image;
pub mod layout;
pub mod platform;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod transport;
mod verify;

pub use copy::{CopyOptions, CopyReport, Progress, copy};
pub use error::Error;
pub use image::{BlobStream, ImageDestination, ImageSource, KnownLayer, Manifest, MountOrigin};
pub use platform::Platform;
pub use registry::Credentials;
pub use transport::{ImageName, TransportOptions, parse_image_name, transfer};
pub use wharf_remote::reference;
pub use wharf_remote::{Reference, RemoteError};
