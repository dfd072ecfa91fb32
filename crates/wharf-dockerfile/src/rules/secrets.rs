//! WH019: secrets in ENV or ARG.

use super::{Ctx, Finding, Rule, Severity, finding};
use crate::ast::Keyword;
use crate::words;

pub const RULE: Rule = Rule {
    id: "WH019",
    name: "secret-in-env-arg",
    severity: Severity::Warning,
    summary: "A secret-looking name in ENV or ARG.",
    doc: "ENV values are stored in the image config and ARG values in its history, readable by anyone who pulls \
          it. Use `RUN --mount=type=secret` instead. Names are split into words; `password`, `passwd`, `secret`, \
          `token`, `apikey`, `credentials`, `auth` and `api/private/secret/access key` match; names with `public`, \
          or ending in `_FILE`/`_PATH`, do not.",
    fixable: false,
    hadolint: None,
    check,
};

fn tokens(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c == '_' || c == '-' || c == '.' {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase();
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub fn is_secret_name(name: &str) -> bool {
    let t = tokens(name);
    if t.iter().any(|w| w == "public") || matches!(t.last().map(String::as_str), Some("file" | "path" | "dir" | "url"))
    {
        return false;
    }
    const WORDS: &[&str] = &[
        "password",
        "passwd",
        "pword",
        "secret",
        "token",
        "apikey",
        "credential",
        "credentials",
        "auth",
        "passphrase",
    ];
    t.iter().any(|w| WORDS.contains(&w.as_str()))
        || t.windows(2)
            .any(|p| p[1] == "key" && matches!(p[0].as_str(), "api" | "private" | "secret" | "access" | "encryption"))
}

fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    for ins in &ctx.model.instructions {
        let ins = ins.effective();
        if !matches!(ins.keyword, Keyword::Env | Keyword::Arg) {
            continue;
        }
        let ws = words::split(&ins.args.text, ctx.model.df.escape);
        // Legacy `ENV KEY value`: only the first word is a name.
        let legacy = ins.keyword == Keyword::Env && ws.first().is_some_and(|w| !w.value.contains('='));
        for (k, w) in ws.iter().enumerate() {
            if legacy && k > 0 {
                break;
            }
            let name = w.value.split('=').next().unwrap_or("");
            if is_secret_name(name) {
                let span = ins.args.map.span(w.start, w.start + name.len());
                out.push(finding(
                    RULE.id,
                    span,
                    format!(
                        "{} `{name}` looks like a secret: it stays in the image; use RUN --mount=type=secret",
                        ins.keyword_text.to_ascii_uppercase()
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_secret_name;
    use crate::rules::test_util::lines;

    #[test]
    fn names() {
        for n in [
            "DB_PASSWORD",
            "GITHUB_TOKEN",
            "awsSecretAccessKey",
            "API_KEY",
            "npm-auth",
            "PRIVATE_KEY",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "PUBLIC_KEY",
            "PASSWORD_FILE",
            "GPG_KEY",
            "NODE_VERSION",
            "TOKENIZER_PARALLELISM_X",
            "KEYS",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn env_and_arg() {
        let src = "FROM a:1\nARG NPM_TOKEN\nENV A=1 DB_PASSWORD=x\nENV API_KEY some value\nENV HOME /root\n";
        assert_eq!(lines(src, "WH019"), [2, 3, 4]);
    }
}
