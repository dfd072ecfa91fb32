//! `ring` as `jsonwebtoken`'s crypto provider: ECDSA and RSA signatures made and checked with the crypto already in
//! the tree through rustls, instead of a second crypto stack.

use super::*;

pub(super) fn rng() -> &'static SystemRandom {
    static RNG: std::sync::OnceLock<SystemRandom> = std::sync::OnceLock::new();
    RNG.get_or_init(SystemRandom::new)
}

enum RingSigningKey {
    Ecdsa(rsig::EcdsaKeyPair),
    Rsa(rsig::RsaKeyPair),
}

struct RingSigner {
    alg: Algorithm,
    key: RingSigningKey,
}

impl signature::Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        match &self.key {
            RingSigningKey::Ecdsa(k) => k
                .sign(rng(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            RingSigningKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&rsig::RSA_PKCS1_SHA256, rng(), msg, &mut sig)
                    .map_err(|_| signature::Error::new())?;
                Ok(sig)
            }
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn ring_signer(alg: &Algorithm, key: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    let der = key.as_bytes();
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => {
            let curve = if *alg == Algorithm::ES256 {
                &rsig::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &rsig::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            RingSigningKey::Ecdsa(
                rsig::EcdsaKeyPair::from_pkcs8(curve, der, rng()).map_err(|_| ErrorKind::InvalidEcdsaKey)?,
            )
        }
        Algorithm::RS256 => RingSigningKey::Rsa(
            rsig::RsaKeyPair::from_pkcs8(der)
                .or_else(|_| rsig::RsaKeyPair::from_der(der))
                .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?,
        ),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(RingSigner { alg: *alg, key }))
}

struct RingVerifier {
    alg: Algorithm,
    params: &'static dyn rsig::VerificationAlgorithm,
    key: DecodingKey,
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match self.key.kind() {
            jsonwebtoken::DecodingKeyKind::SecretOrDer(der) => {
                rsig::UnparsedPublicKey::new(self.params, der).verify(msg, sig).is_ok()
            }
            jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n, e } => {
                let Some(params) = rsa_params(self.alg) else {
                    return Err(signature::Error::new());
                };
                rsig::RsaPublicKeyComponents { n, e }.verify(params, msg, sig).is_ok()
            }
        };
        if ok { Ok(()) } else { Err(signature::Error::new()) }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn rsa_params(alg: Algorithm) -> Option<&'static rsig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &rsig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &rsig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &rsig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &rsig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &rsig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &rsig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn ring_verifier(alg: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    use jsonwebtoken::AlgorithmFamily as F;
    let params: &'static dyn rsig::VerificationAlgorithm = match (alg, key.family()) {
        (Algorithm::ES256, F::Ec) => &rsig::ECDSA_P256_SHA256_FIXED,
        (Algorithm::ES384, F::Ec) => &rsig::ECDSA_P384_SHA384_FIXED,
        (a, F::Rsa) => rsa_params(*a).ok_or(ErrorKind::InvalidAlgorithm)?,
        // HMAC and EdDSA are never accepted: a public key must never double as an HMAC secret.
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(RingVerifier {
        alg: *alg,
        params,
        key: key.clone(),
    }))
}

/// jsonwebtoken's crypto, done by ring. Installed (once per process) before any token is signed or checked.
pub static RING: CryptoProvider = CryptoProvider {
    signer_factory: ring_signer,
    verifier_factory: ring_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

pub(super) fn install_provider() {
    // Fails only when a provider is already installed (ours, or one another part of the process chose): either works.
    let _ = RING.install_default();
}
