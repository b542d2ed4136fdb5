//! Where the module is, where its data goes, and a token ready to use.

use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::{Context, Error, Result};

/// The module's file name, as `cargo build` writes it into `target/<profile>/`.
pub const MODULE_FILE: &str = "libhsmpool_pkcs11.so";
/// The SO PIN the harness sets.
pub const SO_PIN: &str = "bench-so-pin";
/// The user PIN the harness sets.
pub const USER_PIN: &str = "bench-user-pin";

/// The module to load: `explicit` (from `--module`), else `HSMPOOL_MODULE`, else
/// [`MODULE_FILE`] next to the running executable.
pub fn module_path(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match (
        explicit,
        std::env::var_os("HSMPOOL_MODULE").filter(|v| !v.is_empty()),
    ) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => beside_executable()?,
    };
    if !path.is_file() {
        return Err(Error(format!(
            "the PKCS #11 module {} does not exist: build it with `cargo build --release --workspace`, \
             or name it with --module PATH or HSMPOOL_MODULE",
            path.display()
        )));
    }
    Ok(path)
}

/// [`MODULE_FILE`] in the directory of the running executable; for a criterion bench, which runs
/// from `target/<profile>/deps`, the directory above.
fn beside_executable() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error(format!("{} has no parent directory", exe.display())))?;
    let here = dir.join(MODULE_FILE);
    if !here.exists() && dir.ends_with("deps") {
        if let Some(up) = dir.parent() {
            return Ok(up.join(MODULE_FILE));
        }
    }
    Ok(here)
}

/// The directory the modules keep their data in for this run.
///
/// # Invariants
/// `HSMPOOL_CONF` names `path/hsmpool.toml`, whose one embedded member stores under `path/hsm0`;
/// `SOFTHSM2_CONF` names `path/softhsm2.conf`, whose token directory is `path/softhsm2-tokens`.
/// Any other module keeps its data wherever its own configuration says.
#[derive(Debug)]
pub struct DataDir {
    /// The directory.
    pub path: PathBuf,
    /// Removes the directory on drop when the harness made it.
    _tmp: Option<tempfile::TempDir>,
}

impl DataDir {
    /// Write the configurations into `dir` (a fresh temporary directory when `None`) and point
    /// `HSMPOOL_CONF` and `SOFTHSM2_CONF` at them. `member_extra` is appended to our member table
    /// (e.g. `pin_iterations = 1000\n`).
    ///
    /// Call this before the module is loaded and before any thread is started: the module reads
    /// `HSMPOOL_CONF` in `C_Initialize`, and changing the environment is only sound while the
    /// process is single-threaded.
    pub fn prepare(dir: Option<&Path>, member_extra: &str) -> Result<DataDir> {
        let (path, tmp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).context(&format!("creating {}", d.display()))?;
                (
                    std::fs::canonicalize(d).context(&format!("resolving {}", d.display()))?,
                    None,
                )
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("hsmpool-bench-")
                    .tempdir()
                    .context("creating a temporary directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let data_dir = path.join("hsm0");
        let data_dir = data_dir.to_str().ok_or_else(|| {
            Error(format!(
                "{} is not UTF-8, which a TOML string needs",
                data_dir.display()
            ))
        })?;
        // A TOML basic string: escape the two characters that would end or break it.
        let quoted = data_dir.replace('\\', "\\\\").replace('"', "\\\"");
        let conf = path.join("hsmpool.toml");
        let text =
            format!("[[member]]\nkind = \"embedded\"\ndata_dir = \"{quoted}\"\n{member_extra}");
        std::fs::write(&conf, text).context(&format!("writing {}", conf.display()))?;
        let soft_conf = path.join("softhsm2.conf");
        let tokens = path.join("softhsm2-tokens");
        std::fs::create_dir_all(&tokens).context(&format!("creating {}", tokens.display()))?;
        std::fs::write(&soft_conf, softhsm_config(&tokens))
            .context(&format!("writing {}", soft_conf.display()))?;
        std::env::set_var("HSMPOOL_CONF", &conf);
        std::env::set_var("SOFTHSM2_CONF", &soft_conf);
        Ok(DataDir { path, _tmp: tmp })
    }

    /// Make our module's members `n` SoftHSMv2 tokens (vendor-module members) instead of the
    /// embedded simulator: the tokens are made with `softhsm2-util` in this directory's
    /// SoftHSMv2 store, labelled as the harness's token with its PINs, named in our
    /// configuration by serial number, and given the cluster wrapping key by
    /// `hsmpool cluster wrap-key` (beside this executable), as an operator would.
    pub fn softhsm_members(&self, n: usize) -> Result<()> {
        let tokens = self.path.join("softhsm2-tokens");
        let run = |cmd: &mut std::process::Command, what: &str| -> Result<String> {
            let out = cmd.output().context(what)?;
            if !out.status.success() {
                return Err(Error(format!(
                    "{what}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        for _ in 0..n {
            run(
                std::process::Command::new("softhsm2-util")
                    .args([
                        "--init-token",
                        "--free",
                        "--label",
                        crate::target::TOKEN_LABEL,
                    ])
                    .args(["--so-pin", SO_PIN, "--pin", USER_PIN]),
                "softhsm2-util --init-token (apt-get install softhsm2)",
            )?;
        }
        let shown = run(
            std::process::Command::new("softhsm2-util").arg("--show-slots"),
            "softhsm2-util --show-slots",
        )?;
        let serials: Vec<&str> = shown
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Serial number:"))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if serials.len() != n {
            return Err(Error(format!(
                "{} SoftHSMv2 tokens in {}, {n} wanted",
                serials.len(),
                tokens.display()
            )));
        }
        let mut text = String::from("# written by hsmpool-bench: SoftHSMv2 tokens as members\n");
        for serial in serials {
            text.push_str(&format!(
                "[[member]]\nkind = \"module\"\npath = \"{SOFTHSM_MODULE}\"\ntoken_serial = \"{serial}\"\n"
            ));
        }
        let conf = self.path.join("hsmpool.toml");
        std::fs::write(&conf, text).context(&format!("writing {}", conf.display()))?;
        if n > 1 {
            let cli = module_path(None)?.with_file_name("hsmpool");
            run(
                std::process::Command::new(&cli)
                    .args(["cluster", "wrap-key"])
                    .env("HSMPOOL_SO_PIN", SO_PIN),
                &format!("{} cluster wrap-key", cli.display()),
            )?;
        }
        Ok(())
    }
}

/// Debian's SoftHSMv2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSMv2 configuration keeping its tokens in `tokens` (its file object store; errors
/// only in its log).
pub fn softhsm_config(tokens: &Path) -> String {
    format!(
        "# written by hsmpool-bench\ndirectories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    )
}

/// A short name for a module, from its file name: `libhsmpool_pkcs11.so` is `hsmpool`,
/// `libsofthsm2.so` is `softhsm2`.
pub fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let stem = file.split(".so").next().unwrap_or(&file);
    let stem = stem.strip_prefix("lib").unwrap_or(stem);
    let stem = stem
        .strip_suffix("_pkcs11")
        .or_else(|| stem.strip_suffix("-pkcs11"))
        .unwrap_or(stem);
    if stem.is_empty() {
        file
    } else {
        stem.to_string()
    }
}

/// Load the module and `C_Initialize` it, letting it use OS threads and locks.
pub fn load(module: &Path) -> Result<Pkcs11> {
    let pkcs11 = Pkcs11::new(module).context(&format!("loading {}", module.display()))?;
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .context("C_Initialize")?;
    Ok(pkcs11)
}

/// The module's one slot with a token.
pub fn slot(pkcs11: &Pkcs11) -> Result<Slot> {
    let slots = pkcs11.get_slots_with_token().context("C_GetSlotList")?;
    slots
        .first()
        .copied()
        .ok_or_else(|| Error("the module reports no slot with a token".into()))
}

/// Whether [`open_token`] found the harness's token or initialised one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenOrigin {
    /// An initialised token labelled as asked was there (a kept `--data` directory): logged in
    /// with [`USER_PIN`].
    Found,
    /// An uninitialised token was initialised (`C_InitToken` with [`SO_PIN`], `C_InitPIN` with
    /// [`USER_PIN`]).
    Initialised,
}

/// The token labelled `label` logged in as the user: if an initialised token with that label
/// is present, it is used as it is; otherwise the first uninitialised token is initialised with
/// that label. A token initialised by someone else is never touched. Returns the slot (which
/// may change on initialisation: SoftHSMv2 renumbers), a R/W session logged in as the user, and
/// where the token came from. Sessions opened later share the login.
pub fn open_token(pkcs11: &Pkcs11, label: &str) -> Result<(Slot, Session, TokenOrigin)> {
    let find = |want_initialised: bool| -> Result<Option<Slot>> {
        for slot in pkcs11.get_slots_with_token().context("C_GetSlotList")? {
            let info = pkcs11.get_token_info(slot).context("C_GetTokenInfo")?;
            let initialised = info.token_initialized();
            if initialised == want_initialised && (!initialised || info.label() == label) {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    };
    let user_pin = AuthPin::new(USER_PIN.into());
    if let Some(slot) = find(true)? {
        let s = pkcs11.open_rw_session(slot).context("C_OpenSession")?;
        s.login(UserType::User, Some(&user_pin))
            .context("C_Login (user) on the token the harness initialised before")?;
        return Ok((slot, s, TokenOrigin::Found));
    }
    let Some(blank) = find(false)? else {
        let mut labels = Vec::new();
        for slot in pkcs11.get_slots_with_token().context("C_GetSlotList")? {
            let info = pkcs11.get_token_info(slot).context("C_GetTokenInfo")?;
            labels.push(format!("{:?}", info.label()));
        }
        return Err(Error(format!(
            "no token labelled {label:?} and no uninitialised token to initialise (tokens: {}); \
             the harness never re-initialises a token it did not make",
            if labels.is_empty() {
                "none".to_string()
            } else {
                labels.join(", ")
            }
        )));
    };
    let so_pin = AuthPin::new(SO_PIN.into());
    pkcs11
        .init_token(blank, &so_pin, label)
        .context("C_InitToken")?;
    let slot = find(true)?.ok_or_else(|| {
        Error(format!(
            "after C_InitToken no slot shows a token labelled {label:?}"
        ))
    })?;
    let s = set_user_pin(pkcs11, slot)?;
    Ok((slot, s, TokenOrigin::Initialised))
}

/// Initialise the token (re-initialising, and so wiping, one already there: its SO PIN must be
/// [`SO_PIN`]), set the user PIN, and return a R/W session logged in as the user. Sessions
/// opened later share the login, as PKCS #11 logins are per application.
pub fn init_token(pkcs11: &Pkcs11, slot: Slot, label: &str) -> Result<Session> {
    let so_pin = AuthPin::new(SO_PIN.into());
    pkcs11
        .init_token(slot, &so_pin, label)
        .context("C_InitToken")?;
    set_user_pin(pkcs11, slot)
}

/// On a token just initialised with [`SO_PIN`]: set the user PIN as the SO, then return a R/W
/// session logged in as the user.
fn set_user_pin(pkcs11: &Pkcs11, slot: Slot) -> Result<Session> {
    let so_pin = AuthPin::new(SO_PIN.into());
    let user_pin = AuthPin::new(USER_PIN.into());
    let s = pkcs11.open_rw_session(slot).context("C_OpenSession")?;
    s.login(UserType::So, Some(&so_pin))
        .context("C_Login (SO)")?;
    s.init_pin(&user_pin).context("C_InitPIN")?;
    s.logout().context("C_Logout (SO)")?;
    s.login(UserType::User, Some(&user_pin))
        .context("C_Login (user)")?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_come_from_the_file_name() {
        assert_eq!(
            module_name(Path::new("/x/target/release/libhsmpool_pkcs11.so")),
            "hsmpool"
        );
        assert_eq!(
            module_name(Path::new("/usr/lib/softhsm/libsofthsm2.so")),
            "softhsm2"
        );
        assert_eq!(module_name(Path::new("opensc-pkcs11.so")), "opensc");
        assert_eq!(module_name(Path::new("/a/libfoo.so.2")), "foo");
    }

    #[test]
    fn the_data_directory_configures_both_modules() {
        let tmp = tempfile::tempdir().unwrap();
        let text = softhsm_config(&tmp.path().join("tokens"));
        assert!(text.contains(&format!(
            "directories.tokendir = {}",
            tmp.path().join("tokens").display()
        )));
        assert!(text.contains("objectstore.backend = file"));
    }
}
