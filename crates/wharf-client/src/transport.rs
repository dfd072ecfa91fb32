//! Image names in skopeo's syntax: `docker://REF`, `oci:PATH[:TAG]`, or a bare `REF` (= `docker://REF`).

use std::fmt;
use std::path::PathBuf;

use crate::layout::{LayoutDestination, LayoutSource};
use crate::registry::{Credentials, RegistryClient, RegistryDestination, RegistryOptions, RegistrySource};
use crate::{Error, ImageDestination, ImageSource, Reference};

/// Transports skopeo has that wharf does not implement yet: named, so `docker-archive:x.tar` is not taken for a
/// registry reference.
const PLANNED: &[&str] = &[
    "docker-archive",
    "docker-daemon",
    "rootfs",
    "oci-archive",
    "dir",
    "containers-storage",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageName {
    Docker(Reference),
    Oci { path: PathBuf, tag: Option<String> },
}

/// How transports connect.
#[derive(Debug, Clone, Default)]
pub struct TransportOptions {
    /// Allow plain HTTP to registries that are not on a loopback address.
    pub insecure: bool,
    pub credentials: Option<Credentials>,
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
    if let Some((scheme, _)) = input.split_once(':')
        && PLANNED.contains(&scheme)
    {
        return Err(Error::UnsupportedTransport(format!("{scheme}:")));
    }
    if input.contains("://") {
        return Err(Error::BadName {
            input: input.to_owned(),
            reason: "unknown transport (supported: docker://REF, oci:PATH[:TAG], or a bare REF)".into(),
        });
    }
    Ok(ImageName::Docker(Reference::parse(input)?))
}

impl ImageName {
    pub async fn open_source(&self, options: &TransportOptions) -> Result<Box<dyn ImageSource>, Error> {
        Ok(match self {
            ImageName::Docker(r) => Box::new(RegistrySource::new(RegistryClient::new(
                r.clone(),
                &registry_options(options),
            )?)),
            ImageName::Oci { path, tag } => Box::new(LayoutSource::new(path, tag.clone())),
        })
    }

    pub async fn open_destination(&self, options: &TransportOptions) -> Result<Box<dyn ImageDestination>, Error> {
        Ok(match self {
            ImageName::Docker(r) => Box::new(RegistryDestination::new(RegistryClient::new(
                r.clone(),
                &registry_options(options),
            )?)),
            ImageName::Oci { path, tag } => Box::new(LayoutDestination::create(path, tag.clone()).await?),
        })
    }
}

fn registry_options(o: &TransportOptions) -> RegistryOptions {
    RegistryOptions {
        insecure: o.insecure,
        credentials: o.credentials.clone(),
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageName::Docker(r) => write!(f, "docker://{r}"),
            ImageName::Oci { path, tag: Some(t) } => write!(f, "oci:{}:{t}", path.display()),
            ImageName::Oci { path, tag: None } => write!(f, "oci:{}", path.display()),
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
            parse_image_name("docker-archive:/x.tar"),
            Err(Error::UnsupportedTransport(_))
        ));
        for bad in [
            "oci:",
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
