//! The layer index of a [`FsStore`](super::FsStore), in files under `layer-index/` (layout in `crate::layer_index`).

use std::path::{Path, PathBuf};

use wharf_oci::Digest;

use crate::atomic::{list_dir, read_optional, remove_optional, write_atomic};
use crate::layer_index::{
    COMPLETE, DESCRIPTOR, LayerEntry, LayerForm, MAX_FORMS, MAX_REPOS, Prune, descriptor_bytes, form_digest, form_name,
    layer_dir, parse_descriptor, repo_file, repo_of_file,
};
use crate::paths::Layout;
use crate::{Result, StorageError};

fn form_dir(layout: &Layout, diff_id: &Digest, blob: &Digest) -> PathBuf {
    layout.layer_index().join(layer_dir(diff_id)).join(form_name(blob))
}

/// The forms of one layer directory, bounded.
pub(super) fn forms(layout: &Layout, diff_id: &Digest) -> Result<Vec<LayerForm>> {
    let dir = layout.layer_index().join(layer_dir(diff_id));
    let mut out = Vec::new();
    for name in list_dir(&dir)? {
        let Some(digest) = form_digest(&name) else {
            continue;
        };
        let form = dir.join(&name);
        let Some(blob) = read_optional(&form.join(DESCRIPTOR))?.and_then(|raw| parse_descriptor(&raw, &digest)) else {
            continue;
        };
        let repositories: Vec<String> = list_dir(&form)?
            .iter()
            .filter_map(|n| repo_of_file(n))
            .take(MAX_REPOS)
            .collect();
        if !repositories.is_empty() {
            out.push(LayerForm { blob, repositories });
        }
        if out.len() == MAX_FORMS {
            break;
        }
    }
    Ok(out)
}

/// Records entries: the descriptor before the repository, each written once (a torn descriptor is rewritten).
pub(super) fn record(layout: &Layout, entries: &[LayerEntry]) -> Result<()> {
    for e in entries {
        let dir = form_dir(layout, &e.diff_id, &e.blob.digest);
        let descriptor = dir.join(DESCRIPTOR);
        let intact = read_optional(&descriptor)?.is_some_and(|raw| parse_descriptor(&raw, &e.blob.digest).is_some());
        if !intact {
            write_atomic(&layout.tmp(), &descriptor, &descriptor_bytes(&e.blob), false)?;
        }
        let repo = dir.join(repo_file(&e.repository));
        if !repo.exists() {
            write_atomic(&layout.tmp(), &repo, b"", false)?;
        }
    }
    Ok(())
}

pub(super) fn forget(layout: &Layout, e: &LayerEntry) -> Result<bool> {
    let dir = form_dir(layout, &e.diff_id, &e.blob.digest);
    let removed = remove_optional(&dir.join(repo_file(&e.repository)))?;
    remove_form_if_empty(&dir)?;
    Ok(removed)
}

/// Removes a form directory left without repositories, and its layer's directory if that is empty then.
fn remove_form_if_empty(form: &Path) -> Result<()> {
    if list_dir(form)?.iter().any(|n| repo_of_file(n).is_some()) {
        return Ok(());
    }
    remove_tree(form)?;
    if let Some(layer) = form.parent() {
        // Fails harmlessly when another form (or a concurrent record) is there.
        let _ = std::fs::remove_dir(layer);
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(dir, e)),
    }
}

/// Removes the entries `prune` selects; returns how many (repository entries) went.
pub(super) fn prune(layout: &Layout, prune: Prune<'_>) -> Result<usize> {
    let root = layout.layer_index();
    let mut removed = 0;
    for alg in list_dir(&root)? {
        let alg_dir = root.join(&alg);
        if !alg_dir.is_dir() {
            continue;
        }
        for layer in list_dir(&alg_dir)? {
            let layer_dir = alg_dir.join(&layer);
            for name in list_dir(&layer_dir)? {
                let form = layer_dir.join(&name);
                let repos: Vec<(String, String)> = list_dir(&form)?
                    .into_iter()
                    .filter_map(|n| repo_of_file(&n).map(|r| (n, r)))
                    .collect();
                let Some(blob) = form_digest(&name) else {
                    continue;
                };
                let doomed = match prune {
                    Prune::Blobs(set) => set.contains(&blob),
                    Prune::Unlinked => !layout.blob(&blob).exists(),
                };
                if doomed {
                    removed += repos.len();
                    remove_tree(&form)?;
                    continue;
                }
                if let Prune::Unlinked = prune {
                    for (file, repo) in &repos {
                        if !layout.layer_link(repo, &blob).exists() && remove_optional(&form.join(file))? {
                            removed += 1;
                        }
                    }
                }
                remove_form_if_empty(&form)?;
            }
            let _ = std::fs::remove_dir(&layer_dir);
        }
    }
    Ok(removed)
}

pub(super) fn complete(layout: &Layout) -> bool {
    layout.layer_index().join(COMPLETE).exists()
}

pub(super) fn set_complete(layout: &Layout, complete: bool) -> Result<()> {
    let marker = layout.layer_index().join(COMPLETE);
    if complete {
        write_atomic(&layout.tmp(), &marker, b"", true)
    } else {
        remove_optional(&marker).map(|_| ())
    }
}
