//! The cluster clone path: how a token object made on one member reaches the others, and how
//! members compare what they hold.
//!
//! # Trust
//! Members of one cluster share a 32-byte *clone key* (`clone.key` in each member's data
//! directory, mode 0600, made once by [`provision`] and copied to every member when the cluster
//! is set up, as an HSM cluster shares its cloning domain). Nothing outside the members ever
//! holds it: the engine moves clone blobs between members but cannot read them.
//!
//! # Clone blob
//! ```text
//! "HPC" version(1) | id: u64 BE | nonce(12) | AES-256-GCM(record) + tag(16)
//! record = owner tag(1) [len u16 BE, UTF-8] | attrs len u32 BE | attrs | key material
//! AAD    = "hsmpool-clone-v1" | id
//! ```
//! The object keeps its id on every member (the id is the cluster-wide object id), its owner,
//! every attribute (so `CKA_SENSITIVE`, `CKA_EXTRACTABLE`, `CKA_LOCAL`... travel unchanged) and
//! its key material. A blob from another cluster, or changed in transit, fails its tag and is
//! refused with `CKR_WRAPPED_KEY_INVALID`.
//!
//! # Digests
//! A member's *object digest* is HMAC-SHA256 under a key derived from the clone key, over the
//! id, owner, attributes and key material. Equal digests mean equal objects; the digest says
//! nothing about the key material to anyone without the clone key.

use std::path::{Path, PathBuf};

use aws_lc_rs::hkdf;
use aws_lc_rs::hmac;
use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::error::{SimError, SimResult};
use crate::store::{provision_key_file, read_key_file, SealKey};

/// The clone key's file name in a member's data directory.
pub const CLONE_KEY_FILE: &str = "clone.key";

const BLOB_MAGIC: &[u8; 3] = b"HPC";
const BLOB_VERSION: u8 = 1;
const AAD_TAG: &[u8] = b"hsmpool-clone-v1";
const HKDF_SALT: &[u8] = b"hsmpool cluster v1";

/// The cluster's shared key, as a member holds it: one key to seal clone blobs, one to
/// compute object digests, both derived from the file's 32 bytes.
pub struct CloneKey {
    seal: SealKey,
    digest: hmac::Key,
    cluster_id: [u8; 16],
}

/// One object as it travels in a clone blob.
pub struct CloneRecord {
    /// The cluster-wide object id.
    pub id: u64,
    /// The owning crypto user, if any.
    pub owner: Option<String>,
    /// The attribute blob (`object::encode_attrs`).
    pub attrs: Vec<u8>,
    /// The serialised key material (empty for objects without one).
    pub secret: Zeroizing<Vec<u8>>,
}

fn derive(secret: &[u8], info: &[u8]) -> SimResult<Zeroizing<Vec<u8>>> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
    let mut out = Zeroizing::new(vec![0u8; 32]);
    prk.expand(&[info], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| SimError::Store("deriving the cluster keys failed".into()))?;
    Ok(out)
}

fn aad(id: u64) -> Vec<u8> {
    let mut a = AAD_TAG.to_vec();
    a.extend_from_slice(&id.to_be_bytes());
    a
}

impl CloneKey {
    /// The member's clone key, if its data directory has one.
    pub fn load(data_dir: &Path) -> SimResult<Option<CloneKey>> {
        match read_key_file(&data_dir.join(CLONE_KEY_FILE), false)? {
            Some(secret) => CloneKey::from_secret(&secret).map(Some),
            None => Ok(None),
        }
    }

    fn from_secret(secret: &[u8]) -> SimResult<CloneKey> {
        let mut cluster_id = [0u8; 16];
        cluster_id.copy_from_slice(&derive(secret, b"cluster id")?[..16]);
        Ok(CloneKey {
            seal: SealKey::new(&derive(secret, b"clone blob")?)?,
            digest: hmac::Key::new(hmac::HMAC_SHA256, &derive(secret, b"object digest")?),
            cluster_id,
        })
    }

    /// The cluster's id: derived from the clone key, so every member of one cluster has the
    /// same one and a cluster restored from a backup (a new clone key) has a new one. It says
    /// nothing about the key.
    pub fn cluster_id(&self) -> [u8; 16] {
        self.cluster_id
    }

    /// Seal one object for another member of the cluster.
    pub fn seal(&self, rec: &CloneRecord) -> SimResult<Vec<u8>> {
        let mut plain = Zeroizing::new(Vec::with_capacity(rec.attrs.len() + rec.secret.len() + 64));
        match &rec.owner {
            Some(o) => {
                let len = u16::try_from(o.len()).map_err(|_| SimError::Rv(CKR_GENERAL_ERROR))?;
                plain.push(1);
                plain.extend_from_slice(&len.to_be_bytes());
                plain.extend_from_slice(o.as_bytes());
            }
            None => plain.push(0),
        }
        let alen = u32::try_from(rec.attrs.len()).map_err(|_| SimError::Rv(CKR_GENERAL_ERROR))?;
        plain.extend_from_slice(&alen.to_be_bytes());
        plain.extend_from_slice(&rec.attrs);
        plain.extend_from_slice(&rec.secret);
        let mut out = BLOB_MAGIC.to_vec();
        out.push(BLOB_VERSION);
        out.extend_from_slice(&rec.id.to_be_bytes());
        out.extend_from_slice(&self.seal.seal(&aad(rec.id), &plain)?);
        Ok(out)
    }

    /// Open a clone blob; `CKR_WRAPPED_KEY_INVALID` when it is malformed, from another cluster
    /// or changed.
    pub fn open(&self, blob: &[u8]) -> SimResult<CloneRecord> {
        let bad = || SimError::Rv(CKR_WRAPPED_KEY_INVALID);
        if blob.len() < 12 || &blob[..3] != BLOB_MAGIC || blob[3] != BLOB_VERSION {
            return Err(bad());
        }
        let id = u64::from_be_bytes(blob[4..12].try_into().map_err(|_| bad())?);
        let plain = self.seal.open(&aad(id), &blob[12..]).ok_or_else(bad)?;
        let mut rest: &[u8] = &plain;
        let mut take = |n: usize| -> SimResult<&[u8]> {
            if rest.len() < n {
                return Err(bad());
            }
            let (a, b) = rest.split_at(n);
            rest = b;
            Ok(a)
        };
        let owner = match take(1)?[0] {
            0 => None,
            1 => {
                let len = u16::from_be_bytes(take(2)?.try_into().map_err(|_| bad())?);
                let name = std::str::from_utf8(take(usize::from(len))?).map_err(|_| bad())?;
                Some(name.to_string())
            }
            _ => return Err(bad()),
        };
        let alen = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?);
        let attrs = take(alen as usize)?.to_vec();
        let secret = Zeroizing::new(rest.to_vec());
        Ok(CloneRecord {
            id,
            owner,
            attrs,
            secret,
        })
    }

    /// The object digest of one object (see the module documentation).
    pub fn digest(&self, id: u64, owner: Option<&str>, attrs: &[u8], secret: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.digest);
        ctx.update(&id.to_be_bytes());
        match owner {
            Some(o) => {
                ctx.update(&[1]);
                ctx.update(&(o.len() as u64).to_be_bytes());
                ctx.update(o.as_bytes());
            }
            None => ctx.update(&[0]),
        }
        ctx.update(&(attrs.len() as u64).to_be_bytes());
        ctx.update(attrs);
        ctx.update(secret);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

const USER_MAGIC: &[u8; 3] = b"HPU";
const USER_AAD_TAG: &[u8] = b"hsmpool-user-clone-v1";

impl CloneKey {
    /// Seal one user record (its encoding is the caller's: `hsm::users`) for another member.
    /// `name` travels in clear in the header and is bound by the tag.
    ///
    /// ```text
    /// "HPU" version(1) | name len u8 | name | nonce(12) | AES-256-GCM(record) + tag(16)
    /// AAD = "hsmpool-user-clone-v1" | name len u8 | name
    /// ```
    pub fn seal_user(&self, name: &str, record: &[u8]) -> SimResult<Vec<u8>> {
        let len = u8::try_from(name.len()).map_err(|_| SimError::Rv(CKR_GENERAL_ERROR))?;
        let mut head = USER_MAGIC.to_vec();
        head.push(BLOB_VERSION);
        head.push(len);
        head.extend_from_slice(name.as_bytes());
        let mut aad = USER_AAD_TAG.to_vec();
        aad.extend_from_slice(&head[4..]);
        let mut out = head;
        out.extend_from_slice(&self.seal.seal(&aad, record)?);
        Ok(out)
    }

    /// Open a user blob: (name, record); `CKR_WRAPPED_KEY_INVALID` when it is malformed, from
    /// another cluster or changed.
    pub fn open_user(&self, blob: &[u8]) -> SimResult<(String, Zeroizing<Vec<u8>>)> {
        let bad = || SimError::Rv(CKR_WRAPPED_KEY_INVALID);
        if blob.len() < 5 || &blob[..3] != USER_MAGIC || blob[3] != BLOB_VERSION {
            return Err(bad());
        }
        let end = 5 + usize::from(blob[4]);
        let name = blob.get(5..end).ok_or_else(bad)?;
        let name = std::str::from_utf8(name).map_err(|_| bad())?.to_string();
        let mut aad = USER_AAD_TAG.to_vec();
        aad.extend_from_slice(&blob[4..end]);
        let record = self.seal.open(&aad, &blob[end..]).ok_or_else(bad)?;
        Ok((name, record))
    }

    /// A keyed digest of arbitrary bytes (a user record), under the same key as object digests
    /// but a different domain.
    pub fn digest_bytes(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.digest);
        ctx.update(&(domain.len() as u64).to_be_bytes());
        ctx.update(domain);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// Give every member data directory in `dirs` the same clone key: the one some of them already
/// have (they must agree), else a new random one; and the fleet's backup key
/// ([`crate::backup::provision`]). Directories are created as needed.
pub fn provision(dirs: &[PathBuf]) -> SimResult<()> {
    provision_key_file(dirs, CLONE_KEY_FILE, None, "cluster")?;
    // Members of one cluster are HSMs of one fleet: they hold its backup key too.
    crate::backup::provision(dirs, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CloneRecord {
        CloneRecord {
            id: 42,
            owner: Some("alice".into()),
            attrs: vec![1, 2, 3],
            secret: Zeroizing::new(vec![9; 40]),
        }
    }

    #[test]
    fn a_blob_opens_under_the_same_cluster_key_only() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, other) = (d.path().join("a"), d.path().join("b"), d.path().join("x"));
        provision(&[a.clone(), b.clone()]).unwrap();
        provision(std::slice::from_ref(&other)).unwrap();
        let ka = CloneKey::load(&a).unwrap().unwrap();
        let kb = CloneKey::load(&b).unwrap().unwrap();
        let kx = CloneKey::load(&other).unwrap().unwrap();
        let blob = ka.seal(&record()).unwrap();
        let back = kb.open(&blob).unwrap();
        assert_eq!(back.id, 42);
        assert_eq!(back.owner.as_deref(), Some("alice"));
        assert_eq!(back.attrs, vec![1, 2, 3]);
        assert_eq!(*back.secret, vec![9; 40]);
        assert!(matches!(
            kx.open(&blob),
            Err(SimError::Rv(CKR_WRAPPED_KEY_INVALID))
        ));
        // The key material is not in the blob in clear.
        assert!(!blob.windows(40).any(|w| w == [9; 40]));
        // Any changed byte, including the id in the header, is refused.
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 1;
            assert!(kb.open(&t).is_err(), "byte {i}");
        }
        assert!(kb.open(&blob[..20]).is_err());
        assert_eq!(
            ka.digest(1, None, b"x", b"k"),
            kb.digest(1, None, b"x", b"k")
        );
        assert_ne!(
            ka.digest(1, None, b"x", b"k"),
            kx.digest(1, None, b"x", b"k")
        );
        assert_ne!(
            ka.digest(1, None, b"x", b"k"),
            ka.digest(1, Some(""), b"x", b"k")
        );
    }

    #[test]
    fn provision_keeps_an_existing_key_and_refuses_two_clusters() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        provision(std::slice::from_ref(&a)).unwrap();
        let before = std::fs::read(a.join(CLONE_KEY_FILE)).unwrap();
        provision(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(before, std::fs::read(b.join(CLONE_KEY_FILE)).unwrap());
        provision(std::slice::from_ref(&c)).unwrap();
        assert!(provision(&[a, c]).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(b.join(CLONE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
