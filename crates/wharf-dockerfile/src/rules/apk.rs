//! WH002: `apk add` without `--no-cache`.

use super::{Ctx, Finding, Rule, Severity};

pub const NO_CACHE: Rule = Rule {
    id: "WH002",
    name: "apk-no-cache",
    severity: Severity::Warning,
    summary: "`apk add` without `--no-cache` leaves the package index in the layer.",
    doc: "`apk add --no-cache` fetches the index, installs and keeps nothing in /var/cache/apk, so there is no \
          need for `apk update` or removing the cache afterwards. Not reported when the RUN mounts a cache on \
          /var/cache/apk. The fix adds `--no-cache` after `add`.",
    fixable: true,
    hadolint: Some("DL3019"),
    check,
};

fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    for i in 0..ctx.model.instructions.len() {
        if ctx.has_cache_mount(i, "/var/cache/apk") || ctx.has_cache_mount(i, "/etc/apk/cache") {
            continue;
        }
        for (script, cmd) in ctx.commands(i) {
            if cmd.is("apk", "add") && !cmd.has_arg("--no-cache") {
                out.push(ctx.missing_flag(NO_CACHE.id, script, cmd, "--no-cache", "`apk add` without `--no-cache`"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::{fixed, lines};

    #[test]
    fn finds_and_fixes() {
        let src = "FROM alpine:3.20\nRUN apk update && apk add curl\nRUN apk add --no-cache git\nRUN --mount=type=cache,target=/var/cache/apk apk add make\nRUN <<EOF\napk add  bash\nEOF\n";
        assert_eq!(lines(src, "WH002"), [2, 6]);
        assert_eq!(
            fixed(src, "WH002"),
            "FROM alpine:3.20\nRUN apk update && apk add --no-cache curl\nRUN apk add --no-cache git\nRUN --mount=type=cache,target=/var/cache/apk apk add make\nRUN <<EOF\napk add --no-cache  bash\nEOF\n"
        );
        let cont = "FROM alpine:3.20\nRUN apk \\\n    add \\\n    curl\n";
        assert_eq!(
            fixed(cont, "WH002"),
            "FROM alpine:3.20\nRUN apk \\\n    add --no-cache \\\n    curl\n"
        );
    }
}
