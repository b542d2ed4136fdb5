//! Application sessions and the application's login: open and close sessions, session info,
//! login and logout (the login state itself is [`crate::state::LoginCell`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cryptoki_sys::*;
use hsmpool_member::Role;
use parking_lot::Mutex;

use super::lifecycle::Engine;
use super::token::SLOT;
use crate::error::{Error, Result};
use crate::state::{LoginState, Session};
use crate::types::{SessionHandle, SessionInfo, SlotId};

impl Engine {
    pub(crate) fn session(&self, s: SessionHandle) -> Result<Arc<Mutex<Session>>> {
        self.sessions
            .get(&s)
            .map(|e| e.value().clone())
            .ok_or(Error::SessionHandleInvalid)
    }

    pub(super) fn login_state(&self) -> LoginState {
        self.login.get()
    }

    fn session_state(&self, rw: bool) -> CK_STATE {
        match (self.login_state(), rw) {
            (LoginState::Public, false) => CKS_RO_PUBLIC_SESSION,
            (LoginState::Public, true) => CKS_RW_PUBLIC_SESSION,
            (LoginState::User, false) => CKS_RO_USER_FUNCTIONS,
            (LoginState::User, true) => CKS_RW_USER_FUNCTIONS,
            (LoginState::So, _) => CKS_RW_SO_FUNCTIONS,
        }
    }

    pub(super) fn rw_of(&self, s: SessionHandle) -> Result<bool> {
        Ok(self.session(s)?.lock().rw)
    }

    /// `C_OpenSession`.
    pub fn open_session(&self, slot: SlotId, flags: CK_FLAGS) -> Result<SessionHandle> {
        self.check_slot(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::SessionParallelNotSupported);
        }
        let rw = flags & CKF_RW_SESSION != 0;
        // Holding the login lock orders this against a concurrent SO login.
        let login = self.login.lock()?;
        if !rw && login.get() == LoginState::So {
            return Err(Error::SessionReadWriteSoExists);
        }
        let h = SessionHandle(self.next_session.fetch_add(1, Ordering::Relaxed));
        self.sessions.insert(
            h,
            Arc::new(Mutex::new(Session {
                rw,
                find: None,
                ops: Default::default(),
                objects: Vec::new(),
                context_authenticated: false,
                last_key: None,
            })),
        );
        drop(login);
        Ok(h)
    }

    /// `C_CloseSession`.
    pub fn close_session(&self, s: SessionHandle) -> Result<()> {
        let (_, sess) = self
            .sessions
            .remove(&s)
            .ok_or(Error::SessionHandleInvalid)?;
        let objects = std::mem::take(&mut sess.lock().objects);
        for h in objects {
            if let Ok(e) = self.entry(h) {
                let _ = self.cluster.call(e.route(&self.cluster), 1, |b, msess| {
                    b.destroy_object(msess, e.member_obj)
                });
            }
            self.forget_object(h);
        }
        if self.sessions.is_empty() {
            let login = self.login.lock()?;
            if self.sessions.is_empty() && login.get() != LoginState::Public {
                self.cluster.logout();
                login.set(LoginState::Public);
                self.invalidate();
            }
        }
        Ok(())
    }

    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(&self, slot: SlotId) -> Result<()> {
        self.check_slot(slot)?;
        let all: Vec<SessionHandle> = self.sessions.iter().map(|e| *e.key()).collect();
        for s in all {
            let _ = self.close_session(s);
        }
        Ok(())
    }

    /// `C_GetSessionInfo`.
    pub fn session_info(&self, s: SessionHandle) -> Result<SessionInfo> {
        let rw = self.rw_of(s)?;
        Ok(SessionInfo {
            slot: SLOT,
            state: self.session_state(rw),
            flags: CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 },
            device_error: 0,
        })
    }

    /// `C_Login`. `username` is set by `C_LoginUser`.
    pub fn login(
        &self,
        s: SessionHandle,
        user_type: CK_USER_TYPE,
        pin: &[u8],
        username: Option<&[u8]>,
    ) -> Result<()> {
        let sess = self.session(s)?;
        let username = match username {
            Some(u) => Some(
                std::str::from_utf8(u).map_err(|_| Error::ArgumentsBad("username is not UTF-8"))?,
            ),
            None => None,
        };
        let login = self.login.lock()?;
        match user_type {
            CKU_CONTEXT_SPECIFIC => {
                let role = match login.get() {
                    LoginState::Public => return Err(Error::UserNotLoggedIn),
                    LoginState::User => Role::User,
                    LoginState::So => Role::Officer,
                };
                drop(login);
                // Re-authenticate the same user; the member sessions stay logged in either way.
                self.cluster.check_pin(role, pin, username)?;
                sess.lock().context_authenticated = true;
                Ok(())
            }
            CKU_SO | CKU_USER => {
                let wanted = if user_type == CKU_SO {
                    LoginState::So
                } else {
                    LoginState::User
                };
                match login.get() {
                    LoginState::Public => {}
                    l if l == wanted => return Err(Error::UserAlreadyLoggedIn),
                    _ => return Err(Error::UserAnotherAlreadyLoggedIn),
                }
                if wanted == LoginState::So {
                    let ro_exists = self.sessions.iter().any(|e| !e.value().lock().rw);
                    if ro_exists {
                        return Err(Error::SessionReadOnlyExists);
                    }
                }
                let role = if wanted == LoginState::So {
                    Role::Officer
                } else {
                    Role::User
                };
                self.cluster.login(role, pin, username)?;
                login.set(wanted);
                self.invalidate();
                tracing::info!(user_type, "application logged in");
                let level = self
                    .level_at_login
                    .load(std::sync::atomic::Ordering::Relaxed);
                if self.cluster.members.len() > 1 && level {
                    let n = self.cluster.level_all();
                    if n > 0 {
                        tracing::info!(objects = n, "members brought level at login");
                    }
                }
                Ok(())
            }
            _ => Err(Error::UserTypeInvalid),
        }
    }

    /// `C_Logout`.
    pub fn logout(&self, s: SessionHandle) -> Result<()> {
        self.session(s)?;
        let login = self.login.lock()?;
        if login.get() == LoginState::Public {
            return Err(Error::UserNotLoggedIn);
        }
        self.cluster.logout();
        login.set(LoginState::Public);
        self.invalidate();
        // Operations and finds may hold private keys or handles: end them all.
        for e in self.sessions.iter() {
            let mut sess = e.value().lock();
            sess.find = None;
            sess.ops = Default::default();
        }
        Ok(())
    }
}
