//! The data the engine keeps: application sessions, object entries, the login state and the
//! entries of the find cache.
//!
//! The lowest of the engine's own modules: the [`crate::engine`] rooms and `ops.rs` both use
//! these types, and this module uses neither. A session holds its operations without naming
//! them: what an operation is belongs to `ops.rs`, which fills in [`OpTable::Slots`].

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use cryptoki_sys::{CK_ATTRIBUTE_TYPE, CK_MECHANISM_TYPE};
use hsmpool_member::KeyMeta;
use parking_lot::Mutex;

use crate::backend::MemberObject;
use crate::cluster::Route;
use crate::types::{ObjectHandle, SessionHandle};

/// Where a session keeps its operations: `ops.rs` implements this for [`Ops`] with its own
/// slots (`type Slots = OpSlots`). Naming the slots through it lets [`Session`] hold them while
/// the arrows go one way: `ops.rs` uses this module, this module does not use `ops.rs`.
pub(crate) trait OpTable {
    /// At most one active operation per [`OpKind`](crate::types::OpKind); the default is none.
    type Slots: Default;
}

/// The one implementor of [`OpTable`] (in `ops.rs`).
pub(crate) enum Ops {}

/// An application session.
///
/// # Invariants
/// `ops` holds at most one operation per [`OpKind`](crate::types::OpKind); an operation is
/// taken out of its slot while a backend call runs and put back only if it stays active.
pub(crate) struct Session {
    pub(crate) rw: bool,
    pub(crate) find: Option<FindState>,
    pub(crate) ops: <Ops as OpTable>::Slots,
    /// Session objects this session created (destroyed when it closes).
    pub(crate) objects: Vec<ObjectHandle>,
    /// `C_Login(CKU_CONTEXT_SPECIFIC)` was done for the current operation.
    pub(crate) context_authenticated: bool,
    /// The last key this session started an operation with, as checked then: an application
    /// that runs `*Init` on one key again and again (the common case) is answered from here,
    /// without touching the engine's shared maps, while the cache generation is unchanged.
    pub(crate) last_key: Option<KeyMemo>,
}

/// See [`Session::last_key`].
#[derive(Clone, Copy)]
pub(crate) struct KeyMemo {
    pub(crate) handle: ObjectHandle,
    pub(crate) usage: CK_ATTRIBUTE_TYPE,
    pub(crate) mech: CK_MECHANISM_TYPE,
    pub(crate) gen: u64,
    pub(crate) entry: ObjEntry,
    pub(crate) meta: KeyMeta,
}

pub(crate) struct FindState {
    pub(crate) results: Vec<ObjectHandle>,
    pub(crate) cursor: usize,
}

/// What the engine keeps for an application object handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjEntry {
    /// The object's id on the members (cluster-wide for token objects).
    pub(crate) member_obj: MemberObject,
    /// The session that created it, for session objects made through this engine.
    pub(crate) session: Option<SessionHandle>,
    /// For a session object: its member (index) and that member's pool epoch when it was
    /// made. `None` for token objects, which exist on every member.
    pub(crate) home: Option<(usize, u64)>,
}

impl ObjEntry {
    /// Where calls on this object go: a session object to its member, a token key that lives
    /// on one member alone (`single_member_keys`) to that member, any other token object to
    /// any member.
    pub(crate) fn route(&self, cluster: &crate::cluster::Cluster) -> Route {
        match self.home {
            Some((i, epoch)) => Route::On(i, epoch),
            None => match cluster.pinned_on(self.member_obj) {
                Some(i) => Route::Pinned(i),
                None => Route::Any,
            },
        }
    }
}

/// The application's login state: read on every call with one atomic load, changed only under
/// its mutex (login, logout, closing the last session), so readers never contend.
pub(crate) struct LoginCell {
    lock: Mutex<()>,
    state: AtomicU8,
}

/// Holds the login mutex; the state can be read and changed through it.
pub(crate) struct LoginGuard<'a> {
    cell: &'a LoginCell,
    _held: parking_lot::MutexGuard<'a, ()>,
}

impl LoginCell {
    pub(crate) fn new() -> Self {
        LoginCell {
            lock: Mutex::new(()),
            state: AtomicU8::new(LoginState::Public as u8),
        }
    }
    pub(crate) fn get(&self) -> LoginState {
        LoginState::from_u8(self.state.load(Ordering::Acquire))
    }
    /// The login mutex. Taken again by the thread that holds it (a vendor module member that
    /// calls back into the host during `C_Login`, which sends the call back here: SoftHSMv2
    /// checks its PIN with the host's OpenSSL, which the OpenSSL provider may route to this
    /// module) it is refused with `CKR_FUNCTION_FAILED` rather than left to deadlock.
    pub(crate) fn lock(&self) -> crate::error::Result<LoginGuard<'_>> {
        if HOLDS_LOGIN.with(std::cell::Cell::get) {
            tracing::warn!(
                "the module was called again from inside its own login (a member called back \
                 into the host): refused"
            );
            return Err(crate::error::Error::FunctionFailed);
        }
        let held = self.lock.lock();
        HOLDS_LOGIN.with(|h| h.set(true));
        Ok(LoginGuard {
            cell: self,
            _held: held,
        })
    }
}

thread_local! {
    /// Whether this thread holds a login mutex (see [`LoginCell::lock`]).
    static HOLDS_LOGIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Drop for LoginGuard<'_> {
    fn drop(&mut self) {
        HOLDS_LOGIN.with(|h| h.set(false));
    }
}

impl LoginGuard<'_> {
    pub(crate) fn get(&self) -> LoginState {
        self.cell.get()
    }
    pub(crate) fn set(&self, s: LoginState) {
        self.cell.state.store(s as u8, Ordering::Release);
    }
}

/// The login state of the application on the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LoginState {
    Public = 0,
    User = 1,
    So = 2,
}

impl LoginState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => LoginState::User,
            2 => LoginState::So,
            _ => LoginState::Public,
        }
    }
}

/// A cached find: the encoded template and the login state it was made in.
pub(crate) type FindKey = (Vec<u8>, u8);

/// A cached find result: its cache generation, when it was made, the handles.
pub(crate) struct FindHit {
    pub(crate) gen: u64,
    /// The cluster clock's reading.
    pub(crate) at: std::time::Duration,
    pub(crate) handles: Arc<Vec<ObjectHandle>>,
}
