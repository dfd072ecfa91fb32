//! `GET /v2/<name>/referrers/<digest>?artifactType=`: an OCI index of the manifests whose subject is `digest`.

use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use wharf_oci::media;

use super::parse_digest;
use crate::App;
use crate::error::ApiResult;
use crate::headers::OCI_FILTERS_APPLIED;

pub async fn get(app: &App, name: &str, digest: &str, query: Option<&str>) -> ApiResult {
    let subject = parse_digest(digest)?;
    let artifact_type = wharf_oci::query::param(query, "artifactType");
    let mut manifests = app.store.referrers(name, &subject).await?;
    if let Some(t) = &artifact_type {
        manifests.retain(|d| d.artifact_type.as_deref() == Some(t.as_str()));
    }
    manifests.sort_by(|a, b| a.digest.cmp(&b.digest));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    });
    let body = serde_json::to_vec(&index).unwrap_or_default();
    let mut resp = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(media::OCI_INDEX))],
        body,
    )
        .into_response();
    if artifact_type.is_some() {
        resp.headers_mut()
            .insert(OCI_FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
