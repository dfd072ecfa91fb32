//! Whole lists a registry answers a page at a time (`tags/list`, `_catalog`: `?n=` and the `Link: <...>;
//! rel="next"` header of the distribution spec), and manifest deletion.

use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use wharf_oci::Digest;

use crate::client::{Op, Registry};
use crate::error::RemoteError;

/// Entries asked for per page.
const PAGE: usize = 1000;
/// Pages followed at most (ten million entries): a registry whose `Link` never ends cannot loop the client.
const MAX_PAGES: usize = 10_000;
/// Largest page body.
const MAX_PAGE_BYTES: usize = 16 << 20;

impl Registry {
    /// Every tag of `repository`, in the registry's order.
    pub async fn all_tags(&self, repository: &str, scopes: &[String]) -> Result<Vec<String>, RemoteError> {
        #[derive(Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let first = self.url(repository, &format!("tags/list?n={PAGE}"));
        self.pages(&format!("tags of {repository}"), &first, scopes, |b| {
            serde_json::from_slice::<Page>(b).map(|p| p.tags.unwrap_or_default())
        })
        .await
    }

    /// Every repository the registry lists to this caller (`GET /v2/_catalog`).
    pub async fn catalog(&self) -> Result<Vec<String>, RemoteError> {
        #[derive(Deserialize)]
        struct Page {
            repositories: Option<Vec<String>>,
        }
        let first = format!("{}v2/_catalog?n={PAGE}", self.base());
        let scopes = ["registry:catalog:*".to_string()];
        self.pages("the catalog", &first, &scopes, |b| {
            serde_json::from_slice::<Page>(b).map(|p| p.repositories.unwrap_or_default())
        })
        .await
    }

    async fn pages(
        &self,
        what: &str,
        first: &str,
        scopes: &[String],
        parse: impl Fn(&[u8]) -> Result<Vec<String>, serde_json::Error>,
    ) -> Result<Vec<String>, RemoteError> {
        let op = Op { what, scopes };
        let protocol = |reason: String| RemoteError::Protocol {
            what: what.to_owned(),
            registry: self.name().to_owned(),
            reason,
        };
        let mut out = Vec::new();
        let mut url = first.to_owned();
        for _ in 0..MAX_PAGES {
            let resp = self.send(&op, Method::GET, &url, HeaderMap::new(), None).await?;
            if !resp.status().is_success() {
                return Err(self.status_error(what, resp).await);
            }
            let next = resp
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|l| self.resolve(&l))
                .transpose()?;
            let mut resp = resp;
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(what, e))? {
                if body.len() + chunk.len() > MAX_PAGE_BYTES {
                    return Err(protocol(format!("a page larger than {MAX_PAGE_BYTES} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            out.extend(parse(&body).map_err(|e| protocol(format!("bad list: {e}")))?);
            match next {
                Some(n) => url = n.to_string(),
                None => return Ok(out),
            }
        }
        Err(protocol(format!("more than {MAX_PAGES} pages")))
    }

    /// `DELETE /v2/<repository>/manifests/<digest>`.
    pub async fn delete_manifest(
        &self,
        repository: &str,
        digest: &Digest,
        scopes: &[String],
    ) -> Result<(), RemoteError> {
        let what = format!("manifest {repository}@{digest}");
        let op = Op { what: &what, scopes };
        let url = self.url(repository, &format!("manifests/{digest}"));
        let resp = self.send(&op, Method::DELETE, &url, HeaderMap::new(), None).await?;
        match resp.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
            _ => Err(self.status_error(&what, resp).await),
        }
    }
}

/// The target of `rel="next"` in a `Link` header: `<url>; rel="next"` (several links may be comma-separated).
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://x/prev>; rel="prev", <https://x/next>; rel=next"#).as_deref(),
            Some("https://x/next")
        );
        assert_eq!(next_link("garbage"), None);
    }
}
