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

use crate::error::{SimError, SimResult};

const OBJECT_AAD_TAG: &[u8] = b"hsmpool-object-v1";
const USER_AAD_TAG: &[u8] = b"hsmpool-user-v1";

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

/// One stored user as read back and authenticated.
pub struct StoredUser {
    /// Login name.
    pub name: String,
    /// Role: 0 = crypto officer (SO), 1 = crypto user.
    pub role: u8,
    /// The sealed record's plaintext (salt, hash, iterations), serialised by the caller.
    pub record: Zeroizing<Vec<u8>>,
    /// Consecutive failed logins.
    pub failures: u32,
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

fn user_aad(name: &str, role: u8) -> Vec<u8> {
    let mut aad = USER_AAD_TAG.to_vec();
    aad.push(role);
    aad.extend_from_slice(name.as_bytes());
    aad
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
                 attrs BLOB NOT NULL, sealed BLOB NOT NULL);",
        )
        .map_err(|e| SimError::store(&path, e))?;
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

    /// Insert or replace a user; `record` is sealed.
    pub fn put_user(&self, name: &str, role: u8, record: &[u8], failures: u32) -> SimResult<()> {
        let sealed = self.master.seal(&user_aad(name, role), record)?;
        let conn = self.conn.lock();
        conn.execute(
            "INSERT OR REPLACE INTO users (name, role, sealed, failures) VALUES (?1, ?2, ?3, ?4)",
            params![name, role, sealed, failures],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Record a user's failed-login count.
    pub fn set_failures(&self, name: &str, failures: u32) -> SimResult<()> {
        let conn = self.conn.lock();
        conn.execute(
            "UPDATE users SET failures = ?2 WHERE name = ?1",
            params![name, failures],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Delete a user.
    pub fn delete_user(&self, name: &str) -> SimResult<()> {
        let conn = self.conn.lock();
        conn.execute("DELETE FROM users WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every user whose seal verifies.
    pub fn load_users(&self, refused: &mut Refused) -> SimResult<Vec<StoredUser>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT name, role, sealed, failures FROM users ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u8>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, u32>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, sealed, failures) = row.map_err(|e| self.err(e))?;
            match self.master.open(&user_aad(&name, role), &sealed) {
                Some(record) => out.push(StoredUser {
                    name,
                    role,
                    record,
                    failures,
                }),
                None => refused.users.push(name),
            }
        }
        Ok(out)
    }

    /// Remove every object and every user but the ones named (token re-initialisation), in one
    /// transaction.
    pub fn wipe(&self, keep_users: &[&str]) -> SimResult<()> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction()
            .map_err(|e| SimError::store(&self.path, e))?;
        tx.execute("DELETE FROM objects", [])
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
