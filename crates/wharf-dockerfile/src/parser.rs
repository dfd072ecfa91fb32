//! The Dockerfile parser.
//!
//! Hand-written rather than built on the `parse-dockerfile` crate: wharf needs the exact source span of every
//! node (keyword, each flag, each exec-form element, each heredoc) through continuation lines, comment lines and
//! blank lines inside an instruction, the backtick escape, and a lossless tree so that `wharf fix` rewrites only
//! the spans it must and leaves every other byte as it was. Parsing never fails: it returns the tree and the
//! errors it found, each with its line and column, and it never panics on any input (see `tests/fuzz.rs`).

use crate::ast::{
    Args, Directive, Dockerfile, Flag, Form, Heredoc, Instruction, Item, ItemKind, Keyword, SourceMap, Word,
};
use crate::error::ParseError;
use crate::span::{LineIndex, Span};
use crate::words;

#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    /// End of the content, before `\r\n` or `\n`.
    end: usize,
    /// Start of the next line.
    next: usize,
}

fn split_lines(src: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let bytes = src.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let nl = memchr(bytes, start);
        let (end, next) = match nl {
            Some(i) => (if i > start && bytes[i - 1] == b'\r' { i - 1 } else { i }, i + 1),
            None => (bytes.len(), bytes.len()),
        };
        lines.push(Line { start, end, next });
        start = next;
    }
    lines
}

fn memchr(bytes: &[u8], from: usize) -> Option<usize> {
    bytes[from..].iter().position(|&b| b == b'\n').map(|p| p + from)
}

struct Parser<'a> {
    src: &'a str,
    lines: Vec<Line>,
    index: LineIndex,
    escape: char,
    errors: Vec<ParseError>,
}

/// Parses `src`. Never fails: errors are returned beside the tree.
pub fn parse(src: &str) -> (Dockerfile, Vec<ParseError>) {
    let mut p = Parser {
        src,
        lines: split_lines(src),
        index: LineIndex::new(src),
        escape: '\\',
        errors: Vec::new(),
    };
    let mut items = Vec::new();
    let mut directives = Vec::new();
    let mut i = 0;
    // Parser directives: only before any comment, blank line or instruction.
    while i < p.lines.len() {
        let line = p.lines[i];
        let text = p.line_text(i);
        let Some((name, value)) = directive(text) else { break };
        let lname = name.to_ascii_lowercase();
        if !matches!(lname.as_str(), "syntax" | "escape" | "check") {
            break;
        }
        let span = Span::new(line.start, line.end);
        if directives
            .iter()
            .any(|d: &Directive| d.name.eq_ignore_ascii_case(&lname))
        {
            p.error(span, format!("only one `{lname}` parser directive can be used"));
        }
        if lname == "escape" {
            match value {
                "\\" => p.escape = '\\',
                "`" => p.escape = '`',
                other => p.error(span, format!("invalid escape token `{other}`: must be ` or \\")),
            }
        }
        items.push(Item {
            span: Span::new(line.start, line.next),
            kind: ItemKind::Directive(directives.len()),
        });
        directives.push(Directive {
            name: name.to_string(),
            value: value.to_string(),
            span,
        });
        i += 1;
    }
    while i < p.lines.len() {
        let line = p.lines[i];
        let text = p.line_text(i);
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            items.push(Item {
                span: Span::new(line.start, line.next),
                kind: ItemKind::Blank,
            });
            i += 1;
        } else if let Some(rest) = trimmed.strip_prefix('#') {
            items.push(Item {
                span: Span::new(line.start, line.next),
                kind: ItemKind::Comment(rest.trim().to_string()),
            });
            i += 1;
        } else {
            let (ins, last) = p.instruction(i);
            items.push(Item {
                span: Span::new(line.start, p.lines[last].next),
                kind: ItemKind::Instruction(Box::new(ins)),
            });
            i = last + 1;
        }
    }
    let escape = p.escape;
    (
        Dockerfile {
            source: src.to_string(),
            escape,
            directives,
            items,
        },
        p.errors,
    )
}

/// `# name=value`
fn directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let eq = rest.find('=')?;
    let name = rest[..eq].trim_end();
    let mut chars = name.chars();
    if !chars.next()?.is_ascii_alphabetic() || !chars.all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let value = rest[eq + 1..].trim();
    (!value.is_empty()).then_some((name, value))
}

impl<'a> Parser<'a> {
    /// Line `i` without its terminator (and without a leading byte-order mark).
    fn line_text(&self, i: usize) -> &'a str {
        let l = self.lines[i];
        let t = &self.src[l.start..l.end];
        if i == 0 {
            t.strip_prefix('\u{feff}').unwrap_or(t)
        } else {
            t
        }
    }

    fn error(&mut self, span: Span, message: String) {
        let pos = self.index.position(self.src, span.start);
        self.errors.push(ParseError {
            span,
            line: pos.line,
            column: pos.column,
            message,
        });
    }

    fn is_skippable(&self, i: usize) -> bool {
        let t = self.line_text(i).trim_start();
        t.is_empty() || t.starts_with('#')
    }

    /// Parses the instruction starting on line `first`; returns it and its last line.
    fn instruction(&mut self, first: usize) -> (Instruction, usize) {
        let text0 = self.line_text(first);
        let kstart = self.lines[first].end - text0.trim_start().len();
        let mut text = String::new();
        let mut map = SourceMap::default();
        let mut j = first;
        let mut seg_start = kstart;
        loop {
            let seg = &self.src[seg_start..self.lines[j].end];
            let t = seg.trim_end_matches([' ', '\t']);
            if let Some(keep) = t.strip_suffix(self.escape) {
                map.segments.push((text.len(), seg_start));
                text.push_str(keep);
                map.end = seg_start + keep.len();
                let mut k = j + 1;
                while k < self.lines.len() && self.is_skippable(k) {
                    k += 1;
                }
                if k >= self.lines.len() {
                    break;
                }
                j = k;
                seg_start = self.lines[k].start;
            } else {
                map.segments.push((text.len(), seg_start));
                text.push_str(seg);
                map.end = seg_start + seg.len();
                break;
            }
        }
        let mut ins = self.instruction_text(&text, &map, false);
        if ins.keyword.takes_heredocs() || ins.onbuild.as_ref().is_some_and(|o| o.keyword.takes_heredocs()) {
            let heredocs = self.heredocs(&ins, &mut j);
            if let Some(inner) = ins.onbuild.as_mut() {
                inner.heredocs = heredocs.clone();
            }
            ins.heredocs = heredocs;
        }
        ins.span = Span::new(kstart, self.lines[j].end.max(kstart));
        (ins, j)
    }

    /// Keyword, flags and arguments of logical `text`.
    fn instruction_text(&mut self, text: &str, map: &SourceMap, in_onbuild: bool) -> Instruction {
        let kw_len = text.find(char::is_whitespace).unwrap_or(text.len());
        let keyword_text = &text[..kw_len];
        let keyword_span = map.span(0, kw_len);
        let keyword = Keyword::parse(keyword_text);
        if keyword == Keyword::Unknown {
            self.error(keyword_span, format!("unknown instruction: {keyword_text}"));
        }
        let mut flags = Vec::new();
        let mut pos = kw_len;
        let ws = |s: &str, from: usize| from + (s[from..].len() - s[from..].trim_start().len());
        pos = ws(text, pos);
        if keyword.takes_flags() {
            let base = pos;
            for w in words::split(&text[base..], self.escape) {
                let raw = &text[base + w.start..base + w.end];
                if !raw.starts_with("--") {
                    break;
                }
                pos = ws(text, base + w.end);
                if raw == "--" {
                    break;
                }
                let body = w.value.strip_prefix("--").unwrap_or(&w.value);
                let (name, value) = match body.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (body.to_string(), None),
                };
                let span = map.span(base + w.start, base + w.end);
                if name.is_empty() {
                    self.error(span, "empty flag name".to_string());
                }
                flags.push(Flag { name, value, span });
            }
        }
        let args_text = text[pos..].trim_end();
        let args_end = pos + args_text.len();
        let amap = map.shifted(pos);
        let span = map.span(pos, args_end);
        let form = if matches!(
            keyword,
            Keyword::Run
                | Keyword::Cmd
                | Keyword::Entrypoint
                | Keyword::Shell
                | Keyword::Copy
                | Keyword::Add
                | Keyword::Volume
        ) && args_text.starts_with('[')
        {
            match words::parse_exec(args_text) {
                Some(ws) => Form::Exec(
                    ws.into_iter()
                        .map(|w| Word {
                            value: w.value,
                            span: map.span(pos + w.start, pos + w.end),
                        })
                        .collect(),
                ),
                None => Form::Shell,
            }
        } else {
            Form::Shell
        };
        let args = Args {
            text: args_text.to_string(),
            span,
            form,
            map: amap,
        };
        let mut onbuild = None;
        if keyword == Keyword::Onbuild {
            if in_onbuild {
                self.error(keyword_span, "ONBUILD cannot be nested".to_string());
            } else if args_text.is_empty() {
                self.error(keyword_span, "ONBUILD requires an instruction".to_string());
            } else {
                let inner = self.instruction_text(args_text, &args.map, true);
                if matches!(inner.keyword, Keyword::From | Keyword::Maintainer | Keyword::Onbuild) {
                    self.error(
                        inner.keyword_span,
                        format!("{} isn't allowed as an ONBUILD trigger", inner.keyword_text),
                    );
                }
                onbuild = Some(Box::new(inner));
            }
        } else if args_text.is_empty() && keyword != Keyword::Unknown {
            self.error(
                keyword_span,
                format!("{} requires at least one argument", keyword_text.to_ascii_uppercase()),
            );
        }
        Instruction {
            span: map.span(0, text.trim_end().len()),
            keyword,
            keyword_text: keyword_text.to_string(),
            keyword_span,
            flags,
            args,
            heredocs: Vec::new(),
            onbuild,
        }
    }

    /// Finds `<<EOF` words in the instruction and consumes their bodies after line `*last`.
    fn heredocs(&mut self, ins: &Instruction, last: &mut usize) -> Vec<Heredoc> {
        let eff = ins.effective();
        if eff.args.is_exec() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for w in words::split(&eff.args.text, self.escape) {
            let raw = &eff.args.text[w.start..w.end];
            let Some(h) = heredoc_word(raw) else { continue };
            let redirect_span = eff.args.map.span(w.start, w.end);
            let body_first = *last + 1;
            let body_start = self.lines.get(body_first).map_or(self.src.len(), |l| l.start);
            let mut k = body_first;
            let mut found = None;
            while k < self.lines.len() {
                let t = &self.src[self.lines[k].start..self.lines[k].end];
                let t = if h.strip_tabs { t.trim_start_matches('\t') } else { t };
                if t == h.marker {
                    found = Some(k);
                    break;
                }
                k += 1;
            }
            let (body_span, end_span) = match found {
                Some(k) => {
                    *last = k;
                    (
                        Span::new(body_start, self.lines[k].start),
                        Span::new(self.lines[k].start, self.lines[k].end),
                    )
                }
                None => {
                    self.error(
                        redirect_span,
                        format!("unterminated heredoc: no line `{}` follows", h.marker),
                    );
                    if !self.lines.is_empty() && body_first < self.lines.len() {
                        *last = self.lines.len() - 1;
                    }
                    (
                        Span::new(body_start, self.src.len()),
                        Span::new(self.src.len(), self.src.len()),
                    )
                }
            };
            out.push(Heredoc {
                marker: h.marker,
                strip_tabs: h.strip_tabs,
                quoted: h.quoted,
                fd: h.fd,
                redirect_span,
                body_span,
                end_span,
            });
        }
        out
    }
}

struct HeredocWord {
    marker: String,
    strip_tabs: bool,
    quoted: bool,
    fd: Option<u32>,
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<'EOF'`, possibly followed by a redirection such as `<<EOF>/file`.
fn heredoc_word(raw: &str) -> Option<HeredocWord> {
    let digits = raw.bytes().take_while(u8::is_ascii_digit).count();
    let rest = raw[digits..].strip_prefix("<<")?;
    let fd = if digits > 0 { raw[..digits].parse().ok() } else { None };
    let (strip_tabs, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.starts_with('<') {
        return None; // here-string `<<<`
    }
    let (marker, quoted) = match rest.chars().next()? {
        q @ ('"' | '\'') => {
            let inner = &rest[1..];
            let end = inner.find(q)?;
            (inner[..end].to_string(), true)
        }
        _ => {
            let end = rest
                .find(['>', '<', '|', ';', '&', ')', '(', '"', '\''])
                .unwrap_or(rest.len());
            (rest[..end].to_string(), false)
        }
    };
    if marker.is_empty()
        || !marker
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return None;
    }
    Some(HeredocWord {
        marker,
        strip_tabs,
        quoted,
        fd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(src: &str) -> Instruction {
        let (df, errs) = parse(src);
        assert!(errs.is_empty(), "{errs:?}");
        df.instructions().next().unwrap().clone()
    }

    #[test]
    fn directives_and_backtick_escape() {
        let src =
            "# syntax=docker/dockerfile:1\n# escape=`\nFROM mcr.microsoft.com/windows\nRUN dir c:\\ `\n  && echo hi\n";
        let (df, errs) = parse(src);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(df.escape, '`');
        assert_eq!(df.directive("syntax").unwrap().value, "docker/dockerfile:1");
        let run = df.instructions().nth(1).unwrap();
        assert_eq!(run.args.text, "dir c:\\   && echo hi");
        assert_eq!(df.print(), src);
    }

    #[test]
    fn directive_after_comment_is_a_comment() {
        let (df, _) = parse("# hello\n# escape=`\nFROM a\n");
        assert_eq!(df.escape, '\\');
        assert!(df.directives.is_empty());
    }

    #[test]
    fn continuation_with_comments_and_blank_lines() {
        let src = "RUN apt-get update \\\n  # a comment\n\n  && apt-get install -y curl\nCMD x\n";
        let (df, errs) = parse(src);
        assert!(errs.is_empty());
        let run = df.instructions().next().unwrap();
        assert_eq!(run.args.text, "apt-get update   && apt-get install -y curl");
        let at = run.args.text.find("install").unwrap();
        let s = run.args.source_offset(at);
        assert_eq!(&src[s..s + 7], "install");
        assert_eq!(&src[run.span.start..run.span.end], &src[..src.find("\nCMD").unwrap()]);
        assert_eq!(df.print(), src);
    }

    #[test]
    fn flags_and_exec_form() {
        let src = "COPY --from=build --chown=app:app --link /out/app /usr/bin/app\n";
        let c = first(src);
        assert_eq!(c.flags.len(), 3);
        assert_eq!(c.flag("from").unwrap().value.as_deref(), Some("build"));
        assert_eq!(c.flag("link").unwrap().value, None);
        assert_eq!(&src[c.flags[1].span.start..c.flags[1].span.end], "--chown=app:app");
        assert_eq!(c.args.text, "/out/app /usr/bin/app");
        let src = "ENTRYPOINT [\"/bin/app\", \\\n  \"--serve\"]\n";
        let e = first(src);
        let Form::Exec(ws) = &e.args.form else {
            panic!("not exec")
        };
        assert_eq!(ws[1].value, "--serve");
        assert_eq!(&src[ws[1].span.start..ws[1].span.end], "\"--serve\"");
        assert!(matches!(first("CMD [\"a\" b]\n").args.form, Form::Shell));
    }

    #[test]
    fn heredocs_several_per_instruction() {
        let src = "RUN <<EOF1 cat >/a && <<-'EOF2' cat >/b\nhello\nEOF1\n\tworld\n\tEOF2\nCMD x\n";
        let (df, errs) = parse(src);
        assert!(errs.is_empty(), "{errs:?}");
        let run = df.instructions().next().unwrap();
        assert_eq!(run.heredocs.len(), 2);
        assert_eq!(df.text(run.heredocs[0].body_span), "hello\n");
        assert_eq!(df.text(run.heredocs[1].body_span), "\tworld\n");
        assert!(run.heredocs[1].quoted && run.heredocs[1].strip_tabs);
        assert_eq!(df.instructions().nth(1).unwrap().keyword, Keyword::Cmd);
        assert_eq!(df.print(), src);
    }

    #[test]
    fn unterminated_heredoc_is_an_error_with_position() {
        let (df, errs) = parse("FROM a\nRUN <<EOF\necho\n");
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].line, errs[0].column), (2, 5));
        assert_eq!(df.print(), "FROM a\nRUN <<EOF\necho\n");
    }

    #[test]
    fn onbuild_and_errors() {
        let src = "ONBUILD COPY --from=x a b\n";
        let o = first(src);
        let inner = o.onbuild.as_ref().unwrap();
        assert_eq!(inner.keyword, Keyword::Copy);
        assert_eq!(&src[inner.flags[0].span.start..inner.flags[0].span.end], "--from=x");
        let (_, errs) = parse("FROM a\n  FRM b\nONBUILD FROM x\nRUN\n");
        let msgs: Vec<_> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "2:3: unknown instruction: FRM",
                "3:9: FROM isn't allowed as an ONBUILD trigger",
                "4:1: RUN requires at least one argument"
            ]
        );
    }

    #[test]
    fn directive_errors_and_global_args_in_from() {
        let (df, errs) = parse("# escape=x\n# escape=`\nFROM a\n");
        let msgs: Vec<_> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "1:1: invalid escape token `x`: must be ` or \\",
                "2:1: only one `escape` parser directive can be used"
            ]
        );
        assert_eq!(df.escape, '`');
        let src = "ARG IMG=alpine\nFROM --platform=$BUILDPLATFORM ${IMG}:3.20 AS base\n";
        let (df, errs) = parse(src);
        assert!(errs.is_empty());
        let from = df.instructions().nth(1).unwrap();
        assert_eq!(from.flag("platform").unwrap().value.as_deref(), Some("$BUILDPLATFORM"));
        assert_eq!(from.args.text, "${IMG}:3.20 AS base");
        assert_eq!(df.text(from.args.span), "${IMG}:3.20 AS base");
    }

    #[test]
    fn bom_and_odd_whitespace() {
        let src = "\u{feff}FROM a\n\u{b}RUN\tx \\\n\t\n  # c\n\ty\n";
        let (df, errs) = parse(src);
        assert_eq!(df.print(), src);
        assert_eq!(df.instructions().next().unwrap().args.text, "a");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(df.instructions().nth(1).unwrap().args.text, "x \ty");
    }

    #[test]
    fn crlf_and_no_trailing_newline() {
        let src = "FROM a\r\nRUN b \\\r\n  c\r\nCMD d";
        let (df, errs) = parse(src);
        assert!(errs.is_empty());
        assert_eq!(df.instructions().nth(1).unwrap().args.text, "b   c");
        assert_eq!(df.instructions().nth(2).unwrap().args.text, "d");
        assert_eq!(df.print(), src);
    }
}
