//! The cache keys the Docker engine's classic builder (`DOCKER_BUILDKIT=0`, moby 20.10) will compute for a
//! Dockerfile's steps: the `created_by` each step writes into the image's history, which is what a `--cache-from`
//! image is matched on (after the base image's own history, matched exactly).
//!
//! [`final_base`] names the image the final stage is built on (following `FROM <stage>` to the first stage's
//! image), with meta-ARGs and `--build-arg`s substituted; [`steps`] then replays the dispatcher over that stage's
//! chain of instructions, given the base image's config (its `Env`, `Shell`, `WorkingDir`) and the context's
//! [`ContextHashes`]. A step whose key cannot be known before building (`COPY --from`, `ADD <url>`, flags the classic
//! builder refuses, ONBUILD triggers of the base) is [`Key::Unknown`] with the reason; a build can hit the cache up
//! to it and no further. The formats, quoted from moby's source: `docs/research/classic-builder-cache-keys.md`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ast::{Dockerfile, Form, Instruction, Keyword};
use crate::expand::expand;
use crate::model::{Base, Model};
use crate::source_hash::ContextHashes;
use crate::words;

/// Build args the builder lets through without an ARG (BuildKit and the classic builder alike).
const BUILTIN_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// What the base image's config contributes to the keys.
#[derive(Debug, Clone, Default)]
pub struct BaseConfig {
    pub env: Vec<String>,
    pub shell: Vec<String>,
    pub working_dir: String,
    /// `ONBUILD` triggers: they run as the first steps of the stage.
    pub on_build: Vec<String>,
}

/// A step's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// The `created_by` the builder will record.
    Known(String),
    /// Not predictable before the build: why.
    Unknown(String),
}

/// One step of the final stage's chain.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// 1-based line of the instruction.
    pub line: usize,
    /// The instruction as written (first line).
    pub instruction: String,
    pub key: Key,
}

/// The image the final stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalBase {
    Scratch,
    /// The reference, variables substituted.
    Image(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("the Dockerfile has no FROM")]
    NoStage,
    #[error("line {0}: FROM {1}: a variable in the image name has no value")]
    Unresolved(usize, String),
}

/// The meta-ARGs (before the first FROM) with `--build-arg` overrides.
fn meta_args(model: &Model, build_args: &BTreeMap<String, String>) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for (name, default) in &model.global_args {
        let value = build_args.get(name).cloned().or_else(|| {
            default.as_ref().map(|d| {
                let env: Vec<String> = out
                    .iter()
                    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                    .collect();
                process_word(d, model.df.escape, &env)
            })
        });
        out.push((name.clone(), value));
    }
    out
}

/// The stages the final stage is built from, first stage first, each with its image as written after expansion.
fn chain(model: &Model, build_args: &BTreeMap<String, String>) -> Result<(FinalBase, Vec<usize>), KeysError> {
    let last = model.stages.len().checked_sub(1).ok_or(KeysError::NoStage)?;
    let mut stages = model.lineage(last);
    stages.reverse();
    let root = &model.stages[stages[0]];
    let meta = meta_args(model, build_args);
    let lookup = |n: &str| meta.iter().rev().find(|(k, _)| k == n).and_then(|(_, v)| v.clone());
    let (image, complete) = expand(&root.image_raw, model.df.escape, &lookup);
    if !complete && image.is_empty() {
        return Err(KeysError::Unresolved(
            line_of(model.df, model.instructions[root.from]),
            root.image_raw.clone(),
        ));
    }
    let base = match &root.base {
        Base::Scratch => FinalBase::Scratch,
        _ if image.eq_ignore_ascii_case("scratch") => FinalBase::Scratch,
        _ => FinalBase::Image(image),
    };
    Ok((base, stages))
}

/// The image the final stage's chain starts from.
pub fn final_base(df: &Dockerfile, build_args: &BTreeMap<String, String>) -> Result<FinalBase, KeysError> {
    let model = Model::new(df);
    Ok(chain(&model, build_args)?.0)
}

/// The dispatcher's state (`dispatchState`) as far as keys need it.
struct State<'a> {
    escape: char,
    env: Vec<String>,
    shell: Vec<String>,
    working_dir: String,
    /// ARGs declared in the current stage: name, default.
    allowed: Vec<(String, Option<String>)>,
    meta: &'a [(String, Option<String>)],
    build_args: &'a BTreeMap<String, String>,
}

impl State<'_> {
    fn prefix(&self) -> String {
        self.shell.join(" ")
    }

    /// `#(nop)` with two spaces: the commit form of most instructions.
    fn nop(&self, comment: &str) -> String {
        format!("{} #(nop)  {comment}", self.prefix())
    }

    fn env_has(&self, key: &str) -> bool {
        self.env
            .iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    }

    /// `BuildArgs.getBuildArg`: the `--build-arg`, else the stage ARG's default, else the meta-ARG's value.
    fn arg_value(&self, key: &str, default: &Option<String>) -> Option<String> {
        if let Some(v) = self.build_args.get(key) {
            return Some(v.clone());
        }
        match default {
            Some(d) => Some(d.clone()),
            None => self
                .meta
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.clone()),
        }
    }

    /// `FilterAllowed(env)`: the allowed build args with a value, not shadowed by an ENV; (key, "key=value").
    fn allowed_args(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, d) in &self.allowed {
            if out.iter().any(|(o, _)| o == k) || self.env_has(k) {
                continue;
            }
            if let Some(v) = self.arg_value(k, d) {
                out.push((k.clone(), format!("{k}={v}")));
            }
        }
        for k in BUILTIN_ARGS {
            if out.iter().any(|(o, _)| o == k) || self.env_has(k) {
                continue;
            }
            if let Some(v) = self.build_args.get(*k) {
                out.push((k.to_string(), format!("{k}={v}")));
            }
        }
        out
    }

    /// The variables words are expanded with: the config's env, then the allowed build args.
    fn word_env(&self) -> Vec<String> {
        let mut env = self.env.clone();
        env.extend(self.allowed_args().into_iter().map(|(_, kv)| kv));
        env
    }

    fn word(&self, s: &str) -> String {
        process_word(s, self.escape, &self.word_env())
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let kv = format!("{key}={value}");
        match self
            .env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            Some(i) => self.env[i] = kv,
            None => self.env.push(kv),
        }
    }
}

/// The keys of the final stage's steps, in order (the chain through `FROM <stage>` included).
pub fn steps(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    base: &BaseConfig,
    context: &ContextHashes,
) -> Result<Vec<Step>, KeysError> {
    let model = Model::new(df);
    let (_, stages) = chain(&model, build_args)?;
    let meta = meta_args(&model, build_args);
    let mut state = State {
        escape: df.escape,
        env: base.env.clone(),
        shell: if base.shell.is_empty() {
            vec!["/bin/sh".into(), "-c".into()]
        } else {
            base.shell.clone()
        },
        working_dir: base.working_dir.clone(),
        allowed: Vec::new(),
        meta: &meta,
        build_args,
    };
    let mut out = Vec::new();
    for (n, &s) in stages.iter().enumerate() {
        state.allowed.clear();
        let from = model.instructions[model.stages[s].from];
        if n == 0 && !base.on_build.is_empty() {
            out.push(Step {
                line: line_of(df, from),
                instruction: first_line(df, from),
                key: Key::Unknown("the base image has ONBUILD triggers, which run first".into()),
            });
        }
        if n > 0 && stage_has_onbuild(&model, stages[n - 1]) {
            out.push(Step {
                line: line_of(df, from),
                instruction: first_line(df, from),
                key: Key::Unknown("the parent stage has ONBUILD triggers, which run first".into()),
            });
        }
        for &i in &model.stages[s].body {
            let ins = model.instructions[i];
            let key = key_of(&mut state, df, ins, context);
            out.push(Step {
                line: line_of(df, ins),
                instruction: first_line(df, ins),
                key,
            });
        }
    }
    Ok(out)
}

fn stage_has_onbuild(model: &Model, stage: usize) -> bool {
    model.stages[stage]
        .body
        .iter()
        .any(|&i| model.instructions[i].keyword == Keyword::Onbuild)
}

fn line_of(df: &Dockerfile, ins: &Instruction) -> usize {
    df.source[..ins.span.start.min(df.source.len())].matches('\n').count() + 1
}

fn first_line(df: &Dockerfile, ins: &Instruction) -> String {
    df.text(ins.span).lines().next().unwrap_or("").trim().to_string()
}

/// The words of the arguments with their quotes kept (the parser's `parseWords`), as raw slices of the text.
fn raw_words(text: &str, escape: char) -> Vec<String> {
    words::split(text, escape)
        .into_iter()
        .map(|w| text[w.start..w.end].to_string())
        .collect()
}

/// `parseNameVal` for ENV and LABEL: `k=v ...`, or the legacy `k v w` (the key, then the rest of the line).
fn name_vals(text: &str, escape: char) -> Vec<(String, String)> {
    let ws = words::split(text, escape);
    match ws.first() {
        Some(w) if !text[w.start..w.end].contains('=') => {
            let rest = text[w.end..].trim().to_string();
            vec![(text[w.start..w.end].to_string(), rest)]
        }
        _ => raw_words(text, escape)
            .into_iter()
            .map(|w| match w.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (w, String::new()),
            })
            .collect(),
    }
}

fn key_of(state: &mut State, df: &Dockerfile, ins: &Instruction, context: &ContextHashes) -> Key {
    let text = ins.args.text.as_str();
    let escape = state.escape;
    match ins.keyword {
        Keyword::Env => {
            let pairs: Vec<(String, String)> = name_vals(text, escape)
                .into_iter()
                .map(|(k, v)| (state.word(&k), state.word(&v)))
                .collect();
            let mut msg = String::from("ENV");
            for (k, v) in &pairs {
                msg.push_str(&format!(" {k}={v}"));
                state.set_env(k, v);
            }
            Key::Known(state.nop(&msg))
        }
        Keyword::Label => {
            let mut msg = String::from("LABEL");
            for (k, v) in name_vals(text, escape) {
                msg.push_str(&format!(" {}={}", state.word(&k), state.word(&v)));
            }
            Key::Known(state.nop(&msg))
        }
        Keyword::Maintainer => Key::Known(state.nop(&format!("MAINTAINER {text}"))),
        Keyword::Arg => {
            let mut parts = Vec::new();
            for w in raw_words(text, escape) {
                let (k, d) = match w.split_once('=') {
                    Some((k, d)) => (state.word(k), Some(state.word(d))),
                    None => (state.word(&w), None),
                };
                parts.push(match &d {
                    Some(d) => format!("{k}={d}"),
                    None => k.clone(),
                });
                state.allowed.retain(|(a, _)| *a != k);
                state.allowed.push((k, d));
            }
            Key::Known(state.nop(&format!("ARG {}", parts.join(" "))))
        }
        Keyword::Workdir => {
            let requested = state.word(text);
            let dir = if requested.starts_with('/') {
                requested
            } else {
                clean(&format!("/{}/{}", state.working_dir, requested))
            };
            state.working_dir = dir.clone();
            Key::Known(format!("{} #(nop) WORKDIR {dir}", state.prefix()))
        }
        Keyword::Run => {
            if let Some(f) = ins.flags.first() {
                return Key::Unknown(format!(
                    "RUN --{} needs BuildKit (the classic builder refuses it)",
                    f.name
                ));
            }
            if !ins.heredocs.is_empty() {
                return Key::Unknown("a heredoc needs BuildKit".into());
            }
            let cmd: Vec<String> = match &ins.args.form {
                Form::Exec(ws) => ws.iter().map(|w| w.value.clone()).collect(),
                Form::Shell => {
                    let mut c = state.shell.clone();
                    c.push(text.to_string());
                    c
                }
            };
            let args = state.allowed_args();
            let mut saved: Vec<String> = Vec::new();
            if !args.is_empty() {
                let mut kept: Vec<String> = args
                    .into_iter()
                    .filter(|(k, _)| state.allowed.iter().any(|(a, _)| a == k) || !BUILTIN_ARGS.contains(&k.as_str()))
                    .map(|(_, kv)| kv)
                    .collect();
                kept.sort();
                saved.push(format!("|{}", kept.len()));
                saved.extend(kept);
            }
            saved.extend(cmd);
            Key::Known(saved.join(" "))
        }
        Keyword::Cmd | Keyword::Entrypoint => {
            let cmd: Vec<String> = match &ins.args.form {
                Form::Exec(ws) => ws.iter().map(|w| w.value.clone()).collect(),
                Form::Shell => {
                    let mut c = state.shell.clone();
                    c.push(text.to_string());
                    c
                }
            };
            let name = if ins.keyword == Keyword::Cmd {
                "CMD"
            } else {
                "ENTRYPOINT"
            };
            Key::Known(state.nop(&format!("{name} {}", go_quote_list(&cmd))))
        }
        Keyword::Expose => {
            let mut raw = raw_words(text, escape);
            raw.sort();
            let ports: Vec<String> = raw
                .iter()
                .flat_map(|w| {
                    let expanded = state.word(w);
                    expanded.split_whitespace().map(str::to_string).collect::<Vec<_>>()
                })
                .collect();
            Key::Known(state.nop(&format!("EXPOSE {}", ports.join(" "))))
        }
        Keyword::User => Key::Known(state.nop(&format!("USER {}", state.word(text)))),
        Keyword::Stopsignal => Key::Known(state.nop(&format!("STOPSIGNAL {}", state.word(text)))),
        Keyword::Volume => {
            let vols: Vec<String> = match &ins.args.form {
                Form::Exec(ws) => ws.iter().map(|w| state.word(w.value.trim())).collect(),
                Form::Shell => text.split_whitespace().map(|w| state.word(w)).collect(),
            };
            Key::Known(state.nop(&format!("VOLUME [{}]", vols.join(" "))))
        }
        Keyword::Shell => match &ins.args.form {
            Form::Exec(ws) => {
                state.shell = ws.iter().map(|w| w.value.clone()).collect();
                Key::Known(state.nop(&format!("SHELL [{}]", state.shell.join(" "))))
            }
            Form::Shell => Key::Unknown("SHELL needs the JSON form".into()),
        },
        Keyword::Onbuild => {
            let inner = df.text(ins.span);
            let expr = inner
                .trim_start()
                .get(ins.keyword_text.len()..)
                .unwrap_or("")
                .trim_start()
                .to_string();
            Key::Known(state.nop(&format!("ONBUILD {}", join_continuations(&expr, escape))))
        }
        Keyword::Healthcheck => healthcheck(state, ins),
        Keyword::Copy | Keyword::Add => copy_key(state, ins, context),
        Keyword::From | Keyword::Unknown => Key::Unknown(format!("unknown instruction {}", ins.keyword_text)),
    }
}

fn copy_key(state: &State, ins: &Instruction, context: &ContextHashes) -> Key {
    let name = if ins.keyword == Keyword::Copy { "COPY" } else { "ADD" };
    if ins.flag("from").is_some() {
        return Key::Unknown(format!(
            "{name} --from hashes files of another stage or image, known only once built"
        ));
    }
    if let Some(f) = ins.flags.iter().find(|f| !f.name.eq_ignore_ascii_case("chown")) {
        return Key::Unknown(format!(
            "{name} --{} needs BuildKit (the classic builder refuses it)",
            f.name
        ));
    }
    if !ins.heredocs.is_empty() {
        return Key::Unknown("a heredoc needs BuildKit".into());
    }
    let words: Vec<String> = match &ins.args.form {
        Form::Exec(ws) => ws.iter().map(|w| state.word(&w.value)).collect(),
        Form::Shell => ins.args.text.split_whitespace().map(|w| state.word(w)).collect(),
    };
    let Some((dest, sources)) = words.split_last() else {
        return Key::Unknown(format!("{name} needs a source and a destination"));
    };
    if sources.is_empty() {
        return Key::Unknown(format!("{name} needs a source and a destination"));
    }
    if ins.keyword == Keyword::Add
        && sources
            .iter()
            .any(|s| s.starts_with("http://") || s.starts_with("https://"))
    {
        return Key::Unknown("ADD <url> is hashed from the download, known only once fetched".into());
    }
    let hash = match context.hash_sources(sources) {
        Ok(h) => h,
        Err(e) => return Key::Unknown(format!("the build fails here: {e}")),
    };
    let chown = ins
        .flag("chown")
        .and_then(|f| f.value.as_deref())
        .map(|v| format!("--chown={}", state.word(v)))
        .unwrap_or_default();
    Key::Known(format!("{} #(nop) {name} {chown}{hash} in {dest} ", state.prefix()))
}

fn healthcheck(state: &State, ins: &Instruction) -> Key {
    let text = ins.args.text.as_str();
    let test: Vec<String> = if text.eq_ignore_ascii_case("none") {
        vec!["NONE".into()]
    } else {
        let Some(rest) = strip_keyword(text, "CMD") else {
            return Key::Unknown("HEALTHCHECK needs CMD or NONE".into());
        };
        match words::parse_exec(rest) {
            Some(ws) => std::iter::once("CMD".to_string())
                .chain(ws.into_iter().map(|w| w.value))
                .collect(),
            None => vec!["CMD-SHELL".into(), rest.to_string()],
        }
    };
    let mut durations = [0u128; 3];
    let mut retries = 0u32;
    for f in &ins.flags {
        let v = f.value.as_deref().unwrap_or("");
        let slot = match f.name.to_ascii_lowercase().as_str() {
            "interval" => 0,
            "timeout" => 1,
            "start-period" => 2,
            "retries" => {
                match v.parse() {
                    Ok(r) => retries = r,
                    Err(_) => return Key::Unknown(format!("HEALTHCHECK --retries={v} is not a number")),
                }
                continue;
            }
            other => return Key::Unknown(format!("HEALTHCHECK --{other} is not known to the classic builder")),
        };
        match parse_go_duration(v) {
            Some(d) => durations[slot] = d,
            None => return Key::Unknown(format!("HEALTHCHECK --{}={v} is not a duration", f.name)),
        }
    }
    let rune = char::from_u32(retries).map_or_else(|| format!("{retries}"), go_quote_rune);
    Key::Known(state.nop(&format!(
        "HEALTHCHECK &{{{} \"{}\" \"{}\" \"{}\" {rune}}}",
        go_quote_list(&test),
        go_duration(durations[0]),
        go_duration(durations[1]),
        go_duration(durations[2]),
    )))
}

fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let head = text.get(..keyword.len())?;
    let rest = &text[keyword.len()..];
    (head.eq_ignore_ascii_case(keyword) && rest.starts_with(char::is_whitespace)).then(|| rest.trim_start())
}

/// Joins continuation lines as the parser does (the escape character and the newline removed).
fn join_continuations(text: &str, escape: char) -> String {
    let mut out = String::new();
    for line in text.split('\n') {
        let t = line.trim_end_matches([' ', '\t', '\r']);
        match t.strip_suffix(escape) {
            Some(keep) => out.push_str(keep),
            None => {
                out.push_str(line.trim_end_matches('\r'));
            }
        }
    }
    out
}

/// `path.Clean` of an absolute path.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// BuildKit's `shell.Lex.ProcessWord` (v0.8): quotes removed, escapes applied, `$VAR`/`${VAR...}` substituted from
/// `env` (`KEY=value`, the first of a name wins; unset is empty). Whitespace is kept: the result is one word.
pub fn process_word(s: &str, escape: char, env: &[String]) -> String {
    let lookup = |name: &str| {
        env.iter().find_map(|e| {
            e.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    };
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let dollar = |i: usize, out: &mut String| -> usize {
        // The extent of the reference, handed to `expand` for the value.
        let end = match chars.get(i + 1) {
            Some('{') => {
                let mut depth = 0;
                let mut j = i + 1;
                while j < chars.len() {
                    match chars[j] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                (j + 1).min(chars.len())
            }
            Some(c) if c.is_ascii_alphanumeric() || *c == '_' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                j
            }
            _ => {
                out.push('$');
                return i + 1;
            }
        };
        let reference: String = chars[i..end].iter().collect();
        out.push_str(&expand(&reference, escape, &lookup).0);
        end
    };
    while i < chars.len() {
        let c = chars[i];
        if c == escape {
            if let Some(&n) = chars.get(i + 1) {
                out.push(n);
            }
            i += 2;
        } else if c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                out.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                match chars[i] {
                    '$' => i = dollar(i, &mut out),
                    e if e == escape => match chars.get(i + 1) {
                        Some(&n) if n == '"' || n == '$' || n == escape => {
                            out.push(n);
                            i += 2;
                        }
                        _ => {
                            out.push(e);
                            i += 1;
                        }
                    },
                    other => {
                        out.push(other);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else if c == '$' {
            i = dollar(i, &mut out);
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Go's `fmt.Sprintf("%q", []string{...})`: `["a" "b"]`.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        push_go_escaped(&mut out, c, '"');
    }
    out.push('"');
    out
}

/// Go's `strconv.QuoteRune`.
fn go_quote_rune(c: char) -> String {
    let mut out = String::from("'");
    push_go_escaped(&mut out, c, '\'');
    out.push('\'');
    out
}

fn push_go_escaped(out: &mut String, c: char, quote: char) {
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        '\\' => out.push_str("\\\\"),
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if c.is_control() => {
            if (c as u32) < 0x10000 {
                out.push_str(&format!("\\u{:04x}", c as u32));
            } else {
                out.push_str(&format!("\\U{:08x}", c as u32));
            }
        }
        c => out.push(c),
    }
}

/// Go's `time.ParseDuration` (units ns, us, µs, ms, s, m, h), in nanoseconds.
fn parse_go_duration(s: &str) -> Option<u128> {
    if s == "0" {
        return Some(0);
    }
    let mut total: u128 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let mut value = whole * scale;
        let mut div = 1u128;
        for d in frac.chars() {
            div *= 10;
            value += u128::from(d.to_digit(10)?) * scale / div;
        }
        total += value;
        rest = tail;
    }
    Some(total)
}

/// Go's `time.Duration.String`.
fn go_duration(ns: u128) -> String {
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        let (unit, scale) = if ns < 1_000 {
            ("ns", 1)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fraction(ns, scale));
    }
    let h = ns / 3_600_000_000_000;
    let m = ns / 60_000_000_000 % 60;
    let s = ns % 60_000_000_000;
    let secs = fraction(s, 1_000_000_000);
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `v / scale` with the fraction's trailing zeros dropped.
fn fraction(v: u128, scale: u128) -> String {
    let whole = v / scale;
    let frac = v % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let width = scale.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn keys(src: &str, args: &[(&str, &str)], base: &BaseConfig) -> Vec<Key> {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a.txt"), "a").unwrap();
        let ctx = ContextHashes::scan(tmp.path(), None, "").unwrap();
        let (df, _) = parse(src);
        let args = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        steps(&df, &args, base, &ctx)
            .unwrap()
            .into_iter()
            .map(|s| s.key)
            .collect()
    }

    fn known(s: &str) -> Key {
        Key::Known(s.to_string())
    }

    #[test]
    fn instruction_keys_follow_the_classic_builder() {
        let base = BaseConfig {
            env: vec!["PATH=/usr/bin".into()],
            working_dir: "/".into(),
            ..Default::default()
        };
        let src = "ARG TAG=1\nFROM base:$TAG\nENV A=1 B=\"two words\" C=$A\nARG V=x\nRUN echo $V \\\n  && true\n\
                   WORKDIR app\nLABEL k=${B}\nEXPOSE 80/tcp 443\nCMD [\"sh\", \"-c\", \"echo \\\"hi\\\"\"]\n\
                   USER $A\nVOLUME /data /logs\nSHELL [\"/bin/bash\", \"-c\"]\nENTRYPOINT run it\n";
        let got = keys(src, &[("V", "y"), ("HTTP_PROXY", "p")], &base);
        assert_eq!(
            got,
            [
                known("/bin/sh -c #(nop)  ENV A=1 B=two words C="),
                known("/bin/sh -c #(nop)  ARG V=x"),
                known("|1 V=y /bin/sh -c echo $V   && true"),
                known("/bin/sh -c #(nop) WORKDIR /app"),
                known("/bin/sh -c #(nop)  LABEL k=two words"),
                known("/bin/sh -c #(nop)  EXPOSE 443 80/tcp"),
                known("/bin/sh -c #(nop)  CMD [\"sh\" \"-c\" \"echo \\\"hi\\\"\"]"),
                known("/bin/sh -c #(nop)  USER 1"),
                known("/bin/sh -c #(nop)  VOLUME [/data /logs]"),
                known("/bin/bash -c #(nop)  SHELL [/bin/bash -c]"),
                known("/bin/bash -c #(nop)  ENTRYPOINT [\"/bin/bash\" \"-c\" \"run it\"]"),
            ]
        );
    }

    #[test]
    fn copy_keys_carry_the_source_hash_and_unknowable_steps_say_why() {
        let src = "FROM scratch\nCOPY --chown=1:1 a.txt /dst/\nADD http://example.com/x /x\nCOPY --from=b / /\n\
                   RUN --mount=type=cache,target=/c true\n";
        let got = keys(src, &[], &BaseConfig::default());
        let Key::Known(copy) = &got[0] else { panic!("{got:?}") };
        assert!(copy.starts_with("/bin/sh -c #(nop) COPY --chown=1:1file:"), "{copy}");
        assert!(copy.ends_with(" in /dst/ "), "{copy}");
        assert!(got[1..].iter().all(|k| matches!(k, Key::Unknown(_))), "{got:?}");
    }

    #[test]
    fn healthcheck_renders_as_go_formats_it() {
        let got = keys(
            "FROM scratch\nHEALTHCHECK --interval=1m30s --retries=3 CMD curl -f http://x/ || exit 1\nHEALTHCHECK NONE\n",
            &[],
            &BaseConfig::default(),
        );
        assert_eq!(
            got,
            [
                known(
                    "/bin/sh -c #(nop)  HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://x/ || exit 1\"] \"1m30s\" \"0s\" \
                     \"0s\" '\\x03'}"
                ),
                known("/bin/sh -c #(nop)  HEALTHCHECK &{[\"NONE\"] \"0s\" \"0s\" \"0s\" '\\x00'}"),
            ]
        );
    }

    #[test]
    fn words_expand_like_buildkit() {
        let env = vec!["A=1".to_string(), "A=2".to_string()];
        assert_eq!(
            process_word("'$A' \"$A\" \\$A ${A:-x} ${B:-y}", '\\', &env),
            "$A 1 $A 1 y"
        );
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    }
}
