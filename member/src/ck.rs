//! The member contract's values as the C structures of PKCS #11: a [`Mechanism`] as a
//! `CK_MECHANISM` with its parameter struct ([`CkMechanism`]), a template as an array of
//! `CK_ATTRIBUTE` ([`CkTemplate`]). What a member that is a vendor's PKCS #11 module hands to
//! its library; the C guard reads the same layouts the other way (`cdylib/src/guard/`), and a
//! test there checks that the two agree on every parameter kind.
//!
//! No `unsafe` here: the structures only *hold* pointers, into the borrowed values and into
//! storage the builder owns, for as long as the builder lives (its lifetime says so). Reading
//! through them is the C library's business.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::mem::size_of;

use cryptoki_sys::*;

use crate::mechanism::ParamKind;
use crate::types::{decode_attr_array, is_array_attribute, Attr, MechParam, Mechanism, Rv};

/// A `CK_ULONG` from a length (lengths here come from `Vec`s, far below the limit).
fn ck_len(n: usize) -> Result<CK_ULONG, Rv> {
    CK_ULONG::try_from(n).map_err(|_| CKR_DATA_LEN_RANGE)
}

/// A mutable pointer to bytes the C library only reads (PKCS #11 declares most input buffers
/// without `const`); NULL for none.
fn bytes_ptr(b: &[u8]) -> *mut u8 {
    if b.is_empty() {
        std::ptr::null_mut()
    } else {
        b.as_ptr().cast_mut()
    }
}

/// The parameter struct a [`CkMechanism`] owns (boxed: its address is what `pParameter` holds).
enum Param {
    None,
    Gcm(Box<CK_GCM_PARAMS>),
    Pss(Box<CK_RSA_PKCS_PSS_PARAMS>),
    Oaep(Box<CK_RSA_PKCS_OAEP_PARAMS>),
    Ulong(Box<CK_ULONG>),
    Ecdh(Box<CK_ECDH1_DERIVE_PARAMS>),
    Hkdf(Box<CK_HKDF_PARAMS>),
    /// Raw bytes of the borrowed mechanism (an IV, a parameter the member parses itself).
    Bytes,
}

/// A `CK_MECHANISM` built from a [`Mechanism`] for as long as `'a`.
pub struct CkMechanism<'a> {
    raw: CK_MECHANISM,
    _param: Param,
    _borrowed: PhantomData<&'a Mechanism>,
}

impl std::fmt::Debug for CkMechanism<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CkMechanism({:#x}, {} parameter bytes)",
            self.raw.mechanism, self.raw.ulParameterLen
        )
    }
}

impl<'a> CkMechanism<'a> {
    /// The C form of `m`, its parameter laid out as [`ParamKind::of`] says for the mechanism.
    /// A parameter the layout cannot carry (one of another layout, or AWS CloudHSM's
    /// SP 800-108 KDF parameter, which no vendor module takes from us yet) is
    /// `CKR_MECHANISM_PARAM_INVALID`.
    pub fn new(m: &'a Mechanism) -> Result<CkMechanism<'a>, Rv> {
        let mut raw = CK_MECHANISM {
            mechanism: m.mech,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let param = match (ParamKind::of(m.mech), &m.param) {
            (_, MechParam::None) => Param::None,
            (ParamKind::Gcm | ParamKind::CloudHsmGcm, MechParam::Gcm { iv, aad, tag_bits }) => {
                Param::Gcm(Box::new(CK_GCM_PARAMS {
                    pIv: bytes_ptr(iv),
                    ulIvLen: ck_len(iv.len())?,
                    ulIvBits: ck_len(iv.len() * 8)?,
                    pAAD: bytes_ptr(aad),
                    ulAADLen: ck_len(aad.len())?,
                    ulTagBits: *tag_bits,
                }))
            }
            (
                ParamKind::Pss,
                MechParam::Pss {
                    hash,
                    mgf,
                    salt_len,
                },
            ) => Param::Pss(Box::new(CK_RSA_PKCS_PSS_PARAMS {
                hashAlg: *hash,
                mgf: *mgf,
                sLen: *salt_len,
            })),
            (ParamKind::Oaep, MechParam::Oaep { hash, mgf, label }) => {
                Param::Oaep(Box::new(CK_RSA_PKCS_OAEP_PARAMS {
                    hashAlg: *hash,
                    mgf: *mgf,
                    source: CKZ_DATA_SPECIFIED,
                    pSourceData: bytes_ptr(label).cast::<c_void>(),
                    ulSourceDataLen: ck_len(label.len())?,
                }))
            }
            (ParamKind::Ulong, MechParam::Ulong(v)) => Param::Ulong(Box::new(*v)),
            (
                ParamKind::Ecdh,
                MechParam::Ecdh {
                    kdf,
                    shared_data,
                    public_data,
                },
            ) => Param::Ecdh(Box::new(CK_ECDH1_DERIVE_PARAMS {
                kdf: *kdf,
                ulSharedDataLen: ck_len(shared_data.len())?,
                pSharedData: bytes_ptr(shared_data),
                ulPublicDataLen: ck_len(public_data.len())?,
                pPublicData: bytes_ptr(public_data),
            })),
            (
                ParamKind::Hkdf,
                MechParam::Hkdf {
                    extract,
                    expand,
                    prf,
                    salt_type,
                    salt,
                    info,
                },
            ) => Param::Hkdf(Box::new(CK_HKDF_PARAMS {
                bExtract: CK_BBOOL::from(*extract),
                bExpand: CK_BBOOL::from(*expand),
                prfHashMechanism: *prf,
                ulSaltType: *salt_type,
                pSalt: bytes_ptr(salt),
                ulSaltLen: ck_len(salt.len())?,
                hSaltKey: CK_INVALID_HANDLE,
                pInfo: bytes_ptr(info),
                ulInfoLen: ck_len(info.len())?,
            })),
            (ParamKind::Iv, MechParam::Iv(b)) | (ParamKind::Other, MechParam::Raw(b)) => {
                raw.pParameter = bytes_ptr(b).cast::<c_void>();
                raw.ulParameterLen = ck_len(b.len())?;
                Param::Bytes
            }
            _ => return Err(CKR_MECHANISM_PARAM_INVALID),
        };
        fn point<T>(raw: &mut CK_MECHANISM, b: &T) -> Result<(), Rv> {
            raw.pParameter = std::ptr::from_ref(b).cast_mut().cast::<c_void>();
            raw.ulParameterLen = ck_len(size_of::<T>())?;
            Ok(())
        }
        match &param {
            Param::None | Param::Bytes => {}
            Param::Gcm(b) => point(&mut raw, &**b)?,
            Param::Pss(b) => point(&mut raw, &**b)?,
            Param::Oaep(b) => point(&mut raw, &**b)?,
            Param::Ulong(b) => point(&mut raw, &**b)?,
            Param::Ecdh(b) => point(&mut raw, &**b)?,
            Param::Hkdf(b) => point(&mut raw, &**b)?,
        }
        Ok(CkMechanism {
            raw,
            _param: param,
            _borrowed: PhantomData,
        })
    }

    /// The `CK_MECHANISM`, valid while `self` lives.
    pub fn as_raw(&self) -> &CK_MECHANISM {
        &self.raw
    }
}

/// An array of `CK_ATTRIBUTE` built from a template for as long as `'a`; an array attribute
/// (`CKA_WRAP_TEMPLATE`, ...) points at a nested array of its own.
pub struct CkTemplate<'a> {
    raw: Vec<CK_ATTRIBUTE>,
    /// The nested templates of array attributes (their `raw` is what the outer entries hold).
    _nested: Vec<CkTemplate<'static>>,
    /// Their decoded attributes, boxed so the nested arrays' pointers stay put.
    _nested_values: Vec<Box<[Attr]>>,
    _borrowed: PhantomData<&'a [Attr]>,
}

impl std::fmt::Debug for CkTemplate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CkTemplate({} attributes)", self.raw.len())
    }
}

impl<'a> CkTemplate<'a> {
    /// The C form of `template`. An array attribute whose value is not an encoded attribute
    /// array is `CKR_ATTRIBUTE_VALUE_INVALID`.
    pub fn new(template: &'a [Attr]) -> Result<CkTemplate<'a>, Rv> {
        let mut raw = Vec::with_capacity(template.len());
        let mut nested = Vec::new();
        let mut nested_values = Vec::new();
        for a in template {
            if is_array_attribute(a.ty) {
                let inner: Box<[Attr]> = decode_attr_array(&a.value)
                    .ok_or(CKR_ATTRIBUTE_VALUE_INVALID)?
                    .into_boxed_slice();
                // The nested template borrows the boxed attributes, which `_nested_values`
                // keeps alive (and in place) exactly as long as the nested template itself.
                let t = CkTemplate::owned_view(&inner)?;
                raw.push(CK_ATTRIBUTE {
                    type_: a.ty,
                    pValue: t.raw.as_ptr().cast_mut().cast::<c_void>(),
                    ulValueLen: ck_len(t.raw.len() * size_of::<CK_ATTRIBUTE>())?,
                });
                nested.push(t);
                nested_values.push(inner);
            } else {
                raw.push(CK_ATTRIBUTE {
                    type_: a.ty,
                    pValue: bytes_ptr(&a.value).cast::<c_void>(),
                    ulValueLen: ck_len(a.value.len())?,
                });
            }
        }
        Ok(CkTemplate {
            raw,
            _nested: nested,
            _nested_values: nested_values,
            _borrowed: PhantomData,
        })
    }

    /// A template over attributes its owner keeps alive and unmoved (the boxed nested values).
    fn owned_view(attrs: &[Attr]) -> Result<CkTemplate<'static>, Rv> {
        let t = CkTemplate::new(attrs)?;
        Ok(CkTemplate {
            raw: t.raw,
            _nested: t._nested,
            _nested_values: t._nested_values,
            _borrowed: PhantomData,
        })
    }

    /// The attributes, valid while `self` lives.
    pub fn as_slice(&self) -> &[CK_ATTRIBUTE] {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gcm_mechanism_points_at_its_parameter_and_buffers() {
        let m = Mechanism {
            mech: CKM_AES_GCM,
            param: MechParam::Gcm {
                iv: vec![7; 12],
                aad: vec![],
                tag_bits: 128,
            },
        };
        let ck = CkMechanism::new(&m).unwrap();
        let raw = ck.as_raw();
        assert_eq!(raw.mechanism, CKM_AES_GCM);
        assert_eq!(raw.ulParameterLen as usize, size_of::<CK_GCM_PARAMS>());
        assert!(!raw.pParameter.is_null());
        assert!(CkMechanism::new(&Mechanism {
            mech: CKM_AES_GCM,
            param: MechParam::Ulong(3)
        })
        .is_err());
    }

    #[test]
    fn a_template_has_one_entry_per_attribute_and_nests_arrays() {
        let inner = vec![Attr::bool(CKA_SIGN, true)];
        let t = vec![
            Attr::bytes(CKA_LABEL, b"k"),
            Attr {
                ty: CKA_WRAP_TEMPLATE,
                value: crate::types::encode_attr_array(&inner),
            },
        ];
        let ck = CkTemplate::new(&t).unwrap();
        assert_eq!(ck.as_slice().len(), 2);
        assert_eq!(
            ck.as_slice()[1].ulValueLen as usize,
            size_of::<CK_ATTRIBUTE>()
        );
    }
}
