//! WH012 FROM without a tag, WH013 FROM with `latest`.

use super::{Ctx, Finding, Rule, Severity, finding};
use crate::model::Base;

pub const UNTAGGED: Rule = Rule {
    id: "WH012",
    name: "from-untagged",
    severity: Severity::Warning,
    summary: "FROM an image without a tag or digest.",
    doc: "An untagged image means `latest`, which moves: builds stop being reproducible and the cache of every \
          layer is lost when it changes. Pin a version tag (and a digest for full reproducibility). Global ARGs \
          are substituted first; a stage name or `scratch` is fine.",
    fixable: false,
    hadolint: Some("DL3006"),
    check: check_untagged,
};

pub const LATEST: Rule = Rule {
    id: "WH013",
    name: "from-latest",
    severity: Severity::Warning,
    summary: "FROM an image tagged `latest`.",
    doc: "`latest` moves; pin a version tag.",
    fixable: false,
    hadolint: Some("DL3007"),
    check: check_latest,
};

fn check_untagged(ctx: &Ctx, out: &mut Vec<Finding>) {
    for s in &ctx.model.stages {
        if let Base::Image(r) = &s.base
            && s.image_resolved
            && r.tag.is_none()
            && r.digest.is_none()
            && !r.name.is_empty()
        {
            out.push(finding(
                UNTAGGED.id,
                ctx.ins(s.from).args.span,
                format!("`{}` has no tag: pin a version", s.image),
            ));
        }
    }
}

fn check_latest(ctx: &Ctx, out: &mut Vec<Finding>) {
    for s in &ctx.model.stages {
        if let Base::Image(r) = &s.base
            && r.tag.as_deref() == Some("latest")
            && r.digest.is_none()
        {
            out.push(finding(
                LATEST.id,
                ctx.ins(s.from).args.span,
                format!("`{}` uses `latest`: pin a version", s.image),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::lines;

    #[test]
    fn tags() {
        let src = "ARG BASE=debian\nARG V\nFROM ${BASE} AS a\nFROM node:latest\nFROM a\nFROM scratch\nFROM alpine@sha256:00\nFROM python:${V}\nFROM golang:1.22\n";
        assert_eq!(lines(src, "WH012"), [3]);
        assert_eq!(lines(src, "WH013"), [4]);
    }
}
