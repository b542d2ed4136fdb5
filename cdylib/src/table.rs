//! The function lists as plain static data, every slot filled, the interface lookup rules, and
//! the three entry points that hand them out: `C_GetFunctionList`, `C_GetInterfaceList` and
//! `C_GetInterface` (§5.4.4 to §5.4.6). Those live here, not in `entry::general`, because the
//! lists point at every entry point, themselves included: with them here the table imports the
//! entry modules and no entry module imports the table.
//!
//! Two lists point at the same functions: `CK_FUNCTION_LIST` (version 2.40, for
//! `C_GetFunctionList` and 2.x callers) and `CK_FUNCTION_LIST_3_0` (version 3.0, the default
//! interface). Both are immutable statics: the pointers we hand out must not be written through
//! (§5.4.4, §5.4.6), and nothing here ever changes at run time.

use std::ptr;

use cryptoki_sys::*;
use hsmpool_engine::Error;

use crate::entry::decrypt::*;
use crate::entry::digest::*;
use crate::entry::dual::*;
use crate::entry::encrypt::*;
use crate::entry::general::*;
use crate::entry::key::*;
use crate::entry::legacy::*;
use crate::entry::message::*;
use crate::entry::object::*;
use crate::entry::random::*;
use crate::entry::session::*;
use crate::entry::sign::*;
use crate::entry::slot::*;
use crate::entry::verify::*;
use crate::guard::{guard, in_cstr, in_opt, out_ref, OutBuf, Result};

/// The longest interface name we read; ours is far shorter, so a longer one matches nothing.
const INTERFACE_NAME_MAX_LEN: usize = 256;

/// The name of the standard interface (§5.4.5).
pub const INTERFACE_NAME: &std::ffi::CStr = c"PKCS 11";

/// The 2.40 function list.
pub static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};

/// The 3.0 function list: the 2.40 slots, then the 3.0 additions.
pub static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
    version: CK_VERSION { major: 3, minor: 0 },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
    C_GetInterfaceList: Some(C_GetInterfaceList),
    C_GetInterface: Some(C_GetInterface),
    C_LoginUser: Some(C_LoginUser),
    C_SessionCancel: Some(C_SessionCancel),
    C_MessageEncryptInit: Some(C_MessageEncryptInit),
    C_EncryptMessage: Some(C_EncryptMessage),
    C_EncryptMessageBegin: Some(C_EncryptMessageBegin),
    C_EncryptMessageNext: Some(C_EncryptMessageNext),
    C_MessageEncryptFinal: Some(C_MessageEncryptFinal),
    C_MessageDecryptInit: Some(C_MessageDecryptInit),
    C_DecryptMessage: Some(C_DecryptMessage),
    C_DecryptMessageBegin: Some(C_DecryptMessageBegin),
    C_DecryptMessageNext: Some(C_DecryptMessageNext),
    C_MessageDecryptFinal: Some(C_MessageDecryptFinal),
    C_MessageSignInit: Some(C_MessageSignInit),
    C_SignMessage: Some(C_SignMessage),
    C_SignMessageBegin: Some(C_SignMessageBegin),
    C_SignMessageNext: Some(C_SignMessageNext),
    C_MessageSignFinal: Some(C_MessageSignFinal),
    C_MessageVerifyInit: Some(C_MessageVerifyInit),
    C_VerifyMessage: Some(C_VerifyMessage),
    C_VerifyMessageBegin: Some(C_VerifyMessageBegin),
    C_VerifyMessageNext: Some(C_VerifyMessageNext),
    C_MessageVerifyFinal: Some(C_MessageVerifyFinal),
};

/// The interfaces of `C_GetInterfaceList`, default first.
struct Interfaces([CK_INTERFACE; 2]);

// SAFETY: the raw pointers inside point only at immutable statics (the interface name and the two
// function lists) that live as long as the program and are never written through, so sharing
// them between threads shares read-only data.
unsafe impl Sync for Interfaces {}

static INTERFACES: Interfaces = Interfaces([
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast::<CK_UTF8CHAR>().cast_mut(),
        pFunctionList: ptr::addr_of!(FUNCTION_LIST_3_0)
            .cast::<std::ffi::c_void>()
            .cast_mut(),
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast::<CK_UTF8CHAR>().cast_mut(),
        pFunctionList: ptr::addr_of!(FUNCTION_LIST)
            .cast::<std::ffi::c_void>()
            .cast_mut(),
        flags: 0,
    },
]);

/// The versions of [`INTERFACES`], in the same order.
const VERSIONS: [CK_VERSION; 2] = [FUNCTION_LIST_3_0.version, FUNCTION_LIST.version];

/// All interfaces, default (3.0) first (§5.4.5).
pub(crate) fn interfaces() -> &'static [CK_INTERFACE] {
    &INTERFACES.0
}

/// The 2.40 list as `C_GetFunctionList` hands it out (read-only, whatever the pointer type says).
pub(crate) fn function_list_ptr() -> *mut CK_FUNCTION_LIST {
    ptr::addr_of!(FUNCTION_LIST).cast_mut()
}

/// The interface records `C_GetInterface` hands out: writable copies of [`INTERFACES`], as a C
/// module's statics would be. The spec does not let callers write them, but OpenSC's
/// pkcs11-spy does (it points `pFunctionList` at its own table), and a read-only record
/// crashed it. Rust code never reads or writes these cells after they are built: lookups use
/// [`INTERFACES`]; only the pointer leaves.
struct InterfaceRecords(std::cell::UnsafeCell<[CK_INTERFACE; 2]>);

// SAFETY: no Rust code reads or writes through the cell (see the type's doc); the only accesses
// are the caller's, through the pointer `C_GetInterface` returns, which PKCS #11 places under
// the caller's own synchronisation.
unsafe impl Sync for InterfaceRecords {}

static RECORDS: InterfaceRecords = InterfaceRecords(std::cell::UnsafeCell::new(INTERFACES.0));

/// §5.4.6: a name, if given, must match; a version, if given, must match; every requested flag
/// must be set on the interface. The first match in [`INTERFACES`] order wins, so no name and no
/// version gives the default, 3.0. No match is `CKR_ARGUMENTS_BAD`. We offer no interface with
/// `CKF_INTERFACE_FORK_SAFE`: a forked child must call `C_Initialize` again. Returns a pointer
/// to the matching record of [`RECORDS`].
pub(crate) fn find_interface(
    name: Option<&[u8]>,
    version: Option<CK_VERSION>,
    flags: CK_FLAGS,
) -> Result<*mut CK_INTERFACE> {
    let i = INTERFACES
        .0
        .iter()
        .zip(VERSIONS)
        .position(|(interface, v)| {
            name.is_none_or(|n| n == INTERFACE_NAME.to_bytes())
                && version.is_none_or(|want| want.major == v.major && want.minor == v.minor)
                && flags & !interface.flags == 0
        })
        .ok_or(Error::ArgumentsBad(
            "no interface matches the name, version and flags",
        ))?;
    Ok(RECORDS.0.get().cast::<CK_INTERFACE>().wrapping_add(i))
}

/// §5.4.4 C_GetFunctionList: the 2.40 function list. Callable before `C_Initialize`.
///
/// # Safety
/// `pp_function_list` is NULL or points to writable memory for one pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(pp_function_list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard!("C_GetFunctionList", {
        // SAFETY: relayed from this function's contract.
        unsafe { out_ref(pp_function_list) }?.set(function_list_ptr());
        Ok(CKR_OK)
    })
}

/// §5.4.5 C_GetInterfaceList: the 3.0 then the 2.40 interface, both named "PKCS 11", under the
/// variable-length output rule (§5.2). Callable before `C_Initialize`.
///
/// # Safety
/// `pul_count` is NULL or points to a readable and writable `CK_ULONG`; a non-NULL
/// `p_interfaces_list` points to `*pul_count` writable `CK_INTERFACE`s.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(
    p_interfaces_list: *mut CK_INTERFACE,
    pul_count: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_GetInterfaceList", {
        // SAFETY: relayed from this function's contract.
        unsafe { OutBuf::new(p_interfaces_list, pul_count) }?.put(interfaces())
    })
}

/// §5.4.6 C_GetInterface: the interface matching a name, version and flags (NULL name or version
/// matches any; see `find_interface`). Callable before `C_Initialize`.
///
/// # Safety
/// `p_interface_name` is NULL or a readable NUL-terminated string; `p_version` is NULL or points
/// to a readable `CK_VERSION`; `pp_interface` is NULL or points to writable memory for a pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    p_interface_name: *mut CK_UTF8CHAR,
    p_version: *mut CK_VERSION,
    pp_interface: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    guard!("C_GetInterface", {
        // SAFETY: relayed from this function's contract.
        let out = unsafe { out_ref(pp_interface) }?;
        // SAFETY: relayed from this function's contract.
        let name = unsafe { in_cstr(p_interface_name, INTERFACE_NAME_MAX_LEN) }
            .map_err(|_| Error::ArgumentsBad("unknown interface name"))?;
        // SAFETY: relayed from this function's contract.
        let version = unsafe { in_opt(p_version.cast_const()) }?;
        out.set(find_interface(name, version, flags)?);
        Ok(CKR_OK)
    })
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    /// Every function-pointer slot of a list, read as raw words after the version field.
    fn slots<L>(list: &L, first_slot_offset: usize) -> Vec<usize> {
        let n = (size_of::<L>() - first_slot_offset) / size_of::<usize>();
        let base = ptr::from_ref(list).cast::<u8>();
        (0..n)
            // SAFETY: the list is a repr(C) struct of a version then `n` pointer-sized
            // `Option<fn>` slots; we read each slot's bytes within the struct.
            .map(|i| unsafe {
                base.add(first_slot_offset + i * size_of::<usize>())
                    .cast::<usize>()
                    .read_unaligned()
            })
            .collect()
    }

    #[test]
    fn every_slot_is_filled() {
        let s2 = slots(&FUNCTION_LIST, offset_of!(CK_FUNCTION_LIST, C_Initialize));
        assert_eq!(s2.len(), 68);
        assert!(s2.iter().all(|p| *p != 0), "a 2.40 slot is empty");
        let s3 = slots(
            &FUNCTION_LIST_3_0,
            offset_of!(CK_FUNCTION_LIST_3_0, C_Initialize),
        );
        assert_eq!(s3.len(), 92);
        assert!(s3.iter().all(|p| *p != 0), "a 3.0 slot is empty");
        assert_eq!(s2[..], s3[..68], "both lists point to the same functions");
    }

    fn list_version(i: &CK_INTERFACE) -> (u8, u8) {
        // SAFETY: every pFunctionList of ours starts with a CK_VERSION (both list types do).
        let v = unsafe { i.pFunctionList.cast::<CK_VERSION>().read() };
        (v.major, v.minor)
    }

    #[test]
    fn interface_list_rules() {
        let mut count: CK_ULONG = 0;
        // SAFETY: `count` is a live local; the NULL list is not written.
        let rv = unsafe { C_GetInterfaceList(ptr::null_mut(), &mut count) };
        assert_eq!(rv, CKR_OK);
        assert_eq!(count, 2);

        let mut one = [CK_INTERFACE {
            pInterfaceName: ptr::null_mut(),
            pFunctionList: ptr::null_mut(),
            flags: 0,
        }; 1];
        count = 1;
        // SAFETY: `one` holds `count` interfaces.
        let rv = unsafe { C_GetInterfaceList(one.as_mut_ptr(), &mut count) };
        assert_eq!(rv, CKR_BUFFER_TOO_SMALL);
        assert_eq!(count, 2);

        let mut two = [one[0]; 2];
        // SAFETY: `two` holds `count` interfaces.
        let rv = unsafe { C_GetInterfaceList(two.as_mut_ptr(), &mut count) };
        assert_eq!(rv, CKR_OK);
        assert_eq!(count, 2);
        assert_eq!(list_version(&two[0]), (3, 0), "the 3.0 list comes first");
        assert_eq!(list_version(&two[1]), (2, 40));
        for i in &two {
            // SAFETY: our interface names are NUL-terminated statics.
            let name = unsafe { std::ffi::CStr::from_ptr(i.pInterfaceName.cast()) };
            assert_eq!(name, c"PKCS 11");
            assert_eq!(i.flags, 0);
        }
        // SAFETY: the NULL count pointer is refused before anything is touched.
        let rv = unsafe { C_GetInterfaceList(two.as_mut_ptr(), ptr::null_mut()) };
        assert_eq!(rv, CKR_ARGUMENTS_BAD);
    }

    fn get(
        name: Option<&std::ffi::CStr>,
        version: Option<(u8, u8)>,
        flags: CK_FLAGS,
    ) -> std::result::Result<(u8, u8), CK_RV> {
        let mut v = version.map(|(major, minor)| CK_VERSION { major, minor });
        let p_version = v.as_mut().map_or(ptr::null_mut(), ptr::from_mut);
        let p_name = name.map_or(ptr::null_mut(), |n| {
            n.as_ptr().cast::<CK_UTF8CHAR>().cast_mut()
        });
        let mut out: *mut CK_INTERFACE = ptr::null_mut();
        // SAFETY: the name is NULL or a live C string, the version NULL or a live local, and
        // `out` a live local.
        let rv = unsafe { C_GetInterface(p_name, p_version, &mut out, flags) };
        if rv != CKR_OK {
            return Err(rv);
        }
        // SAFETY: on CKR_OK, `out` points at one of our static interfaces.
        Ok(list_version(unsafe { &*out }))
    }

    #[test]
    fn interface_lookup_rules() {
        assert_eq!(
            get(None, None, 0),
            Ok((3, 0)),
            "the default interface is 3.0"
        );
        assert_eq!(get(Some(c"PKCS 11"), None, 0), Ok((3, 0)));
        assert_eq!(get(Some(c"PKCS 11"), Some((3, 0)), 0), Ok((3, 0)));
        assert_eq!(get(Some(c"PKCS 11"), Some((2, 40)), 0), Ok((2, 40)));
        assert_eq!(get(None, Some((2, 40)), 0), Ok((2, 40)));
        assert_eq!(
            get(Some(c"PKCS 11"), Some((2, 20)), 0),
            Err(CKR_ARGUMENTS_BAD)
        );
        assert_eq!(
            get(Some(c"PKCS 11"), Some((3, 1)), 0),
            Err(CKR_ARGUMENTS_BAD)
        );
        assert_eq!(get(Some(c"Vendor Other"), None, 0), Err(CKR_ARGUMENTS_BAD));
        assert_eq!(
            get(None, None, CKF_INTERFACE_FORK_SAFE),
            Err(CKR_ARGUMENTS_BAD)
        );
        let mut v = CK_VERSION { major: 3, minor: 0 };
        // SAFETY: a NULL ppInterface is refused before anything is written.
        let rv = unsafe { C_GetInterface(ptr::null_mut(), &mut v, ptr::null_mut(), 0) };
        assert_eq!(rv, CKR_ARGUMENTS_BAD);
    }

    #[test]
    fn get_function_list_gives_the_2_40_list() {
        let mut p: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: `p` is a live local.
        assert_eq!(unsafe { C_GetFunctionList(&mut p) }, CKR_OK);
        assert_eq!(p.cast_const(), ptr::addr_of!(FUNCTION_LIST));
        // SAFETY: NULL is refused before anything is written.
        let rv = unsafe { C_GetFunctionList(ptr::null_mut()) };
        assert_eq!(rv, CKR_ARGUMENTS_BAD);
    }
}
