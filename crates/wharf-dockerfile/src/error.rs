//! Typed errors of this crate.

use std::path::PathBuf;

use crate::span::{Position, Span};

/// A syntax error. The parser never stops at one: it records it and goes on (`parse` returns `(Ast, Vec<_>)`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ParseError {
    pub span: Span,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ParseError {
    pub fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }
}

/// Errors reading the lint/fix configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Toml { path: PathBuf, source: toml::de::Error },
    #[error("unknown rule `{0}`")]
    UnknownRule(String),
    #[error("invalid severity `{0}` (expected error, warning, info or style)")]
    Severity(String),
    #[error("invalid mirror `{0}` (expected KEY=HOST, KEY one of alpine, debian, ubuntu, pypi, npm, go, cargo)")]
    Mirror(String),
    #[error("unknown mirror preset `{0}` (known: aliyun, tuna, ustc)")]
    Preset(String),
}

/// Errors scanning a build context directory.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}
