//! The module kind: a vendor's PKCS #11 library as a member (feature `module`; SoftHSMv2 stands
//! in for the vendors in the tests). The engine's only `unsafe` is here: every call into the
//! library goes through its function list, each pointer checked before it is called, each block
//! with a `// SAFETY:` comment.
//!
//! # What it speaks
//! - **Loading**: the library is loaded once per path and process (and stays mapped), and is
//!   initialised while members use it, with `CKF_OS_LOCKING_OK` and an optional initialisation
//!   string as `pReserved` (as p11-kit's `x-init-reserved`): `C_Finalize` when the last member
//!   on it goes (the engine's own `C_Finalize`). A library another part of the process
//!   initialised already (`CKR_CRYPTOKI_ALREADY_INITIALIZED`) is used as it is and left
//!   initialised. A member with an initialisation string gets a private copy of the library
//!   (`dlmopen`, see [`load`]): inside an NSS application, softokn initialised with the
//!   application's database is the application's, and ours is another copy with ours.
//! - **The token**: the slot whose token has the configured serial number, else label (else
//!   the first slot with a token). `C_InitToken` closes every session on that slot first (the
//!   token refuses otherwise); a token found by label keeps its label through it.
//! - **Handles**: the engine names token objects by cluster-wide ids (`CKA_HSMPOOL_OBJECT_ID`),
//!   which a vendor module does not know: the attribute is taken out of every template and the
//!   id mapped to the module's own handle. An object we did not make in this process (an
//!   earlier process made it, another host, or someone directly on the HSM) gets an id from its
//!   content (`Module::content_id`), the same on every member holding a copy, so members are
//!   compared object by object after a restart with nothing of ours stored on the token.
//! - **Copies**: a module has no clone path (`Backend::replication` is `None`); token keys
//!   travel between members by wrapping under the cluster wrapping key (the engine's
//!   `cluster::wrap`), with the RFC 5649 mechanism this module offers
//!   ([`Backend::cluster_wrap_mechanism`]).
//! - **Its dialect**: attributes are read one at a time in two calls (length, then value);
//!   variable-length outputs in two calls too. A pre-hashed signature input goes to the
//!   module's raw mechanism (`CKM_RSA_PKCS` over a DigestInfo, `CKM_ECDSA` over the digest,
//!   `CKM_RSA_PKCS_PSS` with the same parameters).

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use cryptoki_sys::*;
use dashmap::DashMap;
use hsmpool_member::ck::{CkMechanism, CkTemplate};
use hsmpool_member::mechanism::{hash_of_hash_and_sign, Family, MechRow, ParamKind, MECHANISMS};
use hsmpool_member::types::{Attr, IdHash, MechParam, Mechanism, SignInput, CKA_HSMPOOL_OBJECT_ID};
use hsmpool_member::{
    AttrAnswer, Backend, KeyMeta, MemberError, MemberId, MemberObject, MemberResult, MemberSession,
    Role, TokenStatus,
};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use zeroize::Zeroizing;

/// How to reach one vendor module's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleConfig {
    /// The vendor's PKCS #11 library.
    pub path: PathBuf,
    /// The label of the token to use (blank padding ignored); `None`: the first token.
    pub token_label: Option<String>,
    /// The serial number of the token to use (blank padding ignored); wins over the label.
    pub token_serial: Option<String>,
    /// A string passed as `pReserved` of `C_Initialize` (NSS softokn's parameters, ...).
    pub init_reserved: Option<String>,
    /// Where the token's own user PIN is (`file:PATH`, `env:NAME`), used instead of the
    /// application's.
    pub pin_from: Option<String>,
    /// Where the token's own SO PIN is, likewise.
    pub so_pin_from: Option<String>,
}

/// A loaded library: its code stays mapped for the rest of the process once loaded (unloading
/// a PKCS #11 module is a known source of crashes at exit), and is initialised while members
/// use it.
struct Loaded {
    /// Keeps the code the function list points into mapped.
    _lib: libloading::Library,
    fl: *const CK_FUNCTION_LIST,
    /// For a private copy (its own link namespace), the thread that makes every call into it
    /// (see [`CopyThread`]); `None` for the process's copy, called from the caller's thread.
    thread: Option<Arc<CopyThread>>,
}

/// The thread that makes every call into a private copy of a library, for the life of the
/// process.
///
/// A private copy has its own C library, which knows nothing of the threads the process's own
/// made, so only the thread that loaded the copy has its per-thread state set up (the
/// character-class tables `isspace` reads: NSS softokn parsing its initialisation string on
/// another thread crashes). And the copy's thread-specific data keys are numbered apart from
/// the process's own but stored in the same per-thread slots: NSS softokn's NSPR and the
/// application's NSPR (in an NSS application) each take key 0 and, on a thread that calls
/// both, read each other's data (the application's `PR_Cleanup` frees what the copy
/// allocated, and the process aborts). So one thread of ours loads the copy and makes every
/// call into it, nothing else calls from that thread, and it never ends (a thread's end runs
/// the process's key destructors over the copy's data). Calls into a private copy take turns.
struct CopyThread {
    jobs: crossbeam::channel::Sender<Job>,
    /// The process whose thread it is: in a forked child the thread is gone (see
    /// [`before_fork`]), and the copy is stale.
    pid: u32,
    /// Held while a call runs in the copy; [`before_fork`] holds it across `fork()`, so the
    /// copy is never copied into a child in the middle of a call (its locks held for ever).
    busy: Arc<Mutex<()>>,
    /// The copy's `dlmopen` handle, once loaded (for [`CopyThread::close_at_exit`]).
    handle: std::sync::OnceLock<usize>,
    /// Closed at exit already.
    closed: AtomicBool,
}

/// A call for a private copy's thread to make.
type Job = Box<dyn FnOnce() + Send + 'static>;

impl CopyThread {
    fn start(path: &Path) -> Result<Arc<CopyThread>, String> {
        let (jobs, queue) = crossbeam::channel::unbounded::<Job>();
        let busy = Arc::new(Mutex::new(()));
        let held = Arc::clone(&busy);
        std::thread::Builder::new()
            .name("hsmpool-module".into())
            .spawn(move || {
                for job in queue {
                    let _busy = held.lock();
                    job();
                }
            })
            .map_err(|e| format!("a thread for the private copy of {}: {e}", path.display()))?;
        Ok(Arc::new(CopyThread {
            jobs,
            pid: std::process::id(),
            busy,
            handle: std::sync::OnceLock::new(),
            closed: AtomicBool::new(false),
        }))
    }

    /// At the process's exit (no call goes in any more): `C_Finalize` and unload the copy, on
    /// its thread, waiting at most `wait`. Left loaded, the copy's own destructors would run
    /// after ours on the exiting thread and read that thread's data as theirs (NSPR's frees
    /// what the application's OpenSSL keeps in the same slot: the process aborts); run on the
    /// copy's thread, they find their own.
    fn close_at_exit(&self, fl: *const CK_FUNCTION_LIST, wait: std::time::Duration) {
        let Some(&handle) = self.handle.get() else {
            return;
        };
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let fl = fl as usize;
        let (done, finished) = crossbeam::channel::bounded::<()>(1);
        let job: Job = Box::new(move || {
            // SAFETY: `fl` is the copy's function list (non-NULL from C_GetFunctionList) and
            // the copy is still loaded; C_Finalize takes NULL; no other call is in flight or
            // will start (the process is exiting: `EXITING`; a stale copy is never called).
            let finalize = unsafe { (*(fl as *const CK_FUNCTION_LIST)).C_Finalize };
            if let Some(finalize) = finalize {
                // SAFETY: as above.
                let _ = unsafe { finalize(std::ptr::null_mut()) };
            }
            // SAFETY: `handle` came from dlmopen and is closed once (`closed`); nothing calls
            // into the copy after this, and its code is not running.
            unsafe { libc::dlclose(handle as *mut c_void) };
            let _ = done.send(());
        });
        let sent = if self.stale() {
            // A forked child's copy of its parent's copy, idle since the fork (`before_fork`),
            // with no thread: closed from a new thread, whose per-thread data the copy's
            // destructors find empty. Finalised too: softokn knows it is in a child and lets
            // go of what its parent had without touching it (it must, or what it loaded keeps
            // the copy's NSPR from unloading).
            std::thread::Builder::new().spawn(job).is_ok()
        } else {
            self.jobs.send(job).is_ok()
        };
        if sent && finished.recv_timeout(wait).is_err() {
            tracing::warn!("a private copy of a vendor module did not finish closing at exit");
        }
    }

    /// `f()` on the copy's thread; the caller waits for it (so what `f` borrows outlives
    /// the call). A panic in `f` resumes in the caller.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let (done, result) = crossbeam::channel::bounded(1);
        let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = done.send(r);
        });
        // SAFETY: only the lifetime is changed: this function does not return before the job
        // has run to its end (it waits for the job's answer, which the job sends last, or for
        // the job to be dropped unrun, which drops `done`), so nothing the job borrows is gone
        // while it runs.
        let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
        if self.jobs.send(job).is_err() {
            unreachable!("the private copy's thread never ends");
        }
        match result.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => unreachable!("a job is run or dropped only after it is sent"),
        }
    }
}

impl CopyThread {
    /// The thread is its parent's, gone in this forked child.
    fn stale(&self) -> bool {
        self.pid != std::process::id()
    }
}

/// Private copies' threads held idle across a `fork()` (see [`before_fork`]).
static FORKING: Mutex<Vec<Arc<CopyThread>>> = Mutex::new(Vec::new());

/// Before `fork()` (the C ABI registers it with `pthread_atfork`): wait until no call runs in
/// any private copy, and keep it so until the fork is done. A copy's locks are then free in the
/// child, which may unload it (at its exit) without waiting for a call that is not there.
pub fn before_fork() {
    let threads: Vec<Arc<CopyThread>> = match LIBRARIES.try_lock_for(FORK_WAIT) {
        Some(libs) => libs
            .values()
            .filter_map(|(l, _)| l.thread.clone())
            .filter(|t| !t.stale())
            .collect(),
        // A load under way: its copy is not in use yet.
        None => Vec::new(),
    };
    let mut held = FORKING.lock();
    for t in threads {
        // A call that does not end within FORK_WAIT (a hung vendor) is left to run: the
        // child must not use or unload that copy (it does not: it is stale there).
        let locked = t
            .busy
            .try_lock_for(FORK_WAIT)
            .map(std::mem::forget)
            .is_some();
        if locked {
            held.push(t);
        }
    }
}

/// In the parent after `fork()`: the private copies go on.
pub fn after_fork_in_parent() {
    for t in FORKING.lock().drain(..) {
        // SAFETY: the lock is held, by `before_fork` on this thread, whose guard was forgotten.
        unsafe { t.busy.force_unlock() };
    }
}

/// In the child after `fork()`: the parent's private copies are stale here; they stay idle,
/// and new ones are loaded if the child initialises again.
pub fn after_fork_in_child() {
    if let Some(mut held) = FORKING.try_lock() {
        // Their threads are gone: the locks stay held, the copies are never called here.
        std::mem::forget(std::mem::take(&mut *held));
    }
}

/// How long `before_fork` waits for a call in a private copy to end.
const FORK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Loaded {
    /// `f()` where calls into this copy are made: here, or on a private copy's thread.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.thread {
            Some(w) => w.run(f),
            None => f(),
        }
    }
}

/// Makes a closure that calls into a vendor library `Send`, so a private copy's thread can
/// make the call: what it holds are pointers to the caller's values, and the caller waits.
struct Sendable<F>(F);
// SAFETY: the closure is run once, by `CopyThread::run`, while the thread that made it waits for
// it; the pointers it holds address that thread's live values, which no one else touches
// meanwhile, and PKCS #11 libraries initialised with CKF_OS_LOCKING_OK may be called from any
// thread.
unsafe impl<F> Send for Sendable<F> {}

impl<F: FnOnce() -> R, R> Sendable<F> {
    fn call(self) -> R {
        (self.0)()
    }
}

// SAFETY: the function list is the library's static table of function pointers, never written
// after C_GetFunctionList; calls through it happen only while the library is initialised with
// CKF_OS_LOCKING_OK, which obliges it to be safe to call from many threads at once.
unsafe impl Send for Loaded {}
// SAFETY: as for Send.
unsafe impl Sync for Loaded {}

/// An initialised library, shared by the members on its tokens; `C_Finalize` when the last
/// one goes (if we were the ones who initialised it).
struct Library {
    loaded: Arc<Loaded>,
    /// The `pReserved` string, kept while initialised.
    _init: Option<CString>,
    /// We called `C_Initialize` (not someone else in the process before us).
    ours: bool,
}

impl Library {
    fn functions(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: `fl` came non-NULL from C_GetFunctionList and addresses the library's static
        // function list, which lives as long as the library stays loaded (`Loaded::_lib`).
        unsafe { &*self.loaded.fl }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // Not ours to finalise; or the process is exiting (our C_Finalize called from a host's
        // own exit handlers, as the OpenSSL provider's teardown does): then the vendor's own
        // destructors do the work, and SoftHSMv2's C_Finalize at that point crashes the process
        // (the provider's tests set its `no-deinit` quirk for it).
        let stale = self.loaded.thread.as_ref().is_some_and(|t| t.stale());
        if !self.ours || EXITING.load(Ordering::SeqCst) || stale {
            return;
        }
        if let Some(finalize) = self.functions().C_Finalize {
            // SAFETY: the library was initialised by us and no member uses it any more (this is
            // the last reference); NULL is the only argument C_Finalize takes.
            let call = Sendable(|| unsafe { finalize(std::ptr::null_mut()) });
            let rv = self.loaded.run(|| call.call());
            if rv != CKR_OK {
                tracing::debug!("vendor module C_Finalize: {rv:#x}");
            }
        }
    }
}

/// One library copy: loaded, and initialised while a member holds the `Library`.
type Slot = (Arc<Loaded>, std::sync::Weak<Library>);

/// Libraries by path and initialisation string: loaded once per process (a private copy once
/// per path and string), initialised while some member uses them.
static LIBRARIES: Lazy<Mutex<HashMap<LibraryKey, Slot>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// A forked child's stale private copies (see [`load`]), kept to be unloaded at exit.
static STALE: Mutex<Vec<Arc<Loaded>>> = Mutex::new(Vec::new());

/// A library's path and initialisation string.
type LibraryKey = (PathBuf, Option<String>);

/// The library at `path`, initialised (with `init` as `pReserved`) for the members on it.
///
/// A library is a process-wide object, and an initialisation string configures all of it (NSS
/// softokn's database): a member with one gets a private copy of the library (its own link
/// namespace, `dlmopen`), which neither the application (an NSS application has initialised
/// softokn with its own database before it loads us, or does so after) nor another member with
/// another string shares. Members with the same path and string share one copy. A member
/// without a string uses the process's copy, as the application does, and shares it if the
/// application initialised it first. Where `dlmopen` is missing (not glibc), a member with a
/// string whose library is initialised already is refused.
fn load(path: &Path, init: Option<&str>) -> MemberResult<Arc<Library>> {
    let mut libs = LIBRARIES.lock();
    let key = (path.to_path_buf(), init.map(str::to_owned));
    // A forked child's copies of its parent's private copies are stale (no thread): set
    // aside, never used or dropped (dropping would unload them here, see `close_at_exit`).
    let stale: Vec<LibraryKey> = libs
        .iter()
        .filter(|(_, (l, _))| l.thread.as_ref().is_some_and(|t| t.stale()))
        .map(|(k, _)| k.clone())
        .collect();
    for k in stale {
        if let Some(slot) = libs.remove(&k) {
            STALE.lock().push(slot.0);
            std::mem::forget(slot.1);
        }
    }
    if let Some(l) = libs.get(&key).and_then(|(_, w)| w.upgrade()) {
        return Ok(l);
    }
    let config = |m: String| MemberError::Config(format!("module {}: {m}", path.display()));
    if EXITING.load(Ordering::SeqCst) {
        return Err(config("the process is exiting".into()));
    }
    let private = init.is_some() && PRIVATE_COPIES;
    // A private copy no member uses now (finalised) serves another string as well: a process
    // has room for only a few copies (see `dlmopen`).
    let idle = || {
        libs.iter()
            .find(|((p, _), (l, w))| p == path && l.thread.is_some() && w.strong_count() == 0)
            .map(|(k, _)| k.clone())
    };
    let loaded = match libs.get(&key) {
        Some((loaded, _)) => Arc::clone(loaded),
        None => match idle().filter(|_| private).and_then(|k| libs.remove(&k)) {
            Some((loaded, _)) => loaded,
            None => Arc::new(open(path, private).map_err(config)?),
        },
    };
    let init = init
        .map(CString::new)
        .transpose()
        .map_err(|_| config("init_reserved holds a NUL byte".into()))?;
    let mut library = Library {
        loaded: Arc::clone(&loaded),
        _init: init,
        ours: false,
    };
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: library._init.as_ref().map_or(std::ptr::null_mut(), |c| {
            c.as_ptr().cast_mut().cast::<c_void>()
        }),
    };
    let initialize = library
        .functions()
        .C_Initialize
        .ok_or_else(|| config("no C_Initialize".into()))?;
    // SAFETY: `args` is a valid CK_C_INITIALIZE_ARGS for the call; its pReserved string lives
    // in `library` for as long as the library is initialised.
    let call = Sendable(|| unsafe { initialize(std::ptr::from_mut(&mut args).cast::<c_void>()) });
    let rv = loaded.run(|| call.call());
    match rv {
        CKR_OK => library.ours = true,
        // Another part of the process initialised it with its own configuration (NSS's own
        // tools and browsers load softokn themselves) and this copy is theirs (no private
        // copies here): ours cannot apply, and the tokens it shows are that application's
        // (its own key database), never to be made a member.
        CKR_CRYPTOKI_ALREADY_INITIALIZED if library._init.is_some() => {
            libs.insert(key, (loaded, std::sync::Weak::new()));
            return Err(config(
                "already initialised by another part of this process (an NSS application \
                 loads softokn itself), so its init_reserved cannot apply, and this system \
                 cannot load a private copy (no dlmopen): this member cannot be used in this \
                 process"
                    .into(),
            ));
        }
        CKR_CRYPTOKI_ALREADY_INITIALIZED => {}
        rv => {
            libs.insert(key, (loaded, std::sync::Weak::new()));
            return Err(config(format!("C_Initialize failed ({rv:#x})")));
        }
    }
    if loaded.thread.is_some() {
        tracing::info!(
            "PKCS #11 module {}: a private copy, initialised with the member's init_reserved",
            path.display()
        );
    }
    let library = Arc::new(library);
    libs.insert(key, (loaded, Arc::downgrade(&library)));
    Ok(library)
}

/// Whether this system can load a private copy of a library (`dlmopen`, glibc).
const PRIVATE_COPIES: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Load the library at `path` (a private copy if `private`, loaded and called on a thread of
/// its own) and take its function list.
fn open(path: &Path, private: bool) -> Result<Loaded, String> {
    let thread = if private {
        Some(CopyThread::start(path)?)
    } else {
        None
    };
    let get_list = || -> Result<(libloading::Library, usize), String> {
        let lib = if private {
            let h = dlmopen(path)?;
            // The copy's handle, to close it at exit (its `Library` never closes it: it is
            // kept for the life of the process, in `LIBRARIES`).
            if let Some(t) = &thread {
                let _ = t.handle.set(h as usize);
            }
            // SAFETY: `h` came non-NULL from dlmopen, which libloading's Library may dlclose.
            unsafe { libloading::os::unix::Library::from_raw(h) }.into()
        } else {
            // SAFETY: loading runs the library's initialisers; the path is the operator's
            // configured PKCS #11 module, which is trusted to be one.
            unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?
        };
        // SAFETY: C_GetFunctionList has this signature in every PKCS #11 module (5.2).
        let get: libloading::Symbol<'_, unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            unsafe { lib.get(b"C_GetFunctionList\0") }.map_err(|e| e.to_string())?;
        let mut fl: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `fl` is a valid place for the pointer the function writes.
        let rv = unsafe { get(&mut fl) };
        if rv != CKR_OK || fl.is_null() {
            return Err(format!("C_GetFunctionList failed ({rv:#x})"));
        }
        // The list's address, to leave this thread (a private copy's) as a number.
        Ok((lib, fl as usize))
    };
    let (lib, fl) = match &thread {
        Some(t) => t.run(get_list)?,
        None => get_list()?,
    };
    // SAFETY: `at_exit` is an `extern "C" fn()` that lives for the whole process (it is in this
    // library, which is never unloaded while the process runs its exit).
    if unsafe { libc::atexit(at_exit) } != 0 {
        tracing::warn!("atexit failed: vendor modules may be called during exit");
    }
    Ok(Loaded {
        _lib: lib,
        fl: fl as *const CK_FUNCTION_LIST,
        thread,
    })
}

/// A private copy of the library at `path` and of what it links (its own C library too), in a
/// new link namespace.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn dlmopen(path: &Path) -> Result<*mut c_void, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| "a NUL in the path")?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; loading runs the library's
    // initialisers, and the path is the operator's configured PKCS #11 module.
    let h = unsafe {
        libc::dlmopen(
            libc::LM_ID_NEWLM,
            c.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        )
    };
    if h.is_null() {
        // SAFETY: dlerror returns NULL or a NUL-terminated message valid until the next dl*
        // call on this thread; it is copied at once.
        let why = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_owned()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(format!(
            "a private copy could not be loaded (dlmopen: {why}; glibc keeps room for a few \
             such copies in a process: GLIBC_TUNABLES=glibc.rtld.optional_static_tls raises it)"
        ));
    }
    Ok(h)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn dlmopen(_path: &Path) -> Result<*mut c_void, String> {
    Err("no private copies on this system".into())
}

/// A vendor module's token, as a member.
pub struct Module {
    id: MemberId,
    lib: Arc<Library>,
    slot: CK_SLOT_ID,
    describe: String,
    /// Cluster-wide id → the module's handle, and back.
    handles: DashMap<u64, CK_OBJECT_HANDLE, IdHash>,
    ids: DashMap<CK_OBJECT_HANDLE, u64, IdHash>,
    /// The mechanisms the token offers (`C_GetMechanismList`).
    offered: std::collections::HashSet<CK_MECHANISM_TYPE>,
    /// The table's rows narrowed to what the token can do through us.
    rows: Vec<MechRow>,
    /// The token's own label, kept through `C_InitToken` when the token is chosen by label (so
    /// it is found again).
    keep_label: Option<[u8; 32]>,
    /// Vendor sessions for operations, each used by one thread at a time (see [`OpSession`]).
    op_sessions: Mutex<Vec<CK_SESSION_HANDLE>>,
    /// The user's PIN while logged in, for the context-specific login a key with
    /// `CKA_ALWAYS_AUTHENTICATE` asks after each `C_SignInit` (the engine has checked the
    /// application's own context-specific login before it calls `sign`).
    user_pin: Mutex<Option<Zeroizing<Vec<u8>>>>,
    /// The token's own user PIN and SO PIN (`pin_from`, `so_pin_from`), given to it in place
    /// of the application's.
    own_user_pin: Option<Zeroizing<Vec<u8>>>,
    own_so_pin: Option<Zeroizing<Vec<u8>>>,
    /// Whether a key has `CKA_ALWAYS_AUTHENTICATE`, by handle (read once).
    always_auth: DashMap<CK_OBJECT_HANDLE, bool, IdHash>,
    /// Creates of objects alike (label, id) wait for each other (see `without_orphans`).
    create_locks: [Mutex<()>; CREATE_STRIPES],
    /// The module is NSS softokn (see [`NSS_DB`] and `Module::strip`).
    nss: bool,
    /// One call at a time on each of the engine's pool sessions (striped by handle): a pool
    /// session is shared by the engine's threads, and a vendor may refuse a second call on a
    /// session while one runs (NSS softokn: CKR_OPERATION_ACTIVE for concurrent key
    /// generation) or break under it.
    session_locks: [Mutex<()>; CREATE_STRIPES],
}

/// NSS softokn's `CKA_NSS_DB` (`CKA_NETSCAPE_DB`): the public value it keeps with a private
/// key, without which it refuses to unwrap an EC private key (`CKR_TEMPLATE_INCOMPLETE`).
const NSS_DB: CK_ATTRIBUTE_TYPE = 0xD5A0_DB00;

/// Stripes of [`Module::create_locks`].
const CREATE_STRIPES: usize = 16;

/// What picks out objects like a template's: its class (or `class`), label, id, key type and
/// token flag.
fn probe_of(template: &[Attr], class: Option<CK_OBJECT_CLASS>) -> Vec<Attr> {
    let mut p: Vec<Attr> = template
        .iter()
        .filter(|a| {
            matches!(
                a.ty,
                CKA_CLASS | CKA_LABEL | CKA_ID | CKA_KEY_TYPE | CKA_TOKEN
            )
        })
        .cloned()
        .collect();
    if let Some(c) = class {
        if !p.iter().any(|a| a.ty == CKA_CLASS) {
            p.push(Attr::ulong(CKA_CLASS, c));
        }
    }
    p
}

/// Set when the process begins to exit: vendor modules are called no more.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Calls into vendor modules now running.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Run at `exit`, before the destructors of every vendor module loaded until then (atexit
/// handlers run in reverse order of registration, and this one is registered after each
/// load): no new call goes in, and the calls in flight get a second to come out. Without it a
/// thread of ours (a health probe, an application thread the JVM has not stopped) can be
/// inside SoftHSMv2 while its static objects are destroyed, which crashes the process.
extern "C" fn at_exit() {
    EXITING.store(true, Ordering::SeqCst);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Private copies are closed now, on their own threads (see `CopyThread::close_at_exit`).
    // A load under way at exit holds the lock: its copy is left as it is.
    let lock_wait = std::time::Duration::from_millis(100);
    let (libs, stale) = (
        LIBRARIES.try_lock_for(lock_wait),
        STALE.try_lock_for(lock_wait),
    );
    let copies = libs
        .iter()
        .flat_map(|l| l.values().map(|(loaded, _)| loaded))
        .chain(stale.iter().flat_map(|s| s.iter()));
    for loaded in copies {
        if let Some(t) = &loaded.thread {
            t.close_at_exit(loaded.fl, std::time::Duration::from_secs(1));
        }
    }
}

/// Counts one call into a vendor module while it runs.
struct InFlight;

impl InFlight {
    /// `None` once the process is exiting.
    fn enter() -> Option<InFlight> {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        if EXITING.load(Ordering::SeqCst) {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(InFlight)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Calls one function of the library's list: `Err(CKR_FUNCTION_NOT_SUPPORTED)` for a NULL entry,
/// `Err(CKR_DEVICE_REMOVED)` once the process is exiting.
macro_rules! call {
    ($self:ident, $f:ident ( $($arg:expr),* $(,)? )) => {{
        // Exiting first: a private copy is unloaded at exit, and its function list with it.
        match InFlight::enter() {
            None => Err($self.rv(CKR_DEVICE_REMOVED)),
            Some(_inside) => match $self.lib.functions().$f {
                None => Err($self.rv(CKR_FUNCTION_NOT_SUPPORTED)),
                Some(f) => {
                    // SAFETY: every pointer argument addresses a live value of the type and
                    // length the function's PKCS #11 signature says (built just above each
                    // call), and the library was initialised for use from any thread.
                    let call = Sendable(|| unsafe { f($($arg),*) });
                    let rv = $self.lib.loaded.run(|| call.call());
                    $self.ok(rv)
                }
            },
        }
    }};
}

/// A vendor session held by one thread for one operation. The engine shares its pool sessions
/// between threads, which the simulator takes (each call is whole), but a vendor module keeps
/// an operation's state in the session (`C_SignInit` then `C_Sign`, a find's cursor, the
/// length query and the call of a two-call output) and may crash when two threads use one
/// session at once (SoftHSMv2 does). So every operation runs in a session of its own, taken
/// from a free list and given back after; login is the application's on a vendor module, so
/// such a session is logged in as soon as any is. A session that failed as a session (closed,
/// invalid, the device gone) is closed, not given back.
struct OpSession<'a> {
    m: &'a Module,
    h: CK_SESSION_HANDLE,
    keep: bool,
}

impl OpSession<'_> {
    /// `r`, noting whether the session is still good after it.
    fn check<T>(&mut self, r: MemberResult<T>) -> MemberResult<T> {
        // After any failure the session may hold half an operation (a vendor that answers an
        // error without ending the operation the spec says it ends, or a session the device
        // lost): it is closed rather than given to the next operation, which would meet
        // CKR_OPERATION_ACTIVE. Sessions are cheap to open again.
        if r.is_err() {
            self.keep = false;
        }
        r
    }
}

impl Drop for OpSession<'_> {
    fn drop(&mut self) {
        if self.keep {
            self.m.op_sessions.lock().push(self.h);
        } else {
            let m = self.m;
            let _ = call!(m, C_CloseSession(self.h));
        }
    }
}

impl Module {
    /// Hold pool session `s` for one vendor call (see `Module::session_locks`).
    fn on(&self, s: MemberSession) -> parking_lot::MutexGuard<'_, ()> {
        self.session_locks[(s.0 as usize) % CREATE_STRIPES].lock()
    }

    /// The PIN to give the token for `role`: its own (`pin_from`, `so_pin_from`), else the
    /// application's.
    fn pin_for<'a>(&'a self, role: Role, given: &'a [u8]) -> &'a [u8] {
        let own = match role {
            Role::User => &self.own_user_pin,
            Role::Officer => &self.own_so_pin,
        };
        own.as_deref().map_or(given, |p| p.as_slice())
    }

    /// Load (once) and initialise (once) the library, and find the token.
    pub fn open(id: MemberId, cfg: &ModuleConfig) -> MemberResult<Module> {
        let own = |spec: &Option<String>, key: &str| {
            spec.as_deref()
                .map(crate::config::read_pin)
                .transpose()
                .map_err(|why| MemberError::Config(format!("member {}: {key}: {why}", id.0)))
        };
        let (own_user_pin, own_so_pin) = (
            own(&cfg.pin_from, "pin_from")?,
            own(&cfg.so_pin_from, "so_pin_from")?,
        );
        let lib = load(&cfg.path, cfg.init_reserved.as_deref())?;
        let mut m = Module {
            id,
            lib,
            slot: 0,
            describe: String::new(),
            handles: DashMap::with_hasher(IdHash),
            ids: DashMap::with_hasher(IdHash),
            offered: Default::default(),
            rows: Vec::new(),
            keep_label: None,
            op_sessions: Mutex::new(Vec::new()),
            user_pin: Mutex::new(None),
            own_user_pin,
            own_so_pin,
            always_auth: DashMap::with_hasher(IdHash),
            create_locks: std::array::from_fn(|_| Mutex::new(())),
            nss: false,
            session_locks: std::array::from_fn(|_| Mutex::new(())),
        };
        // SAFETY: CK_INFO is plain data: all zeroes is a value.
        let mut info: CK_INFO = unsafe { std::mem::zeroed() };
        call!(m, C_GetInfo(&mut info))?;
        m.nss = info.manufacturerID.starts_with(b"Mozilla Foundation");
        let mut n: CK_ULONG = 0;
        call!(m, C_GetSlotList(CK_TRUE, std::ptr::null_mut(), &mut n))?;
        let mut slots = vec![0 as CK_SLOT_ID; n as usize];
        call!(m, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n))?;
        slots.truncate(n as usize);
        let (want_label, want_serial) = (
            cfg.token_label.as_deref().map(str::trim_end),
            cfg.token_serial.as_deref().map(str::trim_end),
        );
        let mut found = None;
        for s in slots {
            let info = m.token_info(s)?;
            let label = String::from_utf8_lossy(&info.label).trim_end().to_owned();
            let serial = String::from_utf8_lossy(&info.serialNumber)
                .trim_end()
                .to_owned();
            let hit = match (want_serial, want_label) {
                (Some(w), _) => w == serial,
                (None, Some(w)) => w == label,
                (None, None) => true,
            };
            if hit {
                found = Some((s, label));
                break;
            }
        }
        let (slot, label) = found.ok_or_else(|| {
            MemberError::Config(format!(
                "module {}: no token {}",
                cfg.path.display(),
                match (want_serial, want_label) {
                    (Some(w), _) => format!("with serial number {w:?}"),
                    (None, Some(w)) => format!("labelled {w:?}"),
                    (None, None) => "at all".into(),
                }
            ))
        })?;
        m.keep_label = (want_serial.is_none() && want_label.is_some()).then(|| {
            let mut l = [b' '; 32];
            let n = label.len().min(32);
            l[..n].copy_from_slice(&label.as_bytes()[..n]);
            l
        });
        m.slot = slot;
        let mut n: CK_ULONG = 0;
        call!(m, C_GetMechanismList(slot, std::ptr::null_mut(), &mut n))?;
        let mut mechs = vec![0 as CK_MECHANISM_TYPE; n as usize];
        call!(m, C_GetMechanismList(slot, mechs.as_mut_ptr(), &mut n))?;
        mechs.truncate(n as usize);
        m.offered = mechs.iter().copied().collect();
        let mut infos = HashMap::new();
        for mech in mechs {
            // SAFETY: CK_MECHANISM_INFO is plain data: all zeroes is a value.
            let mut info: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
            if call!(m, C_GetMechanismInfo(slot, mech, &mut info)).is_ok() {
                infos.insert(mech, info);
            }
        }
        m.rows = Module::rows(&infos);
        m.describe = format!(
            "PKCS #11 module {} slot {slot} token {label:?}",
            cfg.path.display()
        );
        Ok(m)
    }

    /// An operation begun with `key` in a session of its own: `init` is the module's
    /// `C_*Init` called with that session, the mechanism and the key's handle.
    fn begin(
        &self,
        mech: &Mechanism,
        key: MemberObject,
        init: impl FnOnce(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> MemberResult<()>,
    ) -> MemberResult<(OpSession<'_>, CK_OBJECT_HANDLE)> {
        let m = CkMechanism::new(mech).map_err(|rv| self.rv(rv))?;
        let kh = self.handle(key)?;
        let mut op = self.op_session()?;
        let sh = op.h;
        op.check(init(sh, std::ptr::from_ref(m.as_raw()).cast_mut(), kh))?;
        Ok((op, kh))
    }

    /// Whether key `h` asks for a context-specific login before each signature.
    fn always_authenticate(&self, h: CK_OBJECT_HANDLE) -> MemberResult<bool> {
        if let Some(v) = self.always_auth.get(&h) {
            return Ok(*v);
        }
        let v = self.flag(h, CKA_ALWAYS_AUTHENTICATE)?;
        self.always_auth.insert(h, v);
        Ok(v)
    }

    /// A session for one operation (see [`OpSession`]).
    fn op_session(&self) -> MemberResult<OpSession<'_>> {
        if let Some(h) = self.op_sessions.lock().pop() {
            return Ok(OpSession {
                m: self,
                h,
                keep: true,
            });
        }
        Ok(OpSession {
            m: self,
            h: self.open_vendor_session()?,
            keep: true,
        })
    }

    /// A new R/W session on the token.
    fn open_vendor_session(&self) -> MemberResult<CK_SESSION_HANDLE> {
        let mut h: CK_SESSION_HANDLE = 0;
        call!(
            self,
            C_OpenSession(
                self.slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                std::ptr::null_mut(),
                None,
                &mut h
            )
        )?;
        Ok(h)
    }

    fn rv(&self, rv: CK_RV) -> MemberError {
        MemberError::Rv {
            member: self.id,
            rv,
        }
    }

    fn ok(&self, rv: CK_RV) -> MemberResult<()> {
        if rv == CKR_OK {
            Ok(())
        } else {
            Err(self.rv(rv))
        }
    }

    fn token_info(&self, slot: CK_SLOT_ID) -> MemberResult<CK_TOKEN_INFO> {
        // SAFETY: CK_TOKEN_INFO is plain data (integers and byte arrays): all zeroes is a value.
        let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        call!(self, C_GetTokenInfo(slot, &mut info))?;
        Ok(info)
    }

    /// The module's handle of a member object.
    fn handle(&self, o: MemberObject) -> MemberResult<CK_OBJECT_HANDLE> {
        self.handles
            .get(&o.0)
            .map(|h| *h)
            .ok_or_else(|| self.rv(CKR_OBJECT_HANDLE_INVALID))
    }

    /// The member object of a module handle: `id` when we chose one, else the one it already
    /// has, else the id its content gives it (see [`Module::content_id`]).
    fn adopt(&self, h: CK_OBJECT_HANDLE, id: Option<u64>) -> MemberResult<MemberObject> {
        let id = match id {
            Some(id) => id,
            None => match self.ids.get(&h).map(|id| *id) {
                Some(id) => id,
                None => {
                    let mut id = self.content_id(h)?;
                    // Two objects alike in everything read: the next free id. A handle the
                    // id was given before may have gone stale instead: SoftHSMv2 hands out new
                    // handles for the objects of a token another process changed, and the
                    // object is then the same one under its new handle.
                    while let Some(other) = self.handles.get(&id).map(|o| *o) {
                        if other == h {
                            break;
                        }
                        if matches!(
                            self.attribute(other, CKA_CLASS),
                            Err(MemberError::Rv {
                                rv: CKR_OBJECT_HANDLE_INVALID,
                                ..
                            })
                        ) {
                            self.forget(other);
                            break;
                        }
                        id = super::content::next_content_id(id);
                    }
                    id
                }
            },
        };
        self.handles.insert(id, h);
        self.ids.insert(h, id);
        Ok(MemberObject(id))
    }

    /// The id of an object we did not make in this process (made by an earlier one, by another
    /// host, or directly on the HSM): derived from its content (see `backend::content`), the
    /// same on every member holding a copy, so that members are compared object by object after
    /// a restart without anything of ours stored on the vendor's token. Objects alike in all it
    /// reads take the next ids in the order the module lists them (see README: vendor modules).
    fn content_id(&self, h: CK_OBJECT_HANDLE) -> MemberResult<u64> {
        let class = self.ulong(h, CKA_CLASS)?.map(|c| c as CK_OBJECT_CLASS);
        let types = super::content::content_types(class);
        let answers = types
            .iter()
            .map(|&ty| self.attribute(h, ty))
            .collect::<MemberResult<Vec<_>>>()?;
        Ok(super::content::content_id(&types, &answers))
    }

    fn forget(&self, h: CK_OBJECT_HANDLE) {
        self.always_auth.remove(&h);
        if let Some((_, id)) = self.ids.remove(&h) {
            self.handles.remove(&id);
        }
    }

    /// A template as the module takes it: our id attribute taken out (and returned), and, for
    /// NSS softokn, `CKA_COPYABLE` and `CKA_DESTROYABLE` true and an empty
    /// `CKA_ALLOWED_MECHANISMS` (their defaults) left out: its database (3.87) has no place for
    /// them and fails the whole call (`CKR_GENERAL_ERROR`). See also [`Module::holdable`].
    fn strip(&self, template: &[Attr]) -> (Vec<Attr>, Option<u64>) {
        let mut id = None;
        let t = template
            .iter()
            .filter(|a| {
                let nss_default = match a.ty {
                    CKA_COPYABLE | CKA_DESTROYABLE => a.value == [1],
                    CKA_ALLOWED_MECHANISMS => a.value.is_empty(),
                    _ => false,
                };
                if self.nss && nss_default {
                    false
                } else if a.ty == CKA_HSMPOOL_OBJECT_ID {
                    // `CK_ULONG` is 64 bits here but 32 on some platforms.
                    #[allow(clippy::useless_conversion)]
                    let v = a.as_ulong().map(u64::from);
                    id = v;
                    false
                } else {
                    true
                }
            })
            .cloned()
            .collect();
        (t, id)
    }

    /// One attribute's value, in two calls: `Ok(None)` for one the object does not have or keeps
    /// secret (with the answer to give).
    fn attribute(&self, h: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> MemberResult<AttrAnswer> {
        let mut op = self.op_session()?;
        let sh = op.h;
        let mut a = CK_ATTRIBUTE {
            type_: ty,
            pValue: std::ptr::null_mut(),
            ulValueLen: 0,
        };
        // The two answers that say something about the attribute leave the session as it was.
        match call!(self, C_GetAttributeValue(sh, h, &mut a, 1)) {
            Ok(()) if a.ulValueLen != CK_UNAVAILABLE_INFORMATION => {}
            Ok(()) => return Ok(AttrAnswer::Invalid),
            Err(MemberError::Rv {
                rv: CKR_ATTRIBUTE_SENSITIVE,
                ..
            }) => return Ok(AttrAnswer::Sensitive),
            Err(MemberError::Rv {
                rv: CKR_ATTRIBUTE_TYPE_INVALID,
                ..
            }) => return Ok(AttrAnswer::Invalid),
            Err(e) => return op.check(Err(e)),
        }
        let mut value = vec![0u8; a.ulValueLen as usize];
        a.pValue = value.as_mut_ptr().cast::<c_void>();
        op.check(call!(self, C_GetAttributeValue(sh, h, &mut a, 1)))?;
        value.truncate(a.ulValueLen as usize);
        Ok(AttrAnswer::Value(value))
    }

    /// A `CK_ULONG` attribute; `None` for one the object does not have. A failure to read it
    /// (the device) is an error, never taken for an answer.
    fn ulong(&self, h: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> MemberResult<Option<u64>> {
        Ok(match self.attribute(h, ty)? {
            #[allow(clippy::useless_conversion)] // `CK_ULONG` is 32 bits on some platforms
            AttrAnswer::Value(v) => Attr { ty, value: v }.as_ulong().map(u64::from),
            _ => None,
        })
    }

    /// A `CK_BBOOL` attribute, false when absent; a failure to read it is an error.
    fn flag(&self, h: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> MemberResult<bool> {
        Ok(matches!(self.attribute(h, ty)?, AttrAnswer::Value(v) if v.first() == Some(&1)))
    }

    /// The table's rows as this token can do them through us: the ones it offers, narrowed to
    /// its functions and key sizes, and the hash-and-sign ones whose raw mechanism it offers
    /// (we hash; see [`Module::sign_form`]).
    fn rows(infos: &HashMap<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>) -> Vec<MechRow> {
        let as_row = |table: &MechRow, info: &CK_MECHANISM_INFO| {
            // Ed25519 is 255 bits by its curve and 256 by its key: vendors give either
            // (SoftHSMv2 says 256..456), the table says 255.
            let min = match table.family {
                Family::Ed if info.ulMinKeySize == 256 => 255,
                _ => info.ulMinKeySize,
            };
            MechRow {
                min,
                max: info.ulMaxKeySize,
                flags: info.flags,
                ..*table
            }
        };
        MECHANISMS
            .iter()
            .filter_map(|row| {
                if let Some(info) = infos.get(&row.mech) {
                    return as_row(row, info).narrowed(row);
                }
                let raw = match (row.hash, row.family, row.param) {
                    (None, ..) => return None,
                    (Some(_), Family::Ec, _) => CKM_ECDSA,
                    (Some(_), Family::Rsa, ParamKind::Pss) => CKM_RSA_PKCS_PSS,
                    (Some(_), Family::Rsa, _) => CKM_RSA_PKCS,
                    _ => return None,
                };
                as_row(row, infos.get(&raw)?).narrowed(row)
            })
            .collect()
    }

    /// The mechanism and data the module is given for a signature input: a pre-hashed input,
    /// or a whole message for a hash-and-sign mechanism the module does not offer (hashed here,
    /// on aws-lc-rs), goes to its raw mechanism.
    fn sign_form(
        &self,
        mech: &Mechanism,
        input: SignInput<'_>,
    ) -> MemberResult<(Mechanism, Vec<u8>)> {
        let hash = hash_of_hash_and_sign(mech.mech);
        let digest = match (input, hash) {
            (SignInput::Prehashed(d), Some(_)) => d.to_vec(),
            (SignInput::Message(m), Some(h)) if !self.offered.contains(&mech.mech) => {
                crate::digest::digest(h.ckm(), m).map_err(|_| self.rv(CKR_MECHANISM_INVALID))?
            }
            (SignInput::Message(d) | SignInput::Prehashed(d), _) => {
                return Ok((mech.clone(), d.to_vec()))
            }
        };
        let Some(hash) = hash else {
            return Err(self.rv(CKR_MECHANISM_INVALID));
        };
        Ok(match (Family::of(mech.mech), &mech.param) {
            (Some(Family::Ec), _) => (Mechanism::plain(CKM_ECDSA), digest),
            (Some(Family::Rsa), MechParam::Pss { .. }) => (
                Mechanism {
                    mech: CKM_RSA_PKCS_PSS,
                    param: mech.param.clone(),
                },
                digest,
            ),
            _ => {
                let mut di = hash.digest_info_prefix().to_vec();
                di.extend_from_slice(&digest);
                (Mechanism::plain(CKM_RSA_PKCS), di)
            }
        })
    }

    /// A two-call output (`C_Sign`, `C_Encrypt`, ...): `f(buffer, &mut len)` asked first for
    /// the length, then for the value.
    fn two_call(
        &self,
        f: impl FnMut(*mut u8, &mut CK_ULONG) -> MemberResult<()>,
    ) -> MemberResult<Vec<u8>> {
        self.two_call_padded(0, f)
    }

    /// [`Module::two_call`] with `slack` bytes more than the length query said: NSS softokn
    /// (3.87) undercounts for AES-GCM encryption (the input's length, no tag) and for RFC 5649
    /// wrapping (the key's length, no padding or integrity block), then fails the call with
    /// `CKR_BUFFER_TOO_SMALL` without saying how much, and ends the operation.
    fn two_call_padded(
        &self,
        slack: usize,
        mut f: impl FnMut(*mut u8, &mut CK_ULONG) -> MemberResult<()>,
    ) -> MemberResult<Vec<u8>> {
        let mut len: CK_ULONG = 0;
        f(std::ptr::null_mut(), &mut len)?;
        let mut out = vec![0u8; len as usize + slack];
        len = ck_len(out.len());
        f(out.as_mut_ptr(), &mut len)?;
        out.truncate(len as usize);
        Ok(out)
    }

    /// The module's handles of the objects matching a template (already stripped of ours).
    fn raw_find(&self, t: &[Attr]) -> MemberResult<Vec<CK_OBJECT_HANDLE>> {
        let ck = CkTemplate::new(t).map_err(|rv| self.rv(rv))?;
        let raw = ck.as_slice();
        let mut op = self.op_session()?;
        let sh = op.h;
        op.check(call!(
            self,
            C_FindObjectsInit(sh, raw.as_ptr().cast_mut(), ck_len(raw.len()))
        ))?;
        let mut found = Vec::new();
        let mut batch = [CK_INVALID_HANDLE; 64];
        let done = loop {
            let mut n: CK_ULONG = 0;
            if let Err(e) = call!(
                self,
                C_FindObjects(sh, batch.as_mut_ptr(), ck_len(batch.len()), &mut n)
            ) {
                break Err(e);
            }
            if n == 0 {
                break Ok(());
            }
            found.extend_from_slice(&batch[..n as usize]);
        };
        let done = op.check(done);
        op.check(call!(self, C_FindObjectsFinal(sh)))?;
        done?;
        Ok(found)
    }

    /// Run a create so that one whose answer was lost (the device failed after it may have
    /// made the object) leaves nothing behind: the objects like the template's (same class,
    /// label, id) are listed before the call, and after such a failure any new one that no
    /// call of ours adopted is destroyed, so a retry elsewhere leaves no second copy or half a
    /// pair. Creates with the same label and id wait for each other here; a template with
    /// neither label nor id is not protected (its listing would take in other threads' work).
    fn without_orphans<T>(
        &self,
        probes: &[Vec<Attr>],
        make: impl FnOnce() -> MemberResult<T>,
    ) -> MemberResult<T> {
        let probes: Vec<&Vec<Attr>> = probes
            .iter()
            .filter(|p| p.iter().any(|a| a.ty == CKA_LABEL || a.ty == CKA_ID))
            .collect();
        if probes.is_empty() {
            return make();
        }
        let mut hash = std::collections::hash_map::DefaultHasher::new();
        for p in &probes {
            std::hash::Hash::hash(&hsmpool_member::types::encode_attr_array(p), &mut hash);
        }
        let stripe = (std::hash::Hasher::finish(&hash) % CREATE_STRIPES as u64) as usize;
        let _same = self.create_locks[stripe].lock();
        let list =
            |probes: &[&Vec<Attr>]| -> MemberResult<std::collections::HashSet<CK_OBJECT_HANDLE>> {
                let mut all = std::collections::HashSet::new();
                for p in probes {
                    all.extend(self.raw_find(p)?);
                }
                Ok(all)
            };
        let before = list(&probes)?;
        let r = make();
        let lost = matches!(
            &r,
            Err(MemberError::Rv {
                rv: CKR_DEVICE_ERROR
                    | CKR_DEVICE_REMOVED
                    | CKR_FUNCTION_FAILED
                    | CKR_TOKEN_NOT_PRESENT
                    | CKR_SESSION_CLOSED
                    | CKR_SESSION_HANDLE_INVALID,
                ..
            }) | Err(MemberError::Unreachable { .. } | MemberError::Device(_))
        );
        if lost {
            match list(&probes) {
                Ok(after) => {
                    for h in after.difference(&before) {
                        if self.ids.contains_key(h) {
                            continue;
                        }
                        let destroyed = self.op_session().and_then(|mut op| {
                            let sh = op.h;
                            op.check(call!(self, C_DestroyObject(sh, *h)))
                        });
                        tracing::warn!(
                            member = self.id.0,
                            "a create whose answer was lost had made an object: removed \
                             ({destroyed:?})"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    member = self.id.0,
                    "a create whose answer was lost may have left an object: not listed ({e})"
                ),
            }
        }
        r
    }

    /// A key made here is as its template asked, for what a module may decide on its own: uses
    /// it grants from the key material (NSS softokn makes an unwrapped EC private key able to
    /// derive and to sign with recovery whatever the template said) are turned off again, a key
    /// asked sensitive but not is made so; a key made sensitive though asked not to be (NSS
    /// keeps every token secret key sensitive), or that still allows more than asked, is an
    /// error, `CKR_TEMPLATE_INCONSISTENT` (the caller removes it).
    fn as_asked(&self, s: MemberSession, o: MemberObject, asked: &[Attr]) -> MemberResult<()> {
        const USES: [CK_ATTRIBUTE_TYPE; 10] = [
            CKA_ENCRYPT,
            CKA_DECRYPT,
            CKA_SIGN,
            CKA_SIGN_RECOVER,
            CKA_VERIFY,
            CKA_VERIFY_RECOVER,
            CKA_WRAP,
            CKA_UNWRAP,
            CKA_DERIVE,
            CKA_EXTRACTABLE,
        ];
        let checked: Vec<&Attr> = asked
            .iter()
            .filter(|a| (USES.contains(&a.ty) && a.value == [0]) || a.ty == CKA_SENSITIVE)
            .collect();
        let types: Vec<CK_ATTRIBUTE_TYPE> = checked.iter().map(|a| a.ty).collect();
        let differ = |answers: Vec<AttrAnswer>| -> Vec<Attr> {
            checked
                .iter()
                .zip(answers)
                .filter(|(a, got)| matches!(got, AttrAnswer::Value(v) if *v != a.value))
                .map(|(a, _)| (*a).clone())
                .collect()
        };
        let wrong = differ(self.get_attributes(s, o, &types)?);
        if wrong.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            member = self.id.0,
            attributes = ?wrong.iter().map(|a| a.ty).collect::<Vec<_>>(),
            "an unwrapped key allows more than its template asked: set as asked"
        );
        if wrong
            .iter()
            .any(|a| a.ty == CKA_SENSITIVE && a.value == [0])
        {
            // Made sensitive though asked not to be (NSS softokn keeps every token secret key
            // sensitive): a key cannot be made readable again.
            tracing::warn!(
                member = self.id.0,
                "the token made a key sensitive that its template asked not to be"
            );
            return Err(self.rv(CKR_TEMPLATE_INCONSISTENT));
        }
        self.set_attributes(s, o, &wrong)?;
        if differ(self.get_attributes(s, o, &types)?).is_empty() {
            Ok(())
        } else {
            Err(self.rv(CKR_TEMPLATE_INCONSISTENT))
        }
    }

    /// `o`, made here, if it is as asked ([`Module::as_asked`]); else it is removed.
    fn kept_as_asked(
        &self,
        s: MemberSession,
        o: MemberObject,
        asked: &[Attr],
    ) -> MemberResult<MemberObject> {
        match self.as_asked(s, o, asked) {
            Ok(()) => Ok(o),
            Err(e) => {
                let _ = self.destroy_object(s, o);
                Err(e)
            }
        }
    }

    /// For NSS softokn, unwrapping an EC private key: its public value ([`NSS_DB`]), the
    /// bare point of the token's EC public key with the same `CKA_ID` and label (a pair's
    /// public half is copied before its private half). None when the template is not such a
    /// key or no such public key is there (NSS then refuses the unwrap).
    fn nss_public_value(&self, template: &[Attr]) -> MemberResult<Option<Attr>> {
        let get = |ty| template.iter().find(|a| a.ty == ty);
        let is = |ty, v: CK_ULONG| get(ty).and_then(Attr::as_ulong) == Some(v);
        if !is(CKA_CLASS, CKO_PRIVATE_KEY) || !is(CKA_KEY_TYPE, CKK_EC) {
            return Ok(None);
        }
        let mut like = vec![
            Attr::ulong(CKA_CLASS, CKO_PUBLIC_KEY),
            Attr::ulong(CKA_KEY_TYPE, CKK_EC),
        ];
        like.extend([CKA_ID, CKA_LABEL].into_iter().filter_map(get).cloned());
        let Some(&h) = self.raw_find(&like)?.first() else {
            return Ok(None);
        };
        let AttrAnswer::Value(der) = self.attribute(h, CKA_EC_POINT)? else {
            return Ok(None);
        };
        // The DER OCTET STRING's content: the uncompressed point.
        let point = match der.as_slice() {
            [0x04, n, rest @ ..] if usize::from(*n) == rest.len() => rest.to_vec(),
            [0x04, 0x81, n, rest @ ..] if usize::from(*n) == rest.len() => rest.to_vec(),
            _ => der.clone(),
        };
        Ok(Some(Attr {
            ty: NSS_DB,
            value: point,
        }))
    }

    /// Whether the token can hold an object as `template` asks: NSS softokn cannot restrict a
    /// key's mechanisms (it does not know `CKA_ALLOWED_MECHANISMS`), so such a key is
    /// `CKR_TEMPLATE_INCONSISTENT` here (a cluster with an NSS member then refuses it: a copy
    /// without its restriction would allow more than its original).
    fn holdable(&self, template: &[Attr]) -> MemberResult<()> {
        if self.nss
            && template
                .iter()
                .any(|a| a.ty == CKA_ALLOWED_MECHANISMS && !a.value.is_empty())
        {
            tracing::debug!(
                member = self.id.0,
                "NSS softokn cannot restrict a key's mechanisms"
            );
            return Err(self.rv(CKR_TEMPLATE_INCONSISTENT));
        }
        Ok(())
    }

    fn new_object(
        &self,
        template: &[Attr],
        make: impl FnOnce(&CkTemplate<'_>, &mut CK_OBJECT_HANDLE) -> MemberResult<()>,
    ) -> MemberResult<MemberObject> {
        self.holdable(template)?;
        let (t, id) = self.strip(template);
        let ck = CkTemplate::new(&t).map_err(|rv| self.rv(rv))?;
        let mut h: CK_OBJECT_HANDLE = CK_INVALID_HANDLE;
        self.without_orphans(&[probe_of(&t, None)], || make(&ck, &mut h))?;
        self.adopt(h, id)
    }
}

/// A key template with the token's own defaults said out loud: what a template leaves out is
/// filled in as our simulated HSMs do it (secret and private keys private, sensitive, not
/// extractable, signing but not wrapping, unwrapping or deriving; public keys verifying;
/// encrypting and decrypting by key type and by whether the key wraps), so that a key means
/// the same whichever member makes it. Vendor modules choose otherwise (SoftHSMv2: an AES key
/// is not sensitive and may wrap and decrypt, a private RSA key decrypts) and would make a
/// cluster's keys differ by the member that happened to make them. Other objects pass as
/// they are.
fn with_token_defaults(
    template: &[Attr],
    class: Option<CK_OBJECT_CLASS>,
    key_type: Option<CK_KEY_TYPE>,
) -> Vec<Attr> {
    let get = |ty| template.iter().rev().find(|a| a.ty == ty);
    let class = class.or_else(|| get(CKA_CLASS).and_then(Attr::as_ulong));
    let key_type = key_type.or_else(|| get(CKA_KEY_TYPE).and_then(Attr::as_ulong));
    let on = |ty| get(ty).is_some_and(|a| a.value == [1]);
    let rsa = key_type == Some(CKK_RSA);
    let defaults: Vec<(CK_ATTRIBUTE_TYPE, bool)> = match class {
        Some(CKO_SECRET_KEY) => vec![
            (CKA_PRIVATE, true),
            (CKA_SENSITIVE, true),
            (CKA_SIGN, true),
            (CKA_VERIFY, true),
            (CKA_WRAP, false),
            (CKA_UNWRAP, false),
            (CKA_DERIVE, false),
            (CKA_EXTRACTABLE, false),
            (CKA_ENCRYPT, !on(CKA_UNWRAP)),
            (CKA_DECRYPT, !on(CKA_WRAP)),
        ],
        Some(CKO_PRIVATE_KEY) => vec![
            (CKA_PRIVATE, true),
            (CKA_SENSITIVE, true),
            (CKA_SIGN, true),
            (CKA_SIGN_RECOVER, false),
            (CKA_UNWRAP, false),
            (CKA_DERIVE, false),
            (CKA_EXTRACTABLE, false),
            (CKA_DECRYPT, rsa && !on(CKA_UNWRAP)),
        ],
        Some(CKO_PUBLIC_KEY) => vec![
            (CKA_PRIVATE, false),
            (CKA_VERIFY, true),
            (CKA_VERIFY_RECOVER, false),
            (CKA_WRAP, false),
            (CKA_DERIVE, false),
            (CKA_ENCRYPT, rsa),
        ],
        _ => Vec::new(),
    };
    let mut t = template.to_vec();
    for (ty, v) in defaults {
        if get(ty).is_none() {
            t.push(Attr::bool(ty, v));
        }
    }
    t
}

/// The key type a key-generation mechanism makes.
fn key_type_of(mech: &Mechanism) -> Option<CK_KEY_TYPE> {
    match mech.mech {
        CKM_AES_KEY_GEN => Some(CKK_AES),
        CKM_GENERIC_SECRET_KEY_GEN => Some(CKK_GENERIC_SECRET),
        CKM_RSA_PKCS_KEY_PAIR_GEN | CKM_RSA_X9_31_KEY_PAIR_GEN => Some(CKK_RSA),
        CKM_EC_KEY_PAIR_GEN => Some(CKK_EC),
        CKM_EC_EDWARDS_KEY_PAIR_GEN => Some(CKK_EC_EDWARDS),
        _ => None,
    }
}

/// A template whose `CKA_EC_POINT` is the DER OCTET STRING PKCS #11 asks for, where an
/// application gave the bare uncompressed point on a NIST curve (as many do, and as our own
/// members take): SoftHSMv2 stores what it is given, and would return the bare point.
fn der_ec_point(template: &[Attr]) -> Vec<Attr> {
    let field = template
        .iter()
        .find(|a| a.ty == CKA_EC_PARAMS)
        .and_then(|a| hsmpool_member::curves::order_bits(&a.value))
        .filter(|bits| *bits != 255)
        .map(|bits| bits.div_ceil(8));
    template
        .iter()
        .map(|a| match field {
            Some(n) if a.ty == CKA_EC_POINT && a.value.len() == 1 + 2 * n && a.value[0] == 4 => {
                let mut der = Vec::with_capacity(a.value.len() + 3);
                der.push(0x04);
                if a.value.len() < 0x80 {
                    der.push(a.value.len() as u8);
                } else {
                    der.extend_from_slice(&[0x81, a.value.len() as u8]);
                }
                der.extend_from_slice(&a.value);
                Attr {
                    ty: CKA_EC_POINT,
                    value: der,
                }
            }
            _ => a.clone(),
        })
        .collect()
}

/// What our own members check of an imported key and a vendor's module may not (SoftHSMv2
/// takes both): an EC public point on its NIST curve, and an AES key of 16, 24 or 32 bytes;
/// else `CKR_ATTRIBUTE_VALUE_INVALID`, whichever kind of member is asked.
fn checked_import(template: &[Attr]) -> std::result::Result<(), CK_RV> {
    use aws_lc_rs::agreement::{self, ParsedPublicKey, UnparsedPublicKey};
    let get = |ty| template.iter().rev().find(|a| a.ty == ty);
    let ulong = |ty| get(ty).and_then(|a: &Attr| a.as_ulong());
    match (ulong(CKA_CLASS), ulong(CKA_KEY_TYPE)) {
        (Some(CKO_PUBLIC_KEY), Some(CKK_EC)) => {
            use hsmpool_member::curves::{P256_OID_DER, P384_OID_DER, P521_OID_DER};
            let alg = match get(CKA_EC_PARAMS).map(|a| a.value.as_slice()) {
                Some(P256_OID_DER) => &agreement::ECDH_P256,
                Some(P384_OID_DER) => &agreement::ECDH_P384,
                Some(P521_OID_DER) => &agreement::ECDH_P521,
                _ => return Ok(()),
            };
            // The DER OCTET STRING (`der_ec_point` made it one) around the uncompressed point.
            let Some(point) = get(CKA_EC_POINT) else {
                return Ok(());
            };
            let raw = match point.value.as_slice() {
                [0x04, n, rest @ ..] if usize::from(*n) == rest.len() => rest,
                [0x04, 0x81, n, rest @ ..] if usize::from(*n) == rest.len() => rest,
                _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
            };
            ParsedPublicKey::try_from(&UnparsedPublicKey::new(alg, raw))
                .map(|_| ())
                .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)
        }
        (Some(CKO_SECRET_KEY), Some(CKK_AES)) => match get(CKA_VALUE).map(|a| a.value.len()) {
            None | Some(16 | 24 | 32) => Ok(()),
            Some(_) => Err(CKR_ATTRIBUTE_VALUE_INVALID),
        },
        _ => Ok(()),
    }
}

/// Whether two secrets are equal, in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn ck_len(n: usize) -> CK_ULONG {
    n as CK_ULONG
}

/// The bit length of a big-endian unsigned integer (an RSA modulus).
fn be_bits(v: &[u8]) -> usize {
    match v.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => (v.len() - i - 1) * 8 + (8 - v[i].leading_zeros() as usize),
    }
}

impl Backend for Module {
    fn id(&self) -> MemberId {
        self.id
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn open_session(&self) -> MemberResult<MemberSession> {
        let h = self.open_vendor_session()?;
        #[allow(clippy::unnecessary_cast)] // `CK_ULONG` is 32 bits on some platforms
        Ok(MemberSession(h as u64))
    }
    fn close_session(&self, s: MemberSession) {
        if let Err(e) = call!(self, C_CloseSession(s.0 as CK_SESSION_HANDLE)) {
            tracing::debug!(member = self.id.0, "close_session: {e}");
        }
    }
    fn login(
        &self,
        s: MemberSession,
        role: Role,
        pin: &[u8],
        username: Option<&str>,
    ) -> MemberResult<()> {
        if username.is_some() {
            return Err(self.rv(CKR_FUNCTION_NOT_SUPPORTED));
        }
        let pin = self.pin_for(role, pin);
        let user = match role {
            Role::Officer => CKU_SO,
            Role::User => CKU_USER,
        };
        let r = call!(
            self,
            C_Login(
                s.0 as CK_SESSION_HANDLE,
                user,
                pin.as_ptr().cast_mut(),
                ck_len(pin.len())
            )
        );
        match (role, &r) {
            (Role::User, Ok(())) => *self.user_pin.lock() = Some(Zeroizing::new(pin.to_vec())),
            // Login is the application's on a vendor module: the sessions after the first are
            // in already, and a PIN checked again (the engine's context-specific login) cannot
            // be given to the token without logging every session out. It is checked against
            // the PIN the token took.
            (
                Role::User,
                Err(MemberError::Rv {
                    rv: CKR_USER_ALREADY_LOGGED_IN,
                    ..
                }),
            ) => {
                let mut known = self.user_pin.lock();
                match known.as_ref() {
                    Some(k) if same_secret(k, pin) => return Ok(()),
                    Some(_) => return Err(self.rv(CKR_PIN_INCORRECT)),
                    None => *known = Some(Zeroizing::new(pin.to_vec())),
                }
            }
            _ => {}
        }
        r
    }
    fn logout(&self, s: MemberSession) -> MemberResult<()> {
        *self.user_pin.lock() = None;
        call!(self, C_Logout(s.0 as CK_SESSION_HANDLE))
    }
    fn init_token(&self, so_pin: &[u8], label: &[u8; 32]) -> MemberResult<()> {
        let so_pin = self.pin_for(Role::Officer, so_pin);
        // The token refuses while sessions are open on it (ours in the pool; the engine opens
        // them again when they answer CKR_SESSION_HANDLE_INVALID).
        call!(self, C_CloseAllSessions(self.slot))?;
        self.op_sessions.lock().clear();
        let label = match &self.keep_label {
            Some(own) if own != label => {
                tracing::info!(
                    member = self.id.0,
                    "C_InitToken: the token keeps its own label, by which the configuration \
                     finds it (name it by token_serial to let the application relabel it)"
                );
                own
            }
            _ => label,
        };
        call!(
            self,
            C_InitToken(
                self.slot,
                so_pin.as_ptr().cast_mut(),
                ck_len(so_pin.len()),
                label.as_ptr().cast_mut()
            )
        )?;
        self.handles.clear();
        self.ids.clear();
        self.always_auth.clear();
        Ok(())
    }
    fn init_pin(&self, s: MemberSession, pin: &[u8]) -> MemberResult<()> {
        let pin = self.pin_for(Role::User, pin);
        call!(
            self,
            C_InitPIN(
                s.0 as CK_SESSION_HANDLE,
                pin.as_ptr().cast_mut(),
                ck_len(pin.len())
            )
        )
    }
    fn set_pin(&self, s: MemberSession, old: &[u8], new: &[u8]) -> MemberResult<()> {
        if self.own_user_pin.is_some() || self.own_so_pin.is_some() {
            let mut info = CK_SESSION_INFO::default();
            call!(self, C_GetSessionInfo(s.0 as CK_SESSION_HANDLE, &mut info))?;
            let role = match info.state {
                CKS_RW_SO_FUNCTIONS => Role::Officer,
                _ => Role::User,
            };
            if self.own_pin(role) {
                tracing::info!(
                    member = self.id.0,
                    "C_SetPIN: the token keeps the PIN of its own the configuration names"
                );
                return Ok(());
            }
        }
        call!(
            self,
            C_SetPIN(
                s.0 as CK_SESSION_HANDLE,
                old.as_ptr().cast_mut(),
                ck_len(old.len()),
                new.as_ptr().cast_mut(),
                ck_len(new.len())
            )
        )
    }
    fn token_status(&self) -> MemberResult<TokenStatus> {
        let info = self.token_info(self.slot)?;
        // A module tells no counts, only the flags: count low, final try, locked; as counts
        // out of three they give the engine the same flags back.
        let failures = |low, last, locked| {
            if info.flags & locked != 0 {
                3
            } else if info.flags & last != 0 {
                2
            } else if info.flags & low != 0 {
                1
            } else {
                0
            }
        };
        Ok(TokenStatus {
            initialized: info.flags & CKF_TOKEN_INITIALIZED != 0,
            user_pin_initialized: info.flags & CKF_USER_PIN_INITIALIZED != 0,
            label: info.label,
            user_failures: failures(
                CKF_USER_PIN_COUNT_LOW,
                CKF_USER_PIN_FINAL_TRY,
                CKF_USER_PIN_LOCKED,
            ),
            so_failures: failures(
                CKF_SO_PIN_COUNT_LOW,
                CKF_SO_PIN_FINAL_TRY,
                CKF_SO_PIN_LOCKED,
            ),
            max_failures: 3,
            object_count: 0,
        })
    }
    fn create_object(&self, s: MemberSession, template: &[Attr]) -> MemberResult<MemberObject> {
        let template = with_token_defaults(&der_ec_point(template), None, None);
        checked_import(&template).map_err(|rv| self.rv(rv))?;
        let made = self.new_object(&template, |t, h| {
            let raw = t.as_slice();
            let _one = self.on(s);
            call!(
                self,
                C_CreateObject(
                    s.0 as CK_SESSION_HANDLE,
                    raw.as_ptr().cast_mut(),
                    ck_len(raw.len()),
                    h
                )
            )
        })?;
        self.kept_as_asked(s, made, &template)
    }
    fn copy_object(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        let from = self.handle(o)?;
        self.new_object(template, |t, h| {
            let raw = t.as_slice();
            let _one = self.on(s);
            call!(
                self,
                C_CopyObject(
                    s.0 as CK_SESSION_HANDLE,
                    from,
                    raw.as_ptr().cast_mut(),
                    ck_len(raw.len()),
                    h
                )
            )
        })
    }
    fn destroy_object(&self, s: MemberSession, o: MemberObject) -> MemberResult<()> {
        let h = self.handle(o)?;
        let _one = self.on(s);
        call!(self, C_DestroyObject(s.0 as CK_SESSION_HANDLE, h))?;
        self.forget(h);
        Ok(())
    }
    fn get_attributes(
        &self,
        _s: MemberSession,
        o: MemberObject,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> MemberResult<Vec<AttrAnswer>> {
        let h = self.handle(o)?;
        types
            .iter()
            .map(|&ty| match ty {
                CKA_HSMPOOL_OBJECT_ID => Ok(AttrAnswer::Value(
                    Attr::ulong(ty, o.0 as CK_ULONG).value.to_vec(),
                )),
                // One object has one unique id on every member (3.0 §4.4): ours, as our
                // simulated HSMs give it; a vendor's own differs from token to token, and
                // SoftHSMv2 2.6 has none.
                CKA_UNIQUE_ID => Ok(AttrAnswer::Value(format!("{:016x}", o.0).into_bytes())),
                // Nested templates are read in the next step (issue 13).
                ty if hsmpool_member::types::is_array_attribute(ty) => Ok(AttrAnswer::Invalid),
                // NSS softokn does not know them (3.87); its objects may be copied and removed.
                CKA_COPYABLE | CKA_DESTROYABLE if self.nss => match self.attribute(h, ty)? {
                    AttrAnswer::Invalid => Ok(AttrAnswer::Value(vec![1])),
                    other => Ok(other),
                },
                ty => self.attribute(h, ty),
            })
            .collect()
    }
    fn set_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> MemberResult<()> {
        let h = self.handle(o)?;
        let (t, _) = self.strip(template);
        let ck = CkTemplate::new(&t).map_err(|rv| self.rv(rv))?;
        let raw = ck.as_slice();
        let _one = self.on(s);
        call!(
            self,
            C_SetAttributeValue(
                s.0 as CK_SESSION_HANDLE,
                h,
                raw.as_ptr().cast_mut(),
                ck_len(raw.len())
            )
        )
    }
    fn object_size(&self, _s: MemberSession, o: MemberObject) -> MemberResult<u64> {
        let h = self.handle(o)?;
        let mut n: CK_ULONG = 0;
        let mut op = self.op_session()?;
        let sh = op.h;
        op.check(call!(self, C_GetObjectSize(sh, h, &mut n)))?;
        Ok(n as u64)
    }
    fn find(&self, _s: MemberSession, template: &[Attr]) -> MemberResult<Vec<MemberObject>> {
        let (t, id) = self.strip(template);
        let found = self.raw_find(&t)?;
        let mut out = Vec::with_capacity(found.len());
        for h in found {
            let o = self.adopt(h, None)?;
            if id.is_none_or(|id| o.0 == id) {
                out.push(o);
            }
        }
        Ok(out)
    }
    fn key_meta(&self, _s: MemberSession, o: MemberObject) -> MemberResult<KeyMeta> {
        let h = self.handle(o)?;
        let class =
            self.ulong(h, CKA_CLASS)?
                .ok_or_else(|| self.rv(CKR_OBJECT_HANDLE_INVALID))? as CK_OBJECT_CLASS;
        let key_type = self.ulong(h, CKA_KEY_TYPE)?.map(|t| t as CK_KEY_TYPE);
        let key_bits = match key_type {
            Some(CKK_RSA) => match self.attribute(h, CKA_MODULUS)? {
                AttrAnswer::Value(m) => be_bits(&m),
                _ => 0,
            },
            Some(CKK_EC) | Some(CKK_EC_EDWARDS) => match self.attribute(h, CKA_EC_PARAMS)? {
                AttrAnswer::Value(p) => hsmpool_member::curves::order_bits(&p).unwrap_or(0),
                _ => 0,
            },
            Some(_) => self.ulong(h, CKA_VALUE_LEN)?.unwrap_or(0) as usize * 8,
            None => 0,
        };
        Ok(KeyMeta {
            class,
            key_type,
            key_bits,
            token: self.flag(h, CKA_TOKEN)?,
            private: self.flag(h, CKA_PRIVATE)?,
            always_authenticate: self.flag(h, CKA_ALWAYS_AUTHENTICATE)?,
        })
    }
    fn check_key(
        &self,
        s: MemberSession,
        usage: CK_ATTRIBUTE_TYPE,
        _mech: &Mechanism,
        o: MemberObject,
    ) -> MemberResult<KeyMeta> {
        let meta = self.key_meta(s, o)?;
        // An object that is no key (§5.2: CKR_KEY_HANDLE_INVALID), whatever the module says of
        // a usage attribute it does not have.
        if !matches!(
            meta.class,
            CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY
        ) {
            return Err(self.rv(CKR_KEY_HANDLE_INVALID));
        }
        if !self.flag(self.handle(o)?, usage)? {
            return Err(self.rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
        }
        Ok(meta)
    }
    fn generate_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        let m = CkMechanism::new(mech).map_err(|rv| self.rv(rv))?;
        let template = &with_token_defaults(template, Some(CKO_SECRET_KEY), key_type_of(mech));
        let made = self.new_object(template, |t, h| {
            let raw = t.as_slice();
            let _one = self.on(s);
            call!(
                self,
                C_GenerateKey(
                    s.0 as CK_SESSION_HANDLE,
                    std::ptr::from_ref(m.as_raw()).cast_mut(),
                    raw.as_ptr().cast_mut(),
                    ck_len(raw.len()),
                    h
                )
            )
        })?;
        self.kept_as_asked(s, made, template)
    }
    fn generate_key_pair(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        public: &[Attr],
        private: &[Attr],
    ) -> MemberResult<(MemberObject, MemberObject)> {
        let m = CkMechanism::new(mech).map_err(|rv| self.rv(rv))?;
        let mut public = with_token_defaults(public, Some(CKO_PUBLIC_KEY), key_type_of(mech));
        // Our members make RSA keys with exponent 65537 when the template names none; NSS
        // softokn refuses a template without one (CKR_TEMPLATE_INCOMPLETE).
        if key_type_of(mech) == Some(CKK_RSA) && !public.iter().any(|a| a.ty == CKA_PUBLIC_EXPONENT)
        {
            public.push(Attr::bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1]));
        }
        let public = &public;
        let private = &with_token_defaults(private, Some(CKO_PRIVATE_KEY), key_type_of(mech));
        self.holdable(public)?;
        self.holdable(private)?;
        let (pt, pid) = self.strip(public);
        let (kt, kid) = self.strip(private);
        let pck = CkTemplate::new(&pt).map_err(|rv| self.rv(rv))?;
        let kck = CkTemplate::new(&kt).map_err(|rv| self.rv(rv))?;
        let (praw, kraw) = (pck.as_slice(), kck.as_slice());
        let (mut ph, mut kh) = (CK_INVALID_HANDLE, CK_INVALID_HANDLE);
        let probes = [
            probe_of(&pt, Some(CKO_PUBLIC_KEY)),
            probe_of(&kt, Some(CKO_PRIVATE_KEY)),
        ];
        self.without_orphans(&probes, || {
            let _one = self.on(s);
            call!(
                self,
                C_GenerateKeyPair(
                    s.0 as CK_SESSION_HANDLE,
                    std::ptr::from_ref(m.as_raw()).cast_mut(),
                    praw.as_ptr().cast_mut(),
                    ck_len(praw.len()),
                    kraw.as_ptr().cast_mut(),
                    ck_len(kraw.len()),
                    &mut ph,
                    &mut kh
                )
            )
        })?;
        Ok((self.adopt(ph, pid)?, self.adopt(kh, kid)?))
    }
    fn wrap_key(
        &self,
        _s: MemberSession,
        mech: &Mechanism,
        wrapping: MemberObject,
        key: MemberObject,
    ) -> MemberResult<Vec<u8>> {
        let m = CkMechanism::new(mech).map_err(|rv| self.rv(rv))?;
        let (wh, kh) = (self.handle(wrapping)?, self.handle(key)?);
        let mut op = self.op_session()?;
        let sh = op.h;
        // Room for RFC 5649's padding and integrity block more than the query says.
        let r = self.two_call_padded(16, |out, len| {
            call!(
                self,
                C_WrapKey(
                    sh,
                    std::ptr::from_ref(m.as_raw()).cast_mut(),
                    wh,
                    kh,
                    out,
                    len
                )
            )
        });
        op.check(r)
    }
    fn unwrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        unwrapping: MemberObject,
        wrapped: &[u8],
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        let m = CkMechanism::new(mech).map_err(|rv| self.rv(rv))?;
        let uh = self.handle(unwrapping)?;
        let asked = &with_token_defaults(template, None, None);
        let mut template = asked.clone();
        if self.nss {
            template.extend(self.nss_public_value(&template)?);
        }
        let made = self.new_object(&template, |t, h| {
            let raw = t.as_slice();
            let _one = self.on(s);
            call!(
                self,
                C_UnwrapKey(
                    s.0 as CK_SESSION_HANDLE,
                    std::ptr::from_ref(m.as_raw()).cast_mut(),
                    uh,
                    wrapped.as_ptr().cast_mut(),
                    ck_len(wrapped.len()),
                    raw.as_ptr().cast_mut(),
                    ck_len(raw.len()),
                    h
                )
            )
        })?;
        self.kept_as_asked(s, made, asked)
    }
    fn derive_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        base: MemberObject,
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        let m = CkMechanism::new(mech).map_err(|rv| self.rv(rv))?;
        let bh = self.handle(base)?;
        self.new_object(template, |t, h| {
            let raw = t.as_slice();
            let _one = self.on(s);
            call!(
                self,
                C_DeriveKey(
                    s.0 as CK_SESSION_HANDLE,
                    std::ptr::from_ref(m.as_raw()).cast_mut(),
                    bh,
                    raw.as_ptr().cast_mut(),
                    ck_len(raw.len()),
                    h
                )
            )
        })
    }
    fn sign(
        &self,
        _s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
    ) -> MemberResult<Vec<u8>> {
        let (mech, data) = self.sign_form(mech, input)?;
        let (mut op, kh) =
            self.begin(&mech, key, |sh, m, kh| call!(self, C_SignInit(sh, m, kh)))?;
        let sh = op.h;
        if self.always_authenticate(kh)? {
            let pin = self.user_pin.lock().clone();
            let pin = pin.ok_or_else(|| self.rv(CKR_USER_NOT_LOGGED_IN))?;
            op.check(call!(
                self,
                C_Login(
                    sh,
                    CKU_CONTEXT_SPECIFIC,
                    pin.as_ptr().cast_mut(),
                    ck_len(pin.len())
                )
            ))?;
        }
        let r = self.two_call(|out, len| {
            call!(
                self,
                C_Sign(sh, data.as_ptr().cast_mut(), ck_len(data.len()), out, len)
            )
        });
        op.check(r)
    }
    fn verify(
        &self,
        _s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
        signature: &[u8],
    ) -> MemberResult<()> {
        let (mech, data) = self.sign_form(mech, input)?;
        let (mut op, _) =
            self.begin(&mech, key, |sh, m, kh| call!(self, C_VerifyInit(sh, m, kh)))?;
        let sh = op.h;
        let r = call!(
            self,
            C_Verify(
                sh,
                data.as_ptr().cast_mut(),
                ck_len(data.len()),
                signature.as_ptr().cast_mut(),
                ck_len(signature.len())
            )
        );
        op.check(r)
    }
    fn encrypt(
        &self,
        _s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> MemberResult<Vec<u8>> {
        let (mut op, _) =
            self.begin(mech, key, |sh, m, kh| call!(self, C_EncryptInit(sh, m, kh)))?;
        let sh = op.h;
        // Room for a block of padding and a tag more than the query says.
        let r = self.two_call_padded(32, |out, len| {
            call!(
                self,
                C_Encrypt(sh, data.as_ptr().cast_mut(), ck_len(data.len()), out, len)
            )
        });
        op.check(r)
    }
    fn decrypt(
        &self,
        _s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> MemberResult<Zeroizing<Vec<u8>>> {
        let (mut op, _) =
            self.begin(mech, key, |sh, m, kh| call!(self, C_DecryptInit(sh, m, kh)))?;
        let sh = op.h;
        let r = self.two_call(|out, len| {
            call!(
                self,
                C_Decrypt(sh, data.as_ptr().cast_mut(), ck_len(data.len()), out, len)
            )
        });
        op.check(r).map(Zeroizing::new)
    }
    fn secret_value_for_digest(
        &self,
        _s: MemberSession,
        key: MemberObject,
    ) -> MemberResult<Zeroizing<Vec<u8>>> {
        match self.attribute(self.handle(key)?, CKA_VALUE)? {
            AttrAnswer::Value(v) => Ok(Zeroizing::new(v)),
            AttrAnswer::Sensitive => Err(self.rv(CKR_KEY_INDIGESTIBLE)),
            AttrAnswer::Invalid => Err(self.rv(CKR_KEY_HANDLE_INVALID)),
        }
    }
    fn random(&self, out: &mut [u8]) -> MemberResult<()> {
        let mut op = self.op_session()?;
        let sh = op.h;
        let r = call!(
            self,
            C_GenerateRandom(sh, out.as_mut_ptr(), ck_len(out.len()))
        );
        op.check(r)
    }
    fn ping(&self) -> MemberResult<()> {
        self.token_info(self.slot).map(|_| ())
    }
    fn mechanisms(&self) -> MemberResult<Option<Vec<MechRow>>> {
        Ok(Some(self.rows.clone()))
    }
    fn own_pin(&self, role: Role) -> bool {
        match role {
            Role::User => self.own_user_pin.is_some(),
            Role::Officer => self.own_so_pin.is_some(),
        }
    }
    fn wants_whole_messages(&self) -> bool {
        true
    }
    fn cluster_wrap_mechanism(&self) -> CK_MECHANISM_TYPE {
        // RFC 5649 goes by two numbers: PKCS #11 3.0's own, and the older one SoftHSMv2 gives
        // it (OpenSSL's wrap with padding behind `CKM_AES_KEY_WRAP_PAD`).
        if self.offered.contains(&CKM_AES_KEY_WRAP_KWP)
            || !self.offered.contains(&CKM_AES_KEY_WRAP_PAD)
        {
            CKM_AES_KEY_WRAP_KWP
        } else {
            CKM_AES_KEY_WRAP_PAD
        }
    }
}
