//! Meaning on top of the tree: global ARGs, stages with their base (image, `scratch` or an earlier stage), their
//! distribution family (followed through stage aliases) and the instructions of each stage.

use crate::ast::{Dockerfile, Instruction, Keyword};
use crate::expand::expand;
use crate::image::{Family, ImageRef, family_of};
use crate::shell;
use crate::words;

#[derive(Debug, Clone)]
pub enum Base {
    Scratch,
    /// An earlier stage, by index.
    Stage(usize),
    Image(ImageRef),
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub index: usize,
    /// Index of the FROM in `Model::instructions`.
    pub from: usize,
    /// Indices of the stage's other instructions.
    pub body: Vec<usize>,
    /// The `AS name`, lowercased.
    pub name: Option<String>,
    /// The image as written.
    pub image_raw: String,
    /// The image with global ARGs substituted.
    pub image: String,
    /// Every variable in the image had a value.
    pub image_resolved: bool,
    pub base: Base,
    pub family: Family,
}

#[derive(Debug)]
pub struct Model<'a> {
    pub df: &'a Dockerfile,
    pub instructions: Vec<&'a Instruction>,
    /// ARGs before the first FROM: name and default.
    pub global_args: Vec<(String, Option<String>)>,
    pub stages: Vec<Stage>,
}

impl<'a> Model<'a> {
    pub fn new(df: &'a Dockerfile) -> Model<'a> {
        let instructions: Vec<&Instruction> = df.instructions().collect();
        let mut global_args = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for (i, ins) in instructions.iter().enumerate() {
            match ins.keyword {
                Keyword::Arg if stages.is_empty() => {
                    for w in words::split(&ins.args.text, df.escape) {
                        let (name, default) = match w.value.split_once('=') {
                            Some((n, d)) => (n.to_string(), Some(d.to_string())),
                            None => (w.value.clone(), None),
                        };
                        global_args.push((name, default));
                    }
                }
                Keyword::From => {
                    let ws = words::split(&ins.args.text, df.escape);
                    let image_raw = ws.first().map(|w| w.value.clone()).unwrap_or_default();
                    let name = match (ws.get(1), ws.get(2)) {
                        (Some(a), Some(n)) if a.value.eq_ignore_ascii_case("as") => Some(n.value.to_ascii_lowercase()),
                        _ => None,
                    };
                    let lookup = |n: &str| {
                        global_args
                            .iter()
                            .rev()
                            .find(|(k, _)| k == n)
                            .and_then(|(_, d)| d.clone())
                    };
                    let (image, image_resolved) = expand(&image_raw, df.escape, &lookup);
                    let lower = image.to_ascii_lowercase();
                    let base = if lower == "scratch" {
                        Base::Scratch
                    } else if let Some(s) = stages.iter().find(|s| s.name.as_deref() == Some(lower.as_str())) {
                        Base::Stage(s.index)
                    } else {
                        Base::Image(ImageRef::parse(&image))
                    };
                    let family = match &base {
                        Base::Scratch => Family::Scratch,
                        Base::Stage(p) => stages[*p].family,
                        Base::Image(r) => family_of(r),
                    };
                    stages.push(Stage {
                        index: stages.len(),
                        from: i,
                        body: Vec::new(),
                        name,
                        image_raw,
                        image,
                        image_resolved,
                        base,
                        family,
                    });
                }
                _ => {
                    if let Some(s) = stages.last_mut() {
                        s.body.push(i);
                    }
                }
            }
        }
        let mut model = Model {
            df,
            instructions,
            global_args,
            stages,
        };
        // Unknown families: infer from the package manager the stage (or its parent) uses.
        for s in 0..model.stages.len() {
            if model.stages[s].family == Family::Unknown {
                let parent = match model.stages[s].base {
                    Base::Stage(p) => model.stages[p].family,
                    _ => Family::Unknown,
                };
                model.stages[s].family = if parent != Family::Unknown {
                    parent
                } else {
                    model.infer_family(s)
                };
            }
        }
        model
    }

    fn infer_family(&self, stage: usize) -> Family {
        for &i in &self.stages[stage].body {
            for script in shell::run_scripts(self.instructions[i], &self.df.source) {
                for c in script.parse().commands {
                    match c.name() {
                        Some("apk") => return Family::Alpine,
                        Some("apt-get" | "apt" | "dpkg") => return Family::Debian,
                        Some("yum" | "dnf" | "microdnf") => return Family::Rhel,
                        _ => {}
                    }
                }
            }
        }
        Family::Unknown
    }

    /// Substitutes global ARG defaults in `s` (as BuildKit does for FROM and `--from`); `false` when a variable
    /// had no value.
    pub fn expand_global(&self, s: &str) -> (String, bool) {
        let lookup = |n: &str| {
            self.global_args
                .iter()
                .rev()
                .find(|(k, _)| k == n)
                .and_then(|(_, d)| d.clone())
        };
        expand(s, self.df.escape, &lookup)
    }

    /// Variables in scope just before instruction `i` of a stage: global ARGs redeclared in the stage (with their
    /// global default unless given a new one), the stage's ARGs and ENVs (ENV values expanded), and ENVs of the
    /// stages it is built FROM. Later entries win.
    pub fn vars_before(&self, i: usize) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = Vec::new();
        let Some(stage) = self.stage_of(i) else {
            return self
                .global_args
                .iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                .collect();
        };
        let mut chain = self.lineage(stage);
        chain.reverse();
        for s in chain {
            let own = s == stage;
            for &j in &self.stages[s].body {
                if own && j >= i {
                    break;
                }
                let ins = self.instructions[j];
                match ins.keyword {
                    Keyword::Env => {
                        for (k, v) in env_pairs(&ins.args.text, self.df.escape) {
                            let (v, _) = expand(&v, self.df.escape, &|n: &str| lookup(&vars, n));
                            vars.push((k, v));
                        }
                    }
                    // ARGs do not carry over to child stages.
                    Keyword::Arg if own => {
                        for w in words::split(&ins.args.text, self.df.escape) {
                            match w.value.split_once('=') {
                                Some((k, d)) => {
                                    let (d, _) = expand(d, self.df.escape, &|n: &str| lookup(&vars, n));
                                    vars.push((k.to_string(), d));
                                }
                                None => {
                                    let global = self.global_args.iter().rev().find(|(k, _)| *k == w.value);
                                    if let Some((k, Some(d))) = global {
                                        vars.push((k.clone(), d.clone()));
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        vars
    }

    /// Expands `text` with the variables in scope before instruction `i`.
    pub fn expand_at(&self, i: usize, text: &str) -> (String, bool) {
        let vars = self.vars_before(i);
        expand(text, self.df.escape, &|n: &str| lookup(&vars, n))
    }

    /// The stage holding instruction `i`.
    pub fn stage_of(&self, i: usize) -> Option<usize> {
        self.stages.iter().rev().find(|s| s.from <= i).map(|s| s.index)
    }

    /// The stage and its ancestors built FROM earlier stages, nearest first.
    pub fn lineage(&self, stage: usize) -> Vec<usize> {
        let mut out = vec![stage];
        let mut cur = stage;
        while let Some(Base::Stage(p)) = self.stages.get(cur).map(|s| &s.base) {
            if out.contains(p) {
                break;
            }
            out.push(*p);
            cur = *p;
        }
        out
    }

    /// Finds a stage by `--from` value: a name or an index.
    pub fn stage_ref(&self, reference: &str) -> Option<usize> {
        let lower = reference.to_ascii_lowercase();
        if let Ok(n) = lower.parse::<usize>() {
            return (n < self.stages.len()).then_some(n);
        }
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
            .map(|s| s.index)
    }
}

fn lookup(vars: &[(String, String)], name: &str) -> Option<String> {
    vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// `ENV a=1 b="x y"` or the legacy `ENV a x y`.
pub fn env_pairs(text: &str, escape: char) -> Vec<(String, String)> {
    let ws = words::split(text, escape);
    match ws.first() {
        Some(w) if !w.value.contains('=') => {
            let rest = text[w.end..].trim().to_string();
            vec![(w.value.clone(), rest)]
        }
        _ => ws
            .into_iter()
            .filter_map(|w| w.value.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn stages_args_and_families() {
        let src = "ARG ALPINE=3.20\nARG GO\nFROM golang:${GO:-1.22}-alpine${ALPINE} AS build\nRUN go build\n\
                   FROM build AS test\nFROM example.com/base:1 AS app\nRUN apt-get install -y x\nFROM scratch\n";
        let (df, _) = parse(src);
        let m = Model::new(&df);
        assert_eq!(m.global_args.len(), 2);
        assert_eq!(m.stages.len(), 4);
        assert_eq!(m.stages[0].image, "golang:1.22-alpine3.20");
        assert_eq!(m.stages[0].name.as_deref(), Some("build"));
        assert_eq!(m.stages[0].family, Family::Alpine);
        assert!(matches!(m.stages[1].base, Base::Stage(0)));
        assert_eq!(m.stages[1].family, Family::Alpine);
        assert_eq!(m.stages[2].family, Family::Debian);
        assert_eq!(m.stages[3].family, Family::Scratch);
        assert_eq!(m.lineage(1), [1, 0]);
        assert_eq!(m.stage_ref("BUILD"), Some(0));
        assert_eq!(m.stage_ref("9"), None);
    }

    #[test]
    fn variables_in_scope() {
        let src = "ARG V=1\nARG W=2\nFROM a:$V AS base\nARG V\nENV HOME=/root APP=${HOME}/app\nENV LEGACY some value\n\
                   RUN x\nFROM base\nARG W=3\nRUN y\n";
        let (df, _) = parse(src);
        let m = Model::new(&df);
        assert_eq!(
            m.expand_at(6, "$V:$W:$APP:$LEGACY"),
            ("1::/root/app:some value".to_string(), false)
        );
        assert_eq!(m.expand_at(9, "${V:-no}:$W:$APP"), ("no:3:/root/app".to_string(), true));
    }
}
