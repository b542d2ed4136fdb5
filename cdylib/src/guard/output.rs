//! Writing caller memory: one output value, a fixed-capacity output array, a fixed-length output
//! byte buffer, the spec's variable-length output rule (§5.2) with the in-place input that may
//! overlap its buffer, and the blank-padded strings and versions of the info structs.

use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr;

use cryptoki_sys::*;
use hsmpool_engine::{Error, Result};
use zeroize::Zeroizing;

use super::pointer::{count_of, in_bytes, len_to_ck};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::pointer::ul;

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
    fn pad_blank_fills_and_cuts_at_char_boundaries() {
        assert_eq!(&pad::<8>("abc"), b"abc     ");
        assert_eq!(&pad::<4>("abcdef"), b"abcd");
        // "é" is two bytes: a cut through it drops the whole character.
        assert_eq!(&pad::<4>("abcé"), b"abc ");
    }
}
