//! The simulator's cryptography: key material, parsed keys, and the PKCS #11 mechanisms the
//! simulated HSM performs, all on aws-lc.
//!
//! # Design
//! - [`KeyMaterial`] is what the store seals: plain bytes, secrets in `Zeroizing` buffers, with a
//!   versioned serialisation ([`KeyMaterial::to_bytes`] / [`KeyMaterial::from_bytes`]).
//! - [`LoadedKey`] is built once from key material and cached by the HSM (it is `Send + Sync`,
//!   meant to live in an `Arc`): keys are parsed once, never per operation. Objects only some
//!   mechanisms need (the raw aws-lc key used for padding modes `aws-lc-rs` does not offer) are
//!   built lazily, once, on first use.
//! - Hash-and-sign with the common parameters runs on `aws-lc-rs` directly (`KeyPair::sign`,
//!   `sign_digest`); everything else goes through [`raw`], the only file with `unsafe`.
//! - Every failure is a `CK_RV` chosen as PKCS #11 3.0 says; no input makes this module panic.
//!
//! Operations are single-shot: the engine buffers multi-part input, or hashes it itself for a
//! hash-and-sign mechanism (the member contract's `mechanism::hash_of_hash_and_sign` says which
//! hash, and [`SignInput::Prehashed`] carries the digest).
//!
//! # What is here
//! - Keys: RSA (2048..=8192 bits), EC on P-256, P-384, P-521 and secp256k1 ([`Curve`]),
//!   Ed25519 (`CKK_EC_EDWARDS`, [`KeyMaterial::EdPrivate`] / [`KeyMaterial::EdPublic`]), secret
//!   keys (AES, generic).
//! - [`sign`] / [`verify`]: RSA PKCS #1 v1.5, PSS and raw; ECDSA (`CKM_ECDSA` over a digest of
//!   any length, `CKM_ECDSA_SHA1` .. `CKM_ECDSA_SHA512`); `CKM_EDDSA` (pure Ed25519); HMAC over
//!   SHA-1/SHA-2 and their `_GENERAL` forms; `CKM_AES_CMAC` and `CKM_AES_CMAC_GENERAL`.
//! - [`encrypt`] / [`decrypt`]: RSA PKCS #1 v1.5, OAEP and raw; AES GCM, CBC, CBC_PAD, ECB, CTR.
//! - [`wrap`] / [`unwrap`]: `CKM_AES_KEY_WRAP` (RFC 3394), `CKM_AES_KEY_WRAP_KWP` (RFC 5649),
//!   `CKM_RSA_PKCS_OAEP`; a private key travels as PKCS #8 ([`private_key_pkcs8`],
//!   [`load_private_pkcs8`]).
//! - Derivation: [`ecdh_derive`] (`CKM_ECDH1_DERIVE` with `CKD_NULL` or the X9.63 KDFs) and
//!   [`hkdf`] (`CKM_HKDF_DERIVE`).
//!
//! Mechanism parameters the C layer has no variant for arrive as [`MechParam::Raw`] bytes in the
//! native x86_64 layout (`CK_AES_CTR_PARAMS`, `CK_EDDSA_PARAMS`) and are parsed here.

mod der;
mod ec;
mod ed;
mod kdf;
mod material;
mod raw;
mod rsa;
mod sym;
mod wrap;

use std::os::raw::c_int;

use aws_lc_rs::digest;
use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::types::{MechParam, Mechanism, Rv, SignInput};

pub use ec::{ec_point_from_attr, ec_point_to_attr, ec_private_from_scalar, generate_ec};
pub use ed::{
    ed25519_params, ed25519_point_from_attr, ed25519_public_from_seed, generate_ed25519,
    ED25519_OID_DER,
};
pub use kdf::{ecdh_derive, hkdf, sp800_108_counter};
pub use material::KeyMaterial;
pub use rsa::{
    generate_rsa, generate_rsa_x931, rsa_private_from_components, rsa_public_components,
    RsaGenerated,
};
pub use wrap::{load_private_pkcs8, private_key_pkcs8, unwrap, wrap};

use hsmpool_member::curves::{P256_OID_DER, P384_OID_DER, P521_OID_DER, SECP256K1_OID_DER};
/// The hashes the mechanisms name: the member contract's (one table for every side).
pub(crate) use hsmpool_member::mechanism::{hash_of_hash_and_sign, Hash};
use hsmpool_member::mechanism::{lookup, Family};

/// A [`Hash`] on `aws-lc-rs`.
pub(crate) trait HashAlg {
    /// The `aws-lc-rs` digest algorithm.
    fn alg(self) -> &'static digest::Algorithm;
    /// Hashes `data`.
    fn digest(self, data: &[u8]) -> digest::Digest;
}

impl HashAlg for Hash {
    fn alg(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha224 => &digest::SHA224,
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
            Hash::Sha512 => &digest::SHA512,
        }
    }
    fn digest(self, data: &[u8]) -> digest::Digest {
        digest::digest(self.alg(), data)
    }
}

/// A named Weierstrass curve for ECDSA and ECDH (`CKK_EC`). Ed25519 is its own key kind
/// ([`KeyMaterial::EdPrivate`]). Every `match` on `Curve` is exhaustive, so adding a curve forces
/// each place that depends on the curve to decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    /// NIST P-256 (secp256r1, prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// secp256k1 (SEC 2).
    Secp256k1,
}

impl Curve {
    /// Every supported curve.
    pub const ALL: [Curve; 4] = [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1];

    /// The curve named by a `CKA_EC_PARAMS` value (a DER OBJECT IDENTIFIER): malformed DER or
    /// anything but an OID is `CKR_ATTRIBUTE_VALUE_INVALID`; a well-formed unknown OID is
    /// `CKR_CURVE_NOT_SUPPORTED`.
    pub fn from_ec_params(der: &[u8]) -> Result<Curve, Rv> {
        if der::parse_oid(der).is_none() {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        Curve::ALL
            .into_iter()
            .find(|c| c.ec_params_der() == der)
            .ok_or(CKR_CURVE_NOT_SUPPORTED)
    }

    /// The `CKA_EC_PARAMS` value of the curve: the DER OID of the named curve.
    pub fn ec_params_der(&self) -> &'static [u8] {
        match self {
            Curve::P256 => P256_OID_DER,
            Curve::P384 => P384_OID_DER,
            Curve::P521 => P521_OID_DER,
            Curve::Secp256k1 => SECP256K1_OID_DER,
        }
    }

    /// The length in bytes of a field element (and of each of `r` and `s` in a signature).
    pub fn field_bytes(&self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// The bit length of the group order (the key size PKCS #11 reports).
    pub fn order_bits(&self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 256,
            Curve::P384 => 384,
            Curve::P521 => 521,
        }
    }

    /// The length of an uncompressed point `04 || X || Y`.
    pub fn point_len(&self) -> usize {
        1 + 2 * self.field_bytes()
    }

    /// aws-lc's NID for the curve.
    pub(crate) fn nid(self) -> c_int {
        match self {
            Curve::P256 => raw::nid::P256,
            Curve::P384 => raw::nid::P384,
            Curve::P521 => raw::nid::P521,
            Curve::Secp256k1 => raw::nid::SECP256K1,
        }
    }

    /// The hash `aws-lc-rs` pairs with the curve for its fast signing path.
    pub(crate) fn natural_hash(self) -> Hash {
        match self {
            Curve::P256 | Curve::Secp256k1 => Hash::Sha256,
            Curve::P384 => Hash::Sha384,
            Curve::P521 => Hash::Sha512,
        }
    }
}

/// A key parsed once from its [`KeyMaterial`], ready for any number of operations on any number
/// of threads (`Send + Sync`; keep it in an `Arc`).
pub struct LoadedKey {
    /// The material the key was loaded from.
    material: KeyMaterial,
    /// The parsed form.
    parsed: Parsed,
}

/// The parsed form of each kind of key.
enum Parsed {
    /// Boxed: the per-hash HMAC key cache is large.
    Secret(Box<sym::SecretKey>),
    RsaPrivate(rsa::RsaPrivate),
    RsaPublic(rsa::RsaPublic),
    EcPrivate(ec::EcPrivate),
    EcPublic(ec::EcPublic),
    EdPrivate(ed::EdPrivate),
    EdPublic(ed::EdPublic),
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoadedKey({:?}, {} bits)",
            self.material,
            self.key_bits()
        )
    }
}

impl LoadedKey {
    /// Parses and checks key material; a key aws-lc rejects is `CKR_ATTRIBUTE_VALUE_INVALID`.
    pub fn load(material: KeyMaterial) -> Result<Self, Rv> {
        let parsed = match &material {
            KeyMaterial::Secret { value, .. } => {
                Parsed::Secret(Box::new(sym::SecretKey::new(value.len())))
            }
            KeyMaterial::RsaPrivate { pkcs8 } => Parsed::RsaPrivate(rsa::RsaPrivate::load(pkcs8)?),
            KeyMaterial::RsaPublic {
                modulus,
                public_exponent,
            } => Parsed::RsaPublic(rsa::RsaPublic::load(modulus, public_exponent)?),
            KeyMaterial::EcPrivate { curve, pkcs8 } => {
                Parsed::EcPrivate(ec::EcPrivate::load(*curve, pkcs8)?)
            }
            KeyMaterial::EcPublic { curve, point } => {
                Parsed::EcPublic(ec::EcPublic::load(*curve, point)?)
            }
            KeyMaterial::EdPrivate { seed } => Parsed::EdPrivate(ed::EdPrivate::load(seed)?),
            KeyMaterial::EdPublic { point } => Parsed::EdPublic(ed::EdPublic::load(point)?),
        };
        Ok(LoadedKey { material, parsed })
    }

    /// The material the key was loaded from.
    pub fn material(&self) -> &KeyMaterial {
        &self.material
    }

    /// The key size as PKCS #11 reports it: modulus bits (RSA), order bits (EC), 255 (Ed25519),
    /// length * 8 (secret keys).
    pub fn key_bits(&self) -> usize {
        match (&self.parsed, &self.material) {
            (Parsed::RsaPrivate(k), _) => k.bits(),
            (Parsed::RsaPublic(k), _) => k.bits(),
            (Parsed::EcPrivate(k), _) => k.curve().order_bits(),
            (Parsed::EcPublic(k), _) => k.curve().order_bits(),
            (Parsed::EdPrivate(_) | Parsed::EdPublic(_), _) => 255,
            (Parsed::Secret(_), KeyMaterial::Secret { value, .. }) => value.len().saturating_mul(8),
            (Parsed::Secret(_), _) => 0, // unreachable: load pairs Secret with Secret
        }
    }

    /// The RSA key (private or public) for a public-key operation.
    fn rsa_public_op(&self) -> Result<rsa::RsaRef<'_>, Rv> {
        match &self.parsed {
            Parsed::RsaPrivate(k) => Ok(rsa::RsaRef::Private(k)),
            Parsed::RsaPublic(k) => Ok(rsa::RsaRef::Public(k)),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// The RSA private key for a private-key operation.
    fn rsa_private(&self) -> Result<&rsa::RsaPrivate, Rv> {
        match &self.parsed {
            Parsed::RsaPrivate(k) => Ok(k),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// The EC key (private or public) for verification.
    fn ec_public_op(&self) -> Result<ec::EcRef<'_>, Rv> {
        match &self.parsed {
            Parsed::EcPrivate(k) => Ok(ec::EcRef::Private(k)),
            Parsed::EcPublic(k) => Ok(ec::EcRef::Public(k)),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// The EC private key for signing.
    fn ec_private(&self) -> Result<&ec::EcPrivate, Rv> {
        match &self.parsed {
            Parsed::EcPrivate(k) => Ok(k),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// The Ed25519 key (private or public) for verification.
    fn ed_public_op(&self) -> Result<ed::EdRef<'_>, Rv> {
        match &self.parsed {
            Parsed::EdPrivate(k) => Ok(ed::EdRef::Private(k)),
            Parsed::EdPublic(k) => Ok(ed::EdRef::Public(k)),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// The Ed25519 private key for signing.
    fn ed_private(&self) -> Result<&ed::EdPrivate, Rv> {
        match &self.parsed {
            Parsed::EdPrivate(k) => Ok(k),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// A secret key: its parsed form, key type and value.
    fn secret(&self) -> Result<(&sym::SecretKey, CK_KEY_TYPE, &[u8]), Rv> {
        match (&self.parsed, &self.material) {
            (Parsed::Secret(s), KeyMaterial::Secret { key_type, value }) => {
                Ok((s, *key_type, value.as_slice()))
            }
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }
}

/// Generates a secret key value of `len_bytes` random bytes (1..=1024 bytes, else
/// `CKR_KEY_SIZE_RANGE`).
pub fn generate_secret(len_bytes: usize) -> Result<Zeroizing<Vec<u8>>, Rv> {
    if !(1..=1024).contains(&len_bytes) {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    let mut v = Zeroizing::new(vec![0u8; len_bytes]);
    random(&mut v)?;
    Ok(v)
}

/// Fills `out` with random bytes from aws-lc's DRBG.
pub fn random(out: &mut [u8]) -> Result<(), Rv> {
    aws_lc_rs::rand::fill(out).map_err(|_| CKR_FUNCTION_FAILED)
}

/// The family of a mechanism that may do `function` (`CKF_SIGN`, ...), read from the member
/// contract's mechanism table: what the operations below dispatch on.
fn family(mech: CK_MECHANISM_TYPE, function: CK_FLAGS) -> Option<Family> {
    lookup(mech)
        .filter(|r| r.flags & function != 0)
        .map(|r| r.family)
}

/// Checks that a mechanism takes no parameter (`None`, or an empty raw parameter).
pub(crate) fn no_param(param: &MechParam) -> Result<(), Rv> {
    match param {
        MechParam::None => Ok(()),
        MechParam::Raw(r) if r.is_empty() => Ok(()),
        _ => Err(CKR_MECHANISM_PARAM_INVALID),
    }
}

/// Signs (or MACs) `input` with `key`.
///
/// For a hash-and-sign mechanism, [`SignInput::Message`] is hashed here and
/// [`SignInput::Prehashed`] is the digest (wrong length: `CKR_DATA_LEN_RANGE`). For the
/// mechanisms that sign what they are given (`CKM_RSA_PKCS`, `CKM_RSA_PKCS_PSS`, `CKM_ECDSA`,
/// `CKM_RSA_X_509`, `CKM_EDDSA`) both variants carry that data. HMAC and CMAC
/// (`CKM_AES_CMAC`, `CKM_AES_CMAC_GENERAL`) take only `Message`.
///
/// `CKM_EDDSA` is pure Ed25519: its parameter is none, or a raw `CK_EDDSA_PARAMS` with `phFlag`
/// false and no context (else `CKR_MECHANISM_PARAM_INVALID`). `CKM_ECDSA` takes a digest of any
/// length (truncated to the order's bit length, as ECDSA specifies).
pub fn sign(mech: &Mechanism, key: &LoadedKey, input: SignInput<'_>) -> Result<Vec<u8>, Rv> {
    match family(mech.mech, CKF_SIGN).ok_or(CKR_MECHANISM_INVALID)? {
        Family::Rsa => rsa::sign(mech, key.rsa_private()?, input),
        Family::Ec => ec::sign(mech, key.ec_private()?, input),
        Family::Ed => ed::sign(mech, key.ed_private()?, input),
        Family::Hmac => {
            let (s, _, value) = key.secret()?;
            sym::hmac_sign(mech, s, value, input)
        }
        Family::Cmac => {
            let (s, key_type, value) = key.secret()?;
            sym::cmac_sign(mech, s, key_type, value, input)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// Verifies `signature` over `input` (as for [`sign`]): `CKR_SIGNATURE_LEN_RANGE` when the
/// signature has the wrong length, `CKR_SIGNATURE_INVALID` when it does not verify.
pub fn verify(
    mech: &Mechanism,
    key: &LoadedKey,
    input: SignInput<'_>,
    signature: &[u8],
) -> Result<(), Rv> {
    match family(mech.mech, CKF_VERIFY).ok_or(CKR_MECHANISM_INVALID)? {
        Family::Rsa => rsa::verify(mech, key.rsa_public_op()?, input, signature),
        Family::Ec => ec::verify(mech, key.ec_public_op()?, input, signature),
        Family::Ed => ed::verify(mech, key.ed_public_op()?, input, signature),
        Family::Hmac => {
            let (s, _, value) = key.secret()?;
            sym::hmac_verify(mech, s, value, input, signature)
        }
        Family::Cmac => {
            let (s, key_type, value) = key.secret()?;
            sym::cmac_verify(mech, s, key_type, value, input, signature)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// The length of the signature [`sign`] would produce with this mechanism and key.
pub fn signature_len(mech: &Mechanism, key: &LoadedKey) -> Result<usize, Rv> {
    match family(mech.mech, CKF_SIGN).ok_or(CKR_MECHANISM_INVALID)? {
        Family::Rsa => Ok(key.rsa_public_op()?.modulus_len()),
        Family::Ec => Ok(2 * key.ec_public_op()?.curve().field_bytes()),
        Family::Ed => {
            key.ed_public_op()?;
            Ok(ed::SIG_LEN)
        }
        Family::Hmac => {
            key.secret()?;
            sym::hmac_len(mech)
        }
        Family::Cmac => {
            key.secret()?;
            sym::cmac_len(mech)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// Encrypts `data` with `key`: RSA (`CKM_RSA_PKCS`, `CKM_RSA_PKCS_OAEP`, `CKM_RSA_X_509`) with a
/// public or private key, AES (`CKM_AES_GCM` giving `ciphertext || tag`, `CKM_AES_CBC_PAD`,
/// `CKM_AES_CBC`, `CKM_AES_ECB`, `CKM_AES_CTR`).
///
/// `CKM_AES_CTR` takes a raw `CK_AES_CTR_PARAMS` (24 bytes: `ulCounterBits` u64 LE 1..=128, then
/// the counter block; else `CKR_MECHANISM_PARAM_INVALID`); data that would wrap the low
/// `ulCounterBits` bits of the counter is `CKR_DATA_LEN_RANGE` (`CKR_ENCRYPTED_DATA_LEN_RANGE`
/// when decrypting).
pub fn encrypt(mech: &Mechanism, key: &LoadedKey, data: &[u8]) -> Result<Vec<u8>, Rv> {
    match family(mech.mech, CKF_ENCRYPT).ok_or(CKR_MECHANISM_INVALID)? {
        Family::Rsa => rsa::encrypt(mech, key.rsa_public_op()?, data),
        Family::Aes => {
            let (sk, key_type, value) = key.secret()?;
            sym::aes_encrypt(sk, mech, key_type, value, data)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// [`encrypt`] into `out`, which must hold [`encrypt_len`] bytes (else `CKR_BUFFER_TOO_SMALL`);
/// the common AES-GCM case writes the ciphertext and tag there without an intermediate buffer.
/// Returns the length written.
pub fn encrypt_into(
    mech: &Mechanism,
    key: &LoadedKey,
    data: &[u8],
    out: &mut [u8],
) -> Result<usize, Rv> {
    if matches!(family(mech.mech, CKF_ENCRYPT), Some(Family::Aes)) {
        let (sk, key_type, value) = key.secret()?;
        if let Some(n) = sym::aes_gcm_seal_into(sk, mech, key_type, value, data, out)? {
            return Ok(n);
        }
    }
    let ct = encrypt(mech, key, data)?;
    let dst = out.get_mut(..ct.len()).ok_or(CKR_BUFFER_TOO_SMALL)?;
    dst.copy_from_slice(&ct);
    Ok(ct.len())
}

/// Decrypts `data` with `key` (the mechanisms of [`encrypt`]; RSA needs the private key). Any
/// failure to decrypt well-sized data is `CKR_ENCRYPTED_DATA_INVALID`, uniformly.
pub fn decrypt(mech: &Mechanism, key: &LoadedKey, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rv> {
    match family(mech.mech, CKF_DECRYPT).ok_or(CKR_MECHANISM_INVALID)? {
        Family::Rsa => rsa::decrypt(mech, key.rsa_private()?, data),
        Family::Aes => {
            let (sk, key_type, value) = key.secret()?;
            sym::aes_decrypt(sk, mech, key_type, value, data)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// An upper bound on the output of [`encrypt`] for `data_len` bytes of input (exact for every
/// mechanism here).
pub fn encrypt_len(mech: &Mechanism, key: &LoadedKey, data_len: usize) -> Result<usize, Rv> {
    match family(mech.mech, CKF_ENCRYPT).ok_or(CKR_MECHANISM_INVALID)? {
        Family::Rsa => Ok(key.rsa_public_op()?.modulus_len()),
        Family::Aes => {
            key.secret()?;
            sym::aes_encrypt_len(mech, data_len)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// An upper bound on the output of [`decrypt`] for `data_len` bytes of input.
pub fn decrypt_len(mech: &Mechanism, key: &LoadedKey, data_len: usize) -> Result<usize, Rv> {
    match family(mech.mech, CKF_DECRYPT).ok_or(CKR_MECHANISM_INVALID)? {
        Family::Rsa => Ok(key.rsa_private()?.modulus_len()),
        Family::Aes => {
            key.secret()?;
            sym::aes_decrypt_len(mech, data_len)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// The bit length of a big-endian unsigned integer.
pub(crate) fn be_bits(v: &[u8]) -> usize {
    let v = strip_leading_zeros(v);
    match v.first() {
        None => 0,
        Some(&b) => (v.len() - 1) * 8 + (8 - b.leading_zeros() as usize),
    }
}

/// A big-endian integer without its leading zero bytes.
pub(crate) fn strip_leading_zeros(v: &[u8]) -> &[u8] {
    let skip = v.iter().take_while(|b| **b == 0).count();
    &v[skip..]
}

#[cfg(test)]
mod ext_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wycheproof;
