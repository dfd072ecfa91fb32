//! Docker registry tokens: JWTs whose `access` claim lists what they grant (`{"type":"repository","name":"team/app",
//! "actions":["pull","push"]}`), signed by wharf itself ([`Issuer`]) or by an external token server and checked here
//! ([`Verifier`]).
//!
//! JWT encoding, decoding and claim validation (exp, nbf, iss, aud, leeway) come from `jsonwebtoken`, built without
//! a crypto backend of its own: the signatures are made and checked with `ring` (already in the tree through
//! rustls) by the small provider in `provider.rs`. Keys are PEM (`keys.rs`): EC P-256 (ES256) or P-384 (ES384), RSA
//! (RS256 when issuing; RS256/384/512 and PS256/384/512 when verifying). The header carries `kid` in the libtrust
//! format docker/distribution computes from a key, and `x5c` when the issuer's certificate is configured. What a
//! token grants is `access.rs`.

mod access;
mod keys;
mod provider;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self as rsig, KeyPair};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use access::{AccessEntry, actions_of, granted, grants_catalog, parse_scope};
pub use keys::libtrust_key_id;
use keys::*;
pub use provider::RING;
use provider::{install_provider, rng};

// ---------------------------------------------------------------------------------------------------------------
// Issuing
// ---------------------------------------------------------------------------------------------------------------

/// wharf's own token issuer: a private key, its key ID and optional certificate chain, and the token lifetime.
pub struct Issuer {
    alg: Algorithm,
    key: EncodingKey,
    kid: String,
    x5c: Option<Vec<String>>,
    /// The `iss` claim.
    pub issuer: String,
    pub expiry: Duration,
    /// The issuer's public key, to check the tokens it issued.
    public: PublicKey,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Issuer({:?}, kid {}, iss {:?})", self.alg, self.kid, self.issuer)
    }
}

/// A token and what the token endpoint says about it.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: String,
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: &'a [AccessEntry],
}

impl Issuer {
    /// From a PEM private key: PKCS#8 (`PRIVATE KEY`: EC P-256 → ES256, P-384 → ES384, RSA → RS256), SEC1
    /// (`EC PRIVATE KEY`, as `openssl ecparam -genkey` writes) or PKCS#1 (`RSA PRIVATE KEY`). `certificate_pem`, when
    /// given, is the key's certificate (then its chain) and is sent in each token's `x5c` header.
    pub fn from_pem(
        key_pem: &str,
        certificate_pem: Option<&str>,
        issuer: String,
        expiry: Duration,
    ) -> Result<Issuer, String> {
        install_provider();
        let sections = pem_sections(key_pem)?;
        let mut keys = sections.iter().filter(|(k, _)| {
            matches!(
                k,
                SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey
            )
        });
        let (kind, der) = keys
            .next()
            .ok_or("no private key in it (expected a PEM PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)")?;
        if keys.next().is_some() {
            return Err("more than one private key in it".into());
        }
        let (alg, pkcs8_or_pkcs1, public) = match kind {
            SectionKind::EcPrivateKey => {
                let pkcs8 = sec1_to_pkcs8(der)?;
                let (alg, public) = ec_key(&pkcs8)?;
                (alg, pkcs8, public)
            }
            SectionKind::RsaPrivateKey => {
                let k = rsig::RsaKeyPair::from_der(der).map_err(|e| format!("bad RSA key: {e}"))?;
                (
                    Algorithm::RS256,
                    der.clone(),
                    PublicKey::Rsa(k.public().as_ref().to_vec()),
                )
            }
            _ => {
                let (alg_id, _) = der::expect(der, der::SEQUENCE)
                    .and_then(|(seq, _)| der::expect(seq, der::INTEGER))
                    .and_then(|(_, rest)| der::expect(rest, der::SEQUENCE))
                    .ok_or("malformed PKCS#8 key")?;
                let (oid, _) = der::expect(alg_id, der::OID).ok_or("malformed PKCS#8 key")?;
                if oid == der::RSA {
                    let k = rsig::RsaKeyPair::from_pkcs8(der).map_err(|e| format!("bad RSA key: {e}"))?;
                    (
                        Algorithm::RS256,
                        der.clone(),
                        PublicKey::Rsa(k.public().as_ref().to_vec()),
                    )
                } else if oid == der::EC_PUBLIC_KEY {
                    let (alg, public) = ec_key(der)?;
                    (alg, der.clone(), public)
                } else {
                    return Err("unsupported key type (EC P-256/P-384 or RSA)".into());
                }
            }
        };
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&pkcs8_or_pkcs1),
            _ => EncodingKey::from_ec_der(&pkcs8_or_pkcs1),
        };
        let spki = spki_of(&public);
        let x5c = match certificate_pem {
            None => None,
            Some(pem) => {
                let certs: Vec<Vec<u8>> = pem_sections(pem)?
                    .into_iter()
                    .filter(|(k, _)| *k == SectionKind::Certificate)
                    .map(|(_, d)| d)
                    .collect();
                let leaf = certs.first().ok_or("the certificate file holds no CERTIFICATE")?;
                let leaf_spki = der::certificate_spki(leaf).ok_or("malformed certificate")?;
                if parse_spki(leaf_spki)? != public {
                    return Err("the certificate's public key is not the signing key's".into());
                }
                let b64 = base64::engine::general_purpose::STANDARD;
                Some(certs.iter().map(|c| b64.encode(c)).collect())
            }
        };
        Ok(Issuer {
            alg,
            key,
            kid: libtrust_key_id(&spki),
            x5c,
            issuer,
            expiry,
            public,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// Signs a token for `subject` ("" when anonymous) granting `access`, for `audience` (the service).
    pub fn issue(&self, subject: &str, audience: &str, access: &[AccessEntry]) -> Result<IssuedToken, String> {
        install_provider();
        let now = now_secs();
        let expires_in = self.expiry.as_secs().max(1);
        let mut jti = [0u8; 16];
        rng().fill(&mut jti).map_err(|_| "no randomness")?;
        let claims = IssuedClaims {
            iss: &self.issuer,
            sub: subject,
            aud: audience,
            exp: now + expires_in,
            nbf: now,
            iat: now,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            access,
        };
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.x5c = self.x5c.clone();
        let token = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| format!("cannot sign: {e}"))?;
        Ok(IssuedToken {
            access_token: token.clone(),
            token,
            expires_in,
            issued_at: crate::rfc3339::seconds(now),
        })
    }

    /// The key that checks this issuer's tokens.
    pub fn trusted_key(&self) -> TrustedKey {
        TrustedKey::from_public(&self.public)
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------------------------
// Verifying
// ---------------------------------------------------------------------------------------------------------------

/// A public key tokens may be signed with.
#[derive(Clone)]
pub struct TrustedKey {
    kid: String,
    key: DecodingKey,
    algorithms: &'static [Algorithm],
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({}, {:?})", self.kid, self.algorithms)
    }
}

impl TrustedKey {
    fn from_public(public: &PublicKey) -> TrustedKey {
        let (key, algorithms) = decoding_key(public);
        TrustedKey {
            kid: libtrust_key_id(&spki_of(public)),
            key,
            algorithms,
        }
    }

    /// Every `PUBLIC KEY` and `CERTIFICATE` in a PEM file (a bundle may hold several).
    pub fn from_pem(text: &str) -> Result<Vec<TrustedKey>, String> {
        let mut keys = Vec::new();
        for (kind, der) in pem_sections(text)? {
            let spki = match kind {
                SectionKind::PublicKey => der.as_slice(),
                SectionKind::Certificate => der::certificate_spki(&der).ok_or("malformed certificate")?,
                _ => continue,
            };
            keys.push(TrustedKey::from_public(&parse_spki(spki)?));
        }
        if keys.is_empty() {
            return Err("no PUBLIC KEY or CERTIFICATE in it".into());
        }
        Ok(keys)
    }

    pub fn key_id(&self) -> &str {
        &self.kid
    }
}

/// What a valid token says.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenClaims {
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
}

/// Why a token was refused (for the log; the client only learns that it was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token signed by an unknown key or with a bad signature")]
    BadSignature,
    #[error("token for another issuer or service")]
    WrongIssuerOrAudience,
    #[error("malformed token: {0}")]
    Malformed(String),
}

/// Checks tokens: signature by one of the trusted keys, `iss`, `aud` (the service), `exp`/`nbf` with leeway.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<TrustedKey>,
    issuer: String,
    service: String,
    leeway: u64,
}

impl Verifier {
    pub fn new(keys: Vec<TrustedKey>, issuer: String, service: String, leeway: Duration) -> Verifier {
        Verifier {
            keys,
            issuer,
            service,
            leeway: leeway.as_secs(),
        }
    }

    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        install_provider();
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        // Keys named by `kid` first, then every other key that can check this algorithm.
        let mut candidates: Vec<&TrustedKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .collect();
        if let Some(kid) = &header.kid {
            candidates.sort_by_key(|k| k.kid != *kid);
        }
        if candidates.is_empty() {
            return Err(TokenError::BadSignature);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.service]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = TokenError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<TokenClaims>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        // The signature checked out: the claims are what is wrong, whatever key we try.
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                            return Err(TokenError::WrongIssuerOrAudience);
                        }
                        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
                            return Err(TokenError::Malformed(format!("claim {c}")));
                        }
                        ErrorKind::Json(e) => return Err(TokenError::Malformed(e.to_string())),
                        _ => TokenError::BadSignature,
                    };
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::auth::rules::{Action, Actions};

    /// A fresh P-256 key as PKCS#8 PEM.
    pub fn ec_key_pem() -> String {
        let pkcs8 = rsig::EcdsaKeyPair::generate_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, rng()).unwrap();
        pem("PRIVATE KEY", pkcs8.as_ref())
    }

    pub fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    }

    /// `openssl genrsa 2048` (PKCS#1), made once for these tests.
    pub const RSA_KEY: &str = include_str!("testdata/rsa-2048.pem");
    /// `openssl ecparam -genkey -name prime256v1 -noout` (SEC1), with a self-signed certificate for it.
    const SEC1_KEY: &str = include_str!("testdata/ec-sec1.pem");
    const SEC1_CERT: &str = include_str!("testdata/ec-sec1.crt");
    /// `openssl ec -pubout` of SEC1_KEY.
    const SEC1_PUB: &str = include_str!("testdata/ec-sec1.pub");

    fn repo(name: &str, actions: &[&str]) -> AccessEntry {
        AccessEntry {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn issuer(pem: &str, expiry: u64) -> Issuer {
        Issuer::from_pem(pem, None, "wharf".into(), Duration::from_secs(expiry)).unwrap()
    }

    #[test]
    fn round_trip_es256_and_rs256() {
        for (pem, alg) in [(ec_key_pem(), Algorithm::ES256), (RSA_KEY.to_owned(), Algorithm::RS256)] {
            let iss = issuer(&pem, 60);
            assert_eq!(iss.algorithm(), alg);
            let access = vec![repo("team/app", &["pull", "push"])];
            let t = iss.issue("alice", "wharf", &access).unwrap();
            assert_eq!(t.token, t.access_token);
            assert_eq!(t.expires_in, 60);
            let v = Verifier::new(vec![iss.trusted_key()], "wharf".into(), "wharf".into(), Duration::ZERO);
            let claims = v.verify(&t.token).unwrap();
            assert_eq!(claims.sub, "alice");
            assert_eq!(claims.access, access);
            let header = jsonwebtoken::decode_header(&t.token).unwrap();
            assert_eq!((header.alg, header.kid.as_deref()), (alg, Some(iss.key_id())));
            // Another service, another issuer, another key: refused.
            let other = Verifier::new(vec![iss.trusted_key()], "wharf".into(), "other".into(), Duration::ZERO);
            assert_eq!(other.verify(&t.token).unwrap_err(), TokenError::WrongIssuerOrAudience);
            let other = Verifier::new(
                vec![iss.trusted_key()],
                "someone".into(),
                "wharf".into(),
                Duration::ZERO,
            );
            assert_eq!(other.verify(&t.token).unwrap_err(), TokenError::WrongIssuerOrAudience);
            let stranger = issuer(&ec_key_pem(), 60);
            let other = Verifier::new(
                vec![stranger.trusted_key()],
                "wharf".into(),
                "wharf".into(),
                Duration::ZERO,
            );
            assert_eq!(other.verify(&t.token).unwrap_err(), TokenError::BadSignature);
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let iss = issuer(&ec_key_pem(), 1);
        let t = iss.issue("alice", "wharf", &[]).unwrap();
        let v = Verifier::new(vec![iss.trusted_key()], "wharf".into(), "wharf".into(), Duration::ZERO);
        assert!(v.verify(&t.token).is_ok());
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(v.verify(&t.token).unwrap_err(), TokenError::Expired);
        let lenient = Verifier::new(
            vec![iss.trusted_key()],
            "wharf".into(),
            "wharf".into(),
            Duration::from_secs(30),
        );
        assert!(lenient.verify(&t.token).is_ok(), "within the leeway");
    }

    #[test]
    fn tampering_is_detected() {
        let iss = issuer(&ec_key_pem(), 60);
        let v = Verifier::new(vec![iss.trusted_key()], "wharf".into(), "wharf".into(), Duration::ZERO);
        let t = iss.issue("bob", "wharf", &[repo("team/app", &["pull"])]).unwrap().token;
        let parts: Vec<&str> = t.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["access"][0]["actions"] = serde_json::json!(["pull", "push"]);
        let forged = format!("{}.{}.{}", parts[0], b64.encode(claims.to_string()), parts[2]);
        assert_eq!(v.verify(&forged).unwrap_err(), TokenError::BadSignature);
        // alg=none, and HS256 keyed with the public key, are refused.
        let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(v.verify(&none).is_err());
        let hs = format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(v.verify(&hs).unwrap_err(), TokenError::BadSignature);
        assert!(matches!(v.verify("not.a.token").unwrap_err(), TokenError::Malformed(_)));
    }

    #[test]
    fn sec1_key_with_certificate_and_external_public_key() {
        let cert = std::str::from_utf8(SEC1_CERT.as_bytes()).unwrap();
        let iss = Issuer::from_pem(SEC1_KEY, Some(cert), "auth.example".into(), Duration::from_secs(60)).unwrap();
        let t = iss.issue("ci", "registry.example", &[]).unwrap().token;
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.x5c.as_ref().map(Vec::len), Some(1));
        // An external verifier that knows the issuer by its certificate, or by its public key.
        for pem in [SEC1_CERT, SEC1_PUB] {
            let keys = TrustedKey::from_pem(pem).unwrap();
            assert_eq!(keys[0].key_id(), iss.key_id());
            let v = Verifier::new(
                keys,
                "auth.example".into(),
                "registry.example".into(),
                Duration::from_secs(5),
            );
            assert_eq!(v.verify(&t).unwrap().sub, "ci");
        }
        // A certificate for another key is refused at startup.
        let other = ec_key_pem();
        let e = Issuer::from_pem(&other, Some(cert), "x".into(), Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("not the signing key"), "{e}");
        assert!(Issuer::from_pem(SEC1_PUB, None, "x".into(), Duration::from_secs(1)).is_err());
        assert!(
            TrustedKey::from_pem(&other).is_err(),
            "a private key is not a trusted key"
        );
    }

    #[test]
    fn key_id_matches_libtrust() {
        // Computed outside wharf: base32(sha256(`openssl ... -pubout -outform DER`)[..30]) in groups of 4.
        assert_eq!(
            TrustedKey::from_pem(SEC1_PUB).unwrap()[0].key_id(),
            "TJXD:IHKN:DTOY:UF75:Y7XF:OZKH:NFDN:WARS:MVK5:47GP:WBGG:GS6B"
        );
        assert_eq!(
            issuer(RSA_KEY, 1).key_id(),
            "G3UJ:FCSN:CSZW:YW3S:S4NT:UIZL:3UXQ:NIKA:D4FL:OOEO:4CGZ:IDB2"
        );
    }

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository:team/app:pull,push"),
            Some(repo("team/app", &["pull", "push"]))
        );
        assert_eq!(parse_scope("repository(plugin):a/b:pull"), Some(repo("a/b", &["pull"])));
        assert_eq!(
            parse_scope("repository:a:*").map(|e| actions_of(&e.actions)),
            Some(Actions::ALL)
        );
        let catalog = parse_scope("registry:catalog:*").unwrap();
        assert!(grants_catalog(&[catalog]));
        assert_eq!(parse_scope("repository:Bad:pull"), None);
        assert_eq!(parse_scope("registry:other:*"), None);
        assert_eq!(parse_scope("repository:a"), None);
        let access = [repo("a", &["pull"]), repo("a", &["delete"]), repo("b", &["*"])];
        assert_eq!(
            granted(&access, "a"),
            [Action::Pull, Action::Delete].into_iter().collect()
        );
        assert_eq!(granted(&access, "b"), Actions::ALL);
        assert_eq!(granted(&access, "c"), Actions::NONE);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Garbage never panics the verifier and is never accepted.
        #[test]
        fn garbage_tokens_are_refused(token in "[A-Za-z0-9_.=-]{0,200}") {
            let iss = test_issuer();
            let v = Verifier::new(vec![iss.trusted_key()], "wharf".into(), "wharf".into(), Duration::ZERO);
            prop_assert!(v.verify(&token).is_err());
        }

        /// Any flipped character of a valid token makes it invalid (or leaves it byte-identical in meaning:
        /// base64 padding bits), never valid with other claims.
        #[test]
        fn mutated_tokens_are_refused(pos in 0usize..400, c in "[A-Za-z0-9_.-]") {
            let iss = test_issuer();
            let v = Verifier::new(vec![iss.trusted_key()], "wharf".into(), "wharf".into(), Duration::ZERO);
            let t = iss.issue("alice", "wharf", &[repo("team/app", &["pull"])]).unwrap().token;
            let pos = pos % t.len();
            let mut bytes = t.clone().into_bytes();
            bytes[pos] = c.as_bytes()[0];
            let mutated = String::from_utf8(bytes).unwrap();
            if let Ok(claims) = v.verify(&mutated) {
                prop_assert_eq!(claims.sub, "alice");
                prop_assert_eq!(claims.access, vec![repo("team/app", &["pull"])]);
            }
        }

        /// Scope parsing never panics, and what it accepts names a valid repository or the catalog.
        #[test]
        fn scope_parser(s in "\\PC{0,60}") {
            if let Some(e) = parse_scope(&s) {
                prop_assert!(e.kind == "registry" && e.name == "catalog" || wharf_oci::name::is_valid_repository(&e.name));
            }
        }

        /// The DER reader never panics or reads out of bounds, whatever the bytes.
        #[test]
        fn der_reader(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = der::certificate_spki(&bytes);
            let _ = parse_spki(&bytes);
            let _ = sec1_to_pkcs8(&bytes);
            if let Some(tlv) = der::read(&bytes) {
                prop_assert!(tlv.contents.len() <= tlv.whole.len() && tlv.whole.len() + tlv.rest.len() == bytes.len());
            }
        }

        /// PEM-looking garbage is refused with a message, never a panic.
        #[test]
        fn pem_parser(body in "[A-Za-z0-9+/=\n]{0,200}", label in "(PRIVATE KEY|EC PRIVATE KEY|RSA PRIVATE KEY|PUBLIC KEY|CERTIFICATE)") {
            let text = format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n");
            let _ = Issuer::from_pem(&text, None, "x".into(), Duration::from_secs(1));
            let _ = TrustedKey::from_pem(&text);
        }
    }

    fn test_issuer() -> &'static Issuer {
        static ISSUER: std::sync::OnceLock<Issuer> = std::sync::OnceLock::new();
        ISSUER.get_or_init(|| issuer(&ec_key_pem(), 3600))
    }
}
