//! One module per resource of the distribution API; each function is named for the method it serves.

pub mod base;
pub mod blobs;
pub mod catalog;
pub mod manifests;
pub mod referrers;
pub mod tags;
pub mod uploads;

use axum::body::Body;
use axum::extract::Request;
use futures_util::TryStreamExt;
use wharf_oci::Digest;
use wharf_storage::ByteStream;

use crate::error::ApiError;

/// Parses a digest from a URL or query, mapping failure to `DIGEST_INVALID`.
pub(crate) fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(|e| ApiError::digest_invalid(format!("{e}")))
}

/// The request body as a stream of byte chunks for storage.
pub(crate) fn body_stream(req: Request) -> ByteStream {
    body_into_stream(req.into_body())
}

pub(crate) fn body_into_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}
