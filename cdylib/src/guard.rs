//! The entry guard and the pointer/buffer helpers: the only place caller memory is read or written.
//!
//! Every helper that takes a raw pointer is an `unsafe fn` whose `# Safety` section says what the
//! entry point (relaying the C caller's promise) must guarantee. Everything that *can* be checked
//! here is checked (NULL, lengths, alignment, parameter sizes) and turned into an error, never
//! trusted: a NULL pointer with a non-zero length is `CKR_ARGUMENTS_BAD`, a mechanism parameter of
//! the wrong size is `CKR_MECHANISM_PARAM_INVALID`. What cannot be checked (that a non-NULL pointer
//! really addresses that many bytes) is the caller's side of the contract in `cdylib/README.md`.

use std::any::Any;
use std::marker::PhantomData;
use std::mem::size_of;
use std::ops::Deref;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use cryptoki_sys::*;
use hsmpool_engine::cloudhsm::{
    CKM_CLOUDHSM_AES_GCM, CKM_CLOUDHSM_SP800_108_COUNTER_KDF, CK_SP800_108_BYTE_ARRAY,
    CK_SP800_108_DKM_LENGTH, CK_SP800_108_ITERATION_VARIABLE, GCM_IV_LEN, SP800_108_COUNTER_FORMAT,
    SP800_108_DKM_FORMAT, SP800_108_PRF_CONTEXT, SP800_108_PRF_LABEL,
};
use hsmpool_engine::types::AttrValue;
use hsmpool_engine::{
    decode_attr_array, encode_attr_array, is_array_attribute, Attr, Error, InitArgs, KdfSegment,
    MechParam, Mechanism,
};
use zeroize::Zeroizing;

pub(crate) use hsmpool_engine::Result;

/// The prefix that marks `CK_C_INITIALIZE_ARGS.pReserved` as our configuration string
/// (`HSMPOOL_CONFIG_PREFIX` in `include/hsmpool.h`).
pub const CONFIG_PREFIX: &[u8] = b"hsmpool:";

/// The longest configuration string we read, NUL included; a longer one is `CKR_ARGUMENTS_BAD`
/// rather than an unbounded walk through the caller's memory.
pub const CONFIG_MAX_LEN: usize = 4096;

/// Runs the body of one `C_*` entry point.
///
/// `guard!("C_Name", { body })`: the body evaluates to `Result<CK_RV>`. It runs inside a tracing
/// span named after the function and under `catch_unwind`: `Ok(rv)` is returned as is (so a body
/// can return `CKR_NO_EVENT` or `CKR_ATTRIBUTE_SENSITIVE`), `Err(e)` becomes `e.ck_rv()`, and a
/// panic becomes `CKR_GENERAL_ERROR` instead of unwinding into C (which would abort the host).
/// Arguments are never recorded: they may be PINs, keys or data.
macro_rules! guard {
    ($name:literal, $body:block) => {
        $crate::guard::run(
            || ::tracing::debug_span!($name),
            move || -> $crate::guard::Result<::cryptoki_sys::CK_RV> { $body },
        )
    };
}
pub(crate) use guard;

/// The part of [`guard!`] that needs no literal: enter the span, run the body, log an error, and
/// catch a panic. The span is made inside `catch_unwind` too, so even a panicking subscriber
/// cannot unwind into C.
pub(crate) fn run(
    span: impl FnOnce() -> tracing::Span,
    body: impl FnOnce() -> Result<CK_RV>,
) -> CK_RV {
    let guarded = move || {
        let _entered = span().entered();
        let outcome = body();
        trace_outcome(&outcome);
        outcome
    };
    match panic::catch_unwind(AssertUnwindSafe(guarded)) {
        Ok(Ok(rv)) => rv,
        Ok(Err(e)) => e.ck_rv(),
        Err(payload) => {
            report_panic(payload);
            CKR_GENERAL_ERROR
        }
    }
}

/// Logs an error result inside the entry point's span (the error text never holds secrets).
fn trace_outcome(outcome: &Result<CK_RV>) {
    if let Err(e) = outcome {
        tracing::debug!(rv = format_args!("{:#x}", e.ck_rv()), error = %e, "returning an error");
    }
}

/// Logs a caught panic and drops its payload. Both run code we do not control (a subscriber, the
/// payload's `Drop`), so both are contained too; a payload whose drop panics again is leaked.
fn report_panic(payload: Box<dyn Any + Send>) {
    let again = panic::catch_unwind(AssertUnwindSafe(move || {
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-string panic payload)");
        tracing::error!(
            panic = msg,
            "panic caught at the C boundary; returning CKR_GENERAL_ERROR"
        );
        drop(payload);
    }));
    if let Err(p) = again {
        std::mem::forget(p);
    }
}

// ---------------------------------------------------------------------------------------------
// Lengths
// ---------------------------------------------------------------------------------------------

/// A caller's element count as a `usize` that may size a `[T]`: the byte size must fit `isize`.
fn count_of<T>(n: CK_ULONG) -> Result<usize> {
    let n = usize::try_from(n).map_err(|_| Error::ArgumentsBad("length does not fit in usize"))?;
    let bytes = n
        .checked_mul(size_of::<T>())
        .ok_or(Error::ArgumentsBad("length overflows"))?;
    isize::try_from(bytes).map_err(|_| Error::ArgumentsBad("length exceeds isize::MAX"))?;
    Ok(n)
}

/// A length we report back to the caller. Only a 32-bit `CK_ULONG` (Windows) can overflow.
#[allow(clippy::unnecessary_fallible_conversions)] // `usize` and `CK_ULONG` differ per target.
pub(crate) fn len_to_ck(n: usize) -> Result<CK_ULONG> {
    CK_ULONG::try_from(n)
        .map_err(|_| Error::General(format!("length {n} does not fit in CK_ULONG")))
}

/// A 64-bit engine count (`C_GetObjectSize`) as a `CK_ULONG`.
#[allow(clippy::unnecessary_fallible_conversions)] // `CK_ULONG` is 32 bits on some targets.
pub(crate) fn u64_to_ck(n: u64) -> Result<CK_ULONG> {
    CK_ULONG::try_from(n).map_err(|_| Error::General(format!("value {n} does not fit in CK_ULONG")))
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// An input byte buffer: NULL with `len > 0` is `CKR_ARGUMENTS_BAD`; NULL with 0 is empty.
///
/// # Safety
/// A non-NULL `ptr` must address `len` readable bytes that nothing writes during `'a`.
pub(crate) unsafe fn in_bytes<'a>(ptr: *const u8, len: CK_ULONG) -> Result<&'a [u8]> {
    // SAFETY: relayed from this function's contract.
    unsafe { in_slice(ptr, len) }
}

/// An input array of `count` `T`s, with the same NULL rule as [`in_bytes`].
///
/// # Safety
/// A non-NULL `ptr` must address `count` initialised `T`s that nothing writes during `'a`.
pub(crate) unsafe fn in_slice<'a, T>(ptr: *const T, count: CK_ULONG) -> Result<&'a [T]> {
    let n = count_of::<T>(count)?;
    if n == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Error::ArgumentsBad("NULL pointer with a non-zero length"));
    }
    if !ptr.is_aligned() {
        return Err(Error::ArgumentsBad("misaligned array"));
    }
    // SAFETY: non-NULL and aligned (checked above); `n` elements are readable and not written
    // during 'a (this function's contract); `n * size_of::<T>()` fits `isize` (`count_of`).
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// An optional input value (`C_GetInterface`'s `pVersion`): NULL is `None`.
///
/// # Safety
/// A non-NULL `ptr` must address an initialised, readable `T`.
pub(crate) unsafe fn in_opt<T: Copy>(ptr: *const T) -> Result<Option<T>> {
    if ptr.is_null() {
        return Ok(None);
    }
    if !ptr.is_aligned() {
        return Err(Error::ArgumentsBad("misaligned pointer"));
    }
    // SAFETY: non-NULL and aligned (checked above), readable and initialised (contract).
    Ok(Some(unsafe { ptr.read() }))
}

/// A NUL-terminated string of at most `max` bytes (NUL included), without its NUL. NULL is
/// `None`. The scan stops at the first NUL, so no byte after the string is read; no NUL within
/// `max` bytes is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// A non-NULL `ptr` must address a readable byte string that is NUL-terminated or at least `max`
/// bytes long, and that nothing writes during `'a`.
pub(crate) unsafe fn in_cstr<'a>(ptr: *const u8, max: usize) -> Result<Option<&'a [u8]>> {
    if ptr.is_null() {
        return Ok(None);
    }
    let mut len = 0;
    loop {
        if len == max {
            return Err(Error::ArgumentsBad(
                "string is not NUL-terminated within its bound",
            ));
        }
        // SAFETY: every byte before the NUL is readable (contract), and we have not passed a NUL.
        if unsafe { ptr.add(len).read() } == 0 {
            break;
        }
        len += 1;
    }
    // SAFETY: the `len` bytes before the NUL were just read one by one; they are not written
    // during 'a (contract); `len < max`, which fits `isize` for any bound we use.
    Ok(Some(unsafe { std::slice::from_raw_parts(ptr, len) }))
}

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

/// Input data that may overlap the output buffer of the same call (in-place `C_Encrypt`):
/// borrowed when it does not, copied (and wiped after use) when it does, so the engine never sees
/// a `&[u8]` and a `&mut [u8]` over the same bytes.
pub(crate) enum InData<'a> {
    /// The caller's bytes, disjoint from the output.
    Borrowed(&'a [u8]),
    /// A copy of bytes that overlapped the output.
    Copied(Zeroizing<Vec<u8>>),
}

impl Deref for InData<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            InData::Borrowed(b) => b,
            InData::Copied(v) => v,
        }
    }
}

/// The input and output buffers of a call that reads data and writes a variable-length result
/// (`C_Encrypt`, `C_DecryptUpdate`, `C_Sign`, `C_Digest`, ...).
///
/// # Safety
/// As [`in_bytes`] for `p_in`, and as [`OutBuf::new`] for `p_out` and `pul_out_len`.
pub(crate) unsafe fn in_out<'a>(
    p_in: *const u8,
    ul_in_len: CK_ULONG,
    p_out: *mut u8,
    pul_out_len: *mut CK_ULONG,
) -> Result<(InData<'a>, OutBuf<'a, u8>)> {
    // SAFETY: relayed from this function's contract.
    let out = unsafe { OutBuf::new(p_out, pul_out_len) }?;
    // SAFETY: relayed from this function's contract.
    let input = unsafe { in_bytes(p_in, ul_in_len) }?;
    let data = if out.overlaps(input) {
        InData::Copied(Zeroizing::new(input.to_vec()))
    } else {
        InData::Borrowed(input)
    };
    Ok((data, out))
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

/// A checked, not yet written, output location (`phSession`, `pInfo`, ...). Checking first lets
/// an entry point refuse a NULL pointer before the engine does anything irreversible.
pub(crate) struct OutRef<'a, T> {
    /// Invariant: non-NULL, aligned, writable for one `T` during 'a.
    ptr: *mut T,
    _life: PhantomData<&'a mut T>,
}

/// An output location: NULL or misaligned is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// A non-NULL `ptr` must address memory writable for one `T` during `'a`, not otherwise
/// referenced by the call.
pub(crate) unsafe fn out_ref<'a, T>(ptr: *mut T) -> Result<OutRef<'a, T>> {
    if ptr.is_null() {
        return Err(Error::ArgumentsBad("NULL output pointer"));
    }
    if !ptr.is_aligned() {
        return Err(Error::ArgumentsBad("misaligned output pointer"));
    }
    Ok(OutRef {
        ptr,
        _life: PhantomData,
    })
}

impl<T> OutRef<'_, T> {
    /// Writes the value (the old contents, perhaps uninitialised, are neither read nor dropped).
    pub(crate) fn set(self, value: T) {
        // SAFETY: the type invariant (checked in `out_ref`): non-NULL, aligned, writable.
        unsafe { self.ptr.write(value) }
    }
}

/// An output array of fixed capacity (`C_FindObjects`' `phObject`/`ulMaxObjectCount`).
pub(crate) struct OutArray<'a, T> {
    /// Invariant: when `cap > 0`, non-NULL, aligned and writable for `cap` `T`s during 'a.
    ptr: *mut T,
    cap: usize,
    _life: PhantomData<&'a mut T>,
}

/// An output array: NULL with `cap > 0` is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// A non-NULL `ptr` must address memory writable for `cap` `T`s during `'a`.
pub(crate) unsafe fn out_array<'a, T>(ptr: *mut T, cap: CK_ULONG) -> Result<OutArray<'a, T>> {
    let cap = count_of::<T>(cap)?;
    if cap > 0 && ptr.is_null() {
        return Err(Error::ArgumentsBad("NULL array with a non-zero capacity"));
    }
    if cap > 0 && !ptr.is_aligned() {
        return Err(Error::ArgumentsBad("misaligned array"));
    }
    Ok(OutArray {
        ptr,
        cap,
        _life: PhantomData,
    })
}

impl<T: Copy> OutArray<'_, T> {
    /// The capacity, in elements.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }
    /// Copies `data` to the start of the array; more than the capacity is an engine bug.
    pub(crate) fn write(self, data: &[T]) -> Result<()> {
        if data.len() > self.cap {
            return Err(Error::General(format!(
                "{} items for a capacity of {}",
                data.len(),
                self.cap
            )));
        }
        if !data.is_empty() {
            // SAFETY: `data.len() <= cap` and cap > 0, so the type invariant makes `ptr` valid
            // for these writes; `data` is our own memory, so the two do not overlap.
            unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.ptr, data.len()) }
        }
        Ok(())
    }
}

/// A fixed-length output byte buffer (`C_GenerateRandom`): NULL with `len > 0` is
/// `CKR_ARGUMENTS_BAD`. The bytes may be uninitialised: the engine only writes them (see
/// [`OutBuf::fill_with`]).
///
/// # Safety
/// A non-NULL `ptr` must address `len` bytes writable during `'a` and not otherwise referenced.
pub(crate) unsafe fn out_bytes<'a>(ptr: *mut u8, len: CK_ULONG) -> Result<&'a mut [u8]> {
    let n = count_of::<u8>(len)?;
    if n == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Error::ArgumentsBad("NULL buffer with a non-zero length"));
    }
    // SAFETY: non-NULL, `n` writable bytes not otherwise referenced (contract), size fits isize.
    // A `&mut [u8]` over possibly uninitialised bytes is sound as long as nothing reads them
    // before writing, and the engine's `out` buffers are write-only.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, n) })
}

/// The spec's variable-length output rule (§5.2), implemented once.
///
/// * `pBuf` NULL: write the needed length to `*pulBufLen`, return `CKR_OK`.
/// * `*pulBufLen` too small: write the needed length, return `CKR_BUFFER_TOO_SMALL` (the engine
///   keeps the operation active).
/// * otherwise: write the output and its length, return `CKR_OK`.
///
/// `T` is `u8` for data, `CK_SLOT_ID`/`CK_MECHANISM_TYPE` for lists, `CK_INTERFACE` for
/// `C_GetInterfaceList`: the rule is the same, counted in elements.
pub(crate) struct OutBuf<'a, T> {
    /// Invariant: NULL, or aligned and writable for `cap` `T`s during 'a.
    p_buf: *mut T,
    /// `*pulBufLen` as read on entry; 0 when `p_buf` is NULL (then it was not read).
    cap: usize,
    /// Invariant: non-NULL, aligned, readable and writable during 'a.
    pul_len: *mut CK_ULONG,
    _life: PhantomData<&'a mut T>,
}

impl<'a, T> OutBuf<'a, T> {
    /// Checks `pulBufLen` (NULL is `CKR_ARGUMENTS_BAD`) and, when `pBuf` is not NULL, reads the
    /// capacity from it. When `pBuf` is NULL, `*pulBufLen` is not read (it may be uninitialised).
    ///
    /// # Safety
    /// `pul_len`, if non-NULL, must address a `CK_ULONG` readable and writable during `'a`,
    /// initialised when `p_buf` is non-NULL. A non-NULL `p_buf` must address `*pul_len` `T`s
    /// writable during `'a` and not otherwise referenced except as input of the same call.
    pub(crate) unsafe fn new(p_buf: *mut T, pul_len: *mut CK_ULONG) -> Result<Self> {
        if pul_len.is_null() {
            return Err(Error::ArgumentsBad("NULL length pointer"));
        }
        if !pul_len.is_aligned() {
            return Err(Error::ArgumentsBad("misaligned length pointer"));
        }
        let cap = if p_buf.is_null() {
            0
        } else {
            if !p_buf.is_aligned() {
                return Err(Error::ArgumentsBad("misaligned output buffer"));
            }
            // SAFETY: non-NULL, aligned (checked), initialised when p_buf is non-NULL (contract).
            count_of::<T>(unsafe { pul_len.read() })?
        };
        Ok(OutBuf {
            p_buf,
            cap,
            pul_len,
            _life: PhantomData,
        })
    }

    /// Writes `*pulBufLen`, after the conversion has succeeded.
    fn set_len(&self, n: usize) -> Result<()> {
        let n = len_to_ck(n)?;
        // SAFETY: the type invariant on `pul_len`.
        unsafe { self.pul_len.write(n) };
        Ok(())
    }

    /// Answers with data already computed (`C_GetSlotList`, `C_GetMechanismList`, ...).
    pub(crate) fn put(self, data: &[T]) -> Result<CK_RV>
    where
        T: Copy,
    {
        if self.p_buf.is_null() {
            self.set_len(data.len())?;
            return Ok(CKR_OK);
        }
        if data.len() > self.cap {
            self.set_len(data.len())?;
            return Err(Error::BufferTooSmall { needed: data.len() });
        }
        let n = len_to_ck(data.len())?;
        // SAFETY: `data.len() <= cap` and `p_buf` is non-NULL, so the type invariant makes the
        // writes valid; `data` is our memory, disjoint from the caller's buffer.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.p_buf, data.len()) };
        // SAFETY: the type invariant on `pul_len`.
        unsafe { self.pul_len.write(n) };
        Ok(CKR_OK)
    }
}

impl OutBuf<'_, u8> {
    /// Whether `input` shares bytes with the output buffer.
    fn overlaps(&self, input: &[u8]) -> bool {
        if self.p_buf.is_null() || self.cap == 0 || input.is_empty() {
            return false;
        }
        let (out_start, in_start) = (self.p_buf as usize, input.as_ptr() as usize);
        in_start < out_start.saturating_add(self.cap)
            && out_start < in_start.saturating_add(input.len())
    }

    /// Answers with what the engine writes: `produce` gets `None` for a length query, or the
    /// caller's buffer, and returns the length written or needed; `Error::BufferTooSmall {
    /// needed }` is answered with `needed` in `*pulBufLen` and `CKR_BUFFER_TOO_SMALL`.
    ///
    /// The buffer is handed over as it is, not cleared: its bytes may be uninitialised, so
    /// `produce` must only write to it (the engine's `out` contract), and a failed call leaves
    /// the caller's bytes untouched (callers reuse buffers after an expected failure).
    pub(crate) fn fill_with(
        self,
        produce: impl FnOnce(Option<&mut [u8]>) -> Result<usize>,
    ) -> Result<CK_RV> {
        let buf = if self.p_buf.is_null() {
            None
        } else if self.cap == 0 {
            Some(&mut [][..])
        } else {
            // SAFETY: the type invariant: non-NULL, `cap` writable bytes, not referenced by
            // anything else (an overlapping input was copied by `in_out`); cap fits isize
            // (`count_of`). The bytes may be uninitialised; `produce` only writes them.
            Some(unsafe { std::slice::from_raw_parts_mut(self.p_buf, self.cap) })
        };
        let query = buf.is_none();
        match produce(buf) {
            Ok(n) if !query && n > self.cap => Err(Error::General(format!(
                "engine reported {n} bytes written into {}",
                self.cap
            ))),
            Ok(n) => {
                self.set_len(n)?;
                Ok(CKR_OK)
            }
            Err(Error::BufferTooSmall { needed }) => {
                self.set_len(needed)?;
                Err(Error::BufferTooSmall { needed })
            }
            Err(e) => Err(e),
        }
    }
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
    pub(crate) fn fill(self, answers: &[AttrValue]) -> Result<CK_RV> {
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
                AttrValue::Value(v) if is_array_attribute(attr.type_) => {
                    let nested = decode_attr_array(v).ok_or_else(|| {
                        Error::General("stored attribute array is malformed".into())
                    })?;
                    if let Some(e) = fill_array(attr, &nested)? {
                        remember(e);
                    }
                }
                AttrValue::Value(v) => {
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
                AttrValue::Sensitive => {
                    attr.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    remember(CKR_ATTRIBUTE_SENSITIVE);
                }
                AttrValue::Invalid => {
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

/// A blank-padded (0x20), never NUL-terminated, fixed-width string field, cut at a UTF-8
/// character boundary when too long.
pub(crate) fn pad<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}

/// A `(major, minor)` pair as a `CK_VERSION`.
pub(crate) fn version((major, minor): (u8, u8)) -> CK_VERSION {
    CK_VERSION { major, minor }
}

// ---------------------------------------------------------------------------------------------
// C_Initialize arguments
// ---------------------------------------------------------------------------------------------

/// Reads `C_Initialize`'s `pInitArgs` (§5.4.1). NULL means defaults. Mutex callbacks must be all
/// set or all NULL (`CKR_ARGUMENTS_BAD`); set without `CKF_OS_LOCKING_OK` they are
/// `CKR_CANT_LOCK` (we only ever use our own locks); `CKF_LIBRARY_CANT_CREATE_OS_THREADS` is
/// accepted (we need no threads of our own for correctness). A non-NULL `pReserved` must be our
/// configuration string, `"hsmpool:<config>"`, else `CKR_ARGUMENTS_BAD`.
///
/// # Safety
/// A non-NULL `ptr` must address an initialised `CK_C_INITIALIZE_ARGS` (§5.4.1 promises that);
/// its `pReserved` may hold any value and is never dereferenced (see [`config_string`]).
pub(crate) unsafe fn init_args(ptr: *const CK_C_INITIALIZE_ARGS) -> Result<InitArgs> {
    // SAFETY: relayed from this function's contract.
    let Some(args) = (unsafe { in_opt(ptr) })? else {
        return Ok(InitArgs::default());
    };
    let set = [
        args.CreateMutex.is_some(),
        args.DestroyMutex.is_some(),
        args.LockMutex.is_some(),
        args.UnlockMutex.is_some(),
    ];
    let n_set = set.iter().filter(|s| **s).count();
    if n_set != 0 && n_set != set.len() {
        return Err(Error::ArgumentsBad(
            "some but not all mutex callbacks are set",
        ));
    }
    if n_set == set.len() && args.flags & CKF_OS_LOCKING_OK == 0 {
        return Err(Error::CantLock);
    }
    let config = config_string(args.pReserved.cast::<u8>().cast_const())?;
    Ok(InitArgs { config })
}

/// `pReserved` as our configuration string: NULL is `None`; anything else must be a readable,
/// NUL-terminated, UTF-8 string of at most [`CONFIG_MAX_LEN`] bytes starting with
/// [`CONFIG_PREFIX`], else `CKR_ARGUMENTS_BAD`.
///
/// PKCS #11 3.0 §5.4.1 says `pReserved` is reserved and must be NULL, so a non-NULL value is the
/// one caller pointer the spec does not promise readable: conformance suites pass `(void*)1`.
/// It is therefore never dereferenced here: [`copy_caller_cstr`] has the kernel copy it, which
/// reports an unreadable byte as an error instead of faulting in the caller's process.
fn config_string(ptr: *const u8) -> Result<Option<String>> {
    if ptr.is_null() {
        return Ok(None);
    }
    let whole = copy_caller_cstr(ptr, CONFIG_MAX_LEN)?;
    let rest = whole
        .strip_prefix(CONFIG_PREFIX)
        .ok_or(Error::ArgumentsBad(
            "pReserved is not an hsmpool configuration string",
        ))?;
    let rest = std::str::from_utf8(rest)
        .map_err(|_| Error::ArgumentsBad("configuration string is not UTF-8"))?;
    Ok(Some(rest.to_owned()))
}

/// The most bytes one kernel copy reads: a chunk never crosses a 4 KiB boundary, so it lies in
/// one page (pages are 4 KiB or larger) and is readable whole or not at all.
const PROBE_CHUNK: usize = 4096;

/// Copies the NUL-terminated string at `ptr` (without its NUL) from memory that may be unmapped,
/// unreadable or unterminated, without dereferencing `ptr`: each chunk, up to the next 4 KiB
/// boundary, is read by the kernel (`process_vm_readv(2)` on our own process; where a seccomp
/// policy forbids that, `write(2)` into a pipe and read back), which answers `EFAULT` for memory
/// we may not read. An unreadable byte before the NUL, or no NUL within `max` bytes, is
/// `CKR_ARGUMENTS_BAD`; the copy stops at the first NUL, so nothing past the string is read.
/// Nothing here needs a `# Safety` contract: any address value is acceptable.
pub(crate) fn copy_caller_cstr(ptr: *const u8, max: usize) -> Result<Vec<u8>> {
    let unreadable = || Error::ArgumentsBad("pReserved is not a readable NUL-terminated string");
    let mut reader = KernelReader::new();
    let mut out = Vec::new();
    let mut addr = ptr as usize;
    let mut chunk = [0u8; PROBE_CHUNK];
    while out.len() < max {
        let want = (PROBE_CHUNK - addr % PROBE_CHUNK).min(max - out.len());
        let got = reader
            .read(addr, &mut chunk[..want])
            .ok_or_else(unreadable)?;
        let bytes = chunk.get(..got).ok_or_else(unreadable)?;
        if let Some(nul) = bytes.iter().position(|b| *b == 0) {
            out.extend_from_slice(&bytes[..nul]);
            return Ok(out);
        }
        out.extend_from_slice(bytes);
        addr = addr.checked_add(got).ok_or_else(unreadable)?;
    }
    Err(Error::ArgumentsBad(
        "string is not NUL-terminated within its bound",
    ))
}

/// Reads another part of our own address space through the kernel (see [`copy_caller_cstr`]).
enum KernelReader {
    /// `process_vm_readv` on our own pid (the first try).
    VmRead,
    /// A pipe (`write` in, `read` out) once `process_vm_readv` is refused, or `None` when no
    /// pipe could be made either.
    Pipe(Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>),
}

impl KernelReader {
    fn new() -> KernelReader {
        KernelReader::VmRead
    }

    /// Copies `buf.len()` bytes (all within one page) from `addr` into `buf`: `Some(n)` with
    /// `n == buf.len()`, or `None` when the memory is unreadable or cannot be checked.
    fn read(&mut self, addr: usize, buf: &mut [u8]) -> Option<usize> {
        if let KernelReader::VmRead = self {
            match vm_read(addr, buf) {
                Ok(n) => return (n == buf.len()).then_some(n),
                Err(libc::EFAULT) => return None,
                // ENOSYS, EPERM (seccomp, Yama): fall back to the pipe.
                Err(_) => *self = KernelReader::Pipe(pipe()),
            }
        }
        match self {
            KernelReader::Pipe(Some((rd, wr))) => pipe_read(rd, wr, addr, buf),
            _ => None,
        }
    }
}

/// One `process_vm_readv` of `buf.len()` bytes at `addr` in this process: bytes read or errno.
fn vm_read(addr: usize, buf: &mut [u8]) -> std::result::Result<usize, i32> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: `local` describes `buf`, which we own and may write; the kernel only reads the
        // remote range, through its own page tables, and answers EFAULT where it is not mapped
        // readable: this process never dereferences `addr`.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(e) => return Err(e),
                None => return Err(libc::EIO),
            },
        }
    }
}

/// A non-blocking, close-on-exec pipe, or `None` when the process has no descriptors left.
fn pipe() -> Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if rc != 0 {
        return None;
    }
    // SAFETY: both descriptors were just opened by pipe2 and are owned by nothing else.
    Some(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Copies `buf.len()` bytes at `addr` through the pipe: `write` reads them in the kernel (EFAULT
/// when unreadable; the chunk lies in one page, so it is copied whole or not at all), `read`
/// takes them back out. The pipe holds 64 KiB, more than one chunk, so neither call blocks.
fn pipe_read(
    rd: &std::os::fd::OwnedFd,
    wr: &std::os::fd::OwnedFd,
    addr: usize,
    buf: &mut [u8],
) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let written = loop {
        // SAFETY: write(2) reads `buf.len()` bytes at `addr` inside the kernel, which returns
        // EFAULT instead of faulting when they are not readable: this process never
        // dereferences `addr`.
        let n = unsafe { libc::write(wr.as_raw_fd(), addr as *const libc::c_void, buf.len()) };
        match usize::try_from(n) {
            Ok(n) => break n,
            Err(_) if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return None,
        }
    };
    let mut done = 0;
    while done < written {
        let rest = buf.get_mut(done..written)?;
        // SAFETY: `rest` is a live, writable part of `buf` of `rest.len()` bytes.
        let n = unsafe { libc::read(rd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        match usize::try_from(n) {
            Ok(0) => return None,
            Ok(n) => done += n,
            Err(_) if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return None,
        }
    }
    (written == buf.len()).then_some(written)
}

// ---------------------------------------------------------------------------------------------
// Mechanisms
// ---------------------------------------------------------------------------------------------

/// How a mechanism's `pParameter` is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParamKind {
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
    /// Anything else: raw bytes for the engine to judge.
    Other,
}

fn param_kind(mech: CK_MECHANISM_TYPE) -> ParamKind {
    match mech {
        CKM_AES_GCM => ParamKind::Gcm,
        CKM_RSA_PKCS_PSS
        | CKM_SHA1_RSA_PKCS_PSS
        | CKM_SHA224_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS
        | CKM_SHA3_224_RSA_PKCS_PSS
        | CKM_SHA3_256_RSA_PKCS_PSS
        | CKM_SHA3_384_RSA_PKCS_PSS
        | CKM_SHA3_512_RSA_PKCS_PSS => ParamKind::Pss,
        CKM_RSA_PKCS_OAEP => ParamKind::Oaep,
        CKM_AES_CBC | CKM_AES_CBC_PAD | CKM_DES3_CBC | CKM_DES3_CBC_PAD | CKM_DES_CBC
        | CKM_DES_CBC_PAD => ParamKind::Iv,
        CKM_SHA_1_HMAC_GENERAL
        | CKM_SHA224_HMAC_GENERAL
        | CKM_SHA256_HMAC_GENERAL
        | CKM_SHA384_HMAC_GENERAL
        | CKM_SHA512_HMAC_GENERAL
        | CKM_SHA3_224_HMAC_GENERAL
        | CKM_SHA3_256_HMAC_GENERAL
        | CKM_SHA3_384_HMAC_GENERAL
        | CKM_SHA3_512_HMAC_GENERAL
        | CKM_MD5_HMAC_GENERAL
        | CKM_AES_MAC_GENERAL
        | CKM_AES_CMAC_GENERAL
        | CKM_DES3_MAC_GENERAL
        | CKM_DES3_CMAC_GENERAL => ParamKind::Ulong,
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => ParamKind::Ecdh,
        CKM_HKDF_DERIVE | CKM_HKDF_DATA => ParamKind::Hkdf,
        CKM_CLOUDHSM_AES_GCM => ParamKind::CloudHsmGcm,
        CKM_CLOUDHSM_SP800_108_COUNTER_KDF => ParamKind::CloudHsmKdf,
        _ => ParamKind::Other,
    }
}

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
    let param = match param_kind(m.mechanism) {
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
    use std::ffi::c_void;

    fn ul(n: usize) -> CK_ULONG {
        len_to_ck(n).unwrap()
    }

    #[test]
    fn in_bytes_null_rules() {
        // SAFETY: NULL pointers are never dereferenced; the non-NULL one addresses `data`.
        unsafe {
            assert_eq!(in_bytes(ptr::null(), 0).unwrap(), &[] as &[u8]);
            assert_eq!(
                in_bytes(ptr::null(), 1).unwrap_err().ck_rv(),
                CKR_ARGUMENTS_BAD
            );
            let data = [1u8, 2, 3];
            assert_eq!(in_bytes(data.as_ptr(), 3).unwrap(), &data);
            assert_eq!(in_bytes(data.as_ptr(), 0).unwrap(), &[] as &[u8]);
            // A length that cannot be a slice is refused before anything is read.
            assert_eq!(
                in_bytes(data.as_ptr(), CK_ULONG::MAX).unwrap_err().ck_rv(),
                CKR_ARGUMENTS_BAD
            );
        }
    }

    #[test]
    fn out_ref_refuses_null_and_writes() {
        let mut v: CK_ULONG = 0;
        // SAFETY: NULL is not dereferenced; `v` is a live local.
        unsafe {
            assert_eq!(
                out_ref::<CK_ULONG>(ptr::null_mut()).err().unwrap().ck_rv(),
                CKR_ARGUMENTS_BAD
            );
            out_ref(&mut v).unwrap().set(7);
        }
        assert_eq!(v, 7);
    }

    #[test]
    fn outbuf_null_buffer_reports_length() {
        let mut len: CK_ULONG = 0xdead;
        // SAFETY: `len` is a live local; the NULL buffer is not written.
        let out = unsafe { OutBuf::<u8>::new(ptr::null_mut(), &mut len) }.unwrap();
        let rv = out.fill_with(|b| {
            assert!(b.is_none(), "a NULL buffer is a length query");
            Ok(32)
        });
        assert_eq!(rv.unwrap(), CKR_OK);
        assert_eq!(len, 32);
    }

    #[test]
    fn outbuf_too_small_writes_needed_length() {
        let mut buf = [0xAAu8; 4];
        let mut len = ul(buf.len());
        // SAFETY: `buf` and `len` are live locals of the sizes given.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &mut len) }.unwrap();
        let rv = out.fill_with(|b| {
            assert_eq!(b.map(|b| b.len()), Some(4));
            Err(Error::BufferTooSmall { needed: 32 })
        });
        assert_eq!(rv.unwrap_err().ck_rv(), CKR_BUFFER_TOO_SMALL);
        assert_eq!(len, 32);
    }

    #[test]
    fn outbuf_big_enough_writes_data_and_length() {
        let mut buf = [0u8; 8];
        let mut len = ul(buf.len());
        // SAFETY: `buf` and `len` are live locals of the sizes given.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &mut len) }.unwrap();
        let rv = out.fill_with(|b| {
            let b = b.unwrap();
            b[..3].copy_from_slice(b"abc");
            Ok(3)
        });
        assert_eq!(rv.unwrap(), CKR_OK);
        assert_eq!(len, 3);
        assert_eq!(&buf[..3], b"abc");
    }

    #[test]
    fn outbuf_other_errors_leave_length_and_buffer_alone() {
        let mut buf = *b"previous";
        let mut len = ul(buf.len());
        // SAFETY: `buf` and `len` are live locals of the sizes given.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &mut len) }.unwrap();
        let rv = out.fill_with(|_| Err(Error::OperationNotInitialized));
        assert_eq!(rv.unwrap_err().ck_rv(), CKR_OPERATION_NOT_INITIALIZED);
        assert_eq!(len, 8);
        assert_eq!(
            &buf, b"previous",
            "a failed call does not touch the caller's bytes"
        );
    }

    #[test]
    fn outbuf_engine_overrun_is_a_bug() {
        let mut buf = [0u8; 2];
        let mut len = ul(buf.len());
        // SAFETY: `buf` and `len` are live locals of the sizes given.
        let out = unsafe { OutBuf::new(buf.as_mut_ptr(), &mut len) }.unwrap();
        assert_eq!(
            out.fill_with(|_| Ok(3)).unwrap_err().ck_rv(),
            CKR_GENERAL_ERROR
        );
    }

    #[test]
    fn outbuf_null_length_pointer_is_arguments_bad() {
        let mut buf = [0u8; 2];
        // SAFETY: the NULL length pointer is refused before anything is touched.
        let r = unsafe { OutBuf::new(buf.as_mut_ptr(), ptr::null_mut()) };
        assert_eq!(r.err().unwrap().ck_rv(), CKR_ARGUMENTS_BAD);
    }

    #[test]
    fn outbuf_put_follows_the_same_rule() {
        let slots: [CK_SLOT_ID; 3] = [1, 2, 3];
        let mut count: CK_ULONG = 0;
        // SAFETY: `count` is a live local; the NULL buffer is not written.
        let out = unsafe { OutBuf::<CK_SLOT_ID>::new(ptr::null_mut(), &mut count) }.unwrap();
        assert_eq!(out.put(&slots).unwrap(), CKR_OK);
        assert_eq!(count, 3);

        let mut small = [0 as CK_SLOT_ID; 2];
        count = 2;
        // SAFETY: `small` holds `count` slots.
        let out = unsafe { OutBuf::new(small.as_mut_ptr(), &mut count) }.unwrap();
        assert_eq!(out.put(&slots).unwrap_err().ck_rv(), CKR_BUFFER_TOO_SMALL);
        assert_eq!(count, 3);
        assert_eq!(small, [0, 0], "a too-small buffer is not written");

        let mut big = [0 as CK_SLOT_ID; 5];
        count = 5;
        // SAFETY: `big` holds `count` slots.
        let out = unsafe { OutBuf::new(big.as_mut_ptr(), &mut count) }.unwrap();
        assert_eq!(out.put(&slots).unwrap(), CKR_OK);
        assert_eq!(count, 3);
        assert_eq!(&big[..3], &slots);
    }

    #[test]
    fn in_out_copies_overlapping_input() {
        let mut buf = *b"hello, world";
        let mut len = ul(buf.len());
        let p = buf.as_mut_ptr();
        // SAFETY: input and output are the same live buffer: exactly the in-place case.
        let (data, out) = unsafe { in_out(p, 5, p, &mut len) }.unwrap();
        assert!(matches!(data, InData::Copied(_)));
        let rv = out.fill_with(|b| {
            let b = b.unwrap();
            for (o, i) in b.iter_mut().zip(data.iter()) {
                *o = i.to_ascii_uppercase();
            }
            Ok(5)
        });
        assert_eq!(rv.unwrap(), CKR_OK);
        assert_eq!(&buf[..5], b"HELLO");

        let input = *b"abc";
        let mut out_buf = [0u8; 3];
        let mut len = 3;
        // SAFETY: two distinct live locals.
        let (data, _out) =
            unsafe { in_out(input.as_ptr(), 3, out_buf.as_mut_ptr(), &mut len) }.unwrap();
        assert!(matches!(data, InData::Borrowed(_)));
    }

    #[test]
    fn out_array_and_out_bytes_null_rules() {
        // SAFETY: NULL pointers with a zero capacity are never written.
        unsafe {
            assert!(out_array::<CK_OBJECT_HANDLE>(ptr::null_mut(), 0).is_ok());
            assert_eq!(
                out_array::<CK_OBJECT_HANDLE>(ptr::null_mut(), 1)
                    .err()
                    .unwrap()
                    .ck_rv(),
                CKR_ARGUMENTS_BAD
            );
            assert!(out_bytes(ptr::null_mut(), 0).unwrap().is_empty());
            assert_eq!(
                out_bytes(ptr::null_mut(), 4).unwrap_err().ck_rv(),
                CKR_ARGUMENTS_BAD
            );
        }
        let mut handles = [0 as CK_OBJECT_HANDLE; 2];
        // SAFETY: `handles` holds two handles.
        let arr = unsafe { out_array(handles.as_mut_ptr(), 2) }.unwrap();
        assert_eq!(arr.cap(), 2);
        arr.write(&[9]).unwrap();
        assert_eq!(handles, [9, 0]);
        // SAFETY: as above.
        let arr = unsafe { out_array(handles.as_mut_ptr(), 2) }.unwrap();
        assert_eq!(
            arr.write(&[1, 2, 3]).unwrap_err().ck_rv(),
            CKR_GENERAL_ERROR
        );
    }

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
            AttrValue::Value(b"label".to_vec()),
            AttrValue::Value(b"too long".to_vec()),
            AttrValue::Sensitive,
            AttrValue::Invalid,
            AttrValue::Value(b"subj".to_vec()),
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

    #[test]
    fn init_args_rules() {
        extern "C" fn create(_: *mut *mut c_void) -> CK_RV {
            CKR_OK
        }
        extern "C" fn other(_: *mut c_void) -> CK_RV {
            CKR_OK
        }
        let none = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: 0,
            pReserved: ptr::null_mut(),
        };
        let all = CK_C_INITIALIZE_ARGS {
            CreateMutex: Some(create),
            DestroyMutex: Some(other),
            LockMutex: Some(other),
            UnlockMutex: Some(other),
            ..none
        };
        let some = CK_C_INITIALIZE_ARGS {
            LockMutex: None,
            ..all
        };
        let run = |a: &CK_C_INITIALIZE_ARGS| {
            // SAFETY: `a` is a live local; its pReserved is NULL or a NUL-terminated literal.
            unsafe { init_args(a) }.map_err(|e| e.ck_rv())
        };
        // SAFETY: NULL means defaults and is not read.
        assert_eq!(unsafe { init_args(ptr::null()) }.unwrap().config, None);
        assert_eq!(run(&none).unwrap().config, None);
        assert_eq!(
            run(&CK_C_INITIALIZE_ARGS {
                flags: CKF_LIBRARY_CANT_CREATE_OS_THREADS,
                ..none
            })
            .unwrap()
            .config,
            None
        );
        assert_eq!(run(&some).unwrap_err(), CKR_ARGUMENTS_BAD);
        assert_eq!(run(&all).unwrap_err(), CKR_CANT_LOCK);
        assert!(run(&CK_C_INITIALIZE_ARGS {
            flags: CKF_OS_LOCKING_OK,
            ..all
        })
        .is_ok());

        let conf = c"hsmpool:conf=/etc/hsmpool.toml";
        let with_conf = CK_C_INITIALIZE_ARGS {
            pReserved: conf.as_ptr().cast_mut().cast(),
            ..none
        };
        assert_eq!(
            run(&with_conf).unwrap().config.as_deref(),
            Some("conf=/etc/hsmpool.toml")
        );
        let foreign = c"something else";
        assert_eq!(
            run(&CK_C_INITIALIZE_ARGS {
                pReserved: foreign.as_ptr().cast_mut().cast(),
                ..none
            })
            .unwrap_err(),
            CKR_ARGUMENTS_BAD
        );
        let short = c"hsm";
        assert_eq!(
            run(&CK_C_INITIALIZE_ARGS {
                pReserved: short.as_ptr().cast_mut().cast(),
                ..none
            })
            .unwrap_err(),
            CKR_ARGUMENTS_BAD
        );
        let empty = c"hsmpool:";
        assert_eq!(
            run(&CK_C_INITIALIZE_ARGS {
                pReserved: empty.as_ptr().cast_mut().cast(),
                ..none
            })
            .unwrap()
            .config
            .as_deref(),
            Some("")
        );
    }

    #[test]
    fn caller_strings_are_copied_by_the_kernel_never_read() {
        let ok = c"hsmpool:conf=/x";
        assert_eq!(
            copy_caller_cstr(ok.as_ptr().cast(), 64).unwrap(),
            b"hsmpool:conf=/x"
        );
        let cut = copy_caller_cstr(ok.as_ptr().cast(), 4).unwrap_err();
        assert_eq!(cut.ck_rv(), CKR_ARGUMENTS_BAD, "no NUL within the bound");
        for bad in [1usize, 8, 4095, usize::MAX, usize::MAX - 7, 1 << 63] {
            let e = copy_caller_cstr(bad as *const u8, CONFIG_MAX_LEN).unwrap_err();
            assert_eq!(e.ck_rv(), CKR_ARGUMENTS_BAD, "address {bad:#x}");
        }
    }

    #[test]
    fn the_pipe_fallback_refuses_unreadable_memory_too() {
        let (rd, wr) = pipe().expect("a pipe");
        let src = *b"abcdefgh";
        let mut buf = [0u8; 8];
        assert_eq!(
            pipe_read(&rd, &wr, src.as_ptr() as usize, &mut buf),
            Some(8)
        );
        assert_eq!(&buf, b"abcdefgh");
        assert_eq!(pipe_read(&rd, &wr, 1, &mut buf[..1]), None);
        assert_eq!(pipe_read(&rd, &wr, usize::MAX, &mut buf[..1]), None);
        // The pipe is left empty and usable after a refusal.
        assert_eq!(
            pipe_read(&rd, &wr, src.as_ptr() as usize + 4, &mut buf[..4]),
            Some(4)
        );
        assert_eq!(&buf[..4], b"efgh");
    }

    #[test]
    fn in_cstr_is_bounded() {
        let s = c"PKCS 11";
        // SAFETY: a live NUL-terminated literal, and NULL.
        unsafe {
            assert_eq!(
                in_cstr(s.as_ptr().cast(), 64).unwrap(),
                Some(&b"PKCS 11"[..])
            );
            assert_eq!(
                in_cstr(s.as_ptr().cast(), 7).unwrap_err().ck_rv(),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(in_cstr(ptr::null(), 64).unwrap(), None);
        }
    }

    #[test]
    fn pad_blank_fills_and_cuts_at_char_boundaries() {
        assert_eq!(&pad::<8>("abc"), b"abc     ");
        assert_eq!(&pad::<4>("abcdef"), b"abcd");
        // "é" is two bytes: a cut through it drops the whole character.
        assert_eq!(&pad::<4>("abcé"), b"abc ");
    }

    #[test]
    fn guard_maps_ok_error_and_panic() {
        assert_eq!(guard!("test_ok", { Ok(CKR_NO_EVENT) }), CKR_NO_EVENT);
        assert_eq!(
            guard!("test_err", { Err(Error::PinIncorrect) }),
            CKR_PIN_INCORRECT
        );
        let rv = guard!("test_panic", {
            if CKR_OK == 0 {
                panic!("deliberate panic inside the guard");
            }
            Ok(CKR_OK)
        });
        assert_eq!(rv, CKR_GENERAL_ERROR);
        let rv = guard!("test_panic_string", {
            std::panic::panic_any(String::from("owned payload"));
        });
        assert_eq!(rv, CKR_GENERAL_ERROR);
    }
}
