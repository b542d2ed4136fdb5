//! NSS's software token (`libsoftokn3.so` from Debian's libnss3) standing in for a second,
//! independent vendor: a database directory of its own, named to the module by its
//! initialisation string (`pReserved` of `C_Initialize`, as the OpenSSL provider's own tests
//! configure it), and the `[[member]]` table that makes it a member of one hsmpool token.
//!
//! Its token ("NSS Certificate DB") has a security officer only while the database has no
//! password, with an empty PIN: the member takes its SO PIN from an empty file
//! (`so_pin_from`), and the application's user PIN is the database password it sets with
//! `C_InitPIN`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::require_tool;

/// Debian's NSS software token.
pub const SOFTOKN: &str = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";

/// The label NSS gives its key and certificate database token.
pub const TOKEN_LABEL: &str = "NSS Certificate DB";

/// An NSS database directory.
pub struct NssDb {
    /// The database directory (`sql:` format; softokn makes it at first use).
    pub dir: PathBuf,
    /// An empty file: the token's SO PIN.
    pub so_pin_file: PathBuf,
}

impl NssDb {
    /// A new, empty database under `dir`. Fails (never skips) when softokn is not installed.
    pub fn create(dir: &Path) -> NssDb {
        assert!(
            Path::new(SOFTOKN).exists(),
            "{SOFTOKN} is missing (apt-get install libnss3)"
        );
        let db = dir.join("nss-member-db");
        std::fs::create_dir_all(&db).expect("the database directory can be made");
        let so_pin_file = dir.join("nss-so.pin");
        std::fs::write(&so_pin_file, b"").expect("the SO PIN file can be written");
        NssDb {
            dir: db,
            so_pin_file,
        }
    }

    /// softokn's initialisation string for this database.
    pub fn init_reserved(&self) -> String {
        format!(
            "configdir='sql:{}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=",
            self.dir.display()
        )
    }

    /// The `[[member]]` table naming this database's token.
    pub fn member_toml(&self) -> String {
        format!(
            "[[member]]\nkind = \"module\"\npath = \"{SOFTOKN}\"\ntoken_label = \"{TOKEN_LABEL}\"\n\
             init_reserved = \"{}\"\nso_pin_from = \"file:{}\"\n",
            self.init_reserved(),
            self.so_pin_file.display()
        )
    }

    /// Give the database to `uid` (its directory and files): NSS opens it read-only, and fails
    /// to initialise, for a process that may write it only by `CAP_DAC_OVERRIDE` (it asks
    /// `access(2)`, which ignores capabilities for a user other than root).
    pub fn give_to(&self, uid: u32) {
        let entries = std::fs::read_dir(&self.dir).expect("the database directory is readable");
        for p in entries
            .map(|e| e.expect("a directory entry").path())
            .chain([self.dir.clone()])
        {
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).expect("the database is ours");
        }
    }

    /// NSS's own listing of the private keys in the database (`certutil -K`), with the
    /// database password `pin`.
    pub fn private_keys(&self, pin: &str) -> String {
        let certutil = require_tool("certutil");
        let pw = self.dir.with_extension("pw");
        std::fs::write(&pw, pin).expect("the password file can be written");
        let out = Command::new(certutil)
            .arg("-K")
            .arg("-d")
            .arg(format!("sql:{}", self.dir.display()))
            .arg("-f")
            .arg(&pw)
            .output()
            .expect("certutil runs");
        let _ = std::fs::remove_file(&pw);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "certutil -K: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}
