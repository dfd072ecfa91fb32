//! `GET /v2/_catalog?n=&last=`.

use crate::App;
use crate::error::ApiResult;
use crate::pagination::{paginate, params};

pub async fn get(app: &App, query: Option<&str>) -> ApiResult {
    let (n, last) = params(query)?;
    let all = app.store.repositories().await?;
    let page = paginate(all, n, last.as_deref(), "/v2/_catalog");
    Ok(page.into_response(serde_json::Map::new(), "repositories"))
}
