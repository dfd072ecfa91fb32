//! `wharf fix`: applies the safe fixes of `wharf lint`; prints the fixed file, a unified diff (`--diff`) or
//! writes in place (`--write`).

use std::path::PathBuf;

use anyhow::Context;
use wharf_dockerfile::diff::unified;
use wharf_dockerfile::fix::fix;
use wharf_dockerfile::rules::{RULES, rule_by_id};

use crate::cli::FixArgs;
use crate::lint::{config, options, read_source, stdout};

pub fn run(args: FixArgs) -> anyhow::Result<()> {
    let path = args.path.clone().unwrap_or_else(|| PathBuf::from("Dockerfile"));
    if args.write && path == std::path::Path::new("-") {
        anyhow::bail!("--write needs a file, not standard input");
    }
    let src = read_source(&path)?;
    let mut cfg = config(&args.options)?;
    if !args.only.is_empty() {
        for id in &args.only {
            if rule_by_id(id).is_none() {
                anyhow::bail!("unknown rule `{id}`");
            }
        }
        for r in RULES {
            if !args.only.iter().any(|o| o.eq_ignore_ascii_case(r.id)) {
                cfg.disabled.insert(r.id.to_string());
            }
        }
    }
    // Rewriting a file the parser does not understand could damage it: refuse.
    let (_, errors) = wharf_dockerfile::parse(&src);
    if let Some(e) = errors.first() {
        anyhow::bail!(
            "{}:{e} (fix needs a file without syntax errors; `wharf lint` lists them)",
            path.display()
        );
    }
    let opts = options(&cfg, &args.options, &path)?;
    let input = match &args.base_mirror {
        Some(registry) => {
            let preset = args
                .options
                .preset
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--base-mirror needs --preset aliyun, tuna or ustc"))?;
            wharf_dockerfile::config::preset(&preset)?;
            wharf_dockerfile::fix::base_mirror(&src, registry.trim_end_matches('/'), &preset)
        }
        None => src.clone(),
    };
    let result = fix(&input, &opts);
    let name = path.display().to_string();
    if args.diff {
        let mut text = unified(&src, &result.source, &format!("a/{name}"), &format!("b/{name}"));
        for f in &result.files {
            let old = std::fs::read_to_string(&f.path).unwrap_or_default();
            let p = f.path.display().to_string();
            text.push_str(&unified(&old, &f.contents, &format!("a/{p}"), &format!("b/{p}")));
        }
        stdout(&text)?;
    }
    if args.write {
        if result.source != src {
            std::fs::write(&path, &result.source).with_context(|| format!("writing {}", path.display()))?;
        }
        for f in &result.files {
            std::fs::write(&f.path, &f.contents).with_context(|| format!("writing {}", f.path.display()))?;
        }
    }
    if !args.diff && !args.write {
        stdout(&result.source)?;
    }
    let fixed: Vec<String> = result.fixed.iter().map(|(r, n)| format!("{r}×{n}")).collect();
    let left = result.after.findings.len();
    eprintln!(
        "wharf fix: {}; {left} finding(s) left (`wharf lint` lists them){}",
        if fixed.is_empty() {
            "nothing to fix".to_string()
        } else {
            format!("fixed {}", fixed.join(", "))
        },
        if args.write {
            ""
        } else if args.diff {
            "; --write applies"
        } else {
            "; --diff shows the changes, --write applies"
        }
    );
    Ok(())
}
