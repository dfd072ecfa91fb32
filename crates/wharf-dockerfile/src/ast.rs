//! The syntax tree. Every node keeps its exact source span; the items of a [`Dockerfile`] tile the whole source,
//! so [`Dockerfile::print`] gives back the input byte for byte and a fix can rewrite one span and keep the rest.

use crate::span::Span;

/// Instruction keywords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyword {
    From,
    Run,
    Cmd,
    Label,
    Maintainer,
    Expose,
    Env,
    Add,
    Copy,
    Entrypoint,
    Volume,
    User,
    Workdir,
    Arg,
    Onbuild,
    Stopsignal,
    Healthcheck,
    Shell,
    /// Not a Dockerfile instruction (the parser reports an error and keeps the node).
    Unknown,
}

impl Keyword {
    pub fn parse(word: &str) -> Keyword {
        match word.to_ascii_uppercase().as_str() {
            "FROM" => Keyword::From,
            "RUN" => Keyword::Run,
            "CMD" => Keyword::Cmd,
            "LABEL" => Keyword::Label,
            "MAINTAINER" => Keyword::Maintainer,
            "EXPOSE" => Keyword::Expose,
            "ENV" => Keyword::Env,
            "ADD" => Keyword::Add,
            "COPY" => Keyword::Copy,
            "ENTRYPOINT" => Keyword::Entrypoint,
            "VOLUME" => Keyword::Volume,
            "USER" => Keyword::User,
            "WORKDIR" => Keyword::Workdir,
            "ARG" => Keyword::Arg,
            "ONBUILD" => Keyword::Onbuild,
            "STOPSIGNAL" => Keyword::Stopsignal,
            "HEALTHCHECK" => Keyword::Healthcheck,
            "SHELL" => Keyword::Shell,
            _ => Keyword::Unknown,
        }
    }

    /// Whether the instruction takes `--flag` options before its arguments.
    pub fn takes_flags(self) -> bool {
        matches!(
            self,
            Keyword::From | Keyword::Run | Keyword::Copy | Keyword::Add | Keyword::Healthcheck
        )
    }

    /// Whether the instruction may carry heredocs.
    pub fn takes_heredocs(self) -> bool {
        matches!(self, Keyword::Run | Keyword::Copy | Keyword::Add)
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub source: String,
    /// The escape character (`\` or `` ` `` from `# escape=`).
    pub escape: char,
    pub directives: Vec<Directive>,
    pub items: Vec<Item>,
}

impl Dockerfile {
    /// Reprints the file from its items. Without edits this is the input, byte for byte.
    pub fn print(&self) -> String {
        let mut out = String::with_capacity(self.source.len());
        for item in &self.items {
            out.push_str(&self.source[item.span.start..item.span.end]);
        }
        out
    }

    /// Top-level instructions in order.
    pub fn instructions(&self) -> impl Iterator<Item = &Instruction> {
        self.items.iter().filter_map(|i| match &i.kind {
            ItemKind::Instruction(ins) => Some(&**ins),
            _ => None,
        })
    }

    pub fn text(&self, span: Span) -> &str {
        self.source.get(span.start..span.end).unwrap_or("")
    }

    /// The directive named `name` (`syntax`, `escape`, `check`).
    pub fn directive(&self, name: &str) -> Option<&Directive> {
        self.directives.iter().find(|d| d.name.eq_ignore_ascii_case(name))
    }
}

/// One top-level piece of the file. Spans include the line terminator(s).
#[derive(Debug, Clone)]
pub struct Item {
    pub span: Span,
    pub kind: ItemKind,
}

#[derive(Debug, Clone)]
pub enum ItemKind {
    /// `# name=value` before anything else (index into `Dockerfile::directives`).
    Directive(usize),
    /// A `#` comment line; `text` is what follows the `#`, trimmed.
    Comment(String),
    Blank,
    Instruction(Box<Instruction>),
}

/// A parser directive such as `# syntax=docker/dockerfile:1` or `` # escape=` ``.
#[derive(Debug, Clone)]
pub struct Directive {
    pub name: String,
    pub value: String,
    pub span: Span,
}

/// One instruction, continuation lines and heredoc bodies included.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// From the keyword to the end of the last line (continuations and heredocs included), without the final
    /// line terminator.
    pub span: Span,
    pub keyword: Keyword,
    /// The keyword as written.
    pub keyword_text: String,
    pub keyword_span: Span,
    pub flags: Vec<Flag>,
    pub args: Args,
    pub heredocs: Vec<Heredoc>,
    /// The triggered instruction of `ONBUILD`.
    pub onbuild: Option<Box<Instruction>>,
}

impl Instruction {
    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// The instruction itself or, for ONBUILD, the one it triggers.
    pub fn effective(&self) -> &Instruction {
        self.onbuild.as_deref().unwrap_or(self)
    }
}

/// `--name=value` or `--name`.
#[derive(Debug, Clone)]
pub struct Flag {
    pub name: String,
    /// Unquoted value; `None` for a bare `--name`.
    pub value: Option<String>,
    pub span: Span,
}

/// The arguments after the flags, in their logical form (continuations and comment lines removed).
#[derive(Debug, Clone)]
pub struct Args {
    /// Logical text, trimmed.
    pub text: String,
    /// Source span from the first to the last character of `text`.
    pub span: Span,
    pub form: Form,
    /// Maps offsets in `text` back to the source.
    pub map: SourceMap,
}

impl Args {
    /// The source offset of the byte at `offset` in `text` (or just past the last one).
    pub fn source_offset(&self, offset: usize) -> usize {
        self.map.to_source(offset)
    }

    pub fn is_exec(&self) -> bool {
        matches!(self.form, Form::Exec(_))
    }
}

#[derive(Debug, Clone)]
pub enum Form {
    /// Plain text handed to the shell (RUN/CMD/ENTRYPOINT) or parsed per instruction.
    Shell,
    /// A JSON array of strings.
    Exec(Vec<Word>),
}

/// A word with its unquoted value and its source span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub value: String,
    pub span: Span,
}

/// `<<EOF` ... `EOF`.
#[derive(Debug, Clone)]
pub struct Heredoc {
    pub marker: String,
    /// `<<-`: leading tabs are stripped.
    pub strip_tabs: bool,
    /// The marker was quoted: no expansion in the body.
    pub quoted: bool,
    /// Leading file descriptor, as in `3<<EOF`.
    pub fd: Option<u32>,
    /// The `<<EOF` word in the instruction line.
    pub redirect_span: Span,
    /// The body, from the line after the instruction to the start of the terminator line.
    pub body_span: Span,
    /// The terminator line (empty when unterminated).
    pub end_span: Span,
}

/// Segments of logical text and where they start in the source.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    /// (logical offset, source offset), sorted by logical offset.
    pub segments: Vec<(usize, usize)>,
    /// Source offset just past the last logical byte.
    pub end: usize,
}

impl SourceMap {
    pub fn to_source(&self, logical: usize) -> usize {
        let idx = match self.segments.binary_search_by(|s| s.0.cmp(&logical)) {
            Ok(i) => i,
            Err(0) => return self.segments.first().map_or(self.end, |s| s.1),
            Err(i) => i - 1,
        };
        let (l, s) = self.segments[idx];
        let candidate = s + (logical - l);
        // Past the end of the last segment: clamp to the end.
        if idx + 1 == self.segments.len() {
            candidate.min(self.end.max(s))
        } else {
            candidate
        }
    }

    /// The source span of logical range `start..end`.
    pub fn span(&self, start: usize, end: usize) -> Span {
        if end <= start {
            let s = self.to_source(start);
            return Span::new(s, s);
        }
        Span::new(self.to_source(start), self.to_source(end - 1) + 1)
    }

    /// A map for the sub-range of logical text starting at `from`.
    pub fn shifted(&self, from: usize) -> SourceMap {
        let mut segments = Vec::new();
        for (i, &(l, s)) in self.segments.iter().enumerate() {
            let next = self.segments.get(i + 1).map_or(usize::MAX, |n| n.0);
            if next <= from {
                continue;
            }
            if l < from {
                segments.push((0, s + (from - l)));
            } else {
                segments.push((l - from, s));
            }
        }
        SourceMap {
            segments,
            end: self.end,
        }
    }
}
