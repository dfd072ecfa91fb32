//! The layer index of an [`ObjectStore`], in small objects under `_layer_index/` (layout in `crate::layer_index`).
//! A lookup is one recursive listing of the layer's prefix and one read per form.

use std::collections::BTreeMap;

use opendal::EntryMode;
use wharf_oci::Digest;

use super::{ObjectStore, is_not_found, keys};
use crate::layer_index::{
    CLAIM, COMPLETE, DESCRIPTOR, LayerBlob, LayerEntry, LayerForm, MAX_FORMS, MAX_REPOS, Prune, descriptor_bytes,
    form_digest, form_name, layer_dir, parse_descriptor, repo_file, repo_of_file,
};
use crate::{Result, StorageError};

const ROOT: &str = "_layer_index/";

fn form_prefix(diff_id: &Digest, blob: &Digest) -> String {
    format!("{ROOT}{}{}/", layer_dir(diff_id), form_name(blob))
}

/// One listed key under the index: its form directory (`<alg>/<hex>/<form>/`) and the file in it.
fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(ROOT)?;
    let (dir, file) = rest.rsplit_once('/')?;
    (dir.matches('/').count() == 2).then_some((dir, file))
}

impl ObjectStore {
    /// Every file of the index under `prefix`, grouped by form directory (relative to the index root).
    async fn index_files(&self, prefix: &str) -> Result<BTreeMap<String, Vec<String>>> {
        let entries = match self.op.list_with(prefix).recursive(true).await {
            Ok(e) => e,
            Err(e) if is_not_found(&e) => return Ok(BTreeMap::new()),
            Err(e) => return Err(StorageError::backend(format!("list {prefix}"), e)),
        };
        let mut forms: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in entries.iter().filter(|e| e.metadata().mode() == EntryMode::FILE) {
            if let Some((dir, file)) = split(e.path()) {
                forms.entry(dir.to_owned()).or_default().push(file.to_owned());
            }
        }
        Ok(forms)
    }

    pub(super) async fn index_forms(&self, diff_id: &Digest) -> Result<Vec<LayerForm>> {
        let mut out = Vec::new();
        for (dir, files) in self.index_files(&format!("{ROOT}{}", layer_dir(diff_id))).await? {
            let Some(digest) = dir.rsplit('/').next().and_then(form_digest) else {
                continue;
            };
            let repositories: Vec<String> = files.iter().filter_map(|f| repo_of_file(f)).take(MAX_REPOS).collect();
            if repositories.is_empty() {
                continue;
            }
            let key = format!("{ROOT}{dir}/{DESCRIPTOR}");
            let Some(blob) = self
                .read_small(&key)
                .await?
                .and_then(|raw| parse_descriptor(&raw, &digest))
            else {
                continue;
            };
            out.push(LayerForm { blob, repositories });
            if out.len() == MAX_FORMS {
                break;
            }
        }
        Ok(out)
    }

    async fn read_descriptor(&self, key: &str, blob: &Digest) -> Result<Option<LayerBlob>> {
        Ok(self.read_small(key).await?.and_then(|raw| parse_descriptor(&raw, blob)))
    }

    /// Records entries: a form not checked yet gets the claim, then the repository's fact; each written if absent.
    pub(super) async fn index_record(&self, entries: &[LayerEntry]) -> Result<()> {
        for e in entries {
            let prefix = form_prefix(&e.diff_id, &e.blob.digest);
            let (descriptor, claim) = (format!("{prefix}{DESCRIPTOR}"), format!("{prefix}{CLAIM}"));
            if self.read_descriptor(&descriptor, &e.blob.digest).await?.is_none()
                && self.read_descriptor(&claim, &e.blob.digest).await?.is_none()
            {
                self.put_small(&claim, descriptor_bytes(&e.blob)).await?;
            }
            let repo = format!("{prefix}{}", repo_file(&e.repository));
            if self.size_of(&repo).await?.is_none() {
                self.put_small(&repo, Vec::new()).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn index_confirm(&self, diff_id: &Digest, blob: &LayerBlob) -> Result<()> {
        let prefix = form_prefix(diff_id, &blob.digest);
        self.put_small(&format!("{prefix}{DESCRIPTOR}"), descriptor_bytes(blob))
            .await?;
        self.delete_key(&format!("{prefix}{CLAIM}")).await.map(|_| ())
    }

    pub(super) async fn index_refuse(&self, diff_id: &Digest, blob: &Digest) -> Result<()> {
        let prefix = form_prefix(diff_id, blob);
        if self
            .read_descriptor(&format!("{prefix}{DESCRIPTOR}"), blob)
            .await?
            .is_some()
        {
            return Ok(());
        }
        for file in self.index_files(&prefix).await?.into_values().flatten() {
            self.delete_key(&format!("{prefix}{file}")).await?;
        }
        Ok(())
    }

    pub(super) async fn index_claims(&self, limit: usize) -> Result<Vec<LayerEntry>> {
        let mut out = Vec::new();
        for (dir, files) in self.index_files(ROOT).await? {
            if out.len() >= limit {
                break;
            }
            if files.iter().any(|f| f == DESCRIPTOR) || !files.iter().any(|f| f == CLAIM) {
                continue;
            }
            let mut parts = dir.split('/');
            let (Some(alg), Some(hex), Some(form)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(diff_id), Some(blob)) = (format!("{alg}:{hex}").parse::<Digest>(), form_digest(form)) else {
                continue;
            };
            let Some(claim) = self.read_descriptor(&format!("{ROOT}{dir}/{CLAIM}"), &blob).await? else {
                continue;
            };
            if let Some(repository) = files.iter().find_map(|f| repo_of_file(f)) {
                out.push(LayerEntry {
                    diff_id,
                    blob: claim,
                    repository,
                });
            }
        }
        Ok(out)
    }

    /// Removes one repository's fact; the form's descriptor stays until its blob goes.
    pub(super) async fn index_forget(&self, e: &LayerEntry) -> Result<bool> {
        let prefix = form_prefix(&e.diff_id, &e.blob.digest);
        self.delete_key(&format!("{prefix}{}", repo_file(&e.repository))).await
    }

    /// Removes the entries `prune` selects; a form goes whole only when its blob is gone now.
    pub(super) async fn index_prune(&self, prune: Prune<'_>) -> Result<usize> {
        let mut removed = 0;
        for (dir, files) in self.index_files(ROOT).await? {
            let Some(blob) = dir.rsplit('/').next().and_then(form_digest) else {
                continue;
            };
            if let Prune::Blobs(set) = prune
                && !set.contains(&blob)
            {
                continue;
            }
            let prefix = format!("{ROOT}{dir}/");
            let gone = self.size_of(&keys::blob(&blob)).await?.is_none();
            for f in &files {
                let repo = repo_of_file(f);
                let stale = gone
                    || match (&repo, prune) {
                        (Some(repo), Prune::Unlinked) => self.size_of(&keys::layer_link(repo, &blob)).await?.is_none(),
                        _ => false,
                    };
                if stale && self.delete_key(&format!("{prefix}{f}")).await? && repo.is_some() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    pub(super) async fn index_complete(&self) -> Result<bool> {
        Ok(self.size_of(&format!("{ROOT}{COMPLETE}")).await?.is_some())
    }

    pub(super) async fn index_set_complete(&self, complete: bool) -> Result<()> {
        let key = format!("{ROOT}{COMPLETE}");
        if complete {
            self.put_small(&key, Vec::new()).await
        } else {
            self.delete_key(&key).await.map(|_| ())
        }
    }
}
