//! Fuzzing without extra dependencies: random token soup and random mutations of the corpus. For every input the
//! parser must not panic, must reproduce the input byte for byte from its items, and must keep every span inside
//! the source on character boundaries; lint and fix must not panic either, and fixing must give a file that
//! parses. `WHARF_FUZZ_ITERS=200000` runs longer.

use std::path::Path;

use wharf_dockerfile::ast::{Instruction, ItemKind};
use wharf_dockerfile::config::{Config, preset};
use wharf_dockerfile::lint::{Options, lint};
use wharf_dockerfile::{fix, parse};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "FROM ",
    "RUN ",
    "COPY ",
    "ADD ",
    "ONBUILD ",
    "ENV ",
    "ARG ",
    "CMD ",
    "ENTRYPOINT ",
    "WORKDIR ",
    "from ",
    "AS ",
    "alpine:3.20",
    "node:20",
    "scratch",
    "${V:-x}",
    "$V",
    "--from=",
    "--mount=type=cache,target=/var/cache/apk ",
    "--chown=a:b ",
    "--",
    "[",
    "]",
    "\"",
    "'",
    ",",
    "\\",
    "`",
    "\n",
    "\r\n",
    " ",
    "\t",
    "#",
    "# escape=`\n",
    "# syntax=docker/dockerfile:1\n",
    "<<EOF",
    "<<-EOF",
    "<<'EOF'",
    "EOF",
    "\tEOF",
    "&&",
    "||",
    ";",
    "|",
    "&",
    "(",
    ")",
    "$(",
    "apk add ",
    "apt-get update",
    "apt-get install -y ",
    "pip install ",
    "npm ci",
    "cd /x",
    "sudo ",
    "COPY . .\n",
    "RUN npm ci\n",
    "é",
    "日本",
    "\u{feff}",
    "=",
    ".",
    "/",
    "-",
    "x",
];

fn check(src: &str, opts: &Options) {
    let (df, _errors) = parse(src);
    assert_eq!(df.print(), src);
    let mut pos = 0;
    for item in &df.items {
        assert_eq!(item.span.start, pos);
        pos = item.span.end;
        if let ItemKind::Instruction(ins) = &item.kind {
            check_spans(src, ins);
            assert!(item.span.contains(ins.span), "{:?} {:?}", item.span, ins.span);
        }
    }
    assert_eq!(pos, src.len());
    let r = lint(src, opts);
    for f in &r.findings {
        assert!(f.span.end <= src.len() && src.is_char_boundary(f.span.start) && src.is_char_boundary(f.span.end));
    }
    let fixed = fix::fix(src, opts);
    let _ = parse(&fixed.source);
}

fn check_spans(src: &str, ins: &Instruction) {
    let mut spans = vec![ins.span, ins.keyword_span, ins.args.span];
    spans.extend(ins.flags.iter().map(|f| f.span));
    for h in &ins.heredocs {
        spans.extend([h.redirect_span, h.body_span, h.end_span]);
    }
    if let wharf_dockerfile::ast::Form::Exec(ws) = &ins.args.form {
        spans.extend(ws.iter().map(|w| w.span));
    }
    for s in spans {
        assert!(s.start <= s.end && s.end <= src.len(), "{s:?} in {}", src.len());
        assert!(src.is_char_boundary(s.start) && src.is_char_boundary(s.end), "{s:?}");
    }
    if let Some(inner) = &ins.onbuild {
        check_spans(src, inner);
    }
}

fn run_case(src: &str, opts: &Options) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(src, opts)));
    if let Err(e) = outcome {
        panic!("failed on input {src:?}: {e:?}");
    }
}

fn iterations() -> usize {
    std::env::var("WHARF_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn options() -> Options {
    Options {
        config: Config {
            mirrors: preset("aliyun").unwrap(),
            ..Default::default()
        },
        context: None,
    }
}

#[test]
fn token_soup_never_panics_and_round_trips() {
    let opts = options();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..iterations() {
        let n = rng.below(60);
        let src: String = (0..n).map(|_| TOKENS[rng.below(TOKENS.len())]).collect();
        run_case(&src, &opts);
    }
}

#[test]
fn corpus_mutations_never_panic_and_round_trip() {
    let opts = options();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seeds: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    seeds.sort();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..iterations() {
        let mut s: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(s.len() + 1);
            match rng.below(4) {
                0 if !s.is_empty() => {
                    let len = rng.below(8).min(s.len() - at.min(s.len()));
                    s.drain(at.min(s.len())..at.min(s.len()) + len);
                }
                1 => {
                    let t: Vec<char> = TOKENS[rng.below(TOKENS.len())].chars().collect();
                    s.splice(at..at, t);
                }
                2 if !s.is_empty() => {
                    let from = rng.below(s.len());
                    let len = rng.below(40).min(s.len() - from);
                    let chunk: Vec<char> = s[from..from + len].to_vec();
                    s.splice(at..at, chunk);
                }
                _ => {
                    let c = char::from_u32(rng.below(0x80) as u32).unwrap_or('x');
                    s.insert(at, c);
                }
            }
        }
        let src: String = s.into_iter().collect();
        run_case(&src, &opts);
    }
}
