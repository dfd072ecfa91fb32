//! Credentials, and (from `wharf_oci::auth`, shared with the mirror) `WWW-Authenticate` challenges and the bearer
//! token cache.

/// Username and password for basic auth, or for the token endpoint of a bearer challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl Credentials {
    /// `USER:PASSWORD` (skopeo's `--creds`).
    pub fn parse(s: &str) -> Option<Credentials> {
        let (u, p) = s.split_once(':')?;
        (!u.is_empty()).then(|| Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        })
    }
}

pub use wharf_oci::auth::{Challenge, TokenCache, parse_challenge};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        let c = Credentials::parse("me:p:w").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("me", "p:w"));
        assert!(!format!("{c:?}").contains("p:w"));
        assert!(Credentials::parse(":x").is_none() && Credentials::parse("x").is_none());
    }
}
