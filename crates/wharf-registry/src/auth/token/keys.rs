//! Keys from PEM and certificates: just enough DER to find a public key and name it the way docker/distribution
//! does (libtrust's `kid`).

use super::*;

pub(super) mod der {
    pub const SEQUENCE: u8 = 0x30;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;

    pub const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    pub const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

    /// One TLV as read: its tag, its contents, the whole TLV, and what follows it.
    pub struct Tlv<'a> {
        pub tag: u8,
        pub contents: &'a [u8],
        pub whole: &'a [u8],
        pub rest: &'a [u8],
    }

    /// Reads one TLV. Definite lengths only, up to 4 length bytes.
    pub fn read(input: &[u8]) -> Option<Tlv<'_>> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let header = input.len() - rest.len();
        Some(Tlv {
            tag,
            contents: &rest[..len],
            whole: &input[..header + len],
            rest: &rest[len..],
        })
    }

    /// Reads a TLV that must have `tag`.
    pub fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let tlv = read(input)?;
        (tlv.tag == tag).then_some((tlv.contents, tlv.rest))
    }

    /// The SubjectPublicKeyInfo TLV of an X.509 certificate.
    pub fn certificate_spki(cert: &[u8]) -> Option<&[u8]> {
        let (cert, _) = expect(cert, SEQUENCE)?;
        let (tbs, _) = expect(cert, SEQUENCE)?;
        let mut rest = tbs;
        // [0] EXPLICIT version, optional.
        if rest.first() == Some(&0xa0) {
            rest = read(rest)?.rest;
        }
        // serialNumber, signature, issuer, validity, subject.
        for tag in [INTEGER, SEQUENCE, SEQUENCE, SEQUENCE, SEQUENCE] {
            rest = expect(rest, tag)?.1;
        }
        let spki = read(rest)?;
        (spki.tag == SEQUENCE).then_some(spki.whole)
    }

    pub fn encode(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(contents);
        out
    }
}

/// A public key as found in a SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PublicKey {
    /// Uncompressed point.
    P256(Vec<u8>),
    P384(Vec<u8>),
    /// PKCS#1 RSAPublicKey.
    Rsa(Vec<u8>),
}

pub(super) fn parse_spki(spki: &[u8]) -> Result<PublicKey, String> {
    let bad = || "malformed public key".to_owned();
    let (inner, _) = der::expect(spki, der::SEQUENCE).ok_or_else(bad)?;
    let (alg, rest) = der::expect(inner, der::SEQUENCE).ok_or_else(bad)?;
    let (bits, _) = der::expect(rest, der::BIT_STRING).ok_or_else(bad)?;
    let (oid, params) = der::expect(alg, der::OID).ok_or_else(bad)?;
    let key = match bits.split_first() {
        Some((0, key)) => key.to_vec(),
        _ => return Err(bad()),
    };
    if oid == der::RSA {
        return Ok(PublicKey::Rsa(key));
    }
    if oid == der::EC_PUBLIC_KEY {
        let (curve, _) = der::expect(params, der::OID).ok_or_else(bad)?;
        return match curve {
            c if c == der::P256 => Ok(PublicKey::P256(key)),
            c if c == der::P384 => Ok(PublicKey::P384(key)),
            _ => Err("unsupported elliptic curve (P-256 and P-384 are supported)".into()),
        };
    }
    Err("unsupported key type (EC P-256/P-384 and RSA are supported)".into())
}

pub(super) fn spki_of(key: &PublicKey) -> Vec<u8> {
    let (alg, bits) = match key {
        PublicKey::P256(point) => (
            [
                der::encode(der::OID, der::EC_PUBLIC_KEY),
                der::encode(der::OID, der::P256),
            ]
            .concat(),
            point,
        ),
        PublicKey::P384(point) => (
            [
                der::encode(der::OID, der::EC_PUBLIC_KEY),
                der::encode(der::OID, der::P384),
            ]
            .concat(),
            point,
        ),
        PublicKey::Rsa(pkcs1) => (
            [der::encode(der::OID, der::RSA), der::encode(der::NULL, &[])].concat(),
            pkcs1,
        ),
    };
    let bit_string = der::encode(der::BIT_STRING, &[&[0u8][..], bits].concat());
    der::encode(der::SEQUENCE, &[der::encode(der::SEQUENCE, &alg), bit_string].concat())
}

/// The key ID docker/distribution (libtrust) gives a public key: SHA-256 of its SubjectPublicKeyInfo, the first
/// 240 bits in base32, in groups of four joined by `:`.
pub fn libtrust_key_id(spki: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki);
    let mut chars = String::with_capacity(48);
    // 30 bytes = 240 bits = 48 base32 characters, no padding.
    for chunk in hash[..30].chunks(5) {
        let v = chunk.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64);
        for i in (0..8).rev() {
            chars.push(ALPHABET[((v >> (i * 5)) & 31) as usize] as char);
        }
    }
    let groups: Vec<&str> = (0..12).map(|i| &chars[i * 4..i * 4 + 4]).collect();
    groups.join(":")
}

pub(super) fn decoding_key(key: &PublicKey) -> (DecodingKey, &'static [Algorithm]) {
    match key {
        PublicKey::P256(p) => (DecodingKey::from_ec_der(p), &[Algorithm::ES256]),
        PublicKey::P384(p) => (DecodingKey::from_ec_der(p), &[Algorithm::ES384]),
        PublicKey::Rsa(k) => (
            DecodingKey::from_rsa_der(k),
            &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
        ),
    }
}

pub(super) fn pem_sections(text: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    if text.contains("ENCRYPTED PRIVATE KEY") {
        return Err("encrypted private keys are not supported (decrypt with `openssl pkcs8 -topk8 -nocrypt`)".into());
    }
    <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e:?}"))
}

pub(super) fn ec_key(pkcs8: &[u8]) -> Result<(Algorithm, PublicKey), String> {
    if let Ok(k) = rsig::EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, rng()) {
        return Ok((Algorithm::ES256, PublicKey::P256(k.public_key().as_ref().to_vec())));
    }
    match rsig::EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8, rng()) {
        Ok(k) => Ok((Algorithm::ES384, PublicKey::P384(k.public_key().as_ref().to_vec()))),
        Err(e) => Err(format!("bad EC key (P-256 or P-384, with its public key): {e}")),
    }
}

/// Wraps a SEC1 `ECPrivateKey` into PKCS#8, the form ring reads.
pub(super) fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, String> {
    let bad = || "malformed EC PRIVATE KEY".to_owned();
    let (inner, _) = der::expect(sec1, der::SEQUENCE).ok_or_else(bad)?;
    let (_, rest) = der::expect(inner, der::INTEGER).ok_or_else(bad)?;
    let (_, mut rest) = der::expect(rest, der::OCTET_STRING).ok_or_else(bad)?;
    let mut curve = None;
    while let Some(tlv) = der::read(rest) {
        if tlv.tag == 0xa0 {
            curve = der::expect(tlv.contents, der::OID).map(|(oid, _)| oid.to_vec());
        }
        rest = tlv.rest;
    }
    let curve = curve.ok_or("the EC PRIVATE KEY does not name its curve")?;
    let alg = [der::encode(der::OID, der::EC_PUBLIC_KEY), der::encode(der::OID, &curve)].concat();
    Ok(der::encode(
        der::SEQUENCE,
        &[
            der::encode(der::INTEGER, &[0]),
            der::encode(der::SEQUENCE, &alg),
            der::encode(der::OCTET_STRING, sec1),
        ]
        .concat(),
    ))
}
