//! The module loaded with `dlopen`, its 3.0 function list at hand, and small helpers that keep
//! the tests short. Every call is a real call through the C ABI.
#![allow(unsafe_code, clippy::macro_metavars_in_unsafe)]

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;
use libloading::Library;

/// The loaded module.
pub struct Module {
    _lib: Library,
    /// The 3.0 function list.
    pub f: &'static CK_FUNCTION_LIST_3_0,
    /// The 2.40 function list.
    pub f2: &'static CK_FUNCTION_LIST,
}

/// Call a function of the list; panics if the slot is empty (every slot must be filled).
#[macro_export]
macro_rules! call {
    ($m:expr, $name:ident $(, $arg:expr)* $(,)?) => {{
        let f = $m.f.$name.expect(concat!(stringify!($name), " slot is filled"));
        // SAFETY: the test passes arguments that follow the PKCS #11 contract for this
        // function (or deliberately break it in a way the module must detect: NULL pointers
        // with lengths, bad handles), and every buffer outlives the call.
        unsafe { f($($arg),*) }
    }};
}

impl Module {
    /// `dlopen` the built module and fetch both function lists.
    pub fn load() -> Module {
        let path = crate::module_path();
        // SAFETY: loading our own module runs no initialiser with preconditions.
        let lib = unsafe { Library::new(&path) }
            .unwrap_or_else(|e| panic!("dlopen {}: {e}", path.display()));
        let mut iface: *mut CK_INTERFACE = ptr::null_mut();
        let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: the symbols have the PKCS #11 signatures; out pointers are valid.
        let (f, f2) = unsafe {
            let get_iface: libloading::Symbol<
                unsafe extern "C" fn(
                    *mut u8,
                    *mut CK_VERSION,
                    *mut *mut CK_INTERFACE,
                    CK_FLAGS,
                ) -> CK_RV,
            > = lib
                .get(b"C_GetInterface\0")
                .expect("C_GetInterface is exported");
            assert_eq!(
                get_iface(ptr::null_mut(), ptr::null_mut(), &mut iface, 0),
                CKR_OK
            );
            let get_list: libloading::Symbol<
                unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV,
            > = lib
                .get(b"C_GetFunctionList\0")
                .expect("C_GetFunctionList is exported");
            assert_eq!(get_list(&mut list), CKR_OK);
            (
                &*((*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0),
                &*list,
            )
        };
        Module { _lib: lib, f, f2 }
    }

    /// `C_Initialize` with OS locking and a `pReserved` config string `hsmpool:<cfg>`.
    pub fn initialize_with(&self, cfg: Option<&str>) -> CK_RV {
        let cstr =
            cfg.map(|c| std::ffi::CString::new(format!("hsmpool:{c}")).expect("no NUL in config"));
        self.initialize_reserved(
            cstr.as_ref()
                .map_or(ptr::null_mut(), |c| c.as_ptr() as *mut c_void),
        )
    }

    /// `C_Initialize` with OS locking and this `pReserved`, whatever it points at.
    pub fn initialize_reserved(&self, reserved: *mut c_void) -> CK_RV {
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: reserved,
        };
        call!(self, C_Initialize, &mut args as *mut _ as *mut c_void)
    }

    /// `C_Finalize`.
    pub fn finalize(&self) -> CK_RV {
        call!(self, C_Finalize, ptr::null_mut())
    }

    /// `C_InitToken` with a label.
    pub fn init_token(&self, so_pin: &str, label: &str) -> CK_RV {
        let mut l = [b' '; 32];
        l[..label.len()].copy_from_slice(label.as_bytes());
        call!(
            self,
            C_InitToken,
            0,
            so_pin.as_ptr() as *mut u8,
            so_pin.len() as CK_ULONG,
            l.as_mut_ptr()
        )
    }

    /// `C_OpenSession`; panics on failure.
    pub fn open(&self, rw: bool) -> CK_SESSION_HANDLE {
        let mut h = 0;
        let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
        let rv = call!(self, C_OpenSession, 0, flags, ptr::null_mut(), None, &mut h);
        assert_eq!(rv, CKR_OK, "C_OpenSession");
        h
    }

    /// `C_Login`.
    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &str) -> CK_RV {
        call!(
            self,
            C_Login,
            h,
            user,
            pin.as_ptr() as *mut u8,
            pin.len() as CK_ULONG
        )
    }

    /// Initialise a fresh token (SO PIN `so-pin-1`, user PIN `user-pin-1`) and return a logged-in
    /// R/W user session.
    pub fn fresh_user_session(&self) -> CK_SESSION_HANDLE {
        assert_eq!(self.init_token(SO_PIN, "test"), CKR_OK, "C_InitToken");
        let h = self.open(true);
        assert_eq!(self.login(h, CKU_SO, SO_PIN), CKR_OK, "SO login");
        let rv = call!(
            self,
            C_InitPIN,
            h,
            USER_PIN.as_ptr() as *mut u8,
            USER_PIN.len() as CK_ULONG
        );
        assert_eq!(rv, CKR_OK, "C_InitPIN");
        assert_eq!(call!(self, C_Logout, h), CKR_OK);
        assert_eq!(self.login(h, CKU_USER, USER_PIN), CKR_OK, "user login");
        h
    }
}

/// The SO PIN the helpers set.
pub const SO_PIN: &str = "so-pin-1";
/// The user PIN the helpers set.
pub const USER_PIN: &str = "user-pin-1";

/// A template attribute pointing at a value that outlives the call.
pub fn attr<T>(ty: CK_ATTRIBUTE_TYPE, v: &T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v as *const T as *mut c_void,
        ulValueLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

/// A template attribute over bytes.
pub fn attr_bytes(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut c_void,
        ulValueLen: v.len() as CK_ULONG,
    }
}

/// `CK_TRUE` / `CK_FALSE` values to point at.
pub static TRUE: CK_BBOOL = CK_TRUE;
/// See [`TRUE`].
pub static FALSE: CK_BBOOL = CK_FALSE;

static MODULE: std::sync::OnceLock<Module> = std::sync::OnceLock::new();
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A test's exclusive use of the process-wide module, initialised over a fresh data directory
/// (passed as the documented `pReserved` config string); finalised when dropped.
pub struct Fixture {
    /// The module.
    pub m: &'static Module,
    /// The data directory.
    pub path: std::path::PathBuf,
    /// Owns (and removes) the directory when the fixture made it.
    _dir: Option<tempfile::TempDir>,
    _daemons: Option<crate::daemons::DaemonCluster>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    /// Take the module, initialise it over a fresh token directory.
    pub fn new() -> Fixture {
        Fixture::in_dir(tempfile::tempdir().expect("a temp dir can be made"))
    }

    /// Take the module, initialise it over `dir` (reusing a token already there).
    pub fn in_dir(dir: tempfile::TempDir) -> Fixture {
        let path = dir.path().to_path_buf();
        Fixture::open(path, Some(dir))
    }

    /// Take the module, initialise it over an existing directory that the caller owns.
    pub fn at_path(path: &std::path::Path) -> Fixture {
        Fixture::open(path.to_path_buf(), None)
    }

    fn open(path: std::path::PathBuf, dir: Option<tempfile::TempDir>) -> Fixture {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = MODULE.get_or_init(Module::load);
        let mut daemons = None;
        let conf = match std::env::var("HSMPOOL_TEST_MEMBERS").as_deref() {
            // The same tests over three SoftHSMv2 tokens as vendor-module members.
            Ok("softhsm") => {
                let t =
                    crate::softhsm::SoftHsmTokens::create(&path, 3, "fixture", SO_PIN, USER_PIN);
                std::env::set_var("SOFTHSM2_CONF", &t.conf);
                let conf = path.join("hsmpool.toml");
                std::fs::write(&conf, t.members_toml()).expect("the temp dir is writable");
                conf
            }
            // The same tests over a mixed cluster: a daemon, a SoftHSMv2 token, an NSS
            // database (the daemon lives as long as the fixture).
            Ok("mixed") => {
                let mixed = crate::mixed::MixedMembers::create(
                    &path,
                    "fixture",
                    SO_PIN,
                    USER_PIN,
                    crate::fault_seed(),
                    "",
                );
                let conf = path.join("hsmpool.toml");
                std::fs::write(&conf, &mixed.toml).expect("the temp dir is writable");
                daemons = Some(mixed.daemons);
                conf
            }
            _ => crate::write_test_config(&path),
        };
        // A previous test that panicked may have left it initialised.
        let _ = m.finalize();
        let rv = m.initialize_with(Some(&format!("conf={}", conf.display())));
        assert_eq!(rv, CKR_OK, "C_Initialize");
        Fixture {
            m,
            path,
            _dir: dir,
            _daemons: daemons,
            _serial: serial,
        }
    }

    /// The config string that initialises over this fixture's directory.
    pub fn config_arg(&self) -> String {
        format!("conf={}", self.path.join("hsmpool.toml").display())
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.m.finalize();
    }
}

/// A mechanism without parameter.
pub fn mech(m: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// A mechanism whose parameter is the struct `p` (which must outlive the call).
pub fn mech_param<T>(m: CK_MECHANISM_TYPE, p: &mut T) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: p as *mut T as *mut c_void,
        ulParameterLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

/// One attribute's value, through the two-call length protocol.
pub fn attr_value(
    m: &Module,
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    ty: CK_ATTRIBUTE_TYPE,
) -> Result<Vec<u8>, CK_RV> {
    let mut a = CK_ATTRIBUTE {
        type_: ty,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    let rv = call!(m, C_GetAttributeValue, h, o, &mut a, 1);
    if rv != CKR_OK {
        return Err(rv);
    }
    let mut buf = vec![0u8; a.ulValueLen as usize];
    a.pValue = buf.as_mut_ptr() as *mut c_void;
    let rv = call!(m, C_GetAttributeValue, h, o, &mut a, 1);
    if rv != CKR_OK {
        return Err(rv);
    }
    buf.truncate(a.ulValueLen as usize);
    Ok(buf)
}

/// `C_EncryptInit` + `C_Encrypt` (or the decrypt pair) with the length query first: the output,
/// or the CK_RV of the first call that failed.
pub fn crypt(
    m: &Module,
    h: CK_SESSION_HANDLE,
    encrypt: bool,
    mm: &mut CK_MECHANISM,
    k: CK_OBJECT_HANDLE,
    data: &[u8],
) -> Result<Vec<u8>, CK_RV> {
    let rv = if encrypt {
        call!(m, C_EncryptInit, h, mm, k)
    } else {
        call!(m, C_DecryptInit, h, mm, k)
    };
    if rv != CKR_OK {
        return Err(rv);
    }
    let run = |out: *mut u8, len: &mut CK_ULONG| {
        let (d, n) = (data.as_ptr() as *mut u8, data.len() as CK_ULONG);
        if encrypt {
            call!(m, C_Encrypt, h, d, n, out, len)
        } else {
            call!(m, C_Decrypt, h, d, n, out, len)
        }
    };
    let mut len: CK_ULONG = 0;
    match run(ptr::null_mut(), &mut len) {
        CKR_OK => {}
        rv => return Err(rv),
    }
    let mut out = vec![0u8; len as usize];
    match run(out.as_mut_ptr(), &mut len) {
        CKR_OK => {
            out.truncate(len as usize);
            Ok(out)
        }
        rv => Err(rv),
    }
}

/// `C_WrapKey` with the length query first: the wrapped bytes, or the CK_RV of either call.
pub fn wrap_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mm: &mut CK_MECHANISM,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
) -> Result<Vec<u8>, CK_RV> {
    let mut len: CK_ULONG = 0;
    let rv = call!(
        m,
        C_WrapKey,
        h,
        mm,
        wrapping,
        key,
        ptr::null_mut(),
        &mut len
    );
    if rv != CKR_OK {
        return Err(rv);
    }
    let mut out = vec![0u8; len as usize];
    match call!(
        m,
        C_WrapKey,
        h,
        mm,
        wrapping,
        key,
        out.as_mut_ptr(),
        &mut len
    ) {
        CKR_OK => {
            out.truncate(len as usize);
            Ok(out)
        }
        rv => Err(rv),
    }
}

/// `C_UnwrapKey` of `wrapped` under `unwrapping` with template `t`: the new handle or the CK_RV.
pub fn unwrap_key(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mm: &mut CK_MECHANISM,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: &[u8],
    t: &mut [CK_ATTRIBUTE],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut o = 0;
    match call!(
        m,
        C_UnwrapKey,
        h,
        mm,
        unwrapping,
        wrapped.as_ptr() as *mut u8,
        wrapped.len() as CK_ULONG,
        t.as_mut_ptr(),
        t.len() as CK_ULONG,
        &mut o
    ) {
        CKR_OK => Ok(o),
        rv => Err(rv),
    }
}

/// `C_SignInit` + `C_Sign` with the length query first; panics on any error.
pub fn sign(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mm: &mut CK_MECHANISM,
    k: CK_OBJECT_HANDLE,
    data: &[u8],
) -> Vec<u8> {
    assert_eq!(call!(m, C_SignInit, h, mm, k), CKR_OK, "C_SignInit");
    let mut len: CK_ULONG = 0;
    assert_eq!(
        call!(
            m,
            C_Sign,
            h,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            ptr::null_mut(),
            &mut len
        ),
        CKR_OK,
        "C_Sign length"
    );
    let mut sig = vec![0u8; len as usize];
    assert_eq!(
        call!(
            m,
            C_Sign,
            h,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            sig.as_mut_ptr(),
            &mut len
        ),
        CKR_OK,
        "C_Sign"
    );
    sig.truncate(len as usize);
    sig
}

/// `C_VerifyInit` (must succeed) + `C_Verify`: its CK_RV.
pub fn verify(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mm: &mut CK_MECHANISM,
    k: CK_OBJECT_HANDLE,
    data: &[u8],
    sig: &[u8],
) -> CK_RV {
    assert_eq!(call!(m, C_VerifyInit, h, mm, k), CKR_OK, "C_VerifyInit");
    call!(
        m,
        C_Verify,
        h,
        data.as_ptr() as *mut u8,
        data.len() as CK_ULONG,
        sig.as_ptr() as *mut u8,
        sig.len() as CK_ULONG
    )
}

/// Every object a template finds, fetched a few at a time.
pub fn find(m: &Module, h: CK_SESSION_HANDLE, t: &mut [CK_ATTRIBUTE]) -> Vec<CK_OBJECT_HANDLE> {
    assert_eq!(
        call!(m, C_FindObjectsInit, h, t.as_mut_ptr(), t.len() as CK_ULONG),
        CKR_OK
    );
    let mut out = Vec::new();
    loop {
        let mut buf = [0 as CK_OBJECT_HANDLE; 3];
        let mut n: CK_ULONG = 0;
        assert_eq!(
            call!(m, C_FindObjects, h, buf.as_mut_ptr(), 3, &mut n),
            CKR_OK
        );
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    assert_eq!(call!(m, C_FindObjectsFinal, h), CKR_OK);
    out
}

/// `C_CreateObject`: the new handle or the CK_RV.
pub fn create(
    m: &Module,
    h: CK_SESSION_HANDLE,
    t: &mut [CK_ATTRIBUTE],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut o = 0;
    match call!(
        m,
        C_CreateObject,
        h,
        t.as_mut_ptr(),
        t.len() as CK_ULONG,
        &mut o
    ) {
        CKR_OK => Ok(o),
        rv => Err(rv),
    }
}

/// A secret key of `kt` with `value`, plus the `extra` attributes.
pub fn create_secret(
    m: &Module,
    h: CK_SESSION_HANDLE,
    kt: CK_KEY_TYPE,
    value: &[u8],
    extra: &[CK_ATTRIBUTE],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let class = CKO_SECRET_KEY;
    let mut t = vec![
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr_bytes(CKA_VALUE, value),
    ];
    t.extend_from_slice(extra);
    create(m, h, &mut t)
}

/// `C_GenerateKeyPair` with two templates: the handles, or the CK_RV.
pub fn generate_pair(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mm: &mut CK_MECHANISM,
    pub_t: &mut [CK_ATTRIBUTE],
    priv_t: &mut [CK_ATTRIBUTE],
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), CK_RV> {
    let (mut p, mut k) = (0, 0);
    let rv = call!(
        m,
        C_GenerateKeyPair,
        h,
        mm,
        pub_t.as_mut_ptr(),
        pub_t.len() as CK_ULONG,
        priv_t.as_mut_ptr(),
        priv_t.len() as CK_ULONG,
        &mut p,
        &mut k
    );
    if rv == CKR_OK {
        Ok((p, k))
    } else {
        Err(rv)
    }
}

/// The DER OID of P-256, as `CKA_EC_PARAMS`.
pub const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A token P-256 key pair for signing, both halves labelled `label`; panics on failure.
pub fn ec_token_pair(
    m: &Module,
    h: CK_SESSION_HANDLE,
    label: &[u8],
) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let mut pub_t = [
        attr(CKA_TOKEN, &TRUE),
        attr_bytes(CKA_EC_PARAMS, &P256_PARAMS),
        attr(CKA_VERIFY, &TRUE),
        attr_bytes(CKA_LABEL, label),
    ];
    let mut priv_t = [
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_SIGN, &TRUE),
        attr_bytes(CKA_LABEL, label),
    ];
    generate_pair(
        m,
        h,
        &mut mech(CKM_EC_KEY_PAIR_GEN),
        &mut pub_t,
        &mut priv_t,
    )
    .expect("P-256 token key pair generation")
}
