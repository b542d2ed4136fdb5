//! Users and their PINs (PBKDF2 hashes, lockout after failed logins), `C_InitToken` (which
//! checks the old SO PIN and makes the crypto officer anew), the login state of member
//! sessions, and the users capability: a crypto officer's changes, and the records and
//! counters that keep every member of a cluster in step (`hsmpool_member::users`).

use aws_lc_rs::pbkdf2;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki_sys::*;
use hsmpool_member::users::{
    vendor_rv_name, Approval, QuorumToken, UserChange, UserSet, UserState,
    CKR_HSMPOOL_LAST_OFFICER, CKR_HSMPOOL_QUORUM_REQUIRED, CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED,
    CKR_HSMPOOL_QUORUM_TOKEN_INVALID, CKR_HSMPOOL_QUORUM_TOO_HIGH, CKR_HSMPOOL_USER_EXISTS,
    CKR_HSMPOOL_USER_NOT_FOUND, CKR_HSMPOOL_USER_OWNS_KEYS, MAX_TRUST_ANCHORS, QUORUM_RECORD,
    QUORUM_TOKEN_TTL_MS, TRUST_RECORD,
};
use zeroize::Zeroizing;

use crate::error::{SimError, SimResult};
use crate::store::UserMeta;

use super::common::now_ms;
use super::{Hsm, Role, User, DEFAULT_SO, DEFAULT_USER, MAX_PIN_LEN, MIN_PIN_LEN};

/// The digest domain of user records.
const USER_DIGEST: &[u8] = b"hsmpool user record v1";

impl User {
    fn new(role: Role, pin: &[u8], iterations: u32, meta: UserMeta) -> SimResult<User> {
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
            meta,
            extra: Vec::new(),
        })
    }
    fn check(&self, pin: &[u8]) -> bool {
        let Some(iters) = std::num::NonZeroU32::new(self.iterations) else {
            return false;
        };
        self.live()
            && pbkdf2::verify(
                pbkdf2::PBKDF2_HMAC_SHA256,
                iters,
                &self.salt,
                pin,
                &self.hash,
            )
            .is_ok()
    }
    /// A deleted user's tombstone at `version`: no hash.
    fn tombstone(role: Role, version: u64, counters: (u64, u32)) -> User {
        User {
            role,
            salt: Vec::new(),
            hash: Zeroizing::new(Vec::new()),
            iterations: 0,
            meta: UserMeta {
                version,
                deleted: true,
                locked: false,
                resets: counters.0,
                failures: counters.1,
            },
            extra: Vec::new(),
        }
    }

    /// What travels between members (inside a sealed blob): the epoch, role, version,
    /// tombstone, lock, counters and the stored record (iterations, salt, hash).
    fn clone_record(&self, epoch: u64) -> Zeroizing<Vec<u8>> {
        let mut r = Zeroizing::new(Vec::new());
        r.extend_from_slice(&epoch.to_be_bytes());
        r.push(self.role.code());
        r.extend_from_slice(&self.meta.version.to_be_bytes());
        r.push(u8::from(self.meta.deleted));
        r.push(u8::from(self.meta.locked));
        r.extend_from_slice(&self.meta.resets.to_be_bytes());
        r.extend_from_slice(&self.meta.failures.to_be_bytes());
        r.extend_from_slice(&(self.extra.len() as u32).to_be_bytes());
        r.extend_from_slice(&self.extra);
        r.extend_from_slice(&self.record());
        r
    }

    /// The inverse of [`User::clone_record`]: (epoch, user).
    fn from_clone_record(r: &[u8]) -> Option<(u64, User)> {
        let epoch = u64::from_be_bytes(r.get(..8)?.try_into().ok()?);
        let role = Role::from_code(*r.get(8)?)?;
        let version = u64::from_be_bytes(r.get(9..17)?.try_into().ok()?);
        let deleted = *r.get(17)? == 1;
        let locked = *r.get(18)? == 1;
        let resets = u64::from_be_bytes(r.get(19..27)?.try_into().ok()?);
        let failures = u32::from_be_bytes(r.get(27..31)?.try_into().ok()?);
        let extra_len = u32::from_be_bytes(r.get(31..35)?.try_into().ok()?) as usize;
        let extra = r.get(35..35 + extra_len)?.to_vec();
        let r = &r[35 + extra_len..];
        let meta = UserMeta {
            version,
            deleted,
            locked,
            resets,
            failures,
        };
        let user = if deleted {
            User::tombstone(role, version, (resets, failures))
        } else {
            User::from_record(role, r, meta, extra)?
        };
        Some((epoch, user))
    }
}

/// An outcome for the audit log: `ok`, or the code it was refused with.
pub(super) fn outcome<T>(r: &SimResult<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(SimError::Rv(rv)) => match vendor_rv_name(*rv) {
            Some(name) => format!("refused: {name}"),
            None => format!("refused: {rv:#x}"),
        },
        Err(SimError::Store(_)) => "failed: store error".into(),
    }
}

/// Whether `name` may name a user: 1 to 64 bytes, no `:` (the PIN's separator), no control
/// characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.contains(':')
        && !name.chars().any(char::is_control)
}

impl Hsm {
    pub(super) fn login_of(&self, sess: u64) -> SimResult<Option<(Role, String)>> {
        self.sessions
            .get(&sess)
            .map(|s| s.login.clone())
            .ok_or(SimError::Rv(CKR_SESSION_HANDLE_INVALID))
    }

    /// The user a login as `role` with `pin` names: `name` of `name:password` when a live
    /// user of that role has that name, else the default user (or officer). With the name,
    /// the PIN's password part.
    fn resolve<'p>(&self, role: Role, pin: &'p [u8]) -> (String, &'p [u8]) {
        if let Some(pos) = pin.iter().position(|b| *b == b':') {
            if let Ok(name) = std::str::from_utf8(&pin[..pos]) {
                let named = self
                    .users
                    .read()
                    .get(name)
                    .is_some_and(|u| u.role == role && u.live());
                if named {
                    return (name.to_string(), &pin[pos + 1..]);
                }
            }
        }
        let default = match role {
            Role::Officer => DEFAULT_SO,
            Role::User => DEFAULT_USER,
        };
        (default.to_string(), pin)
    }

    /// Whether `name` is a live crypto user (one a key may be shared with).
    pub(super) fn is_crypto_user(&self, name: &str) -> bool {
        self.catch_up();
        self.users
            .read()
            .get(name)
            .is_some_and(|u| u.live() && u.role == Role::User)
    }

    /// Log a member session in. A PIN `name:password` names the user when such a user of that
    /// role exists; otherwise the whole PIN is the default user's (or default SO's).
    pub fn login(&self, sess: u64, role: Role, pin: &[u8]) -> SimResult<()> {
        // fault hook: in `login_named`, which every path of `login` reaches.
        self.catch_up();
        let (name, password) = self.resolve(role, pin);
        self.login_named(sess, role, &name, password)
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
        let role_name = match role {
            Role::Officer => "officer",
            Role::User => "user",
        };
        let found = self
            .users
            .read()
            .get(name)
            .filter(|u| u.role == role && u.live() && !name.starts_with(':'))
            .cloned();
        let Some(user) = found else {
            self.audit("login", name, role_name, "refused: no such user");
            return Err(SimError::Rv(
                if role == Role::User && name == DEFAULT_USER {
                    CKR_USER_PIN_NOT_INITIALIZED
                } else {
                    CKR_PIN_INCORRECT
                },
            ));
        };
        // The store's counters, not memory's: another process sharing the store may have
        // counted failures since this one last read it.
        let (resets, failures) = self
            .store
            .counters(name)?
            .unwrap_or((user.meta.resets, user.meta.failures));
        if user.meta.locked || failures >= self.cfg.max_login_failures {
            self.audit("login", name, role_name, "refused: locked");
            return Err(SimError::Rv(CKR_PIN_LOCKED));
        }
        if !user.check(pin) {
            let now = self.store.add_failure(name)?;
            self.counters_now(name, now);
            let detail = format!(
                "refused: wrong password ({} of {} tries)",
                now.map_or(failures + 1, |(_, f)| f),
                self.cfg.max_login_failures
            );
            self.audit("login", name, role_name, &detail);
            return Err(SimError::Rv(CKR_PIN_INCORRECT));
        }
        self.audit("login", name, role_name, "ok");
        if failures > 0 {
            let now = self.store.merge_counters(name, resets + 1, 0)?;
            self.counters_now(name, now);
        }
        if let Some(mut s) = self.sessions.get_mut(&sess) {
            s.login = Some((role, name.to_string()));
        }
        Ok(())
    }

    /// Memory takes the store's counters for `name`.
    fn counters_now(&self, name: &str, now: Option<(u64, u32)>) {
        if let (Some((resets, failures)), Some(u)) = (now, self.users.write().get_mut(name)) {
            u.meta.resets = resets;
            u.meta.failures = failures;
        }
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
    /// object and every user but the SO, and raising the token's epoch.
    pub fn init_token(&self, so_pin: &[u8], label: &[u8; 32]) -> SimResult<()> {
        Self::check_pin_len(so_pin)?;
        let initialized = self.token.read().initialized;
        if initialized {
            let sess = self.open_session();
            let r = self.login_named(sess, Role::Officer, DEFAULT_SO, so_pin);
            self.sessions.remove(&sess);
            r?;
        }
        let meta = UserMeta {
            version: 1,
            ..UserMeta::default()
        };
        let so = User::new(Role::Officer, so_pin, self.cfg.pin_iterations, meta)?;
        let epoch = self.token.read().epoch + 1;
        self.wipe_for(epoch)?;
        self.store.set_meta("label", label)?;
        self.store.set_meta("initialized", &[1])?;
        self.put(DEFAULT_SO, so)?;
        {
            let mut t = self.token.write();
            t.initialized = true;
            t.label = *label;
        }
        let detail = format!("every object and user removed; epoch {epoch}");
        self.audit("token_init", DEFAULT_SO, "-", &detail);
        Ok(())
    }

    /// Remove every object and user, and take `epoch` (a `C_InitToken` here, or one made
    /// elsewhere that this member missed).
    fn wipe_for(&self, epoch: u64) -> SimResult<()> {
        self.store.wipe(&[])?;
        self.store.set_meta("epoch", &epoch.to_be_bytes())?;
        self.users.write().clear();
        self.objects.clear();
        self.index.clear();
        self.token.write().epoch = epoch;
        Ok(())
    }

    /// Store a user record (store first), then show it.
    fn put(&self, name: &str, user: User) -> SimResult<()> {
        self.store.put_user(
            name,
            user.role.code(),
            &user.record(),
            &user.meta,
            &user.extra,
        )?;
        self.users.write().insert(name.to_string(), user);
        Ok(())
    }

    /// `C_InitPIN`: the SO sets the default user's PIN (creating the user, unlocking it).
    pub fn init_pin(&self, sess: u64, pin: &[u8]) -> SimResult<()> {
        self.fault_check()?; // fault hook
        match self.login_of(sess)? {
            Some((Role::Officer, _)) => {}
            _ => return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
        let done = self.set_password(DEFAULT_USER, Role::User, pin);
        self.audit("init_pin", &self.actor(sess), DEFAULT_USER, &outcome(&done));
        done
    }

    /// A crypto officer logged in on `sess` adds (or resets) a named user.
    pub fn add_user(&self, sess: u64, name: &str, role: Role, pin: &[u8]) -> SimResult<()> {
        self.fault_check()?; // fault hook
        match self.login_of(sess)? {
            Some((Role::Officer, _)) => {
                let done = self.set_password(name, role, pin);
                self.audit("user_reset", &self.actor(sess), name, &outcome(&done));
                done
            }
            _ => Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
    }

    /// Names, roles and failed logins of every user (tombstones left out).
    pub fn users(&self) -> Vec<(String, Role, u32)> {
        let mut v: Vec<_> = self
            .users
            .read()
            .iter()
            .filter(|(n, u)| u.live() && !n.starts_with(':'))
            .map(|(n, u)| (n.clone(), u.role, u.meta.failures))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A new password for `name` with `role` (creating the user if it does not exist): a new
    /// version, unlocked, its failures cleared.
    fn set_password(&self, name: &str, role: Role, pin: &[u8]) -> SimResult<()> {
        Self::check_pin_len(pin)?;
        if !valid_name(name) {
            return Err(SimError::Rv(CKR_ARGUMENTS_BAD));
        }
        let fresh = User::new(role, pin, self.cfg.pin_iterations, UserMeta::default())?;
        self.replace(name, |old| {
            let (version, resets) = old.map_or((0, 0), |o| (o.meta.version, o.meta.resets));
            let mut u = fresh;
            u.meta = UserMeta {
                version: version + 1,
                resets: resets + 1,
                ..UserMeta::default()
            };
            Ok(u)
        })
    }

    /// Replace `name`'s record by what `f` makes of the current one (`None`: no record, not
    /// even a tombstone; the counters as the store has them now), under the users lock so two
    /// changes on this member never share a version. `f` answering `None` changes nothing.
    fn replace_if(
        &self,
        name: &str,
        f: impl FnOnce(Option<&User>) -> SimResult<Option<User>>,
    ) -> SimResult<()> {
        let mut users = self.users.write();
        let mut cur = users.get(name).cloned();
        if let (Some(c), Some((resets, failures))) = (&mut cur, self.store.counters(name)?) {
            c.meta.resets = resets;
            c.meta.failures = failures;
        }
        let Some(new) = f(cur.as_ref())? else {
            return Ok(());
        };
        self.store
            .put_user(name, new.role.code(), &new.record(), &new.meta, &new.extra)?;
        // The store never lowers counters on a replace (another process may have counted):
        // memory takes what it holds.
        let mut new = new;
        if let Some((resets, failures)) = self.store.counters(name)? {
            new.meta.resets = resets;
            new.meta.failures = failures;
        }
        users.insert(name.to_string(), new);
        Ok(())
    }

    /// [`Hsm::replace_if`] for a change that always writes.
    fn replace(
        &self,
        name: &str,
        f: impl FnOnce(Option<&User>) -> SimResult<User>,
    ) -> SimResult<()> {
        self.replace_if(name, |old| f(old).map(Some))
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
        let fresh = User::new(role, new, self.cfg.pin_iterations, UserMeta::default())?;
        let done = self.replace(&name, |old| {
            let old = old.ok_or(SimError::Rv(CKR_USER_PIN_NOT_INITIALIZED))?;
            let mut u = fresh;
            u.meta = UserMeta {
                version: old.meta.version + 1,
                ..old.meta
            };
            Ok(u)
        });
        self.audit("set_pin", &name, &name, &outcome(&done));
        done
    }

    /// The users capability: a crypto officer's change to one user.
    pub fn change_user(&self, sess: u64, change: &UserChange) -> SimResult<()> {
        self.change_user_approved(sess, change, &Approval::default())
    }

    /// The users capability: a crypto officer's change to one user, with the officers'
    /// approvals a quorum-protected change needs (see `hsmpool_member::QuorumToken`).
    pub fn change_user_approved(
        &self,
        sess: u64,
        change: &UserChange,
        approval: &Approval,
    ) -> SimResult<()> {
        let done = self.change_user_record(sess, change, approval);
        let kind = match change {
            UserChange::Create { .. } => "user_create",
            UserChange::Password { .. } => "user_password",
            UserChange::Delete { .. } => "user_delete",
            UserChange::Lock { .. } => "user_lock",
            UserChange::Unlock { .. } => "user_unlock",
            UserChange::SetRole { .. } => "user_role",
            UserChange::SetApprovalKey { .. } => "approval_key",
            UserChange::SetQuorum { .. } => "quorum_set",
            UserChange::SetTrustAnchors { .. } => "trust_set",
        };
        let mut detail = match (change, &done) {
            (UserChange::Delete { force: true, .. }, Ok(_)) => "ok (forced)".to_string(),
            (UserChange::SetRole { role, .. }, Ok(_)) => format!("ok: now {role:?}"),
            (UserChange::SetQuorum { m }, Ok(_)) => format!("ok: {m} approvals from now on"),
            (UserChange::SetTrustAnchors { anchors }, Ok(_)) => format!(
                "ok: {} cluster certificate(s): {}",
                anchors.len(),
                anchors
                    .iter()
                    .map(|a| a[..8]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => outcome(&done),
        };
        if let Ok(approvers) = &done {
            if !approvers.is_empty() {
                detail.push_str(&format!(" (approved by {})", approvers.join(", ")));
            }
        }
        self.audit(kind, &self.actor(sess), change.name(), &detail);
        done?;
        if matches!(change, UserChange::Delete { .. }) {
            self.orphan_objects_of(change.name())?;
        }
        Ok(())
    }

    /// Token objects of a deleted user belong to no one who can log in: their owner becomes
    /// `NAME:deleted-VERSION` (a name no user can have), the same on every member, as each
    /// applies the same tombstone. Its key approvals go too (a new user of the name gets none).
    fn orphan_objects_of(&self, name: &str) -> SimResult<()> {
        let version = match self.users.read().get(name) {
            Some(u) if !u.live() => u.meta.version,
            _ => return Ok(()),
        };
        self.store.drop_key_approvals_of(name)?;
        // Nor the keys shared with this name.
        self.unshare_all(name)?;
        let orphaned = format!("{name}:deleted-{version}");
        let n = self.reown(name, &orphaned)?;
        if n > 0 {
            tracing::warn!(
                user = name,
                objects = n,
                owner = %orphaned,
                "a deleted user's token objects now belong to no one"
            );
        }
        Ok(())
    }

    /// The cluster certificates (SHA-256 of each DER) a daemon accepts clients under: empty
    /// for any chain to the customer CA (see `UserChange::SetTrustAnchors`).
    pub fn trust_anchors(&self) -> Vec<[u8; 32]> {
        self.catch_up();
        self.users
            .read()
            .get(TRUST_RECORD)
            .filter(|t| t.live())
            .map(|t| {
                t.extra
                    .chunks_exact(32)
                    .filter_map(|c| c.try_into().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The approvals a quorum-protected change needs now (1: none).
    fn quorum_m(&self) -> u32 {
        self.users
            .read()
            .get(QUORUM_RECORD)
            .filter(|q| q.live())
            .and_then(|q| q.extra.as_slice().try_into().ok())
            .map_or(1, u32::from_be_bytes)
            .max(1)
    }

    /// Whether the quorum policy protects `change` made by officer `me`: creating and
    /// deleting users, another user's password, roles, and the policy itself.
    fn quorum_protects(change: &UserChange, me: &str) -> bool {
        match change {
            UserChange::Create { .. }
            | UserChange::Delete { .. }
            | UserChange::SetRole { .. }
            | UserChange::SetQuorum { .. }
            | UserChange::SetTrustAnchors { .. } => true,
            UserChange::Password { name, .. } => name != me,
            _ => false,
        }
    }

    /// The officers whose valid signatures `approval` carries for `change`, when at least
    /// `m` distinct ones do and its token is for this change, unused and unexpired.
    fn check_quorum(
        &self,
        change: &UserChange,
        approval: &Approval,
        m: u32,
    ) -> SimResult<Vec<String>> {
        let token = QuorumToken::decode(&approval.token)
            .ok_or(SimError::Rv(CKR_HSMPOOL_QUORUM_REQUIRED))?;
        if token.change != change.code()
            || token.name != change.name()
            || token.params != change.params()
        {
            return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_TOKEN_INVALID));
        }
        let users = self.users.read();
        let current = users.get(change.name()).map_or(0, |u| u.meta.version);
        if token.target_version != current {
            // The change it was made for happened already (or another one did).
            return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_TOKEN_INVALID));
        }
        Self::check_fresh(&token)?;
        let mut approvers = Self::approvers(&users, approval, |_, o| o.role == Role::Officer);
        if approvers.len() < m as usize {
            return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_REQUIRED));
        }
        approvers.sort();
        Ok(approvers)
    }

    /// `CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED` for a token past its expiry, living longer than a
    /// token may, or issued in the future (beyond a minute of clock skew between members).
    pub(super) fn check_fresh(token: &QuorumToken) -> SimResult<()> {
        let now = now_ms();
        let skew = 60_000;
        if now > token.expires_ms
            || token.expires_ms.saturating_sub(token.issued_ms) > QUORUM_TOKEN_TTL_MS
            || token.issued_ms > now + skew
        {
            return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED));
        }
        Ok(())
    }

    /// The users whose signatures in `approval` verify over its token, each counted once:
    /// live, unlocked, `eligible`, with a registered approval key, and distinct keys (one
    /// signature presented under two names, by a user that registered another's public key,
    /// counts once).
    fn approvers(
        users: &std::collections::HashMap<String, User>,
        approval: &Approval,
        eligible: impl Fn(&str, &User) -> bool,
    ) -> Vec<String> {
        let mut approvers: Vec<String> = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        for (name, sig) in &approval.signatures {
            if approvers.contains(name) || name.starts_with(':') {
                continue;
            }
            let Some(u) = users
                .get(name)
                .filter(|u| u.live() && !u.meta.locked && eligible(name, u))
            else {
                continue;
            };
            if u.extra.is_empty() || keys.contains(&u.extra.as_slice()) {
                continue;
            }
            let key = aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                &u.extra,
            );
            if key.verify(&approval.token, sig).is_ok() {
                approvers.push(name.clone());
                keys.push(&u.extra);
            }
        }
        approvers
    }

    /// [`Hsm::approvers`] over this member's users.
    pub(super) fn approvers_among(
        &self,
        approval: &Approval,
        eligible: impl Fn(&str, Role) -> bool,
    ) -> Vec<String> {
        Self::approvers(&self.users.read(), approval, |n, u| eligible(n, u.role))
    }

    /// How many of the crypto users `names` can approve: live, with an approval key (distinct
    /// keys counted once).
    pub(super) fn users_with_approval_keys(&self, names: &[String]) -> u32 {
        let users = self.users.read();
        let mut keys: Vec<&[u8]> = Vec::new();
        for n in names {
            if let Some(u) = users.get(n).filter(|u| u.live() && u.role == Role::User) {
                if !u.extra.is_empty() && !keys.contains(&u.extra.as_slice()) {
                    keys.push(&u.extra);
                }
            }
        }
        keys.len() as u32
    }

    /// A new token (random nonce, ten minutes from now).
    pub(super) fn new_token(
        change: u8,
        name: &str,
        params: Vec<u8>,
        target_version: u64,
    ) -> SimResult<QuorumToken> {
        let mut nonce = [0u8; 16];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SimError::Rv(CKR_DEVICE_ERROR))?;
        let issued_ms = now_ms();
        Ok(QuorumToken {
            change,
            name: name.to_string(),
            params,
            target_version,
            issued_ms,
            expires_ms: issued_ms + QUORUM_TOKEN_TTL_MS,
            nonce,
        })
    }

    /// The users capability: a quorum token for `change` (an officer's session).
    pub fn quorum_token(&self, sess: u64, change: &UserChange) -> SimResult<Vec<u8>> {
        self.fault_check()?; // fault hook
        self.catch_up();
        match self.login_of(sess)? {
            Some((Role::Officer, _)) => {}
            _ => return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
        let version = self
            .users
            .read()
            .get(change.name())
            .map_or(0, |u| u.meta.version);
        let token = Self::new_token(change.code(), change.name(), change.params(), version)?;
        self.audit(
            "quorum_token",
            &self.actor(sess),
            change.name(),
            &format!("for: {}", change.verb()),
        );
        Ok(token.encode())
    }

    /// Make `change`; with quorum, the officers who approved it.
    fn change_user_record(
        &self,
        sess: u64,
        change: &UserChange,
        approval: &Approval,
    ) -> SimResult<Vec<String>> {
        self.fault_check()?; // fault hook
        self.catch_up();
        let me = match self.login_of(sess)? {
            Some((Role::Officer, me)) => me,
            // A crypto user registers its own approval key (it approves its keys' use).
            Some((Role::User, me)) if matches!(change, UserChange::SetApprovalKey { .. }) => me,
            _ => return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        };
        let name = change.name();
        if !valid_name(name) && name != QUORUM_RECORD && name != TRUST_RECORD {
            return Err(SimError::Rv(CKR_ARGUMENTS_BAD));
        }
        let m = self.quorum_m();
        let approved = if m > 1 && Self::quorum_protects(change, &me) {
            let who = self.check_quorum(change, approval, m)?;
            Some(who)
        } else {
            None
        };
        // With a quorum, the record must still be the version the token was made for when
        // the change is made (checked again under the users lock).
        let expect = approved
            .as_ref()
            .and_then(|_| QuorumToken::decode(&approval.token).map(|t| t.target_version));
        let others_keys: Vec<Vec<u8>> = self
            .users
            .read()
            .iter()
            .filter(|(n, u)| n.as_str() != name && u.live() && !u.extra.is_empty())
            .filter(|(n, _)| !n.starts_with(':'))
            .map(|(_, u)| u.extra.clone())
            .collect();
        let officers_with_keys = self
            .users
            .read()
            .iter()
            .filter(|(n, u)| {
                !n.starts_with(':')
                    && u.live()
                    && u.role == Role::Officer
                    && !u.meta.locked
                    && !u.extra.is_empty()
            })
            .count() as u32;
        // Hash outside the users lock (PBKDF2 is slow on purpose).
        let fresh = match change {
            UserChange::Create { role, password, .. } => {
                Self::check_pin_len(password)?;
                Some(User::new(
                    *role,
                    password,
                    self.cfg.pin_iterations,
                    UserMeta::default(),
                )?)
            }
            UserChange::Password { password, .. } => {
                Self::check_pin_len(password)?;
                Some(User::new(
                    Role::User,
                    password,
                    self.cfg.pin_iterations,
                    UserMeta::default(),
                )?)
            }
            _ => None,
        };
        let officers = self
            .users
            .read()
            .iter()
            .filter(|(n, u)| {
                !n.starts_with(':') && u.live() && u.role == Role::Officer && !u.meta.locked
            })
            .count();
        self.replace(name, |old| {
            if expect.is_some_and(|v| v != old.map_or(0, |o| o.meta.version)) {
                return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_TOKEN_INVALID));
            }
            let live = old.filter(|u| u.live());
            let next = old.map_or(1, |o| o.meta.version + 1);
            // An officer's own account, or the last usable officer, is never removed, locked
            // or demoted: the cluster would lose its administration; nor one whose approval
            // the quorum needs (fewer officers with approval keys than M would remain).
            let keeps_officer = |u: &User| {
                let needed = u.role == Role::Officer
                    && !u.extra.is_empty()
                    && officers_with_keys <= m
                    && m > 1;
                if u.role == Role::Officer && (name == me || officers <= 1 || needed) {
                    Err(SimError::Rv(CKR_HSMPOOL_LAST_OFFICER))
                } else {
                    Ok(())
                }
            };
            match (change, live, fresh) {
                (UserChange::SetQuorum { m: new_m }, _, _) => {
                    if *new_m == 0 {
                        return Err(SimError::Rv(CKR_ARGUMENTS_BAD));
                    }
                    // A quorum no set of officers can meet locks the cluster out of its
                    // own administration.
                    if *new_m > 1 && *new_m > officers_with_keys {
                        return Err(SimError::Rv(CKR_HSMPOOL_LAST_OFFICER));
                    }
                    let mut q = User::tombstone(Role::Officer, next, (0, 0));
                    q.meta.deleted = false;
                    q.extra = new_m.to_be_bytes().to_vec();
                    Ok(q)
                }
                (UserChange::SetTrustAnchors { anchors }, _, _) => {
                    if anchors.len() > MAX_TRUST_ANCHORS {
                        return Err(SimError::Rv(CKR_ARGUMENTS_BAD));
                    }
                    let mut t = User::tombstone(Role::Officer, next, (0, 0));
                    t.meta.deleted = false;
                    t.extra = anchors.concat();
                    Ok(t)
                }
                (UserChange::SetApprovalKey { public_key, .. }, Some(o), _) => {
                    if name != me {
                        return Err(SimError::Rv(CKR_ACTION_PROHIBITED));
                    }
                    if !(public_key.is_empty() || (public_key.len() == 65 && public_key[0] == 4)) {
                        return Err(SimError::Rv(CKR_ARGUMENTS_BAD));
                    }
                    if public_key.is_empty()
                        && o.role == Role::Officer
                        && officers_with_keys <= m
                        && m > 1
                    {
                        return Err(SimError::Rv(CKR_HSMPOOL_LAST_OFFICER));
                    }
                    // Another officer's key is not a second approval.
                    if !public_key.is_empty() && others_keys.contains(public_key) {
                        return Err(SimError::Rv(CKR_ACTION_PROHIBITED));
                    }
                    let mut u = o.clone();
                    u.extra = public_key.clone();
                    u.meta.version = next;
                    Ok(u)
                }
                (UserChange::Create { .. }, Some(_), _) => {
                    Err(SimError::Rv(CKR_HSMPOOL_USER_EXISTS))
                }
                (UserChange::Create { .. }, None, Some(mut u)) => {
                    u.meta = UserMeta {
                        version: next,
                        resets: old.map_or(0, |o| o.meta.resets + 1),
                        ..UserMeta::default()
                    };
                    Ok(u)
                }
                (_, None, _) => Err(SimError::Rv(CKR_HSMPOOL_USER_NOT_FOUND)),
                (UserChange::Password { .. }, Some(o), Some(mut u)) => {
                    u.role = o.role;
                    u.meta = UserMeta {
                        version: next,
                        resets: o.meta.resets + 1,
                        ..UserMeta::default()
                    };
                    Ok(u)
                }
                (UserChange::Delete { force, .. }, Some(o), _) => {
                    keeps_officer(o)?;
                    if !force && self.owns_objects(name) {
                        return Err(SimError::Rv(CKR_HSMPOOL_USER_OWNS_KEYS));
                    }
                    // A key whose own quorum needs this user's approval would be lost.
                    if !force && !self.quorum_keys_needing(name).is_empty() {
                        return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_TOO_HIGH));
                    }
                    Ok(User::tombstone(
                        o.role,
                        next,
                        (o.meta.resets, o.meta.failures),
                    ))
                }
                (UserChange::Lock { .. }, Some(o), _) => {
                    keeps_officer(o)?;
                    let mut u = o.clone();
                    u.meta.version = next;
                    u.meta.locked = true;
                    Ok(u)
                }
                (UserChange::Unlock { .. }, Some(o), _) => {
                    let mut u = o.clone();
                    u.meta = UserMeta {
                        version: next,
                        locked: false,
                        resets: o.meta.resets + 1,
                        failures: 0,
                        deleted: false,
                    };
                    Ok(u)
                }
                (UserChange::SetRole { role, .. }, Some(o), _) => {
                    if *role != Role::Officer {
                        keeps_officer(o)?;
                    }
                    let mut u = o.clone();
                    u.role = *role;
                    u.meta.version = next;
                    Ok(u)
                }
                _ => Err(SimError::Rv(CKR_GENERAL_ERROR)),
            }
        })?;
        Ok(approved.unwrap_or_default())
    }

    fn user_state(&self, name: &str, u: &User) -> SimResult<UserState> {
        let key = self.clone_key.as_ref();
        let record = u.record();
        let meta = [
            &u.meta.version.to_be_bytes()[..],
            &[
                u.role.code(),
                u8::from(u.meta.deleted),
                u8::from(u.meta.locked),
            ][..],
        ]
        .concat();
        let parts: [&[u8]; 4] = [name.as_bytes(), &meta, &record, &u.extra];
        let digest = match key {
            Some(k) => k.digest_bytes(USER_DIGEST, &parts),
            None => {
                // A member without a clone key has no other member to compare with; the digest
                // is still a stable fingerprint of the record.
                let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                for p in parts {
                    ctx.update(&(p.len() as u64).to_be_bytes());
                    ctx.update(p);
                }
                let mut out = [0u8; 32];
                out.copy_from_slice(ctx.finish().as_ref());
                out
            }
        };
        Ok(UserState {
            name: name.to_string(),
            role: u.role,
            version: u.meta.version,
            deleted: u.meta.deleted,
            locked: u.meta.locked,
            resets: u.meta.resets,
            failures: u.meta.failures,
            // The quorum record's M is in `UserSet::quorum`; the trust record's certificates
            // are read from here (`UserSet::trust_anchors`).
            approval_key: if name.starts_with(':') && name != TRUST_RECORD {
                Vec::new()
            } else {
                u.extra.clone()
            },
            digest,
        })
    }

    /// A logged-in session (either role).
    fn require_any_login(&self, sess: u64) -> SimResult<()> {
        match self.login_of(sess)? {
            Some(_) => Ok(()),
            None => Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
    }

    /// The users capability: every user record (tombstones included) and the epoch.
    pub fn user_states(&self, sess: u64) -> SimResult<UserSet> {
        self.fault_check()?; // fault hook
        self.require_any_login(sess)?;
        self.catch_up();
        let users: Vec<(String, User)> = self
            .users
            .read()
            .iter()
            .map(|(n, u)| (n.clone(), u.clone()))
            .collect();
        let mut states = Vec::with_capacity(users.len());
        for (n, u) in &users {
            // The store's counters: another process may have counted since.
            let mut s = self.user_state(n, u)?;
            if let Some((r, f)) = self.store.counters(n)? {
                s.resets = r;
                s.failures = f;
            }
            states.push(s);
        }
        states.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(UserSet {
            epoch: self.token.read().epoch,
            max_failures: self.cfg.max_login_failures,
            quorum: self.quorum_m(),
            users: states,
        })
    }

    /// The users capability: one user's record sealed for another member.
    pub fn export_user(&self, sess: u64, name: &str) -> SimResult<Vec<u8>> {
        self.fault_check()?; // fault hook
        self.require_any_login(sess)?;
        let key = self.clone_key_required()?;
        let mut user = self
            .users
            .read()
            .get(name)
            .cloned()
            .ok_or(SimError::Rv(CKR_HSMPOOL_USER_NOT_FOUND))?;
        if let Some((r, f)) = self.store.counters(name)? {
            user.meta.resets = r;
            user.meta.failures = f;
        }
        key.seal_user(name, &user.clone_record(self.token.read().epoch))
    }

    /// The users capability: merge a record sealed by another member (no login needed: see
    /// `hsmpool_member::Users::import_user`).
    pub fn import_user(&self, sess: u64, blob: &[u8]) -> SimResult<()> {
        self.fault_check()?; // fault hook
        if !self.sessions.contains_key(&sess) {
            return Err(SimError::Rv(CKR_SESSION_HANDLE_INVALID));
        }
        let key = self.clone_key_required()?;
        let (name, plain) = key.open_user(blob).inspect_err(|_| {
            tracing::warn!("user blob refused: malformed, changed, or from another cluster");
        })?;
        let (epoch, theirs) =
            User::from_clone_record(&plain).ok_or(SimError::Rv(CKR_WRAPPED_KEY_INVALID))?;
        if !valid_name(&name) && name != QUORUM_RECORD && name != TRUST_RECORD {
            return Err(SimError::Rv(CKR_WRAPPED_KEY_INVALID));
        }
        let mine = self.token.read().epoch;
        if epoch < mine {
            return Ok(());
        }
        if epoch > mine {
            // This member missed a C_InitToken: its users and objects went with it.
            tracing::warn!(
                store = %self.store.path().display(),
                from = mine,
                to = epoch,
                "token re-initialised elsewhere while this member was away: wiping it"
            );
            self.wipe_for(epoch)?;
            self.store.set_meta("initialized", &[1])?;
            self.token.write().initialized = true;
            let detail = format!("re-initialised elsewhere: epoch {mine} to {epoch}");
            self.audit("token_wiped", "-", "-", &detail);
        }
        let counters = (theirs.meta.resets, theirs.meta.failures);
        let rank = self.user_state(&name, &theirs)?;
        let mut taken = false;
        self.replace_if(&name, |old| match old {
            Some(o) if self.user_state(&name, o)?.record_rank() >= rank.record_rank() => Ok(None),
            _ => {
                taken = true;
                Ok(Some(theirs))
            }
        })?;
        if taken {
            let detail = format!("version {} from another member", rank.version);
            self.audit("user_imported", &self.actor(sess), &name, &detail);
        }
        let now = self.store.merge_counters(&name, counters.0, counters.1)?;
        self.counters_now(&name, now);
        self.orphan_objects_of(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::HsmConfig;

    fn pair() -> (tempfile::TempDir, Hsm, Hsm) {
        let d = tempfile::tempdir().unwrap();
        let dirs = [d.path().join("a"), d.path().join("b")];
        crate::cluster::provision(&dirs).unwrap();
        let open = |p: &std::path::Path| {
            let mut c = HsmConfig::new(p.to_path_buf());
            c.pin_iterations = 10;
            let h = Hsm::open(c).unwrap();
            h.init_token(b"so-pin-1", &[b' '; 32]).unwrap();
            h
        };
        let (a, b) = (open(&dirs[0]), open(&dirs[1]));
        (d, a, b)
    }

    fn officer(h: &Hsm) -> u64 {
        let s = h.open_session();
        h.login(s, Role::Officer, b"so-pin-1").unwrap();
        s
    }

    fn state(h: &Hsm, s: u64, name: &str) -> Option<UserState> {
        h.user_states(s)
            .unwrap()
            .users
            .into_iter()
            .find(|u| u.name == name)
    }

    fn create(name: &str, pw: &str) -> UserChange {
        UserChange::Create {
            name: name.into(),
            role: Role::User,
            password: Zeroizing::new(pw.as_bytes().to_vec()),
        }
    }

    #[test]
    fn records_merge_forward_only_and_a_replayed_blob_changes_nothing() {
        let (_d, a, b) = pair();
        let (sa, sb) = (officer(&a), officer(&b));
        a.change_user(sa, &create("alice", "pw-1111")).unwrap();
        let v1 = a.export_user(sa, "alice").unwrap();
        // Importing needs no login, only a session.
        let anon = b.open_session();
        b.import_user(anon, &v1).unwrap();
        assert_eq!(state(&b, sb, "alice"), state(&a, sa, "alice"));
        a.change_user(
            sa,
            &UserChange::Password {
                name: "alice".into(),
                password: Zeroizing::new(b"pw-2222".to_vec()),
            },
        )
        .unwrap();
        let v2 = a.export_user(sa, "alice").unwrap();
        b.import_user(anon, &v2).unwrap();
        // The older record, replayed, is ignored.
        b.import_user(anon, &v1).unwrap();
        assert_eq!(state(&b, sb, "alice").unwrap().version, 2);
        let s = b.open_session();
        assert!(b.login(s, Role::User, b"alice:pw-1111").is_err());
        b.login(s, Role::User, b"alice:pw-2222").unwrap();
        // A deletion's tombstone wins over the live record, and a replay does not revive her.
        a.change_user(
            sa,
            &UserChange::Delete {
                name: "alice".into(),
                force: false,
            },
        )
        .unwrap();
        b.import_user(anon, &a.export_user(sa, "alice").unwrap())
            .unwrap();
        b.import_user(anon, &v2).unwrap();
        let st = state(&b, sb, "alice").unwrap();
        assert!(st.deleted && st.version == 3);
        // Her PIN is now the default user's PIN, and this token has no default user.
        let s = b.open_session();
        assert_eq!(
            b.login(s, Role::User, b"alice:pw-2222").unwrap_err(),
            SimError::Rv(CKR_USER_PIN_NOT_INITIALIZED)
        );
        // A blob changed in transit, or from another cluster, is refused.
        let mut bad = v2.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            b.import_user(anon, &bad).unwrap_err(),
            SimError::Rv(CKR_WRAPPED_KEY_INVALID)
        );
    }

    #[test]
    fn counters_merge_to_the_highest_and_an_unlock_is_not_undone() {
        let (_d, a, b) = pair();
        let (sa, sb) = (officer(&a), officer(&b));
        a.change_user(sa, &create("bob", "pw-1111")).unwrap();
        let anon = b.open_session();
        b.import_user(anon, &a.export_user(sa, "bob").unwrap())
            .unwrap();
        let s = a.open_session();
        for _ in 0..3 {
            assert!(a.login(s, Role::User, b"bob:wrong").is_err());
        }
        b.import_user(anon, &a.export_user(sa, "bob").unwrap())
            .unwrap();
        assert_eq!(state(&b, sb, "bob").unwrap().failures, 3);
        let locked_blob = {
            for _ in 0..2 {
                assert!(a.login(s, Role::User, b"bob:wrong").is_err());
            }
            a.export_user(sa, "bob").unwrap()
        };
        assert_eq!(
            a.login(s, Role::User, b"bob:pw-1111").unwrap_err(),
            SimError::Rv(CKR_PIN_LOCKED)
        );
        a.change_user(sa, &UserChange::Unlock { name: "bob".into() })
            .unwrap();
        b.import_user(anon, &a.export_user(sa, "bob").unwrap())
            .unwrap();
        // The locked counters, arriving late, do not lock him again.
        b.import_user(anon, &locked_blob).unwrap();
        let st = state(&b, sb, "bob").unwrap();
        assert_eq!((st.failures, st.locked), (0, false));
        let s = b.open_session();
        b.login(s, Role::User, b"bob:pw-1111").unwrap();
    }

    #[test]
    fn a_record_from_a_newer_token_wipes_a_member_that_missed_c_init_token() {
        let (_d, a, b) = pair();
        let (sa, sb) = (officer(&a), officer(&b));
        b.change_user(sb, &create("old", "pw-1111")).unwrap();
        let before = b.export_user(sb, "old").unwrap();
        a.init_token(b"so-pin-1", &[b'x'; 32]).unwrap();
        let sa2 = officer(&a);
        assert!(a.login_of(sa).is_ok());
        let anon = b.open_session();
        b.import_user(anon, &a.export_user(sa2, "admin").unwrap())
            .unwrap();
        let sb2 = officer(&b);
        let set = b.user_states(sb2).unwrap();
        assert_eq!(set.epoch, 2);
        assert_eq!(
            set.users
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>(),
            ["admin"]
        );
        // A record of the older token, arriving now, is ignored.
        b.import_user(anon, &before).unwrap();
        assert!(state(&b, sb2, "old").is_none());
    }
}
