//! The one file of the simulator that calls aws-lc through `aws-lc-sys`: the operations the safe
//! `aws-lc-rs` API does not offer (RSA with caller-chosen padding, PSS salt lengths and OAEP
//! labels, ECDSA over a digest of any length, AES-GCM with any IV or tag length, RSA key
//! generation of any size, raw ECDH, EC private keys from a scalar on curves `aws-lc-rs` has no
//! agreement algorithm for (secp256k1), the seed of a parsed Ed25519 PKCS #8, AES key wrap with
//! AES-192 keys).
//!
//! Every C object is owned by a small RAII wrapper that frees it on drop; every return code is
//! checked; a failure clears aws-lc's thread-local error queue and becomes [`Failed`], which the
//! caller maps to the `CK_RV` its context calls for.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::os::raw::c_int;
use std::ptr::{self, NonNull};

use aws_lc_sys as sys;
use zeroize::Zeroizing;

use super::Hash;

/// An aws-lc call failed; the caller decides which `CK_RV` that means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed;

/// Clears aws-lc's error queue (so failures do not accumulate per thread) and returns `Failed`.
fn failed<T>() -> Result<T, Failed> {
    // SAFETY: ERR_clear_error only touches this thread's error queue; it takes no arguments.
    unsafe { sys::ERR_clear_error() };
    Err(Failed)
}

/// Turns an aws-lc `1 on success` return code into a `Result`.
fn check(rc: c_int) -> Result<(), Failed> {
    if rc == 1 {
        Ok(())
    } else {
        failed()
    }
}

/// The `EVP_MD` of a hash.
fn evp_md(hash: Hash) -> *const sys::EVP_MD {
    // SAFETY: the EVP_sha* functions return pointers to static, immutable method tables.
    unsafe {
        match hash {
            Hash::Sha1 => sys::EVP_sha1(),
            Hash::Sha224 => sys::EVP_sha224(),
            Hash::Sha256 => sys::EVP_sha256(),
            Hash::Sha384 => sys::EVP_sha384(),
            Hash::Sha512 => sys::EVP_sha512(),
        }
    }
}

/// An owned `BIGNUM`, cleared and freed on drop.
struct Bn(NonNull<sys::BIGNUM>);

impl Bn {
    /// A BIGNUM from big-endian bytes.
    fn from_be(bytes: &[u8]) -> Result<Self, Failed> {
        // SAFETY: `bytes` is a valid slice for its length; a NULL `ret` asks for a new BIGNUM,
        // which we own from here on.
        let p = unsafe { sys::BN_bin2bn(bytes.as_ptr(), bytes.len(), ptr::null_mut()) };
        NonNull::new(p).map(Bn).map_or_else(failed, Ok)
    }

    /// Gives up ownership (after a call that took it over).
    fn into_raw(self) -> *mut sys::BIGNUM {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }
}

impl Drop for Bn {
    fn drop(&mut self) {
        // SAFETY: we own the BIGNUM and nothing else refers to it.
        unsafe { sys::BN_clear_free(self.0.as_ptr()) };
    }
}

/// Writes `bn` big-endian, left-padded to exactly `len` bytes.
fn bn_to_padded(bn: *const sys::BIGNUM, len: usize, out: &mut Vec<u8>) -> Result<(), Failed> {
    let start = out.len();
    out.resize(start + len, 0);
    // SAFETY: `bn` is a valid BIGNUM (checked non-NULL by the caller) and `out[start..]` has
    // exactly `len` writable bytes.
    check(unsafe { sys::BN_bn2bin_padded(out[start..].as_mut_ptr(), len, bn) })
}

/// An owned `EVP_PKEY_CTX`.
struct PkeyCtx(NonNull<sys::EVP_PKEY_CTX>);

impl Drop for PkeyCtx {
    fn drop(&mut self) {
        // SAFETY: we own the context; freeing it drops its reference on the EVP_PKEY.
        unsafe { sys::EVP_PKEY_CTX_free(self.0.as_ptr()) };
    }
}

/// An owned `ECDSA_SIG`.
struct EcdsaSig(NonNull<sys::ECDSA_SIG>);

impl Drop for EcdsaSig {
    fn drop(&mut self) {
        // SAFETY: we own the signature object.
        unsafe { sys::ECDSA_SIG_free(self.0.as_ptr()) };
    }
}

/// An owned `EC_KEY` (until handed to an `EVP_PKEY`).
struct EcKey(NonNull<sys::EC_KEY>);

impl Drop for EcKey {
    fn drop(&mut self) {
        // SAFETY: we own the key.
        unsafe { sys::EC_KEY_free(self.0.as_ptr()) };
    }
}

/// An owned `RSA` (until handed to an `EVP_PKEY`).
struct Rsa(NonNull<sys::RSA>);

impl Drop for Rsa {
    fn drop(&mut self) {
        // SAFETY: we own the key.
        unsafe { sys::RSA_free(self.0.as_ptr()) };
    }
}

/// An owned `EC_POINT`.
struct EcPoint(NonNull<sys::EC_POINT>);

impl Drop for EcPoint {
    fn drop(&mut self) {
        // SAFETY: we own the point.
        unsafe { sys::EC_POINT_free(self.0.as_ptr()) };
    }
}

/// The RSA padding of one operation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RsaPad<'a> {
    /// No padding: the input is exactly the modulus length (`CKM_RSA_X_509`).
    None,
    /// PKCS #1 v1.5. With a hash, the input is that hash's digest and aws-lc builds the
    /// DigestInfo; without, the input is padded as it is (type 1 for signatures, 2 for encryption).
    Pkcs1(Option<Hash>),
    /// PSS with the message hash, the MGF1 hash and the salt length in bytes.
    Pss {
        hash: Hash,
        mgf1: Hash,
        salt_len: usize,
    },
    /// OAEP with the label hash, the MGF1 hash and the label.
    Oaep {
        hash: Hash,
        mgf1: Hash,
        label: &'a [u8],
    },
}

/// Which operation a context is set up for.
#[derive(Clone, Copy)]
enum Op {
    Sign,
    Verify,
    Encrypt,
    Decrypt,
}

/// An owned, immutable `EVP_PKEY` (RSA or EC, public or private).
///
/// # Invariants
/// The pointer is non-NULL and owned (one reference). After construction the key is never
/// mutated: every use goes through `EVP_PKEY_CTX_new` (which only takes a reference) or through
/// aws-lc functions taking a `const` pointer.
pub(crate) struct Pkey(NonNull<sys::EVP_PKEY>);

// SAFETY: aws-lc documents that an EVP_PKEY "may be used concurrently on multiple threads by
// non-mutating functions" and its reference count is atomic. We never call a mutating function
// after construction (see # Invariants); RSA private operations take aws-lc's internal RSA lock
// for their lazily built caches (blinding, Montgomery contexts).
unsafe impl Send for Pkey {}
// SAFETY: as for Send: shared use only calls thread-safe, non-mutating functions.
unsafe impl Sync for Pkey {}

impl Drop for Pkey {
    fn drop(&mut self) {
        // SAFETY: we own one reference; any EVP_PKEY_CTX still alive holds its own.
        unsafe { sys::EVP_PKEY_free(self.0.as_ptr()) };
    }
}

impl Pkey {
    /// Wraps a fresh `EVP_PKEY` and moves `key` into it with `assign`.
    fn assign<K>(
        key: NonNull<K>,
        assign: unsafe extern "C" fn(*mut sys::EVP_PKEY, *mut K) -> c_int,
    ) -> Result<Self, Failed> {
        // SAFETY: EVP_PKEY_new has no preconditions; we own the result.
        let pkey = NonNull::new(unsafe { sys::EVP_PKEY_new() })
            .map(Pkey)
            .map_or_else(failed, Ok)?;
        // SAFETY: both pointers are valid; on success the EVP_PKEY takes ownership of `key`.
        check(unsafe { assign(pkey.0.as_ptr(), key.as_ptr()) })?;
        Ok(pkey)
    }

    /// Parses a DER `PrivateKeyInfo` (PKCS #8); trailing bytes are rejected.
    pub(crate) fn parse_private(der: &[u8]) -> Result<Self, Failed> {
        let mut cbs = MaybeUninit::<sys::CBS>::uninit();
        // SAFETY: CBS_init fully initialises the CBS to borrow `der`, which outlives it.
        unsafe { sys::CBS_init(cbs.as_mut_ptr(), der.as_ptr(), der.len()) };
        // SAFETY: `cbs` was initialised just above; EVP_parse_private_key returns a new owned key
        // or NULL, and reads only within the CBS.
        let p = unsafe { sys::EVP_parse_private_key(cbs.as_mut_ptr()) };
        let pkey = NonNull::new(p).map(Pkey).map_or_else(failed, Ok)?;
        // SAFETY: the CBS is initialised.
        if unsafe { sys::CBS_len(cbs.as_ptr()) } != 0 {
            return failed();
        }
        Ok(pkey)
    }

    /// An RSA public key from its big-endian modulus and exponent (checked by aws-lc).
    pub(crate) fn rsa_public(n: &[u8], e: &[u8]) -> Result<Self, Failed> {
        let n = Bn::from_be(n)?;
        let e = Bn::from_be(e)?;
        // SAFETY: n and e are valid BIGNUMs; RSA_new_public_key copies them and checks the key,
        // returning an owned RSA or NULL.
        let rsa = unsafe { sys::RSA_new_public_key(n.0.as_ptr(), e.0.as_ptr()) };
        let rsa = NonNull::new(rsa).map(Rsa).map_or_else(failed, Ok)?;
        let pkey = Self::assign(rsa.0, sys::EVP_PKEY_assign_RSA)?;
        std::mem::forget(rsa); // now owned by `pkey`
        Ok(pkey)
    }

    /// An EC public key on the curve `nid` from an encoded point, checked to be on the curve.
    pub(crate) fn ec_public(nid: c_int, point: &[u8]) -> Result<Self, Failed> {
        // SAFETY: returns an owned EC_KEY or NULL.
        let key = NonNull::new(unsafe { sys::EC_KEY_new_by_curve_name(nid) })
            .map(EcKey)
            .map_or_else(failed, Ok)?;
        // SAFETY: `key` is valid; its group is static and non-NULL for a named curve.
        let group = unsafe { sys::EC_KEY_get0_group(key.0.as_ptr()) };
        if group.is_null() {
            return failed();
        }
        // SAFETY: `group` is valid; returns an owned point or NULL.
        let pt = NonNull::new(unsafe { sys::EC_POINT_new(group) })
            .map(EcPoint)
            .map_or_else(failed, Ok)?;
        // SAFETY: all pointers are valid; `point` is read within its length. oct2point rejects
        // points not on the curve.
        check(unsafe {
            sys::EC_POINT_oct2point(
                group,
                pt.0.as_ptr(),
                point.as_ptr(),
                point.len(),
                ptr::null_mut(),
            )
        })?;
        // SAFETY: both valid; the point is copied into the key.
        check(unsafe { sys::EC_KEY_set_public_key(key.0.as_ptr(), pt.0.as_ptr()) })?;
        // SAFETY: valid key; checks the point is not at infinity and has the group's order.
        check(unsafe { sys::EC_KEY_check_key(key.0.as_ptr()) })?;
        let pkey = Self::assign(key.0, sys::EVP_PKEY_assign_EC_KEY)?;
        std::mem::forget(key); // now owned by `pkey`
        Ok(pkey)
    }

    /// The `EVP_PKEY_*` type of the key.
    pub(crate) fn id(&self) -> c_int {
        // SAFETY: valid key (invariant); a read-only accessor.
        unsafe { sys::EVP_PKEY_id(self.0.as_ptr()) }
    }

    /// The RSA modulus length in bytes, if this is an RSA key.
    pub(crate) fn rsa_size(&self) -> Option<usize> {
        // SAFETY: valid key; returns NULL unless it is an RSA key.
        let rsa = unsafe { sys::EVP_PKEY_get0_RSA(self.0.as_ptr()) };
        if rsa.is_null() {
            return None;
        }
        // SAFETY: `rsa` is valid and borrowed from the key for this call.
        usize::try_from(unsafe { sys::RSA_size(rsa) }).ok()
    }

    /// The curve NID, if this is an EC key.
    pub(crate) fn ec_nid(&self) -> Option<c_int> {
        let key = self.ec_key()?;
        // SAFETY: `key` is valid; its group is owned by it.
        let group = unsafe { sys::EC_KEY_get0_group(key) };
        if group.is_null() {
            return None;
        }
        // SAFETY: `group` is valid.
        Some(unsafe { sys::EC_GROUP_get_curve_name(group) })
    }

    fn ec_key(&self) -> Option<*const sys::EC_KEY> {
        // SAFETY: valid key; returns NULL unless it is an EC key.
        let key = unsafe { sys::EVP_PKEY_get0_EC_KEY(self.0.as_ptr()) };
        (!key.is_null()).then_some(key.cast_const())
    }

    /// A context for one operation with `pad` applied.
    fn ctx(&self, op: Op, pad: RsaPad<'_>) -> Result<PkeyCtx, Failed> {
        // SAFETY: the key is valid; EVP_PKEY_CTX_new only takes a new (atomic) reference on it,
        // which is the documented thread-safe use; the result is owned or NULL.
        let ctx = unsafe { sys::EVP_PKEY_CTX_new(self.0.as_ptr(), ptr::null_mut()) };
        let ctx = NonNull::new(ctx).map(PkeyCtx).map_or_else(failed, Ok)?;
        let c = ctx.0.as_ptr();
        // SAFETY: `c` is a valid context owned by `ctx` for all the calls below; the EVP_MD
        // pointers are static.
        unsafe {
            check(match op {
                Op::Sign => sys::EVP_PKEY_sign_init(c),
                Op::Verify => sys::EVP_PKEY_verify_init(c),
                Op::Encrypt => sys::EVP_PKEY_encrypt_init(c),
                Op::Decrypt => sys::EVP_PKEY_decrypt_init(c),
            })?;
            match pad {
                RsaPad::None => check(sys::EVP_PKEY_CTX_set_rsa_padding(c, sys::RSA_NO_PADDING))?,
                RsaPad::Pkcs1(hash) => {
                    check(sys::EVP_PKEY_CTX_set_rsa_padding(c, sys::RSA_PKCS1_PADDING))?;
                    if let Some(h) = hash {
                        check(sys::EVP_PKEY_CTX_set_signature_md(c, evp_md(h)))?;
                    }
                }
                RsaPad::Pss {
                    hash,
                    mgf1,
                    salt_len,
                } => {
                    let salt = c_int::try_from(salt_len).or_else(|_| failed())?;
                    check(sys::EVP_PKEY_CTX_set_rsa_padding(
                        c,
                        sys::RSA_PKCS1_PSS_PADDING,
                    ))?;
                    check(sys::EVP_PKEY_CTX_set_signature_md(c, evp_md(hash)))?;
                    check(sys::EVP_PKEY_CTX_set_rsa_mgf1_md(c, evp_md(mgf1)))?;
                    check(sys::EVP_PKEY_CTX_set_rsa_pss_saltlen(c, salt))?;
                }
                RsaPad::Oaep { hash, mgf1, label } => {
                    check(sys::EVP_PKEY_CTX_set_rsa_padding(
                        c,
                        sys::RSA_PKCS1_OAEP_PADDING,
                    ))?;
                    check(sys::EVP_PKEY_CTX_set_rsa_oaep_md(c, evp_md(hash)))?;
                    check(sys::EVP_PKEY_CTX_set_rsa_mgf1_md(c, evp_md(mgf1)))?;
                    if !label.is_empty() {
                        // The context takes ownership of an OPENSSL_malloc'd copy on success.
                        let copy = sys::OPENSSL_malloc(label.len()).cast::<u8>();
                        if copy.is_null() {
                            return failed();
                        }
                        ptr::copy_nonoverlapping(label.as_ptr(), copy, label.len());
                        if sys::EVP_PKEY_CTX_set0_rsa_oaep_label(c, copy, label.len()) != 1 {
                            sys::OPENSSL_free(copy.cast());
                            return failed();
                        }
                    }
                }
            }
        }
        Ok(ctx)
    }

    /// Signs `input` (a digest, or raw data for `Pkcs1(None)` / `None`) with the private key.
    pub(crate) fn rsa_sign(&self, pad: RsaPad<'_>, input: &[u8]) -> Result<Vec<u8>, Failed> {
        let ctx = self.ctx(Op::Sign, pad)?;
        let mut len = self.rsa_size().map_or_else(failed, Ok)?;
        let mut out = vec![0u8; len];
        // SAFETY: `out` has `len` writable bytes and `len` tells aws-lc so; `input` is readable.
        check(unsafe {
            sys::EVP_PKEY_sign(
                ctx.0.as_ptr(),
                out.as_mut_ptr(),
                &mut len,
                input.as_ptr(),
                input.len(),
            )
        })?;
        out.truncate(len);
        Ok(out)
    }

    /// Verifies `sig` over `input` (as for `rsa_sign`); `Ok(false)` when it does not verify.
    pub(crate) fn rsa_verify(
        &self,
        pad: RsaPad<'_>,
        input: &[u8],
        sig: &[u8],
    ) -> Result<bool, Failed> {
        let ctx = self.ctx(Op::Verify, pad)?;
        // SAFETY: both slices are readable for their lengths.
        let rc = unsafe {
            sys::EVP_PKEY_verify(
                ctx.0.as_ptr(),
                sig.as_ptr(),
                sig.len(),
                input.as_ptr(),
                input.len(),
            )
        };
        if rc == 1 {
            Ok(true)
        } else {
            // SAFETY: clears this thread's error queue only.
            unsafe { sys::ERR_clear_error() };
            Ok(false)
        }
    }

    /// Encrypts `data` with the public key.
    pub(crate) fn rsa_encrypt(&self, pad: RsaPad<'_>, data: &[u8]) -> Result<Vec<u8>, Failed> {
        let ctx = self.ctx(Op::Encrypt, pad)?;
        let mut len = self.rsa_size().map_or_else(failed, Ok)?;
        let mut out = vec![0u8; len];
        // SAFETY: `out` has `len` writable bytes; `data` is readable.
        check(unsafe {
            sys::EVP_PKEY_encrypt(
                ctx.0.as_ptr(),
                out.as_mut_ptr(),
                &mut len,
                data.as_ptr(),
                data.len(),
            )
        })?;
        out.truncate(len);
        Ok(out)
    }

    /// Decrypts `data` with the private key; the plaintext is zeroized on drop.
    pub(crate) fn rsa_decrypt(
        &self,
        pad: RsaPad<'_>,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Failed> {
        let ctx = self.ctx(Op::Decrypt, pad)?;
        let mut len = self.rsa_size().map_or_else(failed, Ok)?;
        let mut out = Zeroizing::new(vec![0u8; len]);
        // SAFETY: `out` has `len` writable bytes; `data` is readable.
        check(unsafe {
            sys::EVP_PKEY_decrypt(
                ctx.0.as_ptr(),
                out.as_mut_ptr(),
                &mut len,
                data.as_ptr(),
                data.len(),
            )
        })?;
        out.truncate(len);
        Ok(out)
    }

    /// ECDSA over `digest` (any length: aws-lc truncates to the order's bit length as ECDSA
    /// specifies); the signature is `r || s`, each `field_bytes` long.
    pub(crate) fn ecdsa_sign(&self, digest: &[u8], field_bytes: usize) -> Result<Vec<u8>, Failed> {
        let key = self.ec_key().map_or_else(failed, Ok)?;
        // SAFETY: `key` is a valid EC private key borrowed from self; `digest` is readable.
        // ECDSA_do_sign takes a const key and is safe to call concurrently.
        let sig = unsafe { sys::ECDSA_do_sign(digest.as_ptr(), digest.len(), key) };
        let sig = NonNull::new(sig).map(EcdsaSig).map_or_else(failed, Ok)?;
        let mut r: *const sys::BIGNUM = ptr::null();
        let mut s: *const sys::BIGNUM = ptr::null();
        // SAFETY: `sig` is valid; r and s are set to pointers owned by `sig`.
        unsafe { sys::ECDSA_SIG_get0(sig.0.as_ptr(), &mut r, &mut s) };
        if r.is_null() || s.is_null() {
            return failed();
        }
        let mut out = Vec::with_capacity(2 * field_bytes);
        bn_to_padded(r, field_bytes, &mut out)?;
        bn_to_padded(s, field_bytes, &mut out)?;
        Ok(out)
    }

    /// Verifies an `r || s` ECDSA signature over `digest`; `Ok(false)` when it does not verify.
    pub(crate) fn ecdsa_verify(&self, digest: &[u8], sig: &[u8]) -> Result<bool, Failed> {
        let key = self.ec_key().map_or_else(failed, Ok)?;
        let (r, s) = sig.split_at(sig.len() / 2);
        let r = Bn::from_be(r)?;
        let s = Bn::from_be(s)?;
        // SAFETY: returns an owned, empty signature object or NULL.
        let esig = NonNull::new(unsafe { sys::ECDSA_SIG_new() })
            .map(EcdsaSig)
            .map_or_else(failed, Ok)?;
        // SAFETY: all valid; on success ECDSA_SIG_set0 takes ownership of r and s.
        check(unsafe { sys::ECDSA_SIG_set0(esig.0.as_ptr(), r.0.as_ptr(), s.0.as_ptr()) })?;
        let _ = (r.into_raw(), s.into_raw()); // owned by `esig` now
                                              // SAFETY: all pointers valid and borrowed for the call; ECDSA_do_verify is const.
        let rc =
            unsafe { sys::ECDSA_do_verify(digest.as_ptr(), digest.len(), esig.0.as_ptr(), key) };
        if rc == 1 {
            Ok(true)
        } else {
            // SAFETY: clears this thread's error queue only.
            unsafe { sys::ERR_clear_error() };
            Ok(false)
        }
    }

    /// The key as DER `PrivateKeyInfo` (PKCS #8), zeroized on drop.
    pub(crate) fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, Failed> {
        let mut cbb = MaybeUninit::<sys::CBB>::zeroed();
        // SAFETY: a zeroed CBB is the documented "empty" state for CBB_init/CBB_cleanup.
        check(unsafe { sys::CBB_init(cbb.as_mut_ptr(), 2048) })?;
        // SAFETY: the CBB was initialised; the key is valid and only read.
        if unsafe { sys::EVP_marshal_private_key(cbb.as_mut_ptr(), self.0.as_ptr()) } != 1 {
            // SAFETY: initialised CBB; cleanup frees its buffer.
            unsafe { sys::CBB_cleanup(cbb.as_mut_ptr()) };
            return failed();
        }
        let mut data: *mut u8 = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: initialised CBB; on success we own `data` (OPENSSL_malloc'd, `len` bytes).
        if unsafe { sys::CBB_finish(cbb.as_mut_ptr(), &mut data, &mut len) } != 1 || data.is_null()
        {
            // SAFETY: as above.
            unsafe { sys::CBB_cleanup(cbb.as_mut_ptr()) };
            return failed();
        }
        // SAFETY: `data` points at `len` initialised bytes that we own.
        let out = Zeroizing::new(unsafe { std::slice::from_raw_parts(data, len) }.to_vec());
        // SAFETY: `data` came from OPENSSL_malloc; aws-lc's OPENSSL_free cleanses before freeing.
        unsafe { sys::OPENSSL_free(data.cast()) };
        Ok(out)
    }
}

/// Generates an RSA key of `bits` bits with the public exponent `e` (big-endian); PKCS #8 out.
pub(crate) fn rsa_generate(bits: usize, e: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failed> {
    rsa_pkcs8(rsa_generate_key(bits, e)?)
}

/// aws-lc's RSA key generation (FIPS 186-4 B.3.3 probable primes; `bits` rounded down to a
/// multiple of 128).
fn rsa_generate_key(bits: usize, e: &[u8]) -> Result<Rsa, Failed> {
    let bits = c_int::try_from(bits).or_else(|_| failed())?;
    let e = Bn::from_be(e)?;
    // SAFETY: returns an owned, empty RSA or NULL.
    let rsa = NonNull::new(unsafe { sys::RSA_new() })
        .map(Rsa)
        .map_or_else(failed, Ok)?;
    // SAFETY: valid RSA and exponent; no callback.
    check(unsafe {
        sys::RSA_generate_key_ex(rsa.0.as_ptr(), bits, e.0.as_ptr(), ptr::null_mut())
    })?;
    Ok(rsa)
}

/// An RSA key as PKCS #8 (the key moves into an `EVP_PKEY` and is freed with it).
fn rsa_pkcs8(rsa: Rsa) -> Result<Zeroizing<Vec<u8>>, Failed> {
    let pkey = Pkey::assign(rsa.0, sys::EVP_PKEY_assign_RSA)?;
    std::mem::forget(rsa); // now owned by `pkey`
    pkey.to_pkcs8()
}

/// An owned `BN_CTX` (scratch space for BIGNUM arithmetic).
struct BnCtx(NonNull<sys::BN_CTX>);

impl Drop for BnCtx {
    fn drop(&mut self) {
        // SAFETY: we own the context.
        unsafe { sys::BN_CTX_free(self.0.as_ptr()) };
    }
}

impl Bn {
    /// A new BIGNUM holding zero.
    fn zero() -> Result<Self, Failed> {
        // SAFETY: returns an owned BIGNUM or NULL.
        NonNull::new(unsafe { sys::BN_new() })
            .map(Bn)
            .map_or_else(failed, Ok)
    }

    /// Its length in bits.
    fn bits(&self) -> usize {
        // SAFETY: a valid BIGNUM, only read.
        usize::try_from(unsafe { sys::BN_num_bits(self.0.as_ptr()) }).unwrap_or(0)
    }

    /// `self - 1` as a new BIGNUM.
    fn minus_one(&self) -> Result<Self, Failed> {
        let r = Bn::zero()?;
        // SAFETY: both valid; BN_copy writes `r`.
        if unsafe { sys::BN_copy(r.0.as_ptr(), self.0.as_ptr()) }.is_null() {
            return failed();
        }
        // SAFETY: `r` is valid and ours.
        check(unsafe { sys::BN_sub_word(r.0.as_ptr(), 1) })?;
        Ok(r)
    }
}

/// One random probable prime of exactly `bits` bits (top bit set), from aws-lc's generator.
fn random_prime(bits: usize) -> Result<Bn, Failed> {
    let p = Bn::zero()?;
    let bits = c_int::try_from(bits).or_else(|_| failed())?;
    // SAFETY: `p` is valid and ours; not a safe prime; no add/rem constraint; no callback.
    check(unsafe {
        sys::BN_generate_prime_ex(
            p.0.as_ptr(),
            bits,
            0,
            ptr::null(),
            ptr::null(),
            ptr::null_mut(),
        )
    })?;
    Ok(p)
}

/// Generates an RSA key whose modulus has exactly `bits` bits, for sizes aws-lc's own
/// generator does not make (it rounds down to a multiple of 128 bits): two random probable
/// primes of `ceil(bits/2)` and `floor(bits/2)` bits from `BN_generate_prime_ex` (Miller-Rabin
/// rounds for the size), drawn again until the product has `bits` bits, the primes differ in
/// their top 100 bits (FIPS 186-4 B.3.1 asks |p - q| > 2^(bits/2 - 100)) and `e` is prime to
/// both `p - 1` and `q - 1`; then `d = e^-1 mod lcm(p - 1, q - 1)`, the CRT values, and
/// `RSA_check_key` on the result. PKCS #8 out.
pub(crate) fn rsa_generate_exact(bits: usize, e: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failed> {
    if bits < 1024 {
        return failed();
    }
    let e = Bn::from_be(e)?;
    // SAFETY: returns an owned context or NULL.
    let ctx = NonNull::new(unsafe { sys::BN_CTX_new() })
        .map(BnCtx)
        .map_or_else(failed, Ok)?;
    let c = ctx.0.as_ptr();
    let (p_bits, q_bits) = (bits.div_ceil(2), bits / 2);
    // Each draw succeeds with probability about 0.6; 64 draws failing is a broken generator.
    for _ in 0..64 {
        let (p, q) = (random_prime(p_bits)?, random_prime(q_bits)?);
        let n = Bn::zero()?;
        // SAFETY: all valid; `n` is ours and distinct from the inputs.
        check(unsafe { sys::BN_mul(n.0.as_ptr(), p.0.as_ptr(), q.0.as_ptr(), c) })?;
        let diff = Bn::zero()?;
        // SAFETY: all valid; `diff` is ours (BN_sub gives a signed result; only its size counts).
        check(unsafe { sys::BN_sub(diff.0.as_ptr(), p.0.as_ptr(), q.0.as_ptr()) })?;
        if n.bits() != bits || diff.bits() + 100 <= q_bits {
            continue;
        }
        let (p1, q1) = (p.minus_one()?, q.minus_one()?);
        let g = Bn::zero()?;
        let coprime = |x: &Bn| -> Result<bool, Failed> {
            // SAFETY: all valid; `g` is ours.
            check(unsafe { sys::BN_gcd(g.0.as_ptr(), e.0.as_ptr(), x.0.as_ptr(), c) })?;
            // SAFETY: `g` is valid.
            Ok(unsafe { sys::BN_is_one(g.0.as_ptr()) } == 1)
        };
        if !coprime(&p1)? || !coprime(&q1)? {
            continue;
        }
        // lcm(p - 1, q - 1) = (p - 1)(q - 1) / gcd(p - 1, q - 1).
        let (phi, gpq, lambda, rem) = (Bn::zero()?, Bn::zero()?, Bn::zero()?, Bn::zero()?);
        // SAFETY: all valid; each output is ours and distinct from its inputs.
        unsafe {
            check(sys::BN_mul(phi.0.as_ptr(), p1.0.as_ptr(), q1.0.as_ptr(), c))?;
            check(sys::BN_gcd(gpq.0.as_ptr(), p1.0.as_ptr(), q1.0.as_ptr(), c))?;
            check(sys::BN_div(
                lambda.0.as_ptr(),
                rem.0.as_ptr(),
                phi.0.as_ptr(),
                gpq.0.as_ptr(),
                c,
            ))?;
        }
        let (d, dmp1, dmq1, iqmp) = (Bn::zero()?, Bn::zero()?, Bn::zero()?, Bn::zero()?);
        // SAFETY: all valid; the outputs are ours and distinct from the inputs; BN_mod_inverse
        // returns its output or NULL.
        unsafe {
            if sys::BN_mod_inverse(d.0.as_ptr(), e.0.as_ptr(), lambda.0.as_ptr(), c).is_null() {
                return failed();
            }
            check(sys::BN_nnmod(
                dmp1.0.as_ptr(),
                d.0.as_ptr(),
                p1.0.as_ptr(),
                c,
            ))?;
            check(sys::BN_nnmod(
                dmq1.0.as_ptr(),
                d.0.as_ptr(),
                q1.0.as_ptr(),
                c,
            ))?;
            if sys::BN_mod_inverse(iqmp.0.as_ptr(), q.0.as_ptr(), p.0.as_ptr(), c).is_null() {
                return failed();
            }
        }
        // SAFETY: every component is a valid BIGNUM; RSA_new_private_key copies them and
        // returns an owned key or NULL.
        let rsa = NonNull::new(unsafe {
            sys::RSA_new_private_key(
                n.0.as_ptr(),
                e.0.as_ptr(),
                d.0.as_ptr(),
                p.0.as_ptr(),
                q.0.as_ptr(),
                dmp1.0.as_ptr(),
                dmq1.0.as_ptr(),
                iqmp.0.as_ptr(),
            )
        })
        .map(Rsa)
        .map_or_else(failed, Ok)?;
        // SAFETY: a valid key, only read.
        check(unsafe { sys::RSA_check_key(rsa.0.as_ptr()) })?;
        return rsa_pkcs8(rsa);
    }
    failed()
}

/// Generates an RSA key for `CKM_RSA_X9_31_KEY_PAIR_GEN`: FIPS 186-4 appendix B.3.3 probable
/// primes (aws-lc's generator, with |p - q| > 2^(nlen/2 - 100) and d > 2^(nlen/2)), then
/// `RSA_check_fips`: SP 800-89 §5.3.3 partial public-key validation (e odd and 2^16 < e < 2^256,
/// n odd, no small factor, composite) and a pairwise consistency test. PKCS #8 out.
///
/// `RSA_generate_key_fips` would do the same but only for e = 65537; this keeps any exponent the
/// caller may choose within those bounds.
pub(crate) fn rsa_generate_checked(bits: usize, e: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failed> {
    let rsa = rsa_generate_key(bits, e)?;
    // SAFETY: a complete private key generated just above, owned by `rsa`.
    check(unsafe { sys::RSA_check_fips(rsa.0.as_ptr()) })?;
    rsa_pkcs8(rsa)
}

/// An owned `EVP_AEAD_CTX`.
struct AeadCtx(NonNull<sys::EVP_AEAD_CTX>);

impl Drop for AeadCtx {
    fn drop(&mut self) {
        // SAFETY: we own the context; free cleanses the key schedule.
        unsafe { sys::EVP_AEAD_CTX_free(self.0.as_ptr()) };
    }
}

impl AeadCtx {
    /// Seals `data` into `out` (`ciphertext || tag`); returns the length written.
    fn seal_into(
        &self,
        iv: &[u8],
        aad: &[u8],
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Failed> {
        let mut len = 0usize;
        // SAFETY: `out` has `out.len()` writable bytes and, being a `&mut`, does not overlap
        // `data`; the other slices are readable for their lengths; the context is valid.
        check(unsafe {
            sys::EVP_AEAD_CTX_seal(
                self.0.as_ptr(),
                out.as_mut_ptr(),
                &mut len,
                out.len(),
                iv.as_ptr(),
                iv.len(),
                data.as_ptr(),
                data.len(),
                aad.as_ptr(),
                aad.len(),
            )
        })?;
        Ok(len)
    }

    /// An AES-GCM context for a 16, 24 or 32 byte key and a tag of `tag_len` (1..=16) bytes.
    fn aes_gcm(key: &[u8], tag_len: usize) -> Result<Self, Failed> {
        // SAFETY: the EVP_aead_* functions return static method tables.
        let aead = unsafe {
            match key.len() {
                16 => sys::EVP_aead_aes_128_gcm(),
                24 => sys::EVP_aead_aes_192_gcm(),
                32 => sys::EVP_aead_aes_256_gcm(),
                _ => return failed(),
            }
        };
        if !(1..=16).contains(&tag_len) {
            return failed();
        }
        // SAFETY: `key` is readable; the key length matches the AEAD; returns owned or NULL.
        let ctx = unsafe { sys::EVP_AEAD_CTX_new(aead, key.as_ptr(), key.len(), tag_len) };
        NonNull::new(ctx).map(AeadCtx).map_or_else(failed, Ok)
    }
}

/// An AES-GCM key with a 16-byte tag, its key schedule made once, that seals into a caller's
/// buffer without first copying the plaintext there (aws-lc-rs only seals in place).
pub(crate) struct GcmSealer(AeadCtx);

// SAFETY: the context is not changed after `EVP_AEAD_CTX_new` (sealing takes it `const`), so
// it may move between threads and be used by several at once; only `Drop` frees it.
unsafe impl Send for GcmSealer {}
// SAFETY: as above.
unsafe impl Sync for GcmSealer {}

impl GcmSealer {
    /// For a 16, 24 or 32 byte key.
    pub(crate) fn new(key: &[u8]) -> Result<Self, Failed> {
        AeadCtx::aes_gcm(key, 16).map(GcmSealer)
    }

    /// `ciphertext || tag` of `data` into `out` (at least `data.len() + 16` bytes, which must
    /// not overlap `data`); returns the length written.
    pub(crate) fn seal_into(
        &self,
        iv: &[u8],
        aad: &[u8],
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Failed> {
        if iv.is_empty() || out.len() < data.len().saturating_add(16) {
            return failed();
        }
        self.0.seal_into(iv, aad, data, out)
    }
}

/// AES-GCM encryption with any non-empty IV and tag length 1..=16: `ciphertext || tag`.
pub(crate) fn aes_gcm_seal(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    tag_len: usize,
    data: &[u8],
) -> Result<Vec<u8>, Failed> {
    if iv.is_empty() {
        return failed();
    }
    let ctx = AeadCtx::aes_gcm(key, tag_len)?;
    let max = data.len().checked_add(tag_len).map_or_else(failed, Ok)?;
    let mut out = vec![0u8; max];
    let len = ctx.seal_into(iv, aad, data, &mut out)?;
    out.truncate(len);
    Ok(out)
}

/// AES-GCM decryption of `ciphertext || tag`; any failure (including a bad tag) is `Failed`.
pub(crate) fn aes_gcm_open(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    tag_len: usize,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Failed> {
    if iv.is_empty() || data.len() < tag_len {
        return failed();
    }
    let ctx = AeadCtx::aes_gcm(key, tag_len)?;
    let mut out = Zeroizing::new(vec![0u8; data.len()]);
    let mut len = 0usize;
    // SAFETY: `out` has data.len() writable bytes (at least the plaintext length); every input
    // slice is readable for its length.
    check(unsafe {
        sys::EVP_AEAD_CTX_open(
            ctx.0.as_ptr(),
            out.as_mut_ptr(),
            &mut len,
            data.len(),
            iv.as_ptr(),
            iv.len(),
            data.as_ptr(),
            data.len(),
            aad.as_ptr(),
            aad.len(),
        )
    })?;
    out.truncate(len);
    Ok(out)
}

/// The NIDs of the curves, as aws-lc names them.
pub(crate) mod nid {
    use std::os::raw::c_int;
    /// P-256 (`prime256v1`).
    pub(crate) const P256: c_int = aws_lc_sys::NID_X9_62_prime256v1;
    /// P-384 (`secp384r1`).
    pub(crate) const P384: c_int = aws_lc_sys::NID_secp384r1;
    /// P-521 (`secp521r1`).
    pub(crate) const P521: c_int = aws_lc_sys::NID_secp521r1;
    /// secp256k1.
    pub(crate) const SECP256K1: c_int = aws_lc_sys::NID_secp256k1;
}

/// `EVP_PKEY_RSA`.
pub(crate) const PKEY_RSA: c_int = sys::EVP_PKEY_RSA;
/// `EVP_PKEY_EC`.
pub(crate) const PKEY_EC: c_int = sys::EVP_PKEY_EC;
/// `EVP_PKEY_ED25519`.
pub(crate) const PKEY_ED25519: c_int = sys::EVP_PKEY_ED25519;

impl Pkey {
    /// Raw ECDH (SP 800-56A, cofactor 1): the x-coordinate of `d * peer`, left-padded to the
    /// field length. `peer` is an encoded point (uncompressed or compressed) that must lie on
    /// this key's curve; this key must be an EC private key.
    pub(crate) fn ecdh(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failed> {
        let key = self.ec_key().map_or_else(failed, Ok)?;
        // SAFETY: `key` is a valid EC key borrowed from self; the group is owned by it.
        let group = unsafe { sys::EC_KEY_get0_group(key) };
        if group.is_null() {
            return failed();
        }
        // SAFETY: `key` is valid; returns a pointer owned by the key or NULL.
        if unsafe { sys::EC_KEY_get0_private_key(key) }.is_null() {
            return failed();
        }
        // SAFETY: `group` is valid; returns an owned point or NULL.
        let pt = NonNull::new(unsafe { sys::EC_POINT_new(group) })
            .map(EcPoint)
            .map_or_else(failed, Ok)?;
        // SAFETY: all pointers valid; `peer` is read within its length. oct2point rejects points
        // not on the curve (and the point at infinity, whose encoding is one zero byte).
        check(unsafe {
            sys::EC_POINT_oct2point(
                group,
                pt.0.as_ptr(),
                peer.as_ptr(),
                peer.len(),
                ptr::null_mut(),
            )
        })?;
        // SAFETY: `group` is valid.
        let degree = unsafe { sys::EC_GROUP_get_degree(group) };
        let len = usize::try_from(degree).or_else(|_| failed())?.div_ceil(8);
        let mut out = Zeroizing::new(vec![0u8; len]);
        // SAFETY: `out` has `len` writable bytes; the point and key are valid and only read;
        // no KDF callback.
        let rc = unsafe {
            sys::ECDH_compute_key(out.as_mut_ptr().cast(), len, pt.0.as_ptr(), key, None)
        };
        if usize::try_from(rc).ok() != Some(len) {
            return failed();
        }
        Ok(out)
    }

    /// The 32-byte seed of an Ed25519 private key.
    pub(crate) fn ed25519_seed(&self) -> Result<Zeroizing<Vec<u8>>, Failed> {
        if self.id() != PKEY_ED25519 {
            return failed();
        }
        let mut out = Zeroizing::new(vec![0u8; 32]);
        let mut len = out.len();
        // SAFETY: valid key; `out` has `len` writable bytes and `len` says so.
        check(unsafe {
            sys::EVP_PKEY_get_raw_private_key(self.0.as_ptr(), out.as_mut_ptr(), &mut len)
        })?;
        if len != 32 {
            return failed();
        }
        Ok(out)
    }
}

/// Builds an EC private key on curve `nid` from its big-endian scalar (`0 < d < n`, else
/// `Failed`), computing the public point: PKCS #8 DER out.
pub(crate) fn ec_private_from_scalar(
    nid: c_int,
    scalar: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Failed> {
    // SAFETY: returns an owned EC_KEY or NULL.
    let key = NonNull::new(unsafe { sys::EC_KEY_new_by_curve_name(nid) })
        .map(EcKey)
        .map_or_else(failed, Ok)?;
    // SAFETY: `key` is valid; its group is static for a named curve.
    let group = unsafe { sys::EC_KEY_get0_group(key.0.as_ptr()) };
    if group.is_null() {
        return failed();
    }
    let d = Bn::from_be(scalar)?;
    // SAFETY: both valid; the scalar is copied, and rejected if zero or not below the order.
    check(unsafe { sys::EC_KEY_set_private_key(key.0.as_ptr(), d.0.as_ptr()) })?;
    // SAFETY: `group` is valid; returns an owned point or NULL.
    let pt = NonNull::new(unsafe { sys::EC_POINT_new(group) })
        .map(EcPoint)
        .map_or_else(failed, Ok)?;
    // SAFETY: all valid; computes d * G into `pt` (no other terms, default context).
    check(unsafe {
        sys::EC_POINT_mul(
            group,
            pt.0.as_ptr(),
            d.0.as_ptr(),
            ptr::null(),
            ptr::null(),
            ptr::null_mut(),
        )
    })?;
    // SAFETY: both valid; the point is copied into the key.
    check(unsafe { sys::EC_KEY_set_public_key(key.0.as_ptr(), pt.0.as_ptr()) })?;
    // SAFETY: valid key; checks the pair is consistent.
    check(unsafe { sys::EC_KEY_check_key(key.0.as_ptr()) })?;
    let pkey = Pkey::assign(key.0, sys::EVP_PKEY_assign_EC_KEY)?;
    std::mem::forget(key); // now owned by `pkey`
    pkey.to_pkcs8()
}

/// An expanded AES key schedule, cleansed on drop.
struct AesKey(Box<MaybeUninit<sys::AES_KEY>>);

impl AesKey {
    /// The encryption (or decryption) schedule of a 16, 24 or 32 byte key.
    fn new(key: &[u8], decrypt: bool) -> Result<Self, Failed> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return failed();
        }
        let bits = u32::try_from(key.len() * 8).or_else(|_| failed())?;
        let mut k = AesKey(Box::new(MaybeUninit::zeroed()));
        // SAFETY: `key` holds bits/8 readable bytes; the schedule is written in place. These
        // functions return 0 on success.
        let rc = unsafe {
            if decrypt {
                sys::AES_set_decrypt_key(key.as_ptr(), bits, k.0.as_mut_ptr())
            } else {
                sys::AES_set_encrypt_key(key.as_ptr(), bits, k.0.as_mut_ptr())
            }
        };
        if rc != 0 {
            return failed();
        }
        Ok(k)
    }

    fn ptr(&self) -> *const sys::AES_KEY {
        self.0.as_ptr()
    }
}

impl Drop for AesKey {
    fn drop(&mut self) {
        // SAFETY: the box holds size_of::<AES_KEY>() writable bytes.
        unsafe {
            sys::OPENSSL_cleanse(
                self.0.as_mut_ptr().cast(),
                std::mem::size_of::<sys::AES_KEY>(),
            )
        };
    }
}

/// AES key wrap (RFC 3394 with the default IV, or RFC 5649 when `padded`) with any AES key size
/// (`aws-lc-rs` offers only AES-128 and AES-256).
pub(crate) fn aes_wrap(key: &[u8], data: &[u8], padded: bool) -> Result<Vec<u8>, Failed> {
    let k = AesKey::new(key, false)?;
    let max = data.len().checked_add(16).map_or_else(failed, Ok)?;
    let mut out = vec![0u8; max];
    let len = if padded {
        let mut len = 0usize;
        // SAFETY: `out` has `max` writable bytes and `max` says so; `data` is readable.
        check(unsafe {
            sys::AES_wrap_key_padded(
                k.ptr(),
                out.as_mut_ptr(),
                &mut len,
                max,
                data.as_ptr(),
                data.len(),
            )
        })?;
        len
    } else {
        if data.len() < 16 || data.len() % 8 != 0 {
            return failed();
        }
        // SAFETY: `out` has data.len() + 16 >= data.len() + 8 writable bytes, as AES_wrap_key
        // writes; a NULL IV selects the default.
        let rc = unsafe {
            sys::AES_wrap_key(
                k.ptr(),
                ptr::null(),
                out.as_mut_ptr(),
                data.as_ptr(),
                data.len(),
            )
        };
        usize::try_from(rc).or_else(|_| failed())?
    };
    if len > max {
        return failed();
    }
    out.truncate(len);
    Ok(out)
}

/// Undoes [`aes_wrap`]; any integrity failure is `Failed`.
pub(crate) fn aes_unwrap(
    key: &[u8],
    data: &[u8],
    padded: bool,
) -> Result<Zeroizing<Vec<u8>>, Failed> {
    if data.len() < 16 || data.len() % 8 != 0 {
        return failed();
    }
    let k = AesKey::new(key, true)?;
    let max = data.len();
    let mut out = Zeroizing::new(vec![0u8; max]);
    let len = if padded {
        let mut len = 0usize;
        // SAFETY: `out` has `max` writable bytes and `max` says so; `data` is readable.
        check(unsafe {
            sys::AES_unwrap_key_padded(
                k.ptr(),
                out.as_mut_ptr(),
                &mut len,
                max,
                data.as_ptr(),
                data.len(),
            )
        })?;
        len
    } else {
        if data.len() < 24 {
            return failed();
        }
        // SAFETY: `out` has data.len() >= data.len() - 8 writable bytes; a NULL IV selects the
        // default.
        let rc = unsafe {
            sys::AES_unwrap_key(
                k.ptr(),
                ptr::null(),
                out.as_mut_ptr(),
                data.as_ptr(),
                data.len(),
            )
        };
        usize::try_from(rc).or_else(|_| failed())?
    };
    if len > max {
        return failed();
    }
    out.truncate(len);
    Ok(out)
}
