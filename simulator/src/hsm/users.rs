//! Users and their PINs (PBKDF2 hashes, lockout after failed logins), `C_InitToken` (which
//! checks the old SO PIN and makes the crypto officer anew), and the login state of member
//! sessions.

use aws_lc_rs::pbkdf2;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::error::{SimError, SimResult};

use super::{Hsm, Role, User, DEFAULT_SO, DEFAULT_USER, MAX_PIN_LEN, MIN_PIN_LEN};

impl User {
    fn new(role: Role, pin: &[u8], iterations: u32) -> SimResult<User> {
        let mut salt = vec![0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| SimError::Rv(CKR_DEVICE_ERROR))?;
        let mut hash = Zeroizing::new(vec![0u8; 32]);
        let iters =
            std::num::NonZeroU32::new(iterations.max(1)).ok_or(SimError::Rv(CKR_GENERAL_ERROR))?;
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iters, &salt, pin, &mut hash);
        Ok(User {
            role,
            salt,
            hash,
            iterations: iters.get(),
            failures: 0,
        })
    }
    fn check(&self, pin: &[u8]) -> bool {
        let Some(iters) = std::num::NonZeroU32::new(self.iterations) else {
            return false;
        };
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iters,
            &self.salt,
            pin,
            &self.hash,
        )
        .is_ok()
    }
}

impl Hsm {
    pub(super) fn login_of(&self, sess: u64) -> SimResult<Option<(Role, String)>> {
        self.sessions
            .get(&sess)
            .map(|s| s.login.clone())
            .ok_or(SimError::Rv(CKR_SESSION_HANDLE_INVALID))
    }

    /// Log a member session in. A PIN `name:password` names the user when such a user of that
    /// role exists; otherwise the whole PIN is the default user's (or default SO's).
    pub fn login(&self, sess: u64, role: Role, pin: &[u8]) -> SimResult<()> {
        // fault hook: in `login_named`, which every path of `login` reaches.
        self.catch_up();
        if let Some(pos) = pin.iter().position(|b| *b == b':') {
            if let Ok(name) = std::str::from_utf8(&pin[..pos]) {
                let named = self.users.read().get(name).is_some_and(|u| u.role == role);
                if named {
                    return self.login_named(sess, role, name, &pin[pos + 1..]);
                }
            }
        }
        let default = match role {
            Role::Officer => DEFAULT_SO,
            Role::User => DEFAULT_USER,
        };
        self.login_named(sess, role, default, pin)
    }

    /// Log a member session in as a named user.
    pub fn login_named(&self, sess: u64, role: Role, name: &str, pin: &[u8]) -> SimResult<()> {
        self.fault_check()?; // fault hook
        self.catch_up();
        if !self.token.read().initialized {
            return Err(SimError::Rv(CKR_USER_PIN_NOT_INITIALIZED));
        }
        if !self.sessions.contains_key(&sess) {
            return Err(SimError::Rv(CKR_SESSION_HANDLE_INVALID));
        }
        let (ok, failures) = {
            let users = self.users.read();
            let Some(user) = users.get(name).filter(|u| u.role == role) else {
                return Err(SimError::Rv(
                    if role == Role::User && name == DEFAULT_USER {
                        CKR_USER_PIN_NOT_INITIALIZED
                    } else {
                        CKR_PIN_INCORRECT
                    },
                ));
            };
            if user.failures >= self.cfg.max_login_failures {
                return Err(SimError::Rv(CKR_PIN_LOCKED));
            }
            (user.check(pin), user.failures)
        };
        let new_failures = if ok { 0 } else { failures + 1 };
        if new_failures != failures {
            if let Some(u) = self.users.write().get_mut(name) {
                u.failures = new_failures;
            }
            self.store.set_failures(name, new_failures)?;
        }
        if !ok {
            return Err(SimError::Rv(CKR_PIN_INCORRECT));
        }
        if let Some(mut s) = self.sessions.get_mut(&sess) {
            s.login = Some((role, name.to_string()));
        }
        Ok(())
    }

    /// Log a member session out.
    pub fn logout(&self, sess: u64) -> SimResult<()> {
        self.fault_check()?; // fault hook
        let mut s = self
            .sessions
            .get_mut(&sess)
            .ok_or(SimError::Rv(CKR_SESSION_HANDLE_INVALID))?;
        s.login = None;
        Ok(())
    }

    fn check_pin_len(pin: &[u8]) -> SimResult<()> {
        if pin.len() < MIN_PIN_LEN || pin.len() > MAX_PIN_LEN {
            return Err(SimError::Rv(CKR_PIN_LEN_RANGE));
        }
        Ok(())
    }

    /// `C_InitToken`: initialise, or re-initialise (the SO PIN must then match), wiping every
    /// object and every user but the SO.
    pub fn init_token(&self, so_pin: &[u8], label: &[u8; 32]) -> SimResult<()> {
        Self::check_pin_len(so_pin)?;
        let initialized = self.token.read().initialized;
        if initialized {
            let sess = self.open_session();
            let r = self.login_named(sess, Role::Officer, DEFAULT_SO, so_pin);
            self.sessions.remove(&sess);
            r?;
        }
        let so = User::new(Role::Officer, so_pin, self.cfg.pin_iterations)?;
        self.store.wipe(&[])?;
        self.store
            .put_user(DEFAULT_SO, Role::Officer.code(), &so.record(), 0)?;
        self.store.set_meta("label", label)?;
        self.store.set_meta("initialized", &[1])?;
        {
            let mut users = self.users.write();
            users.clear();
            users.insert(DEFAULT_SO.to_string(), so);
        }
        self.objects.clear();
        self.index.clear();
        let mut t = self.token.write();
        t.initialized = true;
        t.label = *label;
        Ok(())
    }

    /// `C_InitPIN`: the SO sets the default user's PIN (creating the user, unlocking it).
    pub fn init_pin(&self, sess: u64, pin: &[u8]) -> SimResult<()> {
        self.fault_check()?; // fault hook
        match self.login_of(sess)? {
            Some((Role::Officer, _)) => {}
            _ => return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
        self.create_user(DEFAULT_USER, Role::User, pin)
    }

    /// A crypto officer logged in on `sess` adds (or resets) a named user.
    pub fn add_user(&self, sess: u64, name: &str, role: Role, pin: &[u8]) -> SimResult<()> {
        self.fault_check()?; // fault hook
        match self.login_of(sess)? {
            Some((Role::Officer, _)) => self.create_user(name, role, pin),
            _ => Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
    }

    /// Names and roles of every user.
    pub fn users(&self) -> Vec<(String, Role, u32)> {
        let mut v: Vec<_> = self
            .users
            .read()
            .iter()
            .map(|(n, u)| (n.clone(), u.role, u.failures))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn create_user(&self, name: &str, role: Role, pin: &[u8]) -> SimResult<()> {
        Self::check_pin_len(pin)?;
        if name.is_empty() || name.len() > 64 || name.contains(':') {
            return Err(SimError::Rv(CKR_ARGUMENTS_BAD));
        }
        let user = User::new(role, pin, self.cfg.pin_iterations)?;
        self.store.put_user(name, role.code(), &user.record(), 0)?;
        self.users.write().insert(name.to_string(), user);
        Ok(())
    }

    /// `C_SetPIN`: the logged-in user (or, not logged in, the default user) changes its PIN.
    pub fn set_pin(&self, sess: u64, old: &[u8], new: &[u8]) -> SimResult<()> {
        Self::check_pin_len(new)?;
        let (role, name) = match self.login_of(sess)? {
            Some(l) => l,
            None => (Role::User, DEFAULT_USER.to_string()),
        };
        let check = self.open_session();
        let r = self.login_named(check, role, &name, old);
        self.sessions.remove(&check);
        r?;
        self.create_user(&name, role, new)
    }
}
