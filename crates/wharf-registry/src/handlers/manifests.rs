//! `GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>`.

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use wharf_oci::manifest::{ManifestError, ManifestView};
use wharf_oci::name::is_valid_tag;
use wharf_oci::{Digest, ErrorCode, media};
use wharf_storage::{NewManifest, Reference};

use super::parse_digest;
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::headers::{DOCKER_CONTENT_DIGEST, OCI_SUBJECT, OCI_TAG, get_str, value};

/// A reference is a digest if it has a `:` (tags cannot), else a tag.
fn parse_reference(reference: &str) -> Result<Reference, ApiError> {
    if reference.contains(':') {
        Ok(Reference::Digest(parse_digest(reference)?))
    } else if is_valid_tag(reference) {
        Ok(Reference::Tag(reference.to_owned()))
    } else {
        Err(ApiError::new(
            ErrorCode::TagInvalid,
            format!("invalid tag {reference:?}"),
        ))
    }
}

fn unknown(name: &str, reference: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is unknown to {name}"),
    )
}

pub async fn get(app: &App, name: &str, reference: &str, headers: &HeaderMap) -> ApiResult {
    let parsed = parse_reference(reference).map_err(|_| unknown(name, reference))?;
    let m = app
        .store
        .get_manifest(name, &parsed)
        .await?
        .ok_or_else(|| unknown(name, reference))?;
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !media::accepts(&accept, &m.media_type) {
        return Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!(
                "manifest {reference} is a {}, which the Accept header does not admit",
                m.media_type
            ),
        ));
    }
    let digest = m.digest.to_string();
    Ok((
        [
            (header::CONTENT_TYPE, value(&m.media_type)),
            (DOCKER_CONTENT_DIGEST, value(&digest)),
            (header::ETAG, value(&format!("\"{digest}\""))),
            (header::CONTENT_LENGTH, value(&m.body.len().to_string())),
        ],
        m.body,
    )
        .into_response())
}

pub async fn put(app: &App, name: &str, reference: &str, req: Request) -> ApiResult {
    let reference = parse_reference(reference)?;
    // Distribution-spec `?tag=` on a push by digest: tag it in the same request (several allowed).
    let tag_params: Vec<String> = wharf_oci::query::params(req.uri().query(), "tag");
    if let Some(bad) = tag_params.iter().find(|t| !is_valid_tag(t)) {
        return Err(ApiError::new(ErrorCode::TagInvalid, format!("invalid tag {bad:?}")));
    }
    let tag_params_given = matches!(reference, Reference::Digest(_)) && !tag_params.is_empty();
    let content_type = get_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let limit = app.config.max_manifest_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::ManifestInvalid,
            format!("manifest is larger than {limit} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    if get_str(req.headers(), header::CONTENT_LENGTH)
        .and_then(|l| l.parse::<usize>().ok())
        .is_some_and(|l| l > limit)
    {
        return Err(too_large());
    }
    let body: Bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large())?;

    let digest = match &reference {
        Reference::Digest(d) => {
            let computed = Digest::of(d.algorithm(), &body);
            if computed != *d {
                return Err(ApiError::digest_invalid(format!(
                    "manifest digest is {computed}, not {d} as in the URL"
                )));
            }
            computed
        }
        Reference::Tag(_) => Digest::sha256_of(&body),
    };
    let view = ManifestView::parse(&body, content_type.as_deref()).map_err(invalid)?;
    check_references(app, name, &view).await?;

    let tags = match reference {
        Reference::Tag(t) => vec![t],
        Reference::Digest(_) => tag_params,
    };
    let referrer = view.subject.as_ref().map(|s| {
        (
            s.digest.clone(),
            view.referrer_descriptor(digest.clone(), body.len() as u64),
        )
    });
    let subject = view.subject.as_ref().map(|s| s.digest.to_string());
    let size = body.len() as u64;
    // An image's config, read once for the layer index and the build cache.
    let config = crate::layers::image_config(app.store.as_ref(), name, &view).await;
    // The layer index learns the image's layers before the manifest is stored: a 201 means the index has them (see
    // `layers`). The index is a hint: failing to write it does not fail the push.
    if let Some(config) = &config {
        match crate::layers::learn(app.store.as_ref(), name, &view, config).await {
            Ok(claims) => app.claims().submit(claims),
            Err(e) => {
                tracing::warn!(repository = name, error = %e, "layer index: cannot record the image's layers");
                // The next start builds the index again from the manifests.
                let _ = app.store.set_layer_index_complete(false).await;
            }
        }
    }
    fault_point("after-layer-index");
    app.store
        .put_manifest(
            name,
            NewManifest {
                digest: digest.clone(),
                media_type: view.media_type.clone(),
                body,
                tags: tags.clone(),
                referrer,
            },
        )
        .await
        .map_err(|e| match e {
            // The store's own check (made where no garbage collection can race it) found a blob gone.
            wharf_storage::StorageError::BlobUnknown(d) => ApiError::new(
                ErrorCode::ManifestBlobUnknown,
                format!("{d} is referenced but not in {name}"),
            )
            .with_detail(serde_json::json!({ "digest": d.to_string() })),
            other => other.into(),
        })?;

    // The build cache's trie learns the image's steps (in memory, derived from the manifest).
    if let Some(config) = &config {
        app.build_cache.learn(name, &digest, &view, config);
    }
    if let Some(n) = &app.notifier {
        let target = |tag: Option<String>| crate::notify::Target {
            media_type: Some(view.media_type.clone()),
            digest: digest.to_string(),
            size: Some(size),
            length: Some(size),
            repository: name.to_owned(),
            tag,
        };
        if tags.is_empty() {
            n.emit("push", target(None));
        }
        for t in &tags {
            n.emit("push", target(Some(t.clone())));
        }
    }
    let digest_str = digest.to_string();
    let mut headers = vec![
        (header::LOCATION, value(&format!("/v2/{name}/manifests/{digest_str}"))),
        (DOCKER_CONTENT_DIGEST, value(&digest_str)),
    ];
    if let Some(s) = subject {
        headers.push((OCI_SUBJECT, value(&s)));
    }
    let mut resp = StatusCode::CREATED.into_response();
    resp.headers_mut().extend(headers);
    if tag_params_given {
        for t in &tags {
            resp.headers_mut().append(OCI_TAG, value(t));
        }
    }
    Ok(resp)
}

/// Debug builds only: `WHARF_FAULT=<point>` kills the process at that point, as `kill -9` would, so tests can crash a
/// request between two writes.
fn fault_point(point: &str) {
    if cfg!(debug_assertions) && std::env::var("WHARF_FAULT").is_ok_and(|f| f == point) {
        tracing::error!(point, "WHARF_FAULT: aborting");
        std::process::abort();
    }
}

fn invalid(e: ManifestError) -> ApiError {
    ApiError::new(ErrorCode::ManifestInvalid, format!("manifest invalid: {e}"))
}

/// Every blob an image manifest needs, and every child of an index, must already be in the repository.
async fn check_references(app: &App, name: &str, view: &ManifestView) -> Result<(), ApiError> {
    let missing = |d: &Digest| {
        ApiError::new(
            ErrorCode::ManifestBlobUnknown,
            format!("{d} is referenced but not in {name}"),
        )
        .with_detail(serde_json::json!({ "digest": d.to_string() }))
    };
    for d in view.required_blobs() {
        if app.store.repo_blob_size(name, &d.digest).await?.is_none() {
            return Err(missing(&d.digest));
        }
    }
    for child in &view.manifests {
        let is_manifest = app
            .store
            .get_manifest(name, &Reference::Digest(child.digest.clone()))
            .await?
            .is_some();
        if !is_manifest && app.store.repo_blob_size(name, &child.digest).await?.is_none() {
            return Err(missing(&child.digest));
        }
    }
    Ok(())
}

pub async fn delete(app: &App, name: &str, reference: &str) -> ApiResult {
    let parsed = parse_reference(reference)?;
    let removed = match &parsed {
        Reference::Digest(d) => {
            let removed = app.store.delete_manifest(name, d).await?;
            if removed {
                app.build_cache.forget(name, d);
            }
            removed
        }
        Reference::Tag(t) => app.store.delete_tag(name, t).await?,
    };
    if removed && let Some(n) = &app.notifier {
        let (digest, tag) = match parsed {
            Reference::Digest(d) => (d.to_string(), None),
            Reference::Tag(t) => (String::new(), Some(t)),
        };
        n.emit(
            "delete",
            crate::notify::Target {
                media_type: None,
                digest,
                size: None,
                length: None,
                repository: name.to_owned(),
                tag,
            },
        );
    }
    if removed {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(unknown(name, reference))
    }
}
