//! Reading caller memory: caller lengths as `usize`, input byte and element arrays, optional
//! values and bounded C strings. Every pointer here is one the caller promises readable; the
//! lowest room of the guard, used by the others and using none of them.

use std::mem::size_of;

use cryptoki_sys::*;
use hsmpool_engine::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Lengths
// ---------------------------------------------------------------------------------------------

/// A caller's element count as a `usize` that may size a `[T]`: the byte size must fit `isize`.
pub(super) fn count_of<T>(n: CK_ULONG) -> Result<usize> {
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

/// A `usize` length as a `CK_ULONG`, for the guard's tests.
#[cfg(test)]
pub(super) fn ul(n: usize) -> CK_ULONG {
    len_to_ck(n).unwrap()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

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
}
