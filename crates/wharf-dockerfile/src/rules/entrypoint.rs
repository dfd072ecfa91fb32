//! WH016 several CMD, WH017 several ENTRYPOINT in a stage, WH018 ENTRYPOINT in shell form.

use super::{Ctx, Finding, Rule, Severity, finding};
use crate::ast::Keyword;

pub const MULTIPLE_CMD: Rule = Rule {
    id: "WH016",
    name: "multiple-cmd",
    severity: Severity::Warning,
    summary: "More than one CMD in a stage; only the last one counts.",
    doc: "Every CMD but the last of a stage is ignored, which usually hides a mistake.",
    fixable: false,
    hadolint: Some("DL4003"),
    check: check_cmd,
};

pub const MULTIPLE_ENTRYPOINT: Rule = Rule {
    id: "WH017",
    name: "multiple-entrypoint",
    severity: Severity::Error,
    summary: "More than one ENTRYPOINT in a stage; only the last one counts.",
    doc: "Every ENTRYPOINT but the last of a stage is ignored.",
    fixable: false,
    hadolint: Some("DL4004"),
    check: check_entrypoint,
};

pub const SHELL_FORM_ENTRYPOINT: Rule = Rule {
    id: "WH018",
    name: "shell-form-entrypoint",
    severity: Severity::Warning,
    summary: "ENTRYPOINT in shell form.",
    doc: "In shell form the process runs under `/bin/sh -c`, does not receive SIGTERM (so `docker stop` waits and \
          kills it) and ignores CMD and `docker run` arguments. Use the JSON form `ENTRYPOINT [\"app\", \"arg\"]`.",
    fixable: false,
    hadolint: Some("DL3025"),
    check: check_shell_form,
};

fn duplicates(ctx: &Ctx, kw: Keyword, rule: &'static str, out: &mut Vec<Finding>) {
    for s in &ctx.model.stages {
        let all: Vec<usize> = s.body.iter().copied().filter(|&i| ctx.ins(i).keyword == kw).collect();
        if let Some((last, rest)) = all.split_last() {
            let line = ctx.src[..ctx.ins(*last).span.start].matches('\n').count() + 1;
            for &i in rest {
                out.push(finding(
                    rule,
                    ctx.ins(i).keyword_span,
                    format!(
                        "{} overridden by the one at line {line}",
                        ctx.ins(i).keyword_text.to_ascii_uppercase()
                    ),
                ));
            }
        }
    }
}

fn check_cmd(ctx: &Ctx, out: &mut Vec<Finding>) {
    duplicates(ctx, Keyword::Cmd, MULTIPLE_CMD.id, out);
}

fn check_entrypoint(ctx: &Ctx, out: &mut Vec<Finding>) {
    duplicates(ctx, Keyword::Entrypoint, MULTIPLE_ENTRYPOINT.id, out);
}

fn check_shell_form(ctx: &Ctx, out: &mut Vec<Finding>) {
    for ins in &ctx.model.instructions {
        if ins.keyword == Keyword::Entrypoint && !ins.args.is_exec() && !ins.args.text.is_empty() {
            out.push(finding(
                SHELL_FORM_ENTRYPOINT.id,
                ins.args.span,
                "ENTRYPOINT in shell form: use the JSON form",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::lines;

    #[test]
    fn cmd_entrypoint() {
        let src =
            "FROM a:1\nCMD a\nENTRYPOINT x y\nCMD [\"b\"]\nFROM a:1\nCMD c\nENTRYPOINT [\"e\"]\nENTRYPOINT [\"f\"]\n";
        assert_eq!(lines(src, "WH016"), [2]);
        assert_eq!(lines(src, "WH017"), [7]);
        assert_eq!(lines(src, "WH018"), [3]);
    }
}
