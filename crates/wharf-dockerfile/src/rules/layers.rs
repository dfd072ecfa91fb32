//! WH008 consecutive RUNs that can be merged, WH009 `cd` in RUN.

use super::{Ctx, Edit, Finding, Fix, Rule, Severity, finding};
use crate::ast::{ItemKind, Keyword};
use crate::shell::Op;

pub const MERGEABLE_RUNS: Rule = Rule {
    id: "WH008",
    name: "mergeable-runs",
    severity: Severity::Info,
    summary: "Consecutive RUN instructions that can be merged into one layer.",
    doc: "Each RUN makes a layer; fewer layers push, pull and unpack faster. Reported only when merging cannot \
          change the result: both RUNs in shell form without heredocs, the same flags, no comment between them, the \
          first does not change shell state that a new RUN would reset (cd, export, source, set, umask, exec, \
          exit...) or run in the background, and the second is a plain `&&`/`|` chain (so a failure still fails \
          the build). Never reported for a dependency install (`npm ci`, `pip install -r`, `go mod download`...) \
          followed by other steps: the install's layer is the one a source change should not rebuild, so it stays \
          a RUN of its own (and WH007 can move it before `COPY . .`). The fix joins them with `&& \\`.",
    fixable: true,
    hadolint: Some("DL3059"),
    check: check_merge,
};

pub const CD_IN_RUN: Rule = Rule {
    id: "WH009",
    name: "cd-in-run",
    severity: Severity::Warning,
    summary: "`cd` in RUN instead of WORKDIR.",
    doc: "`cd` lasts only until the end of the RUN, which makes the next instructions easy to get wrong. Use \
          WORKDIR, or a subshell when the change is meant to be local.",
    fixable: false,
    hadolint: Some("DL3003"),
    check: check_cd,
};

const STATEFUL: &[&str] = &[
    "cd", "pushd", "popd", "export", "unset", "source", ".", "set", "umask", "alias", "ulimit", "shopt", "exec",
    "exit", "trap", "eval", "readonly", "declare", "local",
];

fn mergeable_first(ctx: &Ctx, i: usize) -> bool {
    let ins = ctx.ins(i);
    if ins.keyword != Keyword::Run || ins.args.is_exec() || !ins.heredocs.is_empty() || ins.onbuild.is_some() {
        return false;
    }
    let Some((_, p)) = ctx.scripts[i].first() else {
        return false;
    };
    let t = ins.args.text.trim_end();
    !p.has_comment
        && !p.ops.contains(&Op::Background)
        && !t.ends_with(';')
        && !t.ends_with('&')
        && !p.commands.iter().any(stateful)
}

fn mergeable_second(ctx: &Ctx, i: usize) -> bool {
    let ins = ctx.ins(i);
    if ins.keyword != Keyword::Run || ins.args.is_exec() || !ins.heredocs.is_empty() || ins.onbuild.is_some() {
        return false;
    }
    let Some((_, p)) = ctx.scripts[i].first() else {
        return false;
    };
    !p.has_comment
        && !p.has_groups
        && p.ops.iter().all(|o| matches!(o, Op::And | Op::Pipe))
        && !p.commands.is_empty()
        && !p.commands.iter().any(stateful)
}

fn stateful(c: &crate::shell::Command) -> bool {
    c.words.first().is_some_and(|w| STATEFUL.contains(&w.value.as_str()))
        || c.name().is_some_and(|n| STATEFUL.contains(&n))
}

fn same_flags(ctx: &Ctx, a: usize, b: usize) -> bool {
    let fa: Vec<_> = ctx.ins(a).flags.iter().map(|f| (&f.name, &f.value)).collect();
    let fb: Vec<_> = ctx.ins(b).flags.iter().map(|f| (&f.name, &f.value)).collect();
    fa == fb
}

/// Items between two instructions are only blank lines.
fn only_blank_between(ctx: &Ctx, a: usize, b: usize) -> bool {
    let (ea, sb) = (ctx.ins(a).span.end, ctx.ins(b).span.start);
    ctx.model
        .df
        .items
        .iter()
        .filter(|it| it.span.start >= ea && it.span.end <= sb)
        .all(|it| matches!(it.kind, ItemKind::Blank))
}

fn check_merge(ctx: &Ctx, out: &mut Vec<Finding>) {
    for stage in &ctx.model.stages {
        for w in stage.body.windows(2) {
            let (a, b) = (w[0], w[1]);
            if !(mergeable_first(ctx, a)
                && mergeable_second(ctx, b)
                && same_flags(ctx, a, b)
                && only_blank_between(ctx, a, b))
            {
                continue;
            }
            // A dependency install keeps its own layer: merged with the build or test steps after it, every source
            // change would install again.
            let installs = |i: usize| {
                ctx.scripts[i]
                    .iter()
                    .flat_map(|(_, p)| &p.commands)
                    .any(super::cache_order::is_dependency_install)
            };
            let only_installs = |i: usize| {
                ctx.scripts[i]
                    .iter()
                    .flat_map(|(_, p)| &p.commands)
                    .all(super::cache_order::is_dependency_install)
            };
            if installs(a) && !only_installs(b) {
                continue;
            }
            // A build argument used by the second RUN invalidates only its cache; merged, the first would re-run.
            let uses_arg = ctx.ins(b).args.text.contains('$')
                && stage.body.iter().any(|&i| i < b && ctx.is(i, Keyword::Arg))
                || ctx.ins(b).args.text.contains('$') && !ctx.model.global_args.is_empty();
            if uses_arg {
                continue;
            }
            let (ia, ib) = (ctx.ins(a), ctx.ins(b));
            let line_a = ctx.src[..ia.span.start].matches('\n').count() + 1;
            let mut f = finding(
                MERGEABLE_RUNS.id,
                ib.keyword_span,
                format!("this RUN can be merged into the RUN at line {line_a}"),
            );
            let indent = " ".repeat(4);
            let text = format!(" && {}{}{indent}", ctx.model.df.escape, ctx.nl());
            f.fix = Some(Fix {
                edits: vec![Edit {
                    span: crate::span::Span::new(ia.args.span.end, ib.args.span.start),
                    text,
                }],
                files: vec![],
            });
            out.push(f);
        }
    }
}

fn check_cd(ctx: &Ctx, out: &mut Vec<Finding>) {
    for i in 0..ctx.model.instructions.len() {
        if let Some((script, cmd)) = ctx.commands(i).find(|(_, c)| c.name() == Some("cd") && !c.in_group) {
            out.push(finding(
                CD_IN_RUN.id,
                ctx.command_span(script, cmd),
                "`cd` in RUN: use WORKDIR",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::{fixed, lines};

    #[test]
    fn merges_safe_runs() {
        let src = "FROM debian:12\nRUN apt-get update\nRUN apt-get install -y curl \\\n  git\n\nRUN echo a | tee /x\nRUN cd /x\nRUN make\n";
        assert_eq!(lines(src, "WH008"), [3, 6]);
        assert_eq!(
            fixed(src, "WH008"),
            "FROM debian:12\nRUN apt-get update && \\\n    apt-get install -y curl \\\n  git && \\\n    echo a | tee /x\nRUN cd /x\nRUN make\n"
        );
    }

    #[test]
    fn merges_with_the_backtick_escape() {
        let src = "# escape=`\nFROM a:1\nRUN echo a\nRUN echo b\n";
        assert_eq!(
            fixed(src, "WH008"),
            "# escape=`\nFROM a:1\nRUN echo a && `\n    echo b\n"
        );
    }

    #[test]
    fn does_not_merge_unsafe() {
        for src in [
            "FROM a:1\nRUN a\nRUN b; c\n",
            "FROM a:1\nRUN a\nRUN b || c\n",
            "FROM a:1\nRUN export X=1\nRUN b\n",
            "FROM a:1\nRUN a # note\nRUN b\n",
            "FROM a:1\nRUN a\n# why\nRUN b\n",
            "FROM a:1\nRUN --mount=type=cache,target=/c a\nRUN b\n",
            "FROM a:1\nRUN [\"a\"]\nRUN b\n",
            "FROM a:1\nRUN <<EOF\na\nEOF\nRUN b\n",
            "FROM a:1\nRUN a\nFROM a:1\nRUN b\n",
            "FROM a:1\nARG V\nRUN a\nRUN echo $V\n",
            // A dependency install keeps its layer apart from the build and test steps after it.
            "FROM node:20\nRUN npm ci --no-audit && npm cache clean --force\nRUN npm run build\n",
            "FROM python:3\nRUN pip install -r requirements.txt\nRUN pytest\n",
            "FROM golang:1\nRUN go mod download\nRUN go build ./...\n",
        ] {
            assert!(lines(src, "WH008").is_empty(), "{src}");
        }
    }

    #[test]
    fn installs_merge_with_installs() {
        assert_eq!(
            lines("FROM node:20\nRUN apt-get update\nRUN npm ci\n", "WH008"),
            [3],
            "a step before the install may join it"
        );
        assert_eq!(
            lines("FROM node:20\nRUN npm ci\nRUN pip install -r r.txt\n", "WH008"),
            [3]
        );
    }

    #[test]
    fn cd() {
        assert_eq!(
            lines("FROM a:1\nRUN cd /src && make\nRUN (cd /x) && echo $(cd /y)\n", "WH009"),
            [2]
        );
    }
}
