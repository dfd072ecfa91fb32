//! A small POSIX-shell reader for RUN scripts: splits a script into simple commands joined by `&&`, `||`, `;`,
//! `|`, `&` or newlines, with word values unquoted and offsets kept, which is what the rules and fixes need. It does
//! not execute or fully parse shell (no nested structure); `if`/`then`/`do` and friends are skipped as prefixes.

use crate::ast::{Form, Instruction, Keyword, SourceMap};

/// The shell text of a RUN (its arguments or a heredoc body run by the shell) and where it lives in the source.
#[derive(Debug, Clone)]
pub struct Script {
    pub text: String,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub enum Origin {
    /// The instruction's shell-form arguments.
    Args(SourceMap),
    /// A heredoc body starting at this source offset (verbatim).
    Heredoc(usize),
}

impl Script {
    pub fn to_source(&self, offset: usize) -> usize {
        match &self.origin {
            Origin::Args(map) => map.to_source(offset),
            Origin::Heredoc(base) => base + offset,
        }
    }

    pub fn is_heredoc(&self) -> bool {
        matches!(self.origin, Origin::Heredoc(_))
    }

    pub fn parse(&self) -> Parsed {
        parse(&self.text)
    }
}

/// The scripts a RUN executes with a shell: its shell-form text and the heredoc bodies fed to a shell
/// (`RUN <<EOF`, `RUN bash <<EOF`, `RUN sh -e <<EOF`). Exec form yields its words joined by spaces.
pub fn run_scripts(ins: &Instruction, source: &str) -> Vec<Script> {
    let ins = ins.effective();
    if ins.keyword != Keyword::Run {
        return Vec::new();
    }
    let mut out = Vec::new();
    match &ins.args.form {
        Form::Exec(words) => {
            let text = words.iter().map(|w| w.value.as_str()).collect::<Vec<_>>().join(" ");
            // Offsets of exec-form words do not map one to one; point everything at the argument start.
            let map = SourceMap {
                segments: vec![(0, ins.args.span.start)],
                end: ins.args.span.end,
            };
            out.push(Script {
                text,
                origin: Origin::Args(map),
            });
        }
        Form::Shell => {
            out.push(Script {
                text: ins.args.text.clone(),
                origin: Origin::Args(ins.args.map.clone()),
            });
            if !ins.heredocs.is_empty() {
                let parsed = parse(&ins.args.text);
                for h in &ins.heredocs {
                    // The command that reads heredoc i: the one whose words hold its redirect.
                    let feeds_shell = parsed
                        .commands
                        .iter()
                        .find(|c| {
                            c.words
                                .iter()
                                .any(|w| w.value.contains("<<") && w.value.contains(h.marker.as_str()))
                        })
                        .and_then(|c| c.program())
                        .is_none_or(|w| matches!(basename(&w.value), "sh" | "bash" | "ash" | "dash" | "zsh"));
                    if feeds_shell {
                        let body = source.get(h.body_span.start..h.body_span.end).unwrap_or("");
                        out.push(Script {
                            text: body.to_string(),
                            origin: Origin::Heredoc(h.body_span.start),
                        });
                    }
                }
            }
        }
    }
    out
}

pub fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShWord {
    pub value: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    And,
    Or,
    Seq,
    Pipe,
    Background,
}

#[derive(Debug, Clone, Default)]
pub struct Command {
    pub words: Vec<ShWord>,
    /// Inside `( ... )`.
    pub in_group: bool,
}

const RESERVED: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}",
];

impl Command {
    /// Index of the program word: skips reserved words, `NAME=value` assignments and wrappers (`sudo`, `env`,
    /// `nohup`, `time`, `exec`, `command`).
    pub fn program_index(&self) -> Option<usize> {
        let mut i = 0;
        while i < self.words.len() {
            let w = self.words[i].value.as_str();
            if RESERVED.contains(&w) || is_assignment(w) || w.starts_with(['<', '>']) {
                i += 1;
                continue;
            }
            match basename(w) {
                "sudo" => {
                    i += 1;
                    while i < self.words.len() && self.words[i].value.starts_with('-') {
                        let opt = self.words[i].value.as_str();
                        i += if matches!(opt, "-u" | "-g" | "-C" | "-D") { 2 } else { 1 };
                    }
                }
                "env" | "nohup" | "time" | "exec" | "command" => {
                    i += 1;
                    while i < self.words.len() && self.words[i].value.starts_with('-') {
                        i += 1;
                    }
                }
                _ => return Some(i),
            }
        }
        None
    }

    pub fn program(&self) -> Option<&ShWord> {
        self.program_index().map(|i| &self.words[i])
    }

    /// The program and its arguments.
    pub fn argv(&self) -> &[ShWord] {
        match self.program_index() {
            Some(i) => &self.words[i..],
            None => &[],
        }
    }

    /// Program basename and, for `python -m pip`, `pip`.
    pub fn name(&self) -> Option<&str> {
        let argv = self.argv();
        let p = basename(&argv.first()?.value);
        if p.starts_with("python") && argv.get(1).is_some_and(|w| w.value == "-m") {
            return argv.get(2).map(|w| w.value.as_str());
        }
        Some(p)
    }

    /// The first non-option argument after the program (e.g. `install` in `apt-get -y install`).
    pub fn subcommand(&self) -> Option<&ShWord> {
        let argv = self.argv();
        let skip = if argv.first().is_some_and(|w| basename(&w.value).starts_with("python"))
            && argv.get(1).is_some_and(|w| w.value == "-m")
        {
            3
        } else {
            1
        };
        argv.iter().skip(skip).find(|w| !w.value.starts_with('-'))
    }

    pub fn has_arg(&self, arg: &str) -> bool {
        self.argv()
            .iter()
            .any(|w| w.value == arg || w.value.starts_with(&format!("{arg}=")))
    }

    pub fn start(&self) -> usize {
        self.words.first().map_or(0, |w| w.start)
    }

    pub fn end(&self) -> usize {
        self.words.last().map_or(0, |w| w.end)
    }

    pub fn is(&self, name: &str, sub: &str) -> bool {
        self.name() == Some(name) && self.subcommand().is_some_and(|s| s.value == sub)
    }
}

pub fn is_assignment(w: &str) -> bool {
    match w.find('=') {
        Some(eq) if eq > 0 => {
            let name = &w[..eq];
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub commands: Vec<Command>,
    /// `ops[i]` joins `commands[i]` and `commands[i + 1]`.
    pub ops: Vec<Op>,
    /// The script has a `#` comment.
    pub has_comment: bool,
    /// The script uses `(`, `)` subshells or groups.
    pub has_groups: bool,
}

/// Splits `text` into commands.
pub fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    let mut cur = Command::default();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    let mut group = 0usize;
    let end_of = |k: usize| chars.get(k).map_or(text.len(), |c| c.0);
    let finish = |p: &mut Parsed, cur: &mut Command, op: Op| {
        if cur.words.is_empty() {
            // `;;` or a leading separator: keep the strongest link.
            if op != Op::Seq
                && let Some(last) = p.ops.last_mut()
            {
                *last = op;
            }
            return;
        }
        p.commands.push(std::mem::take(cur));
        p.ops.push(op);
    };
    while i < chars.len() {
        let (off, c) = chars[i];
        match c {
            c if c.is_whitespace() && c != '\n' => i += 1,
            '\\' if chars.get(i + 1).is_some_and(|n| n.1 == '\n') => i += 2,
            '\n' | ';' => {
                finish(&mut p, &mut cur, Op::Seq);
                i += 1;
            }
            '&' if chars.get(i + 1).is_some_and(|n| n.1 == '&') => {
                finish(&mut p, &mut cur, Op::And);
                i += 2;
            }
            '|' if chars.get(i + 1).is_some_and(|n| n.1 == '|') => {
                finish(&mut p, &mut cur, Op::Or);
                i += 2;
            }
            '|' => {
                finish(&mut p, &mut cur, Op::Pipe);
                i += 1;
            }
            '&' => {
                finish(&mut p, &mut cur, Op::Background);
                i += 1;
            }
            '(' | ')' => {
                p.has_groups = true;
                finish(&mut p, &mut cur, Op::Seq);
                group = if c == '(' { group + 1 } else { group.saturating_sub(1) };
                i += 1;
            }
            '#' => {
                p.has_comment = true;
                while i < chars.len() && chars[i].1 != '\n' {
                    i += 1;
                }
            }
            _ => {
                let start = off;
                let mut value = String::new();
                let mut depth = 0usize;
                while i < chars.len() {
                    let (_, c) = chars[i];
                    if depth == 0 && (c.is_whitespace() || matches!(c, ';' | '|' | '(' | ')')) {
                        break;
                    }
                    if depth == 0 && c == '&' {
                        // `2>&1`, `&>` stay in the word.
                        let prev = value.chars().last();
                        if !matches!(prev, Some('>' | '<')) && chars.get(i + 1).is_none_or(|n| n.1 != '>') {
                            break;
                        }
                    }
                    match c {
                        '\\' => {
                            if let Some(&(_, n)) = chars.get(i + 1) {
                                if n != '\n' {
                                    value.push(n);
                                }
                                i += 2;
                            } else {
                                i += 1;
                            }
                        }
                        '\'' => {
                            i += 1;
                            while i < chars.len() && chars[i].1 != '\'' {
                                value.push(chars[i].1);
                                i += 1;
                            }
                            i += 1;
                        }
                        '"' => {
                            i += 1;
                            while i < chars.len() && chars[i].1 != '"' {
                                if chars[i].1 == '\\' && i + 1 < chars.len() {
                                    i += 1;
                                }
                                value.push(chars[i].1);
                                i += 1;
                            }
                            i += 1;
                        }
                        '`' => {
                            value.push(c);
                            i += 1;
                            while i < chars.len() && chars[i].1 != '`' {
                                value.push(chars[i].1);
                                i += 1;
                            }
                            if i < chars.len() {
                                value.push('`');
                            }
                            i += 1;
                        }
                        '$' if chars.get(i + 1).is_some_and(|n| n.1 == '(') => {
                            value.push_str("$(");
                            depth += 1;
                            i += 2;
                        }
                        ')' if depth > 0 => {
                            depth -= 1;
                            value.push(')');
                            i += 1;
                        }
                        '(' if depth > 0 => {
                            depth += 1;
                            value.push('(');
                            i += 1;
                        }
                        _ => {
                            value.push(c);
                            i += 1;
                        }
                    }
                }
                if value.is_empty() && end_of(i) == start {
                    i += 1; // never loop on a character no branch consumes
                    continue;
                }
                let end = end_of(i.min(chars.len()));
                cur.in_group |= group > 0;
                cur.words.push(ShWord {
                    value,
                    start,
                    end: end.max(start),
                });
            }
        }
    }
    if !cur.words.is_empty() {
        p.commands.push(cur);
    } else if p.ops.len() >= p.commands.len() && !p.ops.is_empty() {
        p.ops.pop();
    }
    // Keep ops.len() == commands.len() - 1.
    p.ops.truncate(p.commands.len().saturating_sub(1));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &Parsed) -> Vec<String> {
        p.commands.iter().map(|c| c.name().unwrap_or("").to_string()).collect()
    }

    #[test]
    fn splits_commands() {
        let p =
            parse("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y curl 2>&1 | tee log; rm -rf x");
        assert_eq!(names(&p), ["apt-get", "apt-get", "tee", "rm"]);
        assert_eq!(p.ops, [Op::And, Op::Pipe, Op::Seq]);
        assert!(p.commands[1].is("apt-get", "install"));
        assert!(p.commands[1].words.iter().any(|w| w.value == "2>&1"));
    }

    #[test]
    fn quotes_wrappers_and_comments() {
        let p = parse("sudo -u app python3 -m pip install 'a b' \"c\\\"d\" # done\necho $(cd /x && pwd)");
        assert_eq!(names(&p), ["pip", "echo"]);
        assert!(p.commands[0].is("pip", "install"));
        assert_eq!(p.commands[0].words.last().unwrap().value, "c\"d");
        assert!(p.has_comment);
        assert_eq!(p.commands[1].words[1].value, "$(cd /x && pwd)");
        let p = parse("if [ -f a ]; then cd /b; fi");
        assert_eq!(names(&p), ["[", "cd", ""]);
    }

    #[test]
    fn offsets() {
        let text = "apk add  curl";
        let p = parse(text);
        let w = &p.commands[0].words[1];
        assert_eq!(&text[w.start..w.end], "add");
    }
}
