//! Backup images (the layout is `hsmpool_member::backup`'s): sealing a store's snapshot under
//! a fresh ephemeral backup key (EBK) wrapped by the fleet's persistent backup key (PBK), and
//! opening one, with a refusal that names what is wrong.
//!
//! # The persistent backup key
//! Every simulated HSM of one fleet holds the same 32-byte PBK in `backup.key` in its data
//! directory (mode 0600), as every CloudHSM HSM derives the same PBK from keys its makers
//! hold: that is what lets a backup be restored into a *new* cluster. [`provision`] gives new
//! HSM directories the fleet's key (copied from an HSM that has it, else made); it is never
//! part of an image, and nothing but a member reads it.
//!
//! # What is checked when an image is opened, in order
//! 1. its prefix (magic, version): `CKR_HSMPOOL_BACKUP_UNREADABLE`; cut inside the prefix or
//!    header: `..._TRUNCATED`;
//! 2. the fleet: another fleet's image is `..._UNREADABLE`;
//! 3. the EBK unwraps (AES key wrap's integrity check) and the header MAC verifies, before any
//!    field past the prefix is read: otherwise `..._CHANGED`;
//! 4. the image's length, now authentic: shorter is `..._TRUNCATED`, longer `..._CHANGED`;
//! 5. the cluster and the backup id asked for: `..._WRONG_CLUSTER`;
//! 6. each segment in turn: a segment whose tag verifies under another position is
//!    `..._REORDERED`; any other failure (a tag, a length, the count) is `..._CHANGED`.

use std::path::{Path, PathBuf};

use aws_lc_rs::hkdf;
use aws_lc_rs::hmac;
use aws_lc_rs::key_wrap::{self, KeyEncryptionKey, KeyWrap as _};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki_sys::CK_RV;
use hsmpool_member::backup::{
    Header, Inventory, Prefix, CKR_HSMPOOL_BACKUP_CHANGED, CKR_HSMPOOL_BACKUP_REORDERED,
    CKR_HSMPOOL_BACKUP_TRUNCATED, CKR_HSMPOOL_BACKUP_UNREADABLE, CKR_HSMPOOL_BACKUP_WRONG_CLUSTER,
    SEGMENT, WRAPPED_KEY_LEN,
};
use zeroize::Zeroizing;

use crate::error::{SimError, SimResult};
use crate::store::{
    provision_key_file, read_key_file, SealKey, Snapshot, StoredObject, StoredUser, UserMeta,
};

/// The PBK's file name in a member's data directory.
pub const BACKUP_KEY_FILE: &str = "backup.key";

const HKDF_SALT: &[u8] = b"hsmpool backup v1";
const BODY_MAGIC: &[u8; 4] = b"HPBS";

fn random(out: &mut [u8]) -> SimResult<()> {
    SystemRandom::new()
        .fill(out)
        .map_err(|_| SimError::Store("random generator failed".into()))
}

fn derive(secret: &[u8], info: &[u8]) -> SimResult<Zeroizing<Vec<u8>>> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
    let mut out = Zeroizing::new(vec![0u8; 32]);
    prk.expand(&[info], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| SimError::Store("deriving the backup keys failed".into()))?;
    Ok(out)
}

/// The fleet's persistent backup key, as a member holds it.
pub struct BackupKey {
    key: Zeroizing<Vec<u8>>,
    fleet: [u8; 8],
}

impl BackupKey {
    /// The member's PBK, if its data directory has one.
    pub fn load(data_dir: &Path) -> SimResult<Option<BackupKey>> {
        let Some(key) = read_key_file(&data_dir.join(BACKUP_KEY_FILE), false)? else {
            return Ok(None);
        };
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &key),
            b"hsmpool fleet id",
        );
        let mut fleet = [0u8; 8];
        fleet.copy_from_slice(&tag.as_ref()[..8]);
        Ok(Some(BackupKey { key, fleet }))
    }

    fn kek(&self) -> SimResult<KeyEncryptionKey<key_wrap::AesBlockCipher>> {
        KeyEncryptionKey::new(&key_wrap::AES_256, &self.key)
            .map_err(|_| SimError::Store("bad backup key".into()))
    }

    fn wrap(&self, ebk: &[u8]) -> SimResult<[u8; WRAPPED_KEY_LEN]> {
        let mut out = [0u8; WRAPPED_KEY_LEN];
        let n = self
            .kek()?
            .wrap(ebk, &mut out)
            .map_err(|_| SimError::Store("wrapping the backup key failed".into()))?
            .len();
        if n != WRAPPED_KEY_LEN {
            return Err(SimError::Store(
                "wrapped backup key of a wrong length".into(),
            ));
        }
        Ok(out)
    }

    fn unwrap(&self, wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(vec![0u8; WRAPPED_KEY_LEN]);
        let n = self.kek().ok()?.unwrap(wrapped, &mut out).ok()?.len();
        out.truncate(n);
        (n == 32).then_some(out)
    }
}

/// The keys one image's EBK gives: the header MAC's and the segments'.
struct ImageKeys {
    mac: hmac::Key,
    seal: SealKey,
}

impl ImageKeys {
    fn new(ebk: &[u8]) -> SimResult<ImageKeys> {
        Ok(ImageKeys {
            mac: hmac::Key::new(hmac::HMAC_SHA256, &derive(ebk, b"header mac")?),
            seal: SealKey::new(&derive(ebk, b"segments")?)?,
        })
    }
}

fn segment_aad(mac: &[u8; 32], index: u32, last: bool) -> Vec<u8> {
    let mut a = b"hsmpool-backup-segment-v1".to_vec();
    a.extend_from_slice(mac);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(u8::from(last));
    a
}

/// Who may be restored: the cluster (and backup) the caller asked for.
pub struct Expected {
    /// The cluster the backup must belong to.
    pub cluster_id: [u8; 16],
    /// The backup it must be (`None`: any of that cluster's).
    pub backup_id: Option<String>,
}

/// What sealing needs besides the snapshot.
pub struct ImageInfo<'a> {
    /// The cluster the member belongs to.
    pub cluster_id: [u8; 16],
    /// The backup's id.
    pub backup_id: &'a str,
    /// When it is taken.
    pub created_ms: u64,
    /// What it holds.
    pub inventory: Inventory,
}

/// Seal `snap` into a backup image under a fresh EBK wrapped by `pbk`.
pub fn seal(pbk: &BackupKey, info: ImageInfo<'_>, snap: &Snapshot) -> SimResult<Vec<u8>> {
    let body = encode_body(snap)?;
    let mut ebk = Zeroizing::new(vec![0u8; 32]);
    random(&mut ebk)?;
    let keys = ImageKeys::new(&ebk)?;
    let segments = body.len().div_ceil(SEGMENT).max(1);
    let mut header = Header {
        fleet: pbk.fleet,
        wrapped_key: pbk.wrap(&ebk)?,
        image_len: 0,
        cluster_id: info.cluster_id,
        backup_id: info.backup_id.to_string(),
        created_ms: info.created_ms,
        audit_seq: snap.audit_seq,
        segments: u32::try_from(segments)
            .map_err(|_| SimError::Store("backup too large".into()))?,
        body_len: body.len() as u64,
        inventory: info.inventory,
        mac: [0; 32],
    };
    // Each segment grows by its frame (9), nonce (12) and tag (16).
    header.image_len = (header.len() + body.len() + segments * (9 + 12 + 16)) as u64;
    let tag = hmac::sign(&keys.mac, &header.signed_bytes());
    header.mac.copy_from_slice(tag.as_ref());
    let mut out = header.encode();
    out.reserve(header.image_len as usize - out.len());
    let parts: Vec<&[u8]> = if body.is_empty() {
        vec![&[][..]]
    } else {
        body.chunks(SEGMENT).collect()
    };
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let sealed = keys
            .seal
            .seal(&segment_aad(&header.mac, i as u32, last), part)?;
        out.extend_from_slice(&(i as u32).to_be_bytes());
        out.push(u8::from(last));
        out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        out.extend_from_slice(&sealed);
    }
    debug_assert_eq!(out.len() as u64, header.image_len);
    Ok(out)
}

/// Open `image` under `pbk` for `expect`: its header and the snapshot it holds, or the
/// refusal that names what is wrong (see the module documentation for the order of checks).
pub fn open(pbk: &BackupKey, image: &[u8], expect: &Expected) -> Result<(Header, Snapshot), CK_RV> {
    let prefix = Prefix::parse(image).map_err(|f| f.rv())?;
    if prefix.fleet != pbk.fleet {
        return Err(CKR_HSMPOOL_BACKUP_UNREADABLE);
    }
    let ebk = pbk
        .unwrap(&prefix.wrapped_key)
        .ok_or(CKR_HSMPOOL_BACKUP_CHANGED)?;
    let keys = ImageKeys::new(&ebk).map_err(|_| CKR_HSMPOOL_BACKUP_CHANGED)?;
    let (signed, mac) = prefix.signed(image);
    hmac::verify(&keys.mac, signed, mac).map_err(|_| CKR_HSMPOOL_BACKUP_CHANGED)?;
    let (header, header_len) = Header::parse(image).map_err(|_| CKR_HSMPOOL_BACKUP_CHANGED)?;
    if (image.len() as u64) < header.image_len {
        return Err(CKR_HSMPOOL_BACKUP_TRUNCATED);
    }
    if image.len() as u64 > header.image_len {
        return Err(CKR_HSMPOOL_BACKUP_CHANGED);
    }
    if header.cluster_id != expect.cluster_id
        || expect
            .backup_id
            .as_deref()
            .is_some_and(|id| id != header.backup_id)
    {
        return Err(CKR_HSMPOOL_BACKUP_WRONG_CLUSTER);
    }
    let mut body = Zeroizing::new(Vec::with_capacity(header.body_len as usize));
    let mut rest = &image[header_len..];
    for i in 0..header.segments {
        if rest.len() < 9 {
            return Err(CKR_HSMPOOL_BACKUP_CHANGED);
        }
        let claimed = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let last_flag = rest[4];
        let len = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) as usize;
        if last_flag > 1 || rest.len() < 9 + len {
            return Err(CKR_HSMPOOL_BACKUP_CHANGED);
        }
        let sealed = &rest[9..9 + len];
        rest = &rest[9 + len..];
        let last = i + 1 == header.segments;
        match keys.seal.open(&segment_aad(&header.mac, i, last), sealed) {
            Some(part) if claimed == i && last_flag == u8::from(last) => {
                body.extend_from_slice(&part)
            }
            _ => {
                // Authentic, but made for another position: moved.
                let elsewhere = keys
                    .seal
                    .open(&segment_aad(&header.mac, claimed, last_flag == 1), sealed)
                    .is_some();
                return Err(if elsewhere && claimed != i {
                    CKR_HSMPOOL_BACKUP_REORDERED
                } else {
                    CKR_HSMPOOL_BACKUP_CHANGED
                });
            }
        }
    }
    if !rest.is_empty() || body.len() as u64 != header.body_len {
        return Err(CKR_HSMPOOL_BACKUP_CHANGED);
    }
    let snap = decode_body(&body).ok_or(CKR_HSMPOOL_BACKUP_CHANGED)?;
    Ok((header, snap))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> SimResult<()> {
    let n = u32::try_from(b.len()).map_err(|_| SimError::Store("backup field too large".into()))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// The snapshot's bytes (inside the sealed segments).
fn encode_body(snap: &Snapshot) -> SimResult<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::new());
    out.extend_from_slice(BODY_MAGIC);
    out.extend_from_slice(&snap.audit_seq.to_be_bytes());
    out.extend_from_slice(&(snap.meta.len() as u32).to_be_bytes());
    for (k, v) in &snap.meta {
        put_bytes(&mut out, k.as_bytes())?;
        put_bytes(&mut out, v)?;
    }
    out.extend_from_slice(&(snap.users.len() as u32).to_be_bytes());
    for u in &snap.users {
        put_bytes(&mut out, u.name.as_bytes())?;
        out.push(u.role);
        put_bytes(&mut out, &u.record)?;
        out.extend_from_slice(&u.meta.version.to_be_bytes());
        out.push(u8::from(u.meta.deleted));
        out.push(u8::from(u.meta.locked));
        out.extend_from_slice(&u.meta.resets.to_be_bytes());
        out.extend_from_slice(&u.meta.failures.to_be_bytes());
        put_bytes(&mut out, &u.extra)?;
    }
    out.extend_from_slice(&(snap.objects.len() as u32).to_be_bytes());
    for o in &snap.objects {
        out.extend_from_slice(&o.id.to_be_bytes());
        match &o.owner {
            Some(w) => {
                out.push(1);
                put_bytes(&mut out, w.as_bytes())?;
            }
            None => out.push(0),
        }
        put_bytes(&mut out, &o.attrs)?;
        put_bytes(&mut out, &o.secret)?;
    }
    Ok(out)
}

struct Body<'a> {
    b: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

fn decode_body(b: &[u8]) -> Option<Snapshot> {
    let mut r = Body { b };
    if r.take(4)? != BODY_MAGIC {
        return None;
    }
    let audit_seq = r.u64()?;
    let n = r.u32()? as usize;
    let mut meta = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        meta.push((r.string()?, r.bytes()?.to_vec()));
    }
    let n = r.u32()? as usize;
    let mut users = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let name = r.string()?;
        let role = r.u8()?;
        let record = Zeroizing::new(r.bytes()?.to_vec());
        let version = r.u64()?;
        let deleted = r.u8()? != 0;
        let locked = r.u8()? != 0;
        let resets = r.u64()?;
        let failures = r.u32()?;
        let extra = r.bytes()?.to_vec();
        users.push(StoredUser {
            name,
            role,
            record,
            meta: UserMeta {
                version,
                deleted,
                locked,
                resets,
                failures,
            },
            extra,
        });
    }
    let n = r.u32()? as usize;
    let mut objects = Vec::with_capacity(n.min(65536));
    for _ in 0..n {
        let id = r.u64()?;
        let owner = match r.u8()? {
            0 => None,
            1 => Some(r.string()?),
            _ => return None,
        };
        let attrs = r.bytes()?.to_vec();
        let secret = Zeroizing::new(r.bytes()?.to_vec());
        objects.push(StoredObject {
            id,
            owner,
            attrs,
            secret,
        });
    }
    r.b.is_empty().then_some(Snapshot {
        meta,
        users,
        objects,
        audit_seq,
    })
}

/// Give every HSM data directory in `dirs` the fleet's PBK: the one `from` (an HSM directory
/// of the fleet) or any of them holds (they must agree), else a new one. Directories are made
/// as needed.
pub fn provision(dirs: &[PathBuf], from: Option<&Path>) -> SimResult<()> {
    provision_key_file(dirs, BACKUP_KEY_FILE, from, "fleet")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(objects: usize, secret_len: usize) -> Snapshot {
        Snapshot {
            meta: vec![("label".into(), vec![b'x'; 32])],
            users: vec![StoredUser {
                name: "alice".into(),
                role: 1,
                record: Zeroizing::new(vec![1, 2, 3]),
                meta: UserMeta {
                    version: 3,
                    deleted: false,
                    locked: true,
                    resets: 2,
                    failures: 1,
                },
                extra: vec![4; 65],
            }],
            objects: (0..objects)
                .map(|i| StoredObject {
                    id: i as u64 + 1,
                    owner: (i % 2 == 0).then(|| "alice".into()),
                    attrs: vec![i as u8; 40],
                    secret: Zeroizing::new(vec![7; secret_len]),
                })
                .collect(),
            audit_seq: 17,
        }
    }

    fn pbk(dir: &Path) -> BackupKey {
        provision(&[dir.to_path_buf()], None).unwrap();
        BackupKey::load(dir).unwrap().unwrap()
    }

    fn image(pbk: &BackupKey, cluster: [u8; 16], snap: &Snapshot) -> Vec<u8> {
        seal(
            pbk,
            ImageInfo {
                cluster_id: cluster,
                backup_id: "b-1",
                created_ms: 5,
                inventory: Inventory::default(),
            },
            snap,
        )
        .unwrap()
    }

    fn expect(cluster: [u8; 16]) -> Expected {
        Expected {
            cluster_id: cluster,
            backup_id: Some("b-1".into()),
        }
    }

    #[test]
    fn an_image_opens_whole_and_names_every_kind_of_damage() {
        let dir = tempfile::tempdir().unwrap();
        let key = pbk(dir.path());
        // Three segments (some 150 KiB of body).
        let snap = snapshot(300, 480);
        let img = image(&key, [1; 16], &snap);
        let (h, back) = open(&key, &img, &expect([1; 16])).unwrap();
        assert_eq!(h.segments, 3);
        assert_eq!(back.objects.len(), 300);
        assert!(back.users[0].meta.locked);
        assert_eq!(back.audit_seq, 17);
        assert_eq!(*back.objects[9].secret, vec![7; 480]);

        // Every single byte changed: refused; past the prefix, as changed.
        let (_, header_len) = Header::parse(&img).unwrap();
        for at in (0..img.len()).step_by(97).chain(0..header_len) {
            let mut bad = img.clone();
            bad[at] ^= 0x20;
            let rv = open(&key, &bad, &expect([1; 16])).err();
            // The magic, the version and the fleet id: another fleet's image, or none, as far
            // as anyone can tell.
            let want = if at < 13 {
                CKR_HSMPOOL_BACKUP_UNREADABLE
            } else {
                CKR_HSMPOOL_BACKUP_CHANGED
            };
            // A header length changed upwards past the image reads as a cut.
            if (53..57).contains(&at) && rv == Some(CKR_HSMPOOL_BACKUP_TRUNCATED) {
                continue;
            }
            assert_eq!(rv, Some(want), "byte {at} of {}", img.len());
        }
        // Every cut: truncated.
        for cut in (0..img.len()).step_by(211).skip(1) {
            assert_eq!(
                open(&key, &img[..cut], &expect([1; 16])).err(),
                Some(CKR_HSMPOOL_BACKUP_TRUNCATED),
                "cut at {cut}"
            );
        }
        // Bytes added after the end: changed.
        let mut longer = img.clone();
        longer.push(0);
        assert_eq!(
            open(&key, &longer, &expect([1; 16])).err(),
            Some(CKR_HSMPOOL_BACKUP_CHANGED)
        );
        // The first two segments swapped (each is 9 + 12 + SEGMENT + 16 bytes long).
        let seg = 9 + 12 + SEGMENT + 16;
        let mut swapped = img[..header_len].to_vec();
        swapped.extend_from_slice(&img[header_len + seg..header_len + 2 * seg]);
        swapped.extend_from_slice(&img[header_len..header_len + seg]);
        swapped.extend_from_slice(&img[header_len + 2 * seg..]);
        assert_eq!(swapped.len(), img.len());
        assert_eq!(
            open(&key, &swapped, &expect([1; 16])).err(),
            Some(CKR_HSMPOOL_BACKUP_REORDERED)
        );
        // Whole and authentic, but of another cluster, or another backup.
        assert_eq!(
            open(&key, &img, &expect([2; 16])).err(),
            Some(CKR_HSMPOOL_BACKUP_WRONG_CLUSTER)
        );
        let other_id = Expected {
            cluster_id: [1; 16],
            backup_id: Some("b-2".into()),
        };
        assert_eq!(
            open(&key, &img, &other_id).err(),
            Some(CKR_HSMPOOL_BACKUP_WRONG_CLUSTER)
        );
        // Another fleet's HSM cannot read it.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(
            open(&pbk(other.path()), &img, &expect([1; 16])).err(),
            Some(CKR_HSMPOOL_BACKUP_UNREADABLE)
        );
    }

    #[test]
    fn an_empty_store_makes_an_image_too() {
        let dir = tempfile::tempdir().unwrap();
        let key = pbk(dir.path());
        let snap = Snapshot {
            meta: vec![],
            users: vec![],
            objects: vec![],
            audit_seq: 0,
        };
        let img = image(&key, [3; 16], &snap);
        let (h, back) = open(&key, &img, &expect([3; 16])).unwrap();
        assert_eq!(h.segments, 1);
        assert!(back.objects.is_empty());
    }

    #[test]
    fn the_fleet_key_is_shared_and_never_mixed() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        let b = root.path().join("b");
        provision(std::slice::from_ref(&a), None).unwrap();
        provision(std::slice::from_ref(&b), Some(&a)).unwrap();
        assert_eq!(
            std::fs::read(a.join(BACKUP_KEY_FILE)).unwrap(),
            std::fs::read(b.join(BACKUP_KEY_FILE)).unwrap()
        );
        let c = root.path().join("c");
        provision(std::slice::from_ref(&c), None).unwrap();
        assert!(provision(&[a, c], None).is_err());
    }
}
