//! WH020 `sudo` in RUN, WH021 relative WORKDIR.

use super::{Ctx, Finding, Rule, Severity, finding};
use crate::ast::Keyword;
use crate::shell::basename;

pub const SUDO: Rule = Rule {
    id: "WH020",
    name: "sudo",
    severity: Severity::Error,
    summary: "`sudo` in RUN.",
    doc: "Build steps run as the current USER; `sudo` adds a setuid binary and unpredictable TTY and signal \
          behaviour. Switch with USER, or use gosu/su-exec at run time.",
    fixable: false,
    hadolint: Some("DL3004"),
    check: check_sudo,
};

pub const RELATIVE_WORKDIR: Rule = Rule {
    id: "WH021",
    name: "relative-workdir",
    severity: Severity::Error,
    summary: "WORKDIR with a relative path.",
    doc: "A relative WORKDIR depends on every WORKDIR before it (and on the base image's); use an absolute path.",
    fixable: false,
    hadolint: Some("DL3000"),
    check: check_workdir,
};

fn check_sudo(ctx: &Ctx, out: &mut Vec<Finding>) {
    for i in 0..ctx.model.instructions.len() {
        for (script, cmd) in ctx.commands(i) {
            let first = cmd.words.iter().find(|w| !crate::shell::is_assignment(&w.value));
            if let Some(w) = first.filter(|w| basename(&w.value) == "sudo") {
                let end = ctx.command_span(script, cmd).end;
                let span = crate::span::Span::new(script.to_source(w.start), end);
                out.push(finding(SUDO.id, span, "do not use sudo: switch with USER"));
            }
        }
    }
}

fn check_workdir(ctx: &Ctx, out: &mut Vec<Finding>) {
    for (i, ins) in ctx.model.instructions.iter().enumerate() {
        let ins = ins.effective();
        if ins.keyword != Keyword::Workdir {
            continue;
        }
        // Variables in scope are substituted; an unknown one could be absolute, so it is not reported.
        let (expanded, resolved) = ctx.model.expand_at(i, &ins.args.text);
        let p = if resolved { expanded.as_str() } else { "$" };
        let p = p.trim_matches(['"', '\'']);
        let windows = p.len() >= 2 && p.as_bytes()[1] == b':' && p.as_bytes()[0].is_ascii_alphabetic();
        if !(p.is_empty() || p.starts_with('/') || p.starts_with('$') || windows) {
            out.push(finding(
                RELATIVE_WORKDIR.id,
                ins.args.span,
                format!("WORKDIR `{p}` is relative: use an absolute path"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::lines;

    #[test]
    fn sudo_and_workdir() {
        let src = "FROM a:1\nRUN sudo apt-get update && echo sudo\nWORKDIR app\nWORKDIR /app\nWORKDIR $HOME\nWORKDIR C:\\app\nENV D=rel\nWORKDIR $D\nENV E=/abs\nWORKDIR ${E}/x\n";
        assert_eq!(lines(src, "WH020"), [2]);
        assert_eq!(lines(src, "WH021"), [3, 8]);
    }
}
