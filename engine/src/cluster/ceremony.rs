//! The ceremony that puts one cluster wrapping key on every member, by which token keys travel
//! between members that have no clone path of their own (vendor modules, mixed clusters; see
//! `wrap.rs`). `hsmpool cluster wrap-key` runs it; so does `C_InitToken` on such a cluster,
//! since initialising the members removed the key.
//!
//! # The ceremony
//! Everything runs in the members' crypto-officer (SO) sessions, since only the SO may mark a
//! key `CKA_TRUSTED`:
//! 1. On the first member that already holds a key with the label (else on member 0, made
//!    there): an AES-256 secret key, a token object that is public (`CKA_PRIVATE` false, so the
//!    application's users can wrap under it and the SO can mark it), sensitive, trusted, able
//!    to wrap and unwrap and nothing else, and extractable for the length of the ceremony.
//! 2. For each member that lacks it: that member makes a one-time RSA-3072 transport key pair
//!    as session objects (never stored), the source member wraps the cluster key under its
//!    public half (RSA-OAEP), and the member unwraps it with the private half into a key with
//!    the same attributes. The wrapped bytes live in zeroizing memory for the length of one
//!    copy; the key is never in clear outside an HSM.
//! 3. Every member proves it holds the same key: a throwaway session key wrapped under the
//!    source's copy (RFC 5649, which checks integrity) unwraps under each member's copy.
//! 4. On every member the key is made not extractable; the transport keys go with the sessions.
//!
//! Run again over the same members, it only proves they hold the same key. A key is sealed (not
//! extractable) at the end, so a member added later cannot be given it: run the ceremony with
//! a new label over every member and point `[cluster] wrap_key_label` at it (a rotation).

use std::sync::Arc;

use cryptoki_sys::*;
use hsmpool_member::types::{Attr, MechParam, Mechanism};
use hsmpool_member::{AttrAnswer, MemberError, Role};
use zeroize::Zeroizing;

use crate::backend::{Backend, MemberObject, MemberSession};

/// What the ceremony did on each member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// It already held the key (and proved it is the same).
    Kept,
    /// The key was made here (the first member, when none held it).
    Made,
    /// The key was carried here from the source member.
    Copied,
}

/// How the ceremony's sessions are logged in.
pub enum Auth<'a> {
    /// Fresh sessions, logged in as the SO with this PIN (each member may substitute its own,
    /// `so_pin_from`). A member whose token has no SO now (NSS softokn once its database has a
    /// password answers `CKR_USER_TYPE_INVALID`) is logged in as the user with `user`, if given:
    /// there the user holds keys and may mark them trusted.
    Pins {
        /// The SO PIN.
        so: &'a [u8],
        /// The user PIN, for members without an SO.
        user: Option<&'a [u8]>,
    },
    /// These sessions, one per member, logged in already (the application's SO login: the
    /// end of a ceremony that `C_InitToken` began, see [`super::Cluster::after_init_pin`]).
    Held(Vec<MemberSession>),
}

/// One member's session for the ceremony; logged out (if it logged in) and closed (if it
/// opened it) when dropped.
struct Officer<'a> {
    b: &'a dyn Backend,
    s: MemberSession,
    logged_in: bool,
    opened: bool,
}

impl<'a> Officer<'a> {
    fn open(b: &'a dyn Backend, i: usize, auth: &Auth<'_>) -> Result<Self, String> {
        let (so, user) = match auth {
            Auth::Held(sessions) => {
                let s = *sessions.get(i).ok_or("no session for a member")?;
                return Ok(Officer {
                    b,
                    s,
                    logged_in: false,
                    opened: false,
                });
            }
            Auth::Pins { so, user } => (*so, *user),
        };
        let s = b
            .open_session()
            .map_err(|e| format!("{}: {e}", b.describe()))?;
        let mut o = Officer {
            b,
            s,
            logged_in: false,
            opened: true,
        };
        let rv = |r: &Result<(), MemberError>| match r {
            Err(MemberError::Rv { rv, .. }) => Some(*rv),
            _ => None,
        };
        let mut r = b.login(s, Role::Officer, so, None);
        if rv(&r) == Some(CKR_USER_TYPE_INVALID) {
            let Some(user) = user else {
                return Err(o.err(
                    "crypto officer login",
                    "the token has no security officer now (NSS softokn once its database \
                     has a password); there the user holds the key: give the user PIN too \
                     (HSMPOOL_PIN)",
                ));
            };
            tracing::info!(
                "{}: the token has no security officer now; the ceremony runs as its user",
                b.describe()
            );
            r = b.login(s, Role::User, user, None);
        }
        match rv(&r) {
            // The application is logged in already (login is the application's on a vendor
            // module): the session is in, and the login is not ours to end.
            Some(CKR_USER_ALREADY_LOGGED_IN) => {}
            _ => {
                r.map_err(|e| o.err("login", e))?;
                o.logged_in = true;
            }
        }
        Ok(o)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!("{}: {what}: {e}", self.b.describe())
    }

    fn find_key(&self, label: &str) -> Result<Option<MemberObject>, String> {
        let found = self
            .b
            .find(self.s, &super::wrap::wrap_key_lookup(label))
            .map_err(|e| self.err("find the wrapping key", e))?;
        Ok(found.first().copied())
    }
}

impl Drop for Officer<'_> {
    fn drop(&mut self) {
        if self.logged_in {
            let _ = self.b.logout(self.s);
        }
        if self.opened {
            self.b.close_session(self.s);
        }
    }
}

/// Whether a member could not hold keys in this session because its token has no user yet
/// (NSS softokn: a freshly initialised database lets its SO set the user PIN and nothing
/// else).
fn no_user_yet(e: &MemberError) -> bool {
    matches!(
        e,
        MemberError::Rv {
            rv: CKR_USER_NOT_LOGGED_IN,
            ..
        }
    )
}

/// The cluster wrapping key's attributes (without its value).
fn key_template(label: &str, token: bool) -> Vec<Attr> {
    vec![
        Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::ulong(CKA_KEY_TYPE, CKK_AES),
        Attr::bool(CKA_TOKEN, token),
        Attr::bool(CKA_PRIVATE, false),
        Attr::bytes(CKA_LABEL, label.as_bytes()),
        Attr::bool(CKA_SENSITIVE, true),
        Attr::bool(CKA_EXTRACTABLE, true),
        Attr::bool(CKA_TRUSTED, true),
        Attr::bool(CKA_WRAP, true),
        Attr::bool(CKA_UNWRAP, true),
        Attr::bool(CKA_ENCRYPT, false),
        Attr::bool(CKA_DECRYPT, false),
        Attr::bool(CKA_SIGN, false),
        Attr::bool(CKA_VERIFY, false),
        Attr::bool(CKA_DERIVE, false),
    ]
}

/// RSA-OAEP with SHA-256, or with SHA-1 (all SoftHSMv2 accepts for wrapping).
fn oaep(sha256: bool) -> Mechanism {
    let (hash, mgf) = if sha256 {
        (CKM_SHA256, CKG_MGF1_SHA256)
    } else {
        (CKM_SHA_1, CKG_MGF1_SHA1)
    };
    Mechanism {
        mech: CKM_RSA_PKCS_OAEP,
        param: MechParam::Oaep {
            hash,
            mgf,
            label: Vec::new(),
        },
    }
}

/// A one-time RSA-3072 transport key pair on `o`, both halves session objects; the private
/// half unwraps and does nothing else.
fn transport_pair(o: &Officer<'_>) -> Result<(MemberObject, MemberObject), MemberError> {
    let public = [
        Attr::bool(CKA_TOKEN, false),
        Attr::bool(CKA_PRIVATE, false),
        Attr::ulong(CKA_MODULUS_BITS, 3072),
        Attr::bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
        Attr::bool(CKA_WRAP, true),
        Attr::bool(CKA_ENCRYPT, false),
    ];
    let private = [
        Attr::bool(CKA_TOKEN, false),
        Attr::bool(CKA_PRIVATE, false),
        Attr::bool(CKA_SENSITIVE, true),
        Attr::bool(CKA_EXTRACTABLE, false),
        Attr::bool(CKA_UNWRAP, true),
        Attr::bool(CKA_DECRYPT, false),
    ];
    o.b.generate_key_pair(
        o.s,
        &Mechanism::plain(CKM_RSA_PKCS_KEY_PAIR_GEN),
        &public,
        &private,
    )
}

/// What [`carry`] did.
enum Carried {
    /// The key is on `dst`.
    Done,
    /// `dst` cannot hold keys until its token has a user (see [`no_user_yet`]).
    NoUserYet,
}

/// `key` wrapped on `o` under the RSA public key `transport` with RSA-OAEP: SHA-256, else
/// SHA-1 (all SoftHSMv2 accepts for wrapping, which it says with `CKR_ARGUMENTS_BAD`). The
/// mechanism that did it comes back with the wrapped bytes (in zeroizing memory).
fn oaep_wrap(
    o: &Officer<'_>,
    transport: MemberObject,
    key: MemberObject,
) -> Result<(Mechanism, Zeroizing<Vec<u8>>), MemberError> {
    match o.b.wrap_key(o.s, &oaep(true), transport, key) {
        Ok(w) => Ok((oaep(true), Zeroizing::new(w))),
        Err(e) if matches!(e.rv(), CKR_MECHANISM_PARAM_INVALID | CKR_ARGUMENTS_BAD) => {
            let mech = oaep(false);
            let w = o.b.wrap_key(o.s, &mech, transport, key)?;
            Ok((mech, Zeroizing::new(w)))
        }
        Err(e) => Err(e),
    }
}

/// Carry the key from `src` to `dst` under a one-time transport key made on `dst`.
fn carry(
    src: &Officer<'_>,
    key: MemberObject,
    dst: &Officer<'_>,
    label: &str,
) -> Result<Carried, String> {
    let (pubk, privk) = match transport_pair(dst) {
        Ok(pair) => pair,
        Err(e) if no_user_yet(&e) => return Ok(Carried::NoUserYet),
        Err(e) => return Err(dst.err("make the transport key", e)),
    };
    let parts = dst
        .b
        .get_attributes(dst.s, pubk, &[CKA_MODULUS, CKA_PUBLIC_EXPONENT])
        .map_err(|e| dst.err("read the transport key", e))?;
    let value = |i: usize| match parts.get(i) {
        Some(AttrAnswer::Value(v)) => Ok(v.clone()),
        _ => Err(dst.err("read the transport key", "no value")),
    };
    let (modulus, exponent) = (value(0)?, value(1)?);
    let transport = src
        .b
        .create_object(
            src.s,
            &[
                Attr::ulong(CKA_CLASS, CKO_PUBLIC_KEY),
                Attr::ulong(CKA_KEY_TYPE, CKK_RSA),
                Attr::bool(CKA_TOKEN, false),
                Attr::bool(CKA_PRIVATE, false),
                Attr::bytes(CKA_MODULUS, &modulus),
                Attr::bytes(CKA_PUBLIC_EXPONENT, &exponent),
                Attr::bool(CKA_WRAP, true),
                Attr::bool(CKA_ENCRYPT, false),
            ],
        )
        .map_err(|e| src.err("take in the transport key", e))?;
    let result = match oaep_wrap(src, transport, key) {
        Ok((mech, wrapped)) => {
            match dst
                .b
                .unwrap_key(dst.s, &mech, privk, &wrapped, &key_template(label, true))
            {
                Ok(_) => Ok(Carried::Done),
                Err(e) if no_user_yet(&e) => Ok(Carried::NoUserYet),
                Err(e) => Err(dst.err("unwrap the key", e)),
            }
        }
        Err(e) => Err(src.err("wrap the key for transport", e)),
    };
    for (b, s, o) in [
        (src.b, src.s, transport),
        (dst.b, dst.s, pubk),
        (dst.b, dst.s, privk),
    ] {
        let _ = b.destroy_object(s, o);
    }
    result
}

/// Prove `dst` holds the same key as `src`: a throwaway key wrapped under `src`'s copy unwraps
/// under `dst`'s (RFC 5649 checks integrity, so a different key fails).
fn prove(
    src: &Officer<'_>,
    src_key: MemberObject,
    dst: &Officer<'_>,
    dst_key: MemberObject,
) -> Result<(), String> {
    let throwaway = [
        Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::ulong(CKA_KEY_TYPE, CKK_AES),
        Attr::bool(CKA_TOKEN, false),
        Attr::bool(CKA_PRIVATE, false),
        Attr::ulong(CKA_VALUE_LEN, 32),
        Attr::bool(CKA_EXTRACTABLE, true),
        Attr::bool(CKA_ENCRYPT, true),
    ];
    let k = src
        .b
        .generate_key(src.s, &Mechanism::plain(CKM_AES_KEY_GEN), &throwaway)
        .map_err(|e| src.err("make a test key", e))?;
    let wrapped = src.b.wrap_key(
        src.s,
        &Mechanism::plain(src.b.cluster_wrap_mechanism()),
        src_key,
        k,
    );
    let _ = src.b.destroy_object(src.s, k);
    let wrapped = Zeroizing::new(wrapped.map_err(|e| src.err("wrap a test key", e))?);
    let mut t = throwaway.to_vec();
    t.retain(|a| a.ty != CKA_VALUE_LEN);
    let got = dst
        .b
        .unwrap_key(
            dst.s,
            &Mechanism::plain(dst.b.cluster_wrap_mechanism()),
            dst_key,
            &wrapped,
            &t,
        )
        .map_err(|e| {
            dst.err(
                "unwrap a test key (its wrapping key differs from the others': remove it and run \
                 the ceremony again)",
                e,
            )
        })?;
    let _ = dst.b.destroy_object(dst.s, got);
    Ok(())
}

/// Whether member `o` lets key `k` out under a transport key: it wraps it under a one-time
/// RSA-3072 public key of its own (both halves session objects, removed at once).
fn lets_out(o: &Officer<'_>, k: MemberObject) -> Result<bool, String> {
    let (pubk, privk) = transport_pair(o).map_err(|e| o.err("make a transport key", e))?;
    let answer = match oaep_wrap(o, pubk, k) {
        Ok(_) => Ok(true),
        Err(MemberError::Rv {
            rv: CKR_KEY_NOT_WRAPPABLE,
            ..
        }) => Ok(false),
        Err(e) => Err(o.err("wrap the key for transport", e)),
    };
    let _ = o.b.destroy_object(o.s, pubk);
    let _ = o.b.destroy_object(o.s, privk);
    answer
}

/// Whether a key says it is extractable.
fn extractable(o: &Officer<'_>, k: MemberObject) -> bool {
    let v = o.b.get_attributes(o.s, k, &[CKA_EXTRACTABLE]).ok();
    matches!(v.as_deref(), Some([AttrAnswer::Value(v)]) if v.first() == Some(&1))
}

/// Run the ceremony over `members` (see the module documentation): afterwards every member
/// holds the same trusted, non-extractable wrapping key labelled `label`. Sessions are logged
/// in as the SO with `so_pin`.
pub fn wrap_key_ceremony(
    members: &[Arc<dyn Backend>],
    label: &str,
    so_pin: &[u8],
) -> Result<Vec<Done>, String> {
    let auth = Auth::Pins {
        so: so_pin,
        user: None,
    };
    Ok(run(members, label, &auth, false)?.done)
}

/// What [`run`] did: on each member, and which members wait for a user of their token.
#[derive(Debug)]
pub struct Outcome {
    /// What the ceremony did on each member ([`Done::Kept`] for a waiting one).
    pub done: Vec<Done>,
    /// Members that cannot hold keys until their token has a user (see [`no_user_yet`]),
    /// when `defer` allowed it: the key is not sealed anywhere yet.
    pub waiting: Vec<usize>,
}

/// The ceremony, with its sessions logged in by `auth`. With `defer`, a member that cannot
/// hold keys until its token has a user is left waiting and the key stays unsealed (a freshly
/// initialised token has no user to take it out); without, that is an error.
pub fn run(
    members: &[Arc<dyn Backend>],
    label: &str,
    auth: &Auth<'_>,
    defer: bool,
) -> Result<Outcome, String> {
    let officers: Vec<Officer<'_>> = members
        .iter()
        .enumerate()
        .map(|(i, b)| Officer::open(b.as_ref(), i, auth))
        .collect::<Result<_, _>>()?;
    let mut keys: Vec<Option<MemberObject>> = officers
        .iter()
        .map(|o| o.find_key(label))
        .collect::<Result<_, _>>()?;
    let mut done: Vec<Done> = vec![Done::Kept; members.len()];
    let mut waiting: Vec<usize> = Vec::new();
    let wait = |o: &Officer<'_>, waiting: &mut Vec<usize>, i: usize| {
        if !defer {
            return Err(o.err(
                "hold the wrapping key",
                "the token has no user yet (set the user PIN first, then run the ceremony)",
            ));
        }
        tracing::info!(
            "{}: the token has no user yet: it receives the wrapping key when its user PIN is \
             set (C_InitPIN)",
            o.b.describe()
        );
        waiting.push(i);
        Ok(())
    };
    let lacking = |keys: &[Option<MemberObject>], waiting: &[usize]| {
        (0..keys.len()).any(|i| keys[i].is_none() && !waiting.contains(&i))
    };
    // The member the key is carried from: one that holds it and lets it out under a transport
    // key (our simulator does not: it holds a key worth no less than the key that carries it,
    // and RSA-3072 is worth 128 bits to AES-256's 256).
    let mut carrier: Option<usize> = None;
    let src = match keys.iter().position(Option::is_some) {
        Some(i) => i,
        None => {
            let mut t = key_template(label, true);
            t.push(Attr::ulong(CKA_VALUE_LEN, 32));
            let mut made = None;
            for (i, o) in officers.iter().enumerate() {
                let k = match o
                    .b
                    .generate_key(o.s, &Mechanism::plain(CKM_AES_KEY_GEN), &t)
                {
                    Ok(k) => k,
                    Err(e) if no_user_yet(&e) => {
                        wait(o, &mut waiting, i)?;
                        continue;
                    }
                    Err(e) => return Err(o.err("make the wrapping key", e)),
                };
                if members.len() > 1 && !lets_out(o, k)? {
                    tracing::info!(
                        "{}: its policy keeps the wrapping key from travelling under a \
                         transport key: made on another member",
                        o.b.describe()
                    );
                    o.b.destroy_object(o.s, k)
                        .map_err(|e| o.err("remove the wrapping key it cannot give", e))?;
                    continue;
                }
                made = Some((i, k));
                break;
            }
            let (i, k) = made.ok_or(
                "no member can make a wrapping key it may give the others (before its token \
                 has a user, or by its policy)",
            )?;
            keys[i] = Some(k);
            done[i] = Done::Made;
            carrier = Some(i);
            i
        }
    };
    if carrier.is_none() && lacking(&keys, &waiting) {
        for (i, k) in keys.iter().enumerate() {
            let Some(k) = *k else { continue };
            let o = &officers[i];
            if !extractable(o, k) {
                return Err(format!(
                    "{}: the wrapping key {label:?} was sealed (not extractable) by an earlier \
                     ceremony, so it cannot be carried to a new member: make a new one on \
                     every member with `hsmpool cluster wrap-key --label NEW` and set \
                     [cluster] wrap_key_label = \"NEW\"",
                    o.b.describe()
                ));
            }
            if lets_out(o, k)? {
                carrier = Some(i);
                break;
            }
        }
        if carrier.is_none() {
            return Err(
                "no member that holds the wrapping key lets it out under a transport key".into(),
            );
        }
    }
    let src_key = keys[src].ok_or("no source key")?;
    for i in 0..members.len() {
        if keys[i].is_some() || waiting.contains(&i) {
            continue;
        }
        let c = carrier.ok_or("no carrier")?;
        let c_key = keys[c].ok_or("no carrier key")?;
        match carry(&officers[c], c_key, &officers[i], label)? {
            Carried::NoUserYet => {
                wait(&officers[i], &mut waiting, i)?;
                continue;
            }
            Carried::Done => {}
        }
        keys[i] = officers[i].find_key(label)?;
        if keys[i].is_none() {
            return Err(officers[i].err("the carried key", "not found after unwrapping"));
        }
        done[i] = Done::Copied;
    }
    for i in 0..members.len() {
        if let (true, Some(k)) = (i != src, keys[i]) {
            prove(&officers[src], src_key, &officers[i], k)?;
        }
    }
    if !waiting.is_empty() {
        return Ok(Outcome { done, waiting });
    }
    for (o, k) in officers.iter().zip(&keys) {
        let Some(k) = *k else { continue };
        if extractable(o, k) {
            o.b.set_attributes(o.s, k, &[Attr::bool(CKA_EXTRACTABLE, false)])
                .map_err(|e| o.err("make the wrapping key not extractable", e))?;
        }
        if extractable(o, k) {
            return Err(o.err("the wrapping key", "still extractable after sealing"));
        }
    }
    Ok(Outcome { done, waiting })
}

impl super::Cluster {
    /// After `C_InitToken` initialised every member: where keys travel by wrapping, the members
    /// lost the cluster wrapping key with everything else, so it is made anew (with the SO PIN
    /// the application just gave). A member that cannot hold keys before its token has a user
    /// (NSS softokn) receives it at `C_InitPIN` ([`Self::after_init_pin`]), and the key is
    /// sealed then. A failure is the application's `CKR_DEVICE_ERROR`, with the reason in the
    /// log.
    pub(crate) fn after_init_token(&self, so_pin: &[u8]) -> crate::error::Result<()> {
        if self.copy_path != super::CopyPath::Wrap || self.members.len() < 2 {
            return Ok(());
        }
        let _one = self.wrap_key_ceremony.lock();
        for m in &self.members {
            *m.wrap_key.lock() = None;
        }
        let auth = Auth::Pins {
            so: so_pin,
            user: None,
        };
        match run(&self.backends(), &self.settings.wrap_key_label, &auth, true) {
            Ok(o) if o.waiting.is_empty() => {
                tracing::info!("C_InitToken: a new cluster wrapping key is on every member");
                Ok(())
            }
            Ok(o) => {
                tracing::info!(
                    waiting = ?o.waiting,
                    "C_InitToken: a new cluster wrapping key is on the members that can hold it; \
                     the others receive it when the user PIN is set"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!("C_InitToken: the cluster wrapping key could not be made: {e}");
                Err(crate::error::Error::DeviceError(e))
            }
        }
    }

    /// After `C_InitPIN` on every member: where keys travel by wrapping and a member lacks the
    /// wrapping key (one that waited at `C_InitToken` for a user, in this process or another:
    /// pkcs11-tool initialises the token and the PIN in two), it receives it now, in the
    /// application's SO sessions, and the key is sealed everywhere.
    pub(crate) fn after_init_pin(&self) -> crate::error::Result<()> {
        if self.copy_path != super::CopyPath::Wrap || self.members.len() < 2 {
            return Ok(());
        }
        let _one = self.wrap_key_ceremony.lock();
        let label = &self.settings.wrap_key_label;
        let template = super::wrap::wrap_key_lookup(label);
        let mut lacking = false;
        for m in &self.members {
            let found = self.call(super::Route::Member(m.index), 2, |b, s| {
                b.find(s, &template)
            })?;
            lacking |= found.is_empty();
        }
        if !lacking {
            return Ok(());
        }
        let sessions = self
            .members
            .iter()
            .map(|m| self.session_for(m, 0).map(|(s, _)| s))
            .collect::<crate::error::Result<Vec<_>>>()?;
        match run(&self.backends(), label, &Auth::Held(sessions), false) {
            Ok(_) => {
                for m in &self.members {
                    *m.wrap_key.lock() = None;
                }
                tracing::info!("C_InitPIN: the cluster wrapping key is on every member, sealed");
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "C_InitPIN: the cluster wrapping key could not be given to every member: {e}"
                );
                Err(crate::error::Error::DeviceError(e))
            }
        }
    }

    fn backends(&self) -> Vec<Arc<dyn Backend>> {
        self.members
            .iter()
            .map(|m| Arc::clone(&m.backend))
            .collect()
    }
}
