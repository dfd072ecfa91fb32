//! The distribution-spec URL grammar. Repository names have any number of `/`-separated components, so routing by
//! pattern does not work (axum allows a wildcard only at the end); the registry routes `/v2/*` once and parses the
//! rest here, from the right.

use crate::name::is_valid_repository;

/// What a `/v2/...` path addresses. Names are checked against the spec's grammar; references and digests are
/// returned raw for the handler to validate (they map to different error codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: &'a str },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: &'a str, reference: &'a str },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: &'a str, digest: &'a str },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: &'a str },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: &'a str, id: &'a str },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: &'a str, digest: &'a str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Not a distribution API path at all.
    NotFound,
    /// The path has the right shape but the repository name breaks the grammar.
    InvalidName(String),
}

/// Parses the path part of a request URI (no query string).
pub fn parse<'a>(path: &'a str) -> Result<Route<'a>, RouteError> {
    let rest = path.strip_prefix("/v2").ok_or(RouteError::NotFound)?;
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Base);
    }
    let rest = rest.strip_prefix('/').ok_or(RouteError::NotFound)?;
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let name_ok = |name: &'a str| -> Result<&'a str, RouteError> {
        if is_valid_repository(name) {
            Ok(name)
        } else {
            Err(RouteError::InvalidName(name.to_owned()))
        }
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags { name: name_ok(name)? });
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Route::UploadStart { name: name_ok(name)? });
    }
    let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Ok(Route::Upload {
            name: name_ok(name)?,
            id: last,
        });
    }
    let (name, kind) = head.rsplit_once('/').ok_or(RouteError::NotFound)?;
    let route = match kind {
        "manifests" => Route::Manifest { name, reference: last },
        "blobs" => Route::Blob { name, digest: last },
        "referrers" => Route::Referrers { name, digest: last },
        _ => return Err(RouteError::NotFound),
    };
    name_ok(name)?;
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_route() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2"), Ok(Route::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Route::Catalog));
        assert_eq!(parse("/v2/a/b/tags/list"), Ok(Route::Tags { name: "a/b" }));
        assert_eq!(
            parse("/v2/a/b/manifests/latest"),
            Ok(Route::Manifest {
                name: "a/b",
                reference: "latest"
            })
        );
        assert_eq!(
            parse("/v2/a/blobs/sha256:00"),
            Ok(Route::Blob {
                name: "a",
                digest: "sha256:00"
            })
        );
        assert_eq!(
            parse("/v2/a/b/c/blobs/uploads/"),
            Ok(Route::UploadStart { name: "a/b/c" })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/xyz"),
            Ok(Route::Upload { name: "a", id: "xyz" })
        );
        assert_eq!(
            parse("/v2/a/referrers/sha256:00"),
            Ok(Route::Referrers {
                name: "a",
                digest: "sha256:00"
            })
        );
        // A repository may itself contain a component named like a route keyword.
        assert_eq!(
            parse("/v2/blobs/manifests/manifests/x"),
            Ok(Route::Manifest {
                name: "blobs/manifests",
                reference: "x"
            })
        );
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(parse("/v1/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a/other/x"), Err(RouteError::NotFound));
        assert!(matches!(parse("/v2/../manifests/x"), Err(RouteError::InvalidName(_))));
        assert!(matches!(
            parse("/v2/a/%2e%2e/manifests/x"),
            Err(RouteError::InvalidName(_))
        ));
        assert!(matches!(parse("/v2/Upper/tags/list"), Err(RouteError::InvalidName(_))));
        assert!(matches!(parse("/v2//blobs/uploads/"), Err(RouteError::InvalidName(_))));
    }
}
