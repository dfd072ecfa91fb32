//! Applies the fixes of the findings as text edits, re-parsing and re-linting until nothing changes (at most a
//! few passes). Edits of different findings never overlap within a pass: a finding whose edits touch text
//! another finding already edits waits for the next pass. Everything outside the edits stays byte-identical.

use std::collections::BTreeMap;

use crate::lint::{LintResult, Options, lint};
use crate::rules::{Edit, FileWrite, RULES};

#[derive(Debug)]
pub struct FixResult {
    pub source: String,
    /// Files to write besides the Dockerfile (`.dockerignore`).
    pub files: Vec<FileWrite>,
    /// How many findings of each rule were fixed.
    pub fixed: BTreeMap<&'static str, usize>,
    /// Lint of the fixed source.
    pub after: LintResult,
}

const MAX_PASSES: usize = 8;

/// The path prefix of a registry's mirror-baked images.
pub const PKGMIRROR: &str = "pkgmirror/";

/// Every `FROM <image>` (not a stage, not `scratch`, not already baked) rewritten to the registry's mirror-baked
/// image, `<registry>/pkgmirror/<preset>/<image>` (Docker Hub names spelt out: `alpine` is `library/alpine`).
/// Everything else is left byte for byte.
pub fn base_mirror(src: &str, registry: &str, preset: &str) -> String {
    let (df, _) = crate::parse(src);
    let model = crate::model::Model::new(&df);
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for stage in &model.stages {
        if !matches!(stage.base, crate::model::Base::Image(_)) || stage.image.contains(PKGMIRROR) {
            continue;
        }
        let ins = model.instructions[stage.from];
        let Some(word) = crate::words::split(&ins.args.text, df.escape).into_iter().next() else {
            continue;
        };
        // Only an image written without variables: one with `$` is resolved at build time.
        if word.value.contains('$') {
            continue;
        }
        let start = ins.args.source_offset(word.start);
        let end = ins.args.source_offset(word.end - 1) + 1;
        edits.push((
            start,
            end,
            format!("{registry}/{PKGMIRROR}{preset}/{}", spelt_out(&word.value)),
        ));
    }
    let mut out = src.to_string();
    for (start, end, text) in edits.into_iter().rev() {
        out.replace_range(start..end, &text);
    }
    out
}

/// `alpine:3.20` → `library/alpine:3.20`; names with a path (a registry host, an organisation) are kept.
fn spelt_out(image: &str) -> String {
    if image.contains('/') {
        image.to_string()
    } else {
        format!("library/{image}")
    }
}

pub fn fix(src: &str, opts: &Options) -> FixResult {
    let mut source = src.to_string();
    let mut files: BTreeMap<std::path::PathBuf, String> = BTreeMap::new();
    let mut fixed: BTreeMap<&'static str, usize> = BTreeMap::new();
    for _ in 0..MAX_PASSES {
        let result = lint(&source, opts);
        let mut candidates: Vec<_> = result.findings.iter().filter(|f| f.fix.is_some()).collect();
        candidates.sort_by_key(|f| (RULES.iter().position(|r| r.id == f.rule), f.span.start));
        let mut accepted: Vec<Edit> = Vec::new();
        for f in candidates {
            let Some(fx) = &f.fix else { continue };
            let mut new_file = false;
            for w in &fx.files {
                new_file |= files.insert(w.path.clone(), w.contents.clone()).as_ref() != Some(&w.contents);
            }
            if fx.edits.is_empty() {
                if new_file {
                    *fixed.entry(f.rule).or_default() += 1;
                }
                continue;
            }
            let valid = fx
                .edits
                .iter()
                .all(|e| e.span.start <= e.span.end && e.span.end <= source.len());
            if !valid || fx.edits.iter().any(|e| accepted.iter().any(|a| overlaps(a, e))) {
                continue;
            }
            accepted.extend(fx.edits.iter().cloned());
            *fixed.entry(f.rule).or_default() += 1;
        }
        if accepted.is_empty() {
            return FixResult {
                source,
                files: files
                    .into_iter()
                    .map(|(path, contents)| FileWrite { path, contents })
                    .collect(),
                fixed,
                after: result,
            };
        }
        source = apply(&source, &accepted);
    }
    let after = lint(&source, opts);
    FixResult {
        source,
        files: files
            .into_iter()
            .map(|(path, contents)| FileWrite { path, contents })
            .collect(),
        fixed,
        after,
    }
}

fn overlaps(a: &Edit, b: &Edit) -> bool {
    let (a0, a1, b0, b1) = (a.span.start, a.span.end, b.span.start, b.span.end);
    if a0 == a1 && b0 == b1 {
        return false; // two insertions at one point keep their order
    }
    if a0 == a1 {
        return b0 < a0 && a0 < b1;
    }
    if b0 == b1 {
        return a0 < b0 && b0 < a1;
    }
    a0 < b1 && b0 < a1
}

/// Applies non-overlapping edits; insertions at one offset keep the order they were given in.
pub fn apply(src: &str, edits: &[Edit]) -> String {
    let mut order: Vec<usize> = (0..edits.len()).collect();
    order.sort_by_key(|&i| (edits[i].span.start, edits[i].span.end, i));
    let mut out = String::with_capacity(src.len() + 64);
    let mut pos = 0;
    for i in order {
        let e = &edits[i];
        if e.span.start < pos || !src.is_char_boundary(e.span.start) || !src.is_char_boundary(e.span.end) {
            continue;
        }
        out.push_str(&src[pos..e.span.start]);
        out.push_str(&e.text);
        pos = e.span.end;
    }
    out.push_str(&src[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Span;

    #[test]
    fn applies_in_order() {
        let e = |s, t: &str| Edit {
            span: Span::new(s, s),
            text: t.into(),
        };
        assert_eq!(
            apply(
                "abc",
                &[
                    e(1, "X"),
                    e(1, "Y"),
                    Edit {
                        span: Span::new(2, 3),
                        text: "Z".into()
                    }
                ]
            ),
            "aXYbZ"
        );
    }
}

#[cfg(test)]
mod base_mirror_tests {
    use super::*;

    #[test]
    fn from_lines_point_at_the_mirror_baked_images() {
        let src = "ARG V=1\nFROM alpine:3.20 AS build\nRUN apk add gcc\nFROM build\nFROM ghcr.io/o/app:$V\n\
                   FROM --platform=linux/amd64 debian:12\nFROM scratch\n";
        let out = base_mirror(src, "reg:5000", "aliyun");
        assert_eq!(
            out,
            "ARG V=1\nFROM reg:5000/pkgmirror/aliyun/library/alpine:3.20 AS build\nRUN apk add gcc\nFROM build\n\
             FROM ghcr.io/o/app:$V\nFROM --platform=linux/amd64 reg:5000/pkgmirror/aliyun/library/debian:12\n\
             FROM scratch\n"
        );
        assert_eq!(base_mirror(&out, "reg:5000", "aliyun"), out, "idempotent");
        // WH001 no longer asks for a sed in the baked stages.
        let opts = crate::lint::Options {
            config: crate::config::Config {
                mirrors: crate::config::preset("aliyun").unwrap(),
                ..Default::default()
            },
            context: None,
        };
        let before = crate::lint::lint(src, &opts);
        assert!(before.findings.iter().any(|f| f.rule == "WH001"));
        let after = crate::lint::lint(&out, &opts);
        assert!(
            !after.findings.iter().any(|f| f.rule == "WH001"),
            "{:?}",
            after.findings
        );
    }
}
