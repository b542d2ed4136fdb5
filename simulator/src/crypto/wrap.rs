//! Key wrapping: AES key wrap (RFC 3394, `CKM_AES_KEY_WRAP`), AES key wrap with padding
//! (RFC 5649, `CKM_AES_KEY_WRAP_KWP`) and RSA-OAEP (`CKM_RSA_PKCS_OAEP`), plus the PKCS #8
//! encoding of private keys that wrapping a private key needs.
//!
//! AWS CloudHSM's three AES key wraps ("AES key wrapping in AWS CloudHSM", Client SDK 5) are the
//! same two constructions over the key bytes: `CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD` is RFC 3394 of
//! block-aligned bytes, `CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD` is RFC 3394 of the bytes with
//! PKCS #5 padding to 8 bytes (1 to 8 bytes added), `CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD` is
//! RFC 5649 (zeros to 8 bytes, the length in the alternative IV, so unwrap needs no
//! `CKA_VALUE_LEN`). The first two take no IV or the default `A6A6A6A6A6A6A6A6`; the last no IV.
//!
//! AES-128 and AES-256 key wrap run on `aws_lc_rs::key_wrap`; AES-192 (which it does not offer)
//! runs on aws-lc's `AES_wrap_key` through [`raw`].

use aws_lc_rs::key_wrap::{self, KeyEncryptionKey, KeyWrap as _, KeyWrapPadded as _};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::raw::{self, Pkey};
use super::{ec, ed, rsa, Curve, KeyMaterial, LoadedKey, Parsed};
use crate::types::cloudhsm::{
    CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD, CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD,
    CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD,
};
use crate::types::{MechParam, Mechanism, Rv};

/// The RFC 3394 default IV.
const KW_IV: [u8; 8] = [0xa6; 8];
/// The RFC 5649 alternative IV's constant half.
const KWP_ICV: [u8; 4] = [0xa6, 0x59, 0x59, 0xa6];

/// Checks a key wrap parameter: none, or the default IV (8 bytes for KW, the 4-byte ICV2 for
/// KWP) as `MechParam::Iv` or raw bytes; any other IV is `CKR_MECHANISM_PARAM_INVALID`.
fn kw_param(param: &MechParam, padded: bool) -> Result<(), Rv> {
    let default: &[u8] = if padded { &KWP_ICV } else { &KW_IV };
    match param {
        MechParam::None => Ok(()),
        MechParam::Raw(v) | MechParam::Iv(v) if v.is_empty() || v.as_slice() == default => Ok(()),
        _ => Err(CKR_MECHANISM_PARAM_INVALID),
    }
}

/// How a key-wrap mechanism treats the key bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KwShape {
    /// RFC 3394 over the bytes as they are (a multiple of 8, 16 or more).
    Plain,
    /// RFC 5649.
    Padded,
    /// RFC 3394 over the bytes with PKCS #5 padding to 8 bytes.
    Pkcs5,
}

/// The AES key-wrap mechanisms: their shape, and whether an IV parameter may be given.
fn kw_shape(mech: CK_MECHANISM_TYPE) -> Option<(KwShape, bool)> {
    match mech {
        CKM_AES_KEY_WRAP | CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD => Some((KwShape::Plain, true)),
        CKM_AES_KEY_WRAP_KWP => Some((KwShape::Padded, true)),
        // CloudHSM: "Explicit IV: not allowed" for zero padding.
        CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD => Some((KwShape::Padded, false)),
        CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD => Some((KwShape::Pkcs5, true)),
        _ => None,
    }
}

/// The RFC 3394 semiblock, the unit of PKCS #5 padding here.
const SEMIBLOCK: usize = 8;

/// `data` with PKCS #5 padding to a multiple of 8 bytes (1 to 8 bytes, each their count).
fn pkcs5_pad(data: &[u8]) -> Zeroizing<Vec<u8>> {
    let n = SEMIBLOCK - data.len() % SEMIBLOCK;
    let mut out = Zeroizing::new(Vec::with_capacity(data.len() + n));
    out.extend_from_slice(data);
    // `n` is 1..=8, so it fits a byte.
    out.extend(std::iter::repeat_n(n as u8, n));
    out
}

/// Removes PKCS #5 padding; `Err` when it is malformed.
fn pkcs5_unpad(mut data: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, ()> {
    let n = usize::from(*data.last().ok_or(())?);
    if n == 0 || n > SEMIBLOCK || n > data.len() {
        return Err(());
    }
    let keep = data.len() - n;
    if data[keep..].iter().any(|b| usize::from(*b) != n) {
        return Err(());
    }
    data.truncate(keep);
    Ok(data)
}

/// The value of an AES wrapping key, or `type_err` / `size_err`.
fn aes_value(key: &LoadedKey, type_err: Rv, size_err: Rv) -> Result<&[u8], Rv> {
    let (_, key_type, value) = key.secret().map_err(|_| type_err)?;
    if key_type != CKK_AES {
        return Err(type_err);
    }
    match value.len() {
        16 | 24 | 32 => Ok(value),
        _ => Err(size_err),
    }
}

/// The `aws-lc-rs` key-wrap cipher for a key length it supports.
fn kw_cipher(len: usize) -> Option<&'static key_wrap::AesBlockCipher> {
    match len {
        16 => Some(&key_wrap::AES_128),
        32 => Some(&key_wrap::AES_256),
        _ => None,
    }
}

/// AES-KW / AES-KWP wrap with any AES key.
fn kw_wrap(kek: &[u8], data: &[u8], padded: bool) -> Result<Vec<u8>, ()> {
    let Some(cipher) = kw_cipher(kek.len()) else {
        return raw::aes_wrap(kek, data, padded).map_err(|_| ());
    };
    let k = KeyEncryptionKey::new(cipher, kek).map_err(|_| ())?;
    let mut out = vec![0u8; data.len().checked_add(16).ok_or(())?];
    let n = if padded {
        k.wrap_with_padding(data, &mut out).map_err(|_| ())?.len()
    } else {
        k.wrap(data, &mut out).map_err(|_| ())?.len()
    };
    out.truncate(n);
    Ok(out)
}

/// AES-KW / AES-KWP unwrap with any AES key; any integrity failure is `Err`.
fn kw_unwrap(kek: &[u8], data: &[u8], padded: bool) -> Result<Zeroizing<Vec<u8>>, ()> {
    let Some(cipher) = kw_cipher(kek.len()) else {
        return raw::aes_unwrap(kek, data, padded).map_err(|_| ());
    };
    let k = KeyEncryptionKey::new(cipher, kek).map_err(|_| ())?;
    let mut out = Zeroizing::new(vec![0u8; data.len()]);
    let n = if padded {
        k.unwrap_with_padding(data, &mut out).map_err(|_| ())?.len()
    } else {
        k.unwrap(data, &mut out).map_err(|_| ())?.len()
    };
    out.truncate(n);
    Ok(out)
}

/// Wraps `key_bytes` (a secret key's value, or a private key's PKCS #8 from
/// [`private_key_pkcs8`]) with `wrapping`:
/// - `CKM_AES_KEY_WRAP` (RFC 3394; `key_bytes` a multiple of 8 and at least 16 bytes) and
///   `CKM_AES_KEY_WRAP_KWP` (RFC 5649; 1 byte or more) with an AES key; any IV parameter but the
///   default is `CKR_MECHANISM_PARAM_INVALID`;
/// - CloudHSM's `CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD` (as `CKM_AES_KEY_WRAP`),
///   `CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD` (RFC 3394 after PKCS #5 padding; any length) and
///   `CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD` (as `CKM_AES_KEY_WRAP_KWP`, but no IV parameter at all);
/// - `CKM_RSA_PKCS_OAEP` with an RSA public (or private) key.
///
/// Errors: `CKR_MECHANISM_INVALID` (another mechanism), `CKR_MECHANISM_PARAM_INVALID`,
/// `CKR_WRAPPING_KEY_TYPE_INCONSISTENT` (key of the wrong kind), `CKR_WRAPPING_KEY_SIZE_RANGE`
/// (AES key not 16/24/32 bytes), `CKR_KEY_SIZE_RANGE` (`key_bytes` of a length the mechanism
/// cannot wrap), `CKR_FUNCTION_FAILED`.
pub fn wrap(mech: &Mechanism, wrapping: &LoadedKey, key_bytes: &[u8]) -> Result<Vec<u8>, Rv> {
    if let Some((shape, iv_allowed)) = kw_shape(mech.mech) {
        let padded = shape == KwShape::Padded;
        if iv_allowed {
            kw_param(&mech.param, padded)?;
        } else {
            super::no_param(&mech.param)?;
        }
        let kek = aes_value(
            wrapping,
            CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
            CKR_WRAPPING_KEY_SIZE_RANGE,
        )?;
        let padded_bytes;
        let input = if shape == KwShape::Pkcs5 {
            padded_bytes = pkcs5_pad(key_bytes);
            padded_bytes.as_slice()
        } else {
            key_bytes
        };
        let len_ok = if padded {
            // RFC 5649 caps the input at 2^32 - 1 bytes.
            !input.is_empty() && u32::try_from(input.len()).is_ok()
        } else {
            input.len() >= 16 && input.len() % SEMIBLOCK == 0
        };
        if !len_ok {
            return Err(CKR_KEY_SIZE_RANGE);
        }
        return kw_wrap(kek, input, padded).map_err(|()| CKR_FUNCTION_FAILED);
    }
    match mech.mech {
        CKM_RSA_PKCS_OAEP => {
            let key = wrapping
                .rsa_public_op()
                .map_err(|_| CKR_WRAPPING_KEY_TYPE_INCONSISTENT)?;
            rsa::encrypt(mech, key, key_bytes).map_err(|rv| match rv {
                CKR_DATA_LEN_RANGE => CKR_KEY_SIZE_RANGE,
                rv => rv,
            })
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// Unwraps `wrapped` with `unwrapping` (the mechanisms of [`wrap`]; RSA-OAEP needs the private
/// key), returning the key bytes.
///
/// Errors: `CKR_MECHANISM_INVALID`, `CKR_MECHANISM_PARAM_INVALID`,
/// `CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT`, `CKR_UNWRAPPING_KEY_SIZE_RANGE`,
/// `CKR_WRAPPED_KEY_LEN_RANGE` (AES-KW: not a multiple of 8 or under 24 bytes; AES-KWP: not a
/// multiple of 8 or under 16; RSA: not the modulus length), `CKR_WRAPPED_KEY_INVALID` (any
/// integrity or padding failure, uniformly).
pub fn unwrap(
    mech: &Mechanism,
    unwrapping: &LoadedKey,
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    if let Some((shape, iv_allowed)) = kw_shape(mech.mech) {
        let padded = shape == KwShape::Padded;
        if iv_allowed {
            kw_param(&mech.param, padded)?;
        } else {
            super::no_param(&mech.param)?;
        }
        let kek = aes_value(
            unwrapping,
            CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
            CKR_UNWRAPPING_KEY_SIZE_RANGE,
        )?;
        let min = if padded { 16 } else { 24 };
        if wrapped.len() < min || wrapped.len() % SEMIBLOCK != 0 {
            return Err(CKR_WRAPPED_KEY_LEN_RANGE);
        }
        let bytes = kw_unwrap(kek, wrapped, padded).map_err(|()| CKR_WRAPPED_KEY_INVALID)?;
        return if shape == KwShape::Pkcs5 {
            pkcs5_unpad(bytes).map_err(|()| CKR_WRAPPED_KEY_INVALID)
        } else {
            Ok(bytes)
        };
    }
    match mech.mech {
        CKM_RSA_PKCS_OAEP => {
            let key = unwrapping
                .rsa_private()
                .map_err(|_| CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)?;
            rsa::decrypt(mech, key, wrapped).map_err(|rv| match rv {
                CKR_ENCRYPTED_DATA_LEN_RANGE => CKR_WRAPPED_KEY_LEN_RANGE,
                CKR_ENCRYPTED_DATA_INVALID => CKR_WRAPPED_KEY_INVALID,
                rv => rv,
            })
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// The PKCS #8 `PrivateKeyInfo` DER of a private key (RSA, EC or Ed25519), to wrap it. Any other
/// key is `CKR_KEY_NOT_WRAPPABLE` (a secret key is wrapped as its value).
pub fn private_key_pkcs8(key: &LoadedKey) -> Result<Zeroizing<Vec<u8>>, Rv> {
    match (&key.parsed, &key.material) {
        (Parsed::RsaPrivate(_), KeyMaterial::RsaPrivate { pkcs8 })
        | (Parsed::EcPrivate(_), KeyMaterial::EcPrivate { pkcs8, .. }) => Ok(pkcs8.clone()),
        (Parsed::EdPrivate(k), _) => k.pkcs8(),
        _ => Err(CKR_KEY_NOT_WRAPPABLE),
    }
}

/// A DER structure with what follows it dropped when that is fewer than 8 zero bytes:
/// SoftHSMv2 2.6 pads a key with zeros to a multiple of 8 before its RFC 5649 wrapping (whose
/// length field then counts them), and OpenSSL and NSS softokn take such a PKCS #8 key by the
/// structure's own length. Anything else is left whole (and refused if it is not one structure).
fn without_zero_padding(der: &[u8]) -> &[u8] {
    let len = match der {
        [0x30, n, ..] if *n < 0x80 => Some(2 + usize::from(*n)),
        [0x30, 0x81, n, ..] => Some(3 + usize::from(*n)),
        [0x30, 0x82, hi, lo, ..] => Some(4 + (usize::from(*hi) << 8 | usize::from(*lo))),
        _ => None,
    };
    match len {
        Some(l) if l < der.len() && der.len() - l < 8 && der[l..].iter().all(|b| *b == 0) => {
            &der[..l]
        }
        _ => der,
    }
}

/// Reads an unwrapped PKCS #8 private key: `(material, CKK_RSA | CKK_EC | CKK_EC_EDWARDS)`.
/// The material is normalised (re-encoded by aws-lc) and checked as [`LoadedKey::load`] would.
///
/// Errors: `CKR_WRAPPED_KEY_INVALID` (not a PKCS #8 key aws-lc parses, trailing bytes other than up to 7 zeros, another
/// algorithm, or an RSA size outside 2048..=8192), `CKR_CURVE_NOT_SUPPORTED` (an EC key on
/// another curve).
pub fn load_private_pkcs8(pkcs8: &[u8]) -> Result<(KeyMaterial, CK_KEY_TYPE), Rv> {
    let pkcs8 = without_zero_padding(pkcs8);
    let pkey = Pkey::parse_private(pkcs8).map_err(|_| CKR_WRAPPED_KEY_INVALID)?;
    match pkey.id() {
        raw::PKEY_RSA => {
            let pkcs8 = pkey.to_pkcs8().map_err(|_| CKR_WRAPPED_KEY_INVALID)?;
            rsa::RsaPrivate::load(&pkcs8).map_err(|_| CKR_WRAPPED_KEY_INVALID)?;
            Ok((KeyMaterial::RsaPrivate { pkcs8 }, CKK_RSA))
        }
        raw::PKEY_EC => {
            let nid = pkey.ec_nid().ok_or(CKR_WRAPPED_KEY_INVALID)?;
            let curve = Curve::ALL
                .into_iter()
                .find(|c| c.nid() == nid)
                .ok_or(CKR_CURVE_NOT_SUPPORTED)?;
            let pkcs8 = pkey.to_pkcs8().map_err(|_| CKR_WRAPPED_KEY_INVALID)?;
            ec::EcPrivate::load(curve, &pkcs8).map_err(|_| CKR_WRAPPED_KEY_INVALID)?;
            Ok((KeyMaterial::EcPrivate { curve, pkcs8 }, CKK_EC))
        }
        raw::PKEY_ED25519 => {
            let seed = pkey.ed25519_seed().map_err(|_| CKR_WRAPPED_KEY_INVALID)?;
            ed::EdPrivate::load(&seed).map_err(|_| CKR_WRAPPED_KEY_INVALID)?;
            Ok((KeyMaterial::EdPrivate { seed }, CKK_EC_EDWARDS))
        }
        _ => Err(CKR_WRAPPED_KEY_INVALID),
    }
}

#[cfg(test)]
mod pkcs5_tests {
    use super::*;

    #[test]
    fn pkcs5_padding_adds_one_to_eight_bytes_and_unpadding_checks_every_one() {
        for len in 0..=17 {
            let v: Vec<u8> = (0..len as u8).collect();
            let p = pkcs5_pad(&v);
            assert_eq!(p.len() % SEMIBLOCK, 0);
            assert!((1..=SEMIBLOCK).contains(&(p.len() - v.len())));
            assert_eq!(pkcs5_unpad(p).map(|u| u.to_vec()), Ok(v));
        }
        // A count of 0, over 8, longer than the data, or bytes that disagree with it.
        for bad in [
            &[1u8, 2, 3, 4, 5, 6, 7, 0][..],
            &[9; 16],
            &[3, 3],
            &[1, 2, 3, 4, 5, 2, 3, 3],
        ] {
            assert!(
                pkcs5_unpad(Zeroizing::new(bad.to_vec())).is_err(),
                "{bad:?}"
            );
        }
    }
}
