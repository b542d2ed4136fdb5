//! The module's C ABI as the vector runners use it: key import with `C_CreateObject` (session
//! objects, destroyed when dropped), one-shot sign / verify / encrypt / decrypt, and names for
//! mechanisms and return values so failures read well.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{attr, attr_bytes, Module, FALSE, TRUE};

/// Which call of an operation returned the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `C_*Init`.
    Init,
    /// `C_Sign`, `C_Verify`, `C_Encrypt`, `C_Decrypt`.
    Op,
}

/// An operation's error: the call and its return value.
#[derive(Clone, Copy, Debug)]
pub struct OpErr {
    pub stage: Stage,
    pub rv: CK_RV,
}

impl std::fmt::Display for OpErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let call = match self.stage {
            Stage::Init => "C_*Init",
            Stage::Op => "the operation",
        };
        write!(f, "{} from {call}", rv_name(self.rv))
    }
}

/// One R/W session of a logged-in user, with the mechanism list at hand.
pub struct P11 {
    pub m: &'static Module,
    pub h: CK_SESSION_HANDLE,
    pub mechs: BTreeSet<CK_MECHANISM_TYPE>,
    pub info: BTreeMap<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>,
    /// `CKA_EC_PARAMS` values the module can generate keys on (probed once per curve).
    curves: std::cell::RefCell<BTreeMap<Vec<u8>, bool>>,
}

/// A session object, destroyed when dropped.
pub struct Obj<'a> {
    p: &'a P11,
    pub h: CK_OBJECT_HANDLE,
}

impl Drop for Obj<'_> {
    fn drop(&mut self) {
        let rv = call!(self.p.m, C_DestroyObject, self.p.h, self.h);
        assert_eq!(rv, CKR_OK, "C_DestroyObject of an imported key");
    }
}

impl P11 {
    /// Reads the mechanism list of slot 0 and opens a session (the token must already have a
    /// logged-in user: login state is shared by the application's sessions).
    pub fn open(m: &'static Module) -> P11 {
        let mut n: CK_ULONG = 0;
        assert_eq!(
            call!(m, C_GetMechanismList, 0, ptr::null_mut(), &mut n),
            CKR_OK
        );
        let mut list = vec![0 as CK_MECHANISM_TYPE; n as usize];
        assert_eq!(
            call!(m, C_GetMechanismList, 0, list.as_mut_ptr(), &mut n),
            CKR_OK
        );
        list.truncate(n as usize);
        let mut info = BTreeMap::new();
        for mech in &list {
            // SAFETY: CK_MECHANISM_INFO is plain data; all-zero is a valid value.
            let mut mi: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
            assert_eq!(call!(m, C_GetMechanismInfo, 0, *mech, &mut mi), CKR_OK);
            info.insert(*mech, mi);
        }
        P11 {
            m,
            h: m.open(true),
            mechs: list.into_iter().collect(),
            info,
            curves: Default::default(),
        }
    }

    /// `Err` naming the mechanism when the module does not list it.
    pub fn need(&self, mech: CK_MECHANISM_TYPE) -> Result<(), String> {
        if self.mechs.contains(&mech) {
            Ok(())
        } else {
            Err(format!("{} is not in C_GetMechanismList", mech_name(mech)))
        }
    }

    /// The smallest RSA modulus (bits) the module's RSA mechanisms take.
    pub fn rsa_min_bits(&self) -> usize {
        self.info
            .get(&CKM_RSA_PKCS)
            .map_or(2048, |i| i.ulMinKeySize as usize)
    }

    fn create(&self, t: &mut [CK_ATTRIBUTE]) -> Result<Obj<'_>, CK_RV> {
        let mut o = 0;
        let rv = call!(
            self.m,
            C_CreateObject,
            self.h,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut o
        );
        if rv == CKR_OK {
            Ok(Obj { p: self, h: o })
        } else {
            Err(rv)
        }
    }

    /// A secret key of `key_type` (`CKK_AES`, `CKK_GENERIC_SECRET`) with `CKA_VALUE`, usable for
    /// everything its type allows and extractable (so it can be wrapped).
    pub fn secret(&self, key_type: CK_KEY_TYPE, value: &[u8]) -> Result<Obj<'_>, CK_RV> {
        let class = CKO_SECRET_KEY;
        let mut t = vec![
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &key_type),
            attr(CKA_TOKEN, &FALSE),
            attr_bytes(CKA_VALUE, value),
            attr(CKA_SIGN, &TRUE),
            attr(CKA_VERIFY, &TRUE),
            attr(CKA_EXTRACTABLE, &TRUE),
            attr(CKA_SENSITIVE, &FALSE),
        ];
        if key_type == CKK_AES {
            // A data key: the key policy forbids one key that both encrypts and wraps.
            t.extend_from_slice(&[attr(CKA_ENCRYPT, &TRUE), attr(CKA_DECRYPT, &TRUE)]);
        } else {
            t.push(attr(CKA_DERIVE, &TRUE));
        }
        self.create(&mut t)
    }

    /// An AES key-encryption key: wraps and unwraps, never encrypts or decrypts data (the key
    /// policy).
    pub fn kek(&self, value: &[u8]) -> Result<Obj<'_>, CK_RV> {
        let class = CKO_SECRET_KEY;
        let key_type = CKK_AES;
        let mut t = vec![
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &key_type),
            attr(CKA_TOKEN, &FALSE),
            attr_bytes(CKA_VALUE, value),
            attr(CKA_WRAP, &TRUE),
            attr(CKA_UNWRAP, &TRUE),
            attr(CKA_ENCRYPT, &FALSE),
            attr(CKA_DECRYPT, &FALSE),
        ];
        self.create(&mut t)
    }

    /// `CKA_VALUE` of a (non-sensitive, extractable) secret key.
    pub fn value(&self, o: &Obj) -> Result<Vec<u8>, CK_RV> {
        let mut a = CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        let rv = call!(self.m, C_GetAttributeValue, self.h, o.h, &mut a, 1);
        if rv != CKR_OK {
            return Err(rv);
        }
        let mut buf = vec![0u8; a.ulValueLen as usize];
        a.pValue = buf.as_mut_ptr() as *mut c_void;
        let rv = call!(self.m, C_GetAttributeValue, self.h, o.h, &mut a, 1);
        if rv != CKR_OK {
            return Err(rv);
        }
        buf.truncate(a.ulValueLen as usize);
        Ok(buf)
    }

    /// `C_WrapKey` of `key` under `wrapping`.
    pub fn wrap(
        &self,
        mech: &mut CK_MECHANISM,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
    ) -> Result<Vec<u8>, OpErr> {
        self.out_call(4096, |out, len| {
            call!(self.m, C_WrapKey, self.h, mech, wrapping, key, out, len)
        })
    }

    /// A template for a generic secret the module makes (unwrap, derive): a session object
    /// whose value can be read back; `len` adds `CKA_VALUE_LEN`.
    fn secret_template(len: Option<&CK_ULONG>) -> Vec<CK_ATTRIBUTE> {
        static CLASS: CK_OBJECT_CLASS = CKO_SECRET_KEY;
        static KT: CK_KEY_TYPE = CKK_GENERIC_SECRET;
        let mut t = vec![
            attr(CKA_CLASS, &CLASS),
            attr(CKA_KEY_TYPE, &KT),
            attr(CKA_TOKEN, &FALSE),
            attr(CKA_EXTRACTABLE, &TRUE),
            attr(CKA_SENSITIVE, &FALSE),
        ];
        if let Some(l) = len {
            t.push(attr(CKA_VALUE_LEN, l));
        }
        t
    }

    /// `C_UnwrapKey` into a generic secret; returns its value.
    pub fn unwrap(
        &self,
        mech: &mut CK_MECHANISM,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
    ) -> Result<Vec<u8>, OpErr> {
        let mut t = Self::secret_template(None);
        let mut o = 0;
        let rv = call!(
            self.m,
            C_UnwrapKey,
            self.h,
            mech,
            unwrapping,
            wrapped.as_ptr() as *mut u8,
            wrapped.len() as CK_ULONG,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut o
        );
        if rv != CKR_OK {
            return Err(OpErr {
                stage: Stage::Op,
                rv,
            });
        }
        let obj = Obj { p: self, h: o };
        self.value(&obj).map_err(|rv| OpErr {
            stage: Stage::Op,
            rv,
        })
    }

    /// `C_DeriveKey` of a `len`-byte generic secret; returns its value.
    pub fn derive(
        &self,
        mech: &mut CK_MECHANISM,
        base: CK_OBJECT_HANDLE,
        len: usize,
    ) -> Result<Vec<u8>, OpErr> {
        let l = len as CK_ULONG;
        let mut t = Self::secret_template(Some(&l));
        let mut o = 0;
        let rv = call!(
            self.m,
            C_DeriveKey,
            self.h,
            mech,
            base,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut o
        );
        if rv != CKR_OK {
            return Err(OpErr {
                stage: Stage::Op,
                rv,
            });
        }
        let obj = Obj { p: self, h: o };
        self.value(&obj).map_err(|rv| OpErr {
            stage: Stage::Op,
            rv,
        })
    }

    /// An EC private key (for ECDH) from its scalar.
    pub fn ec_private(&self, params: &[u8], scalar: &[u8]) -> Result<Obj<'_>, CK_RV> {
        let class = CKO_PRIVATE_KEY;
        let kt = CKK_EC;
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr(CKA_TOKEN, &FALSE),
            attr(CKA_PRIVATE, &TRUE),
            attr_bytes(CKA_EC_PARAMS, params),
            attr_bytes(CKA_VALUE, scalar),
            attr(CKA_DERIVE, &TRUE),
        ];
        self.create(&mut t)
    }

    /// An Ed25519 public key (`CKK_EC_EDWARDS`, `CKA_EC_PARAMS` the OID 1.3.101.112).
    pub fn ed25519_public(&self, pk: &[u8]) -> Result<Obj<'_>, CK_RV> {
        let class = CKO_PUBLIC_KEY;
        let kt = CKK_EC_EDWARDS;
        let params = der_oid("1.3.101.112");
        let point = der_octet_string(pk);
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr(CKA_TOKEN, &FALSE),
            attr_bytes(CKA_EC_PARAMS, &params),
            attr_bytes(CKA_EC_POINT, &point),
            attr(CKA_VERIFY, &TRUE),
        ];
        self.create(&mut t)
    }

    /// An RSA public key from `n` and `e` (big-endian).
    pub fn rsa_public(&self, n: &[u8], e: &[u8]) -> Result<Obj<'_>, CK_RV> {
        let class = CKO_PUBLIC_KEY;
        let kt = CKK_RSA;
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr(CKA_TOKEN, &FALSE),
            attr_bytes(CKA_MODULUS, n),
            attr_bytes(CKA_PUBLIC_EXPONENT, e),
            attr(CKA_VERIFY, &TRUE),
            attr(CKA_ENCRYPT, &TRUE),
        ];
        self.create(&mut t)
    }

    /// An RSA private key from its components (the CRT ones only when given).
    pub fn rsa_private(&self, k: &RsaKey) -> Result<Obj<'_>, CK_RV> {
        let class = CKO_PRIVATE_KEY;
        let kt = CKK_RSA;
        let mut t = vec![
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr(CKA_TOKEN, &FALSE),
            attr(CKA_PRIVATE, &TRUE),
            attr(CKA_SIGN, &TRUE),
            attr(CKA_DECRYPT, &TRUE),
            attr_bytes(CKA_MODULUS, &k.n),
            attr_bytes(CKA_PUBLIC_EXPONENT, &k.e),
            attr_bytes(CKA_PRIVATE_EXPONENT, &k.d),
        ];
        if let Some(c) = &k.crt {
            t.push(attr_bytes(CKA_PRIME_1, &c[0]));
            t.push(attr_bytes(CKA_PRIME_2, &c[1]));
            t.push(attr_bytes(CKA_EXPONENT_1, &c[2]));
            t.push(attr_bytes(CKA_EXPONENT_2, &c[3]));
            t.push(attr_bytes(CKA_COEFFICIENT, &c[4]));
        }
        self.create(&mut t)
    }

    /// An EC public key: `CKA_EC_PARAMS` (DER OID) and the uncompressed point, passed as the
    /// spec's `CKA_EC_POINT` form (a DER OCTET STRING).
    pub fn ec_public(&self, params: &[u8], point: &[u8]) -> Result<Obj<'_>, CK_RV> {
        let class = CKO_PUBLIC_KEY;
        let kt = CKK_EC;
        let wrapped = der_octet_string(point);
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr(CKA_TOKEN, &FALSE),
            attr_bytes(CKA_EC_PARAMS, params),
            attr_bytes(CKA_EC_POINT, &wrapped),
            attr(CKA_VERIFY, &TRUE),
        ];
        self.create(&mut t)
    }

    /// Whether the module can make keys on the curve `params` (probed with
    /// `C_GenerateKeyPair`, once per curve).
    pub fn curve_supported(&self, params: &[u8]) -> bool {
        if let Some(s) = self.curves.borrow().get(params) {
            return *s;
        }
        let mut pub_t = [
            attr_bytes(CKA_EC_PARAMS, params),
            attr(CKA_TOKEN, &FALSE),
            attr(CKA_VERIFY, &TRUE),
        ];
        let mut priv_t = [attr(CKA_TOKEN, &FALSE), attr(CKA_SIGN, &TRUE)];
        let mut mm = CK_MECHANISM {
            mechanism: CKM_EC_KEY_PAIR_GEN,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let (mut p, mut k) = (0, 0);
        let rv = call!(
            self.m,
            C_GenerateKeyPair,
            self.h,
            &mut mm,
            pub_t.as_mut_ptr(),
            pub_t.len() as CK_ULONG,
            priv_t.as_mut_ptr(),
            priv_t.len() as CK_ULONG,
            &mut p,
            &mut k
        );
        if rv == CKR_OK {
            drop(Obj { p: self, h: p });
            drop(Obj { p: self, h: k });
        }
        self.curves
            .borrow_mut()
            .insert(params.to_vec(), rv == CKR_OK);
        rv == CKR_OK
    }

    fn init(
        &self,
        f: Option<
            unsafe extern "C" fn(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> CK_RV,
        >,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) -> Result<(), OpErr> {
        let f = f.expect("C_*Init slot is filled");
        // SAFETY: a valid session, a mechanism whose parameter outlives the call, a handle.
        let mut rv = unsafe { f(self.h, mech, key) };
        if rv == CKR_OPERATION_ACTIVE {
            // A previous error left the operation active: end it (3.0: NULL mechanism), report
            // it, and carry on so one slip does not fail every following case.
            // SAFETY: as above; a NULL mechanism ends the active operation.
            unsafe { f(self.h, ptr::null_mut(), key) };
            // SAFETY: as above.
            rv = unsafe { f(self.h, mech, key) };
            if rv == CKR_OK {
                return Err(OpErr {
                    stage: Stage::Init,
                    rv: CKR_OPERATION_ACTIVE,
                });
            }
        }
        if rv == CKR_OK {
            Ok(())
        } else {
            Err(OpErr {
                stage: Stage::Init,
                rv,
            })
        }
    }

    /// Runs a one-shot output-producing call with a first buffer of `guess` bytes, growing it
    /// once if the module says `CKR_BUFFER_TOO_SMALL`.
    fn out_call(
        &self,
        guess: usize,
        mut f: impl FnMut(*mut u8, &mut CK_ULONG) -> CK_RV,
    ) -> Result<Vec<u8>, OpErr> {
        let mut buf = vec![0u8; guess.max(1)];
        let mut len = buf.len() as CK_ULONG;
        let mut rv = f(buf.as_mut_ptr(), &mut len);
        if rv == CKR_BUFFER_TOO_SMALL {
            buf = vec![0u8; len as usize];
            rv = f(buf.as_mut_ptr(), &mut len);
        }
        if rv != CKR_OK {
            return Err(OpErr {
                stage: Stage::Op,
                rv,
            });
        }
        buf.truncate(len as usize);
        Ok(buf)
    }

    pub fn sign(
        &self,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Result<Vec<u8>, OpErr> {
        self.init(self.m.f.C_SignInit, mech, key)?;
        self.out_call(1024, |out, len| {
            call!(
                self.m,
                C_Sign,
                self.h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                out,
                len
            )
        })
    }

    pub fn verify(
        &self,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
        sig: &[u8],
    ) -> Result<(), OpErr> {
        self.init(self.m.f.C_VerifyInit, mech, key)?;
        let rv = call!(
            self.m,
            C_Verify,
            self.h,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            sig.as_ptr() as *mut u8,
            sig.len() as CK_ULONG
        );
        if rv == CKR_OK {
            Ok(())
        } else {
            Err(OpErr {
                stage: Stage::Op,
                rv,
            })
        }
    }

    pub fn encrypt(
        &self,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Result<Vec<u8>, OpErr> {
        self.init(self.m.f.C_EncryptInit, mech, key)?;
        self.out_call(data.len() + 1024, |out, len| {
            call!(
                self.m,
                C_Encrypt,
                self.h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                out,
                len
            )
        })
    }

    pub fn decrypt(
        &self,
        mech: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        data: &[u8],
    ) -> Result<Vec<u8>, OpErr> {
        self.init(self.m.f.C_DecryptInit, mech, key)?;
        self.out_call(data.len() + 1024, |out, len| {
            call!(
                self.m,
                C_Decrypt,
                self.h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                out,
                len
            )
        })
    }
}

impl Drop for P11 {
    fn drop(&mut self) {
        let _ = call!(self.m, C_CloseSession, self.h);
    }
}

/// RSA private key components, big-endian; `crt` is `[p, q, dp, dq, qinv]`.
#[derive(Clone, Debug, Default)]
pub struct RsaKey {
    pub n: Vec<u8>,
    pub e: Vec<u8>,
    pub d: Vec<u8>,
    pub crt: Option<[Vec<u8>; 5]>,
}

impl RsaKey {
    /// Modulus length in bits.
    pub fn bits(&self) -> usize {
        bit_len(&self.n)
    }
}

/// Bit length of a big-endian unsigned integer.
pub fn bit_len(v: &[u8]) -> usize {
    let v = strip(v);
    match v.first() {
        None => 0,
        Some(b) => v.len() * 8 - b.leading_zeros() as usize,
    }
}

/// The integer without leading zero bytes.
pub fn strip(v: &[u8]) -> &[u8] {
    let i = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    &v[i..]
}

/// Left-pads (or strips leading zeros) to exactly `len` bytes; `None` when it does not fit.
pub fn fixed(v: &[u8], len: usize) -> Option<Vec<u8>> {
    let v = strip(v);
    if v.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - v.len()];
    out.extend_from_slice(v);
    Some(out)
}

/// A DER OCTET STRING around `v`.
pub fn der_octet_string(v: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    let n = v.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(v);
    out
}

/// The DER OBJECT IDENTIFIER of a dotted OID.
pub fn der_oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted
        .split('.')
        .map(|a| a.parse().expect("numeric OID arc"))
        .collect();
    let mut body = Vec::new();
    let mut push = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        body.extend_from_slice(&tmp);
    };
    push(arcs[0] * 40 + arcs[1]);
    for a in &arcs[2..] {
        push(*a);
    }
    let mut out = vec![0x06, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// Reads one DER TLV at the start of `b`: (tag, content, rest).
pub fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let l0 = *b.get(1)? as usize;
    let (len, hdr) = if l0 < 0x80 {
        (l0, 2)
    } else {
        let n = l0 & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let content = b.get(hdr..hdr + len)?;
    Some((tag, content, &b[hdr + len..]))
}

/// The components of a PKCS #8 `PrivateKeyInfo` holding an RSA key.
pub fn rsa_from_pkcs8(der: &[u8]) -> Option<RsaKey> {
    let (t, info, _) = der_tlv(der)?;
    if t != 0x30 {
        return None;
    }
    let (_, _version, rest) = der_tlv(info)?;
    let (_, _alg, rest) = der_tlv(rest)?;
    let (t, octets, _) = der_tlv(rest)?;
    if t != 0x04 {
        return None;
    }
    let (t, seq, _) = der_tlv(octets)?;
    if t != 0x30 {
        return None;
    }
    let mut ints = Vec::new();
    let mut rest = seq;
    while !rest.is_empty() {
        let (t, v, r) = der_tlv(rest)?;
        if t != 0x02 {
            return None;
        }
        ints.push(strip(v).to_vec());
        rest = r;
    }
    if ints.len() < 9 {
        return None;
    }
    Some(RsaKey {
        n: ints[1].clone(),
        e: ints[2].clone(),
        d: ints[3].clone(),
        crt: Some([
            ints[4].clone(),
            ints[5].clone(),
            ints[6].clone(),
            ints[7].clone(),
            ints[8].clone(),
        ]),
    })
}

/// A mechanism without a parameter.
pub fn mech(m: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// A mechanism with a parameter struct (which must outlive its use).
pub fn mech_param<T>(m: CK_MECHANISM_TYPE, p: &mut T) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: p as *mut T as *mut c_void,
        ulParameterLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

/// A mechanism whose parameter is a byte string (an IV).
pub fn mech_bytes(m: CK_MECHANISM_TYPE, p: &mut [u8]) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: p.as_mut_ptr() as *mut c_void,
        ulParameterLen: p.len() as CK_ULONG,
    }
}

/// A hash by its usual name (`SHA-256`, `SHA256`, `sha256`).
pub fn hash_by_name(name: &str) -> Option<Hash> {
    let n: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_uppercase();
    Some(match n.as_str() {
        "SHA1" => Hash::Sha1,
        "SHA224" => Hash::Sha224,
        "SHA256" => Hash::Sha256,
        "SHA384" => Hash::Sha384,
        "SHA512" => Hash::Sha512,
        _ => return None,
    })
}

/// The SHA-2 family and SHA-1 with the mechanisms built on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
    pub fn digest(self) -> CK_MECHANISM_TYPE {
        [CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512][self as usize]
    }
    pub fn mgf1(self) -> CK_RSA_PKCS_MGF_TYPE {
        [
            CKG_MGF1_SHA1,
            CKG_MGF1_SHA224,
            CKG_MGF1_SHA256,
            CKG_MGF1_SHA384,
            CKG_MGF1_SHA512,
        ][self as usize]
    }
    pub fn ecdsa(self) -> CK_MECHANISM_TYPE {
        [
            CKM_ECDSA_SHA1,
            CKM_ECDSA_SHA224,
            CKM_ECDSA_SHA256,
            CKM_ECDSA_SHA384,
            CKM_ECDSA_SHA512,
        ][self as usize]
    }
    pub fn rsa_pkcs(self) -> CK_MECHANISM_TYPE {
        [
            CKM_SHA1_RSA_PKCS,
            CKM_SHA224_RSA_PKCS,
            CKM_SHA256_RSA_PKCS,
            CKM_SHA384_RSA_PKCS,
            CKM_SHA512_RSA_PKCS,
        ][self as usize]
    }
    pub fn rsa_pss(self) -> CK_MECHANISM_TYPE {
        [
            CKM_SHA1_RSA_PKCS_PSS,
            CKM_SHA224_RSA_PKCS_PSS,
            CKM_SHA256_RSA_PKCS_PSS,
            CKM_SHA384_RSA_PKCS_PSS,
            CKM_SHA512_RSA_PKCS_PSS,
        ][self as usize]
    }
    pub fn hmac(self) -> CK_MECHANISM_TYPE {
        [
            CKM_SHA_1_HMAC,
            CKM_SHA224_HMAC,
            CKM_SHA256_HMAC,
            CKM_SHA384_HMAC,
            CKM_SHA512_HMAC,
        ][self as usize]
    }
    pub fn hmac_general(self) -> CK_MECHANISM_TYPE {
        [
            CKM_SHA_1_HMAC_GENERAL,
            CKM_SHA224_HMAC_GENERAL,
            CKM_SHA256_HMAC_GENERAL,
            CKM_SHA384_HMAC_GENERAL,
            CKM_SHA512_HMAC_GENERAL,
        ][self as usize]
    }
}

/// A mechanism's name as the spec spells it (hex when unknown here).
pub fn mech_name(m: CK_MECHANISM_TYPE) -> String {
    let n = match m {
        CKM_RSA_PKCS => "CKM_RSA_PKCS",
        CKM_RSA_PKCS_OAEP => "CKM_RSA_PKCS_OAEP",
        CKM_RSA_PKCS_PSS => "CKM_RSA_PKCS_PSS",
        CKM_SHA1_RSA_PKCS => "CKM_SHA1_RSA_PKCS",
        CKM_SHA224_RSA_PKCS => "CKM_SHA224_RSA_PKCS",
        CKM_SHA256_RSA_PKCS => "CKM_SHA256_RSA_PKCS",
        CKM_SHA384_RSA_PKCS => "CKM_SHA384_RSA_PKCS",
        CKM_SHA512_RSA_PKCS => "CKM_SHA512_RSA_PKCS",
        CKM_SHA1_RSA_PKCS_PSS => "CKM_SHA1_RSA_PKCS_PSS",
        CKM_SHA224_RSA_PKCS_PSS => "CKM_SHA224_RSA_PKCS_PSS",
        CKM_SHA256_RSA_PKCS_PSS => "CKM_SHA256_RSA_PKCS_PSS",
        CKM_SHA384_RSA_PKCS_PSS => "CKM_SHA384_RSA_PKCS_PSS",
        CKM_SHA512_RSA_PKCS_PSS => "CKM_SHA512_RSA_PKCS_PSS",
        CKM_ECDSA => "CKM_ECDSA",
        CKM_ECDSA_SHA1 => "CKM_ECDSA_SHA1",
        CKM_ECDSA_SHA224 => "CKM_ECDSA_SHA224",
        CKM_ECDSA_SHA256 => "CKM_ECDSA_SHA256",
        CKM_ECDSA_SHA384 => "CKM_ECDSA_SHA384",
        CKM_ECDSA_SHA512 => "CKM_ECDSA_SHA512",
        CKM_AES_CBC => "CKM_AES_CBC",
        CKM_AES_CBC_PAD => "CKM_AES_CBC_PAD",
        CKM_AES_GCM => "CKM_AES_GCM",
        CKM_AES_CMAC => "CKM_AES_CMAC",
        CKM_AES_CMAC_GENERAL => "CKM_AES_CMAC_GENERAL",
        CKM_AES_KEY_WRAP => "CKM_AES_KEY_WRAP",
        CKM_AES_KEY_WRAP_KWP => "CKM_AES_KEY_WRAP_KWP",
        CKM_SHA_1_HMAC => "CKM_SHA_1_HMAC",
        CKM_SHA224_HMAC => "CKM_SHA224_HMAC",
        CKM_SHA256_HMAC => "CKM_SHA256_HMAC",
        CKM_SHA384_HMAC => "CKM_SHA384_HMAC",
        CKM_SHA512_HMAC => "CKM_SHA512_HMAC",
        CKM_SHA_1_HMAC_GENERAL => "CKM_SHA_1_HMAC_GENERAL",
        CKM_SHA224_HMAC_GENERAL => "CKM_SHA224_HMAC_GENERAL",
        CKM_SHA256_HMAC_GENERAL => "CKM_SHA256_HMAC_GENERAL",
        CKM_SHA384_HMAC_GENERAL => "CKM_SHA384_HMAC_GENERAL",
        CKM_SHA512_HMAC_GENERAL => "CKM_SHA512_HMAC_GENERAL",
        CKM_ECDH1_DERIVE => "CKM_ECDH1_DERIVE",
        CKM_EDDSA => "CKM_EDDSA",
        CKM_HKDF_DERIVE => "CKM_HKDF_DERIVE",
        CKM_PKCS5_PBKD2 => "CKM_PKCS5_PBKD2",
        CKM_EC_MONTGOMERY_KEY_PAIR_GEN => "CKM_EC_MONTGOMERY_KEY_PAIR_GEN",
        CKM_EC_EDWARDS_KEY_PAIR_GEN => "CKM_EC_EDWARDS_KEY_PAIR_GEN",
        _ => return format!("mechanism {m:#x}"),
    };
    n.to_string()
}

/// A return value's name (hex when unknown here).
pub fn rv_name(rv: CK_RV) -> String {
    let n = match rv {
        CKR_OK => "CKR_OK",
        CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
        CKR_FUNCTION_FAILED => "CKR_FUNCTION_FAILED",
        CKR_ARGUMENTS_BAD => "CKR_ARGUMENTS_BAD",
        CKR_ATTRIBUTE_VALUE_INVALID => "CKR_ATTRIBUTE_VALUE_INVALID",
        CKR_ATTRIBUTE_TYPE_INVALID => "CKR_ATTRIBUTE_TYPE_INVALID",
        CKR_DATA_INVALID => "CKR_DATA_INVALID",
        CKR_DATA_LEN_RANGE => "CKR_DATA_LEN_RANGE",
        CKR_ENCRYPTED_DATA_INVALID => "CKR_ENCRYPTED_DATA_INVALID",
        CKR_ENCRYPTED_DATA_LEN_RANGE => "CKR_ENCRYPTED_DATA_LEN_RANGE",
        CKR_KEY_SIZE_RANGE => "CKR_KEY_SIZE_RANGE",
        CKR_KEY_TYPE_INCONSISTENT => "CKR_KEY_TYPE_INCONSISTENT",
        CKR_KEY_FUNCTION_NOT_PERMITTED => "CKR_KEY_FUNCTION_NOT_PERMITTED",
        CKR_MECHANISM_INVALID => "CKR_MECHANISM_INVALID",
        CKR_MECHANISM_PARAM_INVALID => "CKR_MECHANISM_PARAM_INVALID",
        CKR_OPERATION_ACTIVE => "CKR_OPERATION_ACTIVE (left active by an earlier error)",
        CKR_OPERATION_NOT_INITIALIZED => "CKR_OPERATION_NOT_INITIALIZED",
        CKR_SIGNATURE_INVALID => "CKR_SIGNATURE_INVALID",
        CKR_SIGNATURE_LEN_RANGE => "CKR_SIGNATURE_LEN_RANGE",
        CKR_TEMPLATE_INCOMPLETE => "CKR_TEMPLATE_INCOMPLETE",
        CKR_TEMPLATE_INCONSISTENT => "CKR_TEMPLATE_INCONSISTENT",
        CKR_BUFFER_TOO_SMALL => "CKR_BUFFER_TOO_SMALL",
        CKR_CURVE_NOT_SUPPORTED => "CKR_CURVE_NOT_SUPPORTED",
        CKR_DOMAIN_PARAMS_INVALID => "CKR_DOMAIN_PARAMS_INVALID",
        CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN",
        CKR_WRAPPED_KEY_INVALID => "CKR_WRAPPED_KEY_INVALID",
        CKR_WRAPPED_KEY_LEN_RANGE => "CKR_WRAPPED_KEY_LEN_RANGE",
        CKR_KEY_NOT_WRAPPABLE => "CKR_KEY_NOT_WRAPPABLE",
        CKR_KEY_UNEXTRACTABLE => "CKR_KEY_UNEXTRACTABLE",
        CKR_ATTRIBUTE_SENSITIVE => "CKR_ATTRIBUTE_SENSITIVE",
        CKR_DEVICE_ERROR => "CKR_DEVICE_ERROR",
        CKR_DEVICE_MEMORY => "CKR_DEVICE_MEMORY",
        CKR_HOST_MEMORY => "CKR_HOST_MEMORY",
        _ => return format!("CK_RV {rv:#x}"),
    };
    n.to_string()
}
