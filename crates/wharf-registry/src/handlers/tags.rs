//! `GET /v2/<name>/tags/list?n=&last=`.

use wharf_oci::ErrorCode;

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::pagination::{paginate, params};

pub async fn list(app: &App, name: &str, query: Option<&str>) -> ApiResult {
    let (n, last) = params(query)?;
    let all = app
        .store
        .tags(name)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NameUnknown, format!("repository {name} is unknown")))?;
    let page = paginate(all, n, last.as_deref(), &format!("/v2/{name}/tags/list"));
    let mut body = serde_json::Map::new();
    body.insert("name".into(), name.into());
    Ok(page.into_response(body, "tags"))
}
