//! Image names in skopeo's syntax: `docker://REF` (or a bare `REF`), `oci:PATH[:TAG]`, `docker-archive:PATH[:REF]`,
//! `docker-daemon:REF`, and (as a destination) `rootfs:PATH`; and [`transfer`], which copies between any two.

use std::fmt;
use std::path::PathBuf;

use crate::archive::write::{SaveDestination, SaveTarget};
use crate::archive::{ArchiveInput, copy_from_archive, copy_from_daemon};
use crate::layout::{LayoutDestination, LayoutSource};
use crate::registry::{Credentials, RegistryClient, RegistryDestination, RegistryOptions, RegistrySource};
use crate::store::ContentStore;
use crate::{CopyOptions, CopyReport, copy};
use crate::{Error, ImageDestination, ImageSource, Reference};

/// Transports skopeo has that wharf does not implement yet: named, so `docker-archive:x.tar` is not taken for a
/// registry reference.
const PLANNED: &[&str] = &["oci-archive", "dir", "containers-storage"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageName {
    Docker(Reference),
    Oci {
        path: PathBuf,
        tag: Option<String>,
    },
    /// A `docker save` tar file, and which of its images (a `RepoTags` entry).
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
    /// An image of the local Docker engine (`DOCKER_HOST`).
    DockerDaemon(String),
    /// A directory the image is unpacked into (destination only).
    Rootfs(PathBuf),
}

/// How transports connect.
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    /// Allow plain HTTP to registries that are not on a loopback address.
    pub insecure: bool,
    pub credentials: Option<Credentials>,
    /// `rootfs:` destinations: most bytes of file contents the whole image may write (holes included); past it the
    /// unpacking fails. `None`: no limit.
    pub unpack_limit: Option<u64>,
    /// The registry's certificates in Docker's `certs.d` layout [default: `/etc/docker/certs.d/<host>` if present].
    pub cert_dir: Option<std::path::PathBuf>,
}

pub fn parse_image_name(input: &str) -> Result<ImageName, Error> {
    if let Some(r) = input.strip_prefix("docker://") {
        return Ok(ImageName::Docker(Reference::parse(r)?));
    }
    if let Some(rest) = input.strip_prefix("oci:") {
        // The path ends at the first ':' (skopeo's rule); a tag must follow the tag grammar.
        let (path, tag) = match rest.split_once(':') {
            Some((p, t)) => (p, Some(t)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(Error::BadName {
                input: input.to_owned(),
                reason: "oci: needs a directory, oci:PATH[:TAG]".into(),
            });
        }
        if let Some(t) = tag
            && !wharf_oci::name::is_valid_tag(t)
        {
            return Err(Error::BadName {
                input: input.to_owned(),
                reason: format!("invalid tag {t:?}"),
            });
        }
        return Ok(ImageName::Oci {
            path: PathBuf::from(path),
            tag: tag.map(str::to_owned),
        });
    }
    if let Some(rest) = input.strip_prefix("docker-archive:") {
        let (path, reference) = match rest.split_once(':') {
            Some((p, r)) => (p, Some(r)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(Error::BadName {
                input: input.to_owned(),
                reason: "docker-archive: needs a file, docker-archive:PATH[:REF]".into(),
            });
        }
        if let Some(r) = reference {
            Reference::parse(r)?;
        }
        return Ok(ImageName::DockerArchive {
            path: PathBuf::from(path),
            reference: reference.map(str::to_owned),
        });
    }
    if let Some(rest) = input.strip_prefix("docker-daemon:") {
        // The engine resolves names itself; check the grammar here for a clear error.
        Reference::parse(rest)?;
        return Ok(ImageName::DockerDaemon(rest.to_owned()));
    }
    if let Some(rest) = input.strip_prefix("rootfs:") {
        if rest.is_empty() {
            return Err(Error::BadName {
                input: input.to_owned(),
                reason: "rootfs: needs a directory, rootfs:PATH".into(),
            });
        }
        return Ok(ImageName::Rootfs(PathBuf::from(rest)));
    }
    if let Some((scheme, _)) = input.split_once(':')
        && PLANNED.contains(&scheme)
    {
        return Err(Error::UnsupportedTransport(format!("{scheme}:")));
    }
    if input.contains("://") {
        return Err(Error::BadName {
            input: input.to_owned(),
            reason: "unknown transport (supported: docker://REF or a bare REF, oci:PATH[:TAG], \
                     docker-archive:PATH[:REF], docker-daemon:REF, rootfs:PATH)"
                .into(),
        });
    }
    Ok(ImageName::Docker(Reference::parse(input)?))
}

impl ImageName {
    /// The source side, for the transports that read like a registry (the archive transports are read as one
    /// stream by [`transfer`]).
    pub async fn open_source(&self, options: &TransportOptions) -> Result<Box<dyn ImageSource>, Error> {
        Ok(match self {
            ImageName::Docker(r) => Box::new(RegistrySource::new(RegistryClient::new(
                r.clone(),
                &registry_options(options),
            )?)),
            ImageName::Oci { path, tag } => Box::new(LayoutSource::new(path, tag.clone())),
            ImageName::DockerArchive { .. } | ImageName::DockerDaemon(_) => {
                return Err(Error::BadOption(format!("{self} is read as a stream by transfer()")));
            }
            ImageName::Rootfs(_) => {
                return Err(Error::BadOption(format!("{self} can only be a destination")));
            }
        })
    }

    pub async fn open_destination(
        &self,
        options: &TransportOptions,
        store: &ContentStore,
    ) -> Result<Box<dyn ImageDestination>, Error> {
        Ok(match self {
            ImageName::Docker(r) => Box::new(RegistryDestination::new(RegistryClient::new(
                r.clone(),
                &registry_options(options),
            )?)),
            ImageName::Oci { path, tag } => Box::new(LayoutDestination::create(path, tag.clone()).await?),
            ImageName::DockerArchive { path, reference } => Box::new(SaveDestination::new(
                SaveTarget::File(path.clone()),
                store.clone(),
                reference.as_deref().map(repo_tag),
            )),
            ImageName::DockerDaemon(r) => Box::new(SaveDestination::new(
                SaveTarget::Daemon(crate::archive::engine::Engine::from_env()?),
                store.clone(),
                Some(repo_tag(r)),
            )),
            ImageName::Rootfs(path) => Box::new(
                crate::rootfs::RootfsDestination::create(path, store.clone())
                    .await?
                    .with_limit(options.unpack_limit),
            ),
        })
    }
}

/// `name` → `name:latest`, as `RepoTags` entries are written.
fn repo_tag(r: &str) -> String {
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') || r.contains('@') {
        r.to_owned()
    } else {
        format!("{r}:latest")
    }
}

/// Copies the image `src` names to `dst`, whatever their transports. Blobs that must be held whole on the way
/// (for the Docker engine, docker archives, root filesystems) go through the content store `store`.
pub async fn transfer(
    src: &ImageName,
    dst: &ImageName,
    src_options: &TransportOptions,
    dst_options: &TransportOptions,
    opts: &CopyOptions,
    store: &ContentStore,
) -> Result<CopyReport, Error> {
    let destination = dst.open_destination(dst_options, store).await?;
    match src {
        ImageName::DockerArchive { path, reference } => {
            let input = ArchiveInput::File {
                path: path.clone(),
                reference: reference.clone(),
            };
            copy_from_archive(&input, destination.as_ref(), opts, store).await
        }
        ImageName::DockerDaemon(r) => copy_from_daemon(r, destination.as_ref(), opts, store).await,
        _ => {
            let source = src.open_source(src_options).await?;
            copy(source.as_ref(), destination.as_ref(), opts).await
        }
    }
}

fn registry_options(o: &TransportOptions) -> RegistryOptions {
    RegistryOptions {
        insecure: o.insecure,
        credentials: o.credentials.clone(),
        cert_dir: o.cert_dir.clone(),
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageName::Docker(r) => write!(f, "docker://{r}"),
            ImageName::Oci { path, tag: Some(t) } => write!(f, "oci:{}:{t}", path.display()),
            ImageName::Oci { path, tag: None } => write!(f, "oci:{}", path.display()),
            ImageName::DockerArchive {
                path,
                reference: Some(r),
            } => write!(f, "docker-archive:{}:{r}", path.display()),
            ImageName::DockerArchive { path, reference: None } => write!(f, "docker-archive:{}", path.display()),
            ImageName::DockerDaemon(r) => write!(f, "docker-daemon:{r}"),
            ImageName::Rootfs(p) => write!(f, "rootfs:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = parse_image_name("docker://alpine").unwrap();
        assert_eq!(n.to_string(), "docker://docker.io/library/alpine:latest");
        assert_eq!(parse_image_name("alpine").unwrap(), n);
        let n = parse_image_name("127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(n.to_string(), "docker://127.0.0.1:5000/a/b:v1");
        assert_eq!(
            parse_image_name("oci:/tmp/lay:v1").unwrap(),
            ImageName::Oci {
                path: "/tmp/lay".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            parse_image_name("oci:rel/dir").unwrap(),
            ImageName::Oci {
                path: "rel/dir".into(),
                tag: None
            }
        );
    }

    #[test]
    fn bad_names() {
        assert!(matches!(
            parse_image_name("oci-archive:/x.tar"),
            Err(Error::UnsupportedTransport(_))
        ));
        assert_eq!(
            parse_image_name("docker-archive:/x.tar:app:v1").unwrap(),
            ImageName::DockerArchive {
                path: "/x.tar".into(),
                reference: Some("app:v1".into())
            }
        );
        assert_eq!(
            parse_image_name("docker-daemon:localhost:5000/a:v1").unwrap(),
            ImageName::DockerDaemon("localhost:5000/a:v1".into())
        );
        assert_eq!(
            parse_image_name("rootfs:/tmp/r").unwrap(),
            ImageName::Rootfs("/tmp/r".into())
        );
        assert_eq!(repo_tag("a/b"), "a/b:latest");
        assert_eq!(repo_tag("localhost:5000/b"), "localhost:5000/b:latest");
        assert_eq!(repo_tag("b:v1"), "b:v1");
        for bad in [
            "oci:",
            "docker-archive:",
            "rootfs:",
            "docker-daemon:Bad Name",
            "oci:/x:bad tag",
            "docker://",
            "docker://UPPER",
            "ftp://x/y",
            "a b",
        ] {
            assert!(parse_image_name(bad).is_err(), "{bad:?}");
        }
    }
}
