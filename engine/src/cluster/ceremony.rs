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
use hsmpool_member::{AttrAnswer, Role};
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

/// One member's SO session for the ceremony, logged out and closed when dropped.
struct Officer<'a> {
    b: &'a dyn Backend,
    s: MemberSession,
}

impl<'a> Officer<'a> {
    fn open(b: &'a dyn Backend, so_pin: &[u8]) -> Result<Self, String> {
        let s = b
            .open_session()
            .map_err(|e| format!("{}: {e}", b.describe()))?;
        let o = Officer { b, s };
        b.login(s, Role::Officer, so_pin, None)
            .map_err(|e| o.err("crypto officer login", e))?;
        Ok(o)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!("{}: {what}: {e}", self.b.describe())
    }

    fn find_key(&self, label: &str) -> Result<Option<MemberObject>, String> {
        let t = [
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::bool(CKA_TOKEN, true),
            Attr::bytes(CKA_LABEL, label.as_bytes()),
        ];
        let found = self
            .b
            .find(self.s, &t)
            .map_err(|e| self.err("find the wrapping key", e))?;
        Ok(found.first().copied())
    }
}

impl Drop for Officer<'_> {
    fn drop(&mut self) {
        let _ = self.b.logout(self.s);
        self.b.close_session(self.s);
    }
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

/// Carry the key from `src` to `dst` under a one-time transport key made on `dst`.
fn carry(
    src: &Officer<'_>,
    key: MemberObject,
    dst: &Officer<'_>,
    label: &str,
) -> Result<(), String> {
    let public = [
        Attr::bool(CKA_TOKEN, false),
        Attr::bool(CKA_PRIVATE, false),
        Attr::ulong(CKA_MODULUS_BITS, 3072),
        Attr::bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
        Attr::bool(CKA_WRAP, true),
        Attr::bool(CKA_ENCRYPT, true),
    ];
    let private = [
        Attr::bool(CKA_TOKEN, false),
        Attr::bool(CKA_PRIVATE, false),
        Attr::bool(CKA_SENSITIVE, true),
        Attr::bool(CKA_EXTRACTABLE, false),
        Attr::bool(CKA_UNWRAP, true),
        Attr::bool(CKA_DECRYPT, true),
    ];
    let (pubk, privk) = dst
        .b
        .generate_key_pair(
            dst.s,
            &Mechanism::plain(CKM_RSA_PKCS_KEY_PAIR_GEN),
            &public,
            &private,
        )
        .map_err(|e| dst.err("make the transport key", e))?;
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
                Attr::bool(CKA_ENCRYPT, true),
            ],
        )
        .map_err(|e| src.err("take in the transport key", e))?;
    let mut result = Err(String::new());
    for sha256 in [true, false] {
        let mech = oaep(sha256);
        let wrapped = match src.b.wrap_key(src.s, &mech, transport, key) {
            Ok(w) => Zeroizing::new(w),
            // SoftHSMv2 takes only SHA-1 in OAEP, and says so with CKR_ARGUMENTS_BAD.
            Err(e)
                if sha256 && matches!(e.rv(), CKR_MECHANISM_PARAM_INVALID | CKR_ARGUMENTS_BAD) =>
            {
                continue
            }
            Err(e) => {
                result = Err(src.err("wrap the key for transport", e));
                break;
            }
        };
        result = dst
            .b
            .unwrap_key(dst.s, &mech, privk, &wrapped, &key_template(label, true))
            .map(|_| ())
            .map_err(|e| dst.err("unwrap the key", e));
        break;
    }
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

/// Whether a key says it is extractable.
fn extractable(o: &Officer<'_>, k: MemberObject) -> bool {
    let v = o.b.get_attributes(o.s, k, &[CKA_EXTRACTABLE]).ok();
    matches!(v.as_deref(), Some([AttrAnswer::Value(v)]) if v.first() == Some(&1))
}

/// Run the ceremony over `members` (see the module documentation): afterwards every member
/// holds the same trusted, non-extractable wrapping key labelled `label`.
pub fn wrap_key_ceremony(
    members: &[Arc<dyn Backend>],
    label: &str,
    so_pin: &[u8],
) -> Result<Vec<Done>, String> {
    let officers: Vec<Officer<'_>> = members
        .iter()
        .map(|b| Officer::open(b.as_ref(), so_pin))
        .collect::<Result<_, _>>()?;
    let mut keys: Vec<Option<MemberObject>> = officers
        .iter()
        .map(|o| o.find_key(label))
        .collect::<Result<_, _>>()?;
    let mut done: Vec<Done> = vec![Done::Kept; members.len()];
    let src = match keys.iter().position(Option::is_some) {
        Some(i) => i,
        None => {
            let o = &officers[0];
            let mut t = key_template(label, true);
            t.push(Attr::ulong(CKA_VALUE_LEN, 32));
            let k =
                o.b.generate_key(o.s, &Mechanism::plain(CKM_AES_KEY_GEN), &t)
                    .map_err(|e| o.err("make the wrapping key", e))?;
            keys[0] = Some(k);
            done[0] = Done::Made;
            0
        }
    };
    let src_key = keys[src].ok_or("no source key")?;
    if keys.iter().any(Option::is_none) {
        let o = &officers[src];
        if !extractable(o, src_key) {
            return Err(format!(
                "{}: the wrapping key {label:?} was sealed (not extractable) by an earlier \
                 ceremony, so it cannot be carried to a new member: make a new one on every \
                 member with `hsmpool cluster wrap-key --label NEW` and set [cluster] \
                 wrap_key_label = \"NEW\"",
                o.b.describe()
            ));
        }
    }
    for i in 0..members.len() {
        if keys[i].is_some() {
            continue;
        }
        carry(&officers[src], src_key, &officers[i], label)?;
        keys[i] = officers[i].find_key(label)?;
        if keys[i].is_none() {
            return Err(officers[i].err("the carried key", "not found after unwrapping"));
        }
        done[i] = Done::Copied;
    }
    for i in 0..members.len() {
        if i != src {
            prove(
                &officers[src],
                src_key,
                &officers[i],
                keys[i].ok_or("lost key")?,
            )?;
        }
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
    Ok(done)
}

impl super::Cluster {
    /// After `C_InitToken` initialised every member: where keys travel by wrapping, the members
    /// lost the cluster wrapping key with everything else, so it is made anew (with the SO PIN
    /// the application just gave); a failure is the application's `CKR_DEVICE_ERROR`, with the
    /// reason in the log.
    pub(crate) fn after_init_token(&self, so_pin: &[u8]) -> crate::error::Result<()> {
        if self.copy_path != super::CopyPath::Wrap || self.members.len() < 2 {
            return Ok(());
        }
        for m in &self.members {
            *m.wrap_key.lock() = None;
        }
        let backends: Vec<Arc<dyn Backend>> = self
            .members
            .iter()
            .map(|m| Arc::clone(&m.backend))
            .collect();
        match wrap_key_ceremony(&backends, &self.settings.wrap_key_label, so_pin) {
            Ok(_) => {
                tracing::info!("C_InitToken: a new cluster wrapping key is on every member");
                Ok(())
            }
            Err(e) => {
                tracing::error!("C_InitToken: the cluster wrapping key could not be made: {e}");
                Err(crate::error::Error::DeviceError(e))
            }
        }
    }
}
