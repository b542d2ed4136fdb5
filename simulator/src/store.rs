//! The simulator's persistent store: SQLite (bundled), one file per HSM, with every object and
//! user record sealed under the HSM's master key.
//!
//! # What is sealed, and why
//! A row of `objects` holds the object's non-secret attributes in clear (so an operator can
//! inspect a store) and a `sealed` blob: AES-256-GCM over the key material (empty for objects
//! without any), with the object id, its owner and the full attribute blob as associated data.
//! Changing any attribute in the database (say `CKA_SENSITIVE` false, or `CKA_EXTRACTABLE`
//! true) breaks the tag, and the object is refused when it is loaded: a tampered row can never
//! come back as a weaker key. User rows are sealed the same way so a PIN hash cannot be swapped.
//!
//! The master key is 32 random bytes in `master.key` beside the database, mode 0600; a key file
//! that group or others may read is refused.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

use hsmpool_member::audit::{checkpoint_message, AuditCheckpoint, AuditRecord, CHECKPOINT_EVERY};

use crate::error::{SimError, SimResult};

const OBJECT_AAD_TAG: &[u8] = b"hsmpool-object-v1";
const USER_AAD_TAG: &[u8] = b"hsmpool-user-v1";
const USER_AAD_TAG_V2: &[u8] = b"hsmpool-user-v2";

/// An AES-256-GCM sealing key: the HSM's master key here, the cluster clone key in
/// [`crate::cluster`]. It never leaves the simulator.
pub(crate) struct SealKey(LessSafeKey);

/// Read a 32-byte key file, refusing one that group or others may read. `None` when it does not
/// exist and `create` is false; with `create`, a missing file is made (random, mode 0600).
pub(crate) fn read_key_file(path: &Path, create: bool) -> SimResult<Option<Zeroizing<Vec<u8>>>> {
    let bytes = match OpenOptions::new().read(true).open(path) {
        Ok(mut f) => {
            let mode = f
                .metadata()
                .map_err(|e| SimError::store(path, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(SimError::Store(format!(
                    "{}: key file is readable by group or others (mode {:o}); chmod 600 it",
                    path.display(),
                    mode & 0o777
                )));
            }
            let mut buf = Zeroizing::new(Vec::new());
            f.read_to_end(&mut buf)
                .map_err(|e| SimError::store(path, e))?;
            buf
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut buf = Zeroizing::new(vec![0u8; 32]);
            SystemRandom::new()
                .fill(&mut buf)
                .map_err(|_| SimError::Store("random generator failed".into()))?;
            write_key_file(path, &buf)?;
            buf
        }
        Err(e) => return Err(SimError::store(path, e)),
    };
    if bytes.len() != 32 {
        return Err(SimError::Store(format!(
            "{}: key file must hold 32 bytes, found {}",
            path.display(),
            bytes.len()
        )));
    }
    Ok(Some(bytes))
}

/// Write a new key file, mode 0600 (never replacing one).
pub(crate) fn write_key_file(path: &Path, key: &[u8]) -> SimResult<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SimError::store(path, e))?;
    f.write_all(key).map_err(|e| SimError::store(path, e))?;
    f.sync_all().map_err(|e| SimError::store(path, e))
}

/// Give every directory in `dirs` the same key file `file`: the one `from` holds (required
/// there when given), or the one some of `dirs` hold (they must agree: `what` names the group
/// they would otherwise not be one of), else 32 new random bytes. Directories are made as
/// needed; an existing file is never replaced.
pub(crate) fn provision_key_file(
    dirs: &[std::path::PathBuf],
    file: &str,
    from: Option<&Path>,
    what: &str,
) -> SimResult<()> {
    let mut found: Option<Zeroizing<Vec<u8>>> = match from {
        Some(f) => Some(read_key_file(&f.join(file), false)?.ok_or_else(|| {
            SimError::Store(format!(
                "{}: missing: not of this {what}",
                f.join(file).display()
            ))
        })?),
        None => None,
    };
    for d in dirs {
        if let Some(k) = read_key_file(&d.join(file), false)? {
            match &found {
                Some(f) if **f != *k => {
                    return Err(SimError::Store(format!(
                        "{}: differs from another's: they are not of one {what}",
                        d.join(file).display()
                    )))
                }
                Some(_) => {}
                None => found = Some(k),
            }
        }
    }
    let key = match found {
        Some(k) => k,
        None => {
            let mut k = Zeroizing::new(vec![0u8; 32]);
            SystemRandom::new()
                .fill(&mut k)
                .map_err(|_| SimError::Store("random generator failed".into()))?;
            k
        }
    };
    for d in dirs {
        let path = d.join(file);
        if !path.exists() {
            fs::create_dir_all(d).map_err(|e| SimError::store(d, e))?;
            write_key_file(&path, &key)?;
        }
    }
    Ok(())
}

impl SealKey {
    pub(crate) fn new(bytes: &[u8]) -> SimResult<Self> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| SimError::Store("bad sealing key".into()))?;
        Ok(SealKey(LessSafeKey::new(key)))
    }

    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> SimResult<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SimError::Store("random generator failed".into()))?;
        let mut buf = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SimError::Store("seal failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        buf.iter_mut().for_each(|b| *b = 0);
        Ok(out)
    }

    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (n, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len = self
            .0
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

/// One stored object as read back and authenticated.
pub struct StoredObject {
    /// Object id.
    pub id: u64,
    /// Owning user, if any.
    pub owner: Option<String>,
    /// The attribute blob (see `object::encode_attrs`).
    pub attrs: Vec<u8>,
    /// The key material, serialised (empty for objects without one).
    pub secret: Zeroizing<Vec<u8>>,
}

/// What a user row holds beside its sealed record: the record's version, whether it is a
/// tombstone or locked by an officer (all three bound by the seal), and the lockout counters
/// (not sealed: they change with every failed login).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserMeta {
    /// Raised by every change of the record.
    pub version: u64,
    /// A deleted user's tombstone.
    pub deleted: bool,
    /// Locked by a crypto officer.
    pub locked: bool,
    /// Raised by a success after failures, an unlock or a password reset.
    pub resets: u64,
    /// Consecutive failed logins.
    pub failures: u32,
}

/// One stored user as read back and authenticated.
pub struct StoredUser {
    /// Login name.
    pub name: String,
    /// Role: 0 = crypto officer (SO), 1 = crypto user.
    pub role: u8,
    /// The sealed record's plaintext (salt, hash, iterations), serialised by the caller.
    pub record: Zeroizing<Vec<u8>>,
    /// Version, tombstone, lock and counters.
    pub meta: UserMeta,
    /// Sealed-bound extra data (an officer's approval key, the quorum policy).
    pub extra: Vec<u8>,
}

/// Everything a backup holds, as read from a store ([`Store::snapshot`]).
pub struct Snapshot {
    /// The metadata rows (token state: initialised, label, epoch).
    pub meta: Vec<(String, Vec<u8>)>,
    /// Every user record (tombstones and the cluster's records included).
    pub users: Vec<StoredUser>,
    /// Every token object.
    pub objects: Vec<StoredObject>,
    /// The number of the last audit record.
    pub audit_seq: u64,
}

/// What loading found that could not be trusted.
#[derive(Debug, Default, Clone)]
pub struct Refused {
    /// Object ids whose seal did not verify.
    pub objects: Vec<u64>,
    /// User names whose seal did not verify.
    pub users: Vec<String>,
}

/// The store: one SQLite connection behind a mutex (writes are serialised, as on a real HSM's
/// persistent key store).
pub struct Store {
    conn: Mutex<Connection>,
    master: SealKey,
    path: PathBuf,
}

fn object_aad(id: u64, owner: Option<&str>, attrs: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(OBJECT_AAD_TAG.len() + 16 + attrs.len());
    aad.extend_from_slice(OBJECT_AAD_TAG);
    aad.extend_from_slice(&id.to_be_bytes());
    let owner = owner.unwrap_or("");
    aad.extend_from_slice(&(owner.len() as u64).to_be_bytes());
    aad.extend_from_slice(owner.as_bytes());
    aad.extend_from_slice(attrs);
    aad
}

/// The associated data of a user row: its name and role, and (from the second layout on) the
/// record's version, tombstone and lock, and its extra data when it has any (an officer's
/// approval key, the quorum policy), so none of them can be changed in the database.
fn user_aad(name: &str, role: u8, meta: Option<&UserMeta>, extra: &[u8]) -> Vec<u8> {
    let mut aad = match meta {
        Some(_) => USER_AAD_TAG_V2.to_vec(),
        None => USER_AAD_TAG.to_vec(),
    };
    aad.push(role);
    if let Some(m) = meta {
        aad.extend_from_slice(&m.version.to_be_bytes());
        aad.push(u8::from(m.deleted));
        aad.push(u8::from(m.locked));
        aad.extend_from_slice(&(name.len() as u64).to_be_bytes());
    }
    aad.extend_from_slice(name.as_bytes());
    if !extra.is_empty() {
        aad.extend_from_slice(b"extra");
        aad.extend_from_slice(&(extra.len() as u64).to_be_bytes());
        aad.extend_from_slice(extra);
    }
    aad
}

/// One event to append to the audit log (see `hsmpool_member::audit`).
pub struct AuditEvent<'a> {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: &'a str,
    /// Who did it.
    pub actor: &'a str,
    /// To what.
    pub subject: &'a str,
    /// How it ended.
    pub detail: &'a str,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hash_of(v: Vec<u8>) -> [u8; 32] {
    <[u8; 32]>::try_from(v.as_slice()).unwrap_or([0; 32])
}

/// `(resets, failures)` of a row that selects (or returns) those two columns.
fn counter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, u32)> {
    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, u32>(1)?))
}

impl Store {
    /// Open (creating if needed) the store in `dir`: `hsm.sqlite3` and `master.key`.
    pub fn open(dir: &Path) -> SimResult<Self> {
        fs::create_dir_all(dir).map_err(|e| SimError::store(dir, e))?;
        let key_path = dir.join("master.key");
        let master = match read_key_file(&key_path, true)? {
            Some(k) => SealKey::new(&k)?,
            None => return Err(SimError::Store(format!("{}: missing", key_path.display()))),
        };
        let path = dir.join("hsm.sqlite3");
        let conn = Connection::open(&path).map_err(|e| SimError::store(&path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| SimError::store(&path, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role INTEGER NOT NULL,
                 sealed BLOB NOT NULL, failures INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS objects (id INTEGER PRIMARY KEY, owner TEXT,
                 attrs BLOB NOT NULL, sealed BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL,
                 kind TEXT NOT NULL, actor TEXT NOT NULL, subject TEXT NOT NULL,
                 detail TEXT NOT NULL, prev BLOB NOT NULL, hash BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS audit_checkpoints (seq INTEGER PRIMARY KEY,
                 hash BLOB NOT NULL, signature BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS key_approvals (nonce BLOB PRIMARY KEY,
                 object INTEGER NOT NULL, user TEXT NOT NULL, service INTEGER NOT NULL,
                 expires_ms INTEGER NOT NULL);",
        )
        .map_err(|e| SimError::store(&path, e))?;
        // Stores made before users were kept in step across members lack these columns: a row
        // without them is of the first layout (version 0, sealed without it) and is read so.
        for (col, ty) in [
            ("version", "INTEGER NOT NULL DEFAULT 0"),
            ("deleted", "INTEGER NOT NULL DEFAULT 0"),
            ("locked", "INTEGER NOT NULL DEFAULT 0"),
            ("resets", "INTEGER NOT NULL DEFAULT 0"),
            ("extra", "BLOB NOT NULL DEFAULT x''"),
        ] {
            let has: bool = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('users') WHERE name = ?1",
                    params![col],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|e| SimError::store(&path, e))?
                > 0;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE users ADD COLUMN {col} {ty}"))
                    .map_err(|e| SimError::store(&path, e))?;
            }
        }
        Ok(Store {
            conn: Mutex::new(conn),
            master,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> SimError {
        SimError::store(&self.path, e)
    }

    /// SQLite's `data_version`: it changes when another connection (another process) has
    /// committed to the database since this connection last looked.
    pub fn data_version(&self) -> SimResult<i64> {
        let conn = self.conn.lock();
        conn.query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Read a metadata value.
    pub fn meta(&self, k: &str) -> SimResult<Option<Vec<u8>>> {
        let conn = self.conn.lock();
        conn.query_row("SELECT v FROM meta WHERE k = ?1", params![k], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Write a metadata value.
    pub fn set_meta(&self, k: &str, v: &[u8]) -> SimResult<()> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
            params![k, v],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Insert or replace an object.
    pub fn put_object(
        &self,
        id: u64,
        owner: Option<&str>,
        attrs: &[u8],
        secret: &[u8],
    ) -> SimResult<()> {
        let sealed = self.master.seal(&object_aad(id, owner, attrs), secret)?;
        let conn = self.conn.lock();
        conn.execute(
            "INSERT OR REPLACE INTO objects (id, owner, attrs, sealed) VALUES (?1, ?2, ?3, ?4)",
            params![id as i64, owner, attrs, sealed],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Delete an object.
    pub fn delete_object(&self, id: u64) -> SimResult<()> {
        let conn = self.conn.lock();
        conn.execute("DELETE FROM objects WHERE id = ?1", params![id as i64])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The largest object id in use (0 when none).
    pub fn max_object_id(&self) -> SimResult<u64> {
        let conn = self.conn.lock();
        let v: Option<i64> = conn
            .query_row("SELECT MAX(id) FROM objects", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// Every object whose seal verifies, and the ids of those whose seal does not.
    pub fn load_objects(&self, refused: &mut Refused) -> SimResult<Vec<StoredObject>> {
        let conn = self.conn.lock();
        self.load_objects_in(&conn, refused)
    }

    fn load_objects_in(
        &self,
        conn: &Connection,
        refused: &mut Refused,
    ) -> SimResult<Vec<StoredObject>> {
        let mut stmt = conn
            .prepare("SELECT id, owner, attrs, sealed FROM objects ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, owner, attrs, sealed) = row.map_err(|e| self.err(e))?;
            let id = id as u64;
            match self
                .master
                .open(&object_aad(id, owner.as_deref(), &attrs), &sealed)
            {
                Some(secret) => out.push(StoredObject {
                    id,
                    owner,
                    attrs,
                    secret,
                }),
                None => refused.objects.push(id),
            }
        }
        Ok(out)
    }

    /// Insert or replace a user; `record` is sealed, bound to the name, role, version,
    /// tombstone and lock.
    pub fn put_user(
        &self,
        name: &str,
        role: u8,
        record: &[u8],
        meta: &UserMeta,
        extra: &[u8],
    ) -> SimResult<()> {
        let sealed = self
            .master
            .seal(&user_aad(name, role, Some(meta), extra), record)?;
        let conn = self.conn.lock();
        // The counters never go down here: another process sharing the store may have counted
        // a failure since the caller read them (a reset raises `resets`, so it still wins).
        conn.execute(
            "INSERT INTO users (name, role, sealed, failures, version, deleted, locked, resets,
                 extra) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(name) DO UPDATE SET role = excluded.role, sealed = excluded.sealed,
                 extra = excluded.extra,
                 version = excluded.version, deleted = excluded.deleted,
                 locked = excluded.locked,
                 failures = CASE WHEN excluded.resets > resets OR (excluded.resets = resets
                     AND excluded.failures > failures) THEN excluded.failures ELSE failures END,
                 resets = MAX(resets, excluded.resets)",
            params![
                name,
                role,
                sealed,
                meta.failures,
                meta.version as i64,
                meta.deleted,
                meta.locked,
                meta.resets as i64,
                extra
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A user's lockout counters `(resets, failures)` as the store has them now (another
    /// process may have counted since this one read them); `None` when there is no such row.
    pub fn counters(&self, name: &str) -> SimResult<Option<(u64, u32)>> {
        let conn = self.conn.lock();
        conn.query_row(
            "SELECT resets, failures FROM users WHERE name = ?1",
            params![name],
            counter_row,
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Count one failed login in the store itself (so two processes sharing it never lose a
    /// count); the counters after it.
    pub fn add_failure(&self, name: &str) -> SimResult<Option<(u64, u32)>> {
        let conn = self.conn.lock();
        conn.query_row(
            "UPDATE users SET failures = failures + 1 WHERE name = ?1 RETURNING resets, failures",
            params![name],
            counter_row,
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    /// Raise a user's counters to `(resets, failures)` if that is higher than what the store
    /// has (see `hsmpool_member::users`); the counters after it.
    pub fn merge_counters(
        &self,
        name: &str,
        resets: u64,
        failures: u32,
    ) -> SimResult<Option<(u64, u32)>> {
        self.conn
            .lock()
            .execute(
                "UPDATE users SET resets = ?2, failures = ?3 WHERE name = ?1
                     AND (resets < ?2 OR (resets = ?2 AND failures < ?3))",
                params![name, resets as i64, failures],
            )
            .map_err(|e| self.err(e))?;
        self.counters(name)
    }

    /// Every user whose seal verifies.
    pub fn load_users(&self, refused: &mut Refused) -> SimResult<Vec<StoredUser>> {
        let conn = self.conn.lock();
        self.load_users_in(&conn, refused)
    }

    fn load_users_in(
        &self,
        conn: &Connection,
        refused: &mut Refused,
    ) -> SimResult<Vec<StoredUser>> {
        let mut stmt = conn
            .prepare(
                "SELECT name, role, sealed, failures, version, deleted, locked, resets, extra
                 FROM users ORDER BY name",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u8>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    UserMeta {
                        failures: r.get::<_, u32>(3)?,
                        version: r.get::<_, i64>(4)? as u64,
                        deleted: r.get::<_, bool>(5)?,
                        locked: r.get::<_, bool>(6)?,
                        resets: r.get::<_, i64>(7)? as u64,
                    },
                    r.get::<_, Vec<u8>>(8)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, sealed, meta, extra) = row.map_err(|e| self.err(e))?;
            let opened = self
                .master
                .open(&user_aad(&name, role, Some(&meta), &extra), &sealed)
                .or_else(|| {
                    // The first layout: sealed before versions, locks and tombstones existed.
                    let first =
                        meta.version == 0 && !meta.deleted && !meta.locked && extra.is_empty();
                    first
                        .then(|| self.master.open(&user_aad(&name, role, None, &[]), &sealed))
                        .flatten()
                });
            match opened {
                Some(record) => out.push(StoredUser {
                    name,
                    role,
                    record,
                    meta,
                    extra,
                }),
                None => refused.users.push(name),
            }
        }
        Ok(out)
    }

    /// Append one event to the audit log, chained to the last record, and sign a checkpoint
    /// (`sign` over the checkpoint message) when its number is a multiple of
    /// [`CHECKPOINT_EVERY`]; in one immediate transaction, so processes sharing the store never
    /// give two records one number. Returns its number.
    pub fn append_audit(
        &self,
        e: &AuditEvent<'_>,
        sign: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> SimResult<u64> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let seq = self.append_in(&tx, e, sign)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(seq)
    }

    /// Insert or replace a token object and append the audit event that says so, in one
    /// immediate transaction: the row and its record are written together or not at all, with
    /// one commit (a create is one write, not two).
    pub fn put_object_audited(
        &self,
        id: u64,
        owner: Option<&str>,
        attrs: &[u8],
        secret: &[u8],
        e: &AuditEvent<'_>,
        sign: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> SimResult<()> {
        let sealed = self.master.seal(&object_aad(id, owner, attrs), secret)?;
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT OR REPLACE INTO objects (id, owner, attrs, sealed) VALUES (?1, ?2, ?3, ?4)",
            params![id as i64, owner, attrs, sealed],
        )
        .map_err(|e| self.err(e))?;
        self.append_in(&tx, e, sign)?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Append one audit record inside `tx` (see [`Store::append_audit`]); its number.
    fn append_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        e: &AuditEvent<'_>,
        sign: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> SimResult<u64> {
        let (last, prev): (u64, [u8; 32]) = tx
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, hash_of(r.get::<_, Vec<u8>>(1)?))),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .unwrap_or((0, [0; 32]));
        let mut rec = AuditRecord {
            seq: last + 1,
            at_ms: e.at_ms,
            kind: e.kind.into(),
            actor: e.actor.into(),
            subject: e.subject.into(),
            detail: e.detail.into(),
            prev,
            hash: [0; 32],
        };
        rec.hash = sha256(&rec.hashed_bytes());
        tx.execute(
            "INSERT INTO audit (seq, at_ms, kind, actor, subject, detail, prev, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                rec.seq as i64,
                rec.at_ms as i64,
                rec.kind,
                rec.actor,
                rec.subject,
                rec.detail,
                &rec.prev[..],
                &rec.hash[..]
            ],
        )
        .map_err(|e| self.err(e))?;
        if rec.seq % CHECKPOINT_EVERY == 0 {
            let signature = sign(&checkpoint_message(rec.seq, &rec.hash));
            tx.execute(
                "INSERT INTO audit_checkpoints (seq, hash, signature) VALUES (?1, ?2, ?3)",
                params![rec.seq as i64, &rec.hash[..], signature],
            )
            .map_err(|e| self.err(e))?;
        }
        Ok(rec.seq)
    }

    /// Up to `limit` audit records from number `from` on, their checkpoints, and the number of
    /// the last record.
    pub fn audit_page(
        &self,
        from: u64,
        limit: u32,
    ) -> SimResult<(u64, Vec<AuditRecord>, Vec<AuditCheckpoint>)> {
        let conn = self.conn.lock();
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let mut stmt = conn
            .prepare(
                "SELECT seq, at_ms, kind, actor, subject, detail, prev, hash FROM audit
                 WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let records = stmt
            .query_map(params![from as i64, limit], |r| {
                Ok(AuditRecord {
                    seq: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get::<_, i64>(1)? as u64,
                    kind: r.get(2)?,
                    actor: r.get(3)?,
                    subject: r.get(4)?,
                    detail: r.get(5)?,
                    prev: hash_of(r.get(6)?),
                    hash: hash_of(r.get(7)?),
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let upto = records.last().map_or(from, |r| r.seq);
        let mut stmt = conn
            .prepare(
                "SELECT seq, hash, signature FROM audit_checkpoints WHERE seq >= ?1 AND seq <= ?2
                 ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let checkpoints = stmt
            .query_map(params![from as i64, upto as i64], |r| {
                Ok(AuditCheckpoint {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: hash_of(r.get(1)?),
                    signature: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok((last as u64, records, checkpoints))
    }

    /// Record an approval of a key quorum token (see `hsmpool_member::Users::approve_key`):
    /// `user` may use or manage (`service`) `object` until `expires_ms`. `false` when the
    /// token (its `nonce`) was presented before: a token is accepted once. Approvals that have
    /// expired are dropped on the way.
    pub fn add_key_approval(
        &self,
        nonce: &[u8],
        object: u64,
        user: &str,
        service: u8,
        expires_ms: u64,
        now_ms: u64,
    ) -> SimResult<bool> {
        let conn = self.conn.lock();
        // A spent token must stay spent while it could still be presented: keep rows until
        // their token expires, not sooner.
        conn.execute(
            "DELETE FROM key_approvals WHERE expires_ms < ?1",
            params![now_ms as i64],
        )
        .map_err(|e| self.err(e))?;
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO key_approvals (nonce, object, user, service, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                params![nonce, object as i64, user, service, expires_ms as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Drop every key approval of `user` (deleted: a new user of that name gets none).
    pub fn drop_key_approvals_of(&self, user: &str) -> SimResult<()> {
        self.conn
            .lock()
            .execute("DELETE FROM key_approvals WHERE user = ?1", params![user])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Whether an approval lets `user` use or manage (`service`) `object` at `now_ms`.
    pub fn key_approved(
        &self,
        object: u64,
        user: &str,
        service: u8,
        now_ms: u64,
    ) -> SimResult<bool> {
        let conn = self.conn.lock();
        conn.query_row(
            "SELECT COUNT(*) FROM key_approvals
                 WHERE object = ?1 AND user = ?2 AND service = ?3 AND expires_ms >= ?4",
            params![object as i64, user, service, now_ms as i64],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| self.err(e))
    }

    /// Everything a backup holds (see `crate::backup`), read in one transaction so that no
    /// write lands between its parts: the metadata, every user and every token object whose
    /// seal verifies (what does not is in `refused`), and the number of the last audit record.
    pub fn snapshot(&self, refused: &mut Refused) -> SimResult<Snapshot> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let meta = {
            let mut stmt = tx
                .prepare("SELECT k, v FROM meta ORDER BY k")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(|e| self.err(e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.err(e))?;
            rows
        };
        let users = self.load_users_in(&tx, refused)?;
        let objects = self.load_objects_in(&tx, refused)?;
        let audit_seq: i64 = tx
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Snapshot {
            meta,
            users,
            objects,
            audit_seq: audit_seq.max(0) as u64,
        })
    }

    /// Write `snap` into this store, which must hold no user and no object
    /// (`CKR_DEVICE_ERROR` otherwise: a restore never mixes two clusters), sealing every row
    /// under this store's master key, with the audit record that says so, in one transaction.
    pub fn restore(
        &self,
        snap: &Snapshot,
        e: &AuditEvent<'_>,
        sign: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> SimResult<()> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let held: i64 = tx
            .query_row(
                "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM objects)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if held > 0 {
            return Err(SimError::Store(format!(
                "{}: restoring into a store that already holds users or objects",
                self.path.display()
            )));
        }
        for (k, v) in &snap.meta {
            tx.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES (?1, ?2)",
                params![k, v],
            )
            .map_err(|e| self.err(e))?;
        }
        for u in &snap.users {
            let sealed = self.master.seal(
                &user_aad(&u.name, u.role, Some(&u.meta), &u.extra),
                &u.record,
            )?;
            tx.execute(
                "INSERT INTO users (name, role, sealed, failures, version, deleted, locked,
                     resets, extra) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    u.name,
                    u.role,
                    sealed,
                    u.meta.failures,
                    u.meta.version as i64,
                    u.meta.deleted,
                    u.meta.locked,
                    u.meta.resets as i64,
                    u.extra
                ],
            )
            .map_err(|e| self.err(e))?;
        }
        for o in &snap.objects {
            let sealed = self
                .master
                .seal(&object_aad(o.id, o.owner.as_deref(), &o.attrs), &o.secret)?;
            tx.execute(
                "INSERT INTO objects (id, owner, attrs, sealed) VALUES (?1, ?2, ?3, ?4)",
                params![o.id as i64, o.owner, o.attrs, sealed],
            )
            .map_err(|e| self.err(e))?;
        }
        self.append_in(&tx, e, sign)?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Remove every object and every user but the ones named (token re-initialisation), in one
    /// transaction. The audit log stays.
    pub fn wipe(&self, keep_users: &[&str]) -> SimResult<()> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction()
            .map_err(|e| SimError::store(&self.path, e))?;
        tx.execute("DELETE FROM objects", [])
            .map_err(|e| SimError::store(&self.path, e))?;
        tx.execute("DELETE FROM key_approvals", [])
            .map_err(|e| SimError::store(&self.path, e))?;
        let users: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT name FROM users")
                .map_err(|e| SimError::store(&self.path, e))?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| SimError::store(&self.path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SimError::store(&self.path, e))?;
            names
        };
        for u in users.iter().filter(|u| !keep_users.contains(&u.as_str())) {
            tx.execute("DELETE FROM users WHERE name = ?1", params![u])
                .map_err(|e| SimError::store(&self.path, e))?;
        }
        tx.commit().map_err(|e| SimError::store(&self.path, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store made before users carried versions (no `version`, `deleted`, `locked`, `resets`
    /// columns; rows sealed without them) opens, gains the columns, and its users load; a row
    /// of that layout claiming a version is refused.
    #[test]
    fn a_store_of_the_first_user_layout_opens_and_keeps_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let key = Zeroizing::new(vec![7u8; 32]);
        write_key_file(&dir.path().join("master.key"), &key).unwrap();
        let seal = SealKey::new(&key).unwrap();
        {
            let conn = Connection::open(dir.path().join("hsm.sqlite3")).unwrap();
            conn.execute_batch(
                "CREATE TABLE users (name TEXT PRIMARY KEY, role INTEGER NOT NULL,
                     sealed BLOB NOT NULL, failures INTEGER NOT NULL DEFAULT 0);",
            )
            .unwrap();
            for name in ["admin", "old"] {
                let sealed = seal.seal(&user_aad(name, 0, None, &[]), b"record").unwrap();
                conn.execute(
                    "INSERT INTO users (name, role, sealed, failures) VALUES (?1, 0, ?2, 2)",
                    params![name, sealed],
                )
                .unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        // One old row now claims a version it was never sealed with: refused.
        store
            .conn
            .lock()
            .execute("UPDATE users SET version = 3 WHERE name = 'old'", [])
            .unwrap();
        let mut refused = Refused::default();
        let users = store.load_users(&mut refused).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].name, "admin");
        assert_eq!(*users[0].record, b"record".to_vec());
        assert_eq!(users[0].meta.failures, 2);
        assert_eq!(refused.users, vec!["old".to_string()]);
        // Counters never go down on a replace, and a higher `resets` wins.
        let meta = UserMeta {
            version: 1,
            ..UserMeta::default()
        };
        store.put_user("admin", 0, b"r2", &meta, &[]).unwrap();
        assert_eq!(store.counters("admin").unwrap(), Some((0, 2)));
        assert_eq!(store.add_failure("admin").unwrap(), Some((0, 3)));
        assert_eq!(store.merge_counters("admin", 0, 1).unwrap(), Some((0, 3)));
        assert_eq!(store.merge_counters("admin", 1, 0).unwrap(), Some((1, 0)));
        // The version, tombstone and lock are sealed: changing one in the database refuses it.
        store
            .conn
            .lock()
            .execute("UPDATE users SET locked = 1 WHERE name = 'admin'", [])
            .unwrap();
        let mut refused = Refused::default();
        assert!(store.load_users(&mut refused).unwrap().is_empty());
        assert_eq!(refused.users, vec!["admin".to_string(), "old".to_string()]);
    }
}
