//! Backups (see `crate::backup` for the image): taking one of this HSM's store, restoring one
//! into a new HSM, what a store holds (its inventory), and a signing self-test of restored
//! keys.

use std::sync::Arc;

use cryptoki_sys::*;
use hsmpool_member::backup::{valid_id, InvObject, InvUser, Inventory, CHUNK};
use hsmpool_member::users::{shared_names, QUORUM_RECORD, TRUST_RECORD};
use hsmpool_member::KeyService;

use crate::backup::{self, Expected, ImageInfo};
use crate::error::{SimError, SimResult};
use crate::object;
use crate::store::{AuditEvent, Refused, Snapshot};
use crate::timing::OpClass;
use crate::types::{Mechanism, SignInput, CKA_HSMPOOL_SHARED_WITH};

use super::common::{attrs_quorum, now_ms, rv};
use super::{Hsm, HsmConfig, Role};

/// The message the self-test signs.
const SELF_TEST_MESSAGE: &[u8] = b"hsmpool backup verify: a restored key signs";

/// What one key's self-test found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTest {
    /// The key's id.
    pub id: u64,
    /// Its label.
    pub label: String,
    /// `Ok`, or what failed.
    pub result: Result<(), String>,
}

/// What a snapshot holds, without secrets.
pub(crate) fn inventory_of(snap: &Snapshot) -> Inventory {
    let mut inv = Inventory {
        quorum: 1,
        ..Inventory::default()
    };
    for u in snap.users.iter().filter(|u| !u.meta.deleted) {
        if u.name == QUORUM_RECORD {
            inv.quorum = u
                .extra
                .as_slice()
                .try_into()
                .map_or(1, u32::from_be_bytes)
                .max(1);
        } else if u.name == TRUST_RECORD {
            inv.trust_anchors = u
                .extra
                .chunks_exact(32)
                .filter_map(|c| c.try_into().ok())
                .collect();
        } else if let Some(role) = Role::from_code(u.role) {
            inv.users.push(InvUser {
                name: u.name.clone(),
                role,
                locked: u.meta.locked,
                approval_key: !u.extra.is_empty(),
            });
        }
    }
    inv.users.sort_by(|a, b| a.name.cmp(&b.name));
    for o in &snap.objects {
        let Some(attrs) = object::decode_attrs(&o.attrs) else {
            continue;
        };
        let ulong = |ty| -> Option<u64> {
            attrs
                .get(&ty)
                .and_then(|v| v.as_slice().try_into().ok())
                .map(CK_ULONG::from_ne_bytes)
        };
        let mut shared_with = attrs
            .get(&CKA_HSMPOOL_SHARED_WITH)
            .map(|v| shared_names(v))
            .unwrap_or_default();
        shared_with.sort();
        inv.objects.push(InvObject {
            id: o.id,
            class: ulong(CKA_CLASS).unwrap_or(u64::MAX),
            key_type: ulong(CKA_KEY_TYPE),
            label: attrs
                .get(&CKA_LABEL)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .unwrap_or_default(),
            owner: o.owner.clone(),
            shared_with,
            quorum_use: attrs_quorum(&attrs, KeyService::Use),
            quorum_manage: attrs_quorum(&attrs, KeyService::Manage),
        });
    }
    inv.objects.sort_by_key(|o| o.id);
    inv
}

impl Hsm {
    /// The backup capability: bytes `offset..` of backup image `id` (see
    /// `hsmpool_member::backup::Backup`). The call at offset 0 takes the image (one consistent
    /// read of the store) and writes an audit record; refused while the store holds a row
    /// whose seal does not verify (a backup must not quietly leave a key out). Officers only.
    pub fn export_backup(
        &self,
        sess: u64,
        id: &str,
        created_ms: u64,
        offset: u64,
    ) -> SimResult<(u64, Vec<u8>)> {
        self.fault_check()?; // fault hook
        match self.login_of(sess)? {
            Some((Role::Officer, _)) => {}
            _ => return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
        if !valid_id(id) {
            return Err(SimError::Rv(CKR_ARGUMENTS_BAD));
        }
        let image = if offset == 0 {
            // timing hook: a backup reads the whole store.
            let _timing = self.timed(|| (OpClass::Management, false));
            let image = Arc::new(self.take_image(sess, id, created_ms)?);
            *self.backup_image.lock() = Some((id.to_string(), Arc::clone(&image)));
            image
        } else {
            match &*self.backup_image.lock() {
                Some((held, image)) if held == id => Arc::clone(image),
                _ => return Err(SimError::Rv(CKR_OPERATION_NOT_INITIALIZED)),
            }
        };
        let total = image.len() as u64;
        let start = offset.min(total) as usize;
        let end = (offset.saturating_add(CHUNK)).min(total) as usize;
        if end as u64 == total {
            let mut held = self.backup_image.lock();
            if held.as_ref().is_some_and(|(h, _)| h == id) {
                *held = None;
            }
        }
        Ok((total, image[start..end].to_vec()))
    }

    fn take_image(&self, sess: u64, id: &str, created_ms: u64) -> SimResult<Vec<u8>> {
        let pbk = self.backup_key.as_ref().ok_or_else(|| {
            SimError::Store(format!(
                "{}: this HSM has no backup key ({}); provision it with `hsmpool cluster clone-key`",
                self.store.path().display(),
                backup::BACKUP_KEY_FILE
            ))
        })?;
        let cluster_id = self.clone_key_required()?.cluster_id();
        let mut refused = Refused::default();
        let snap = self.store.snapshot(&mut refused)?;
        if !refused.objects.is_empty() || !refused.users.is_empty() {
            tracing::error!(
                store = %self.store.path().display(),
                objects = refused.objects.len(),
                users = refused.users.len(),
                "backup refused: rows whose seal does not verify (run `hsmpool store verify`)"
            );
            return Err(SimError::Rv(CKR_DEVICE_ERROR));
        }
        let inventory = inventory_of(&snap);
        let detail = format!(
            "{} users, {} objects, at audit record {}",
            inventory.users.len(),
            inventory.objects.len(),
            snap.audit_seq
        );
        let image = backup::seal(
            pbk,
            ImageInfo {
                cluster_id,
                backup_id: id,
                created_ms,
                inventory,
            },
            &snap,
        )?;
        self.audit("backup_taken", &self.actor(sess), id, &detail);
        Ok(image)
    }

    /// The id of this member's cluster (see `crate::cluster::CloneKey::cluster_id`). Needs a
    /// login.
    pub fn cluster_id(&self, sess: u64) -> SimResult<[u8; 16]> {
        self.fault_check()?; // fault hook
        if self.login_of(sess)?.is_none() {
            return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN));
        }
        Ok(self.clone_key_required()?.cluster_id())
    }

    /// What this HSM's store holds now, without secrets (as a backup's inventory lists it).
    pub fn inventory(&self) -> SimResult<Inventory> {
        let mut refused = Refused::default();
        Ok(inventory_of(&self.store.snapshot(&mut refused)?))
    }

    /// Restore backup image `image` into the new HSM of `cfg` (its store must hold no user and
    /// no object; its directory must hold the fleet's backup key), checked against `expect`
    /// (a refusal names what is wrong: `hsmpool_member::backup`'s `CKR_HSMPOOL_BACKUP_*`).
    /// Everything comes back but the registered cluster certificates: the new cluster is
    /// unclaimed until its officers register its own (`cluster trust set`). Returns what the
    /// restored store holds.
    pub fn restore_into(cfg: HsmConfig, image: &[u8], expect: &Expected) -> SimResult<Inventory> {
        let hsm = Hsm::open(cfg.clone())?;
        let pbk = hsm.backup_key.as_ref().ok_or_else(|| {
            SimError::Store(format!(
                "{}: no backup key here: provision the new HSM from the fleet first",
                cfg.data_dir.display()
            ))
        })?;
        let (header, mut snap) = backup::open(pbk, image, expect).map_err(SimError::Rv)?;
        snap.users.retain(|u| u.name != TRUST_RECORD);
        let detail = format!(
            "from cluster {} at its audit record {}, taken at {} ms; cluster certificates left \
             out until registered again",
            hsmpool_member::backup::cluster_hex(&header.cluster_id),
            header.audit_seq,
            header.created_ms
        );
        let event = AuditEvent {
            at_ms: now_ms(),
            kind: "backup_restored",
            actor: "-",
            subject: &header.backup_id,
            detail: &detail,
        };
        hsm.store
            .restore(&snap, &event, &|m| hsm.sign_checkpoint(m))?;
        drop(hsm);
        Hsm::open(cfg)?.inventory()
    }

    /// Sign a fixed message with up to `sample` token keys that may sign (private keys and
    /// signing secret keys, in id order), and verify each signature: with the public key of
    /// the same `CKA_ID` when the token has one, else with the key itself. A check of restored
    /// key material that needs no user's login: it runs inside the HSM and nothing leaves it
    /// but the verdicts (for `hsmpool backup verify`, on a scratch HSM).
    pub fn self_test_sign(&self, sample: usize) -> Vec<SelfTest> {
        let mut keys: Vec<Arc<object::Object>> = self
            .objects
            .iter()
            .filter(|o| {
                o.token
                    && o.key.is_some()
                    && o.flag(CKA_SIGN)
                    && matches!(o.class, CKO_PRIVATE_KEY | CKO_SECRET_KEY)
            })
            .map(|o| o.value().clone())
            .collect();
        keys.sort_by_key(|o| o.id);
        keys.truncate(sample);
        keys.iter()
            .map(|k| SelfTest {
                id: k.id,
                label: k
                    .attrs
                    .get(&CKA_LABEL)
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .unwrap_or_default(),
                result: self.sign_and_verify(k),
            })
            .collect()
    }

    fn sign_and_verify(&self, k: &object::Object) -> Result<(), String> {
        let mech = match k.key_type {
            Some(CKK_RSA) => CKM_SHA256_RSA_PKCS,
            Some(CKK_EC) => CKM_ECDSA_SHA256,
            Some(CKK_EC_EDWARDS) => CKM_EDDSA,
            Some(CKK_GENERIC_SECRET) => CKM_SHA256_HMAC,
            Some(CKK_AES) => CKM_AES_CMAC,
            other => return Err(format!("no self-test for key type {other:?}")),
        };
        let mech = Mechanism::plain(mech);
        let key = Self::key_of(k).map_err(|e| e.to_string())?;
        let sig = rv(crate::crypto::sign(
            &mech,
            key,
            SignInput::Message(SELF_TEST_MESSAGE),
        ))
        .map_err(|e| format!("signing failed: {e}"))?;
        // Its public key: a token public key of the same type and the same, non-empty CKA_ID
        // (several may share one: any that verifies is its pair).
        let id = k.attrs.get(&CKA_ID).filter(|id| !id.is_empty());
        let publics: Vec<Arc<object::Object>> = match (k.class, id) {
            (CKO_PRIVATE_KEY, Some(id)) => self
                .objects
                .iter()
                .filter(|o| {
                    o.token
                        && o.class == CKO_PUBLIC_KEY
                        && o.key_type == k.key_type
                        && o.attrs.get(&CKA_ID) == Some(id)
                })
                .map(|o| o.value().clone())
                .collect(),
            _ => Vec::new(),
        };
        let verifies = |v: &crate::crypto::LoadedKey| {
            rv(crate::crypto::verify(
                &mech,
                v,
                SignInput::Message(SELF_TEST_MESSAGE),
                &sig,
            ))
        };
        if publics.is_empty() {
            return verifies(key).map_err(|e| format!("the signature does not verify: {e}"));
        }
        let mut last = String::new();
        for p in &publics {
            match Self::key_of(p)
                .map_err(|e| e.to_string())
                .and_then(|v| verifies(v).map_err(|e| e.to_string()))
            {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(format!(
            "the signature verifies with none of the {} public key(s) of its CKA_ID: {last}",
            publics.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Attr;

    /// An image larger than one export piece is read out in pieces that fit together; a piece
    /// of another image, or a read past a finished one, is refused.
    #[test]
    fn an_image_larger_than_a_piece_is_read_in_pieces() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("hsm");
        crate::cluster::provision(std::slice::from_ref(&dir)).unwrap();
        let mut cfg = HsmConfig::new(dir);
        cfg.pin_iterations = 10;
        let h = Hsm::open(cfg).unwrap();
        h.init_token(b"so-pin-1", &[b' '; 32]).unwrap();
        let s = h.open_session();
        h.login(s, Role::Officer, b"so-pin-1").unwrap();
        // Some 9 MiB of data objects.
        for i in 0..9u8 {
            h.create_object(
                s,
                &[
                    Attr::ulong(CKA_CLASS, CKO_DATA),
                    Attr::bool(CKA_TOKEN, true),
                    Attr::bytes(CKA_VALUE, &vec![i; 1 << 20]),
                ],
            )
            .unwrap();
        }
        let (total, first) = h.export_backup(s, "b-1", 7, 0).unwrap();
        assert!(total > CHUNK, "{total}");
        assert_eq!(first.len() as u64, CHUNK);
        // Another id has no image in progress.
        assert_eq!(
            h.export_backup(s, "b-2", 7, CHUNK).err(),
            Some(SimError::Rv(CKR_OPERATION_NOT_INITIALIZED))
        );
        let (again, rest) = h.export_backup(s, "b-1", 7, CHUNK).unwrap();
        assert_eq!(again, total);
        let image = [first, rest].concat();
        assert_eq!(image.len() as u64, total);
        // Read to its end, it is gone.
        assert_eq!(
            h.export_backup(s, "b-1", 7, CHUNK).err(),
            Some(SimError::Rv(CKR_OPERATION_NOT_INITIALIZED))
        );
        let cluster = h.cluster_id(s).unwrap();
        let pbk = h.backup_key.as_ref().unwrap();
        let expect = Expected {
            cluster_id: cluster,
            backup_id: Some("b-1".into()),
        };
        let (header, snap) = backup::open(pbk, &image, &expect).unwrap();
        assert_eq!(header.inventory.objects.len(), 9);
        assert!(snap.objects.iter().any(|o| o.attrs.len() > 1 << 20));
        // A crypto user may not take one.
        let u = h.open_session();
        assert_eq!(
            h.export_backup(u, "b-3", 7, 0).err(),
            Some(SimError::Rv(CKR_USER_NOT_LOGGED_IN))
        );
    }
}
