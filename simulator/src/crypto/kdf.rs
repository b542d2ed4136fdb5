//! Key derivation: ECDH (`CKM_ECDH1_DERIVE` with `CKD_NULL` or the ANSI X9.63 KDF over SHA-1 or
//! SHA-2) and HKDF (`CKM_HKDF_DERIVE`, RFC 5869).

use aws_lc_rs::{digest, hmac};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::{sym, Hash, LoadedKey, Parsed};
use crate::types::Rv;

/// The most bytes a KDF here derives (a key value is at most 1024 bytes elsewhere in the
/// simulator; this is a generous bound that keeps allocation sane).
const MAX_DERIVED: usize = 65536;

/// ECDH key derivation (`CKM_ECDH1_DERIVE`, cofactor 1 on the curves here).
///
/// `peer_point` is the other party's public point: uncompressed or compressed, raw or wrapped in
/// a DER OCTET STRING (as `CKA_EC_POINT`); it must lie on the private key's curve. `kdf` is
/// `CKD_NULL` (the shared secret `Z`, the x-coordinate of the shared point, truncated to its
/// leftmost `out_len` bytes; `out_len` 0 means all of it; `shared_data` must be empty) or
/// `CKD_SHA1_KDF`, `CKD_SHA224_KDF` .. `CKD_SHA512_KDF` (ANSI X9.63: `Hash(Z || counter ||
/// shared_data)` blocks, counter a 32-bit big-endian from 1; `out_len` 1..=65536).
///
/// Errors: `CKR_KEY_TYPE_INCONSISTENT` (not an EC private key), `CKR_MECHANISM_PARAM_INVALID`
/// (unknown KDF, shared data with `CKD_NULL`, a malformed point or one not on the curve),
/// `CKR_TEMPLATE_INCONSISTENT` (`CKD_NULL` with `out_len` above the field size, a KDF with
/// `out_len` 0 or too large).
pub fn ecdh_derive(
    private: &LoadedKey,
    peer_point: &[u8],
    kdf: CK_ULONG,
    shared_data: &[u8],
    out_len: usize,
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let Parsed::EcPrivate(key) = &private.parsed else {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    };
    let hash = match kdf {
        CKD_NULL => None,
        CKD_SHA1_KDF => Some(Hash::Sha1),
        CKD_SHA224_KDF => Some(Hash::Sha224),
        CKD_SHA256_KDF => Some(Hash::Sha256),
        CKD_SHA384_KDF => Some(Hash::Sha384),
        CKD_SHA512_KDF => Some(Hash::Sha512),
        _ => return Err(CKR_MECHANISM_PARAM_INVALID),
    };
    if hash.is_none() && !shared_data.is_empty() {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    match hash {
        None if out_len > key.curve().field_bytes() => return Err(CKR_TEMPLATE_INCONSISTENT),
        Some(_) if out_len == 0 || out_len > MAX_DERIVED => return Err(CKR_TEMPLATE_INCONSISTENT),
        _ => {}
    }
    let fb = key.curve().field_bytes();
    let raw_form = match (peer_point.first(), peer_point.len()) {
        (Some(4), n) if n == 1 + 2 * fb => true,
        (Some(2 | 3), n) if n == 1 + fb => true,
        _ => false,
    };
    let point = if raw_form {
        peer_point
    } else {
        super::der::parse_octet_string(peer_point).ok_or(CKR_MECHANISM_PARAM_INVALID)?
    };
    let z = key.ecdh(point)?;
    let Some(hash) = hash else {
        let mut z = z;
        if out_len != 0 {
            z.truncate(out_len);
        }
        return Ok(z);
    };
    let mut out = Zeroizing::new(Vec::with_capacity(out_len + hash.len()));
    let mut counter: u32 = 1;
    while out.len() < out_len {
        let mut ctx = digest::Context::new(hash.alg());
        ctx.update(&z);
        ctx.update(&counter.to_be_bytes());
        ctx.update(shared_data);
        out.extend_from_slice(ctx.finish().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(out_len);
    Ok(out)
}

/// HKDF (`CKM_HKDF_DERIVE`, PKCS #11 3.0 semantics) with HMAC over `prf_hash` (`CKM_SHA_1`,
/// `CKM_SHA224` .. `CKM_SHA512`).
///
/// - `extract` and `expand`: RFC 5869 extract (`PRK = HMAC(salt, ikm)`; an empty salt is the
///   all-zero salt, which is what `CKF_HKDF_SALT_NULL` asks for) then expand to `out_len` bytes
///   (1..=255 * hash length).
/// - `extract` only: the PRK itself; `out_len` must be the hash length (or 0, meaning it).
/// - `expand` only: `ikm` is the PRK; expand to `out_len` bytes.
///
/// Errors: `CKR_MECHANISM_PARAM_INVALID` (unknown hash, neither extract nor expand),
/// `CKR_TEMPLATE_INCONSISTENT` (an `out_len` the mode cannot produce).
pub fn hkdf(
    prf_hash: CK_MECHANISM_TYPE,
    extract: bool,
    expand: bool,
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    out_len: usize,
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let hash = Hash::from_ckm(prf_hash).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    if !extract && !expand {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let alg = sym::hmac_alg(hash);
    let prk = if extract {
        let tag = hmac::sign(&hmac::Key::new(alg, salt), ikm);
        Zeroizing::new(tag.as_ref().to_vec())
    } else {
        Zeroizing::new(ikm.to_vec())
    };
    if !expand {
        if out_len != 0 && out_len != hash.len() {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        return Ok(prk);
    }
    if out_len == 0 || out_len > 255 * hash.len() {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let key = hmac::Key::new(alg, &prk);
    let mut out = Zeroizing::new(Vec::with_capacity(out_len + hash.len()));
    let mut t: Option<hmac::Tag> = None;
    let mut i: u8 = 1;
    while out.len() < out_len {
        let mut ctx = hmac::Context::with_key(&key);
        if let Some(prev) = &t {
            ctx.update(prev.as_ref());
        }
        ctx.update(info);
        ctx.update(&[i]);
        let tag = ctx.sign();
        out.extend_from_slice(tag.as_ref());
        t = Some(tag);
        i = i.wrapping_add(1);
    }
    out.truncate(out_len);
    Ok(out)
}
