//! Users from an Apache htpasswd file. Only bcrypt hashes are supported (`$2a$`, `$2b$`, `$2y$`, as written by
//! `htpasswd -B`); any other format (MD5 `$apr1$`, `{SHA}`, crypt, plain text) is refused when the file is loaded,
//! with the file and line, instead of failing every login later.
//!
//! bcrypt is slow on purpose (milliseconds per check at cost 5, ~50 ms at cost 10), and clients with basic auth
//! send the password on every request: a check that succeeded is remembered for a minute, keyed by a SHA-256 of
//! user, password and hash (never the password itself), so a push does not pay for bcrypt on every blob.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The cost of the stand-in hash of a file without users.
const DEFAULT_COST: u32 = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{source_name}:{line}: {reason}")]
pub struct HtpasswdError {
    pub source_name: String,
    pub line: usize,
    pub reason: String,
}

pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: moka::sync::Cache<[u8; 32], ()>,
    /// Checked when the user does not exist, so an unknown user takes as long to refuse as a wrong password: made at
    /// the highest cost of the file's hashes (a fixed cheap one would tell by its speed which users exist).
    dummy: String,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Htpasswd({} users)", self.users.len())
    }
}

/// What kind of hash a line holds, for the error message when it is not bcrypt.
fn unsupported_kind(hash: &str) -> Option<&'static str> {
    if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") {
        return None;
    }
    Some(if hash.starts_with("$apr1$") {
        "an MD5 (apr1) hash"
    } else if hash.starts_with("{SHA}") {
        "a SHA-1 ({SHA}) hash"
    } else if hash.starts_with("$2x$") {
        "a $2x$ bcrypt hash (the variant with the old sign-extension bug)"
    } else if hash.starts_with("$1$") {
        "an MD5-crypt ($1$) hash"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "a SHA-crypt ($5$/$6$) hash"
    } else if hash.starts_with('$') {
        "an unknown $-prefixed hash"
    } else if hash.len() == 13 {
        "a DES crypt hash (or a plain-text password)"
    } else {
        "a plain-text password or an unknown hash"
    })
}

impl Htpasswd {
    /// Parses the file's text; `source_name` (the path) names the file in errors. Blank lines and `#` comments
    /// are skipped.
    pub fn parse(text: &str, source_name: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        let mut first_line = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: String| HtpasswdError {
                source_name: source_name.to_owned(),
                line,
                reason,
            };
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = entry.split_once(':') else {
                return Err(err("expected USER:HASH".into()));
            };
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            if let Some(kind) = unsupported_kind(hash) {
                return Err(err(format!(
                    "user {user:?} has {kind}; only bcrypt ($2a$, $2b$, $2y$) is supported: create it with `htpasswd -B`"
                )));
            }
            match bcrypt_cost(hash) {
                Some(4..=31) => {}
                _ => return Err(err(format!("user {user:?}: malformed bcrypt hash"))),
            }
            if let Some(first) = first_line.insert(user.to_owned(), line) {
                return Err(err(format!("user {user:?} is already defined on line {first}")));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        let cost = users
            .values()
            .filter_map(|h| bcrypt_cost(h))
            .max()
            .unwrap_or(DEFAULT_COST);
        let dummy = bcrypt::hash_with_salt("wharf: no such user", cost, [0x5a; 16])
            .map(|h| h.to_string())
            .map_err(|e| HtpasswdError {
                source_name: source_name.to_owned(),
                line: 0,
                reason: format!("cannot make the stand-in hash: {e}"),
            })?;
        Ok(Htpasswd {
            users,
            dummy,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Checks a password. Blocking (bcrypt): call it off the async threads.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            let _ = bcrypt::verify(password, &self.dummy);
            return false;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        if self.verified.contains_key(&key) {
            return true;
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok {
            self.verified.insert(key, ());
        }
        ok
    }
}

/// The cost of a well-formed bcrypt hash (60 characters: `$2?$NN$` and 53 of bcrypt's base64).
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let b = hash.as_bytes();
    if b.len() != 60
        || b[6] != b'$'
        || !b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
    {
        return None;
    }
    let cost = hash.get(4..6)?;
    if !cost.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    cost.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Written by `htpasswd -nbB alice wonderland` (Apache 2.4, `$2y$`, cost 5).
    const ALICE: &str = "alice:$2y$05$DPkd05OuxG7MQ/pWDC6RMONuiRyQKBSOi1uSMDzTZPxaCsOkYRR0O";

    #[test]
    fn apache_bcrypt_lines_verify() {
        let h = Htpasswd::parse(&format!("# users\n\n{ALICE}\n"), "users.htpasswd").unwrap();
        assert_eq!(h.len(), 1);
        assert!(h.verify("alice", "wonderland"));
        assert!(h.verify("alice", "wonderland"), "second time from the cache");
        assert!(!h.verify("alice", "Wonderland"));
        assert!(!h.verify("bob", "wonderland"));
        // $2b$ from the bcrypt crate, CRLF line endings.
        let b = bcrypt::hash("pw", 4).unwrap();
        let h = Htpasswd::parse(&format!("bob:{b}\r\n"), "x").unwrap();
        assert!(h.verify("bob", "pw") && !h.verify("bob", "pw "));
        assert!(
            Htpasswd::parse(&format!("carol:{}\n", b.replacen("$2b$", "$2a$", 1)), "x")
                .unwrap()
                .verify("carol", "pw")
        );
    }

    /// An unknown user is checked against a hash as costly as the dearest user's, so the time a refusal takes does
    /// not tell which users exist.
    #[test]
    fn unknown_users_cost_as_much_as_known_ones() {
        let dear = bcrypt::hash_with_salt("builder", 8, [7; 16]).unwrap().to_string();
        let h = Htpasswd::parse(&format!("{ALICE}\nbob:{dear}\n"), "users").unwrap();
        assert_eq!(bcrypt_cost(&h.dummy), Some(8));
        assert!(!h.verify("mallory", "builder") && h.verify("bob", "builder"));
        let empty = Htpasswd::parse("", "users").unwrap();
        assert_eq!(bcrypt_cost(&empty.dummy), Some(DEFAULT_COST));
    }

    #[test]
    fn unsupported_formats_name_file_and_line() {
        for (line, what) in [
            ("u:$apr1$Vq1ZFk3h$CVwQdGWFSV.ZGoiUh4qN5.", "MD5"),
            ("u:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("u:$1$abc$defghijklmnopqrstuvwx.", "MD5-crypt"),
            ("u:$6$salt$hash", "SHA-crypt"),
            ("u:rl4fKmWhP7Xj6", "DES crypt"),
            ("u:secret", "plain-text"),
            ("u:$2x$05$jzGzQ0xGAY6vOh1ZFeIXa.Hbb5ub7vrr2wIrs5YA/aMfV7UqA7x6i", "$2x$"),
        ] {
            let e = Htpasswd::parse(&format!("{ALICE}\n# c\n{line}\n"), "/etc/wharf/users").unwrap_err();
            assert_eq!((e.source_name.as_str(), e.line), ("/etc/wharf/users", 3), "{line}");
            let msg = e.to_string();
            assert!(msg.starts_with("/etc/wharf/users:3: user \"u\""), "{msg}");
            assert!(msg.contains(what) && msg.contains("htpasswd -B"), "{msg}");
            assert!(
                !msg.contains(line.split_once(':').unwrap().1),
                "no hash in the message: {msg}"
            );
        }
        let e = Htpasswd::parse("nocolon\n", "f").unwrap_err();
        assert_eq!(e.to_string(), "f:1: expected USER:HASH");
        let e = Htpasswd::parse(":$2y$05$jzGzQ0xGAY6vOh1ZFeIXa.Hbb5ub7vrr2wIrs5YA/aMfV7UqA7x6i", "f").unwrap_err();
        assert!(e.to_string().contains("empty user"));
        let e = Htpasswd::parse("u:$2y$05$short", "f").unwrap_err();
        assert!(e.to_string().contains("malformed bcrypt"), "{e}");
        let e = Htpasswd::parse("u:$2y$99$jzGzQ0xGAY6vOh1ZFeIXa.Hbb5ub7vrr2wIrs5YA/aMfV7UqA7x6i", "f").unwrap_err();
        assert!(e.to_string().contains("malformed bcrypt"), "{e}");
        let e = Htpasswd::parse(&format!("{ALICE}\n{ALICE}\n"), "f").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("already defined on line 1"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Any file either loads or names a line that exists; nothing panics, and a loaded user never verifies
        /// with a password whose hash it is not.
        #[test]
        fn parser_never_panics(text in "(\\PC{0,70}\n?){0,5}", pw in "\\PC{0,10}") {
            match Htpasswd::parse(&text, "f") {
                Ok(h) => {
                    for u in h.users.keys() {
                        let _ = h.verify(u, &pw);
                    }
                }
                Err(e) => prop_assert!(e.line >= 1 && e.line <= text.lines().count().max(1)),
            }
        }

        #[test]
        fn hash_like_lines_never_panic(cost in "(0[0-6]|[0-9a-z]{2})", rest in "[./A-Za-z0-9$]{50,56}", v in "(2a|2b|2y|2x|1|5)") {
            let line = format!("u:${v}${cost}${rest}");
            // Verify only at a cost that stays fast (bcrypt doubles its work per step).
            let cheap = cost.parse::<u32>().is_ok_and(|c| c <= 6);
            if let Ok(h) = Htpasswd::parse(&line, "f") && cheap {
                let _ = h.verify("u", "x");
            }
        }
    }
}
