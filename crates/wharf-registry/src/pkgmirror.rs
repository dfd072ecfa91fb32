//! Mirror-baked base images (seed 001: "base images whose package sources point at domestic mirrors"):
//! `pkgmirror/<preset>/<image>` serves `<image>` (a mirrored upstream's or a local repository's, named as any pull
//! names it) plus one small generated layer: its apk/apt source lists with every upstream host replaced by the
//! preset's mirror, and `PIP_INDEX_URL`, `npm_config_registry` and `GOPROXY` in its environment.
//!
//! The derived image is computed from the source image's bytes only (the source lists are read from its layers,
//! upper layers and whiteouts respected; the layer tar and its gzip are written deterministically), so a given source
//! digest and preset always give the same digest. It is stored under the `pkgmirror/...` repository the first time a
//! tag is asked for, and again only when the source tag moves (the annotation `org.opencontainers.image.base.digest`
//! says which source it came from); its `subject` is the source manifest, so it is listed as a referrer of it. An
//! index is derived child by child. The source's layers are linked into the derived repository (a mirrored source's
//! are copied from the mirror cache into the local store, as any mount from a mirrored repository is: the stored
//! manifest's blobs then outlive the cache's evictions). These repositories are read-only, and access to them is
//! decided on the source repository's rules.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_util::io::{StreamReader, SyncIoBridge};
use wharf_dockerfile::config::Mirrors;
use wharf_dockerfile::package_sources;
use wharf_oci::manifest::{Descriptor, ManifestView};
use wharf_oci::{Digest, ErrorCode, media};
use wharf_storage::{NewManifest, Reference, StoredManifest};

use crate::error::{ApiError, ApiResult};
use crate::handlers::manifests;
use crate::{App, handlers};

pub const PREFIX: &str = "pkgmirror/";
/// The annotation naming the source image's manifest digest.
pub const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
pub const BASE_NAME: &str = "org.opencontainers.image.base.name";
/// Children of an index derived.
const MAX_CHILDREN: usize = 64;
/// Largest source config read.
const MAX_CONFIG: u64 = 4 << 20;
/// Largest source list kept (a larger one is left as it is).
const MAX_SOURCE_FILE: u64 = 1 << 20;
/// Decompressed bytes read from one source image's layers.
const MAX_IMAGE_BYTES: u64 = 16 << 30;
/// Derivations running at once (each decompresses a whole image).
const CONCURRENT: usize = 2;

/// `pkgmirror/<preset>/<source>` → (preset, source).
pub fn split(name: &str) -> Option<(&str, &str)> {
    let (preset, source) = name.strip_prefix(PREFIX)?.split_once('/')?;
    (!preset.is_empty() && !source.is_empty()).then_some((preset, source))
}

/// The repository whose access rules decide for `name`: the source of a `pkgmirror/` name, else itself.
pub fn source_of(name: &str) -> &str {
    split(name).map_or(name, |(_, s)| s)
}

/// A derivation's lock, by (derived repository, source manifest).
type Locks = HashMap<(String, Digest), Arc<tokio::sync::Mutex<()>>>;

/// One derivation per (repository, source manifest) at a time, at most [`CONCURRENT`] in all.
pub struct Derivations {
    locks: Mutex<Locks>,
    permits: tokio::sync::Semaphore,
}

impl Default for Derivations {
    fn default() -> Self {
        Derivations {
            locks: Mutex::new(HashMap::new()),
            permits: tokio::sync::Semaphore::new(CONCURRENT),
        }
    }
}

impl Derivations {
    fn lock(&self, name: &str, source: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        // Entries nobody holds are dropped, so the map stays as small as the derivations in flight.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry((name.to_string(), source.clone())).or_default().clone()
    }
}

fn mirrors(preset: &str) -> Result<Mirrors, ApiError> {
    wharf_dockerfile::config::preset(preset).map_err(|_| {
        ApiError::new(
            ErrorCode::NameUnknown,
            format!("no package mirror preset {preset} (known: aliyun, tuna, ustc)"),
        )
    })
}

/// A write to a `pkgmirror/` repository.
pub fn read_only(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Denied,
        format!("{name} is derived by the registry and read-only"),
    )
}

/// `GET|HEAD /v2/pkgmirror/<preset>/<source>/manifests/<reference>`.
pub async fn manifest(app: &App, name: &str, reference: &str, headers: &HeaderMap) -> ApiResult {
    let Some((preset, source)) = split(name) else {
        return Err(ApiError::new(
            ErrorCode::NameUnknown,
            format!("{name} is not a pkgmirror name"),
        ));
    };
    let mirrors = mirrors(preset)?;
    if reference.contains(':') {
        // By digest: only what a tag request derived and stored.
        return manifests::get(app, name, reference, headers).await;
    }
    let unknown = || {
        ApiError::new(
            ErrorCode::ManifestUnknown,
            format!("manifest {source}:{reference} is unknown"),
        )
    };
    let src = app
        .store
        .get_manifest(source, &Reference::Tag(reference.to_string()))
        .await?
        .ok_or_else(unknown)?;
    if !current(app, name, reference, &src.digest).await? {
        let lock = app.pkgmirror.lock(name, &src.digest);
        let _held = lock.lock().await;
        if !current(app, name, reference, &src.digest).await? {
            let _permit = app
                .pkgmirror
                .permits
                .acquire()
                .await
                .map_err(|_| ApiError::new(ErrorCode::Unsupported, "the registry is shutting down"))?;
            let derivation = Derivation {
                app,
                name,
                source,
                preset,
                mirrors: &mirrors,
            };
            let top = derivation.derive(&src).await?;
            app.store
                .put_manifest(
                    name,
                    NewManifest {
                        digest: top.digest.clone(),
                        media_type: top.media_type.clone(),
                        body: top.body.clone(),
                        tags: vec![reference.to_string()],
                        referrer: Some((src.digest.clone(), top.descriptor())),
                    },
                )
                .await?;
            tracing::info!(repository = name, tag = reference, source = %src.digest, derived = %top.digest, "pkgmirror image derived");
        }
    }
    manifests::get(app, name, reference, headers).await
}

/// Whether the tag already holds the image derived from `source`.
async fn current(app: &App, name: &str, tag: &str, source: &Digest) -> Result<bool, ApiError> {
    let Some(m) = app.store.get_manifest(name, &Reference::Tag(tag.to_string())).await? else {
        return Ok(false);
    };
    let v: Value = serde_json::from_slice(&m.body).unwrap_or(Value::Null);
    Ok(v.pointer(&format!("/annotations/{}", BASE_DIGEST.replace('/', "~1")))
        .and_then(Value::as_str)
        == Some(source.to_string().as_str()))
}

/// `GET|HEAD /v2/pkgmirror/.../blobs/<digest>`: the generated blobs from this repository, every other one from the
/// source's.
pub async fn blob(app: &App, name: &str, digest: &str, headers: &HeaderMap, head: bool) -> ApiResult {
    let source = source_of(name);
    let own = match digest.parse::<Digest>() {
        Ok(d) => app.store.repo_blob_size(name, &d).await?.is_some(),
        Err(_) => false,
    };
    handlers::blobs::get(app, if own { name } else { source }, digest, headers, head).await
}

struct Derived {
    digest: Digest,
    media_type: String,
    body: Bytes,
}

impl Derived {
    fn descriptor(&self) -> Descriptor {
        descriptor(&self.media_type, &self.digest, self.body.len() as u64)
    }
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
    serde_json::from_value(json!({"mediaType": media_type, "digest": digest.to_string(), "size": size})).unwrap_or_else(
        |_| Descriptor {
            media_type: media_type.to_string(),
            digest: digest.clone(),
            size,
            artifact_type: None,
            annotations: None,
            urls: None,
            platform: None,
        },
    )
}

fn internal(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unknown, format!("cannot derive the pkgmirror image: {what}"))
        .with_status(axum::http::StatusCode::BAD_GATEWAY)
}

/// One derivation: the registry, the derived repository, its source and the preset's mirrors.
struct Derivation<'a> {
    app: &'a App,
    name: &'a str,
    source: &'a str,
    preset: &'a str,
    mirrors: &'a Mirrors,
}

impl Derivation<'_> {
    /// The derived manifest of `src` (an index child by child), its children stored.
    async fn derive(&self, src: &StoredManifest) -> Result<Derived, ApiError> {
        let Derivation { app, source, .. } = *self;
        let view = ManifestView::parse(&src.body, Some(&src.media_type)).map_err(internal)?;
        if !media::is_index(&view.media_type) {
            return self.derive_image(src).await;
        }
        if view.manifests.len() > MAX_CHILDREN {
            return Err(internal(format!("the index has more than {MAX_CHILDREN} images")));
        }
        let mut children = Vec::new();
        for desc in &view.manifests {
            let child = app
                .store
                .get_manifest(source, &Reference::Digest(desc.digest.clone()))
                .await?
                .ok_or_else(|| internal(format!("child {} of the index is unknown", desc.digest)))?;
            let child_view = ManifestView::parse(&child.body, Some(&child.media_type)).map_err(internal)?;
            if child_view.config.is_none() || media::is_index(&child_view.media_type) {
                // Attestations and nested indexes are not images: left out.
                continue;
            }
            let derived = self.derive_image(&child).await?;
            let mut d = serde_json::to_value(derived.descriptor()).map_err(internal)?;
            if let Some(p) = &desc.platform {
                d["platform"] = p.clone();
            }
            children.push(d);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": children,
            "subject": descriptor(&src.media_type, &src.digest, src.body.len() as u64),
            "annotations": {BASE_DIGEST: src.digest.to_string(), BASE_NAME: source},
        });
        let body = Bytes::from(serde_json::to_vec(&index).map_err(internal)?);
        Ok(Derived {
            digest: Digest::sha256_of(&body),
            media_type: media::OCI_INDEX.to_string(),
            body,
        })
    }

    /// One image: its source lists rewritten in a new top layer, the environment added to its config.
    async fn derive_image(&self, src: &StoredManifest) -> Result<Derived, ApiError> {
        let Derivation {
            app,
            name,
            source,
            preset,
            mirrors,
        } = *self;
        let view = ManifestView::parse(&src.body, Some(&src.media_type)).map_err(internal)?;
        let config_desc = view.config.clone().ok_or_else(|| internal("the image has no config"))?;
        if config_desc.size > MAX_CONFIG {
            return Err(internal("the image's config is too large"));
        }
        let config = read_blob(app, source, &config_desc.digest).await?;
        if Digest::of(config_desc.digest.algorithm(), &config) != config_desc.digest {
            return Err(internal("the image's config does not match its digest"));
        }
        let files = source_lists(app, source, &view.layers).await?;
        // The lists with their hosts replaced (owner and mode as in the source); the others are left out.
        let rewritten: Vec<(String, SourceFile)> = files
            .into_iter()
            .filter_map(|(path, f)| {
                let new = package_sources::rewrite(std::str::from_utf8(&f.content).ok()?, mirrors)?;
                Some((
                    path,
                    SourceFile {
                        content: new.into_bytes(),
                        ..f
                    },
                ))
            })
            .collect();

        let mut layers: Vec<Value> = view
            .layers
            .iter()
            .map(|l| {
                let mt = match l.media_type.as_str() {
                    media::DOCKER_LAYER_GZIP => media::OCI_LAYER_GZIP,
                    media::DOCKER_LAYER_TAR => media::OCI_LAYER_TAR,
                    other => other,
                };
                let mut d = serde_json::to_value(l).unwrap_or(Value::Null);
                d["mediaType"] = json!(mt);
                d
            })
            .collect();
        let mut v: Value = serde_json::from_slice(&config).map_err(internal)?;
        let paths: Vec<&str> = rewritten.iter().map(|(p, _)| p.as_str()).collect();
        if !rewritten.is_empty() {
            let (tar, gz) = layer(&rewritten).map_err(internal)?;
            let diff_id = Digest::sha256_of(&tar);
            let digest = Digest::sha256_of(&gz);
            let size = gz.len();
            put_blob(app, name, &digest, Bytes::from(gz)).await?;
            layers.push(json!({"mediaType": media::OCI_LAYER_GZIP, "digest": digest.to_string(), "size": size}));
            match v.pointer_mut("/rootfs/diff_ids").and_then(Value::as_array_mut) {
                Some(ids) => ids.push(json!(diff_id.to_string())),
                None => return Err(internal("the image's config has no diff_ids")),
            }
        }
        let created = v.get("created").cloned().unwrap_or(Value::Null);
        let history_entry = json!({
            "created": created,
            "created_by": format!("wharf pkgmirror {preset}: {}", if paths.is_empty() { "environment only".to_string() } else { paths.join(" ") }),
            "comment": format!("package sources pointed at the {preset} mirrors"),
            "empty_layer": rewritten.is_empty(),
        });
        match v.get_mut("history").and_then(Value::as_array_mut) {
            Some(h) => h.push(history_entry),
            None => v["history"] = json!([history_entry]),
        }
        let env = v
            .pointer_mut("/config/Env")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default();
        let mut env: Vec<String> = env.into_iter().filter_map(|e| e.as_str().map(str::to_string)).collect();
        for kv in package_sources::environment(mirrors) {
            let key = kv.split('=').next().unwrap_or("").to_string();
            env.retain(|e| e.split('=').next() != Some(key.as_str()));
            env.push(kv);
        }
        if !v.get("config").is_some_and(Value::is_object) {
            v["config"] = json!({});
        }
        v["config"]["Env"] = json!(env);
        let config = Bytes::from(serde_json::to_vec(&v).map_err(internal)?);
        let config_digest = Digest::sha256_of(&config);
        put_blob(app, name, &config_digest, config.clone()).await?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers,
            "subject": descriptor(&src.media_type, &src.digest, src.body.len() as u64),
            "annotations": {BASE_DIGEST: src.digest.to_string(), BASE_NAME: source},
        });
        let body = Bytes::from(serde_json::to_vec(&manifest).map_err(internal)?);
        let derived = Derived {
            digest: Digest::sha256_of(&body),
            media_type: media::OCI_MANIFEST.to_string(),
            body,
        };
        // The source's layers become this repository's too (from a mirrored source, a copy into the local store, which
        // keeps what a stored manifest names whatever the mirror cache evicts).
        for l in &view.layers {
            app.store.link_blob(name, &l.digest).await?;
        }
        app.store
            .put_manifest(
                name,
                NewManifest {
                    digest: derived.digest.clone(),
                    media_type: derived.media_type.clone(),
                    body: derived.body.clone(),
                    tags: Vec::new(),
                    referrer: Some((src.digest.clone(), derived.descriptor())),
                },
            )
            .await?;
        Ok(derived)
    }
}

async fn put_blob(app: &App, name: &str, digest: &Digest, bytes: Bytes) -> Result<(), ApiError> {
    let body: wharf_storage::ByteStream = Box::pin(futures_util::stream::once(async move { Ok(bytes) }));
    app.store.put_blob(name, digest, body).await?;
    Ok(())
}

async fn read_blob(app: &App, repo: &str, digest: &Digest) -> Result<Vec<u8>, ApiError> {
    let blob = app
        .store
        .open_blob(repo, digest)
        .await?
        .ok_or_else(|| internal(format!("blob {digest} is unknown")))?;
    let mut stream = blob.source.read(None).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.map_err(internal)?);
        if out.len() as u64 > MAX_CONFIG {
            return Err(internal("the blob is too large"));
        }
    }
    Ok(out)
}

/// A source list as the image's layers leave it.
#[derive(Clone)]
struct SourceFile {
    content: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// The source lists of the image (top layer first: a file an upper layer writes, or deletes with a whiteout, hides
/// the lower ones).
async fn source_lists(app: &App, repo: &str, layers: &[Descriptor]) -> Result<BTreeMap<String, SourceFile>, ApiError> {
    // path → Some(file) or None (deleted above); whiteouts seen so far: (dir, opaque) or exact deleted paths.
    let mut decided: BTreeMap<String, Option<SourceFile>> = BTreeMap::new();
    let mut hidden: Vec<(String, bool)> = Vec::new();
    let mut budget = MAX_IMAGE_BYTES;
    for layer in layers.iter().rev() {
        let codec = match layer.media_type.as_str() {
            media::OCI_LAYER_TAR | media::DOCKER_LAYER_TAR => Codec::Tar,
            mt if mt.ends_with("gzip") => Codec::Gzip,
            mt if mt.ends_with("zstd") => Codec::Zstd,
            // Foreign or unknown layers hold no source lists wharf can read; they are kept as they are.
            _ => continue,
        };
        let blob = app
            .store
            .open_blob(repo, &layer.digest)
            .await?
            .ok_or_else(|| internal(format!("layer {} is unknown", layer.digest)))?;
        let stream = blob.source.read(None).await?;
        let known: Vec<String> = decided.keys().cloned().collect();
        let hidden_above = hidden.clone();
        let scanned = tokio::task::spawn_blocking(move || scan_layer(stream, codec, &known, &hidden_above, budget))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        budget = budget.saturating_sub(scanned.read);
        for (path, file) in scanned.files {
            decided.entry(path).or_insert(Some(file));
        }
        hidden.extend(scanned.whiteouts);
    }
    Ok(decided.into_iter().filter_map(|(p, f)| f.map(|f| (p, f))).collect())
}

#[derive(Clone, Copy)]
enum Codec {
    Tar,
    Gzip,
    Zstd,
}

struct Scanned {
    files: Vec<(String, SourceFile)>,
    whiteouts: Vec<(String, bool)>,
    read: u64,
}

fn is_hidden(path: &str, hidden: &[(String, bool)]) -> bool {
    hidden.iter().any(|(p, dir)| {
        if *dir {
            path.starts_with(&format!("{p}/")) || p.is_empty()
        } else {
            path == p || path.starts_with(&format!("{p}/"))
        }
    })
}

/// Reads one layer: the source lists it holds (not already decided above, not hidden by an upper whiteout) and the
/// whiteouts it adds for the layers below.
fn scan_layer(
    stream: wharf_storage::ByteStream,
    codec: Codec,
    known: &[String],
    hidden: &[(String, bool)],
    budget: u64,
) -> std::io::Result<Scanned> {
    let raw = SyncIoBridge::new(StreamReader::new(stream));
    let reader: Box<dyn Read> = match codec {
        Codec::Tar => Box::new(raw),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(raw))),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(raw)?),
    };
    let counted = Counted {
        inner: reader,
        read: 0,
        budget,
    };
    let mut archive = tar::Archive::new(counted);
    let mut out = Scanned {
        files: Vec::new(),
        whiteouts: Vec::new(),
        read: 0,
    };
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = raw_path
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (d.to_string(), b.to_string()),
            None => (String::new(), path.clone()),
        };
        if base == ".wh..wh..opq" {
            out.whiteouts.push((dir, true));
            continue;
        }
        if let Some(gone) = base.strip_prefix(".wh.") {
            let p = if dir.is_empty() {
                gone.to_string()
            } else {
                format!("{dir}/{gone}")
            };
            out.whiteouts.push((p, false));
            continue;
        }
        if !package_sources::is_source_file(&path) || known.contains(&path) || is_hidden(&path, hidden) {
            continue;
        }
        let header = entry.header();
        if header.entry_type() != tar::EntryType::Regular || entry.size() > MAX_SOURCE_FILE {
            continue;
        }
        let file = SourceFile {
            mode: header.mode()?,
            uid: header.uid()?,
            gid: header.gid()?,
            content: Vec::new(),
        };
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        out.files.push((path, SourceFile { content, ..file }));
    }
    out.read = archive.into_inner().read;
    Ok(out)
}

/// A reader that stops with an error past its budget.
struct Counted {
    inner: Box<dyn Read>,
    read: u64,
    budget: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.budget {
            return Err(std::io::Error::other(
                "the image is larger than a pkgmirror derivation reads",
            ));
        }
        Ok(n)
    }
}

/// The generated layer: the rewritten files (sorted, owner and mode as in the source, mtime 0) as a tar, and its
/// gzip (no name, mtime 0, level 6): the same bytes for the same input.
fn layer(files: &[(String, SourceFile)]) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut sorted: Vec<&(String, SourceFile)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, f) in sorted {
        let content = &f.content;
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(f.mode);
        h.set_uid(f.uid);
        h.set_gid(f.gid);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut h, path, &content[..])?;
    }
    let tar = builder.into_inner()?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(6));
    std::io::Write::write_all(&mut gz, &tar)?;
    Ok((tar, gz.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_and_hide() {
        assert_eq!(
            split("pkgmirror/aliyun/docker.io/library/alpine"),
            Some(("aliyun", "docker.io/library/alpine"))
        );
        assert_eq!(split("pkgmirror/aliyun"), None);
        assert_eq!(source_of("team/app"), "team/app");
        assert!(is_hidden("etc/apk/repositories", &[("etc/apk".into(), true)]));
        assert!(is_hidden(
            "etc/apk/repositories",
            &[("etc/apk/repositories".into(), false)]
        ));
        assert!(!is_hidden("etc/apk/repositories", &[("etc/ap".into(), false)]));
    }

    #[test]
    fn the_layer_is_the_same_bytes_for_the_same_files() {
        let f = |content: &[u8]| SourceFile {
            content: content.to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        let files = vec![
            ("etc/apt/sources.list".to_string(), f(b"b")),
            ("etc/apk/repositories".to_string(), f(b"a")),
        ];
        let (tar1, gz1) = layer(&files).unwrap();
        let (tar2, gz2) = layer(&files).unwrap();
        assert_eq!((tar1, gz1), (tar2, gz2));
    }
}
