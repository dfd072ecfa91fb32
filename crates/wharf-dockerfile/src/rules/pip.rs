//! WH006: `pip install` without `--no-cache-dir`.

use super::mirror::is_pip;
use super::{Ctx, Finding, Rule, Severity};
use crate::ast::Keyword;

pub const NO_CACHE_DIR: Rule = Rule {
    id: "WH006",
    name: "pip-no-cache-dir",
    severity: Severity::Info,
    summary: "`pip install` without `--no-cache-dir` keeps pip's download cache in the layer.",
    doc: "pip caches every wheel it downloads under ~/.cache/pip; in an image that is dead weight. Not reported \
          when PIP_NO_CACHE_DIR is set in the stage or the RUN mounts a cache on /root/.cache. The fix adds \
          `--no-cache-dir` after `install`.",
    fixable: true,
    hadolint: Some("DL3042"),
    check,
};

fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    for stage in &ctx.model.stages {
        let env_set = ctx.model.lineage(stage.index).iter().any(|&s| {
            ctx.model.stages[s].body.iter().any(|&i| {
                matches!(ctx.ins(i).keyword, Keyword::Env | Keyword::Arg)
                    && ctx.ins(i).args.text.to_ascii_uppercase().contains("PIP_NO_CACHE_DIR")
            })
        });
        if env_set {
            continue;
        }
        for &i in &stage.body {
            if ctx.has_cache_mount(i, "/root/.cache") {
                continue;
            }
            for (script, cmd) in ctx.commands(i) {
                let is_pip_install =
                    cmd.name().is_some_and(is_pip) && cmd.subcommand().is_some_and(|s| s.value == "install");
                if is_pip_install && !cmd.has_arg("--no-cache-dir") && !script.text.contains("PIP_NO_CACHE_DIR") {
                    out.push(ctx.missing_flag(
                        NO_CACHE_DIR.id,
                        script,
                        cmd,
                        "--no-cache-dir",
                        "`pip install` without `--no-cache-dir`",
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::{fixed, lines};

    #[test]
    fn finds_and_fixes() {
        let src = "FROM python:3.12\nRUN pip install -r requirements.txt && python -m pip install --upgrade pip\nRUN pip3 install --no-cache-dir x\n";
        assert_eq!(lines(src, "WH006"), [2, 2]);
        assert_eq!(
            fixed(src, "WH006"),
            "FROM python:3.12\nRUN pip install --no-cache-dir -r requirements.txt && python -m pip install --no-cache-dir --upgrade pip\nRUN pip3 install --no-cache-dir x\n"
        );
        assert!(lines("FROM python:3\nENV PIP_NO_CACHE_DIR=1\nRUN pip install x\n", "WH006").is_empty());
    }
}
