//! WH014 ADD for local files, WH015 ADD of a URL.

use super::{Ctx, Edit, Finding, Fix, Rule, Severity, finding};
use crate::ast::{Form, Keyword};
use crate::words;

pub const LOCAL: Rule = Rule {
    id: "WH014",
    name: "add-local",
    severity: Severity::Warning,
    summary: "ADD used to copy local files.",
    doc: "ADD also extracts archives and downloads URLs; for plain local files COPY says what it does. Local tar \
          archives (which ADD extracts on purpose) are not reported. The fix replaces ADD with COPY.",
    fixable: true,
    hadolint: Some("DL3020"),
    check: check_local,
};

pub const URL: Rule = Rule {
    id: "WH015",
    name: "add-url",
    severity: Severity::Info,
    summary: "ADD downloads a URL without a checksum.",
    doc: "A download through ADD is re-fetched on every build without a pinned checksum and its content can \
          change under the same URL. Use `ADD --checksum=sha256:...` or fetch and verify in a RUN.",
    fixable: false,
    hadolint: None,
    check: check_url,
};

fn is_url(s: &str) -> bool {
    s.starts_with("http://")
        || s.starts_with("https://")
        || s.starts_with("git@")
        || s.ends_with(".git") && s.contains("://")
}

fn is_archive(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    [
        ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".tar.zst", ".tzst", ".gz", ".bz2",
        ".xz",
    ]
    .iter()
    .any(|e| s.ends_with(e))
        || s.contains('$')
}

fn sources(ctx: &Ctx, i: usize) -> Vec<String> {
    let ins = ctx.ins(i);
    let mut ws: Vec<String> = match &ins.args.form {
        Form::Exec(w) => w.iter().map(|w| w.value.clone()).collect(),
        Form::Shell => words::split(&ins.args.text, ctx.model.df.escape)
            .into_iter()
            .map(|w| w.value)
            .collect(),
    };
    ws.pop();
    ws
}

fn check_local(ctx: &Ctx, out: &mut Vec<Finding>) {
    for i in 0..ctx.model.instructions.len() {
        let ins = ctx.ins(i);
        if ins.keyword != Keyword::Add || !ins.heredocs.is_empty() {
            continue;
        }
        let srcs = sources(ctx, i);
        if srcs.is_empty() || srcs.iter().any(|s| is_url(s) || is_archive(s)) {
            continue;
        }
        let mut f = finding(LOCAL.id, ins.keyword_span, "use COPY for local files");
        let copy_flags_only = ins.flags.iter().all(|f| {
            matches!(
                f.name.as_str(),
                "chown" | "chmod" | "link" | "from" | "parents" | "exclude"
            )
        });
        if copy_flags_only {
            let text = if ins.keyword_text.chars().all(|c| c.is_ascii_lowercase()) {
                "copy"
            } else {
                "COPY"
            };
            f.fix = Some(Fix {
                edits: vec![Edit {
                    span: ins.keyword_span,
                    text: text.to_string(),
                }],
                files: vec![],
            });
        }
        out.push(f);
    }
}

fn check_url(ctx: &Ctx, out: &mut Vec<Finding>) {
    for i in 0..ctx.model.instructions.len() {
        let ins = ctx.ins(i);
        if ins.keyword != Keyword::Add || ins.flag("checksum").is_some() {
            continue;
        }
        if let Some(u) = sources(ctx, i).into_iter().find(|s| is_url(s)) {
            out.push(finding(
                URL.id,
                ins.args.span,
                format!("ADD downloads {u} without --checksum"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::{fixed, lines};

    #[test]
    fn add() {
        let src = "FROM a:1\nADD . /app\nADD rootfs.tar.gz /\nADD https://example.com/x.tgz /x\nADD --checksum=sha256:0 https://e/x /x\nadd --chown=1 a b\n";
        assert_eq!(lines(src, "WH014"), [2, 6]);
        assert_eq!(lines(src, "WH015"), [4]);
        assert_eq!(
            fixed(src, "WH014"),
            "FROM a:1\nCOPY . /app\nADD rootfs.tar.gz /\nADD https://example.com/x.tgz /x\nADD --checksum=sha256:0 https://e/x /x\ncopy --chown=1 a b\n"
        );
    }
}
