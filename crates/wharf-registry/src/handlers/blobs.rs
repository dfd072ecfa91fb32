//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>`.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use wharf_oci::ErrorCode;

use super::parse_digest;
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::headers::{DOCKER_CONTENT_DIGEST, get_str, value};
use crate::range::{RangeRequest, parse_range};

pub async fn get(app: &App, name: &str, digest: &str, headers: &HeaderMap, head: bool) -> ApiResult {
    let digest = parse_digest(digest)?;
    let unknown = || ApiError::new(ErrorCode::BlobUnknown, format!("blob {digest} is unknown to {name}"));
    // HEAD asks only for the size; GET opens the blob (for a mirror, that may start the upstream fetch).
    let (size, source) = if head {
        (
            app.store.repo_blob_size(name, &digest).await?.ok_or_else(unknown)?,
            None,
        )
    } else {
        // An object store may hand the bytes out itself (a presigned URL): the client follows a 307, as clients
        // of CNCF distribution's S3 `redirect` do.
        if let Some(url) = app.store.blob_redirect(name, &digest).await? {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, value(&url));
            h.insert(DOCKER_CONTENT_DIGEST, value(&digest.to_string()));
            return Ok((StatusCode::TEMPORARY_REDIRECT, h).into_response());
        }
        let blob = app.store.open_blob(name, &digest).await?.ok_or_else(unknown)?;
        (blob.size, Some(blob.source))
    };
    let digest_str = digest.to_string();
    let mut resp_headers = HeaderMap::new();
    resp_headers.insert(DOCKER_CONTENT_DIGEST, value(&digest_str));
    resp_headers.insert(header::ETAG, value(&format!("\"{digest_str}\"")));
    resp_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    resp_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));

    let (status, range) = match parse_range(get_str(headers, header::RANGE), size) {
        RangeRequest::Full => (StatusCode::OK, None),
        RangeRequest::Partial(start, end) => {
            resp_headers.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {start}-{}/{size}", end - 1)),
            );
            (StatusCode::PARTIAL_CONTENT, Some((start, end)))
        }
        RangeRequest::Unsatisfiable => {
            return Err(wharf_storage::StorageError::RangeNotSatisfiable { size }.into());
        }
    };
    let len = range.map(|(s, e)| e - s).unwrap_or(size);
    resp_headers.insert(header::CONTENT_LENGTH, value(&len.to_string()));
    let Some(source) = source else {
        return Ok((status, resp_headers).into_response());
    };
    let stream = source.read(range).await?;
    Ok((status, resp_headers, Body::from_stream(stream)).into_response())
}

pub async fn delete(app: &App, name: &str, digest: &str) -> ApiResult {
    let digest = parse_digest(digest)?;
    if app.store.unlink_blob(name, &digest).await? {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(ApiError::new(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is unknown to {name}"),
        ))
    }
}
