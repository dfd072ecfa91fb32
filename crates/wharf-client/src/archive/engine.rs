//! The Docker Engine API, as much as `docker-daemon:` needs: inspect an image, export it (`GET /images/get`, the
//! `docker save` stream) and import one (`POST /images/load`). The daemon is found like the docker CLI finds it:
//! `DOCKER_HOST` (`unix:///path` or `tcp://host:port`), else `/var/run/docker.sock`.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use wharf_oci::Digest;

use crate::{BlobStream, Error};

/// Longest line of a build's answer.
const MAX_BUILD_LINE: usize = 16 << 20;

pub struct Engine {
    http: reqwest::Client,
    base: String,
    /// `unix:///var/run/docker.sock`, for messages.
    host: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    /// The config digest (`sha256:...`).
    pub id: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(default)]
    pub root_f_s: Option<RootFs>,
    /// Where the storage driver keeps the image's top layer (overlay2: `UpperDir`).
    #[serde(default)]
    pub graph_driver: Option<GraphDriver>,
}

/// One message of `POST /build`'s answer (a JSON object per line).
#[derive(Debug, Default, Deserialize)]
pub struct BuildMessage {
    /// Builder output: `Step 3/9 : RUN make`, ` ---> Using cache`, ` ---> 1a2b3c4d5e6f`, the steps' own output.
    #[serde(default)]
    pub stream: Option<String>,
    /// The build failed.
    #[serde(default)]
    pub error: Option<String>,
    /// `{"ID": "sha256:..."}` once the image is built.
    #[serde(default)]
    pub aux: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphDriver {
    pub name: String,
    #[serde(default)]
    pub data: Option<std::collections::HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    #[serde(default)]
    pub layers: Vec<Digest>,
}

impl Engine {
    pub fn from_env() -> Result<Engine, Error> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let builder = wharf_remote::http::client_builder().connect_timeout(Duration::from_secs(10));
        let (builder, base) = if let Some(path) = host.strip_prefix("unix://") {
            (builder.unix_socket(path), "http://docker".to_owned())
        } else if let Some(addr) = host.strip_prefix("tcp://") {
            (builder, format!("http://{}", addr.trim_end_matches('/')))
        } else {
            return Err(Error::BadOption(format!(
                "DOCKER_HOST={host:?}: only unix:// and tcp:// are supported"
            )));
        };
        let http = builder.build().map_err(|e| Error::Engine {
            host: host.clone(),
            reason: format!("client setup: {e}"),
        })?;
        Ok(Engine { http, base, host })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn fail(&self, reason: String) -> Error {
        Error::Engine {
            host: self.host.clone(),
            reason,
        }
    }

    async fn check(&self, what: &str, resp: reqwest::Response) -> Result<reqwest::Response, Error> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| body.trim().chars().take(200).collect());
        Err(self.fail(format!("{what}: HTTP {status}: {message}")))
    }

    fn unreachable(&self, what: &str, e: reqwest::Error) -> Error {
        let mut inner: &dyn std::error::Error = &e;
        while let Some(next) = inner.source() {
            inner = next;
        }
        self.fail(format!("{what}: cannot reach the Docker engine: {inner}"))
    }

    /// `GET PATH`, decoded from JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let what = format!("GET {path}");
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(&what, e))?;
        let resp = self.check(&what, resp).await?;
        let body = resp.bytes().await.map_err(|e| self.unreachable(&what, e))?;
        serde_json::from_slice(&body).map_err(|e| self.fail(format!("{what}: unexpected answer: {e}")))
    }

    /// `GET /images/{name}/json`.
    pub async fn inspect(&self, name: &str) -> Result<ImageInspect, Error> {
        self.get_json(&format!("/images/{name}/json")).await
    }

    /// `GET /images/get?names=NAME`: the image as a `docker save` tar stream.
    pub async fn save(&self, name: &str) -> Result<BlobStream, Error> {
        let what = format!("exporting image {name}");
        let resp = self
            .http
            .get(format!(
                "{}/images/get?names={}",
                self.base,
                form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
            ))
            .send()
            .await
            .map_err(|e| self.unreachable(&what, e))?;
        let resp = self.check(&what, resp).await?;
        let host = self.host.clone();
        Ok(resp
            .bytes_stream()
            .map(move |r| {
                r.map_err(|e| Error::Engine {
                    host: host.clone(),
                    reason: format!("exporting image: {e}"),
                })
            })
            .boxed())
    }

    /// `POST PATH` with a tar streamed as the body; the answer once its status is a success.
    async fn post_tar(&self, what: &str, path: &str, tar: BlobStream) -> Result<reqwest::Response, Error> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(reqwest::Body::wrap_stream(tar))
            .send()
            .await
            .map_err(|e| self.unreachable(what, e))?;
        self.check(what, resp).await
    }

    /// `POST /build?QUERY` with the context tar: the engine's answer as a stream of messages.
    pub async fn build(
        &self,
        query: &str,
        context: BlobStream,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<BuildMessage, Error>>, Error> {
        let what = "building the image";
        let resp = self.post_tar(what, &format!("/build?{query}"), context).await?;
        let host = self.host.clone();
        let fail = move |reason: String| Error::Engine {
            host: host.clone(),
            reason: format!("{what}: {reason}"),
        };
        // Lines of JSON; a message may arrive split over several chunks.
        let lines = futures_util::stream::unfold(
            (resp.bytes_stream(), Vec::<u8>::new(), false),
            move |(mut body, mut buf, mut done)| {
                let fail = fail.clone();
                async move {
                    loop {
                        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=nl).collect();
                            if line.iter().all(u8::is_ascii_whitespace) {
                                continue;
                            }
                            let msg = serde_json::from_slice::<BuildMessage>(&line)
                                .map_err(|e| fail(format!("unexpected answer: {e}")));
                            return Some((msg, (body, buf, done)));
                        }
                        if done {
                            if buf.iter().all(u8::is_ascii_whitespace) {
                                return None;
                            }
                            let line = std::mem::take(&mut buf);
                            let msg = serde_json::from_slice::<BuildMessage>(&line)
                                .map_err(|e| fail(format!("unexpected answer: {e}")));
                            return Some((msg, (body, buf, true)));
                        }
                        match body.next().await {
                            Some(Ok(chunk)) => {
                                // One line is never this long; a runaway answer must not grow without bound.
                                if buf.len() + chunk.len() > MAX_BUILD_LINE {
                                    return Some((Err(fail("a message over 16 MiB".into())), (body, Vec::new(), true)));
                                }
                                buf.extend_from_slice(&chunk);
                            }
                            Some(Err(e)) => return Some((Err(fail(e.to_string())), (body, Vec::new(), true))),
                            None => done = true,
                        }
                    }
                }
            },
        );
        Ok(lines.boxed())
    }

    /// `POST /images/load`: streams a `docker save` tar into the engine and waits for its verdict (the answer is
    /// a stream of JSON messages; an `error` in any of them fails the load).
    pub async fn load(&self, tar: BlobStream) -> Result<Vec<String>, Error> {
        let what = "loading the image";
        let resp = self.post_tar(what, "/images/load?quiet=1", tar).await?;
        let body = resp.bytes().await.map_err(|e| self.unreachable(what, e))?;
        let mut loaded = Vec::new();
        for msg in serde_json::Deserializer::from_slice(&body).into_iter::<serde_json::Value>() {
            let msg = msg.map_err(|e| self.fail(format!("{what}: unexpected answer: {e}")))?;
            if let Some(err) = msg.get("error").and_then(|e| e.as_str()) {
                return Err(self.fail(format!("{what}: {err}")));
            }
            if let Some(stream) = msg.get("stream").and_then(|s| s.as_str()) {
                loaded.push(stream.trim().to_owned());
            }
        }
        Ok(loaded)
    }
}
