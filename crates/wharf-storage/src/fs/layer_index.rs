//! The layer index of a [`FsStore`](super::FsStore), in files under `layer-index/` (layout in `crate::layer_index`).

use std::path::{Path, PathBuf};

use wharf_oci::Digest;

use crate::atomic::{list_dir, read_optional, remove_optional, write_atomic};
use crate::layer_index::{
    CLAIM, COMPLETE, DESCRIPTOR, LayerBlob, LayerEntry, LayerForm, MAX_FORMS, MAX_REPOS, Prune, descriptor_bytes,
    form_digest, form_name, layer_dir, parse_descriptor, repo_file, repo_of_file,
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
        let Some(blob) = read_descriptor(&form.join(DESCRIPTOR), &digest)? else {
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

/// A form's descriptor or claim, if it is there and whole (names `blob`).
fn read_descriptor(path: &Path, blob: &Digest) -> Result<Option<LayerBlob>> {
    Ok(read_optional(path)?.and_then(|raw| parse_descriptor(&raw, blob)))
}

/// Records entries: a form not checked yet gets the claim, then the repository's fact; each file written once.
pub(super) fn record(layout: &Layout, entries: &[LayerEntry]) -> Result<()> {
    for e in entries {
        let dir = form_dir(layout, &e.diff_id, &e.blob.digest);
        let claim = dir.join(CLAIM);
        if read_descriptor(&dir.join(DESCRIPTOR), &e.blob.digest)?.is_none()
            && read_descriptor(&claim, &e.blob.digest)?.is_none()
        {
            write_atomic(&layout.tmp(), &claim, &descriptor_bytes(&e.blob), false)?;
        }
        let repo = dir.join(repo_file(&e.repository));
        if !repo.exists() {
            write_atomic(&layout.tmp(), &repo, b"", false)?;
        }
    }
    Ok(())
}

/// The claim checked: the form's descriptor, durable, and the claim gone.
pub(super) fn confirm(layout: &Layout, diff_id: &Digest, blob: &LayerBlob) -> Result<()> {
    let dir = form_dir(layout, diff_id, &blob.digest);
    write_atomic(&layout.tmp(), &dir.join(DESCRIPTOR), &descriptor_bytes(blob), true)?;
    remove_optional(&dir.join(CLAIM)).map(|_| ())
}

/// The claim refused: the form goes, unless a check already confirmed it.
pub(super) fn refuse(layout: &Layout, diff_id: &Digest, blob: &Digest) -> Result<()> {
    let dir = form_dir(layout, diff_id, blob);
    if read_descriptor(&dir.join(DESCRIPTOR), blob)?.is_none() {
        remove_tree(&dir)?;
    }
    Ok(())
}

/// Claims not checked yet, each with a repository that linked the blob, at most `limit`.
pub(super) fn claims(layout: &Layout, limit: usize) -> Result<Vec<LayerEntry>> {
    let mut out = Vec::new();
    for (diff_id, form, blob) in every_form(layout)? {
        if out.len() >= limit {
            break;
        }
        if form.join(DESCRIPTOR).exists() {
            continue;
        }
        let Some(claim) = read_descriptor(&form.join(CLAIM), &blob)? else {
            continue;
        };
        if let Some(repository) = list_dir(&form)?.iter().find_map(|n| repo_of_file(n)) {
            out.push(LayerEntry {
                diff_id,
                blob: claim,
                repository,
            });
        }
    }
    Ok(out)
}

/// Every form directory: (layer, directory, blob).
fn every_form(layout: &Layout) -> Result<Vec<(Digest, PathBuf, Digest)>> {
    let root = layout.layer_index();
    let mut out = Vec::new();
    for alg in list_dir(&root)? {
        let alg_dir = root.join(&alg);
        if !alg_dir.is_dir() {
            continue;
        }
        for hex in list_dir(&alg_dir)? {
            let Ok(diff_id) = format!("{alg}:{hex}").parse::<Digest>() else {
                continue;
            };
            let layer = alg_dir.join(&hex);
            for name in list_dir(&layer)? {
                if let Some(blob) = form_digest(&name) {
                    out.push((diff_id.clone(), layer.join(&name), blob));
                }
            }
        }
    }
    Ok(out)
}

/// Removes one repository's fact. The form's descriptor stays: it is removed only with the blob (a form without
/// repositories is not answered, and a concurrent record may be about to add one).
pub(super) fn forget(layout: &Layout, e: &LayerEntry) -> Result<bool> {
    remove_optional(&form_dir(layout, &e.diff_id, &e.blob.digest).join(repo_file(&e.repository)))
}

fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(dir, e)),
    }
}

/// Removes the entries `prune` selects; returns how many (repository facts) went. A form goes whole only when its
/// blob is gone now (a push may have brought a blob back after a collection deleted it).
pub(super) fn prune(layout: &Layout, prune: Prune<'_>) -> Result<usize> {
    let mut removed = 0;
    for (_, form, blob) in every_form(layout)? {
        let candidate = match prune {
            Prune::Blobs(set) => set.contains(&blob),
            Prune::Unlinked => true,
        };
        if !candidate {
            continue;
        }
        let repos: Vec<(String, String)> = list_dir(&form)?
            .into_iter()
            .filter_map(|n| repo_of_file(&n).map(|r| (n, r)))
            .collect();
        if !layout.blob(&blob).exists() {
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
