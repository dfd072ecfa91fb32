/*!
`rootfs:` destinations: image layers applied onto a directory, as a container runtime would see them.

[`apply_layer`] applies one uncompressed layer tar onto a root filesystem following the OCI image spec's
"Applying changesets" (whiteouts, opaque directories, replacement of a path by another kind), with the results of
`umoci unpack` and containerd: modes (setuid/setgid/sticky included), owners, times, xattrs, symlinks, hardlinks
and device nodes. Nothing a layer says can create or change anything outside the root: names are confined to it
and every directory on the way is resolved inside it, symlinks included (chroot semantics).

It is synchronous and meant for a blocking thread; the layer stream is read to its end.
*/

mod apply;
mod dest;
mod safe_path;
mod sys;

pub use apply::{ApplyError, ApplyOptions, ApplyStats, apply_layer};
pub use dest::RootfsDestination;
