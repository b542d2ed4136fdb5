//! A backup's manifest: what the store lists, in JSON, one per backup.

use hsmpool_member::backup::{InvObject, InvUser, Inventory};
use hsmpool_member::Role;
use serde::{Deserialize, Serialize};

/// The manifest layout this build writes and reads.
pub const FORMAT: u32 = 1;

/// Where a copy came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The backup copied.
    pub backup: String,
    /// Its region.
    pub region: String,
}

/// One backup, as listed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The backup's id (a copy has its own).
    pub id: String,
    /// The cluster it was taken of (hexadecimal).
    pub cluster: String,
    /// The region whose store holds it.
    pub region: String,
    /// When it was taken (RFC 3339, UTC).
    pub created: String,
    /// The same, in ms since the Unix epoch.
    pub created_ms: u64,
    /// For a copy: the backup and region it was copied from (outside retention).
    pub source: Option<Source>,
    /// The image's length in bytes.
    pub size: u64,
    /// The image's SHA-256 (hexadecimal).
    pub sha256: String,
    /// `ready`: listed means whole.
    pub state: String,
    /// The taking member's last audit record when it was taken.
    pub audit_seq: u64,
    /// Why it was taken: `manual`, `schedule`, `membership: ...`.
    pub trigger: String,
    /// What it holds.
    pub inventory: InventoryJson,
}

impl Manifest {
    /// The id the image itself carries (a copy's is its source's).
    pub fn image_id(&self) -> &str {
        self.source.as_ref().map_or(&self.id, |s| &s.backup)
    }
}

/// An inventory user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UserJson {
    /// Login name.
    pub name: String,
    /// `officer` or `user`.
    pub role: String,
    /// Locked by an officer.
    pub locked: bool,
    /// Has a quorum approval key.
    pub approval_key: bool,
}

/// An inventory object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ObjectJson {
    /// The cluster-wide object id (16 hexadecimal digits).
    pub id: String,
    /// `CKA_CLASS`.
    pub class: u64,
    /// `CKA_KEY_TYPE`.
    pub key_type: Option<u64>,
    /// `CKA_LABEL`.
    pub label: String,
    /// Its owner.
    pub owner: Option<String>,
    /// Who it is shared with.
    pub shared_with: Vec<String>,
    /// Approvals using it needs.
    pub quorum_use: u32,
    /// Approvals managing it needs.
    pub quorum_manage: u32,
}

/// [`Inventory`] in JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct InventoryJson {
    /// The officers' quorum.
    pub quorum: u32,
    /// SHA-256 of each registered cluster certificate (a restored cluster has none until its
    /// officers register its own).
    pub trust_anchors: Vec<String>,
    /// Live users.
    pub users: Vec<UserJson>,
    /// Token objects.
    pub objects: Vec<ObjectJson>,
}

impl From<&Inventory> for InventoryJson {
    fn from(inv: &Inventory) -> Self {
        InventoryJson {
            quorum: inv.quorum,
            trust_anchors: inv
                .trust_anchors
                .iter()
                .map(|a| a.iter().map(|b| format!("{b:02x}")).collect())
                .collect(),
            users: inv
                .users
                .iter()
                .map(|u: &InvUser| UserJson {
                    name: u.name.clone(),
                    role: match u.role {
                        Role::Officer => "officer",
                        Role::User => "user",
                    }
                    .into(),
                    locked: u.locked,
                    approval_key: u.approval_key,
                })
                .collect(),
            objects: inv
                .objects
                .iter()
                .map(|o: &InvObject| ObjectJson {
                    id: format!("{:016x}", o.id),
                    class: o.class,
                    key_type: o.key_type,
                    label: o.label.clone(),
                    owner: o.owner.clone(),
                    shared_with: o.shared_with.clone(),
                    quorum_use: o.quorum_use,
                    quorum_manage: o.quorum_manage,
                })
                .collect(),
        }
    }
}

impl InventoryJson {
    /// How `restored` differs from this inventory (registered cluster certificates aside:
    /// a restored cluster has none), one line each; empty when it does not.
    pub fn differences(&self, restored: &InventoryJson) -> Vec<String> {
        let mut out = Vec::new();
        if self.quorum != restored.quorum {
            out.push(format!(
                "officers' quorum {} in the manifest, {} restored",
                self.quorum, restored.quorum
            ));
        }
        for u in &self.users {
            match restored.users.iter().find(|r| r.name == u.name) {
                None => out.push(format!("user {} missing", u.name)),
                Some(r) if r != u => out.push(format!("user {}: {u:?} became {r:?}", u.name)),
                Some(_) => {}
            }
        }
        for r in &restored.users {
            if !self.users.iter().any(|u| u.name == r.name) {
                out.push(format!("user {} is not in the manifest", r.name));
            }
        }
        for o in &self.objects {
            match restored.objects.iter().find(|r| r.id == o.id) {
                None => out.push(format!("object {} ({}) missing", o.id, o.label)),
                Some(r) if r != o => out.push(format!("object {}: {o:?} became {r:?}", o.id)),
                Some(_) => {}
            }
        }
        for r in &restored.objects {
            if !self.objects.iter().any(|o| o.id == r.id) {
                out.push(format!("object {} is not in the manifest", r.id));
            }
        }
        out
    }
}
