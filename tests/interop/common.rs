//! What every interop suite shares (issue 6): the two token set-ups each client runs against,
//! and the tally each suite prints.
//!
//! - [`Setup::embedded`]: the embedded default, one in-process simulated HSM in a fresh temp
//!   dir (as a user gets with no configuration, but kept out of their home directory);
//! - [`Setup::cluster`]: three `hsmpool-hsmd` daemons on loopback with mutual TLS, started by
//!   the test with certificates from `hsmpool cluster` ([`hsmpool_tests::daemons`]);
//! - [`Setup::softhsm`]: three SoftHSMv2 tokens as vendor-module members
//!   ([`hsmpool_tests::softhsm`]), token keys copied between them by wrapping under the cluster
//!   wrapping key (made by the suite's own `C_InitToken`);
//! - [`Setup::mixed`]: three vendors in one token: an `hsmpool-hsmd` daemon, a SoftHSMv2 token
//!   and an NSS softokn database ([`hsmpool_tests::nss`]), keys copied by wrapping as above.
//!
//! Either way the client finds the module through `HSMPOOL_CONF`, set by [`Setup::command`]
//! (module logging stays off so the client's stderr holds only what the client prints).
//!
//! A suite runs its checks through a [`Tally`]: each check is named, a failing or panicking
//! check is recorded and the suite goes on, and [`Tally::finish`] prints
//! `CLIENT (SETUP): N passed, M failed` with the failures, and fails the test when M > 0. A
//! set-up whose members lack something (SoftHSMv2) lists those checks with their reasons
//! ([`Tally::differences`]): they are reported as not offered, not counted.
//! A missing tool fails the test (it never skips): [`hsmpool_tests::require_tool`].
//!
//! Conventions: a suite lives in `tests/interop/<client>.rs`, declared as a `[[test]]` named
//! `interop_<client>` in tests/Cargo.toml, with test functions named
//! `interop_<client>_embedded`, `interop_<client>_cluster`, `interop_<client>_softhsm` and
//! `interop_<client>_mixed`. `scripts/test-all.sh` runs the
//! `interop_*` test binaries first, uncaptured so every tally line shows, then everything
//! else with `--skip interop_`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hsmpool_tests::daemons::DaemonCluster;
use hsmpool_tests::mixed::MixedMembers;
use hsmpool_tests::nss::NssDb;
use hsmpool_tests::raw::Module;
use hsmpool_tests::softhsm::SoftHsmTokens;
use hsmpool_tests::{module_path, write_test_config};

#[path = "run.rs"]
mod run_impl;
pub use run_impl::{run, Run};

/// The token label, SO PIN and user PIN every suite initialises its token with.
pub const TOKEN_LABEL: &str = "interop-token";
/// See [`TOKEN_LABEL`].
pub const SO_PIN: &str = "so-pin-4321";
/// See [`TOKEN_LABEL`].
pub const USER_PIN: &str = "user-pin-4321";

/// How long one client command may take before the test calls the module hung.
pub const TIMEOUT: Duration = Duration::from_secs(180);

/// Which token set-up a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One in-process simulated HSM.
    Embedded,
    /// Three `hsmpool-hsmd` daemons over mutual TLS.
    Cluster,
    /// Three SoftHSMv2 tokens through SoftHSMv2's PKCS #11 module.
    SoftHsm,
    /// An `hsmpool-hsmd` daemon, a SoftHSMv2 token and an NSS softokn database.
    Mixed,
}

impl Kind {
    /// Whether token keys travel between members by wrapping (vendor modules among them):
    /// they are extractable, and the members' modules set what the token offers.
    pub fn wraps(self) -> bool {
        matches!(self, Kind::SoftHsm | Kind::Mixed)
    }
}

/// A token set-up for one suite run: the module, its configuration, a scratch directory, and
/// (for [`Kind::Cluster`]) the daemons, stopped when this is dropped.
pub struct Setup {
    /// Which set-up.
    pub kind: Kind,
    /// The built module (`libhsmpool_pkcs11.so`).
    pub module: PathBuf,
    /// The module configuration (`HSMPOOL_CONF`).
    pub conf: PathBuf,
    scratch: tempfile::TempDir,
    cluster: Option<DaemonCluster>,
    softhsm: Option<SoftHsmTokens>,
    nss: Option<NssDb>,
}

impl Setup {
    /// The embedded default in a fresh temp dir (its token not initialised).
    pub fn embedded() -> Setup {
        let scratch = tempfile::tempdir().expect("a temp dir can be made");
        let conf = write_test_config(scratch.path());
        Setup {
            kind: Kind::Embedded,
            module: module_path(),
            conf,
            scratch,
            cluster: None,
            softhsm: None,
            nss: None,
        }
    }

    /// Three daemons on loopback (their token not initialised).
    pub fn cluster() -> Setup {
        let scratch = tempfile::tempdir().expect("a temp dir can be made");
        let cluster = DaemonCluster::start(3, 6, "");
        Setup {
            kind: Kind::Cluster,
            module: module_path(),
            conf: cluster.conf.clone(),
            scratch,
            cluster: Some(cluster),
            softhsm: None,
            nss: None,
        }
    }

    /// Three SoftHSMv2 tokens as the members (initialised with `softhsm2-util`; the suite's
    /// `C_InitToken` initialises them again through us, which also makes the wrapping key).
    /// SoftHSMv2 reads `SOFTHSM2_CONF` in every process that loads it: this test process (set
    /// here, for [`with_module`]) and each client ([`Setup::command`]).
    pub fn softhsm() -> Setup {
        Setup::softhsm_with(SO_PIN, USER_PIN)
    }

    /// [`Setup::softhsm`] with tokens made with these PINs (a client's own suite initialises
    /// the token again through us, with the SO PIN it knows).
    pub fn softhsm_with(so_pin: &str, user_pin: &str) -> Setup {
        let scratch = tempfile::tempdir().expect("a temp dir can be made");
        let tokens = SoftHsmTokens::create(scratch.path(), 3, "interop-member", so_pin, user_pin);
        std::env::set_var("SOFTHSM2_CONF", &tokens.conf);
        let conf = scratch.path().join("hsmpool.toml");
        std::fs::write(&conf, tokens.members_toml()).expect("the temp dir is writable");
        Setup {
            kind: Kind::SoftHsm,
            module: module_path(),
            conf,
            scratch,
            cluster: None,
            softhsm: Some(tokens),
            nss: None,
        }
    }

    /// One daemon, one SoftHSMv2 token and one NSS softokn database as the members (the
    /// SoftHSMv2 token made with these PINs; the suite's `C_InitToken` initialises all three
    /// again through us, and its `C_InitPIN` gives NSS its user and the wrapping key).
    pub fn mixed_with(so_pin: &str, user_pin: &str) -> Setup {
        let scratch = tempfile::tempdir().expect("a temp dir can be made");
        let MixedMembers {
            tokens,
            nss,
            daemons: cluster,
            toml,
        } = MixedMembers::create(scratch.path(), "interop-member", so_pin, user_pin, 6, "");
        let conf = scratch.path().join("hsmpool.toml");
        std::fs::write(&conf, toml).expect("the temp dir is writable");
        Setup {
            kind: Kind::Mixed,
            module: module_path(),
            conf,
            scratch,
            cluster: Some(cluster),
            softhsm: Some(tokens),
            nss: Some(nss),
        }
    }

    /// [`Setup::mixed_with`] the suites' PINs.
    pub fn mixed() -> Setup {
        Setup::mixed_with(SO_PIN, USER_PIN)
    }

    /// The set-up for `kind`.
    pub fn new(kind: Kind) -> Setup {
        match kind {
            Kind::Embedded => Setup::embedded(),
            Kind::Cluster => Setup::cluster(),
            Kind::SoftHsm => Setup::softhsm(),
            Kind::Mixed => Setup::mixed(),
        }
    }

    /// Keep the scratch directory (configuration, tokens, client files) after the run when
    /// `HSMPOOL_KEEP_SCRATCH` is set, to reproduce a failure by hand; its path is printed.
    fn keep_scratch_if_asked(&mut self) {
        if std::env::var_os("HSMPOOL_KEEP_SCRATCH").is_some() {
            let kept = std::mem::replace(
                &mut self.scratch,
                tempfile::tempdir().expect("a temp dir can be made"),
            );
            eprintln!("scratch kept: {}", kept.keep().display());
        }
    }

    /// "embedded" or "cluster of 3 daemons", for the tally line.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Embedded => "embedded default",
            Kind::Cluster => "cluster of 3 hsmpool-hsmd",
            Kind::SoftHsm => "cluster of 3 SoftHSMv2 tokens",
            Kind::Mixed => "mixed cluster: hsmpool-hsmd, SoftHSMv2, NSS softokn",
        }
    }

    /// A scratch directory for the client's files (databases, keys, certificates).
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The NSS softokn member's database, for the mixed set-up.
    pub fn nss(&self) -> Option<&NssDb> {
        self.nss.as_ref()
    }

    /// The daemons, for a cluster set-up.
    pub fn daemons(&self) -> Option<&DaemonCluster> {
        self.cluster.as_ref()
    }

    /// `program` with `HSMPOOL_CONF` naming this set-up's configuration and module logging
    /// off, run in the scratch directory.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("HSMPOOL_CONF", &self.conf)
            .env_remove("HSMPOOL_LOG")
            .current_dir(self.dir());
        if let Some(t) = &self.softhsm {
            c.env("SOFTHSM2_CONF", &t.conf);
        }
        c
    }

    /// Initialise the token (label [`TOKEN_LABEL`], SO PIN [`SO_PIN`], user PIN [`USER_PIN`])
    /// through the module's C ABI from this process, for clients that cannot initialise a
    /// token themselves (see [`with_module`]).
    pub fn init_token(&self) {
        use cryptoki_sys::*;
        use hsmpool_tests::call;
        with_module(&self.conf, |m| {
            assert_eq!(m.init_token(SO_PIN, TOKEN_LABEL), CKR_OK, "C_InitToken");
            let h = m.open(true);
            assert_eq!(m.login(h, CKU_SO, SO_PIN), CKR_OK, "SO login");
            let rv = call!(
                m,
                C_InitPIN,
                h,
                USER_PIN.as_ptr() as *mut u8,
                USER_PIN.len() as CK_ULONG
            );
            assert_eq!(rv, CKR_OK, "C_InitPIN");
            assert_eq!(call!(m, C_Logout, h), CKR_OK);
        });
    }

    /// Run `cmd` with the interop timeout, output captured in the scratch directory.
    pub fn run(&self, cmd: Command) -> Run {
        run(cmd, self.dir(), TIMEOUT)
    }
}

/// Run `f` with the module loaded into this test process and initialised with `conf`, then
/// `C_Finalize` (also when `f` panics), so the module never holds the embedded store while a
/// client runs. One look at a time per process: the two suites of one test binary may run in
/// parallel, and `C_Initialize` is once per process (§5.4). Not re-entrant.
pub fn with_module<R>(conf: &Path, f: impl FnOnce(&Module) -> R) -> R {
    static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let m = Module::load();
    let rv = m.initialize_with(Some(&format!("conf={}", conf.display())));
    assert_eq!(rv, cryptoki_sys::CKR_OK, "C_Initialize in the test process");
    let out = catch_unwind(AssertUnwindSafe(|| f(&m)));
    assert_eq!(
        m.finalize(),
        cryptoki_sys::CKR_OK,
        "C_Finalize in the test process"
    );
    match out {
        Ok(r) => r,
        Err(p) => resume_unwind(p),
    }
}

/// The running count of one suite's checks.
pub struct Tally {
    client: String,
    setup: &'static str,
    passed: usize,
    failed: Vec<(String, String)>,
    /// Checks this set-up is known to fail, each with the reason (see [`Tally::differences`]).
    known: Vec<(&'static str, &'static str)>,
    /// Known differences that occurred: (check, reason).
    differed: Vec<(String, &'static str)>,
}

impl Tally {
    /// A tally for `client` run against `setup`.
    pub fn new(client: &str, setup: &Setup) -> Tally {
        Tally {
            client: client.to_owned(),
            setup: setup.name(),
            passed: 0,
            failed: Vec::new(),
            known: Vec::new(),
            differed: Vec::new(),
        }
    }

    /// Checks that fail on this set-up for a reason outside hsmpool (what the members' vendor
    /// module does not offer), each named exactly with its reason. Such a failure is reported
    /// as a difference, not counted as a failure; a listed check that passes fails the suite
    /// (the list must say what is true, so it is kept short and exact).
    pub fn differences(&mut self, list: &[(&'static str, &'static str)]) {
        self.known.extend_from_slice(list);
    }

    /// Run one named check. It fails by returning `Err` or by panicking (the `Run`
    /// assertions panic with the command line and its output); either way the suite goes on.
    /// Returns whether it passed, for checks that later ones depend on.
    pub fn check(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) -> bool {
        let outcome = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".to_owned())),
        };
        match outcome {
            Ok(()) => {
                self.passed += 1;
                eprintln!("  ok    {name}");
                true
            }
            Err(why) => {
                if let Some((_, reason)) = self.known.iter().find(|(n, _)| *n == name) {
                    eprintln!("  DIFF  {name}: {reason}");
                    self.differed.push((name.to_owned(), reason));
                } else {
                    eprintln!("  FAIL  {name}: {why}");
                    self.failed.push((name.to_owned(), why));
                }
                false
            }
        }
    }

    /// Print `CLIENT (SETUP): N passed, M failed` (and each failure); panic when M > 0.
    pub fn finish(mut self) {
        for (name, _) in &self.known {
            if !self.differed.iter().any(|(d, _)| d == name) {
                self.failed.push((
                    (*name).to_owned(),
                    "listed as a known difference of this set-up, but it did not fail (or did \
                     not run): correct the list"
                        .to_owned(),
                ));
            }
        }
        let mut line = format!(
            "{} ({}): {} passed, {} failed",
            self.client,
            self.setup,
            self.passed,
            self.failed.len()
        );
        if !self.differed.is_empty() {
            line.push_str(&format!(
                ", {} differ on these members (listed)",
                self.differed.len()
            ));
        }
        println!("{line}");
        for (name, reason) in &self.differed {
            println!("  differs: {name}: {reason}");
        }
        if !self.failed.is_empty() {
            let mut msg = line;
            for (name, why) in &self.failed {
                msg.push_str(&format!("\n--- {name} ---\n{why}"));
            }
            panic!("{msg}");
        }
        assert!(self.passed > 0, "a suite that checked nothing cannot pass");
    }
}

/// `Err(what)` unless `cond`.
pub fn ensure(cond: bool, what: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.keep_scratch_if_asked();
    }
}
