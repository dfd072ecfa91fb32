//! Access rules: who (users, groups, `anonymous`, `authenticated`) may do what (pull, push, delete) to which
//! repositories (patterns). Rules only grant; whatever no rule grants is denied.
//!
//! Pattern grammar, matched against the whole repository name, segment by segment (segments are split on `/`):
//! - a literal segment matches itself (`team`);
//! - `*` inside a segment matches any run of characters except `/` (`team/*` matches `team/app` but not
//!   `team/a/b`; `team-*/app` matches `team-x/app`);
//! - `**` as a whole segment matches one or more segments (`public/**` matches `public/a` and `public/a/b`, not
//!   `public`; `**` alone matches every repository; `**/cache` matches `a/cache` and `a/b/cache`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(7);

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn insert(&mut self, a: Action) {
        self.0 |= a.bit();
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// `pull,push` (the order of the token scope grammar).
    pub fn to_scope_string(self) -> String {
        self.iter().map(Action::as_str).collect::<Vec<_>>().join(",")
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        let mut s = Actions::NONE;
        for a in iter {
            s.insert(a);
        }
        s
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// No credentials at all.
    Anonymous,
    /// A user whose password (or token) checked out.
    User(String),
}

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => "",
            Identity::User(u) => u,
        }
    }
}

/// A rule's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Requests without credentials (and, since it grants everyone, everyone else too).
    Anonymous,
    /// Any user whose credentials checked out.
    Authenticated,
    User(String),
    Group(String),
}

impl Subject {
    /// `anonymous`, `authenticated`, `group:NAME`, `user:NAME` or a bare user name.
    pub fn parse(s: &str) -> Result<Subject, String> {
        let s = s.trim();
        let subject = match s {
            "anonymous" => Subject::Anonymous,
            "authenticated" => Subject::Authenticated,
            _ => match s.split_once(':') {
                Some(("group", g)) => Subject::Group(g.to_owned()),
                Some(("user", u)) => Subject::User(u.to_owned()),
                Some(_) => {
                    return Err(format!(
                        "subject {s:?}: expected NAME, user:NAME, group:NAME, anonymous or authenticated"
                    ));
                }
                None => Subject::User(s.to_owned()),
            },
        };
        match &subject {
            Subject::User(n) | Subject::Group(n) if n.is_empty() || n.contains(char::is_whitespace) => {
                Err(format!("subject {s:?}: the name is empty or has spaces"))
            }
            _ => Ok(subject),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`
    Any,
    /// Literal parts split at each `*` (one part: a literal segment).
    Glob(Vec<String>),
}

/// A repository pattern (see the module documentation for the grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s.is_empty() {
            return Err("empty repository pattern".into());
        }
        let mut segments = Vec::new();
        for seg in s.split('/') {
            if seg.is_empty() {
                return Err(format!("repository pattern {s:?}: empty segment"));
            }
            if seg == "**" {
                segments.push(Segment::Any);
                continue;
            }
            if seg.contains("**") {
                return Err(format!("repository pattern {s:?}: `**` must be a whole segment"));
            }
            if let Some(c) = seg
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '*')))
            {
                return Err(format!(
                    "repository pattern {s:?}: {c:?} cannot appear in a repository name (lowercase letters, digits, . _ - and the wildcards * **)"
                ));
            }
            segments.push(Segment::Glob(seg.split('*').map(str::to_owned).collect()));
        }
        Ok(Pattern {
            text: s.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, repository: &str) -> bool {
        let names: Vec<&str> = repository.split('/').collect();
        match_segments(&self.segments, &names)
    }
}

fn match_segments(pattern: &[Segment], names: &[&str]) -> bool {
    match pattern.split_first() {
        None => names.is_empty(),
        Some((Segment::Any, rest)) => (1..=names.len()).any(|n| match_segments(rest, &names[n..])),
        Some((Segment::Glob(parts), rest)) => match names.split_first() {
            Some((name, names)) => glob(parts, name) && match_segments(rest, names),
            None => false,
        },
    }
}

/// `parts` are the literals between `*`s: the first is a prefix, the last a suffix, the middle ones appear in order.
fn glob(parts: &[String], s: &str) -> bool {
    match parts {
        [] => s.is_empty(),
        [only] => s == only,
        [first, middle @ .., last] => {
            if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) || !s.ends_with(last.as_str()) {
                return false;
            }
            let mut rest = &s[first.len()..s.len() - last.len()];
            for m in middle {
                match rest.find(m.as_str()) {
                    Some(i) => rest = &rest[i + m.len()..],
                    None => return false,
                }
            }
            true
        }
    }
}

/// One `[[auth.rules]]` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    pub subjects: Vec<Subject>,
    pub repositories: Vec<Pattern>,
    pub actions: Actions,
}

impl Rule {
    /// Parses the configuration's strings; `actions` may contain `*` for all three.
    pub fn parse(subjects: &[String], repositories: &[String], actions: &[String]) -> Result<Rule, String> {
        if subjects.is_empty() || repositories.is_empty() || actions.is_empty() {
            return Err("a rule needs subjects, repositories and actions".into());
        }
        let subjects = subjects.iter().map(|s| Subject::parse(s)).collect::<Result<_, _>>()?;
        let repositories = repositories
            .iter()
            .map(|r| Pattern::parse(r))
            .collect::<Result<_, _>>()?;
        let mut set = Actions::NONE;
        for a in actions {
            match a.as_str() {
                "*" => set = Actions::ALL,
                a => set
                    .insert(Action::parse(a).ok_or_else(|| format!("action {a:?}: expected pull, push, delete or *"))?),
            }
        }
        Ok(Rule {
            subjects,
            repositories,
            actions: set,
        })
    }
}

/// The rules, the groups, and who may list the catalog.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Group name → members.
    groups: BTreeMap<String, BTreeSet<String>>,
    catalog: Vec<Subject>,
}

impl Rules {
    pub fn new(
        rules: Vec<Rule>,
        groups: BTreeMap<String, Vec<String>>,
        catalog: Vec<Subject>,
    ) -> Result<Rules, String> {
        let groups: BTreeMap<String, BTreeSet<String>> =
            groups.into_iter().map(|(g, m)| (g, m.into_iter().collect())).collect();
        for s in rules.iter().flat_map(|r| &r.subjects).chain(&catalog) {
            if let Subject::Group(g) = s
                && !groups.contains_key(g)
            {
                return Err(format!(
                    "group {g:?} is used in a rule but not defined in [auth.groups]"
                ));
            }
        }
        Ok(Rules { rules, groups, catalog })
    }

    fn applies(&self, subject: &Subject, who: &Identity) -> bool {
        match (subject, who) {
            (Subject::Anonymous, _) => true,
            (Subject::Authenticated, Identity::User(_)) => true,
            (Subject::User(u), Identity::User(n)) => u == n,
            (Subject::Group(g), Identity::User(n)) => self.groups.get(g).is_some_and(|m| m.contains(n)),
            _ => false,
        }
    }

    /// What `who` may do to `repository`.
    pub fn allowed(&self, who: &Identity, repository: &str) -> Actions {
        // A mirror-baked image is read on its source's terms (and can never be written: see `pkgmirror`).
        let repository = crate::pkgmirror::source_of(repository);
        let mut set = Actions::NONE;
        for rule in &self.rules {
            if (set.union(rule.actions)) == set {
                continue;
            }
            if rule.subjects.iter().any(|s| self.applies(s, who))
                && rule.repositories.iter().any(|p| p.matches(repository))
            {
                set = set.union(rule.actions);
            }
        }
        set
    }

    pub fn may_list_catalog(&self, who: &Identity) -> bool {
        self.catalog.iter().any(|s| self.applies(s, who))
    }

    /// Whether any rule names someone other than `anonymous` (meaningless when an external issuer decides).
    pub fn names_users(&self) -> bool {
        self.rules
            .iter()
            .flat_map(|r| &r.subjects)
            .chain(&self.catalog)
            .any(|s| *s != Subject::Anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn pattern_grammar() {
        assert!(p("team/*").matches("team/app"));
        assert!(!p("team/*").matches("team/a/b"));
        assert!(!p("team/*").matches("team"));
        assert!(!p("team/*").matches("teams/app"));
        assert!(p("public/**").matches("public/a"));
        assert!(p("public/**").matches("public/a/b/c"));
        assert!(!p("public/**").matches("public"));
        assert!(!p("public/**").matches("publicity/a"));
        assert!(p("**").matches("a") && p("**").matches("a/b/c"));
        assert!(p("**/cache").matches("a/cache") && p("**/cache").matches("a/b/cache"));
        assert!(!p("**/cache").matches("cache"));
        assert!(p("a/**/z").matches("a/b/z") && p("a/**/z").matches("a/b/c/z") && !p("a/**/z").matches("a/z"));
        assert!(p("team-*/app").matches("team-x/app") && p("team-*/app").matches("team-/app"));
        assert!(!p("team-*/app").matches("tea-x/app"));
        assert!(p("*x*y*").matches("axbyc") && p("*x*y*").matches("xy") && !p("*x*y*").matches("yx"));
        assert!(p("a*a").matches("aa") && !p("a*a").matches("a"));
        assert!(p("exact/name").matches("exact/name") && !p("exact/name").matches("exact/name/x"));
        for bad in ["", "a//b", "/a", "a/", "A/b", "a/**x", "a/b c", "a/***"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn rules() -> Rules {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Rules::new(
            vec![
                Rule::parse(&s(&["alice"]), &s(&["team/*"]), &s(&["pull", "push"])).unwrap(),
                Rule::parse(&s(&["group:ci"]), &s(&["team/*"]), &s(&["pull"])).unwrap(),
                Rule::parse(&s(&["anonymous"]), &s(&["public/**"]), &s(&["pull"])).unwrap(),
                Rule::parse(&s(&["user:admin"]), &s(&["**"]), &s(&["*"])).unwrap(),
                Rule::parse(&s(&["authenticated"]), &s(&["shared/*"]), &s(&["pull"])).unwrap(),
            ],
            [("ci".to_owned(), vec!["bob".to_owned(), "carol".to_owned()])].into(),
            vec![Subject::User("admin".into())],
        )
        .unwrap()
    }

    #[test]
    fn rules_grant_and_deny_by_default() {
        let r = rules();
        let alice = Identity::User("alice".into());
        let bob = Identity::User("bob".into());
        let admin = Identity::User("admin".into());
        let eve = Identity::User("eve".into());
        let pull: Actions = [Action::Pull].into_iter().collect();
        let pull_push: Actions = [Action::Pull, Action::Push].into_iter().collect();
        assert_eq!(r.allowed(&alice, "team/app"), pull_push);
        assert_eq!(r.allowed(&alice, "team/app/sub"), Actions::NONE);
        assert_eq!(r.allowed(&bob, "team/app"), pull);
        assert_eq!(r.allowed(&bob, "public/x/y"), pull, "anonymous rules apply to everyone");
        assert_eq!(r.allowed(&Identity::Anonymous, "public/x"), pull);
        assert_eq!(r.allowed(&Identity::Anonymous, "team/app"), Actions::NONE);
        assert_eq!(r.allowed(&Identity::Anonymous, "shared/x"), Actions::NONE);
        assert_eq!(r.allowed(&eve, "shared/x"), pull);
        assert_eq!(r.allowed(&eve, "team/app"), Actions::NONE);
        assert_eq!(r.allowed(&admin, "any/thing/at/all"), Actions::ALL);
        assert!(r.may_list_catalog(&admin) && !r.may_list_catalog(&alice) && !r.may_list_catalog(&Identity::Anonymous));
    }

    #[test]
    fn bad_rules() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(Rule::parse(&s(&["alice"]), &s(&["a"]), &s(&["pul"])).is_err());
        assert!(Rule::parse(&s(&["bad:x"]), &s(&["a"]), &s(&["pull"])).is_err());
        assert!(Rule::parse(&s(&["group:"]), &s(&["a"]), &s(&["pull"])).is_err());
        assert!(Rule::parse(&s(&[]), &s(&["a"]), &s(&["pull"])).is_err());
        let undefined = Rule::parse(&s(&["group:nope"]), &s(&["a"]), &s(&["pull"])).unwrap();
        assert!(Rules::new(vec![undefined], BTreeMap::new(), vec![]).is_err());
    }

    /// A reference matcher: regex-free backtracking over characters, written independently of `glob`.
    fn naive_glob(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| naive_glob(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && naive_glob(rest, &s[1..]),
        }
    }

    fn naive(pattern: &str, name: &str) -> bool {
        fn go(p: &[&str], n: &[&str]) -> bool {
            match p.split_first() {
                None => n.is_empty(),
                Some((&"**", rest)) => (1..=n.len()).any(|k| go(rest, &n[k..])),
                Some((seg, rest)) => !n.is_empty() && naive_glob(seg.as_bytes(), n[0].as_bytes()) && go(rest, &n[1..]),
            }
        }
        let p: Vec<&str> = pattern.split('/').collect();
        let n: Vec<&str> = name.split('/').collect();
        go(&p, &n)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The matcher agrees with a naive reference on small alphabets (so matches actually happen).
        #[test]
        fn matcher_agrees_with_reference(
            pattern in "(\\*\\*|[ab*]{1,4})(/(\\*\\*|[ab*]{1,4})){0,3}",
            name in "[ab]{1,3}(/[ab]{1,3}){0,4}",
        ) {
            match Pattern::parse(&pattern) {
                Ok(parsed) => prop_assert_eq!(parsed.matches(&name), naive(&pattern, &name), "{} vs {}", pattern, name),
                // Refused only for a `**` that is not a whole segment.
                Err(_) => prop_assert!(pattern.split('/').any(|s| s != "**" && s.contains("**"))),
            }
        }

        /// Any string either parses or is refused; parsing and matching never panic.
        #[test]
        fn parser_never_panics(pattern in "\\PC{0,24}", name in "\\PC{0,24}") {
            if let Ok(p) = Pattern::parse(&pattern) {
                let _ = p.matches(&name);
            }
            let _ = Subject::parse(&pattern);
        }

        /// A literal pattern matches exactly its own name.
        #[test]
        fn literal_matches_itself(name in "[a-z0-9]{1,5}(/[a-z0-9._-]{1,5}){0,3}", other in "[a-z0-9]{1,5}(/[a-z0-9]{1,5}){0,3}") {
            let p = Pattern::parse(&name).unwrap();
            prop_assert!(p.matches(&name));
            prop_assert_eq!(p.matches(&other), other == name);
        }
    }
}
