//! The rules, as data: each [`Rule`] has a stable id, a default severity, a one-line summary, a doc paragraph,
//! whether `wharf fix` can fix it, and the function that checks it. One file per rule family.

use std::path::PathBuf;

use serde::Serialize;

use crate::ast::{Instruction, Keyword};
use crate::config::Config;
use crate::context::ContextInfo;
use crate::model::Model;
use crate::shell::{self, Command, Parsed, Script};
use crate::span::Span;

mod add;
mod apk;
mod apt;
mod cache_order;
mod dockerignore;
mod entrypoint;
mod from;
mod hygiene;
mod layers;
mod mirror;
mod pip;
mod secrets;
mod stage_ref;
mod yum;

pub use mirror::Manager;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Style,
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Severity> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(Severity::Error),
            "warning" | "warn" => Some(Severity::Warning),
            "info" => Some(Severity::Info),
            "style" => Some(Severity::Style),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
            Severity::Style => "style",
        }
    }
}

/// A rule.
pub struct Rule {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
    pub doc: &'static str,
    /// `wharf fix` can fix (some of) its findings.
    pub fixable: bool,
    /// The hadolint rule that checks the same thing, if any.
    pub hadolint: Option<&'static str>,
    pub check: fn(&Ctx, &mut Vec<Finding>),
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

/// Text replacement in the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edit {
    pub span: Span,
    pub text: String,
}

impl Edit {
    pub fn insert(at: usize, text: impl Into<String>) -> Edit {
        Edit {
            span: Span::new(at, at),
            text: text.into(),
        }
    }
}

/// A whole file written by a fix (`.dockerignore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileWrite {
    pub path: PathBuf,
    pub contents: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Fix {
    pub edits: Vec<Edit>,
    pub files: Vec<FileWrite>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub span: Span,
    pub message: String,
    #[serde(skip)]
    pub fix: Option<Fix>,
}

/// What the rules see.
pub struct Ctx<'a> {
    pub model: Model<'a>,
    pub src: &'a str,
    pub config: &'a Config,
    pub context: Option<&'a ContextInfo>,
    /// Per instruction (index into `model.instructions`): its shell scripts, parsed.
    pub scripts: Vec<Vec<(Script, Parsed)>>,
    /// The source uses CRLF line endings.
    pub crlf: bool,
}

impl<'a> Ctx<'a> {
    pub fn new(model: Model<'a>, config: &'a Config, context: Option<&'a ContextInfo>) -> Ctx<'a> {
        let src = model.df.source.as_str();
        let scripts = model
            .instructions
            .iter()
            .map(|ins| {
                shell::run_scripts(ins, src)
                    .into_iter()
                    .map(|s| {
                        let p = s.parse();
                        (s, p)
                    })
                    .collect()
            })
            .collect();
        let crlf = src.contains("\r\n");
        Ctx {
            model,
            src,
            config,
            context,
            scripts,
            crlf,
        }
    }

    pub fn ins(&self, i: usize) -> &'a Instruction {
        self.model.instructions[i]
    }

    pub fn nl(&self) -> &'static str {
        if self.crlf { "\r\n" } else { "\n" }
    }

    /// Every command of instruction `i` with its script.
    pub fn commands(&self, i: usize) -> impl Iterator<Item = (&Script, &Command)> {
        self.scripts[i]
            .iter()
            .flat_map(|(s, p)| p.commands.iter().map(move |c| (s, c)))
    }

    /// Source span of a command.
    pub fn command_span(&self, script: &Script, cmd: &Command) -> Span {
        // From the program word: `then apk add` and `DEBIAN_FRONTEND=x apt-get ...` point at the program.
        let first = cmd.program().map_or(cmd.start(), |w| w.start);
        let start = script.to_source(first);
        let end = script.to_source(cmd.end().saturating_sub(1)) + 1;
        Span::new(start, end.max(start))
    }

    /// Source offset just after a word of a command.
    pub fn word_end(&self, script: &Script, w: &shell::ShWord) -> usize {
        script.to_source(w.end.saturating_sub(1)) + 1
    }

    /// A finding for a command that lacks `flag`, with the fix that inserts it right after the subcommand
    /// (`apk add` → `apk add --no-cache`, `pip install` → `pip install --no-cache-dir`).
    pub fn missing_flag(
        &self,
        rule: &'static str,
        script: &Script,
        cmd: &Command,
        flag: &str,
        message: &str,
    ) -> Finding {
        let mut f = finding(rule, self.command_span(script, cmd), message);
        if let Some(sub) = cmd.subcommand() {
            f.fix = Some(Fix {
                edits: vec![Edit::insert(self.word_end(script, sub), format!(" {flag}"))],
                files: vec![],
            });
        }
        f
    }

    /// Whether RUN `i` mounts a cache at a path starting with `target`.
    pub fn has_cache_mount(&self, i: usize, target: &str) -> bool {
        self.ins(i).effective().flags.iter().any(|f| {
            f.name == "mount"
                && f.value.as_deref().is_some_and(|v| {
                    v.contains("type=cache")
                        && v.split(',').any(|kv| {
                            kv.split_once('=').is_some_and(|(k, p)| {
                                matches!(k, "target" | "dst" | "destination") && p.starts_with(target)
                            })
                        })
                })
        })
    }

    /// The line(s) an instruction occupies including its terminator, for deleting or moving it.
    pub fn item_span(&self, i: usize) -> Span {
        let ins = self.ins(i);
        for item in &self.model.df.items {
            if item.span.contains(ins.span) && matches!(item.kind, crate::ast::ItemKind::Instruction(_)) {
                return item.span;
            }
        }
        ins.span
    }

    /// Start of the line holding the instruction (with its indentation).
    pub fn line_start(&self, i: usize) -> usize {
        self.item_span(i).start
    }

    pub fn is(&self, i: usize, kw: Keyword) -> bool {
        self.ins(i).keyword == kw
    }
}

pub fn finding(rule: &'static str, span: Span, message: impl Into<String>) -> Finding {
    let severity = rule_by_id(rule).map_or(Severity::Warning, |r| r.severity);
    Finding {
        rule,
        severity,
        span,
        message: message.into(),
        fix: None,
    }
}

pub fn rule_by_id(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id.eq_ignore_ascii_case(id))
}

fn no_check(_: &Ctx, _: &mut Vec<Finding>) {}

/// Every rule, in id order. Fixes are applied in this order when they touch the same text.
pub static RULES: &[Rule] = &[
    Rule {
        id: "WH000",
        name: "syntax-error",
        severity: Severity::Error,
        summary: "The Dockerfile does not parse.",
        doc: "The parser found an error (unknown instruction, missing argument, unterminated heredoc, bad parser \
              directive). BuildKit would refuse the file.",
        fixable: false,
        hadolint: None,
        check: no_check,
    },
    mirror::RULE,
    apk::NO_CACHE,
    apt::UPDATE_SEPARATE,
    apt::NO_INSTALL_RECOMMENDS,
    apt::LISTS_NOT_REMOVED,
    pip::NO_CACHE_DIR,
    cache_order::RULE,
    layers::MERGEABLE_RUNS,
    layers::CD_IN_RUN,
    dockerignore::MISSING,
    dockerignore::LEAKY,
    from::UNTAGGED,
    from::LATEST,
    add::LOCAL,
    add::URL,
    entrypoint::MULTIPLE_CMD,
    entrypoint::MULTIPLE_ENTRYPOINT,
    entrypoint::SHELL_FORM_ENTRYPOINT,
    secrets::RULE,
    hygiene::SUDO,
    hygiene::RELATIVE_WORKDIR,
    stage_ref::RULE,
];

#[cfg(test)]
pub(crate) mod test_util {
    use crate::config::{Config, preset};
    use crate::lint::{Options, lint};

    /// Rule ids and 1-based lines of the findings of `rule` in `src` (mirrors: aliyun preset).
    pub fn lines(src: &str, rule: &str) -> Vec<usize> {
        let config = Config {
            mirrors: preset("aliyun").unwrap(),
            ..Default::default()
        };
        let r = lint(src, &Options { config, context: None });
        r.findings
            .iter()
            .filter(|f| f.rule == rule)
            .map(|f| r.position(f.span.start).line)
            .collect()
    }

    /// Applies only the fixes of `rule`, to a fixed point.
    pub fn fixed(src: &str, rule: &str) -> String {
        let mut config = Config {
            mirrors: preset("aliyun").unwrap(),
            ..Default::default()
        };
        for r in super::RULES {
            if r.id != rule {
                config.disabled.insert(r.id.to_string());
            }
        }
        crate::fix::fix(src, &Options { config, context: None }).source
    }
}
