//! `?n=&last=` pagination with a `Link` header, shared by tags and catalog.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use wharf_oci::ErrorCode;

use crate::error::{ApiError, ApiResult};

pub struct Page {
    pub items: Vec<String>,
    /// `Link` header value when more items follow.
    pub link: Option<String>,
}

impl Page {
    /// A JSON response with `items` under `key` (plus `extra` fields) and the `Link` header when more follow.
    pub fn into_response(self, mut body: serde_json::Map<String, serde_json::Value>, key: &str) -> Response {
        body.insert(key.to_owned(), self.items.into());
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            json,
        )
            .into_response();
        if let Some(link) = self.link
            && let Ok(v) = HeaderValue::from_str(&link)
        {
            resp.headers_mut().insert(header::LINK, v);
        }
        resp
    }
}

/// Reads `n` and `last` from a query string.
pub fn params(query: Option<&str>) -> ApiResult<(Option<usize>, Option<String>)> {
    let mut n = None;
    let mut last = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "n" => {
                n = Some(v.parse::<usize>().map_err(|_| {
                    ApiError::new(ErrorCode::PaginationNumberInvalid, format!("n={v:?} is not a count"))
                })?)
            }
            "last" => last = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok((n, last))
}

/// Cuts one page out of a sorted list. `base` is the path the `Link` points at.
pub fn paginate(sorted: Vec<String>, n: Option<usize>, last: Option<&str>, base: &str) -> Page {
    let mut items: Vec<String> = match last {
        Some(l) => sorted.into_iter().filter(|t| t.as_str() > l).collect(),
        None => sorted,
    };
    let mut link = None;
    if let Some(n) = n
        && items.len() > n
    {
        items.truncate(n);
        if let Some(last) = items.last() {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("n", &n.to_string())
                .append_pair("last", last)
                .finish();
            link = Some(format!("<{base}?{q}>; rel=\"next\""));
        }
    }
    Page { items, link }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn pages() {
        let all = v(&["a", "b", "c", "d"]);
        let p = paginate(all.clone(), Some(2), None, "/v2/r/tags/list");
        assert_eq!(p.items, v(&["a", "b"]));
        assert_eq!(p.link.as_deref(), Some("</v2/r/tags/list?n=2&last=b>; rel=\"next\""));
        let p = paginate(all.clone(), Some(2), Some("b"), "/x");
        assert_eq!(p.items, v(&["c", "d"]));
        assert!(p.link.is_none());
        let p = paginate(all.clone(), Some(0), None, "/x");
        assert!(p.items.is_empty());
        let p = paginate(all, None, Some("c"), "/x");
        assert_eq!(p.items, v(&["d"]));
    }
}
