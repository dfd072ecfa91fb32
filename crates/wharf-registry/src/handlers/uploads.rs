//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (start, monolithic `?digest=`, or mount `?mount=&from=`),
//! `GET|PATCH|PUT|DELETE /v2/<name>/blobs/uploads/<id>`.

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_oci::name::is_valid_repository;
use wharf_oci::query::param;
use wharf_oci::{Digest, ErrorCode};
use wharf_storage::UploadStatus;

use super::{body_stream, parse_digest};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::headers::{DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID, get_str, upload_range, value};
use crate::range::parse_content_range;

/// 202 for an upload in progress: where to send the next chunk and what has arrived.
fn in_progress(name: &str, status: &UploadStatus, code: StatusCode) -> Response {
    let mut resp = code.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        value(&format!("/v2/{name}/blobs/uploads/{}", status.id)),
    );
    h.insert(header::RANGE, value(&upload_range(status.offset)));
    h.insert(DOCKER_UPLOAD_UUID, value(&status.id));
    h.insert(header::CONTENT_LENGTH, value("0"));
    resp
}

/// 201 for a blob now in the repository.
fn created(name: &str, digest: &Digest) -> Response {
    let d = digest.to_string();
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, value(&format!("/v2/{name}/blobs/{d}")));
    h.insert(DOCKER_CONTENT_DIGEST, value(&d));
    h.insert(header::CONTENT_LENGTH, value("0"));
    resp
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    get_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

pub async fn post(app: &App, name: &str, req: Request) -> ApiResult {
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    if let Some(mount) = param(query, "mount") {
        let digest = parse_digest(&mount)?;
        let from = param(query, "from");
        if let Some(from) = &from
            && !is_valid_repository(from)
        {
            return Err(ApiError::new(
                ErrorCode::NameInvalid,
                format!("invalid repository name {from:?}"),
            ));
        }
        // With `from`, the blob must be in that repository; without it (spec 1.1), anywhere in the registry.
        let present = match &from {
            Some(from) => app.store.repo_blob_size(from, &digest).await?.is_some(),
            None => app.store.blob_size(&digest).await?.is_some(),
        };
        if present {
            app.store.link_blob(name, &digest).await?;
            return Ok(created(name, &digest));
        }
        let status = start(app, name).await?;
        return Ok(in_progress(name, &status, StatusCode::ACCEPTED));
    }
    if let Some(d) = param(query, "digest") {
        let digest = parse_digest(&d)?;
        app.store.put_blob(name, &digest, body_stream(req)).await?;
        return Ok(created(name, &digest));
    }
    let status = start(app, name).await?;
    Ok(in_progress(name, &status, StatusCode::ACCEPTED))
}

/// A new session, within the repository's bound on open sessions (past it, cancelled and refused).
async fn start(app: &App, name: &str) -> Result<UploadStatus, ApiError> {
    let status = app.store.start_upload(name).await?;
    if let Err(e) = app.sessions.opened(name, &status.id) {
        if let Err(cancel) = app.store.cancel_upload(name, &status.id).await {
            tracing::warn!(repository = name, error = %cancel, "cannot cancel a refused upload session");
        }
        return Err(e);
    }
    Ok(status)
}

pub async fn status(app: &App, name: &str, id: &str) -> ApiResult {
    let status = app.store.upload_status(name, id).await?;
    Ok(in_progress(name, &status, StatusCode::NO_CONTENT))
}

/// The start offset a chunk claims, from `Content-Range`; checked against `Content-Length` when both are given.
fn chunk_start(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(raw) = get_str(headers, header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let (start, end) = parse_content_range(raw).ok_or_else(|| {
        ApiError::new(ErrorCode::BlobUploadInvalid, format!("malformed Content-Range {raw:?}"))
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
    })?;
    if let Some(len) = declared_length(headers)
        && len != end - start + 1
    {
        return Err(ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range {raw:?} does not match Content-Length {len}"),
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE));
    }
    Ok(Some(start))
}

pub async fn patch(app: &App, name: &str, id: &str, req: Request) -> ApiResult {
    let start = chunk_start(req.headers())?;
    let status = app.store.append_upload(name, id, start, body_stream(req)).await?;
    app.sessions.touched(name, id);
    Ok(in_progress(name, &status, StatusCode::ACCEPTED))
}

pub async fn put(app: &App, name: &str, id: &str, req: Request) -> ApiResult {
    let digest = param(req.uri().query(), "digest")
        .ok_or_else(|| ApiError::digest_invalid("the digest query parameter is required to close an upload"))?;
    let digest = parse_digest(&digest)?;
    let start = chunk_start(req.headers())?;
    // A final chunk may come with the PUT; skip the append when the request says it has no body.
    if declared_length(req.headers()) != Some(0) {
        app.store.append_upload(name, id, start, body_stream(req)).await?;
    }
    app.store.commit_upload(name, id, &digest).await?;
    app.sessions.closed(name, id);
    Ok(created(name, &digest))
}

pub async fn delete(app: &App, name: &str, id: &str) -> ApiResult {
    app.store.cancel_upload(name, id).await?;
    app.sessions.closed(name, id);
    Ok(StatusCode::NO_CONTENT.into_response())
}
