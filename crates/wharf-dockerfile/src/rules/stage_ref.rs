//! WH022: `COPY --from` naming a stage that is not defined before it.

use super::{Ctx, Finding, Rule, Severity, finding};
use crate::ast::Keyword;

pub const RULE: Rule = Rule {
    id: "WH022",
    name: "copy-from-unknown-stage",
    severity: Severity::Warning,
    summary: "`COPY --from` refers to a stage that is not defined before it.",
    doc: "`--from` takes a stage name or index defined earlier, or an image. An index past the stages before it, the \
          current stage or a later one is an error in BuildKit; an unknown plain name is pulled as an image, which \
          is usually a typo (write images with a tag, `--from=nginx:1.27`, to make the intent clear).",
    fixable: false,
    hadolint: Some("DL3022"),
    check,
};

fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    for (i, ins) in ctx.model.instructions.iter().enumerate() {
        if ins.keyword != Keyword::Copy && !(ins.keyword == Keyword::Add) {
            continue;
        }
        let Some(flag) = ins.flag("from") else { continue };
        let Some(raw) = flag.value.as_deref() else { continue };
        let (expanded, resolved) = ctx.model.expand_at(i, raw);
        if !resolved {
            continue;
        }
        let v = expanded.as_str();
        let Some(cur) = ctx.model.stage_of(i) else { continue };
        let msg = if let Ok(n) = v.parse::<usize>() {
            (n >= cur).then(|| format!("--from={n}: stage {n} is not defined before this one"))
        } else if let Some(s) = ctx
            .model
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(v.to_ascii_lowercase().as_str()))
        {
            (s.index >= cur).then(|| format!("--from={v}: stage '{v}' is the current or a later stage"))
        } else if v.contains(['/', ':', '@', '.']) {
            None
        } else {
            Some(format!(
                "--from={v}: no stage '{v}' is defined before this (it would be pulled as an image)"
            ))
        };
        if let Some(m) = msg {
            out.push(finding(RULE.id, flag.span, m));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::lines;

    #[test]
    fn refs() {
        let src = "FROM a:1 AS build\nFROM b:1\nCOPY --from=build /a /a\nCOPY --from=0 /a /a\nCOPY --from=biuld /a /a\nCOPY --from=1 /a /a\nCOPY --from=nginx:1.27 /a /a\nCOPY --from=later /a /a\nFROM c:1 AS later\n";
        assert_eq!(lines(src, "WH022"), [5, 6, 8]);
        let args = "ARG FROM_STAGE=build\nARG X\nFROM a:1 AS build\nFROM b:1\nCOPY --from=${FROM_STAGE} /a /a\nCOPY --from=$X /a /a\nCOPY --from=${Y:-bad} /a /a\n";
        assert_eq!(lines(args, "WH022"), [7]);
    }
}
