//! WH003 apt-get update in its own RUN, WH004 install without --no-install-recommends, WH005 apt lists left in
//! the layer.

use super::{Ctx, Edit, Finding, Fix, Rule, Severity, finding};
use crate::ast::Keyword;
use crate::shell::{Command, Op, Script};

pub const UPDATE_SEPARATE: Rule = Rule {
    id: "WH003",
    name: "apt-update-separate",
    severity: Severity::Warning,
    summary: "`apt-get update` in a different RUN from `apt-get install`.",
    doc: "The layer of a RUN holding only `apt-get update` is cached: later builds install from a stale index (or \
          fail on removed versions). Run update and install in the same RUN. The fix, when the update RUN holds \
          nothing else, removes it and puts `apt-get update &&` in front of the install.",
    fixable: true,
    hadolint: None,
    check: check_update,
};

pub const NO_INSTALL_RECOMMENDS: Rule = Rule {
    id: "WH004",
    name: "apt-no-install-recommends",
    severity: Severity::Info,
    summary: "`apt-get install` without `--no-install-recommends`.",
    doc: "Recommended packages are rarely needed in an image and often double its size. The fix adds \
          `--no-install-recommends` after `install`.",
    fixable: true,
    hadolint: Some("DL3015"),
    check: check_recommends,
};

pub const LISTS_NOT_REMOVED: Rule = Rule {
    id: "WH005",
    name: "apt-lists-not-removed",
    severity: Severity::Info,
    summary: "apt package lists are left in the layer.",
    doc: "A RUN that runs `apt-get update` should end with `rm -rf /var/lib/apt/lists/*` in the same RUN; \
          removing them in a later RUN does not shrink the image. Not reported when the RUN mounts a cache on \
          /var/lib/apt. The fix appends `&& rm -rf /var/lib/apt/lists/*` (or a line in a heredoc), except when a \
          later RUN of the stage (or of a stage built FROM it) installs without its own update: it needs the lists.",
    fixable: true,
    hadolint: Some("DL3009"),
    check: check_lists,
};

fn is_apt(cmd: &Command, sub: &str) -> bool {
    cmd.is("apt-get", sub) || cmd.is("apt", sub) || cmd.is("aptitude", sub)
}

fn check_update(ctx: &Ctx, out: &mut Vec<Finding>) {
    for stage in &ctx.model.stages {
        let runs: Vec<usize> = stage
            .body
            .iter()
            .copied()
            .filter(|&i| ctx.is(i, Keyword::Run))
            .collect();
        for (k, &a) in runs.iter().enumerate() {
            let update = ctx.commands(a).find(|(_, c)| is_apt(c, "update"));
            let Some((us, ucmd)) = update else { continue };
            if ctx
                .commands(a)
                .any(|(_, c)| is_apt(c, "install") || is_apt(c, "upgrade") || is_apt(c, "dist-upgrade"))
            {
                continue;
            }
            let Some(&b) = runs[k + 1..]
                .iter()
                .find(|&&b| ctx.commands(b).any(|(_, c)| is_apt(c, "install")))
            else {
                continue;
            };
            if ctx.commands(b).any(|(_, c)| is_apt(c, "update")) {
                continue;
            }
            let line_b = ctx.src[..ctx.ins(b).span.start].matches('\n').count() + 1;
            let mut f = finding(
                UPDATE_SEPARATE.id,
                ctx.command_span(us, ucmd),
                format!("`apt-get update` in its own RUN: the install at line {line_b} may use a stale cached index"),
            );
            f.fix = update_fix(ctx, a, b);
            out.push(f);
        }
    }
}

fn update_fix(ctx: &Ctx, a: usize, b: usize) -> Option<Fix> {
    let (ia, ib) = (ctx.ins(a), ctx.ins(b));
    if ia.onbuild.is_some() || ib.onbuild.is_some() || !ia.heredocs.is_empty() || ia.args.is_exec() || ib.args.is_exec()
    {
        return None;
    }
    let [(sa, pa)] = ctx.scripts[a].as_slice() else {
        return None;
    };
    if !pa.commands.iter().all(|c| is_apt(c, "update"))
        || !pa.ops.iter().all(|o| matches!(o, Op::And | Op::Seq))
        || pa.has_comment
    {
        return None;
    }
    let update_text = {
        let c = pa.commands.first()?;
        let sp = ctx.command_span(sa, c);
        ctx.src.get(sp.start..sp.end)?.to_string()
    };
    let (sb, pb) = ctx.scripts[b].first()?;
    let idx = pb.commands.iter().position(|c| is_apt(c, "install"))?;
    if idx > 0 && pb.ops.get(idx - 1) != Some(&Op::And) {
        return None;
    }
    let at = sb.to_source(pb.commands[idx].start());
    Some(Fix {
        edits: vec![
            Edit {
                span: ctx.item_span(a),
                text: String::new(),
            },
            Edit::insert(at, format!("{update_text} && ")),
        ],
        files: vec![],
    })
}

fn check_recommends(ctx: &Ctx, out: &mut Vec<Finding>) {
    for i in 0..ctx.model.instructions.len() {
        for (script, cmd) in ctx.commands(i) {
            let is_install = cmd.is("apt-get", "install") || cmd.is("apt", "install");
            if is_install
                && !cmd.has_arg("--no-install-recommends")
                && !cmd.words.iter().any(|w| w.value.contains("Install-Recommends"))
            {
                let mut f = finding(
                    NO_INSTALL_RECOMMENDS.id,
                    ctx.command_span(script, cmd),
                    "`apt-get install` without `--no-install-recommends`",
                );
                if let Some(sub) = cmd.subcommand() {
                    f.fix = Some(Fix {
                        edits: vec![Edit::insert(ctx.word_end(script, sub), " --no-install-recommends")],
                        files: vec![],
                    });
                }
                out.push(f);
            }
        }
    }
}

fn removes_lists(cmd: &Command) -> bool {
    cmd.name() == Some("rm") && cmd.words.iter().any(|w| w.value.starts_with("/var/lib/apt/lists"))
}

fn check_lists(ctx: &Ctx, out: &mut Vec<Finding>) {
    for i in 0..ctx.model.instructions.len() {
        if ctx.has_cache_mount(i, "/var/lib/apt") {
            continue;
        }
        // Only the RUN that downloads the lists can keep them out of the image: a later `rm` only hides them.
        let Some((script, cmd)) = ctx.commands(i).find(|(_, c)| is_apt(c, "update")) else {
            continue;
        };
        if ctx.commands(i).any(|(_, c)| removes_lists(c)) {
            continue;
        }
        let mut f = finding(
            LISTS_NOT_REMOVED.id,
            ctx.command_span(script, cmd),
            "apt lists are not removed in this RUN: add `rm -rf /var/lib/apt/lists/*`",
        );
        if !later_install_needs_lists(ctx, i) {
            f.fix = lists_fix(ctx, i, script);
        }
        out.push(f);
    }
}

/// A later RUN of this stage, or of a stage built FROM it, installs without its own `apt-get update`: it needs the
/// lists this RUN leaves, so removing them would break it.
fn later_install_needs_lists(ctx: &Ctx, i: usize) -> bool {
    let Some(stage) = ctx.model.stage_of(i) else {
        return false;
    };
    let needs = |j: usize| {
        ctx.commands(j)
            .any(|(_, c)| is_apt(c, "install") || is_apt(c, "upgrade"))
            && !ctx.commands(j).any(|(_, c)| is_apt(c, "update"))
    };
    ctx.model
        .stages
        .iter()
        .filter(|s| ctx.model.lineage(s.index).contains(&stage))
        .any(|s| s.body.iter().any(|&j| j > i && needs(j)))
}

fn lists_fix(ctx: &Ctx, i: usize, script: &Script) -> Option<Fix> {
    let ins = ctx.ins(i);
    if ins.onbuild.is_some() || ins.args.is_exec() {
        return None;
    }
    let parsed = script.parse();
    if parsed.has_comment || parsed.ops.contains(&Op::Background) {
        return None;
    }
    if script.is_heredoc() {
        let h = ins.heredocs.iter().find(|h| script.to_source(0) == h.body_span.start)?;
        let body = ctx.src.get(h.body_span.start..h.body_span.end)?;
        if !body.ends_with('\n') {
            return None;
        }
        let indent: String = body
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .collect();
        return Some(Fix {
            edits: vec![Edit::insert(
                h.body_span.end,
                format!("{indent}rm -rf /var/lib/apt/lists/*{}", ctx.nl()),
            )],
            files: vec![],
        });
    }
    let t = script.text.trim_end();
    if t.ends_with(';') || (t.ends_with('&') && !t.ends_with("&&")) || t.ends_with("&&") || t.ends_with('|') {
        return None;
    }
    Some(Fix {
        edits: vec![Edit::insert(ins.args.span.end, " && rm -rf /var/lib/apt/lists/*")],
        files: vec![],
    })
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::{fixed, lines};

    #[test]
    fn update_separate() {
        let src = "FROM debian:12\nRUN apt-get update\nENV X=1\nRUN apt-get install -y curl\n";
        assert_eq!(lines(src, "WH003"), [2]);
        assert_eq!(
            fixed(src, "WH003"),
            "FROM debian:12\nENV X=1\nRUN apt-get update && apt-get install -y curl\n"
        );
        assert!(lines("FROM debian:12\nRUN apt-get update && apt-get install -y x\n", "WH003").is_empty());
        // Different stages: nothing to say.
        assert!(
            lines(
                "FROM debian:12\nRUN apt-get update\nFROM debian:12\nRUN apt-get install -y x\n",
                "WH003"
            )
            .is_empty()
        );
    }

    #[test]
    fn recommends() {
        let src = "FROM debian:12\nRUN apt-get update && apt-get -y install curl && apt install --no-install-recommends git\n";
        assert_eq!(lines(src, "WH004"), [2]);
        assert_eq!(
            fixed(src, "WH004"),
            "FROM debian:12\nRUN apt-get update && apt-get -y install --no-install-recommends curl && apt install --no-install-recommends git\n"
        );
    }

    #[test]
    fn lists() {
        let src = "FROM debian:12\nRUN apt-get update \\\n && apt-get install -y curl\nRUN apt-get update && apt-get install -y x && rm -rf /var/lib/apt/lists/*\n";
        assert_eq!(lines(src, "WH005"), [2]);
        assert_eq!(
            fixed(src, "WH005"),
            "FROM debian:12\nRUN apt-get update \\\n && apt-get install -y curl && rm -rf /var/lib/apt/lists/*\nRUN apt-get update && apt-get install -y x && rm -rf /var/lib/apt/lists/*\n"
        );
        let here = "FROM debian:12\nRUN <<EOF\n  apt-get update\n  apt-get install -y curl\nEOF\n";
        assert_eq!(
            fixed(here, "WH005"),
            "FROM debian:12\nRUN <<EOF\n  apt-get update\n  apt-get install -y curl\n  rm -rf /var/lib/apt/lists/*\nEOF\n"
        );
        // The next RUN needs the lists: reported, not fixed.
        let split = "FROM debian:12\nRUN apt-get update && apt-get install -y a\nRUN apt-get install -y b\n";
        assert_eq!(lines(split, "WH005"), [2]);
        assert_eq!(fixed(split, "WH005"), split);
        assert!(
            lines(
                "FROM debian:12\nRUN --mount=type=cache,target=/var/lib/apt apt-get update\n",
                "WH005"
            )
            .is_empty()
        );
    }
}
