//! What a member tells the engine about itself and its objects: roles, token status, attribute
//! answers and key metadata.

use cryptoki_sys::{CK_KEY_TYPE, CK_OBJECT_CLASS};

/// Shortest PIN a member accepts (the token's `ulMinPinLen`).
pub const MIN_PIN_LEN: usize = 4;
/// Longest PIN a member accepts, `name:password` included (the token's `ulMaxPinLen`).
pub const MAX_PIN_LEN: usize = 255;

/// A user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Crypto officer (PKCS #11 SO).
    Officer,
    /// Crypto user (PKCS #11 user).
    User,
}

impl Role {
    /// The role's code in a member's user store.
    pub fn code(self) -> u8 {
        match self {
            Role::Officer => 0,
            Role::User => 1,
        }
    }
    /// The role of a stored code; `None` for a code no role has.
    pub fn from_code(c: u8) -> Option<Role> {
        match c {
            0 => Some(Role::Officer),
            1 => Some(Role::User),
            _ => None,
        }
    }
}

/// What `C_GetTokenInfo` needs from an HSM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenStatus {
    /// Token initialised.
    pub initialized: bool,
    /// The default user has a PIN.
    pub user_pin_initialized: bool,
    /// The label, blank padded.
    pub label: [u8; 32],
    /// Failed logins of the default user so far.
    pub user_failures: u32,
    /// Failed logins of the default SO so far.
    pub so_failures: u32,
    /// Failures that lock.
    pub max_failures: u32,
    /// Objects held.
    pub object_count: usize,
}

/// One answer of a get-attributes call (`C_GetAttributeValue`, and a member's answer to it).
/// Its `Debug` never prints a value.
#[derive(Clone, PartialEq, Eq)]
pub enum AttrAnswer {
    /// The value, native layout.
    Value(Vec<u8>),
    /// The attribute is sensitive or unextractable: `CKR_ATTRIBUTE_SENSITIVE`.
    Sensitive,
    /// The object has no such attribute: `CKR_ATTRIBUTE_TYPE_INVALID`.
    Invalid,
}

impl std::fmt::Debug for AttrAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrAnswer::Value(v) => write!(f, "Value({} bytes)", v.len()),
            AttrAnswer::Sensitive => write!(f, "Sensitive"),
            AttrAnswer::Invalid => write!(f, "Invalid"),
        }
    }
}

/// What the engine keeps about a key to route and check operations without asking again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    /// `CKA_CLASS`.
    pub class: CK_OBJECT_CLASS,
    /// `CKA_KEY_TYPE`, when a key.
    pub key_type: Option<CK_KEY_TYPE>,
    /// Key size in bits (modulus, curve order, secret length).
    pub key_bits: usize,
    /// `CKA_TOKEN`.
    pub token: bool,
    /// `CKA_PRIVATE`.
    pub private: bool,
    /// `CKA_ALWAYS_AUTHENTICATE`: every operation needs a context-specific login first.
    pub always_authenticate: bool,
}
