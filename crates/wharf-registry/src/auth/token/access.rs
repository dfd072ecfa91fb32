//! Scopes (`repository:team/app:pull,push`) and the `access` claim of a token: what it grants.

use serde::{Deserialize, Serialize};

use crate::auth::rules::{Action, Actions};

/// One entry of a token's `access` claim (and of a requested scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

impl AccessEntry {
    /// The scope string a client asks for: `repository:team/app:pull,push`.
    pub fn scope(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// Parses one scope, `TYPE[(CLASS)]:NAME:ACTION[,ACTION...]` (the name may itself contain `:`, e.g. a host:port).
/// Only `repository` (valid repository names) and `registry:catalog` are understood; anything else is `None`.
pub fn parse_scope(s: &str) -> Option<AccessEntry> {
    let (kind, rest) = s.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    // `repository(plugin)`: the resource class is not used for access decisions.
    let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
    let ok = match kind {
        "repository" => wharf_oci::name::is_valid_repository(name),
        "registry" => name == "catalog",
        _ => false,
    };
    if !ok {
        return None;
    }
    let actions: Vec<String> = actions
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    Some(AccessEntry {
        kind: kind.to_owned(),
        name: name.to_owned(),
        actions,
    })
}

/// The repository actions an entry's action strings name (`*` is all of them; unknown ones are ignored).
pub fn actions_of(strings: &[String]) -> Actions {
    let mut set = Actions::NONE;
    for a in strings {
        if a == "*" {
            return Actions::ALL;
        }
        if let Some(a) = Action::parse(a) {
            set.insert(a);
        }
    }
    set
}

/// What a token's `access` claim grants on `repository`.
pub fn granted(access: &[AccessEntry], repository: &str) -> Actions {
    access
        .iter()
        .filter(|e| e.kind == "repository" && e.name == repository)
        .fold(Actions::NONE, |set, e| set.union(actions_of(&e.actions)))
}

/// Whether a token's `access` claim grants `registry:catalog:*`.
pub fn grants_catalog(access: &[AccessEntry]) -> bool {
    access
        .iter()
        .any(|e| e.kind == "registry" && e.name == "catalog" && e.actions.iter().any(|a| a == "*"))
}
