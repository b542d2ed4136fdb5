//! Backups, as far as anyone but a member can read them: the [`Backup`] capability, the plain
//! header of a backup image, and the inventory it carries.
//!
//! # Image
//! A backup image holds everything a member keeps (users with their password hashes and
//! roles, the quorum policy, every token object with its attributes, owner and sharing), taken
//! in one consistent read. A member seals it under a fresh *ephemeral backup key* (EBK),
//! itself wrapped under the *persistent backup key* (PBK) that every HSM of the fleet holds in
//! its protected store and that never leaves it (AWS CloudHSM's scheme). Only a member can
//! open an image; everyone can read its header:
//!
//! ```text
//! header  = "HPBK" | version(1) | fleet(8) | wrapped EBK(40) | header len(u32) | image len(u64)
//!           | cluster id(16) | id len(1) | backup id | created ms(u64) | audit seq(u64)
//!           | segments(u32) | body len(u64) | inventory len(u32) | inventory | header MAC(32)
//! segment = index(u32) | last(1) | sealed len(u32) | nonce(12) | AES-256-GCM(part) + tag(16)
//! ```
//!
//! Integers are big-endian. `fleet` names the PBK (so an image of another fleet is told from
//! a changed one); the EBK is wrapped under the PBK with AES key wrap (RFC 3394). The header
//! MAC is HMAC-SHA256 under a key derived from the EBK over every header byte before it, and
//! a member checks it before it reads any field past the fixed prefix: nothing in the header
//! (the cluster it belongs to, its id, its length, its inventory) can be changed unnoticed.
//! Each segment's additional data is the header MAC, its index and its last flag, so a
//! segment moved, dropped or taken from another image is refused.
//! What a member says when it refuses an image is one of the `CKR_HSMPOOL_BACKUP_*` values
//! below, each naming what is wrong.

use cryptoki_sys::CK_RV;

use crate::backend::{MemberResult, MemberSession};
use crate::meta::Role;

const VENDOR: CK_RV = cryptoki_sys::CKR_VENDOR_DEFINED;

/// A byte of the image was changed (a tag or the header MAC does not verify), or bytes were
/// added after its last segment.
pub const CKR_HSMPOOL_BACKUP_CHANGED: CK_RV = VENDOR | 0x4850_0009;
/// The image ends early: a segment, or the header, is cut short or missing.
pub const CKR_HSMPOOL_BACKUP_TRUNCATED: CK_RV = VENDOR | 0x4850_000a;
/// The image's segments are out of order.
pub const CKR_HSMPOOL_BACKUP_REORDERED: CK_RV = VENDOR | 0x4850_000b;
/// The image is whole and authentic but belongs to another cluster, or is another backup
/// than the one asked for (a backup replayed under another's name).
pub const CKR_HSMPOOL_BACKUP_WRONG_CLUSTER: CK_RV = VENDOR | 0x4850_000c;
/// Not a backup image of a version this member reads, or sealed under another fleet's
/// persistent backup key.
pub const CKR_HSMPOOL_BACKUP_UNREADABLE: CK_RV = VENDOR | 0x4850_000d;

/// The name of a backup refusal, for messages (`None` for any other value).
pub fn backup_rv_name(rv: CK_RV) -> Option<&'static str> {
    Some(match rv {
        CKR_HSMPOOL_BACKUP_CHANGED => "CKR_HSMPOOL_BACKUP_CHANGED",
        CKR_HSMPOOL_BACKUP_TRUNCATED => "CKR_HSMPOOL_BACKUP_TRUNCATED",
        CKR_HSMPOOL_BACKUP_REORDERED => "CKR_HSMPOOL_BACKUP_REORDERED",
        CKR_HSMPOOL_BACKUP_WRONG_CLUSTER => "CKR_HSMPOOL_BACKUP_WRONG_CLUSTER",
        CKR_HSMPOOL_BACKUP_UNREADABLE => "CKR_HSMPOOL_BACKUP_UNREADABLE",
        _ => return None,
    })
}

/// The image's magic.
pub const MAGIC: &[u8; 4] = b"HPBK";
/// The image layout version this build writes and reads.
pub const VERSION: u8 = 1;
/// The most one export call returns (the wire carries at most 16 MiB in one frame).
pub const CHUNK: u64 = 8 << 20;
/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 << 10;
/// The longest backup id.
pub const MAX_ID_LEN: usize = 64;

/// Whether `id` can name a backup: 1 to [`MAX_ID_LEN`] bytes of letters, digits, `.`, `_`
/// and `-` (it becomes part of an object store path).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A member that can take backups of itself.
pub trait Backup: Send + Sync {
    /// Bytes `offset..` (at most [`CHUNK`]) of a backup image of everything this member
    /// holds, named `id` and dated `created_ms`, and the image's whole length. The call with
    /// `offset` 0 takes the image (one consistent read); the member keeps it until a call
    /// reads its end or another image is taken, and a later call with the same `id` reads it
    /// (`CKR_OPERATION_NOT_INITIALIZED` when it has none). Needs a crypto officer's session.
    fn export_backup(
        &self,
        s: MemberSession,
        id: &str,
        created_ms: u64,
        offset: u64,
    ) -> MemberResult<(u64, Vec<u8>)>;
    /// The id of the cluster this member belongs to (the one its backups carry). Needs a
    /// logged-in session.
    fn cluster_id(&self, s: MemberSession) -> MemberResult<[u8; 16]>;
}

/// One live user, as an inventory lists it (no secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvUser {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Locked by an officer.
    pub locked: bool,
    /// Has a quorum approval key registered.
    pub approval_key: bool,
}

/// One token object, as an inventory lists it (no key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvObject {
    /// The cluster-wide object id.
    pub id: u64,
    /// `CKA_CLASS`.
    pub class: u64,
    /// `CKA_KEY_TYPE` (for keys).
    pub key_type: Option<u64>,
    /// `CKA_LABEL`, as text (invalid UTF-8 replaced).
    pub label: String,
    /// The owning crypto user.
    pub owner: Option<String>,
    /// The crypto users it is shared with, sorted.
    pub shared_with: Vec<String>,
    /// Approvals using it needs (1: none).
    pub quorum_use: u32,
    /// Approvals managing it needs (1: none).
    pub quorum_manage: u32,
}

/// What a backup holds, listed without secrets: carried in the image's authenticated header,
/// written into the backup's manifest, and compared with a restored copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// The officers' quorum (approvals a quorum-protected change needs; 1: none).
    pub quorum: u32,
    /// The SHA-256 digests of the registered cluster certificates, the cluster certificate
    /// chain's part a member holds (left out of a restored cluster: see the README).
    pub trust_anchors: Vec<[u8; 32]>,
    /// Live users, sorted by name.
    pub users: Vec<InvUser>,
    /// Token objects, sorted by id.
    pub objects: Vec<InvObject>,
}

/// The fixed start of an image: what a member reads before it can check anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Names the fleet's PBK.
    pub fleet: [u8; 8],
    /// The EBK wrapped under the PBK.
    pub wrapped_key: [u8; WRAPPED_KEY_LEN],
    /// The header's length, MAC included.
    pub header_len: u32,
}

/// The length of the fixed prefix.
pub const PREFIX_LEN: usize = 4 + 1 + 8 + WRAPPED_KEY_LEN + 4;
/// An AES-256 key wrapped with AES key wrap.
pub const WRAPPED_KEY_LEN: usize = 40;
/// The longest header a member reads.
pub const MAX_HEADER: u32 = 16 << 20;

impl Prefix {
    /// Read the prefix of `image`, and check that the header it announces is all there.
    pub fn parse(image: &[u8]) -> Result<Prefix, HeaderFault> {
        let n = image.len().min(MAGIC.len());
        if image[..n] != MAGIC[..n] {
            return Err(HeaderFault::Unreadable);
        }
        if image.len() < PREFIX_LEN {
            return Err(HeaderFault::Truncated);
        }
        if image[4] != VERSION {
            return Err(HeaderFault::Unreadable);
        }
        let mut r = Reader { b: &image[5..] };
        let mut fleet = [0u8; 8];
        fleet.copy_from_slice(r.take(8)?);
        let mut wrapped_key = [0u8; WRAPPED_KEY_LEN];
        wrapped_key.copy_from_slice(r.take(WRAPPED_KEY_LEN)?);
        let header_len = r.u32()?;
        if header_len > MAX_HEADER || (header_len as usize) < PREFIX_LEN + 32 {
            return Err(HeaderFault::Changed);
        }
        if image.len() < header_len as usize {
            return Err(HeaderFault::Truncated);
        }
        Ok(Prefix {
            fleet,
            wrapped_key,
            header_len,
        })
    }

    /// The header bytes the MAC covers, and the MAC, of `image` (whose prefix this is).
    pub fn signed<'a>(&self, image: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        let end = (self.header_len as usize).min(image.len());
        image[..end].split_at(end.saturating_sub(32))
    }
}

/// The readable part of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Names the fleet's PBK.
    pub fleet: [u8; 8],
    /// The EBK wrapped under the fleet's PBK.
    pub wrapped_key: [u8; WRAPPED_KEY_LEN],
    /// The whole image's length.
    pub image_len: u64,
    /// The cluster the image was taken of.
    pub cluster_id: [u8; 16],
    /// The backup's id.
    pub backup_id: String,
    /// When it was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// The member's last audit record when it was taken.
    pub audit_seq: u64,
    /// Segments after the header.
    pub segments: u32,
    /// Plaintext body length.
    pub body_len: u64,
    /// What it holds.
    pub inventory: Inventory,
    /// HMAC-SHA256 of the header bytes before it, under a key derived from the EBK.
    pub mac: [u8; 32],
}

/// Why a header could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderFault {
    /// Not an image (magic or version).
    Unreadable,
    /// It ends before its header does.
    Truncated,
    /// Its fields do not fit together.
    Changed,
}

impl HeaderFault {
    /// The refusal a member answers with.
    pub fn rv(self) -> CK_RV {
        match self {
            HeaderFault::Unreadable => CKR_HSMPOOL_BACKUP_UNREADABLE,
            HeaderFault::Truncated => CKR_HSMPOOL_BACKUP_TRUNCATED,
            HeaderFault::Changed => CKR_HSMPOOL_BACKUP_CHANGED,
        }
    }
}

/// A cluster id as text (lower-case hexadecimal).
pub fn cluster_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// A reader over bytes that says `Truncated` when they run out.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeaderFault> {
        if self.b.len() < n {
            return Err(HeaderFault::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, HeaderFault> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HeaderFault> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or([0; 2]),
        ))
    }
    fn u32(&mut self) -> Result<u32, HeaderFault> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn u64(&mut self) -> Result<u64, HeaderFault> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    fn str(&mut self) -> Result<String, HeaderFault> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| HeaderFault::Unreadable)
    }
}

impl Inventory {
    /// Its bytes, as the header carries them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.quorum.to_be_bytes());
        out.extend_from_slice(&(self.trust_anchors.len() as u32).to_be_bytes());
        for a in &self.trust_anchors {
            out.extend_from_slice(a);
        }
        out.extend_from_slice(&(self.users.len() as u32).to_be_bytes());
        for u in &self.users {
            put_str(&mut out, &u.name);
            out.push(u.role.code());
            out.push(u8::from(u.locked) | u8::from(u.approval_key) << 1);
        }
        out.extend_from_slice(&(self.objects.len() as u32).to_be_bytes());
        for o in &self.objects {
            out.extend_from_slice(&o.id.to_be_bytes());
            out.extend_from_slice(&o.class.to_be_bytes());
            match o.key_type {
                Some(k) => {
                    out.push(1);
                    out.extend_from_slice(&k.to_be_bytes());
                }
                None => out.push(0),
            }
            put_str(&mut out, &o.label);
            match &o.owner {
                Some(w) => {
                    out.push(1);
                    put_str(&mut out, w);
                }
                None => out.push(0),
            }
            out.extend_from_slice(&(o.shared_with.len() as u16).to_be_bytes());
            for s in &o.shared_with {
                put_str(&mut out, s);
            }
            out.extend_from_slice(&o.quorum_use.to_be_bytes());
            out.extend_from_slice(&o.quorum_manage.to_be_bytes());
        }
        out
    }

    fn read(r: &mut Reader<'_>) -> Result<Inventory, HeaderFault> {
        let quorum = r.u32()?;
        let n = r.u32()? as usize;
        let mut trust_anchors = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let mut a = [0u8; 32];
            a.copy_from_slice(r.take(32)?);
            trust_anchors.push(a);
        }
        let n = r.u32()? as usize;
        let mut users = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let name = r.str()?;
            let role = Role::from_code(r.u8()?).ok_or(HeaderFault::Unreadable)?;
            let flags = r.u8()?;
            users.push(InvUser {
                name,
                role,
                locked: flags & 1 != 0,
                approval_key: flags & 2 != 0,
            });
        }
        let n = r.u32()? as usize;
        let mut objects = Vec::with_capacity(n.min(65536));
        for _ in 0..n {
            let id = r.u64()?;
            let class = r.u64()?;
            let key_type = match r.u8()? {
                0 => None,
                _ => Some(r.u64()?),
            };
            let label = r.str()?;
            let owner = match r.u8()? {
                0 => None,
                _ => Some(r.str()?),
            };
            let shares = r.u16()? as usize;
            let mut shared_with = Vec::with_capacity(shares);
            for _ in 0..shares {
                shared_with.push(r.str()?);
            }
            objects.push(InvObject {
                id,
                class,
                key_type,
                label,
                owner,
                shared_with,
                quorum_use: r.u32()?,
                quorum_manage: r.u32()?,
            });
        }
        Ok(Inventory {
            quorum,
            trust_anchors,
            users,
            objects,
        })
    }

    /// Decode [`Inventory::encode`]'s bytes (all of them).
    pub fn decode(b: &[u8]) -> Result<Inventory, HeaderFault> {
        let mut r = Reader { b };
        let inv = Inventory::read(&mut r)?;
        if !r.b.is_empty() {
            return Err(HeaderFault::Unreadable);
        }
        Ok(inv)
    }
}

impl Header {
    /// The header's bytes up to (not including) its MAC: what the MAC covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let inv = self.inventory.encode();
        let id = &self.backup_id.as_bytes()[..self.backup_id.len().min(MAX_ID_LEN)];
        let mut out = Vec::with_capacity(PREFIX_LEN + 96 + id.len() + inv.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.fleet);
        out.extend_from_slice(&self.wrapped_key);
        let len = PREFIX_LEN + 8 + 16 + 1 + id.len() + 8 + 8 + 4 + 8 + 4 + inv.len() + 32;
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&self.image_len.to_be_bytes());
        out.extend_from_slice(&self.cluster_id);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.audit_seq.to_be_bytes());
        out.extend_from_slice(&self.segments.to_be_bytes());
        out.extend_from_slice(&self.body_len.to_be_bytes());
        out.extend_from_slice(&(inv.len() as u32).to_be_bytes());
        out.extend_from_slice(&inv);
        out
    }

    /// The header's length for these fields (MAC included).
    pub fn len(&self) -> usize {
        self.signed_bytes().len() + 32
    }

    /// Never empty (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole header: [`Header::signed_bytes`] and the MAC.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.signed_bytes();
        out.extend_from_slice(&self.mac);
        out
    }

    /// Read the header at the start of `image`, and its length in bytes. Nothing is
    /// authenticated here: a member checks the MAC ([`Prefix::signed`]) before it trusts a
    /// field past the prefix.
    pub fn parse(image: &[u8]) -> Result<(Header, usize), HeaderFault> {
        let p = Prefix::parse(image)?;
        let header = &image[PREFIX_LEN..p.header_len as usize];
        // Past the prefix the header's own length bounds every field: one that does not fit
        // is a changed header, not a short image.
        let mut r = Reader { b: header };
        let mut fields = || -> Result<Header, HeaderFault> {
            let image_len = r.u64()?;
            let mut cluster_id = [0u8; 16];
            cluster_id.copy_from_slice(r.take(16)?);
            let n = r.u8()? as usize;
            let backup_id =
                String::from_utf8(r.take(n)?.to_vec()).map_err(|_| HeaderFault::Changed)?;
            let created_ms = r.u64()?;
            let audit_seq = r.u64()?;
            let segments = r.u32()?;
            let body_len = r.u64()?;
            let n = r.u32()? as usize;
            let inventory = Inventory::decode(r.take(n)?)?;
            let mut mac = [0u8; 32];
            mac.copy_from_slice(r.take(32)?);
            Ok(Header {
                fleet: p.fleet,
                wrapped_key: p.wrapped_key,
                image_len,
                cluster_id,
                backup_id,
                created_ms,
                audit_seq,
                segments,
                body_len,
                inventory,
                mac,
            })
        };
        let parsed = fields().map_err(|_| HeaderFault::Changed)?;
        if !r.b.is_empty() {
            return Err(HeaderFault::Changed);
        }
        Ok((parsed, p.header_len as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            fleet: [1; 8],
            wrapped_key: [5; WRAPPED_KEY_LEN],
            image_len: 200_000,
            cluster_id: [7; 16],
            backup_id: "b-1".into(),
            created_ms: 1_700_000_000_000,
            audit_seq: 42,
            segments: 3,
            body_len: 150_000,
            inventory: Inventory {
                quorum: 2,
                trust_anchors: vec![[3; 32]],
                users: vec![InvUser {
                    name: "alice".into(),
                    role: Role::User,
                    locked: false,
                    approval_key: true,
                }],
                objects: vec![InvObject {
                    id: 9,
                    class: 3,
                    key_type: Some(0),
                    label: "root".into(),
                    owner: Some("alice".into()),
                    shared_with: vec!["bob".into()],
                    quorum_use: 2,
                    quorum_manage: 1,
                }],
            },
            mac: [9; 32],
        }
    }

    #[test]
    fn a_header_reads_back_and_every_cut_is_truncated() {
        let h = header();
        let mut b = h.encode();
        let whole = b.len();
        b.extend_from_slice(b"segments follow");
        let (back, len) = Header::parse(&b).unwrap();
        assert_eq!(back, h);
        assert_eq!(len, whole);
        assert_eq!(h.len(), whole);
        for cut in 1..whole {
            assert_eq!(
                Header::parse(&b[..cut]),
                Err(HeaderFault::Truncated),
                "cut at {cut}"
            );
        }
        assert_eq!(
            Header::parse(b"PK\x03\x04zip"),
            Err(HeaderFault::Unreadable)
        );
        let mut short = h.encode();
        short[PREFIX_LEN - 1] -= 1;
        assert_eq!(Header::parse(&short), Err(HeaderFault::Changed));
        let mut v2 = h.encode();
        v2[4] = 2;
        assert_eq!(Header::parse(&v2), Err(HeaderFault::Unreadable));
    }

    #[test]
    fn ids_are_path_safe() {
        assert!(valid_id("20261207T161500Z-0a1b2c3d"));
        for bad in ["", ".hidden", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
