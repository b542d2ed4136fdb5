//! Elliptic curves: key generation and import, `CKA_EC_POINT` encoding, ECDSA (raw `r || s`
//! signatures, as PKCS #11 specifies).
//!
//! Curves: P-256, P-384, P-521 and secp256k1. Raw ECDH for key derivation is here too.
//!
//! Signing a digest of the curve's natural length (SHA-256 for P-256 and secp256k1, SHA-384 for
//! P-384, SHA-512 for P-521) runs on
//! the parsed `aws_lc_rs::signature::EcdsaKeyPair`; digests of any other length, and all
//! verification, use a raw aws-lc key.

use std::sync::OnceLock;

use aws_lc_rs::agreement;
use aws_lc_rs::digest::Digest;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::raw::{self, Pkey};
use super::{der, no_param, Curve, Hash, HashAlg};
use crate::types::{Mechanism, Rv, SignInput};

impl Curve {
    /// The aws-lc-rs signing algorithm of the fast path (natural hash, fixed `r || s`).
    fn signing_alg(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            Curve::P521 => &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
            Curve::Secp256k1 => &signature::ECDSA_P256K1_SHA256_FIXED_SIGNING,
        }
    }

    /// The aws-lc-rs ECDH algorithm (used to import a raw private scalar), where there is one.
    fn agreement_alg(self) -> Option<&'static agreement::Algorithm> {
        match self {
            Curve::P256 => Some(&agreement::ECDH_P256),
            Curve::P384 => Some(&agreement::ECDH_P384),
            Curve::P521 => Some(&agreement::ECDH_P521),
            Curve::Secp256k1 => None,
        }
    }
}

/// Generates an EC key on `curve`: `(PKCS #8 DER, uncompressed point 04 || X || Y)`.
pub fn generate_ec(curve: Curve) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), Rv> {
    let pair = EcdsaKeyPair::generate(curve.signing_alg()).map_err(|_| CKR_FUNCTION_FAILED)?;
    let pkcs8 = pair.to_pkcs8v1().map_err(|_| CKR_FUNCTION_FAILED)?;
    Ok((
        Zeroizing::new(pkcs8.as_ref().to_vec()),
        pair.public_key().as_ref().to_vec(),
    ))
}

/// Builds an EC private key from its scalar (`CKA_VALUE`, big-endian, at most the field length;
/// shorter is left-padded): `(PKCS #8 DER, point)`. A scalar of zero or not below the order is
/// `CKR_ATTRIBUTE_VALUE_INVALID`.
pub fn ec_private_from_scalar(
    curve: Curve,
    scalar: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), Rv> {
    let fb = curve.field_bytes();
    let scalar = super::strip_leading_zeros(scalar);
    if scalar.is_empty() || scalar.len() > fb {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    let pkcs8 = match curve.agreement_alg() {
        Some(alg) => {
            let mut padded = Zeroizing::new(vec![0u8; fb - scalar.len()]);
            padded.extend_from_slice(scalar);
            let key = agreement::PrivateKey::from_private_key(alg, &padded)
                .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
            let pkcs8: Pkcs8V1Der<'static> = key.as_der().map_err(|_| CKR_FUNCTION_FAILED)?;
            Zeroizing::new(pkcs8.as_ref().to_vec())
        }
        None => raw::ec_private_from_scalar(curve.nid(), scalar)
            .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?,
    };
    // Parse it back as a signing key: this both checks it and gives the point.
    let pair = EcdsaKeyPair::from_pkcs8(curve.signing_alg(), &pkcs8)
        .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    let point = pair.public_key().as_ref().to_vec();
    Ok((pkcs8, point))
}

/// Reads a `CKA_EC_POINT` value: the uncompressed point `04 || X || Y`, raw or wrapped in a DER
/// OCTET STRING. The point must be on `curve`, else `CKR_ATTRIBUTE_VALUE_INVALID`. Returns the
/// raw point.
pub fn ec_point_from_attr(curve: Curve, v: &[u8]) -> Result<Vec<u8>, Rv> {
    let point = if v.len() == curve.point_len() && v.first() == Some(&0x04) {
        v
    } else {
        der::parse_octet_string(v).ok_or(CKR_ATTRIBUTE_VALUE_INVALID)?
    };
    check_point(curve, point)?;
    Ok(point.to_vec())
}

/// The `CKA_EC_POINT` value of a point: the DER OCTET STRING wrapping it.
pub fn ec_point_to_attr(point: &[u8]) -> Vec<u8> {
    der::octet_string(point)
}

/// Checks an uncompressed point on `curve`, returning it as a raw key.
fn check_point(curve: Curve, point: &[u8]) -> Result<Pkey, Rv> {
    if point.len() != curve.point_len() || point.first() != Some(&0x04) {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    Pkey::ec_public(curve.nid(), point).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)
}

/// A parsed EC private key.
pub(crate) struct EcPrivate {
    curve: Curve,
    /// The aws-lc-rs key for the natural hash: the fast path.
    pair: EcdsaKeyPair,
    /// The PKCS #8 the key came from, for building `raw`.
    pkcs8: Zeroizing<Vec<u8>>,
    /// The raw aws-lc key for other digest lengths and for verification, parsed on first use.
    raw: OnceLock<Option<Pkey>>,
}

impl EcPrivate {
    /// Parses a PKCS #8 EC private key, which must be on `curve`.
    pub(crate) fn load(curve: Curve, pkcs8: &[u8]) -> Result<Self, Rv> {
        let pair = EcdsaKeyPair::from_pkcs8(curve.signing_alg(), pkcs8)
            .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
        Ok(EcPrivate {
            curve,
            pair,
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
            raw: OnceLock::new(),
        })
    }

    /// The curve.
    pub(crate) fn curve(&self) -> Curve {
        self.curve
    }

    /// The raw aws-lc key, parsed once.
    fn raw(&self) -> Result<&Pkey, Rv> {
        let nid = self.curve.nid();
        self.raw
            .get_or_init(|| {
                Pkey::parse_private(&self.pkcs8)
                    .ok()
                    .filter(|p| p.id() == raw::PKEY_EC && p.ec_nid() == Some(nid))
            })
            .as_ref()
            .ok_or(CKR_GENERAL_ERROR) // the same bytes parsed as an EcdsaKeyPair at load
    }

    /// Raw ECDH with an encoded peer point (`Z`, field-length bytes); a point not on the curve is
    /// `CKR_MECHANISM_PARAM_INVALID`.
    pub(crate) fn ecdh(&self, point: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rv> {
        self.raw()?
            .ecdh(point)
            .map_err(|_| CKR_MECHANISM_PARAM_INVALID)
    }

    /// Signs a digest of any non-zero length.
    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, Rv> {
        let natural = self.curve.natural_hash();
        if digest.len() == natural.len() {
            let d =
                Digest::import_less_safe(digest, natural.alg()).map_err(|_| CKR_GENERAL_ERROR)?;
            let sig = self.pair.sign_digest(&d).map_err(|_| CKR_FUNCTION_FAILED)?;
            return Ok(sig.as_ref().to_vec());
        }
        self.raw()?
            .ecdsa_sign(digest, self.curve.field_bytes())
            .map_err(|_| CKR_FUNCTION_FAILED)
    }
}

/// A parsed EC public key.
pub(crate) struct EcPublic {
    curve: Curve,
    raw: Pkey,
}

impl EcPublic {
    /// Checks the point is on the curve.
    pub(crate) fn load(curve: Curve, point: &[u8]) -> Result<Self, Rv> {
        Ok(EcPublic {
            curve,
            raw: check_point(curve, point)?,
        })
    }

    /// The curve.
    pub(crate) fn curve(&self) -> Curve {
        self.curve
    }
}

/// An EC key usable for verification.
pub(crate) enum EcRef<'a> {
    Private(&'a EcPrivate),
    Public(&'a EcPublic),
}

impl EcRef<'_> {
    /// The curve.
    pub(crate) fn curve(&self) -> Curve {
        match self {
            EcRef::Private(k) => k.curve,
            EcRef::Public(k) => k.curve,
        }
    }

    fn raw(&self) -> Result<&Pkey, Rv> {
        match self {
            EcRef::Private(k) => k.raw(),
            EcRef::Public(k) => Ok(&k.raw),
        }
    }
}

/// What an ECDSA mechanism signs: the message (to hash with `Hash`) or a digest.
enum Input<'a> {
    Message(Hash, &'a [u8]),
    Digest(&'a [u8]),
}

/// Checks the mechanism, parameter and input of an ECDSA operation.
fn input<'a>(mech: &Mechanism, input: SignInput<'a>) -> Result<Input<'a>, Rv> {
    no_param(&mech.param)?;
    match (mech.mech, input) {
        (CKM_ECDSA, SignInput::Message(d) | SignInput::Prehashed(d)) => {
            if d.is_empty() {
                return Err(CKR_DATA_LEN_RANGE);
            }
            Ok(Input::Digest(d))
        }
        (m, input) => {
            let hash = super::hash_of_hash_and_sign(m).ok_or(CKR_MECHANISM_INVALID)?;
            match input {
                SignInput::Message(msg) => Ok(Input::Message(hash, msg)),
                SignInput::Prehashed(d) if d.len() == hash.len() => Ok(Input::Digest(d)),
                SignInput::Prehashed(_) => Err(CKR_DATA_LEN_RANGE),
            }
        }
    }
}

/// Signs with an EC private key: `r || s`, each the curve's field length.
pub(crate) fn sign(
    mech: &Mechanism,
    key: &EcPrivate,
    sign_input: SignInput<'_>,
) -> Result<Vec<u8>, Rv> {
    match input(mech, sign_input)? {
        Input::Message(hash, msg) if hash == key.curve.natural_hash() => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let sig = key.pair.sign(&rng, msg).map_err(|_| CKR_FUNCTION_FAILED)?;
            Ok(sig.as_ref().to_vec())
        }
        Input::Message(hash, msg) => key.sign_digest(hash.digest(msg).as_ref()),
        Input::Digest(d) => key.sign_digest(d),
    }
}

/// Verifies an `r || s` ECDSA signature.
pub(crate) fn verify(
    mech: &Mechanism,
    key: EcRef<'_>,
    sign_input: SignInput<'_>,
    signature: &[u8],
) -> Result<(), Rv> {
    let input = input(mech, sign_input)?;
    if signature.len() != 2 * key.curve().field_bytes() {
        return Err(CKR_SIGNATURE_LEN_RANGE);
    }
    let digest;
    let d = match input {
        Input::Message(hash, msg) => {
            digest = hash.digest(msg);
            digest.as_ref()
        }
        Input::Digest(d) => d,
    };
    match key.raw()?.ecdsa_verify(d, signature) {
        Ok(true) => Ok(()),
        Ok(false) => Err(CKR_SIGNATURE_INVALID),
        Err(_) => Err(CKR_FUNCTION_FAILED),
    }
}
