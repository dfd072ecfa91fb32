//! WH010 no `.dockerignore`, WH011 a `.dockerignore` that lets clutter into the build context. Both read the
//! real context directory (skipped when linting without one).

use super::{Ctx, FileWrite, Finding, Fix, Rule, Severity, finding};
use crate::ast::Keyword;
use crate::context::{CLUTTER, human_size};
use crate::span::Span;
use crate::words;

pub const MISSING: Rule = Rule {
    id: "WH010",
    name: "dockerignore-missing",
    severity: Severity::Warning,
    summary: "The build context has no `.dockerignore`.",
    doc: "Without `.dockerignore` the whole directory, `.git` included, is sent to the builder on every build and \
          `COPY . .` copies all of it, so any change anywhere busts the cache. The fix writes one excluding the \
          clutter found in the context (`.git`, node_modules, target, virtualenvs, caches, build outputs the \
          Dockerfile does not copy).",
    fixable: true,
    hadolint: None,
    check: check_missing,
};

pub const LEAKY: Rule = Rule {
    id: "WH011",
    name: "dockerignore-leaky",
    severity: Severity::Warning,
    summary: "`.dockerignore` lets `.git`, node_modules, target or build outputs into the context.",
    doc: "Reports each clutter directory present in the context and not excluded, with its size and the size of the \
          whole context. The fix appends the missing entries.",
    fixable: true,
    hadolint: None,
    check: check_leaky,
};

/// Top-level names the Dockerfile copies explicitly (never excluded by the fix).
fn copied_names(ctx: &Ctx) -> Vec<String> {
    let mut out = Vec::new();
    for ins in &ctx.model.instructions {
        let ins = ins.effective();
        if !matches!(ins.keyword, Keyword::Copy | Keyword::Add) || ins.flag("from").is_some() {
            continue;
        }
        let mut ws: Vec<String> = words::split(&ins.args.text, ctx.model.df.escape)
            .into_iter()
            .map(|w| w.value)
            .collect();
        ws.pop();
        for w in ws {
            let first = w.trim_start_matches("./").split('/').next().unwrap_or("").to_string();
            out.push(first);
        }
    }
    out
}

fn entries(ctx: &Ctx, names: &[String]) -> Vec<String> {
    let copied = copied_names(ctx);
    names.iter().filter(|n| !copied.contains(n)).cloned().collect()
}

fn check_missing(ctx: &Ctx, out: &mut Vec<Finding>) {
    let Some(cx) = ctx.context else { return };
    if cx.ignore_file.is_some() {
        return;
    }
    let mut names: Vec<String> = cx.clutter_present.clone();
    if !names.iter().any(|n| n == ".git") {
        names.insert(0, ".git".to_string());
    }
    let names = entries(ctx, &names);
    let mut f = finding(
        MISSING.id,
        Span::new(0, 0),
        format!(
            "no .dockerignore in {}: the context sends {} in {} files{}",
            cx.dir.display(),
            human_size(cx.sent_bytes),
            cx.sent_files,
            leak_list(cx)
        ),
    );
    let header = String::from("# Written by `wharf fix`: keep the build context small and the cache stable.\n");
    f.fix = Some(ignore_file_fix(cx, header, &names));
    out.push(f);
}

/// The fix that writes `.dockerignore` as `contents` followed by one pattern per line.
fn ignore_file_fix(cx: &crate::context::ContextInfo, mut contents: String, patterns: &[impl AsRef<str>]) -> Fix {
    for p in patterns {
        contents.push_str(p.as_ref());
        contents.push('\n');
    }
    Fix {
        edits: vec![],
        files: vec![FileWrite {
            path: cx.ignore_path(),
            contents,
        }],
    }
}

fn leak_list(cx: &crate::context::ContextInfo) -> String {
    if cx.leaks.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = cx
        .leaks
        .iter()
        .map(|(n, b)| format!("{n} {}", human_size(*b)))
        .collect();
    format!(", including {}", parts.join(", "))
}

fn check_leaky(ctx: &Ctx, out: &mut Vec<Finding>) {
    let Some(cx) = ctx.context else { return };
    if cx.ignore_file.is_none() || cx.leaks.is_empty() {
        return;
    }
    let leaked: Vec<String> = cx
        .leaks
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| CLUTTER.contains(&n.as_str()))
        .collect();
    let add = entries(ctx, &leaked);
    if add.is_empty() {
        return;
    }
    let mut f = finding(
        LEAKY.id,
        Span::new(0, 0),
        format!(
            "{} does not exclude {}: the context sends {} in {} files{}",
            cx.ignore_path().display(),
            add.join(", "),
            human_size(cx.sent_bytes),
            cx.sent_files,
            leak_list(cx)
        ),
    );
    let mut contents = cx.ignore_text.clone();
    if !contents.is_empty() && !contents.ends_with('\n') {
        contents.push('\n');
    }
    f.fix = Some(ignore_file_fix(cx, contents, &add));
    out.push(f);
}

#[cfg(test)]
mod tests {
    use crate::context::scan;
    use crate::lint::{Options, lint};

    #[test]
    fn missing_and_leaky() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "ref").unwrap();
        std::fs::create_dir_all(dir.path().join("dist")).unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules")).unwrap();
        let src = "FROM nginx:1.27\nCOPY dist/ /usr/share/nginx/html/\n";
        let opts = Options {
            config: Default::default(),
            context: Some(scan(dir.path(), None).unwrap()),
        };
        let r = lint(src, &opts);
        let f: Vec<_> = r.findings.iter().filter(|f| f.rule == "WH010").collect();
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains(".git 3 B"), "{}", f[0].message);
        let fx = crate::fix::fix(src, &opts);
        assert_eq!(fx.files.len(), 1);
        // dist is copied by the Dockerfile: not excluded.
        assert!(
            fx.files[0].contents.ends_with("\n.git\nnode_modules\n"),
            "{}",
            fx.files[0].contents
        );
        std::fs::write(&fx.files[0].path, &fx.files[0].contents).unwrap();
        let opts = Options {
            config: Default::default(),
            context: Some(scan(dir.path(), None).unwrap()),
        };
        assert!(
            lint(src, &opts)
                .findings
                .iter()
                .all(|f| f.rule != "WH010" && f.rule != "WH011")
        );

        std::fs::write(dir.path().join(".dockerignore"), "*.log").unwrap();
        let opts = Options {
            config: Default::default(),
            context: Some(scan(dir.path(), None).unwrap()),
        };
        let r = lint(src, &opts);
        assert_eq!(r.findings.iter().filter(|f| f.rule == "WH011").count(), 1);
        assert_eq!(
            crate::fix::fix(src, &opts).files[0].contents,
            "*.log\n.git\nnode_modules\n"
        );
    }
}
