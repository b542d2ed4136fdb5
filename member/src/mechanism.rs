//! The one mechanism table: what `C_GetMechanismList` lists, what `C_GetMechanismInfo` says,
//! which functions each mechanism may start, which key types and sizes it takes, and which
//! hash a hash-and-sign mechanism streams through. The README's table is checked against it.
//! The engine, the C guard, the simulator's crypto dispatch and its timing model all read it.
//!
//! Beside it, the hashes the mechanisms name ([`Hash`]) and the checks of the RSA parameters
//! that name them ([`pss_param`], [`oaep_param`]), so that every side refuses the same ones.
//!
//! AWS CloudHSM's vendor mechanisms are rows too (under their `CKM_CLOUDHSM_*` names), so that
//! programs written for CloudHSM's PKCS #11 library find them listed; what each does is in
//! [`crate::types::cloudhsm`] and the simulator's crypto modules.

use cryptoki_sys::*;

use crate::types::cloudhsm::{
    CKM_CLOUDHSM_AES_GCM, CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD, CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD,
    CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD, CKM_CLOUDHSM_SP800_108_COUNTER_KDF,
};
use crate::types::{MechParam, Mechanism, Rv};

/// The SHA-1 and SHA-2 hashes the mechanisms name (hash-and-sign, MGF1, OAEP, HMAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Hash {
    /// Every hash, shortest first.
    pub const ALL: [Hash; 5] = [
        Hash::Sha1,
        Hash::Sha224,
        Hash::Sha256,
        Hash::Sha384,
        Hash::Sha512,
    ];

    /// The hash of a `CKM_SHA*` digest mechanism.
    pub fn from_ckm(mech: CK_MECHANISM_TYPE) -> Option<Self> {
        match mech {
            CKM_SHA_1 => Some(Hash::Sha1),
            CKM_SHA224 => Some(Hash::Sha224),
            CKM_SHA256 => Some(Hash::Sha256),
            CKM_SHA384 => Some(Hash::Sha384),
            CKM_SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    /// The hash of a `CKG_MGF1_SHA*` mask generation function.
    pub fn from_mgf(mgf: CK_ULONG) -> Option<Self> {
        match mgf {
            CKG_MGF1_SHA1 => Some(Hash::Sha1),
            CKG_MGF1_SHA224 => Some(Hash::Sha224),
            CKG_MGF1_SHA256 => Some(Hash::Sha256),
            CKG_MGF1_SHA384 => Some(Hash::Sha384),
            CKG_MGF1_SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    /// The `CKM_SHA*` digest mechanism of this hash.
    pub fn ckm(self) -> CK_MECHANISM_TYPE {
        match self {
            Hash::Sha1 => CKM_SHA_1,
            Hash::Sha224 => CKM_SHA224,
            Hash::Sha256 => CKM_SHA256,
            Hash::Sha384 => CKM_SHA384,
            Hash::Sha512 => CKM_SHA512,
        }
    }

    /// The DER DigestInfo prefix for `hash` (PKCS #1 v1.5, RFC 8017 section 9.2 note 1): the digest
    /// follows it.
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha1 => &[
                0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
                0x14,
            ],
            Hash::Sha224 => &[
                0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x04, 0x05, 0x00, 0x04, 0x1c,
            ],
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }

    /// The digest length in bytes.
    #[allow(clippy::len_without_is_empty)] // a digest length, not a container
    pub fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
}

/// The hash of a hash-and-sign mechanism (`CKM_SHA256_RSA_PKCS`, `CKM_ECDSA_SHA384`, ...);
/// `None` for every other mechanism (HMAC included).
pub fn hash_of_hash_and_sign(mech: CK_MECHANISM_TYPE) -> Option<Hash> {
    lookup(mech).and_then(|r| r.hash).and_then(Hash::from_ckm)
}

/// The `CK_RSA_PKCS_PSS_PARAMS` of an RSA-PSS mechanism checked against a key of `key_bits`:
/// a known hash and MGF1 hash, the mechanism's own hash where it names one (`mech_hash`), a
/// salt the key's encoding has room for. Returns (hash, MGF1 hash, salt length), else
/// `CKR_MECHANISM_PARAM_INVALID`.
pub fn pss_param(
    param: &MechParam,
    mech_hash: Option<Hash>,
    key_bits: usize,
) -> Result<(Hash, Hash, usize), Rv> {
    let MechParam::Pss {
        hash,
        mgf,
        salt_len,
    } = param
    else {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    };
    let hash = Hash::from_ckm(*hash).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    let mgf1 = Hash::from_mgf(*mgf).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    if mech_hash.is_some_and(|h| h != hash) {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let salt_len = usize::try_from(*salt_len).map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
    // RFC 8017 9.1.1: emLen = ceil((modBits - 1) / 8) >= hLen + sLen + 2.
    let em_len = key_bits.saturating_sub(1).div_ceil(8);
    if em_len < hash.len() + 2 || salt_len > em_len - hash.len() - 2 {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    Ok((hash, mgf1, salt_len))
}

/// The `CK_RSA_PKCS_OAEP_PARAMS` of `CKM_RSA_PKCS_OAEP`: (hash, MGF1 hash, label), else
/// `CKR_MECHANISM_PARAM_INVALID`.
pub fn oaep_param(param: &MechParam) -> Result<(Hash, Hash, &[u8]), Rv> {
    let MechParam::Oaep { hash, mgf, label } = param else {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    };
    let hash = Hash::from_ckm(*hash).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    let mgf1 = Hash::from_mgf(*mgf).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    Ok((hash, mgf1, label))
}

/// Checks the PSS parameters of an RSA-PSS mechanism (`CKM_RSA_PKCS_PSS` or a
/// `CKM_SHA*_RSA_PKCS_PSS`) as signing and verifying will, so a caller can refuse them at
/// `C_SignInit` / `C_VerifyInit`, the only functions for which PKCS #11 lists
/// `CKR_MECHANISM_PARAM_INVALID`.
pub fn check_rsa_pss_param(mech: &Mechanism, key_bits: usize) -> Result<(), Rv> {
    pss_param(&mech.param, hash_of_hash_and_sign(mech.mech), key_bits).map(|_| ())
}

/// Checks `CK_RSA_PKCS_OAEP_PARAMS` as encryption, decryption and wrapping will.
pub fn check_rsa_oaep_param(mech: &Mechanism) -> Result<(), Rv> {
    oaep_param(&mech.param).map(|_| ())
}

/// The ciphertext length of an AES mechanism for `data_len` bytes of plaintext: the one rule
/// the engine (to answer a length query without a member call) and the simulator (to size its
/// output) share. `None` for a mechanism whose output depends on the key (RSA) or is not an
/// encryption, and for a GCM mechanism without a GCM parameter; the parameter's values are not
/// judged here (the member refuses a bad one).
pub fn encrypt_output_len(mech: &Mechanism, data_len: usize) -> Option<usize> {
    const BLOCK: usize = 16;
    match (mech.mech, &mech.param) {
        (CKM_AES_GCM, MechParam::Gcm { tag_bits, .. }) => {
            data_len.checked_add(usize::try_from(*tag_bits / 8).ok()?)
        }
        // CloudHSM's GCM puts the IV it makes in front of ciphertext and tag.
        (CKM_CLOUDHSM_AES_GCM, MechParam::Gcm { tag_bits, .. }) => data_len
            .checked_add(usize::try_from(*tag_bits / 8).ok()?)?
            .checked_add(crate::types::cloudhsm::GCM_IV_LEN),
        (CKM_AES_CBC_PAD, _) => (data_len / BLOCK).checked_add(1)?.checked_mul(BLOCK),
        (CKM_AES_CBC | CKM_AES_ECB | CKM_AES_CTR, _) => Some(data_len),
        _ => None,
    }
}

/// Units of a mechanism's key-size range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeUnit {
    /// Bits (RSA modulus, EC order, generic secrets).
    Bits,
    /// Bytes (AES, HMAC keys).
    Bytes,
}

/// One row.
#[derive(Clone, Copy, Debug)]
pub struct MechRow {
    /// The mechanism.
    pub mech: CK_MECHANISM_TYPE,
    /// Its name, as the spec spells it.
    pub name: &'static str,
    /// `ulMinKeySize`.
    pub min: CK_ULONG,
    /// `ulMaxKeySize`.
    pub max: CK_ULONG,
    /// Unit of `min`/`max`.
    pub unit: SizeUnit,
    /// `CKF_*` flags.
    pub flags: CK_FLAGS,
    /// Key types it takes.
    pub key_types: &'static [CK_KEY_TYPE],
    /// For hash-and-sign mechanisms: the hash, so multi-part input is hashed as it streams.
    pub hash: Option<CK_MECHANISM_TYPE>,
    /// Multi-part (`*Update`) allowed.
    pub multipart: bool,
    /// How its `CK_MECHANISM` parameter is laid out (the C guard parses it so).
    pub param: ParamKind,
    /// The kind of key and algorithm: what the simulator dispatches on and what its timing
    /// model classifies.
    pub family: Family,
}

/// How a mechanism's `pParameter` is laid out, for the C layer to parse it into a
/// [`MechParam`](crate::types::MechParam).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `CK_GCM_PARAMS` (3.0 layout, with `ulIvBits`).
    Gcm,
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss,
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    Oaep,
    /// An IV as raw bytes.
    Iv,
    /// A `CK_MAC_GENERAL_PARAMS` (one `CK_ULONG`).
    Ulong,
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh,
    /// `CK_HKDF_PARAMS`.
    Hkdf,
    /// AWS CloudHSM's `CKM_CLOUDHSM_AES_GCM`: a `CK_GCM_PARAMS` whose `pIv` must be NULL.
    CloudHsmGcm,
    /// AWS CloudHSM's `CK_SP800_108_KDF_PARAMS`.
    CloudHsmKdf,
    /// No parameter of a known layout: raw bytes for the member to judge (none at all for
    /// most; `CK_AES_CTR_PARAMS`, `CK_EDDSA_PARAMS` are parsed by the member).
    Other,
}

impl ParamKind {
    /// The layout of `mech`'s parameter: [`ParamKind::Other`] for a mechanism not in the
    /// table (which every function then refuses as `CKR_MECHANISM_INVALID`).
    pub fn of(mech: CK_MECHANISM_TYPE) -> ParamKind {
        lookup(mech).map_or(ParamKind::Other, |r| r.param)
    }
}

/// The kind of key and algorithm of a mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// RSA (`CKK_RSA`): PKCS #1 v1.5, PSS, OAEP, raw, key pair generation.
    Rsa,
    /// Weierstrass curves (`CKK_EC`): ECDSA, ECDH, key pair generation.
    Ec,
    /// Edwards curves (`CKK_EC_EDWARDS`): EdDSA, key pair generation.
    Ed,
    /// AES encryption modes and key generation.
    Aes,
    /// AES key wrapping (RFC 3394, 5649 and CloudHSM's).
    AesWrap,
    /// HMAC over a hash.
    Hmac,
    /// AES-CMAC.
    Cmac,
    /// Key derivation from a secret (HKDF, SP 800-108).
    Kdf,
    /// A digest.
    Digest,
    /// Generic secret generation.
    Secret,
}

impl Family {
    /// The family of `mech`, `None` for a mechanism not in the table.
    pub fn of(mech: CK_MECHANISM_TYPE) -> Option<Family> {
        lookup(mech).map(|r| r.family)
    }
}

const SV: CK_FLAGS = CKF_SIGN | CKF_VERIFY;
const ED: CK_FLAGS = CKF_ENCRYPT | CKF_DECRYPT;
const WU: CK_FLAGS = CKF_WRAP | CKF_UNWRAP;
const EC_FLAGS: CK_FLAGS = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
const RSA: &[CK_KEY_TYPE] = &[CKK_RSA];
const EC: &[CK_KEY_TYPE] = &[CKK_EC];
const EDWARDS: &[CK_KEY_TYPE] = &[CKK_EC_EDWARDS];
const AES: &[CK_KEY_TYPE] = &[CKK_AES];
const GENERIC: &[CK_KEY_TYPE] = &[CKK_GENERIC_SECRET];
const SECRET: &[CK_KEY_TYPE] = &[CKK_AES, CKK_GENERIC_SECRET];
const NONE: &[CK_KEY_TYPE] = &[];

#[allow(clippy::too_many_arguments)] // a table row reads best as one call
const fn row(
    mech: CK_MECHANISM_TYPE,
    name: &'static str,
    min: CK_ULONG,
    max: CK_ULONG,
    unit: SizeUnit,
    flags: CK_FLAGS,
    key_types: &'static [CK_KEY_TYPE],
    hash: Option<CK_MECHANISM_TYPE>,
    multipart: bool,
    param: ParamKind,
    family: Family,
) -> MechRow {
    MechRow {
        mech,
        name,
        min,
        max,
        unit,
        flags,
        key_types,
        hash,
        multipart,
        param,
        family,
    }
}

use Family::{Aes, AesWrap, Cmac, Digest, Ec, Ed, Hmac, Kdf, Rsa, Secret};
use ParamKind::{CloudHsmGcm, CloudHsmKdf, Ecdh, Gcm, Hkdf, Iv, Oaep, Other, Pss, Ulong};
use SizeUnit::{Bits, Bytes};

/// Every mechanism the engine offers.
#[rustfmt::skip]
pub static MECHANISMS: &[MechRow] = &[
    row(CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN", 2048, 8192, Bits, CKF_GENERATE_KEY_PAIR, RSA, None, false, Other, Rsa),
    // AWS CloudHSM's sizes: 2048 to 4096 bits in steps of 256 (FIPS 186-4 B.3.3 primes).
    row(CKM_RSA_X9_31_KEY_PAIR_GEN, "CKM_RSA_X9_31_KEY_PAIR_GEN", 2048, 4096, Bits, CKF_GENERATE_KEY_PAIR, RSA, None, false, Other, Rsa),
    row(CKM_RSA_PKCS, "CKM_RSA_PKCS", 2048, 8192, Bits, SV | ED, RSA, None, false, Other, Rsa),
    row(CKM_RSA_X_509, "CKM_RSA_X_509", 2048, 8192, Bits, SV | ED, RSA, None, false, Other, Rsa),
    row(CKM_SHA1_RSA_PKCS, "CKM_SHA1_RSA_PKCS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA_1), true, Other, Rsa),
    row(CKM_SHA224_RSA_PKCS, "CKM_SHA224_RSA_PKCS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA224), true, Other, Rsa),
    row(CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA256), true, Other, Rsa),
    row(CKM_SHA384_RSA_PKCS, "CKM_SHA384_RSA_PKCS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA384), true, Other, Rsa),
    row(CKM_SHA512_RSA_PKCS, "CKM_SHA512_RSA_PKCS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA512), true, Other, Rsa),
    row(CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS", 2048, 8192, Bits, SV, RSA, None, false, Pss, Rsa),
    row(CKM_SHA1_RSA_PKCS_PSS, "CKM_SHA1_RSA_PKCS_PSS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA_1), true, Pss, Rsa),
    row(CKM_SHA224_RSA_PKCS_PSS, "CKM_SHA224_RSA_PKCS_PSS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA224), true, Pss, Rsa),
    row(CKM_SHA256_RSA_PKCS_PSS, "CKM_SHA256_RSA_PKCS_PSS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA256), true, Pss, Rsa),
    row(CKM_SHA384_RSA_PKCS_PSS, "CKM_SHA384_RSA_PKCS_PSS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA384), true, Pss, Rsa),
    row(CKM_SHA512_RSA_PKCS_PSS, "CKM_SHA512_RSA_PKCS_PSS", 2048, 8192, Bits, SV, RSA, Some(CKM_SHA512), true, Pss, Rsa),
    row(CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", 2048, 8192, Bits, ED | WU, RSA, None, false, Oaep, Rsa),
    row(CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN", 256, 521, Bits, CKF_GENERATE_KEY_PAIR | EC_FLAGS, EC, None, false, Other, Ec),
    row(CKM_ECDSA, "CKM_ECDSA", 256, 521, Bits, SV | EC_FLAGS, EC, None, false, Other, Ec),
    row(CKM_ECDSA_SHA1, "CKM_ECDSA_SHA1", 256, 521, Bits, SV | EC_FLAGS, EC, Some(CKM_SHA_1), true, Other, Ec),
    row(CKM_ECDSA_SHA224, "CKM_ECDSA_SHA224", 256, 521, Bits, SV | EC_FLAGS, EC, Some(CKM_SHA224), true, Other, Ec),
    row(CKM_ECDSA_SHA256, "CKM_ECDSA_SHA256", 256, 521, Bits, SV | EC_FLAGS, EC, Some(CKM_SHA256), true, Other, Ec),
    row(CKM_ECDSA_SHA384, "CKM_ECDSA_SHA384", 256, 521, Bits, SV | EC_FLAGS, EC, Some(CKM_SHA384), true, Other, Ec),
    row(CKM_ECDSA_SHA512, "CKM_ECDSA_SHA512", 256, 521, Bits, SV | EC_FLAGS, EC, Some(CKM_SHA512), true, Other, Ec),
    row(CKM_EC_EDWARDS_KEY_PAIR_GEN, "CKM_EC_EDWARDS_KEY_PAIR_GEN", 255, 255, Bits, CKF_GENERATE_KEY_PAIR, EDWARDS, None, false, Other, Ed),
    row(CKM_EDDSA, "CKM_EDDSA", 255, 255, Bits, SV, EDWARDS, None, true, Other, Ed),
    row(CKM_ECDH1_DERIVE, "CKM_ECDH1_DERIVE", 256, 521, Bits, CKF_DERIVE | EC_FLAGS, EC, None, false, Ecdh, Ec),
    row(CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN", 16, 32, Bytes, CKF_GENERATE, AES, None, false, Other, Aes),
    row(CKM_AES_ECB, "CKM_AES_ECB", 16, 32, Bytes, ED, AES, None, true, Other, Aes),
    row(CKM_AES_CBC, "CKM_AES_CBC", 16, 32, Bytes, ED, AES, None, true, Iv, Aes),
    row(CKM_AES_CBC_PAD, "CKM_AES_CBC_PAD", 16, 32, Bytes, ED, AES, None, true, Iv, Aes),
    row(CKM_AES_CTR, "CKM_AES_CTR", 16, 32, Bytes, ED, AES, None, true, Other, Aes),
    row(CKM_AES_GCM, "CKM_AES_GCM", 16, 32, Bytes, ED, AES, None, true, Gcm, Aes),
    row(CKM_AES_CMAC, "CKM_AES_CMAC", 16, 32, Bytes, SV, AES, None, true, Other, Cmac),
    row(CKM_AES_CMAC_GENERAL, "CKM_AES_CMAC_GENERAL", 16, 32, Bytes, SV, AES, None, true, Ulong, Cmac),
    row(CKM_AES_KEY_WRAP, "CKM_AES_KEY_WRAP", 16, 32, Bytes, WU, AES, None, false, Other, AesWrap),
    row(CKM_AES_KEY_WRAP_KWP, "CKM_AES_KEY_WRAP_KWP", 16, 32, Bytes, WU, AES, None, false, Other, AesWrap),
    // Single-part only: the IV is made per call and leads the output.
    row(CKM_CLOUDHSM_AES_GCM, "CKM_CLOUDHSM_AES_GCM", 16, 32, Bytes, ED, AES, None, false, CloudHsmGcm, Aes),
    row(CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD, "CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD", 16, 32, Bytes, WU, AES, None, false, Other, AesWrap),
    row(CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD, "CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD", 16, 32, Bytes, WU, AES, None, false, Other, AesWrap),
    row(CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD, "CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD", 16, 32, Bytes, WU, AES, None, false, Other, AesWrap),
    row(CKM_GENERIC_SECRET_KEY_GEN, "CKM_GENERIC_SECRET_KEY_GEN", 8, 4096, Bits, CKF_GENERATE, GENERIC, None, false, Other, Secret),
    row(CKM_SHA_1_HMAC, "CKM_SHA_1_HMAC", 1, 512, Bytes, SV, GENERIC, None, true, Other, Hmac),
    row(CKM_SHA_1_HMAC_GENERAL, "CKM_SHA_1_HMAC_GENERAL", 1, 512, Bytes, SV, GENERIC, None, true, Ulong, Hmac),
    row(CKM_SHA224_HMAC, "CKM_SHA224_HMAC", 1, 512, Bytes, SV, GENERIC, None, true, Other, Hmac),
    row(CKM_SHA224_HMAC_GENERAL, "CKM_SHA224_HMAC_GENERAL", 1, 512, Bytes, SV, GENERIC, None, true, Ulong, Hmac),
    row(CKM_SHA256_HMAC, "CKM_SHA256_HMAC", 1, 512, Bytes, SV, GENERIC, None, true, Other, Hmac),
    row(CKM_SHA256_HMAC_GENERAL, "CKM_SHA256_HMAC_GENERAL", 1, 512, Bytes, SV, GENERIC, None, true, Ulong, Hmac),
    row(CKM_SHA384_HMAC, "CKM_SHA384_HMAC", 1, 512, Bytes, SV, GENERIC, None, true, Other, Hmac),
    row(CKM_SHA384_HMAC_GENERAL, "CKM_SHA384_HMAC_GENERAL", 1, 512, Bytes, SV, GENERIC, None, true, Ulong, Hmac),
    row(CKM_SHA512_HMAC, "CKM_SHA512_HMAC", 1, 512, Bytes, SV, GENERIC, None, true, Other, Hmac),
    row(CKM_SHA512_HMAC_GENERAL, "CKM_SHA512_HMAC_GENERAL", 1, 512, Bytes, SV, GENERIC, None, true, Ulong, Hmac),
    row(CKM_HKDF_DERIVE, "CKM_HKDF_DERIVE", 1, 512, Bytes, CKF_DERIVE, GENERIC, None, false, Hkdf, Kdf),
    row(CKM_HKDF_DATA, "CKM_HKDF_DATA", 1, 512, Bytes, CKF_DERIVE, GENERIC, None, false, Hkdf, Kdf),
    row(CKM_CLOUDHSM_SP800_108_COUNTER_KDF, "CKM_CLOUDHSM_SP800_108_COUNTER_KDF", 1, 512, Bytes, CKF_DERIVE, SECRET, None, false, CloudHsmKdf, Kdf),
    row(CKM_SHA_1, "CKM_SHA_1", 0, 0, Bytes, CKF_DIGEST, NONE, None, true, Other, Digest),
    row(CKM_SHA224, "CKM_SHA224", 0, 0, Bytes, CKF_DIGEST, NONE, None, true, Other, Digest),
    row(CKM_SHA256, "CKM_SHA256", 0, 0, Bytes, CKF_DIGEST, NONE, None, true, Other, Digest),
    row(CKM_SHA384, "CKM_SHA384", 0, 0, Bytes, CKF_DIGEST, NONE, None, true, Other, Digest),
    row(CKM_SHA512, "CKM_SHA512", 0, 0, Bytes, CKF_DIGEST, NONE, None, true, Other, Digest),
    row(CKM_SHA3_224, "CKM_SHA3_224", 0, 0, Bytes, CKF_DIGEST, NONE, None, true, Other, Digest),
    row(CKM_SHA3_256, "CKM_SHA3_256", 0, 0, Bytes, CKF_DIGEST, NONE, None, true, Other, Digest),
    row(CKM_SHA3_384, "CKM_SHA3_384", 0, 0, Bytes, CKF_DIGEST, NONE, None, true, Other, Digest),
    row(CKM_SHA3_512, "CKM_SHA3_512", 0, 0, Bytes, CKF_DIGEST, NONE, None, true, Other, Digest),
];

/// The row of a mechanism.
pub fn lookup(mech: CK_MECHANISM_TYPE) -> Option<&'static MechRow> {
    MECHANISMS.iter().find(|r| r.mech == mech)
}

impl MechRow {
    /// This row narrowed to what another list offers for the same mechanism (`other`): the
    /// functions both have, the key sizes both take; `None` when nothing is left.
    pub fn narrowed(&self, other: &MechRow) -> Option<MechRow> {
        const FUNCTIONS: CK_FLAGS = CKF_ENCRYPT
            | CKF_DECRYPT
            | CKF_DIGEST
            | CKF_SIGN
            | CKF_VERIFY
            | CKF_GENERATE
            | CKF_GENERATE_KEY_PAIR
            | CKF_WRAP
            | CKF_UNWRAP
            | CKF_DERIVE;
        let functions = self.flags & other.flags & FUNCTIONS;
        let (min, max) = (self.min.max(other.min), self.max.min(other.max));
        (functions != 0 && min <= max).then_some(MechRow {
            flags: (self.flags & !FUNCTIONS) | functions,
            min,
            max,
            ..*self
        })
    }

    /// The mechanisms every list offers (each `None` is the whole table), narrowed row by row;
    /// digests, which the engine computes itself, stay whatever the members say.
    pub fn common(lists: &[Option<Vec<MechRow>>]) -> Vec<MechRow> {
        MECHANISMS
            .iter()
            .filter_map(|row| {
                if row.family == Family::Digest {
                    return Some(*row);
                }
                lists.iter().try_fold(*row, |acc, list| match list {
                    None => Some(acc),
                    Some(l) => l.iter().find(|r| r.mech == acc.mech)?.narrowed(&acc),
                })
            })
            .collect()
    }

    /// Whether a key of `bits` bits fits the size range.
    pub fn size_ok(&self, bits: usize) -> bool {
        let size = match self.unit {
            SizeUnit::Bits => bits,
            SizeUnit::Bytes => bits / 8,
        };
        let Ok(size) = CK_ULONG::try_from(size) else {
            return false;
        };
        self.min <= size && size <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mechanism_appears_once_and_has_a_function() {
        for (i, r) in MECHANISMS.iter().enumerate() {
            assert!(
                MECHANISMS[i + 1..].iter().all(|o| o.mech != r.mech),
                "{} listed twice",
                r.name
            );
            assert!(
                r.flags
                    & (SV
                        | ED
                        | WU
                        | CKF_DERIVE
                        | CKF_DIGEST
                        | CKF_GENERATE
                        | CKF_GENERATE_KEY_PAIR)
                    != 0,
                "{} does nothing",
                r.name
            );
            assert!(r.min <= r.max, "{} has an empty size range", r.name);
        }
    }

    #[test]
    fn the_common_list_narrows_functions_and_sizes_and_keeps_digests() {
        let rsa = *lookup(CKM_RSA_PKCS).unwrap();
        let member = vec![MechRow {
            flags: CKF_SIGN | CKF_VERIFY,
            min: 3072,
            max: 16384,
            ..rsa
        }];
        let common = MechRow::common(&[None, Some(member)]);
        let r = common.iter().find(|r| r.mech == CKM_RSA_PKCS).unwrap();
        assert_eq!((r.min, r.max), (3072, 8192));
        assert_eq!(r.flags, CKF_SIGN | CKF_VERIFY);
        assert!(common
            .iter()
            .all(|r| r.mech == CKM_RSA_PKCS || r.family == Family::Digest));
        assert_eq!(MechRow::common(&[None, None]).len(), MECHANISMS.len());
        let none = vec![MechRow { min: 9000, ..rsa }];
        assert!(MechRow::common(&[Some(none)])
            .iter()
            .all(|r| r.mech != CKM_RSA_PKCS));
    }

    #[test]
    fn hash_and_sign_table() {
        let his = |m| hash_of_hash_and_sign(m).map(Hash::ckm);
        assert_eq!(his(CKM_SHA256_RSA_PKCS), Some(CKM_SHA256));
        assert_eq!(his(CKM_SHA1_RSA_PKCS_PSS), Some(CKM_SHA_1));
        assert_eq!(his(CKM_ECDSA_SHA384), Some(CKM_SHA384));
        assert_eq!(his(CKM_ECDSA), None);
        assert_eq!(his(CKM_RSA_PKCS), None);
        assert_eq!(his(CKM_SHA256_HMAC), None);
    }

    #[test]
    fn sizes_are_checked_in_the_row_unit() {
        let aes = lookup(CKM_AES_GCM).expect("AES-GCM is in the table");
        assert!(aes.size_ok(256) && aes.size_ok(128) && !aes.size_ok(64));
        let rsa = lookup(CKM_RSA_PKCS).expect("RSA is in the table");
        assert!(rsa.size_ok(2048) && !rsa.size_ok(1024));
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    fn functions(flags: CK_FLAGS) -> String {
        let names = [
            (CKF_GENERATE_KEY_PAIR, "generate key pair"),
            (CKF_GENERATE, "generate"),
            (CKF_ENCRYPT, "encrypt"),
            (CKF_DECRYPT, "decrypt"),
            (CKF_SIGN, "sign"),
            (CKF_VERIFY, "verify"),
            (CKF_DIGEST, "digest"),
            (CKF_WRAP, "wrap"),
            (CKF_UNWRAP, "unwrap"),
            (CKF_DERIVE, "derive"),
        ];
        names
            .iter()
            .filter(|(f, _)| flags & f != 0)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn sizes(r: &MechRow) -> String {
        match (r.min, r.max, r.unit) {
            (0, 0, _) => "-".into(),
            (a, b, SizeUnit::Bits) => format!("{a}-{b}"),
            (a, b, SizeUnit::Bytes) => format!("{a}-{b} bytes"),
        }
    }

    /// The README's mechanism table, as the code would write it.
    fn table() -> String {
        let mut s = String::from("| mechanism | key sizes | functions |\n|---|---|---|\n");
        for r in MECHANISMS {
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                r.name,
                sizes(r),
                functions(r.flags)
            ));
        }
        s
    }

    #[test]
    fn readme_mechanism_table_matches_the_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md exists");
        let begin = readme
            .find("<!-- mechanisms:begin -->\n")
            .expect("table start marker")
            + "<!-- mechanisms:begin -->\n".len();
        let end = readme
            .find("<!-- mechanisms:end -->")
            .expect("table end marker");
        assert_eq!(&readme[begin..end], table(), "README mechanism table differs from member/src/mechanism.rs; replace it with the right side");
    }
}
