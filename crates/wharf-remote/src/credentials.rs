//! Credentials for a registry: a username and password, or an identity token.

/// Username and password for basic auth, or for the token endpoint of a bearer challenge.
///
/// An *identity token* (Docker's `identitytoken`, an OAuth2 refresh token) is kept the way Docker's credential
/// helpers keep it: username [`IDENTITY_TOKEN_USER`] (`<token>`), the token as password. A bearer challenge is then
/// answered with an OAuth2 `refresh_token` grant (POST to the realm) instead of a GET with basic auth.
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

/// The username that marks the password as an identity token (Docker's credential-helper convention).
pub const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credentials {
    /// An identity token (OAuth2 refresh token) for the registry's token endpoint.
    pub fn from_identity_token(token: impl Into<String>) -> Credentials {
        Credentials {
            username: IDENTITY_TOKEN_USER.to_owned(),
            password: token.into(),
        }
    }

    /// The identity token, when these credentials are one.
    pub fn identity_token(&self) -> Option<&str> {
        (self.username == IDENTITY_TOKEN_USER).then_some(self.password.as_str())
    }

    /// `USER:PASSWORD` (skopeo's `--creds`).
    pub fn parse(s: &str) -> Option<Credentials> {
        let (u, p) = s.split_once(':')?;
        (!u.is_empty()).then(|| Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials() {
        let c = Credentials::parse("me:p:w").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("me", "p:w"));
        assert!(!format!("{c:?}").contains("p:w"));
        assert!(Credentials::parse(":x").is_none() && Credentials::parse("x").is_none());
        assert_eq!(c.identity_token(), None);
        let t = Credentials::from_identity_token("refresh");
        assert_eq!((t.username.as_str(), t.identity_token()), ("<token>", Some("refresh")));
    }
}
