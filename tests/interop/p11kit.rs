//! p11-kit (Debian's p11-kit 0.24) with the module registered through the module file this
//! repository ships, `dist/p11-kit/hsmpool.module`: a copy naming the built module by absolute
//! path is installed into a per-test user configuration (`$HOME/.config/pkcs11/modules/`, with
//! `HOME` a scratch directory), and then
//!
//! - `p11-kit list-modules` lists the module and its token (and does not before the file is
//!   there);
//! - `x-init-reserved: hsmpool:conf=...` in the module file configures the module without
//!   `HSMPOOL_CONF` (p11-kit passes it as `C_Initialize`'s `pReserved`);
//! - GnuTLS's `p11tool` without `--provider` finds the token through p11-kit, generates a key
//!   in it and signs with it;
//! - `p11-kit-proxy.so` (what NSS, Firefox or OpenSC load to reach every p11-kit module) shows
//!   the token to `pkcs11-tool`;
//! - `p11-kit server` forwards the token over its RPC protocol and `p11tool` generates a key and
//!   signs through `p11-kit-client.so`.
//!
//! Keys made through p11-kit are read back through the module's C ABI from this process and
//! compared with the public keys the clients printed.
//!
//! p11-kit 0.24 ignores the user configuration in a program running as root ("skipping user
//! config in program running as root"; also in setuid programs and under
//! `P11_NO_USER_CONFIG`). When the tests run as root, the programs that must read it run under
//! `setpriv` as `nobody`, keeping `CAP_DAC_OVERRIDE` as an ambient capability so that they can
//! still use the test's root-owned files (the token store, the cluster's client key).

mod common;
mod independent;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{ensure, Kind, Run, Setup, Tally, TOKEN_LABEL, USER_PIN};
use cryptoki_sys::*;
use hsmpool_tests::require_tool;
use independent::{hex, Inspector, PublicKey};

/// The two set-ups of this binary share the test process's module (for [`Inspector`]); they
/// run one after the other even when the harness runs tests on several threads.
static SERIAL: Mutex<()> = Mutex::new(());

/// The module file this repository ships.
fn shipped_module_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/p11-kit/hsmpool.module")
}

/// The `key: value` lines of a p11-kit config file (comments and blank lines skipped).
fn config_values(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Whether this process runs as root (uid 0), from `/proc/self/status`.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The per-test p11-kit user configuration and the means to run programs that read it.
struct P11Kit<'a> {
    setup: &'a Setup,
    home: PathBuf,
    setpriv: Option<PathBuf>,
}

impl<'a> P11Kit<'a> {
    fn new(setup: &'a Setup) -> P11Kit<'a> {
        let home = setup.dir().join("home");
        std::fs::create_dir_all(home.join(".config/pkcs11/modules"))
            .expect("the scratch dir is writable");
        P11Kit {
            setup,
            home,
            setpriv: running_as_root().then(|| require_tool("setpriv")),
        }
    }

    /// Where p11-kit looks for this user's module files.
    fn module_file(&self) -> PathBuf {
        self.home.join(".config/pkcs11/modules/hsmpool.module")
    }

    /// Install the shipped module file with its `module:` line naming the built module by
    /// absolute path, and `extra` lines appended.
    fn install(&self, extra: &str) -> Result<(), String> {
        let shipped = std::fs::read_to_string(shipped_module_file())
            .map_err(|e| format!("{}: {e}", shipped_module_file().display()))?;
        let mut replaced = 0;
        let mut text: String = shipped
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("module:") {
                    replaced += 1;
                    format!("module: {}\n", self.setup.module.display())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        ensure(
            replaced == 1,
            "the shipped module file has no single module: line",
        )?;
        text.push_str(extra);
        std::fs::write(self.module_file(), text).map_err(|e| e.to_string())
    }

    /// Remove the installed module file.
    fn uninstall(&self) {
        let _ = std::fs::remove_file(self.module_file());
    }

    /// `program` as a user whose p11-kit configuration is the per-test one (see the module
    /// documentation for root), with `HSMPOOL_CONF` set.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = match &self.setpriv {
            Some(setpriv) => {
                let mut c = self.setup.command(setpriv);
                c.args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--inh-caps=+dac_override",
                    "--ambient-caps=+dac_override",
                ])
                .arg(program.as_ref());
                c
            }
            None => self.setup.command(program),
        };
        c.env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("P11_NO_USER_CONFIG")
            .env_remove("GNUTLS_PIN");
        c
    }

    /// `p11-kit list-modules`, and the lines of the block about our module (empty if absent).
    fn list_modules(&self, mut c: Command) -> (Run, Vec<String>) {
        c.arg("list-modules");
        let r = self.setup.run(c);
        let head = format!("hsmpool: {}", self.setup.module.display());
        let mut block = Vec::new();
        let mut inside = false;
        for l in r.stdout.lines() {
            if !l.starts_with(' ') {
                inside = l == head;
            }
            if inside {
                block.push(l.trim().to_owned());
            }
        }
        (r, block)
    }
}

/// `Err` unless `block` (trimmed lines) contains every one of `want`.
fn block_has(block: &[String], want: &[&str], r: &Run) -> Result<(), String> {
    for w in want {
        ensure(
            block.iter().any(|l| l == w),
            format!("p11-kit list-modules does not show {w:?} for hsmpool{r}"),
        )?;
    }
    Ok(())
}

/// A `p11-kit server` this test started, killed (by its pid) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn suite(kind: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p11kit = require_tool("p11-kit");
    let p11tool = require_tool("p11tool");
    let pkcs11_tool = require_tool("pkcs11-tool");
    let setup = Setup::new(kind);
    setup.init_token();
    if let (true, Some(nss)) = (running_as_root(), setup.nss()) {
        // The clients run as nobody (see the module documentation).
        nss.give_to(65534);
    }
    let token = Inspector::new(&setup);
    let serial = token.with(|v| {
        String::from_utf8_lossy(&v.token_info().serialNumber)
            .trim_end()
            .to_owned()
    });
    let kit = P11Kit::new(&setup);
    let mut t = Tally::new("p11-kit", &setup);

    t.check(
        "the shipped hsmpool.module names libhsmpool_pkcs11.so, for p11-kit's module directory",
        || {
            let text = std::fs::read_to_string(shipped_module_file()).map_err(|e| e.to_string())?;
            let values = config_values(&text);
            ensure(
                values == [("module".to_owned(), "libhsmpool_pkcs11.so".to_owned())],
                format!("the shipped module file sets {values:?}"),
            )
        },
    );

    t.check(
        "without the module file p11-kit does not list hsmpool",
        || {
            kit.uninstall();
            let (r, block) = kit.list_modules(kit.command(&p11kit));
            r.ok();
            ensure(block.is_empty(), format!("hsmpool is listed already{r}"))
        },
    );

    t.check(
        "p11-kit list-modules lists the module and its token from the user configuration",
        || {
            kit.install("")?;
            let (r, block) = kit.list_modules(kit.command(&p11kit));
            r.ok();
            block_has(
                &block,
                &[
                    "library-manufacturer: hsmpool",
                    "library-description: hsmpool PKCS#11 cluster module",
                    &format!("token: {TOKEN_LABEL}"),
                    "manufacturer: hsmpool",
                    "model: hsmpool cluster",
                    &format!("serial-number: {serial}"),
                    "rng",
                    "login-required",
                    "user-pin-initialized",
                    "token-initialized",
                ],
                &r,
            )
        },
    );

    t.check(
        "x-init-reserved: hsmpool:conf=... in the module file configures the module",
        || {
            // Without HSMPOOL_CONF the module falls back to a fresh embedded token under
            // HSMPOOL_DATA: uninitialised, so not ours.
            let default_data = setup.dir().join("default-data");
            let bare = |c: &mut Command| {
                c.env_remove("HSMPOOL_CONF")
                    .env("HSMPOOL_DATA", &default_data);
            };
            kit.install("")?;
            let mut c = kit.command(&p11kit);
            bare(&mut c);
            let (r, block) = kit.list_modules(c);
            r.ok();
            ensure(
                !block.is_empty()
                    && !block.iter().any(|l| l == "token-initialized")
                    && !block.iter().any(|l| l.contains(TOKEN_LABEL)),
                format!("without HSMPOOL_CONF the module should show a fresh token{r}"),
            )?;
            kit.install(&format!(
                "x-init-reserved: hsmpool:conf={}\n",
                setup.conf.display()
            ))?;
            let mut c = kit.command(&p11kit);
            bare(&mut c);
            let (r, block) = kit.list_modules(c);
            r.ok();
            block_has(
                &block,
                &[
                    &format!("token: {TOKEN_LABEL}"),
                    &format!("serial-number: {serial}"),
                    "token-initialized",
                ],
                &r,
            )?;
            kit.install("")
        },
    );

    t.check(
        "p11tool without --provider finds the token through p11-kit, makes a key and signs",
        || {
            kit.install("")?;
            let mut c = kit.command(&p11tool);
            c.arg("--list-tokens");
            setup.run(c).ok().stdout_has(&format!(
                "manufacturer=hsmpool;serial={serial};token={TOKEN_LABEL}"
            ));
            let out = setup.dir().join("p11kit-ec.pub.pem");
            let mut c = kit.command(&p11tool);
            c.args([
                "--login",
                "--generate-privkey",
                "ecdsa",
                "--curve",
                "secp256r1",
            ])
            .args(["--label", "p11kit-ec", "--outfile"])
            .arg(&out)
            .arg(format!("pkcs11:token={TOKEN_LABEL}"))
            .env("GNUTLS_PIN", USER_PIN);
            setup.run(c).ok();
            let mut c = kit.command(&p11tool);
            c.args(["--login", "--test-sign"])
                .arg(format!(
                    "pkcs11:token={TOKEN_LABEL};object=p11kit-ec;type=private"
                ))
                .env("GNUTLS_PIN", USER_PIN);
            setup
                .run(c)
                .ok()
                .has("Signing using ECDSA-SHA256... ok")
                .has("Verifying against public key in the token... ok");
            check_generated(&token, "p11kit-ec", &out)
        },
    );

    t.check("p11-kit-proxy.so shows the token to pkcs11-tool", || {
        kit.install("")?;
        let mut c = kit.command(&pkcs11_tool);
        c.args(["--module", "p11-kit-proxy.so", "--list-slots"]);
        setup
            .run(c)
            .ok()
            .stdout_has(&format!("token label        : {TOKEN_LABEL}"))
            .stdout_has("token manufacturer : hsmpool")
            .stdout_has(&format!("serial num         : {serial}"));
        Ok(())
    });

    t.check(
        "p11-kit server forwards the token; p11tool makes a key and signs through p11-kit-client.so",
        || {
            let socket = setup.dir().join("p11-kit-server.sock");
            let mut c = setup.command(&p11kit);
            c.args(["server", "-f", "--provider"])
                .arg(&setup.module)
                .arg("-n")
                .arg(&socket)
                .arg(format!("pkcs11:token={TOKEN_LABEL}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let server = Server(c.spawn().map_err(|e| format!("p11-kit server: {e}"))?);
            let start = Instant::now();
            while !socket.exists() {
                ensure(
                    start.elapsed() < Duration::from_secs(20),
                    "p11-kit server made no socket in 20 s",
                )?;
                std::thread::sleep(Duration::from_millis(20));
            }
            let address = format!("unix:path={}", socket.display());
            let client = |args: &[&str]| {
                let mut c = setup.command(&p11tool);
                c.args(["--provider", "p11-kit-client.so"])
                    .args(args)
                    .env("P11_KIT_SERVER_ADDRESS", &address)
                    .env("GNUTLS_PIN", USER_PIN);
                setup.run(c)
            };
            client(&["--list-tokens"])
                .ok()
                .stdout_has(&format!("manufacturer=hsmpool;serial={serial};token={TOKEN_LABEL}"));
            let out = setup.dir().join("rpc-rsa.pub.pem");
            let out_s = out.display().to_string();
            let uri = format!("pkcs11:token={TOKEN_LABEL}");
            client(&[
                "--login",
                "--generate-privkey",
                "rsa",
                "--bits",
                "2048",
                "--label",
                "rpc-rsa",
                "--outfile",
                &out_s,
                &uri,
            ])
            .ok();
            client(&[
                "--login",
                "--test-sign",
                &format!("pkcs11:token={TOKEN_LABEL};object=rpc-rsa;type=private"),
            ])
            .ok()
            .has("Signing using RSA-SHA256... ok")
            .has("Verifying against public key in the token... ok");
            drop(server);
            check_generated(&token, "rpc-rsa", &out)
        },
    );

    kit.uninstall();
    t.finish();
}

/// `Err` unless the token holds the key pair `label` a client generated, its private half never
/// leaving the token and its public half the one the client printed to `pub_pem`.
fn check_generated(token: &Inspector, label: &str, pub_pem: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(pub_pem).map_err(|e| format!("{}: {e}", pub_pem.display()))?;
    let printed = PublicKey::from_spki(&independent::pem(&text, "PUBLIC KEY")?)?;
    token.with(|v| {
        let private = v.one(CKO_PRIVATE_KEY, label)?;
        v.check_private_key_stays_in(private.handle)?;
        let public = v.one(CKO_PUBLIC_KEY, label)?;
        ensure(
            public.id == private.id,
            format!(
                "the halves of {label} have CKA_IDs {} and {}",
                hex(&public.id),
                hex(&private.id)
            ),
        )?;
        let held = v.public_key(public.handle)?;
        ensure(
            held == printed,
            format!("the token's {label} is not the key the client printed"),
        )
    })
}

#[test]
fn interop_p11kit_embedded() {
    suite(Kind::Embedded);
}

#[test]
fn interop_p11kit_cluster() {
    suite(Kind::Cluster);
}

#[test]
fn interop_p11kit_softhsm() {
    suite(Kind::SoftHsm);
}

#[test]
fn interop_p11kit_mixed() {
    suite(Kind::Mixed);
}
