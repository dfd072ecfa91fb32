//! `wharf serve`'s `[auth]` section, read and checked at startup: the htpasswd file (a line with an unsupported hash
//! stops the server with `file:line`), the rules and groups, the signing key or the external issuer's keys. Every
//! mistake is a startup error, never a registry that silently answers 401 (or is silently open).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use wharf_registry::auth::{Auth, Htpasswd, Issuer, Rule, Rules, Subject, TrustedKey, Verifier};

use crate::config::{self, AuthMode};

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("[auth] {what}: cannot read {}", path.display()))
}

fn users(path: &Path) -> anyhow::Result<Htpasswd> {
    if path.as_os_str().is_empty() {
        bail!("[auth] htpasswd: a users file is needed (bcrypt entries, as `htpasswd -B` writes them)");
    }
    let users = Htpasswd::parse(&read(path, "htpasswd")?, &path.display().to_string()).context("[auth] htpasswd")?;
    if users.is_empty() {
        tracing::warn!(file = %path.display(), "the htpasswd file has no users: only anonymous access will work");
    }
    Ok(users)
}

fn rules(a: &config::Auth) -> anyhow::Result<Rules> {
    let rules = a
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Rule::parse(&r.subjects, &r.repositories, &r.actions)
                .map_err(|e| anyhow::anyhow!("[[auth.rules]] number {}: {e}", i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let catalog = a
        .catalog
        .iter()
        .map(|s| Subject::parse(s).map_err(|e| anyhow::anyhow!("[auth] catalog: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Rules::new(rules, a.groups.clone(), catalog).map_err(|e| anyhow::anyhow!("[auth] {e}"))
}

/// The registry's [`Auth`], or `None` when `mode = "none"`. `https`: the server speaks TLS (for a derived realm).
pub fn build(a: &config::Auth, https: bool) -> anyhow::Result<Option<Auth>> {
    let t = &a.token;
    if a.mode == AuthMode::None {
        // Rules or users without a mode would leave the registry open while looking closed.
        let defaults = config::Auth::default();
        if *a != defaults {
            bail!(
                "[auth] has settings but mode = \"none\" (the registry would be open): set mode = \"htpasswd\" or \"token\""
            );
        }
        return Ok(None);
    }
    let rules = rules(a)?;
    if a.rules.is_empty() {
        tracing::warn!("[auth] has no rules: every request will be refused (access is denied unless a rule grants it)");
    }
    let service = if a.service.is_empty() {
        "wharf".to_owned()
    } else {
        a.service.clone()
    };
    let auth = match a.mode {
        AuthMode::None => unreachable!("handled above"),
        AuthMode::Htpasswd => {
            if !t.signing_key.as_os_str().is_empty() || !t.trusted_keys.as_os_str().is_empty() {
                bail!("[auth.token] is set but mode = \"htpasswd\": use mode = \"token\" for token authentication");
            }
            Auth::htpasswd(users(&a.htpasswd)?, rules, a.realm.clone())
        }
        AuthMode::Token => match (
            t.signing_key.as_os_str().is_empty(),
            t.trusted_keys.as_os_str().is_empty(),
        ) {
            (false, true) => {
                let key = read(&t.signing_key, "token.signing_key")?;
                let cert = if t.certificate.as_os_str().is_empty() {
                    None
                } else {
                    Some(read(&t.certificate, "token.certificate")?)
                };
                if t.expiry_secs < 60 {
                    // Docker's client raises a shorter `expires_in` to 60 s and keeps using the token until then:
                    // its requests would meet 401s (which it answers with a new token, at a cost) mid-pull.
                    tracing::warn!(
                        expiry_secs = t.expiry_secs,
                        "token expiry under 60 s: Docker assumes tokens live at least 60 s and will present expired ones"
                    );
                }
                let issuer_name = if t.issuer.is_empty() {
                    "wharf".to_owned()
                } else {
                    t.issuer.clone()
                };
                let issuer = Issuer::from_pem(
                    &key,
                    cert.as_deref(),
                    issuer_name,
                    Duration::from_secs(t.expiry_secs.max(1)),
                )
                .map_err(|e| anyhow::anyhow!("[auth] token.signing_key {}: {e}", t.signing_key.display()))?;
                tracing::info!(alg = ?issuer.algorithm(), kid = issuer.key_id(), "issuing tokens at /auth/token");
                let realm = (!a.realm.is_empty()).then(|| a.realm.clone());
                Auth::token_issuer(users(&a.htpasswd)?, issuer, rules, service, realm)
            }
            (true, false) => {
                if t.issuer.is_empty() {
                    bail!("[auth] token.issuer must name the external token issuer (the `iss` of its tokens)");
                }
                if !(a.realm.starts_with("https://") || a.realm.starts_with("http://")) {
                    bail!("[auth] realm must be the external token endpoint's URL (http:// or https://)");
                }
                if !a.htpasswd.as_os_str().is_empty() {
                    bail!("[auth] htpasswd is not used with an external token issuer: remove it");
                }
                let keys = TrustedKey::from_pem(&read(&t.trusted_keys, "token.trusted_keys")?)
                    .map_err(|e| anyhow::anyhow!("[auth] token.trusted_keys {}: {e}", t.trusted_keys.display()))?;
                if rules.names_users() {
                    tracing::warn!(
                        "[auth] rules that name users or groups have no effect with an external issuer (its tokens say \
                         what each user may do); only `anonymous` rules apply"
                    );
                }
                let verifier = Verifier::new(
                    keys,
                    t.issuer.clone(),
                    service.clone(),
                    Duration::from_secs(t.leeway_secs),
                );
                Auth::token_external(verifier, rules, service, a.realm.clone())
            }
            (true, true) => bail!(
                "[auth] mode = \"token\" needs token.signing_key (wharf issues tokens) or token.trusted_keys (an \
                 external issuer signs them)"
            ),
            (false, false) => bail!(
                "[auth] token.signing_key and token.trusted_keys are exclusive: wharf issues tokens, or trusts an issuer"
            ),
        },
    };
    tracing::info!(mode = auth.mode_name(), rules = a.rules.len(), "authentication on");
    Ok(Some(auth.with_https(https)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> config::Auth {
        crate::config::Config::parse(text).unwrap().auth
    }

    fn err(text: &str) -> String {
        format!("{:#}", build(&parse(text), false).unwrap_err())
    }

    #[test]
    fn startup_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let md5 = dir.path().join("users");
        std::fs::write(&md5, "# team\nok:$2y$05$DPkd05OuxG7MQ/pWDC6RMONuiRyQKBSOi1uSMDzTZPxaCsOkYRR0O\nold:$apr1$Vq1ZFk3h$CVwQdGWFSV.ZGoiUh4qN5.\n").unwrap();
        let e = err(&format!(
            "[auth]\nmode = \"htpasswd\"\nhtpasswd = {:?}\n",
            md5.display().to_string()
        ));
        assert!(
            e.contains(&format!("{}:3: user \"old\"", md5.display())) && e.contains("MD5"),
            "{e}"
        );
        assert!(err("[auth]\nmode = \"htpasswd\"\n").contains("a users file is needed"));
        assert!(err("[auth]\nrealm = \"x\"\n").contains("mode = \"none\""));
        assert!(err("[auth]\nmode = \"token\"\n").contains("needs token.signing_key"));
        let e = err("[auth]\nmode = \"token\"\n[auth.token]\ntrusted_keys = \"/k\"\n");
        assert!(e.contains("token.issuer"), "{e}");
        let e = err(
            "[auth]\nmode = \"htpasswd\"\n[[auth.rules]]\nsubjects = [\"a\"]\nrepositories = [\"A\"]\nactions = [\"pull\"]\n",
        );
        assert!(e.contains("[[auth.rules]] number 1") && e.contains("\"A\""), "{e}");
        let e = err(
            "[auth]\nmode = \"htpasswd\"\n[[auth.rules]]\nsubjects = [\"group:x\"]\nrepositories = [\"a\"]\nactions = [\"pull\"]\n",
        );
        assert!(e.contains("group \"x\""), "{e}");
        let missing = dir.path().join("missing");
        let e = err(&format!(
            "[auth]\nmode = \"htpasswd\"\nhtpasswd = {:?}\n",
            missing.display().to_string()
        ));
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
        assert!(build(&config::Auth::default(), false).unwrap().is_none());
    }
}
