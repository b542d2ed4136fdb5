//! Mechanisms: a `CK_MECHANISM` read and its parameter parsed by the mechanism's layout, with
//! the readers of AWS CloudHSM's SP 800-108 KDF parameter.

use std::mem::size_of;

use cryptoki_sys::*;
use hsmpool_engine::cloudhsm::{
    CK_SP800_108_BYTE_ARRAY, CK_SP800_108_DKM_LENGTH, CK_SP800_108_ITERATION_VARIABLE, GCM_IV_LEN,
    SP800_108_COUNTER_FORMAT, SP800_108_DKM_FORMAT, SP800_108_PRF_CONTEXT, SP800_108_PRF_LABEL,
};
use hsmpool_engine::mechanism::ParamKind;
use hsmpool_engine::{Error, KdfSegment, MechParam, Mechanism, Result};

use super::pointer::{in_bytes, in_opt, in_slice};

/// Reads a `CK_MECHANISM` and parses its parameter (NULL `pMechanism` is `CKR_ARGUMENTS_BAD`).
///
/// A `ulParameterLen` of 0 is `MechParam::None` for every mechanism, so the engine decides in
/// its own order (`CKR_MECHANISM_INVALID` for a mechanism the function does not allow, before
/// `CKR_MECHANISM_PARAM_INVALID` for a missing parameter). A parameter struct whose non-zero
/// `ulParameterLen` is not its size is `CKR_MECHANISM_PARAM_INVALID`,
/// and so is a bad pointer inside one (`pIv` NULL with `ulIvLen > 0`, ...): that is a fault of
/// the parameter, not of the call's own arguments. An OAEP label is read only for source
/// `CKZ_DATA_SPECIFIED`; any other source means no label.
///
/// # Safety
/// A non-NULL `ptr` must address an initialised `CK_MECHANISM` whose non-NULL `pParameter`
/// addresses `ulParameterLen` readable bytes, and whose parameter struct's own pointers address
/// as many readable bytes as their lengths say.
pub(crate) unsafe fn in_mechanism(ptr: *const CK_MECHANISM) -> Result<Mechanism> {
    // SAFETY: relayed from this function's contract.
    let Some(m) = (unsafe { in_opt(ptr) })? else {
        return Err(Error::ArgumentsBad("NULL mechanism"));
    };
    let p = m.pParameter.cast::<u8>().cast_const();
    let len = m.ulParameterLen;
    if len == 0 {
        return Ok(Mechanism::plain(m.mechanism));
    }
    let param = match ParamKind::of(m.mechanism) {
        ParamKind::Gcm => {
            // SAFETY: relayed from this function's contract.
            let g: CK_GCM_PARAMS = unsafe { param_struct(p, len) }?;
            MechParam::Gcm {
                // SAFETY: the struct's pointers address their lengths (contract).
                iv: unsafe { nested(g.pIv, g.ulIvLen) }?,
                // SAFETY: as above.
                aad: unsafe { nested(g.pAAD, g.ulAADLen) }?,
                tag_bits: g.ulTagBits,
            }
        }
        ParamKind::Pss => {
            // SAFETY: relayed from this function's contract.
            let s: CK_RSA_PKCS_PSS_PARAMS = unsafe { param_struct(p, len) }?;
            MechParam::Pss {
                hash: s.hashAlg,
                mgf: s.mgf,
                salt_len: s.sLen,
            }
        }
        ParamKind::Oaep => {
            // SAFETY: relayed from this function's contract.
            let o: CK_RSA_PKCS_OAEP_PARAMS = unsafe { param_struct(p, len) }?;
            let label = if o.source == CKZ_DATA_SPECIFIED {
                // SAFETY: the struct's pointers address their lengths (contract).
                unsafe { nested(o.pSourceData.cast::<u8>(), o.ulSourceDataLen) }?
            } else {
                Vec::new()
            };
            MechParam::Oaep {
                hash: o.hashAlg,
                mgf: o.mgf,
                label,
            }
        }
        ParamKind::Ulong => {
            // SAFETY: relayed from this function's contract.
            MechParam::Ulong(unsafe { param_struct::<CK_ULONG>(p, len) }?)
        }
        ParamKind::Ecdh => {
            // SAFETY: relayed from this function's contract.
            let e: CK_ECDH1_DERIVE_PARAMS = unsafe { param_struct(p, len) }?;
            MechParam::Ecdh {
                kdf: e.kdf,
                // SAFETY: the struct's pointers address their lengths (contract).
                shared_data: unsafe { nested(e.pSharedData, e.ulSharedDataLen) }?,
                // SAFETY: as above.
                public_data: unsafe { nested(e.pPublicData, e.ulPublicDataLen) }?,
            }
        }
        ParamKind::Hkdf => {
            // SAFETY: relayed from this function's contract.
            let h: CK_HKDF_PARAMS = unsafe { param_struct(p, len) }?;
            if h.ulSaltType == CKF_HKDF_SALT_KEY {
                // A salt held in a key needs a handle translation the engine does not offer yet.
                return Err(Error::MechanismParamInvalid);
            }
            MechParam::Hkdf {
                extract: h.bExtract != 0,
                expand: h.bExpand != 0,
                prf: h.prfHashMechanism,
                salt_type: h.ulSaltType,
                // SAFETY: the struct's pointers address their lengths (contract).
                salt: unsafe { nested(h.pSalt, h.ulSaltLen) }?,
                // SAFETY: as above.
                info: unsafe { nested(h.pInfo, h.ulInfoLen) }?,
            }
        }
        ParamKind::CloudHsmGcm => {
            // SAFETY: relayed from this function's contract.
            let g: CK_GCM_PARAMS = unsafe { param_struct(p, len) }?;
            // CloudHSM's PKCS #11 mechanism notes: "the pIV variable in the CK_GCM_PARAMS struct
            // must be set to NULL"; the HSM makes the IV and puts it before the ciphertext. A
            // length of 0 or 12 (the IV it will make) is taken with it.
            let no_iv = g.pIv.is_null()
                && (g.ulIvLen == 0 || usize::try_from(g.ulIvLen).ok() == Some(GCM_IV_LEN));
            if !no_iv {
                return Err(Error::MechanismParamInvalid);
            }
            MechParam::Gcm {
                iv: Vec::new(),
                // SAFETY: the struct's pointers address their lengths (contract).
                aad: unsafe { nested(g.pAAD, g.ulAADLen) }?,
                tag_bits: g.ulTagBits,
            }
        }
        // SAFETY: relayed from this function's contract.
        ParamKind::CloudHsmKdf => unsafe { cloudhsm_kdf_param(p, len) }?,
        // SAFETY: relayed from this function's contract.
        ParamKind::Iv => MechParam::Iv(unsafe { in_bytes(p, len) }?.to_vec()),
        // SAFETY: relayed from this function's contract.
        ParamKind::Other => MechParam::Raw(unsafe { in_bytes(p, len) }?.to_vec()),
    };
    Ok(Mechanism {
        mech: m.mechanism,
        param,
    })
}

/// AWS CloudHSM's `CK_SP800_108_KDF_PARAMS` (Client SDK 5, `cloudhsm_pkcs11_vendor_defs.h`):
/// three fields, not PKCS #11 3.0's five.
#[repr(C)]
#[derive(Clone, Copy)]
struct CloudHsmKdfParams {
    prftype: CK_MECHANISM_TYPE,
    ul_number_of_data_params: CK_ULONG,
    p_data_params: *const CK_PRF_DATA_PARAM,
}

/// The most data parameters a KDF parameter may list (CloudHSM's samples use four).
const KDF_MAX_DATA_PARAMS: usize = 16;

/// One `CK_ULONG` held in a KDF data parameter's value (`CK_SP800_108_COUNTER_FORMAT` is one).
fn ulong_at(v: &[u8], i: usize) -> Option<CK_ULONG> {
    let n = size_of::<CK_ULONG>();
    let bytes = v.get(i * n..(i + 1) * n)?.try_into().ok()?;
    Some(CK_ULONG::from_ne_bytes(bytes))
}

/// A `CK_SP800_108_COUNTER_FORMAT` (`{ ulWidthInBits }`) as a counter segment.
fn counter_segment(v: &[u8]) -> Result<KdfSegment> {
    match (v.len() == size_of::<CK_ULONG>(), ulong_at(v, 0)) {
        (true, Some(width_bits)) => Ok(KdfSegment::Counter { width_bits }),
        _ => Err(Error::MechanismParamInvalid),
    }
}

/// A `CK_SP800_108_DKM_LENGTH_FORMAT` (`{ dkmLengthMethod, ulWidthInBits }`) as an `L` segment.
fn dkm_segment(v: &[u8]) -> Result<KdfSegment> {
    match (
        v.len() == 2 * size_of::<CK_ULONG>(),
        ulong_at(v, 0),
        ulong_at(v, 1),
    ) {
        (true, Some(method), Some(width_bits)) => Ok(KdfSegment::DkmLength { method, width_bits }),
        _ => Err(Error::MechanismParamInvalid),
    }
}

/// CloudHSM's `CK_SP800_108_KDF_PARAMS` as the fixed input of each PRF call, in order.
///
/// Two forms are read. Client SDK 5's (the `aes_cmac_kdf` sample): `CK_SP800_108_ITERATION_VARIABLE`,
/// `CK_SP800_108_DKM_LENGTH` and `CK_SP800_108_BYTE_ARRAY` entries placed in the order given.
/// Client SDK 3's (the `hmac_kdf` sample): `SP800_108_COUNTER_FORMAT`, `SP800_108_DKM_FORMAT`,
/// `SP800_108_PRF_LABEL` and `SP800_108_PRF_CONTEXT`, each at most once, laid out as SP 800-108
/// §5.1 writes it: `counter || label || 0x00 || context || L`. Mixing the two, an unknown type, a
/// value of the wrong size or more than 16 entries is `CKR_MECHANISM_PARAM_INVALID`; the widths
/// and the PRF are the member's to judge.
///
/// # Safety
/// A non-NULL `p` must address `len` readable bytes holding the struct, whose `pDataParams`
/// addresses `ulNumberOfDataParams` entries whose `pValue`s address `ulValueLen` bytes each.
unsafe fn cloudhsm_kdf_param(p: *const u8, len: CK_ULONG) -> Result<MechParam> {
    // SAFETY: relayed from this function's contract.
    let k: CloudHsmKdfParams = unsafe { param_struct(p, len) }?;
    let n =
        usize::try_from(k.ul_number_of_data_params).map_err(|_| Error::MechanismParamInvalid)?;
    if n == 0 || n > KDF_MAX_DATA_PARAMS {
        return Err(Error::MechanismParamInvalid);
    }
    // SAFETY: `pDataParams` addresses that many entries (contract).
    let entries = unsafe { in_slice(k.p_data_params, k.ul_number_of_data_params) }
        .map_err(|_| Error::MechanismParamInvalid)?;
    let mut sdk5 = Vec::new();
    let (mut counter, mut dkm, mut label, mut context) = (None, None, None, None);
    for e in entries {
        // SAFETY: each entry's value addresses its length (contract).
        let v = unsafe { nested(e.pValue.cast::<u8>().cast_const(), e.ulValueLen) }?;
        let slot = match e.type_ {
            CK_SP800_108_ITERATION_VARIABLE => {
                sdk5.push(counter_segment(&v)?);
                continue;
            }
            CK_SP800_108_DKM_LENGTH => {
                sdk5.push(dkm_segment(&v)?);
                continue;
            }
            CK_SP800_108_BYTE_ARRAY => {
                sdk5.push(KdfSegment::Bytes(v));
                continue;
            }
            SP800_108_COUNTER_FORMAT => &mut counter,
            SP800_108_DKM_FORMAT => &mut dkm,
            SP800_108_PRF_LABEL => &mut label,
            SP800_108_PRF_CONTEXT => &mut context,
            _ => return Err(Error::MechanismParamInvalid),
        };
        if slot.replace(v).is_some() {
            return Err(Error::MechanismParamInvalid);
        }
    }
    let sdk3 = [&counter, &dkm, &label, &context]
        .iter()
        .any(|s| s.is_some());
    let segments = match (sdk5.is_empty(), sdk3, counter, dkm) {
        (true, true, Some(c), Some(d)) => vec![
            counter_segment(&c)?,
            KdfSegment::Bytes(label.unwrap_or_default()),
            KdfSegment::Bytes(vec![0]),
            KdfSegment::Bytes(context.unwrap_or_default()),
            dkm_segment(&d)?,
        ],
        (false, false, _, _) => sdk5,
        _ => return Err(Error::MechanismParamInvalid),
    };
    Ok(MechParam::Sp800108 {
        prf: k.prftype,
        segments,
    })
}

/// A parameter struct: `len` must be exactly its size; NULL with that size is `CKR_ARGUMENTS_BAD`
/// (the [`in_bytes`] rule). Read unaligned, since a parameter is often a byte buffer.
///
/// # Safety
/// A non-NULL `p` must address `len` readable bytes holding an initialised `T`.
unsafe fn param_struct<T: Copy>(p: *const u8, len: CK_ULONG) -> Result<T> {
    if usize::try_from(len).ok() != Some(size_of::<T>()) {
        return Err(Error::MechanismParamInvalid);
    }
    if p.is_null() {
        return Err(Error::ArgumentsBad(
            "NULL mechanism parameter with a non-zero length",
        ));
    }
    // SAFETY: non-NULL, `size_of::<T>()` readable bytes holding a `T` (contract); unaligned read.
    Ok(unsafe { p.cast::<T>().read_unaligned() })
}

/// A byte buffer inside a parameter struct; a bad one is a bad parameter.
///
/// # Safety
/// As [`in_bytes`].
unsafe fn nested(p: *const u8, len: CK_ULONG) -> Result<Vec<u8>> {
    // SAFETY: relayed from this function's contract.
    match unsafe { in_bytes(p, len) } {
        Ok(b) => Ok(b.to_vec()),
        Err(_) => Err(Error::MechanismParamInvalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::pointer::ul;
    use std::ffi::c_void;
    use std::ptr;

    fn mech(mech: CK_MECHANISM_TYPE, p: *mut c_void, len: usize) -> CK_MECHANISM {
        CK_MECHANISM {
            mechanism: mech,
            pParameter: p,
            ulParameterLen: ul(len),
        }
    }

    fn parse(m: &CK_MECHANISM) -> Result<Mechanism> {
        // SAFETY: every test mechanism points at live locals of the lengths it states.
        unsafe { in_mechanism(m) }
    }

    #[test]
    fn mechanism_gcm() {
        let mut iv = [7u8; 12];
        let mut aad = *b"header";
        let mut g = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: aad.as_mut_ptr(),
            ulAADLen: 6,
            ulTagBits: 128,
        };
        let m = mech(CKM_AES_GCM, (&raw mut g).cast(), size_of::<CK_GCM_PARAMS>());
        assert_eq!(
            parse(&m).unwrap(),
            Mechanism {
                mech: CKM_AES_GCM,
                param: MechParam::Gcm {
                    iv: iv.to_vec(),
                    aad: aad.to_vec(),
                    tag_bits: 128
                }
            }
        );
        // The 2.40 header's layout (no ulIvBits) is 8 bytes shorter: refused.
        let m = mech(
            CKM_AES_GCM,
            (&raw mut g).cast(),
            size_of::<CK_GCM_PARAMS>() - 8,
        );
        assert_eq!(parse(&m).unwrap_err().ck_rv(), CKR_MECHANISM_PARAM_INVALID);
        // No parameter at all: left to the engine, which knows whether the function allows
        // the mechanism (CKR_MECHANISM_INVALID) before it asks for the parameter.
        assert_eq!(
            parse(&mech(CKM_AES_GCM, ptr::null_mut(), 0)).unwrap(),
            Mechanism::plain(CKM_AES_GCM)
        );
        // A NULL IV with a length is a bad parameter.
        g.pIv = ptr::null_mut();
        let m = mech(CKM_AES_GCM, (&raw mut g).cast(), size_of::<CK_GCM_PARAMS>());
        assert_eq!(parse(&m).unwrap_err().ck_rv(), CKR_MECHANISM_PARAM_INVALID);
    }

    #[test]
    fn mechanism_pss() {
        let mut p = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            sLen: 32,
        };
        let m = mech(
            CKM_SHA256_RSA_PKCS_PSS,
            (&raw mut p).cast(),
            size_of::<CK_RSA_PKCS_PSS_PARAMS>(),
        );
        assert_eq!(
            parse(&m).unwrap().param,
            MechParam::Pss {
                hash: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                salt_len: 32
            }
        );
        let m = mech(
            CKM_RSA_PKCS_PSS,
            (&raw mut p).cast(),
            size_of::<CK_RSA_PKCS_PSS_PARAMS>() + 1,
        );
        assert_eq!(parse(&m).unwrap_err().ck_rv(), CKR_MECHANISM_PARAM_INVALID);
    }

    #[test]
    fn mechanism_oaep() {
        let mut label = *b"my label";
        let mut o = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: label.as_mut_ptr().cast(),
            ulSourceDataLen: 8,
        };
        let size = size_of::<CK_RSA_PKCS_OAEP_PARAMS>();
        let m = mech(CKM_RSA_PKCS_OAEP, (&raw mut o).cast(), size);
        assert_eq!(
            parse(&m).unwrap().param,
            MechParam::Oaep {
                hash: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                label: label.to_vec()
            }
        );
        // Source 0 (common in the wild): no label, and pSourceData is not read.
        o.source = 0;
        o.pSourceData = ptr::null_mut();
        let m = mech(CKM_RSA_PKCS_OAEP, (&raw mut o).cast(), size);
        assert_eq!(
            parse(&m).unwrap().param,
            MechParam::Oaep {
                hash: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                label: vec![]
            }
        );
        let m = mech(CKM_RSA_PKCS_OAEP, (&raw mut o).cast(), size - 8);
        assert_eq!(parse(&m).unwrap_err().ck_rv(), CKR_MECHANISM_PARAM_INVALID);
    }

    #[test]
    fn mechanism_iv_ulong_raw_none() {
        let mut iv = [1u8; 16];
        let m = mech(CKM_AES_CBC_PAD, iv.as_mut_ptr().cast(), 16);
        assert_eq!(parse(&m).unwrap().param, MechParam::Iv(iv.to_vec()));
        assert_eq!(
            parse(&mech(CKM_AES_CBC, ptr::null_mut(), 0)).unwrap().param,
            MechParam::None
        );
        assert_eq!(
            parse(&mech(CKM_AES_CBC, ptr::null_mut(), 16))
                .unwrap_err()
                .ck_rv(),
            CKR_ARGUMENTS_BAD
        );

        let mut mac_len: CK_ULONG = 16;
        let m = mech(
            CKM_SHA256_HMAC_GENERAL,
            (&raw mut mac_len).cast(),
            size_of::<CK_ULONG>(),
        );
        assert_eq!(parse(&m).unwrap().param, MechParam::Ulong(16));
        let m = mech(CKM_SHA256_HMAC_GENERAL, (&raw mut mac_len).cast(), 4);
        assert_eq!(parse(&m).unwrap_err().ck_rv(), CKR_MECHANISM_PARAM_INVALID);

        let mut raw = [9u8; 3];
        let m = mech(CKM_AES_CTR, raw.as_mut_ptr().cast(), 3);
        assert_eq!(parse(&m).unwrap().param, MechParam::Raw(raw.to_vec()));

        let mut point = [4u8; 65];
        let mut ecdh = CK_ECDH1_DERIVE_PARAMS {
            kdf: CKD_SHA256_KDF,
            ulSharedDataLen: 0,
            pSharedData: ptr::null_mut(),
            ulPublicDataLen: 65,
            pPublicData: point.as_mut_ptr(),
        };
        let m = mech(
            CKM_ECDH1_DERIVE,
            (&raw mut ecdh).cast(),
            size_of::<CK_ECDH1_DERIVE_PARAMS>(),
        );
        assert_eq!(
            parse(&m).unwrap().param,
            MechParam::Ecdh {
                kdf: CKD_SHA256_KDF,
                shared_data: Vec::new(),
                public_data: point.to_vec()
            }
        );
        ecdh.pPublicData = ptr::null_mut();
        let m = mech(
            CKM_ECDH1_DERIVE,
            (&raw mut ecdh).cast(),
            size_of::<CK_ECDH1_DERIVE_PARAMS>(),
        );
        assert!(parse(&m).is_err(), "a NULL point with a length is refused");
        assert_eq!(
            parse(&mech(CKM_SHA256, ptr::null_mut(), 0)).unwrap(),
            Mechanism::plain(CKM_SHA256)
        );
        // SAFETY: NULL is refused, not read.
        let rv = unsafe { in_mechanism(ptr::null()) }.unwrap_err().ck_rv();
        assert_eq!(rv, CKR_ARGUMENTS_BAD);
    }

    /// The member contract's C builder (`hsmpool_member::ck`, what a vendor-module member
    /// hands its library) and this reader agree on every parameter layout: what one writes,
    /// the other reads back unchanged.
    #[test]
    fn the_member_contract_writes_what_the_guard_reads() {
        use hsmpool_engine::ck::CkMechanism;
        use hsmpool_engine::cloudhsm::{CKM_CLOUDHSM_AES_GCM, CKM_CLOUDHSM_SP800_108_COUNTER_KDF};
        let m = |mech, param| Mechanism { mech, param };
        let cases = [
            m(CKM_ECDSA, MechParam::None),
            m(
                CKM_AES_GCM,
                MechParam::Gcm {
                    iv: vec![1; 12],
                    aad: vec![2; 5],
                    tag_bits: 128,
                },
            ),
            m(
                CKM_CLOUDHSM_AES_GCM,
                MechParam::Gcm {
                    iv: vec![],
                    aad: vec![3; 4],
                    tag_bits: 96,
                },
            ),
            m(
                CKM_SHA256_RSA_PKCS_PSS,
                MechParam::Pss {
                    hash: CKM_SHA256,
                    mgf: CKG_MGF1_SHA256,
                    salt_len: 32,
                },
            ),
            m(
                CKM_RSA_PKCS_OAEP,
                MechParam::Oaep {
                    hash: CKM_SHA256,
                    mgf: CKG_MGF1_SHA256,
                    label: b"label".to_vec(),
                },
            ),
            m(
                CKM_RSA_PKCS_OAEP,
                MechParam::Oaep {
                    hash: CKM_SHA_1,
                    mgf: CKG_MGF1_SHA1,
                    label: vec![],
                },
            ),
            m(CKM_SHA256_HMAC_GENERAL, MechParam::Ulong(16)),
            m(
                CKM_ECDH1_DERIVE,
                MechParam::Ecdh {
                    kdf: CKD_NULL,
                    shared_data: vec![],
                    public_data: vec![4; 65],
                },
            ),
            m(
                CKM_HKDF_DERIVE,
                MechParam::Hkdf {
                    extract: true,
                    expand: false,
                    prf: CKM_SHA384,
                    salt_type: CKF_HKDF_SALT_DATA,
                    salt: vec![5; 9],
                    info: vec![6; 3],
                },
            ),
            m(CKM_AES_CBC_PAD, MechParam::Iv(vec![7; 16])),
            m(CKM_AES_CTR, MechParam::Raw(vec![8; 24])),
        ];
        for want in cases {
            let ck = CkMechanism::new(&want).unwrap();
            // SAFETY: `ck` is a well-formed CK_MECHANISM whose pointers address its own storage
            // and `want`'s buffers, both alive for this call.
            let got = unsafe { in_mechanism(ck.as_raw()) }.unwrap();
            assert_eq!(got, want);
        }
        let sp800108 = m(
            CKM_CLOUDHSM_SP800_108_COUNTER_KDF,
            MechParam::Sp800108 {
                prf: 1,
                segments: vec![],
            },
        );
        assert!(CkMechanism::new(&sp800108).is_err(), "not carried yet");
    }
}
