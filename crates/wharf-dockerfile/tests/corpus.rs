//! The corpus: realistic Dockerfiles under `tests/corpus/`, each with
//! - `NAME.Dockerfile.expected`: the findings (`LINE RULE`), linted with the `aliyun` mirror preset and no build
//!   context;
//! - `NAME.Dockerfile.fixed`: the output of `wharf fix` with the same settings.
//!
//! Checks: the parser reproduces every file byte for byte and finds no syntax error, findings and fixed output
//! match, the fixed output re-parses and re-lints with nothing left to fix, and fixing twice changes nothing.
//! `UPDATE_EXPECTED=1 cargo test -p wharf-dockerfile --test corpus` rewrites the golden files (review the diff).

use std::path::{Path, PathBuf};

use wharf_dockerfile::config::{Config, preset};
use wharf_dockerfile::fix::fix;
use wharf_dockerfile::lint::{Options, lint};
use wharf_dockerfile::parse;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    files.sort();
    files
}

fn options() -> Options {
    Options {
        config: Config {
            mirrors: preset("aliyun").unwrap(),
            ..Default::default()
        },
        context: None,
    }
}

fn findings_text(src: &str) -> String {
    let r = lint(src, &options());
    let mut lines: Vec<(usize, &str)> = r
        .findings
        .iter()
        .map(|f| (r.position(f.span.start).line, f.rule))
        .collect();
    lines.sort();
    lines.iter().map(|(l, id)| format!("{l} {id}\n")).collect()
}

fn golden(path: &Path, suffix: &str, actual: &str, failures: &mut Vec<String>) {
    let g = PathBuf::from(format!("{}.{suffix}", path.display()));
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&g, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&g).unwrap_or_default();
    if expected != actual {
        failures.push(format!(
            "{}:\n--- expected\n{expected}--- actual\n{actual}",
            g.display()
        ));
    }
}

#[test]
fn corpus_has_at_least_30_files() {
    assert!(corpus().len() >= 30, "{}", corpus().len());
}

#[test]
fn corpus_round_trips_and_parses_cleanly() {
    for path in corpus() {
        let src = std::fs::read_to_string(&path).unwrap();
        let (df, errors) = parse(&src);
        assert_eq!(df.print(), src, "{}", path.display());
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn corpus_findings_match_expected() {
    let mut failures = Vec::new();
    for path in corpus() {
        let src = std::fs::read_to_string(&path).unwrap();
        golden(&path, "expected", &findings_text(&src), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_fixes_match_and_relint_clean() {
    let mut failures = Vec::new();
    for path in corpus() {
        let src = std::fs::read_to_string(&path).unwrap();
        let result = fix(&src, &options());
        golden(&path, "fixed", &result.source, &mut failures);
        let (_, errors) = parse(&result.source);
        assert!(
            errors.is_empty(),
            "{}: fixed output does not parse: {errors:?}",
            path.display()
        );
        let after = lint(&result.source, &options());
        let left: Vec<_> = after
            .findings
            .iter()
            .filter(|f| f.fix.as_ref().is_some_and(|x| !x.edits.is_empty()))
            .collect();
        assert!(
            left.is_empty(),
            "{}: fixable findings left after fix: {left:?}",
            path.display()
        );
        for rule in result.fixed.keys() {
            let still: Vec<_> = after
                .findings
                .iter()
                .filter(|f| f.rule == *rule && f.fix.is_some())
                .collect();
            assert!(
                still.is_empty(),
                "{}: {rule} still reported after its fix: {still:?}",
                path.display()
            );
        }
        assert_eq!(
            fix(&result.source, &options()).source,
            result.source,
            "{}: fix is not idempotent",
            path.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
