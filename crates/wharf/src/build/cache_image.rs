//! Puts the planned cache into the engine: the best candidate cut to the steps the build will hit (its config's
//! history and layers up to there), loaded with `POST /images/load` as an image the classic builder accepts as
//! `--cache-from`. Only layers the engine lacks are fetched, streamed from the registry straight into the load; the
//! ones it has (the base image's) go in as empty files, which `docker load` never reads for a layer it holds.

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use tar::EntryType;
use wharf_client::archive::engine::Engine;
use wharf_client::{BlobStream, Error as ClientError};
use wharf_oci::Digest;
use wharf_oci::manifest::ManifestView;
use wharf_remote::Registry;
use wharf_remote::client::pull_scope;

use super::tar_stream::{end, header, padding, write_entry};
use crate::cache::{Candidate, Plan, fetch_config};

/// The loaded cache image: its ID (for `cachefrom`) and the bytes fetched for it.
pub struct Loaded {
    pub id: String,
    pub bytes_pulled: u64,
    pub layers_pulled: usize,
}

/// Loads the plan's candidate, cut to its matched steps, into the engine.
pub async fn load(engine: &Engine, registry: &Registry, plan: &Plan) -> anyhow::Result<Option<Loaded>> {
    let Some(c) = &plan.candidate else {
        return Ok(None);
    };
    let config = candidate_config(registry, c).await?;
    let keep = plan.base.steps + c.steps_matched;
    let config = cut(&config, keep, c.layers.len())?;
    let id = Digest::sha256_of(&config).to_string();
    if engine.inspect(&id).await.is_ok() {
        return Ok(Some(Loaded {
            id,
            bytes_pulled: 0,
            layers_pulled: 0,
        }));
    }
    // Layers the engine holds: the base image's, when it is there with the same chain.
    let held = match &plan.base.digest {
        Some(_) => engine
            .inspect(&plan.base.reference)
            .await
            .ok()
            .and_then(|i| i.root_f_s)
            .map(|r| r.layers)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let present = held.iter().zip(&c.layers).take_while(|(h, l)| **h == l.diff_id).count();
    let fetch: Vec<_> = c.layers.iter().skip(present).cloned().collect();
    let bytes_pulled = fetch.iter().map(|l| l.size).sum();
    let layers_pulled = fetch.len();

    let names: Vec<String> = (0..c.layers.len()).map(|i| format!("{i}/layer.tar")).collect();
    let config_name = format!("{}.json", id.trim_start_matches("sha256:"));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": null,
        "Layers": names,
    }]))?;
    let mut head = Vec::new();
    write_entry(&mut head, &config_name, 0o644, &config)?;
    for name in names.iter().take(present) {
        write_entry(&mut head, name, 0o644, &[])?;
    }
    let repository = c.repository.clone();
    let scopes = vec![pull_scope(&repository)];
    let mut parts: Vec<BlobStream> = vec![futures_util::stream::iter([Ok(Bytes::from(head))]).boxed()];
    for (layer, name) in fetch.iter().zip(names.iter().skip(present)) {
        let resp = registry
            .blob(&repository, &layer.digest, 0, &scopes)
            .await
            .with_context(|| format!("cannot fetch cache layer {} from {repository}", layer.digest))?;
        let size = layer.size;
        let what = layer.digest.to_string();
        let body = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| ClientError::io(&what, std::io::Error::other(e.to_string()))));
        let framed = futures_util::stream::iter([Ok(Bytes::from(header(name, 0o644, size, EntryType::Regular, None)))])
            .chain(bounded(body.boxed(), size))
            .chain(futures_util::stream::iter([Ok(Bytes::from(padding(size)))]));
        parts.push(framed.boxed());
    }
    let mut tail = Vec::new();
    write_entry(&mut tail, "manifest.json", 0o644, &manifest)?;
    tail.extend(end());
    parts.push(futures_util::stream::iter([Ok(Bytes::from(tail))]).boxed());
    let archive: BlobStream = futures_util::stream::iter(parts).flatten().boxed();
    engine
        .load(archive)
        .await
        .context("the engine refused the cache image")?;
    Ok(Some(Loaded {
        id,
        bytes_pulled,
        layers_pulled,
    }))
}

/// Exactly `size` bytes of `body`, or an error: a registry sending more or less must not shift the tar.
fn bounded(body: BlobStream, size: u64) -> BlobStream {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let short = |what: String| ClientError::io("cache layer", std::io::Error::other(what));
    body.map(move |chunk| {
        let chunk = chunk?;
        let n = counter.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if n > size {
            return Err(short(format!("the registry sent more than the {size} bytes announced")));
        }
        Ok(chunk)
    })
    .chain(futures_util::stream::once(async move {
        match seen.load(Ordering::Relaxed) {
            n if n == size => Ok(Bytes::new()),
            n => Err(short(format!("the registry sent {n} of the {size} bytes announced"))),
        }
    }))
    .boxed()
}

/// The candidate image's config bytes, checked against its digest.
async fn candidate_config(registry: &Registry, c: &Candidate) -> anyhow::Result<Vec<u8>> {
    let scopes = [pull_scope(&c.repository)];
    let manifest = registry
        .manifest(&c.repository, &c.digest.to_string(), Some(&c.digest), &scopes)
        .await?;
    let view = ManifestView::parse(&manifest.bytes, Some(&manifest.media_type))?;
    let Some(desc) = view.config else {
        bail!("the cache image {}@{} has no config", c.repository, c.digest);
    };
    let what = format!("config of {}@{}", c.repository, c.digest);
    fetch_config(registry, &c.repository, "", &desc.digest, &what).await
}

/// The config with its history cut to the first `keep` steps and its layers to `layers`; the bytes unchanged when
/// nothing is cut (the image keeps its ID).
fn cut(config: &[u8], keep: usize, layers: usize) -> anyhow::Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(config).context("the cache image's config")?;
    let history = v
        .get_mut("history")
        .and_then(|h| h.as_array_mut())
        .context("the cache image's config has no history")?;
    if keep > history.len() {
        bail!("the cache image has {} steps, the plan needs {keep}", history.len());
    }
    if keep == history.len() {
        return Ok(config.to_vec());
    }
    history.truncate(keep);
    let made = history
        .iter()
        .filter(|h| !h.get("empty_layer").and_then(|e| e.as_bool()).unwrap_or(false))
        .count();
    if made != layers {
        bail!("the cache image's first {keep} steps make {made} layers, the registry named {layers}");
    }
    let diff_ids = v
        .pointer_mut("/rootfs/diff_ids")
        .and_then(|d| d.as_array_mut())
        .context("the cache image's config has no diff_ids")?;
    diff_ids.truncate(layers);
    Ok(serde_json::to_vec(&v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_keeps_the_matched_steps_and_their_layers() {
        let config = br#"{"architecture":"amd64","history":[{"created_by":"a"},{"created_by":"b","empty_layer":true},{"created_by":"c"},{"created_by":"d"}],"rootfs":{"type":"layers","diff_ids":["sha256:1","sha256:2","sha256:3"]}}"#;
        let cut3 = cut(config, 3, 2).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&cut3).unwrap();
        assert_eq!(v["history"].as_array().unwrap().len(), 3);
        assert_eq!(v["rootfs"]["diff_ids"], serde_json::json!(["sha256:1", "sha256:2"]));
        assert_eq!(cut(config, 4, 3).unwrap(), config.to_vec());
        assert!(cut(config, 3, 3).is_err());
        assert!(cut(config, 5, 3).is_err());
    }
}
