//! Attribute templates: an input template copied into owned attributes (`C_CreateObject`,
//! `C_FindObjectsInit`, ...), one level of attribute arrays deep, and the caller's template of
//! `C_GetAttributeValue` answered in place.

use std::mem::size_of;
use std::ptr;

use cryptoki_sys::*;
use hsmpool_engine::types::AttrAnswer;
use hsmpool_engine::{
    decode_attr_array, encode_attr_array, is_array_attribute, Attr, Error, Result,
};

use super::pointer::{count_of, in_bytes, in_slice, len_to_ck};

/// An input template (`CK_ATTRIBUTE` array) copied into owned attributes. NULL `pTemplate` with a
/// non-zero count, or an attribute with NULL `pValue` and non-zero `ulValueLen`, is
/// `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// A non-NULL `ptr` must address `count` initialised `CK_ATTRIBUTE`s, each non-NULL `pValue` of
/// which addresses `ulValueLen` readable bytes.
pub(crate) unsafe fn in_template(ptr: *const CK_ATTRIBUTE, count: CK_ULONG) -> Result<Vec<Attr>> {
    // SAFETY: relayed from this function's contract.
    unsafe { in_template_depth(ptr, count, true) }
}

/// [`in_template`], one level of attribute arrays deep: the value of an attribute-array attribute
/// (`CKA_WRAP_TEMPLATE`, ...) is itself a `CK_ATTRIBUTE` array, read and stored in the encoding
/// of `hsmpool_sim::types::encode_attr_array`. Arrays inside arrays are refused.
///
/// # Safety
/// As [`in_template`], and the value of an array attribute addresses `ulValueLen /
/// size_of::<CK_ATTRIBUTE>()` readable `CK_ATTRIBUTE`s whose values are readable.
unsafe fn in_template_depth(
    ptr: *const CK_ATTRIBUTE,
    count: CK_ULONG,
    outer: bool,
) -> Result<Vec<Attr>> {
    // SAFETY: relayed from this function's contract.
    let attrs = unsafe { in_slice(ptr, count) }?;
    attrs
        .iter()
        .map(|a| {
            if is_array_attribute(a.type_) {
                if !outer {
                    return Err(Error::AttributeValueInvalid(a.type_));
                }
                let size = len_to_ck(size_of::<CK_ATTRIBUTE>())?;
                if a.ulValueLen % size != 0 {
                    return Err(Error::AttributeValueInvalid(a.type_));
                }
                // SAFETY: the contract: the value addresses that many attributes.
                let nested = unsafe {
                    in_template_depth(
                        a.pValue.cast::<CK_ATTRIBUTE>().cast_const(),
                        a.ulValueLen / size,
                        false,
                    )
                }?;
                return Ok(Attr {
                    ty: a.type_,
                    value: encode_attr_array(&nested),
                });
            }
            // SAFETY: a non-NULL `pValue` addresses `ulValueLen` readable bytes (contract).
            let value = unsafe { in_bytes(a.pValue.cast::<u8>(), a.ulValueLen) }?;
            Ok(Attr {
                ty: a.type_,
                value: value.to_vec(),
            })
        })
        .collect()
}

/// The caller's template of `C_GetAttributeValue`, answered in place (§5.7.5).
pub(crate) struct OutTemplate<'a> {
    /// Invariant: each non-NULL `pValue` is writable for `ulValueLen` bytes during 'a.
    attrs: &'a mut [CK_ATTRIBUTE],
}

impl<'a> OutTemplate<'a> {
    /// Checks the template array: NULL with `count > 0` is `CKR_ARGUMENTS_BAD`.
    ///
    /// # Safety
    /// A non-NULL `ptr` must address `count` initialised `CK_ATTRIBUTE`s, readable and writable
    /// during `'a`, each non-NULL `pValue` of which addresses `ulValueLen` writable bytes.
    pub(crate) unsafe fn new(ptr: *mut CK_ATTRIBUTE, count: CK_ULONG) -> Result<Self> {
        let n = count_of::<CK_ATTRIBUTE>(count)?;
        if n == 0 {
            return Ok(OutTemplate { attrs: &mut [] });
        }
        if ptr.is_null() {
            return Err(Error::ArgumentsBad("NULL template with a non-zero count"));
        }
        if !ptr.is_aligned() {
            return Err(Error::ArgumentsBad("misaligned template"));
        }
        // SAFETY: non-NULL, aligned, `n` initialised attributes writable during 'a (contract).
        let attrs = unsafe { std::slice::from_raw_parts_mut(ptr, n) };
        Ok(OutTemplate { attrs })
    }

    /// The requested attribute types, in order.
    pub(crate) fn types(&self) -> Vec<CK_ATTRIBUTE_TYPE> {
        self.attrs.iter().map(|a| a.type_).collect()
    }

    /// Writes one answer per attribute, processing every attribute (§5.7.5): a NULL `pValue` gets
    /// the length; a value that fits is copied; a sensitive or invalid attribute, or a buffer too
    /// small, gets `CK_UNAVAILABLE_INFORMATION`. Returns `CKR_OK`, or the error of the first
    /// attribute that had one (the spec lets us return any of them).
    pub(crate) fn fill(self, answers: &[AttrAnswer]) -> Result<CK_RV> {
        if answers.len() != self.attrs.len() {
            return Err(Error::General(format!(
                "engine answered {} of {} attributes",
                answers.len(),
                self.attrs.len()
            )));
        }
        let mut rv = CKR_OK;
        let mut remember = |e: CK_RV| {
            if rv == CKR_OK {
                rv = e;
            }
        };
        for (attr, answer) in self.attrs.iter_mut().zip(answers) {
            match answer {
                AttrAnswer::Value(v) if is_array_attribute(attr.type_) => {
                    let nested = decode_attr_array(v).ok_or_else(|| {
                        Error::General("stored attribute array is malformed".into())
                    })?;
                    if let Some(e) = fill_array(attr, &nested)? {
                        remember(e);
                    }
                }
                AttrAnswer::Value(v) => {
                    let len = len_to_ck(v.len())?;
                    if attr.pValue.is_null() {
                        attr.ulValueLen = len;
                    } else if attr.ulValueLen >= len {
                        // SAFETY: the type invariant: `pValue` is writable for `ulValueLen >=
                        // v.len()` bytes; `v` is our memory, disjoint from the caller's.
                        unsafe {
                            ptr::copy_nonoverlapping(v.as_ptr(), attr.pValue.cast::<u8>(), v.len())
                        };
                        attr.ulValueLen = len;
                    } else {
                        attr.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                        remember(CKR_BUFFER_TOO_SMALL);
                    }
                }
                AttrAnswer::Sensitive => {
                    attr.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    remember(CKR_ATTRIBUTE_SENSITIVE);
                }
                AttrAnswer::Invalid => {
                    attr.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    remember(CKR_ATTRIBUTE_TYPE_INVALID);
                }
            }
        }
        Ok(rv)
    }
}

/// Answers an attribute-array attribute (§4.1.4 and §5.7.5): with a NULL `pValue`, the length
/// of the array; otherwise the caller's array receives each attribute's type and, in the
/// caller's buffer, its value (or its length, for a NULL buffer). Returns the error to remember.
fn fill_array(attr: &mut CK_ATTRIBUTE, nested: &[Attr]) -> Result<Option<CK_RV>> {
    let needed = len_to_ck(nested.len().saturating_mul(size_of::<CK_ATTRIBUTE>()))?;
    if attr.pValue.is_null() {
        attr.ulValueLen = needed;
        return Ok(None);
    }
    if attr.ulValueLen < needed || !attr.pValue.cast::<CK_ATTRIBUTE>().is_aligned() {
        attr.ulValueLen = CK_UNAVAILABLE_INFORMATION;
        return Ok(Some(CKR_BUFFER_TOO_SMALL));
    }
    let mut short = false;
    for (i, a) in nested.iter().enumerate() {
        // SAFETY: the OutTemplate invariant: `pValue` is writable for `ulValueLen >= needed`
        // bytes, aligned (checked), holding the caller's CK_ATTRIBUTEs.
        let slot = unsafe { &mut *attr.pValue.cast::<CK_ATTRIBUTE>().add(i) };
        slot.type_ = a.ty;
        let len = len_to_ck(a.value.len())?;
        if slot.pValue.is_null() {
            slot.ulValueLen = len;
        } else if slot.ulValueLen >= len {
            // SAFETY: the caller's nested buffer is writable for its `ulValueLen` (§5.7.5).
            unsafe {
                ptr::copy_nonoverlapping(a.value.as_ptr(), slot.pValue.cast::<u8>(), a.value.len())
            };
            slot.ulValueLen = len;
        } else {
            slot.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            short = true;
        }
    }
    attr.ulValueLen = needed;
    Ok(short.then_some(CKR_BUFFER_TOO_SMALL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_reader_rules() {
        let mut yes: CK_BBOOL = CK_TRUE;
        let attrs = [
            CK_ATTRIBUTE {
                type_: CKA_TOKEN,
                pValue: (&raw mut yes).cast(),
                ulValueLen: 1,
            },
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            },
        ];
        // SAFETY: `attrs` and the value it points to are live locals.
        let t = unsafe { in_template(attrs.as_ptr(), 2) }.unwrap();
        assert_eq!(
            t,
            vec![Attr::bool(CKA_TOKEN, true), Attr::bytes(CKA_LABEL, b"")]
        );
        // SAFETY: NULL templates are not read.
        unsafe {
            assert!(in_template(ptr::null(), 0).unwrap().is_empty());
            assert_eq!(
                in_template(ptr::null(), 1).unwrap_err().ck_rv(),
                CKR_ARGUMENTS_BAD
            );
        }
        let bad = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: ptr::null_mut(),
            ulValueLen: 4,
        }];
        // SAFETY: `bad` is live; its NULL pValue is refused, not read.
        let rv = unsafe { in_template(bad.as_ptr(), 1) }.unwrap_err().ck_rv();
        assert_eq!(rv, CKR_ARGUMENTS_BAD);
    }

    #[test]
    fn get_attribute_value_processes_every_attribute() {
        let mut small = [0u8; 1];
        let mut fits = [0u8; 8];
        let mut sens = [0u8; 8];
        let mut attrs = [
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            },
            CK_ATTRIBUTE {
                type_: CKA_ID,
                pValue: small.as_mut_ptr().cast(),
                ulValueLen: 1,
            },
            CK_ATTRIBUTE {
                type_: CKA_VALUE,
                pValue: sens.as_mut_ptr().cast(),
                ulValueLen: 8,
            },
            CK_ATTRIBUTE {
                type_: 0x8000_1234,
                pValue: ptr::null_mut(),
                ulValueLen: 0,
            },
            CK_ATTRIBUTE {
                type_: CKA_SUBJECT,
                pValue: fits.as_mut_ptr().cast(),
                ulValueLen: 8,
            },
        ];
        // SAFETY: every non-NULL pValue addresses a live local of the length given.
        let t = unsafe { OutTemplate::new(attrs.as_mut_ptr(), 5) }.unwrap();
        assert_eq!(
            t.types(),
            vec![CKA_LABEL, CKA_ID, CKA_VALUE, 0x8000_1234, CKA_SUBJECT]
        );
        let answers = [
            AttrAnswer::Value(b"label".to_vec()),
            AttrAnswer::Value(b"too long".to_vec()),
            AttrAnswer::Sensitive,
            AttrAnswer::Invalid,
            AttrAnswer::Value(b"subj".to_vec()),
        ];
        // The first error in template order is the one returned.
        assert_eq!(t.fill(&answers).unwrap(), CKR_BUFFER_TOO_SMALL);
        assert_eq!(attrs[0].ulValueLen, 5);
        assert_eq!(attrs[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(attrs[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(attrs[3].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!(
            attrs[4].ulValueLen, 4,
            "later attributes are still processed"
        );
        assert_eq!(&fits[..4], b"subj");
        assert_eq!(sens, [0; 8], "a sensitive value is never written");

        // SAFETY: NULL with a count is refused before anything is read.
        let r = unsafe { OutTemplate::new(ptr::null_mut(), 1) };
        assert_eq!(r.err().unwrap().ck_rv(), CKR_ARGUMENTS_BAD);
    }

    /// As for mechanisms: the member contract's `CkTemplate` and this reader agree, nested
    /// attribute arrays included.
    #[test]
    fn the_member_contract_writes_what_the_guard_reads() {
        use hsmpool_engine::ck::CkTemplate;
        use hsmpool_engine::encode_attr_array;
        let inner = vec![Attr::bool(CKA_SIGN, true), Attr::bytes(CKA_LABEL, b"inner")];
        let want = vec![
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::bytes(CKA_LABEL, b"outer"),
            Attr::bytes(CKA_ID, b""),
            Attr {
                ty: CKA_UNWRAP_TEMPLATE,
                value: encode_attr_array(&inner),
            },
        ];
        let ck = CkTemplate::new(&want).unwrap();
        let raw = ck.as_slice();
        // SAFETY: `raw` holds well-formed attributes whose pointers address `want`'s values and
        // `ck`'s nested arrays, all alive for this call.
        let got = unsafe { in_template(raw.as_ptr(), raw.len() as CK_ULONG) }.unwrap();
        assert_eq!(got, want);
    }
}
