//! Output: a terminal report with the source line and a caret, JSON, and SARIF 2.1.0 for code-scanning UIs.

use serde_json::{Value, json};

use crate::lint::LintResult;
use crate::rules::{RULES, Severity, rule_by_id};

/// One linted file.
pub struct FileReport<'a> {
    pub path: &'a str,
    pub result: &'a LintResult,
}

/// `path:line:col: severity[ID] message`, then the line and a caret under the span.
pub fn text(files: &[FileReport], color: bool) -> String {
    let mut out = String::new();
    let paint = |code: &str, s: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    for f in files {
        let src = &f.result.df.source;
        for finding in &f.result.findings {
            let pos = f.result.position(finding.span.start);
            let end = f.result.position(finding.span.end.max(finding.span.start));
            let sev = finding.severity.as_str();
            let sev_col = match finding.severity {
                Severity::Error => paint("1;31", sev),
                Severity::Warning => paint("1;33", sev),
                _ => paint("1;36", sev),
            };
            let fixable = if finding.fix.is_some() { " (fixable)" } else { "" };
            out.push_str(&format!(
                "{}:{}:{}: {sev_col}[{}] {}{fixable}\n",
                f.path, pos.line, pos.column, finding.rule, finding.message
            ));
            let line = f.result.index.line_text(src, pos.line);
            if !line.is_empty() || finding.span.is_empty() {
                let width = if end.line == pos.line {
                    end.column.saturating_sub(pos.column).max(1)
                } else {
                    line.chars().count().saturating_sub(pos.column - 1).max(1)
                };
                let gutter = format!("{:>5} | ", pos.line);
                let pad: String = line
                    .chars()
                    .take(pos.column - 1)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                out.push_str(&format!(
                    "{gutter}{line}\n{:>5} | {pad}{}\n",
                    "",
                    paint("1;32", &"^".repeat(width))
                ));
            }
        }
    }
    let (mut e, mut w, mut o) = (0, 0, 0);
    for f in files {
        for x in &f.result.findings {
            match x.severity {
                Severity::Error => e += 1,
                Severity::Warning => w += 1,
                _ => o += 1,
            }
        }
    }
    out.push_str(&format!(
        "{} file(s): {e} error(s), {w} warning(s), {o} info/style\n",
        files.len()
    ));
    out
}

pub fn json(files: &[FileReport]) -> Value {
    let mut all = Vec::new();
    for f in files {
        for x in &f.result.findings {
            let s = f.result.position(x.span.start);
            let e = f.result.position(x.span.end);
            all.push(json!({
                "file": f.path,
                "rule": x.rule,
                "name": rule_by_id(x.rule).map(|r| r.name),
                "severity": x.severity,
                "line": s.line,
                "column": s.column,
                "end_line": e.line,
                "end_column": e.column,
                "message": x.message,
                "fixable": x.fix.is_some(),
            }));
        }
    }
    Value::Array(all)
}

/// [`json`] as pretty-printed text.
pub fn json_text(files: &[FileReport]) -> String {
    serde_json::to_string_pretty(&json(files)).unwrap_or_default()
}

/// [`sarif`] as pretty-printed text.
pub fn sarif_text(files: &[FileReport]) -> String {
    serde_json::to_string_pretty(&sarif(files)).unwrap_or_default()
}

pub fn sarif(files: &[FileReport]) -> Value {
    let level = |s: Severity| match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info | Severity::Style => "note",
    };
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "shortDescription": {"text": r.summary},
                "fullDescription": {"text": r.doc},
                "defaultConfiguration": {"level": level(r.severity)},
                "properties": {"fixable": r.fixable},
            })
        })
        .collect();
    let mut results = Vec::new();
    for f in files {
        for x in &f.result.findings {
            let s = f.result.position(x.span.start);
            let e = f.result.position(x.span.end.max(x.span.start));
            results.push(json!({
                "ruleId": x.rule,
                "ruleIndex": RULES.iter().position(|r| r.id == x.rule),
                "level": level(x.severity),
                "message": {"text": x.message},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.path},
                        "region": {"startLine": s.line, "startColumn": s.column, "endLine": e.line, "endColumn": e.column},
                    }
                }],
            }));
        }
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "wharf", "version": env!("CARGO_PKG_VERSION"), "rules": rules}},
            "results": results,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::{Options, lint};

    #[test]
    fn formats() {
        let r = lint("FROM alpine:3.20\nRUN  apk add curl\n", &Options::default());
        let files = [FileReport {
            path: "Dockerfile",
            result: &r,
        }];
        let t = text(&files, false);
        assert!(t.starts_with(
            "Dockerfile:2:6: warning[WH002] `apk add` without `--no-cache` (fixable)\n    2 | RUN  apk add curl\n      |      ^^^^^^^^^^^^\n"
        ), "{t}");
        let j = json(&files);
        assert_eq!(j[0]["rule"], "WH002");
        assert_eq!(j[0]["column"], 6);
        let s = sarif(&files);
        assert_eq!(s["version"], "2.1.0");
        assert_eq!(s["runs"][0]["results"][0]["ruleId"], "WH002");
        assert_eq!(
            s["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"],
            2
        );
    }
}
