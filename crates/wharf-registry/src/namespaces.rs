//! Which repository a request really addresses when the registry also mirrors upstreams.
//!
//! Mirrored content lives under repository names that start with the upstream's name (`docker.io/library/alpine`).
//! A request reaches it three ways: by that name directly; with containerd's `?ns=<host>` query parameter; or, for
//! reads without `ns` (Docker's `registry-mirrors`), through the default upstream when no local repository of that
//! name exists. Writes are never sent to the default upstream implicitly, so pushes to new local repositories work.

use wharf_storage::RegistryStore;

/// An upstream as the router sees it: the name that prefixes its repositories, and other hosts that mean it.
#[derive(Debug, Clone, Default)]
pub struct Namespace {
    pub name: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    pub upstreams: Vec<Namespace>,
    /// Name of the upstream that answers reads without `ns` for repositories that are not local.
    pub default: Option<String>,
}

impl Namespaces {
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    fn find(&self, host: &str) -> Option<&Namespace> {
        self.upstreams
            .iter()
            .find(|u| u.name == host || u.aliases.iter().any(|a| a == host))
    }

    /// The repository name to use instead of `name`, if any.
    pub async fn resolve(&self, store: &dyn RegistryStore, name: &str, ns: Option<&str>, read: bool) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        // `pkgmirror/<preset>/<name>`: the source name resolves as any name does.
        if let Some((preset, source)) = crate::pkgmirror::split(name) {
            let resolved = Box::pin(self.resolve(store, source, ns, read)).await?;
            return Some(format!("{}{preset}/{resolved}", crate::pkgmirror::PREFIX));
        }
        if let Some((first, rest)) = name.split_once('/')
            && let Some(u) = self.find(first)
        {
            return (u.name != first).then(|| format!("{}/{rest}", u.name));
        }
        if let Some(ns) = ns {
            return self.find(ns).map(|u| format!("{}/{name}", u.name));
        }
        let default = self.default.as_ref().filter(|_| read)?;
        match store.tags(name).await {
            Ok(Some(_)) => None,
            _ => Some(format!("{default}/{name}")),
        }
    }
}
