/*!
Dockerfiles for wharf: a lossless parser, a linter and a fixer.

[`parse`] turns source text into a [`Dockerfile`] whose items tile the input (so [`Dockerfile::print`] reproduces
it byte for byte) and whose nodes all keep their source [`Span`]; it never fails, returning the errors it found
beside the tree. [`model::Model`] adds meaning: stages, their base images and families, global ARGs and stage
references. [`lint::lint`] runs the rules of [`rules::RULES`] (each one data: id, severity, summary, doc, whether it
can fix) and returns [`rules::Finding`]s; [`fix::fix`] applies the fixes as text edits until nothing changes.

```
let src = "FROM alpine:3.20\nRUN apk add curl\n";
let (df, errors) = wharf_dockerfile::parse(src);
assert!(errors.is_empty());
assert_eq!(df.print(), src);
let result = wharf_dockerfile::lint::lint(src, &Default::default());
assert!(result.findings.iter().any(|f| f.rule == "WH002"));
```
*/

pub mod ast;
pub mod cache_keys;
pub mod config;
pub mod context;
pub mod diff;
pub mod error;
pub mod expand;
pub mod fix;
pub mod image;
pub mod lint;
pub mod model;
pub mod package_sources;
mod parser;
pub mod report;
pub mod rules;
pub mod shell;
pub mod source_hash;
pub mod span;
pub mod words;

pub use ast::{Dockerfile, Instruction, Keyword};
pub use error::{ConfigError, ContextError, ParseError};
pub use parser::parse;
pub use span::{LineIndex, Position, Span};
