//! How token objects travel between members: through the members' own clone path when every
//! member has one (the simulator's sealed blobs), else by standard PKCS #11 wrapping under the
//! cluster wrapping key (vendor modules, and every member of a mixed cluster).
//!
//! # Wrapping
//! The cluster wrapping key is an AES-256 secret key with `CKA_TRUSTED`, the same value on every
//! member under the label `[cluster] wrap_key_label`, put there once by the ceremony
//! `hsmpool cluster wrap-key`. A private or secret key travels as `C_WrapKey` output under it
//! (RFC 5649 key wrap with padding: `CKM_AES_KEY_WRAP_KWP`, or the number the member's module
//! gives that algorithm, `Backend::cluster_wrap_mechanism`) together with its settable
//! attributes, and is made on the other member by `C_UnwrapKey` with those attributes; a public
//! key, a certificate or a data object travels as its attributes and is made by
//! `C_CreateObject`, as does a secret key that is not sensitive (its value, which the
//! application may read anyway: NSS softokn makes every key it unwraps sensitive). Attributes a token sets itself (`CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`,
//! `CKA_NEVER_EXTRACTABLE`, `CKA_KEY_GEN_MECHANISM`) are not copied: a copy says what it is.
//!
//! A member's objects are compared by a digest of those same attributes (no secret is read):
//! equal digests under one id mean the same object.

use cryptoki_sys::*;
use hsmpool_member::types::{decode_attr_array, encode_attr_array, Attr, Mechanism};
use hsmpool_member::AttrAnswer;

use super::{Cluster, Route};
use crate::backend::{replication, Backend, MemberObject, MemberSession};
use crate::error::{Error, Result};

/// How this cluster copies token objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyPath {
    /// Every member has a clone path (`Backend::replication`).
    Clone,
    /// At least one has none: standard wrapping under the cluster wrapping key.
    Wrap,
}

impl CopyPath {
    /// The path for these members.
    pub(crate) fn of(backends: &[std::sync::Arc<dyn Backend>]) -> CopyPath {
        if backends.iter().all(|b| b.replication().is_some()) {
            CopyPath::Clone
        } else {
            CopyPath::Wrap
        }
    }
}

/// Attributes every copied object carries.
const COMMON: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_MODIFIABLE,
    CKA_LABEL,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
];
const DATA: &[CK_ATTRIBUTE_TYPE] = &[CKA_APPLICATION, CKA_OBJECT_ID, CKA_VALUE];
const CERTIFICATE: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CERTIFICATE_TYPE,
    CKA_CERTIFICATE_CATEGORY,
    CKA_START_DATE,
    CKA_END_DATE,
    CKA_SUBJECT,
    CKA_ID,
    CKA_ISSUER,
    CKA_SERIAL_NUMBER,
    CKA_VALUE,
    CKA_URL,
    CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
    CKA_HASH_OF_ISSUER_PUBLIC_KEY,
    CKA_JAVA_MIDP_SECURITY_DOMAIN,
];
const KEY: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_KEY_TYPE,
    CKA_ID,
    CKA_START_DATE,
    CKA_END_DATE,
    CKA_DERIVE,
    // A restriction travels with its key (an empty one, no restriction, is left out: a module
    // that does not know the attribute holds such a key all the same).
    CKA_ALLOWED_MECHANISMS,
];
const PUBLIC_KEY: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_SUBJECT,
    CKA_ENCRYPT,
    CKA_VERIFY,
    CKA_VERIFY_RECOVER,
    CKA_WRAP,
    CKA_MODULUS,
    CKA_PUBLIC_EXPONENT,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
];
const PRIVATE_KEY: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_SUBJECT,
    CKA_SENSITIVE,
    CKA_DECRYPT,
    CKA_SIGN,
    CKA_SIGN_RECOVER,
    CKA_UNWRAP,
    CKA_EXTRACTABLE,
    CKA_WRAP_WITH_TRUSTED,
    CKA_ALWAYS_AUTHENTICATE,
];
const SECRET_KEY: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_SENSITIVE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_EXTRACTABLE,
    CKA_WRAP_WITH_TRUSTED,
];

/// The attributes copied with an object of this class, and whether its value travels wrapped.
fn copied(class: CK_OBJECT_CLASS) -> (Vec<CK_ATTRIBUTE_TYPE>, bool) {
    let (own, wrapped): (&[&[CK_ATTRIBUTE_TYPE]], bool) = match class {
        CKO_DATA => (&[DATA], false),
        CKO_CERTIFICATE => (&[CERTIFICATE], false),
        CKO_PUBLIC_KEY => (&[KEY, PUBLIC_KEY], false),
        CKO_PRIVATE_KEY => (&[KEY, PRIVATE_KEY], true),
        CKO_SECRET_KEY => (&[KEY, SECRET_KEY], true),
        _ => (&[], false),
    };
    let mut types = COMMON.to_vec();
    for list in own {
        types.extend(
            list.iter()
                .filter(|t| !types.contains(t))
                .collect::<Vec<_>>(),
        );
    }
    (types, wrapped)
}

/// What a wrapped copy carries: magic, id, the attributes, then the wrapped value (if any).
const MAGIC: &[u8; 4] = b"HPW1";

fn encode(id: MemberObject, attrs: &[Attr], wrapped: Option<&[u8]>) -> Vec<u8> {
    let a = encode_attr_array(attrs);
    let mut out = Vec::with_capacity(16 + a.len() + wrapped.map_or(0, <[u8]>::len));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(&(a.len() as u32).to_be_bytes());
    out.extend_from_slice(&a);
    if let Some(w) = wrapped {
        out.push(1);
        out.extend_from_slice(w);
    } else {
        out.push(0);
    }
    out
}

/// A decoded copy: its id, its attributes, its wrapped value (for a key).
type Copy<'a> = (MemberObject, Vec<Attr>, Option<&'a [u8]>);

/// The parts of [`encode`]'s output; `None` if it is not one.
fn decode(b: &[u8]) -> Option<Copy<'_>> {
    let rest = b.strip_prefix(MAGIC)?;
    let id = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let n = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
    let attrs = decode_attr_array(rest.get(12..12usize.checked_add(n)?)?)?;
    let tail = rest.get(12 + n..)?;
    let wrapped = match tail.split_first()? {
        (0, []) => None,
        (1, w) => Some(w),
        _ => return None,
    };
    Some((MemberObject(id), attrs, wrapped))
}

/// An object's class and copied attributes (those it has and shows).
fn read_copied(
    b: &dyn Backend,
    s: MemberSession,
    o: MemberObject,
) -> std::result::Result<(CK_OBJECT_CLASS, Vec<Attr>, bool), hsmpool_member::MemberError> {
    let class = match b.get_attributes(s, o, &[CKA_CLASS])?.pop() {
        Some(AttrAnswer::Value(v)) => Attr {
            ty: CKA_CLASS,
            value: v,
        }
        .as_ulong()
        .unwrap_or(CK_UNAVAILABLE_INFORMATION),
        _ => CK_UNAVAILABLE_INFORMATION,
    };
    let (types, wrapped) = copied(class);
    let answers = b.get_attributes(s, o, &types)?;
    let attrs = types
        .iter()
        .zip(answers)
        .filter_map(|(ty, a)| match a {
            AttrAnswer::Value(value) if *ty == CKA_ALLOWED_MECHANISMS && value.is_empty() => None,
            AttrAnswer::Value(value) => Some(Attr { ty: *ty, value }),
            _ => None,
        })
        .collect();
    Ok((class, attrs, wrapped))
}

/// Whether a copy failure means "this object cannot be copied" (not extractable, not wrappable
/// under the cluster key, or a member's policy will not hold it as it is: a vendor module
/// answers `CKR_TEMPLATE_INCONSISTENT` where the copy would differ from its original) rather
/// than a failure of the member.
pub(crate) fn not_copyable(e: &Error) -> bool {
    matches!(
        e,
        Error::Hsm {
            rv: CKR_KEY_UNEXTRACTABLE
                | CKR_KEY_NOT_WRAPPABLE
                | CKR_KEY_FUNCTION_NOT_PERMITTED
                | CKR_KEY_TYPE_INCONSISTENT
                | CKR_TEMPLATE_INCONSISTENT,
            ..
        }
    ) || matches!(e, Error::KeyFunctionNotPermitted | Error::ActionProhibited)
}

/// The template that finds the cluster wrapping key labelled `label` on a member.
pub(crate) fn wrap_key_lookup(label: &str) -> [Attr; 3] {
    [
        Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::bool(CKA_TOKEN, true),
        Attr::bytes(CKA_LABEL, label.as_bytes()),
    ]
}

impl Cluster {
    /// The cluster wrapping key on member `m` (found by label, then remembered; looked for
    /// again while absent, since the ceremony may have been run since).
    fn wrap_key_on(&self, m: usize) -> Result<MemberObject> {
        let member = &self.members[m];
        if let Some(Some(k)) = *member.wrap_key.lock() {
            return Ok(k);
        }
        let label = &self.settings.wrap_key_label;
        let template = wrap_key_lookup(label);
        let found = self.call(Route::Member(m), 2, |b, s| b.find(s, &template))?;
        *member.wrap_key.lock() = Some(found.first().copied());
        found.first().copied().ok_or_else(|| {
            Error::DeviceError(format!(
                "member {m} has no cluster wrapping key labelled {label:?}: token keys cannot \
                 be copied to or from it (run `hsmpool cluster wrap-key`)"
            ))
        })
    }

    /// The cluster wrapping key's ids on the members: the engine's own object, never shown to
    /// the application (a find does not return it). Each up member is asked once.
    pub(crate) fn wrap_keys(&self) -> Vec<MemberObject> {
        if self.copy_path != CopyPath::Wrap || self.members.len() < 2 {
            return Vec::new();
        }
        self.members
            .iter()
            .filter_map(|m| {
                let known = *m.wrap_key.lock();
                match known {
                    Some(k) => k,
                    None if m.is_up() => self.wrap_key_on(m.index).ok(),
                    None => None,
                }
            })
            .collect()
    }

    fn wrap_mechanism(&self, m: usize) -> Mechanism {
        Mechanism::plain(self.members[m].backend.cluster_wrap_mechanism())
    }

    /// Token object `id` of member `src`, ready to be made on another member.
    pub(super) fn export_object(&self, src: usize, id: MemberObject) -> Result<Vec<u8>> {
        if self.copy_path == CopyPath::Clone {
            return self.call(Route::Member(src), 5, |b, s| {
                replication(b)?.export_clone(s, id)
            });
        }
        let (class, attrs, wrapped) =
            self.call(Route::Member(src), 2, |b, s| read_copied(b, s, id))?;
        if class == CKO_SECRET_KEY && self.is_wrap_key(&attrs) {
            return Err(Error::Hsm {
                member: src as u32,
                rv: CKR_KEY_NOT_WRAPPABLE,
            });
        }
        let sensitive = attrs
            .iter()
            .find(|a| a.ty == CKA_SENSITIVE)
            .map(|a| a.value == [1]);
        let mut attrs = attrs;
        if wrapped && class == CKO_SECRET_KEY && sensitive == Some(false) {
            // A secret key the application may read travels by its value, as it would read it:
            // NSS softokn makes every key it unwraps sensitive, which a copy must not be.
            let v = self.call(Route::Member(src), 2, |b, s| {
                b.get_attributes(s, id, &[CKA_VALUE])
            })?;
            if let Some(AttrAnswer::Value(value)) = v.into_iter().next() {
                attrs.push(Attr {
                    ty: CKA_VALUE,
                    value,
                });
                return Ok(encode(id, &attrs, None));
            }
        }
        let value = if wrapped {
            let (wk, mech) = (self.wrap_key_on(src)?, self.wrap_mechanism(src));
            Some(self.call(Route::Member(src), 5, |b, s| b.wrap_key(s, &mech, wk, id))?)
        } else {
            None
        };
        Ok(encode(id, &attrs, value.as_deref()))
    }

    fn is_wrap_key(&self, attrs: &[Attr]) -> bool {
        attrs
            .iter()
            .any(|a| a.ty == CKA_LABEL && a.value == self.settings.wrap_key_label.as_bytes())
    }

    /// Make an exported object on member `dst` under its id (replacing an object of that id).
    pub(super) fn import_object(&self, dst: usize, blob: &[u8]) -> Result<MemberObject> {
        if self.copy_path == CopyPath::Clone {
            return self.call(Route::Member(dst), 5, |b, s| {
                replication(b)?.import_clone(s, blob)
            });
        }
        let (id, mut attrs, wrapped) =
            decode(blob).ok_or_else(|| Error::General("malformed wrapped copy".into()))?;
        attrs.push(Attr::ulong(
            hsmpool_member::types::CKA_HSMPOOL_OBJECT_ID,
            id.0 as CK_ULONG,
        ));
        let (wk, mech) = match wrapped {
            Some(_) => (Some(self.wrap_key_on(dst)?), self.wrap_mechanism(dst)),
            None => (None, self.wrap_mechanism(dst)),
        };
        self.call(Route::Member(dst), 5, |b, s| {
            if b.get_attributes(s, id, &[CKA_CLASS]).is_ok() {
                b.destroy_object(s, id)?;
            }
            match (wrapped, wk) {
                (Some(w), Some(wk)) => b.unwrap_key(s, &mech, wk, w, &attrs),
                _ => b.create_object(s, &attrs),
            }
        })
    }

    /// (id, digest) of every token object member `m` holds.
    pub(crate) fn object_digests(&self, m: usize) -> Result<Vec<(MemberObject, [u8; 32])>> {
        if self.copy_path == CopyPath::Clone {
            return self.call(Route::Member(m), 5, |b, s| {
                replication(b)?.object_digests(s)
            });
        }
        let label = self.settings.wrap_key_label.as_bytes().to_vec();
        self.call(Route::Member(m), 5, |b, s| {
            let mut out = Vec::new();
            for o in b.find(s, &[Attr::bool(CKA_TOKEN, true)])? {
                let (_, attrs, _) = read_copied(b, s, o)?;
                if attrs.iter().any(|a| a.ty == CKA_LABEL && a.value == label) {
                    continue;
                }
                let d = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &encode_attr_array(&attrs),
                );
                let mut digest = [0u8; 32];
                digest.copy_from_slice(d.as_ref());
                out.push((o, digest));
            }
            out.sort_unstable_by_key(|(o, _)| *o);
            Ok::<_, hsmpool_member::MemberError>(out)
        })
    }

    /// Remove token object `id` from member `m` (absent is `Ok`).
    pub(super) fn drop_object(&self, m: usize, id: MemberObject, tries: u64) -> Result<()> {
        if self.copy_path == CopyPath::Clone {
            return self.call(Route::Member(m), tries, |b, s| {
                replication(b)?.drop_replica(s, id)
            });
        }
        self.call(Route::Member(m), tries, |b, s| {
            match b.destroy_object(s, id) {
                Err(e) if e.rv() == CKR_OBJECT_HANDLE_INVALID => Ok(()),
                r => r,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_decodes_to_what_was_encoded_and_nothing_else_decodes() {
        let attrs = vec![
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::bytes(CKA_LABEL, b"k"),
        ];
        for wrapped in [None, Some(&b"wrapped bytes"[..]), Some(&b""[..])] {
            let b = encode(MemberObject(42), &attrs, wrapped);
            let (id, a, w) = decode(&b).unwrap();
            assert_eq!((id, a, w), (MemberObject(42), attrs.clone(), wrapped));
            for cut in 0..b.len() {
                if wrapped.is_none() || cut < b.len() - wrapped.map_or(0, <[u8]>::len) - 1 {
                    assert!(decode(&b[..cut]).is_none(), "a copy cut at {cut} decoded");
                }
            }
        }
        assert!(decode(b"HPW2").is_none());
    }

    #[test]
    fn keys_travel_wrapped_and_the_rest_as_attributes() {
        assert!(copied(CKO_PRIVATE_KEY).1 && copied(CKO_SECRET_KEY).1);
        assert!(!copied(CKO_PUBLIC_KEY).1 && !copied(CKO_CERTIFICATE).1 && !copied(CKO_DATA).1);
        let (t, _) = copied(CKO_PRIVATE_KEY);
        assert!(t.contains(&CKA_WRAP_WITH_TRUSTED) && !t.contains(&CKA_VALUE));
        let mut sorted = t.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), t.len(), "an attribute listed twice");
    }
}
