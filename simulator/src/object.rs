//! Objects and the attribute rules: which attributes each class has, their defaults, which the
//! caller may set at creation or change later, and which hold secrets.
//!
//! The rules are one table (`rules_for`), read by creation, generation, copying, reading and
//! writing alike, so the four cannot disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use cryptoki_sys::*;

use crate::crypto::LoadedKey;
use crate::types::{Attr, Rv};

/// How an attribute's value is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `CK_BBOOL`.
    Bool,
    /// A `CK_ULONG`.
    Ulong,
    /// Bytes of any length.
    Bytes,
}

/// The caller may give the attribute to `C_CreateObject`.
pub const ON_CREATE: u8 = 1;
/// The caller may give the attribute to `C_GenerateKey(Pair)`.
pub const ON_GENERATE: u8 = 2;
/// The caller may change it with `C_SetAttributeValue` / `C_CopyObject`.
pub const MODIFY: u8 = 4;
/// The value is secret: it lives in the key material, never in the attribute blob.
pub const SECRET: u8 = 8;
/// Required at `C_CreateObject`.
pub const REQUIRED_CREATE: u8 = 16;
/// Required at generation.
pub const REQUIRED_GENERATE: u8 = 32;
/// Only the SO may set it to true.
pub const SO_ONLY: u8 = 64;

/// One attribute's rule.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// The attribute.
    pub ty: CK_ATTRIBUTE_TYPE,
    /// Its encoding.
    pub kind: Kind,
    /// Flags above.
    pub flags: u8,
    /// Default when the caller gives none (None: the token computes it or it is required).
    pub default: Option<Default>,
}

/// A default value.
#[derive(Clone, Copy, Debug)]
pub enum Default {
    /// A boolean.
    Bool(bool),
    /// A number.
    Ulong(CK_ULONG),
    /// Empty bytes.
    Empty,
}

const fn r(ty: CK_ATTRIBUTE_TYPE, kind: Kind, flags: u8, default: Option<Default>) -> Rule {
    Rule {
        ty,
        kind,
        flags,
        default,
    }
}

const CG: u8 = ON_CREATE | ON_GENERATE;
const CGM: u8 = ON_CREATE | ON_GENERATE | MODIFY;
const B: Kind = Kind::Bool;
const U: Kind = Kind::Ulong;
const Y: Kind = Kind::Bytes;
const T: Option<Default> = Some(Default::Bool(true));
const F: Option<Default> = Some(Default::Bool(false));
const E: Option<Default> = Some(Default::Empty);

static STORAGE: &[Rule] = &[
    r(CKA_CLASS, U, ON_CREATE | ON_GENERATE, None),
    r(CKA_TOKEN, B, CG, F),
    r(CKA_MODIFIABLE, B, CG, T),
    r(CKA_COPYABLE, B, CGM, T),
    r(CKA_DESTROYABLE, B, CGM, T),
    r(CKA_LABEL, Y, CGM, E),
    r(CKA_UNIQUE_ID, Y, 0, None),
    // Consumed when the object is made (it becomes the object's id); never stored.
    r(crate::types::CKA_HSMPOOL_OBJECT_ID, U, CG, None),
    // Set by the owner's share calls only (`Hsm::share_object`): read-only to templates.
    r(crate::types::CKA_HSMPOOL_SHARED_WITH, Y, 0, None),
    // Set by the owner's key quorum calls only (`Hsm::set_key_quorum`): read-only to templates.
    r(crate::types::CKA_HSMPOOL_QUORUM_USE, U, 0, None),
    r(crate::types::CKA_HSMPOOL_QUORUM_MANAGE, U, 0, None),
];
static DATA: &[Rule] = &[
    r(CKA_PRIVATE, B, CG, F),
    r(CKA_APPLICATION, Y, CGM, E),
    r(CKA_OBJECT_ID, Y, CGM, E),
    r(CKA_VALUE, Y, CGM, E),
];
static CERT: &[Rule] = &[
    r(CKA_PRIVATE, B, CG, F),
    r(CKA_CERTIFICATE_TYPE, U, ON_CREATE | REQUIRED_CREATE, None),
    r(CKA_TRUSTED, B, ON_CREATE | SO_ONLY, F),
    r(
        CKA_CERTIFICATE_CATEGORY,
        U,
        ON_CREATE,
        Some(Default::Ulong(0)),
    ),
    r(CKA_CHECK_VALUE, Y, ON_CREATE, E),
    r(CKA_START_DATE, Y, CGM, E),
    r(CKA_END_DATE, Y, CGM, E),
    r(CKA_PUBLIC_KEY_INFO, Y, ON_CREATE, E),
    r(CKA_SUBJECT, Y, ON_CREATE | REQUIRED_CREATE | MODIFY, None),
    r(CKA_ID, Y, CGM, E),
    r(CKA_ISSUER, Y, CGM, E),
    r(CKA_SERIAL_NUMBER, Y, CGM, E),
    r(CKA_VALUE, Y, ON_CREATE | REQUIRED_CREATE, None),
    r(CKA_URL, Y, ON_CREATE, E),
    r(CKA_HASH_OF_SUBJECT_PUBLIC_KEY, Y, ON_CREATE, E),
    r(CKA_HASH_OF_ISSUER_PUBLIC_KEY, Y, ON_CREATE, E),
    r(
        CKA_JAVA_MIDP_SECURITY_DOMAIN,
        U,
        ON_CREATE,
        Some(Default::Ulong(0)),
    ),
    r(
        CKA_NAME_HASH_ALGORITHM,
        U,
        ON_CREATE,
        Some(Default::Ulong(CKM_SHA_1)),
    ),
];
static KEY: &[Rule] = &[
    r(CKA_KEY_TYPE, U, CG, None),
    r(CKA_ID, Y, CGM, E),
    r(CKA_START_DATE, Y, CGM, E),
    r(CKA_END_DATE, Y, CGM, E),
    r(CKA_DERIVE, B, CGM, F),
    r(CKA_LOCAL, B, 0, F),
    r(
        CKA_KEY_GEN_MECHANISM,
        U,
        0,
        Some(Default::Ulong(CK_UNAVAILABLE_INFORMATION)),
    ),
    r(CKA_ALLOWED_MECHANISMS, Y, CG, E),
];
static PUBLIC: &[Rule] = &[
    r(CKA_PRIVATE, B, CG, F),
    r(CKA_SUBJECT, Y, CGM, E),
    r(CKA_ENCRYPT, B, CGM, None),
    r(CKA_VERIFY, B, CGM, T),
    r(CKA_VERIFY_RECOVER, B, CGM, F),
    r(CKA_WRAP, B, CGM, F),
    r(CKA_TRUSTED, B, CG | SO_ONLY, F),
    r(CKA_WRAP_TEMPLATE, Y, CG, E),
    r(CKA_PUBLIC_KEY_INFO, Y, ON_CREATE, E),
];
static PRIVATE: &[Rule] = &[
    r(CKA_PRIVATE, B, CG, T),
    r(CKA_SUBJECT, Y, CGM, E),
    r(CKA_SENSITIVE, B, CGM, T),
    r(CKA_DECRYPT, B, CGM, None),
    r(CKA_SIGN, B, CGM, T),
    r(CKA_SIGN_RECOVER, B, CGM, F),
    r(CKA_UNWRAP, B, CGM, F),
    r(CKA_EXTRACTABLE, B, CGM, F),
    r(CKA_ALWAYS_SENSITIVE, B, 0, None),
    r(CKA_NEVER_EXTRACTABLE, B, 0, None),
    r(CKA_WRAP_WITH_TRUSTED, B, CGM, F),
    r(CKA_UNWRAP_TEMPLATE, Y, CG, E),
    r(CKA_ALWAYS_AUTHENTICATE, B, CG, F),
    r(CKA_PUBLIC_KEY_INFO, Y, ON_CREATE, E),
];
static SECRET_KEY: &[Rule] = &[
    r(CKA_PRIVATE, B, CG, T),
    r(CKA_SENSITIVE, B, CGM, T),
    r(CKA_ENCRYPT, B, CGM, None),
    r(CKA_DECRYPT, B, CGM, None),
    r(CKA_SIGN, B, CGM, T),
    r(CKA_VERIFY, B, CGM, T),
    r(CKA_WRAP, B, CGM, F),
    r(CKA_UNWRAP, B, CGM, F),
    r(CKA_EXTRACTABLE, B, CGM, F),
    r(CKA_ALWAYS_SENSITIVE, B, 0, None),
    r(CKA_NEVER_EXTRACTABLE, B, 0, None),
    r(CKA_CHECK_VALUE, Y, 0, None),
    r(CKA_WRAP_WITH_TRUSTED, B, CGM, F),
    r(CKA_TRUSTED, B, CG | SO_ONLY, F),
    r(CKA_WRAP_TEMPLATE, Y, CG, E),
    r(CKA_UNWRAP_TEMPLATE, Y, CG, E),
    r(CKA_VALUE, Y, ON_CREATE | REQUIRED_CREATE | SECRET, None),
    r(CKA_VALUE_LEN, U, ON_GENERATE, None),
];
static RSA_PUBLIC: &[Rule] = &[
    r(CKA_MODULUS, Y, ON_CREATE | REQUIRED_CREATE, None),
    r(CKA_MODULUS_BITS, U, ON_GENERATE | REQUIRED_GENERATE, None),
    r(CKA_PUBLIC_EXPONENT, Y, CG | REQUIRED_CREATE, None),
];
static RSA_PRIVATE: &[Rule] = &[
    r(CKA_MODULUS, Y, ON_CREATE | REQUIRED_CREATE, None),
    r(CKA_PUBLIC_EXPONENT, Y, ON_CREATE | REQUIRED_CREATE, None),
    r(
        CKA_PRIVATE_EXPONENT,
        Y,
        ON_CREATE | REQUIRED_CREATE | SECRET,
        None,
    ),
    r(CKA_PRIME_1, Y, ON_CREATE | SECRET, None),
    r(CKA_PRIME_2, Y, ON_CREATE | SECRET, None),
    r(CKA_EXPONENT_1, Y, ON_CREATE | SECRET, None),
    r(CKA_EXPONENT_2, Y, ON_CREATE | SECRET, None),
    r(CKA_COEFFICIENT, Y, ON_CREATE | SECRET, None),
];
static EC_PUBLIC: &[Rule] = &[
    r(
        CKA_EC_PARAMS,
        Y,
        CG | REQUIRED_CREATE | REQUIRED_GENERATE,
        None,
    ),
    r(CKA_EC_POINT, Y, ON_CREATE | REQUIRED_CREATE, None),
];
static EC_PRIVATE: &[Rule] = &[
    r(CKA_EC_PARAMS, Y, ON_CREATE | REQUIRED_CREATE, None),
    r(CKA_VALUE, Y, ON_CREATE | REQUIRED_CREATE | SECRET, None),
];

/// The rule tables that apply to an object of this class and key type, most general first.
pub fn rules_for(
    class: CK_OBJECT_CLASS,
    key_type: Option<CK_KEY_TYPE>,
) -> Result<Vec<&'static [Rule]>, Rv> {
    let mut v: Vec<&'static [Rule]> = vec![STORAGE];
    match class {
        CKO_DATA => v.push(DATA),
        CKO_CERTIFICATE => v.push(CERT),
        CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY => {
            v.push(KEY);
            let kt = key_type.ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            match (class, kt) {
                (CKO_PUBLIC_KEY, CKK_RSA) => v.extend([PUBLIC, RSA_PUBLIC]),
                (CKO_PUBLIC_KEY, CKK_EC | CKK_EC_EDWARDS) => v.extend([PUBLIC, EC_PUBLIC]),
                (CKO_PRIVATE_KEY, CKK_RSA) => v.extend([PRIVATE, RSA_PRIVATE]),
                (CKO_PRIVATE_KEY, CKK_EC | CKK_EC_EDWARDS) => v.extend([PRIVATE, EC_PRIVATE]),
                (CKO_SECRET_KEY, CKK_AES | CKK_GENERIC_SECRET) => v.push(SECRET_KEY),
                _ => return Err(CKR_TEMPLATE_INCONSISTENT),
            }
        }
        _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
    }
    Ok(v)
}

/// The rule for one attribute of an object, the most specific table winning.
pub fn rule(tables: &[&'static [Rule]], ty: CK_ATTRIBUTE_TYPE) -> Option<Rule> {
    tables
        .iter()
        .rev()
        .find_map(|t| t.iter().find(|r| r.ty == ty).copied())
}

/// Check an attribute value's encoding against its rule.
pub fn check_kind(rule: &Rule, value: &[u8]) -> Result<(), Rv> {
    if crate::types::is_array_attribute(rule.ty) && crate::types::decode_attr_array(value).is_none()
    {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    let ok = match rule.kind {
        Kind::Bool => value.len() == 1 && value[0] <= 1,
        Kind::Ulong => value.len() == std::mem::size_of::<CK_ULONG>(),
        Kind::Bytes => true,
    };
    if ok {
        Ok(())
    } else {
        Err(CKR_ATTRIBUTE_VALUE_INVALID)
    }
}

/// A stored object. Immutable: a change builds a new `Object` and swaps it in.
///
/// # Invariants
/// `attrs` never holds a `SECRET` attribute; `class`, `token`, `private` and `key_type` agree
/// with `attrs`.
pub struct Object {
    /// The HSM's id for the object (stable while it exists).
    pub id: u64,
    /// The crypto user who owns it (None: created without a user login).
    pub owner: Option<String>,
    /// The member session that created it, for session objects.
    pub session: Option<u64>,
    /// `CKA_CLASS`.
    pub class: CK_OBJECT_CLASS,
    /// `CKA_KEY_TYPE` for keys.
    pub key_type: Option<CK_KEY_TYPE>,
    /// `CKA_TOKEN`.
    pub token: bool,
    /// `CKA_PRIVATE`.
    pub private: bool,
    /// Every non-secret attribute, native layout.
    pub attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>,
    /// Parsed key material, if the object is a key.
    pub key: Option<Arc<LoadedKey>>,
}

impl Object {
    /// Its key material as stored and cloned (empty for an object without one).
    pub fn material_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        self.key
            .as_ref()
            .map(|k| k.material().to_bytes())
            .unwrap_or_default()
    }

    /// A boolean attribute (false when absent).
    pub fn flag(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        self.attrs
            .get(&ty)
            .is_some_and(|v| v.first().is_some_and(|b| *b != 0))
    }
    /// A `CK_ULONG` attribute.
    pub fn ulong(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        let v = self.attrs.get(&ty)?;
        Some(CK_ULONG::from_ne_bytes(v.as_slice().try_into().ok()?))
    }
    /// Whether a template matches this object (every attribute equal).
    pub fn matches(&self, template: &[Attr]) -> bool {
        template
            .iter()
            .all(|a| self.attrs.get(&a.ty).is_some_and(|v| *v == a.value))
    }
    /// The rule tables for this object.
    pub fn tables(&self) -> Vec<&'static [Rule]> {
        rules_for(self.class, self.key_type).unwrap_or_else(|_| vec![STORAGE])
    }
    /// Approximate size in bytes (`C_GetObjectSize`).
    pub fn size(&self) -> u64 {
        let attrs: usize = self.attrs.values().map(|v| v.len() + 16).sum();
        (attrs
            + self
                .key
                .as_ref()
                .map_or(0, |k| k.material().to_bytes().len())) as u64
    }
}

/// Serialise attributes for the store: (type u64 BE, length u32 BE, bytes)*, sorted by type.
pub fn encode_attrs(attrs: &BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>) -> Vec<u8> {
    crate::types::encode_attr_pairs(attrs.iter().map(|(ty, v)| (*ty, v.as_slice())))
}

/// The inverse of [`encode_attrs`]; garbage gives `None`.
pub fn decode_attrs(b: &[u8]) -> Option<BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>> {
    Some(crate::types::decode_attr_pairs(b)?.into_iter().collect())
}

/// The encoded boolean.
pub fn bool_bytes(v: bool) -> Vec<u8> {
    vec![u8::from(v)]
}

/// The encoded number.
pub fn ulong_bytes(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// Find an attribute in a template.
pub fn find(template: &[Attr], ty: CK_ATTRIBUTE_TYPE) -> Option<&Attr> {
    template.iter().find(|a| a.ty == ty)
}

/// Read a `CK_ULONG` from a template.
pub fn find_ulong(template: &[Attr], ty: CK_ATTRIBUTE_TYPE) -> Result<Option<CK_ULONG>, Rv> {
    match find(template, ty) {
        None => Ok(None),
        Some(a) => a.as_ulong().map(Some).ok_or(CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

/// Read a `CK_BBOOL` from a template.
pub fn find_bool(template: &[Attr], ty: CK_ATTRIBUTE_TYPE) -> Result<Option<bool>, Rv> {
    match find(template, ty) {
        None => Ok(None),
        Some(a) => match a.value.as_slice() {
            [0] => Ok(Some(false)),
            [1] => Ok(Some(true)),
            _ => Err(CKR_ATTRIBUTE_VALUE_INVALID),
        },
    }
}

/// Why attributes are being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `C_CreateObject`.
    Create,
    /// `C_GenerateKey(Pair)` and `C_DeriveKey`.
    Generate,
    /// `C_UnwrapKey`: the caller gives what creation allows, except the key value itself.
    Unwrap,
}

/// Build an object's non-secret attributes from a caller template: check every attribute is
/// known, settable and well-formed, fill defaults, and refuse duplicates that disagree.
/// Secret attributes are left out (the caller turns them into key material).
/// `token_set` are attributes the token computed (they override nothing the caller may set).
pub fn apply_template(
    class: CK_OBJECT_CLASS,
    key_type: Option<CK_KEY_TYPE>,
    template: &[Attr],
    origin: Origin,
    is_so: bool,
    token_set: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
) -> Result<BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>, Rv> {
    let tables = rules_for(class, key_type)?;
    let mut attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>> = BTreeMap::new();
    let allowed = match origin {
        Origin::Create => ON_CREATE,
        Origin::Generate | Origin::Unwrap => ON_GENERATE,
    };
    for a in template {
        let rule = rule(&tables, a.ty).ok_or(CKR_ATTRIBUTE_TYPE_INVALID)?;
        check_kind(&rule, &a.value)?;
        if rule.flags & allowed == 0 {
            // The token sets it; a caller value that agrees with the token's is harmless.
            if token_set.iter().any(|(t, v)| *t == a.ty && *v == a.value) {
                continue;
            }
            return Err(CKR_ATTRIBUTE_READ_ONLY);
        }
        if rule.flags & SO_ONLY != 0 && a.value == [1] && !is_so {
            return Err(CKR_ATTRIBUTE_READ_ONLY);
        }
        if rule.flags & SECRET != 0 {
            continue;
        }
        if let Some(prev) = attrs.get(&a.ty) {
            if *prev != a.value {
                return Err(CKR_TEMPLATE_INCONSISTENT);
            }
        }
        attrs.insert(a.ty, a.value.clone());
    }
    for (ty, v) in token_set {
        attrs.insert(ty, v);
    }
    let required = match origin {
        Origin::Create => REQUIRED_CREATE,
        Origin::Generate => REQUIRED_GENERATE,
        Origin::Unwrap => 0,
    };
    for t in &tables {
        for rule in t.iter() {
            if attrs.contains_key(&rule.ty) {
                continue;
            }
            if rule.flags & required != 0 && rule.flags & SECRET == 0 {
                return Err(CKR_TEMPLATE_INCOMPLETE);
            }
            if rule.flags & SECRET != 0 {
                continue;
            }
            match rule.default {
                Some(Default::Bool(b)) => {
                    attrs.insert(rule.ty, bool_bytes(b));
                }
                Some(Default::Ulong(u)) => {
                    attrs.insert(rule.ty, ulong_bytes(u));
                }
                Some(Default::Empty) => {
                    attrs.insert(rule.ty, Vec::new());
                }
                None => {}
            }
        }
    }
    // Usage defaults that depend on other attributes (PKCS #11 3.0 leaves the defaults of
    // CKA_ENCRYPT and CKA_DECRYPT to the token, "and may depend on the values of other
    // attributes"): RSA and secret keys encrypt/decrypt by default, EC keys cannot; and a key
    // asked to wrap does not also decrypt by default, one asked to unwrap does not also encrypt
    // (a private key: decrypt), so that a template asking only for a wrapping key gets one
    // instead of a CKR_TEMPLATE_INCONSISTENT from the usage policy over a default the caller
    // never asked for. A template that asks for both is still refused
    // ([`check_usage_conflicts`]).
    let on = |attrs: &BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>, ty| {
        attrs.get(&ty).is_some_and(|v| v.as_slice() == [1])
    };
    let (encrypt, decrypt) = match class {
        CKO_PUBLIC_KEY => (Some(key_type == Some(CKK_RSA)), None),
        CKO_PRIVATE_KEY => (
            None,
            Some(key_type == Some(CKK_RSA) && !on(&attrs, CKA_UNWRAP)),
        ),
        CKO_SECRET_KEY => (Some(!on(&attrs, CKA_UNWRAP)), Some(!on(&attrs, CKA_WRAP))),
        _ => (None, None),
    };
    for (ty, default) in [(CKA_ENCRYPT, encrypt), (CKA_DECRYPT, decrypt)] {
        if let Some(v) = default {
            attrs.entry(ty).or_insert_with(|| bool_bytes(v));
        }
    }
    attrs.insert(CKA_CLASS, ulong_bytes(class));
    if let Some(kt) = key_type {
        attrs.insert(CKA_KEY_TYPE, ulong_bytes(kt));
    }
    Ok(attrs)
}

/// Apply a `C_SetAttributeValue` / `C_CopyObject` template to existing attributes, enforcing
/// what may change and the one-way attributes (`CKA_SENSITIVE` only to true, `CKA_EXTRACTABLE`
/// only to false, `CKA_WRAP_WITH_TRUSTED` and `CKA_COPYABLE`/`CKA_DESTROYABLE` one way).
/// `copy` allows `CKA_TOKEN`, `CKA_PRIVATE` and `CKA_MODIFIABLE` to change too.
pub fn modify(
    obj: &Object,
    template: &[Attr],
    copy: bool,
    is_so: bool,
) -> Result<BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>, Rv> {
    let tables = obj.tables();
    let mut attrs = obj.attrs.clone();
    for a in template {
        let rule = rule(&tables, a.ty).ok_or(CKR_ATTRIBUTE_TYPE_INVALID)?;
        check_kind(&rule, &a.value)?;
        let copy_only = matches!(
            a.ty,
            CKA_TOKEN | CKA_PRIVATE | CKA_MODIFIABLE | crate::types::CKA_HSMPOOL_OBJECT_ID
        );
        let unchanged = attrs.get(&a.ty).is_some_and(|v| *v == a.value);
        if unchanged {
            continue;
        }
        if !(rule.flags & MODIFY != 0 || (copy && copy_only)) {
            return Err(CKR_ATTRIBUTE_READ_ONLY);
        }
        if rule.flags & SO_ONLY != 0 && a.value == [1] && !is_so {
            return Err(CKR_ATTRIBUTE_READ_ONLY);
        }
        let to_true = a.value == [1];
        let one_way_ok = match a.ty {
            CKA_SENSITIVE | CKA_WRAP_WITH_TRUSTED => to_true,
            CKA_EXTRACTABLE | CKA_COPYABLE => !to_true,
            // A sensitive key's wrap and decrypt usages only ever shrink: otherwise a blob made
            // while a key could not decrypt (the wrap was allowed) is decrypted after
            // `CKA_DECRYPT` is turned on, and, for a secret key, bytes encrypted while it could
            // not unwrap are unwrapped after `CKA_UNWRAP` is. A private key may gain
            // `CKA_UNWRAP` (anyone may encrypt to its public key anyway). Checked against the
            // key as it was, so a key made sensitive in the same template is held to it too.
            CKA_WRAP | CKA_UNWRAP | CKA_ENCRYPT | CKA_DECRYPT
                if a.ty == CKA_DECRYPT || obj.class == CKO_SECRET_KEY =>
            {
                !to_true || !(obj.flag(CKA_SENSITIVE) || template_sets_sensitive(template))
            }
            _ => true,
        };
        if !one_way_ok {
            return Err(CKR_ATTRIBUTE_READ_ONLY);
        }
        attrs.insert(a.ty, a.value.clone());
    }
    // CKA_ALWAYS_SENSITIVE / CKA_NEVER_EXTRACTABLE only ever move to false.
    if obj.attrs.get(&CKA_SENSITIVE) != attrs.get(&CKA_SENSITIVE)
        && attrs.get(&CKA_SENSITIVE) == Some(&vec![0])
    {
        attrs.insert(CKA_ALWAYS_SENSITIVE, bool_bytes(false));
    }
    if attrs.get(&CKA_EXTRACTABLE) == Some(&vec![1]) {
        attrs.insert(CKA_NEVER_EXTRACTABLE, bool_bytes(false));
    }
    Ok(attrs)
}

/// Whether a `C_SetAttributeValue` / `C_CopyObject` template makes the object sensitive.
fn template_sets_sensitive(template: &[Attr]) -> bool {
    template
        .iter()
        .any(|a| a.ty == CKA_SENSITIVE && a.value.as_slice() == [1])
}

/// The key-usage policy for secret keys: none may both wrap and decrypt, or both unwrap and
/// encrypt (a secret key that can do both gives up any key it wraps: wrap it, then decrypt the
/// blob; or encrypt a value of the attacker's choosing, then unwrap it into a key the attacker
/// knows). Applied to every object however it is made or changed: create, generate, copy,
/// unwrap, derive, set.
///
/// Key pairs are not held to it: the wrap/decrypt attack through a pair (wrap under the public
/// key, decrypt with the private key) is refused at `C_WrapKey` instead, where the token can
/// see both halves (`Hsm::could_decrypt_wrapped_by`), and unwrap-then-encrypt needs no token
/// for a pair (anyone may encrypt to a public key), which is why an unwrapped key is never
/// `CKA_LOCAL` nor "always sensitive". So a private key may decrypt and unwrap, as OpenSSL's
/// pkcs11-provider asks of every RSA key it generates or imports.
///
/// A key whose value can be read (`CKA_SENSITIVE` false) is exempt: whoever may use it may read
/// it and decrypt a blob wrapped under it without the token, so refusing the pair protects
/// nothing (OpenSC's `pkcs11-tool --derive` asks for such a key with every usage). Making it
/// sensitive later re-applies the rule, so a sensitive key never holds a conflicting pair.
pub fn check_usage_conflicts(
    class: CK_OBJECT_CLASS,
    attrs: &BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>,
) -> Result<(), Rv> {
    let on = |ty: CK_ATTRIBUTE_TYPE| attrs.get(&ty).is_some_and(|v| v.as_slice() == [1]);
    let readable = attrs
        .get(&CKA_SENSITIVE)
        .is_some_and(|v| v.as_slice() == [0]);
    if readable {
        return Ok(());
    }
    let conflict = match class {
        CKO_SECRET_KEY => (on(CKA_WRAP) && on(CKA_DECRYPT)) || (on(CKA_UNWRAP) && on(CKA_ENCRYPT)),
        _ => false,
    };
    if conflict {
        Err(CKR_TEMPLATE_INCONSISTENT)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(CK_ATTRIBUTE_TYPE, bool)]) -> BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>> {
        pairs.iter().map(|(t, v)| (*t, bool_bytes(*v))).collect()
    }

    #[test]
    fn usage_conflicts_are_refused_per_class() {
        let wrap_decrypt = attrs(&[(CKA_WRAP, true), (CKA_DECRYPT, true)]);
        let unwrap_encrypt = attrs(&[(CKA_UNWRAP, true), (CKA_ENCRYPT, true)]);
        let unwrap_decrypt = attrs(&[(CKA_UNWRAP, true), (CKA_DECRYPT, true)]);
        let with = |base: &BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>, sensitive: bool| {
            let mut a = base.clone();
            a.insert(CKA_SENSITIVE, bool_bytes(sensitive));
            a
        };
        let kek = attrs(&[
            (CKA_WRAP, true),
            (CKA_UNWRAP, true),
            (CKA_ENCRYPT, false),
            (CKA_DECRYPT, false),
        ]);
        assert_eq!(
            check_usage_conflicts(CKO_SECRET_KEY, &wrap_decrypt),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
        assert_eq!(
            check_usage_conflicts(CKO_SECRET_KEY, &unwrap_encrypt),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
        assert_eq!(check_usage_conflicts(CKO_SECRET_KEY, &kek), Ok(()));
        // A private key may decrypt and unwrap: the pair's attack is refused at C_WrapKey.
        assert_eq!(
            check_usage_conflicts(CKO_PRIVATE_KEY, &with(&unwrap_decrypt, true)),
            Ok(())
        );
        assert_eq!(
            check_usage_conflicts(
                CKO_PUBLIC_KEY,
                &attrs(&[(CKA_WRAP, true), (CKA_ENCRYPT, true)])
            ),
            Ok(())
        );
        // A readable key is exempt; a sensitive one, or one that does not say, is not.
        assert_eq!(
            check_usage_conflicts(CKO_SECRET_KEY, &with(&wrap_decrypt, false)),
            Ok(())
        );
        assert_eq!(
            check_usage_conflicts(CKO_PRIVATE_KEY, &with(&unwrap_decrypt, false)),
            Ok(())
        );
        assert_eq!(
            check_usage_conflicts(CKO_SECRET_KEY, &with(&wrap_decrypt, true)),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
    }

    /// The usage defaults of a generated key under `template` (bools only).
    fn generated(
        class: CK_OBJECT_CLASS,
        key_type: CK_KEY_TYPE,
        template: &[(CK_ATTRIBUTE_TYPE, bool)],
    ) -> Result<BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>, Rv> {
        let template: Vec<Attr> = template
            .iter()
            .map(|(ty, v)| Attr {
                ty: *ty,
                value: bool_bytes(*v),
            })
            .collect();
        apply_template(
            class,
            Some(key_type),
            &template,
            Origin::Unwrap,
            false,
            Vec::new(),
        )
    }

    #[test]
    fn a_key_asked_to_wrap_does_not_decrypt_by_default() {
        let flag = |a: &BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>, ty| a.get(&ty).cloned();
        let t = Some(bool_bytes(true));
        let f = Some(bool_bytes(false));
        // Nothing asked: a secret key encrypts and decrypts, an RSA private key decrypts.
        let a = generated(CKO_SECRET_KEY, CKK_AES, &[]).expect("a data key");
        assert_eq!(
            (flag(&a, CKA_ENCRYPT), flag(&a, CKA_DECRYPT)),
            (t.clone(), t.clone())
        );
        let a = generated(CKO_PRIVATE_KEY, CKK_RSA, &[]).expect("an RSA key");
        assert_eq!(flag(&a, CKA_DECRYPT), t.clone());
        let a = generated(CKO_PRIVATE_KEY, CKK_EC, &[]).expect("an EC key");
        assert_eq!(flag(&a, CKA_DECRYPT), f.clone());
        // Wrap (unwrap) asked: the key does not also decrypt (encrypt) unless asked to.
        let a = generated(
            CKO_SECRET_KEY,
            CKK_AES,
            &[(CKA_WRAP, true), (CKA_UNWRAP, true)],
        )
        .expect("a KEK");
        assert_eq!(
            (flag(&a, CKA_ENCRYPT), flag(&a, CKA_DECRYPT)),
            (f.clone(), f.clone())
        );
        let a = generated(CKO_SECRET_KEY, CKK_AES, &[(CKA_WRAP, true)]).expect("a wrap-only key");
        assert_eq!(
            (flag(&a, CKA_ENCRYPT), flag(&a, CKA_DECRYPT)),
            (t.clone(), f.clone())
        );
        let a = generated(CKO_PRIVATE_KEY, CKK_RSA, &[(CKA_UNWRAP, true)]).expect("RSA unwrap");
        assert_eq!(flag(&a, CKA_DECRYPT), f.clone());
        let a = generated(CKO_PUBLIC_KEY, CKK_RSA, &[(CKA_WRAP, true)]).expect("RSA wrap");
        assert_eq!(flag(&a, CKA_ENCRYPT), t.clone());
        // Explicit values win, and the policy still judges them.
        let a = generated(
            CKO_SECRET_KEY,
            CKK_AES,
            &[(CKA_WRAP, true), (CKA_ENCRYPT, false)],
        )
        .expect("explicit");
        assert_eq!(flag(&a, CKA_ENCRYPT), f);
        assert_eq!(
            check_usage_conflicts(
                CKO_SECRET_KEY,
                &generated(
                    CKO_SECRET_KEY,
                    CKK_AES,
                    &[(CKA_WRAP, true), (CKA_DECRYPT, true)]
                )
                .expect("attributes")
            ),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
    }

    #[test]
    fn attribute_blobs_round_trip_and_garbage_is_refused() {
        let a = attrs(&[(CKA_SIGN, true), (CKA_LABEL, false)]);
        assert_eq!(decode_attrs(&encode_attrs(&a)), Some(a));
        assert_eq!(decode_attrs(&[0, 0, 0]), None);
        assert_eq!(decode_attrs(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 1]), None);
    }
}
