//! Runs the rules over a file and applies configuration and `# wharf-ignore` comments.
//!
//! `# wharf-ignore WH002 WH005` (or `wharf-ignore=WH002,WH005`) on the comment lines right above an instruction
//! silences those rules for that instruction; `# wharf-ignore-file WH001` anywhere silences them for the file.

use std::collections::BTreeSet;

use crate::ast::{Dockerfile, ItemKind};
use crate::config::Config;
use crate::context::ContextInfo;
use crate::error::ParseError;
use crate::model::Model;
use crate::parse;
use crate::rules::{Ctx, Finding, RULES, Severity, finding};
use crate::span::{LineIndex, Position, Span};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: Config,
    /// The scanned build context, for the `.dockerignore` rules (skipped when `None`).
    pub context: Option<ContextInfo>,
}

#[derive(Debug)]
pub struct LintResult {
    pub df: Dockerfile,
    pub index: LineIndex,
    pub errors: Vec<ParseError>,
    /// Sorted by position, then rule id.
    pub findings: Vec<Finding>,
}

impl LintResult {
    pub fn position(&self, offset: usize) -> Position {
        self.index.position(&self.df.source, offset)
    }

    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

pub fn lint(src: &str, opts: &Options) -> LintResult {
    let (df, errors) = parse(src);
    let index = LineIndex::new(src);
    let mut findings = Vec::new();
    {
        let model = Model::new(&df);
        let ctx = Ctx::new(model, &opts.config, opts.context.as_ref());
        for rule in RULES {
            if opts.config.enabled(rule.id) {
                (rule.check)(&ctx, &mut findings);
            }
        }
    }
    if opts.config.enabled("WH000") {
        for e in &errors {
            findings.push(finding("WH000", e.span, e.message.clone()));
        }
    }
    let (file_ignores, ignores) = ignore_comments(&df);
    findings.retain(|f| {
        !file_ignores.contains(f.rule)
            && !ignores.iter().any(|(span, ids)| {
                span.start <= f.span.start && f.span.start < span.end.max(span.start + 1) && ids.contains(f.rule)
            })
    });
    for f in &mut findings {
        if let Some(s) = opts.config.severity.get(f.rule) {
            f.severity = *s;
        }
    }
    findings.sort_by(|a, b| (a.span.start, a.rule).cmp(&(b.span.start, b.rule)));
    LintResult {
        df,
        index,
        errors,
        findings,
    }
}

/// File-wide ignores and per-instruction ignores (instruction span, rule ids).
fn ignore_comments(df: &Dockerfile) -> (BTreeSet<String>, Vec<(Span, BTreeSet<String>)>) {
    let mut file = BTreeSet::new();
    let mut per = Vec::new();
    let mut pending: BTreeSet<String> = BTreeSet::new();
    for item in &df.items {
        match &item.kind {
            ItemKind::Comment(text) => {
                if let Some(rest) = text.strip_prefix("wharf-ignore-file") {
                    file.extend(ids(rest));
                } else if let Some(rest) = text.strip_prefix("wharf-ignore") {
                    pending.extend(ids(rest));
                }
            }
            ItemKind::Instruction(ins) => {
                if !pending.is_empty() {
                    per.push((ins.span, std::mem::take(&mut pending)));
                }
            }
            ItemKind::Blank | ItemKind::Directive(_) => pending.clear(),
        }
    }
    (file, per)
}

fn ids(rest: &str) -> impl Iterator<Item = String> + '_ {
    rest.trim_start_matches([' ', '=', ':', '\t'])
        .split([',', ' ', '\t'])
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_comments_and_config() {
        let src = "FROM alpine:3.20\n# wharf-ignore WH002\nRUN apk add curl\nRUN apk add git\n";
        let r = lint(src, &Options::default());
        let lines: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.rule == "WH002")
            .map(|f| r.position(f.span.start).line)
            .collect();
        assert_eq!(lines, [4]);
        let src2 = format!("# wharf-ignore-file WH002,WH008\n{src}");
        assert!(
            lint(&src2, &Options::default())
                .findings
                .iter()
                .all(|f| f.rule != "WH002")
        );
        let mut config = Config::default();
        config.severity.insert("WH002".into(), Severity::Error);
        let r = lint(src, &Options { config, context: None });
        assert!(r.has_errors());
    }

    #[test]
    fn parse_errors_are_wh000() {
        let r = lint("FROM a:1\nFOO bar\n", &Options::default());
        assert_eq!(r.findings.iter().filter(|f| f.rule == "WH000").count(), 1);
        assert!(r.has_errors());
    }
}
