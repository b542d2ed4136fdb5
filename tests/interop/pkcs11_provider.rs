//! The OpenSSL 3 pkcs11-provider's own test suites over the built module (issue 11), against
//! both set-ups, and a TLS server of ours beside its `tls` suite.
//!
//! The provider is latchset/pkcs11-provider 1.2.0, unmodified source beside the repository in
//! `../shared/thirdparty/pkcs11-provider` (read-only; see its SOURCE.txt). It is built once per
//! cargo target dir: the source tree is copied to `target/pkcs11-provider/<hash>/src`, our token
//! set-up `interop/pkcs11_provider/hsmpool-init.sh` goes into its `tests/`, three textual
//! [`EDITS`] (each must match exactly once) teach `tests/setup.sh` and `tests/meson.build` the
//! token types `hsmpool` (the embedded default), `hsmpool.cluster` (three daemons),
//! `hsmpool.softhsm` (three SoftHSMv2 tokens) and `hsmpool.mixed` (a daemon, a SoftHSMv2 token
//! and an NSS softokn database), and `meson setup` and
//! `ninja` build it in `target/pkcs11-provider/<hash>/build`. The hash covers the source tree,
//! the edits and the init script, so changing any of them builds afresh. A lock file beside
//! it keeps two test processes from building it at once, and a lock file in the temp dir
//! from running the provider's tests at once (they write into the build dir, and its `tls`
//! suite listens on a fixed port); the set-ups run one after the other.
//!
//! Each set-up then runs `meson test --suite <token>`: the provider's `setup` (tests/setup.sh,
//! which sources hsmpool-init.sh: `pkcs11-tool` initialises the token, then the provider and
//! `pkcs11-tool` make keys and certificates in it) and each of its 30 suites. Meson's result
//! line for each is one check. OK passes. FAIL or TIMEOUT fails, with the tail of the suite's
//! log and of its part of the provider's debug log (a `meson test --wrapper` marks in that log
//! where each test begins). SKIP is allowed only for the suites in [`EXCLUDED`], each with the
//! `exit 77` condition of its script. The suites in [`UNSUPPORTED`] need what hsmpool does not
//! offer (Ed448): their failure is reported, not counted, only when their log ends in the
//! paragraph that needs it; a failure anywhere before, or a pass, fails the test.
//!
//! Beside the provider's `tls` suite, with the token its setup made: `openssl req` and
//! `openssl x509 -req -CA` issue a server certificate for the RSA key `testCert` and the EC key
//! `ecCert`, signed by the token's CA key (the setup's own certificates name themselves as
//! issuer, as OpenSSL 3.0's `x509 -new -signkey -force_pubkey` makes them, so they do not
//! verify against the CA; and the certificates carry the public key with the curve named,
//! see [`tls_checks`]); `openssl s_server -provider pkcs11 -provider default -key
//! <pkcs11: URI>` serves with each, and a plain `openssl s_client` (default provider only,
//! trusting the CA certificate) completes TLS 1.3 and TLS 1.2 with `Verify return code: 0
//! (ok)`. Each handshake must add a `C_SignInit` to the server's provider debug log (the
//! signature was made in the token), and a server whose key URI names no key in the token
//! must refuse to start.

mod common;
mod tls;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use common::{ensure, run, Kind, Run, Setup, Tally};
use hsmpool_tests::{require_tool, target_dir};
use tls::{handshake, Server};

/// The provider's source, relative to the repository root.
const SOURCE: &str = "../shared/thirdparty/pkcs11-provider";
/// Our token set-up for the provider's tests, relative to tests/.
const INIT_SCRIPT: &str = "interop/pkcs11_provider/hsmpool-init.sh";

/// One textual edit of the copied provider source: `old` must occur exactly once in `file`.
struct Edit {
    file: &'static str,
    old: &'static str,
    new: &'static str,
}

/// The edits that add our token types (a `-` in their names would break the provider's
/// test-wrapper, which splits `<suite>-<token>.t` at the first one).
const EDITS: [Edit; 3] = [
    // tests/setup.sh picks the token set-up by type.
    Edit {
        file: "tests/setup.sh",
        old: "else\n    echo \"Unknown token type: $1\"",
        new: "elif [ \"${TOKENTYPE}\" == \"hsmpool\" ] || [ \"${TOKENTYPE}\" == \"hsmpool.cluster\" ] || [ \"${TOKENTYPE}\" == \"hsmpool.softhsm\" ] || [ \"${TOKENTYPE}\" == \"hsmpool.mixed\" ]; then\n    \
              source \"${TESTSSRCDIR}/hsmpool-init.sh\"\n\
              else\n    echo \"Unknown token type: $1\"",
    },
    // A `setup` test for each of our token types.
    Edit {
        file: "tests/meson.build",
        old: "foreach suite : all_suites\n",
        new: "foreach suite : all_suites + ['hsmpool', 'hsmpool.cluster', 'hsmpool.softhsm', 'hsmpool.mixed']\n",
    },
    // Every suite for our token types, not only those the provider lists for softhsm.
    Edit {
        file: "tests/meson.build",
        old: "foreach suite : extra_args.get('suites', [])\n",
        new: "foreach suite : extra_args.get('suites', []) + ['hsmpool', 'hsmpool.cluster', 'hsmpool.softhsm', 'hsmpool.mixed']\n",
    },
];

/// The provider's suites that skip against hsmpool, and why (the `exit 77` of each script).
/// A skip of any other suite fails the test; an excluded suite that passes is fine.
const EXCLUDED: &[(&str, &str)] = &[
    (
        "mldsa",
        "ML-DSA: hsmpool has no ML-DSA keys yet (issue 17); hsmpool-init.sh sets \
         SUPPORT_ML_DSA=0 and tests/tmldsa exits 77",
    ),
    (
        "skey",
        "opaque symmetric keys: OpenSSL 3.0 has no `openssl skeyutl` (the EVP_SKEY API came \
         in 3.5), so setup.sh sets SUPPORT_SKEY=0 and tests/tskey exits 77",
    ),
    (
        "aead",
        "AEAD through opaque symmetric keys: as skey, tests/taead exits 77 without SUPPORT_SKEY",
    ),
    (
        "tlsfuzzer",
        "its tlsfuzzer, tlslite-ng and python-ecdsa git submodules are not in the source copy \
         (SOURCE.txt); tests/ttlsfuzzer exits 77 without tlsfuzzer/",
    ),
    (
        "ecxc",
        "explicit EC parameters (a curve given by its numbers, not its name): meson's \
         enable_explicit_EC_test option is off by default (distributions remove explicit EC \
         from libcrypto), and tests/tecxc exits 77 without ENABLE_EXPLICIT_EC_TEST",
    ),
];

/// Suites that skip only over SoftHSMv2 members (token type `hsmpool.softhsm`), and why.
const SOFTHSM_EXCLUDED: &[(&str, &str)] = &[(
    "edwards",
    "SoftHSMv2 cannot wrap an EdDSA private key (CKR_KEY_NOT_WRAPPABLE), so an Ed25519 token \
     key cannot be kept on every member and is refused: hsmpool-init.sh sets SUPPORT_ED25519=0 \
     for hsmpool.softhsm and tests/tedwards exits 77",
)];

/// Suites that skip only on the mixed cluster (a daemon, a SoftHSMv2 token, an NSS softokn
/// database), and why.
const MIXED_EXCLUDED: &[(&str, &str)] = &[
    (
        "edwards",
        "no member but the daemon can hold an Ed25519 key (SoftHSMv2 cannot wrap one, NSS softokn \
         3.87 has no EdDSA), so the token does not offer Ed25519: hsmpool-init.sh sets \
         SUPPORT_ED25519=0 for hsmpool.mixed and tests/tedwards exits 77",
    ),
    (
        "rsapssam",
        "NSS softokn keeps no CKA_ALLOWED_MECHANISMS, so a token key restricted by it is refused \
         on a cluster with an NSS member (README, \"NSS softokn\"): hsmpool-init.sh sets \
         SUPPORT_ALLOWED_MECHANISMS=0 for hsmpool.mixed (as the provider's softokn-init.sh \
         leaves it) and tests/trsapssam exits 77",
    ),
];

/// Suites that fail only on the mixed cluster, as [`SOFTHSM_UNSUPPORTED`]. The rest of the
/// SoftHSMv2 list passes here: a call SoftHSMv2 refuses for its parameters (RSA-OAEP with
/// SHA-2, ECDH with a KDF) is done by another member, and the daemon locks a PIN.
const MIXED_UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "hkdf",
        "SoftHSMv2 has no CKM_HKDF_DERIVE, so the token (what every member offers) does not",
        "HKDF Derivation",
    ),
    (
        "pkey",
        "it makes an Ed25519 token key whatever SUPPORT_ED25519 says, and no member but the \
         daemon can hold one (see edwards)",
        "Testing key type ED 25519",
    ),
];

/// Suites that fail only over SoftHSMv2 members, because SoftHSMv2 2.6 (Debian 12) does not
/// offer what they need: (suite, why, the paragraph of the suite's log at which it must fail;
/// empty for a suite that is about that alone). As [`UNSUPPORTED`], a failure elsewhere fails
/// the test and a listed suite that passes does too.
const SOFTHSM_UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "oaepsha2",
        "SoftHSMv2 2.6 decrypts RSA-OAEP with SHA-1 only (CKR_ARGUMENTS_BAD for SHA-2)",
        "Encrypt and decrypt with RSA OAEP",
    ),
    (
        "hkdf",
        "SoftHSMv2 has no CKM_HKDF_DERIVE, so the token does not offer it",
        "HKDF Derivation",
    ),
    (
        "pkey",
        "it makes an Ed25519 token key whatever SUPPORT_ED25519 says, and SoftHSMv2 cannot wrap \
         an EdDSA private key to copy it to the other members (refused)",
        "Testing key type ED 25519",
    ),
    (
        "cms",
        "CMS decryption with an EC key derives with a KDF (CKD_SHA*_KDF); SoftHSMv2 derives \
         with CKD_NULL only (CKR_MECHANISM_PARAM_INVALID)",
        "Decrypt CMS with EC",
    ),
    (
        "pinlock",
        "SoftHSMv2 never locks a PIN after failed logins; the suite is about that lock alone",
        "",
    ),
    (
        "ecdh",
        "its forced part makes OpenSSL fetch every algorithm from the pkcs11 provider, including \
         the digest SoftHSMv2 (in the same process) computes its PIN check with, so SoftHSMv2's \
         C_Login calls back into the provider and this module; the module refuses the call that \
         re-enters its own login (CKR_FUNCTION_FAILED) rather than deadlock (the provider's own \
         tests turn symmetric operations off for SoftHSMv2 for this loop)",
        "ECDH Exchange forced: public key in file",
    ),
];

/// Suites that fail against hsmpool only because they need what it does not offer (README,
/// "OpenSSL 3 with the pkcs11-provider"): (suite, why, the paragraph of the suite's log at which
/// it must fail). Such a failure is reported, not counted, but only if the suite's log ends in
/// that paragraph: a failure in any earlier part (what we do offer) fails the test. A suite
/// listed here that passes fails the test too ("remove it from UNSUPPORTED").
const UNSUPPORTED: &[(&str, &str, &str)] = &[(
    "edwards",
    "Ed448: tests/tedwards generates an Ed448 key through the provider whatever SUPPORT_ED448 \
     says (CKR_CURVE_NOT_SUPPORTED: aws-lc has no Ed448); its Ed25519 parts run first and pass",
    "Test Ed448 Key generation",
)];

/// The suites that skip, and those that fail, only with the members of `kind`.
type KindLists = (
    &'static [(&'static str, &'static str)],
    &'static [(&'static str, &'static str, &'static str)],
);
fn kind_lists(kind: Kind) -> KindLists {
    match kind {
        Kind::Embedded | Kind::Cluster => (&[], &[]),
        Kind::SoftHsm => (SOFTHSM_EXCLUDED, SOFTHSM_UNSUPPORTED),
        Kind::Mixed => (MIXED_EXCLUDED, MIXED_UNSUPPORTED),
    }
}

/// How long a whole `meson test` run may take (each test also has meson's timeout, 30-90 s).
const MESON_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The provider's PIN for its token (tests/setup.sh, PINVALUE outside FIPS mode).
const PROVIDER_PIN: &str = "0123456789ABCDEFFEDCBA9876543210";

/// How long the provider's build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// How many last lines of a log a failure shows.
const LOG_TAIL: usize = 40;
/// How many last lines of the provider's debug log a failure shows.
const DEBUG_TAIL: usize = 30;
/// What the `meson test --wrapper` writes into the provider's debug log before each test,
/// followed by the test's command line.
const MARKER: &str = "##### hsmpool interop harness: next test:";

/// The token type of a set-up, as the provider's tests name it.
fn token(kind: Kind) -> &'static str {
    match kind {
        Kind::Embedded => "hsmpool",
        Kind::Cluster => "hsmpool.cluster",
        Kind::SoftHsm => "hsmpool.softhsm",
        Kind::Mixed => "hsmpool.mixed",
    }
}

/// An exclusive `flock` on a file, released when dropped or when the process dies.
struct Lock {
    _file: File,
}

impl Lock {
    /// Wait for the lock on `path` (made if missing), saying so if someone else holds it.
    fn take(path: &Path) -> Lock {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut told = false;
        loop {
            let how = if told {
                libc::LOCK_EX
            } else {
                libc::LOCK_EX | libc::LOCK_NB
            };
            // SAFETY: flock(2) is given a descriptor that `f` owns and keeps open for the
            // whole call (and, once locked, for the life of the Lock); no memory is passed.
            if unsafe { libc::flock(f.as_raw_fd(), how) } == 0 {
                return Lock { _file: f };
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) if !told => {
                    eprintln!(
                        "pkcs11-provider: waiting for {} (another test builds or runs the provider's \
                         tests)",
                        path.display()
                    );
                    told = true;
                }
                Some(libc::EINTR) => {}
                _ => panic!("flock {}: {e}", path.display()),
            }
        }
    }
}

/// One test meson knows for a token.
struct MesonTest {
    name: String,
}

/// The built provider: the patched source copy and its meson build dir.
struct Provider {
    src: PathBuf,
    build: PathBuf,
}

impl Provider {
    /// The provider built for these inputs in this target dir, building it first if it is not
    /// (under a lock, so that two test processes do not build it at once); and whether it was
    /// built now.
    fn get() -> (Provider, bool) {
        let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let source = tests_dir
            .parent()
            .expect("tests/ is in the repository")
            .join(SOURCE);
        let source = source.canonicalize().unwrap_or_else(|e| {
            panic!(
                "{}: {e}: the pkcs11-provider source (latchset/pkcs11-provider 1.2.0) must be \
                 there, beside the repository",
                source.display()
            )
        });
        let init = fs::read(tests_dir.join(INIT_SCRIPT)).expect("the init script is in tests/");
        let hash = inputs_hash(&source, &init);
        let cache = target_dir()
            .parent()
            .expect("target/<profile> has a parent")
            .join("pkcs11-provider");
        fs::create_dir_all(&cache).expect("target/ is writable");
        let dir = cache.join(&hash);
        let _building = Lock::take(&cache.join(format!("{hash}.lock")));
        let p = Provider {
            src: dir.join("src"),
            build: dir.join("build"),
        };
        let ready = dir.join("READY");
        let fresh = !ready.exists();
        if fresh {
            p.build_from(&source, &init, &dir);
            fs::write(&ready, format!("built from {}\n", source.display()))
                .expect("target/ is writable");
        }
        (p, fresh)
    }

    /// Copy, patch, `meson setup`, `ninja` (which builds the test programs too: meson's `all`
    /// includes them, so `meson test --no-rebuild` needs nothing more).
    fn build_from(&self, source: &Path, init: &[u8], dir: &Path) {
        if dir.exists() {
            // A build that did not finish.
            fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        copy_tree(source, &self.src)
            .unwrap_or_else(|e| panic!("copying {} failed: {e}", source.display()));
        let init_copy = self.src.join("tests/hsmpool-init.sh");
        fs::write(&init_copy, init).expect("the copy is writable");
        fs::set_permissions(&init_copy, fs::Permissions::from_mode(0o755))
            .expect("the copy is writable");
        for e in &EDITS {
            let path = self.src.join(e.file);
            let text =
                fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            let text = replace_once(&text, e.old, e.new)
                .unwrap_or_else(|why| panic!("the provider's {}: {why}", e.file));
            fs::write(&path, text).expect("the copy is writable");
        }
        let mut meson = Command::new(require_tool("meson"));
        meson.arg("setup").arg(&self.build).arg(&self.src);
        run(meson, dir, BUILD_TIMEOUT).ok();
        let mut ninja = Command::new(require_tool("ninja"));
        ninja.arg("-C").arg(&self.build);
        run(ninja, dir, BUILD_TIMEOUT).ok();
    }

    /// The tests meson has for `token`, in its order (`setup` first); `scratch` takes the
    /// output files.
    fn tests(&self, token: &str, scratch: &Path) -> Vec<MesonTest> {
        let mut c = Command::new(require_tool("meson"));
        c.args(["introspect", "--tests"]).arg(&self.build);
        let r = run(c, scratch, common::TIMEOUT);
        r.ok();
        let all: serde_json::Value =
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("meson's JSON: {e}{r}"));
        let suite = format!("pkcs11-provider:{token}");
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let tests: Vec<MesonTest> = all
            .as_array()
            .expect("meson introspect --tests prints an array")
            .iter()
            .filter(|t| strings(&t["suite"]).contains(&suite))
            .map(|t| MesonTest {
                name: t["name"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        assert!(
            tests.first().is_some_and(|t| t.name == "setup"),
            "meson has no setup test first for {suite}{r}"
        );
        tests
    }

    /// `build/tests/<token>`: the provider's files for one token.
    fn token_dir(&self, token: &str) -> PathBuf {
        self.build.join("tests").join(token)
    }

    /// The provider's debug log for `token`'s tests.
    fn debug_log(&self, token: &str) -> PathBuf {
        self.token_dir(token).join("p11prov-debug.log")
    }
}

/// `text` with its one occurrence of `old` replaced by `new`; an error if there is not
/// exactly one.
fn replace_once(text: &str, old: &str, new: &str) -> Result<String, String> {
    match text.matches(old).count() {
        1 => Ok(text.replacen(old, new, 1)),
        n => Err(format!("{old:?} occurs {n} times, not once")),
    }
}

/// Copy a directory tree; the copies of files are writable by their owner (the source is
/// read-only), with the source's other mode bits (the test scripts are executable).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &dest)?;
        } else {
            fs::copy(entry.path(), &dest)?;
            let mut perm = fs::metadata(&dest)?.permissions();
            perm.set_mode(perm.mode() | 0o200);
            fs::set_permissions(&dest, perm)?;
        }
    }
    Ok(())
}

/// Every file under `dir`: its path relative to `root`, its contents, whether it is executable.
fn tree_files(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>, bool)>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("the source tree is readable");
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).expect("the source tree is readable");
        if meta.is_dir() {
            tree_files(root, &path, out);
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("a readable link");
            out.push((rel, target.to_string_lossy().as_bytes().to_vec(), false));
        } else {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((rel, bytes, meta.permissions().mode() & 0o111 != 0));
        }
    }
}

/// The build's name: SHA-256 (first 16 hex digits) of the source tree, the init script and
/// the edits.
fn inputs_hash(source: &Path, init: &[u8]) -> String {
    let mut files = Vec::new();
    tree_files(source, source, &mut files);
    files.sort();
    let mut h = digest::Context::new(&digest::SHA256);
    let mut put = |bytes: &[u8]| {
        h.update(&bytes.len().to_le_bytes());
        h.update(bytes);
    };
    put(b"hsmpool pkcs11-provider build 1");
    for (rel, bytes, exec) in &files {
        put(rel.as_bytes());
        put(bytes);
        put(&[u8::from(*exec)]);
    }
    put(init);
    for e in &EDITS {
        put(e.file.as_bytes());
        put(e.old.as_bytes());
        put(e.new.as_bytes());
    }
    h.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The part of the provider's debug log that `test` wrote: from the marker before it to the
/// next marker (for `setup`, which starts the log afresh: up to the first marker).
fn debug_part(log: &str, test: &str, token: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let is_marker = |l: &&str| l.starts_with(MARKER);
    let start = if test == "setup" {
        0
    } else {
        let own = format!(" {test}-{token}.t");
        match lines
            .iter()
            .rposition(|l| l.starts_with(MARKER) && l.ends_with(&own))
        {
            Some(i) => i + 1,
            None => return format!("(no marker for {test} in the debug log)"),
        }
    };
    let end = lines[start..]
        .iter()
        .position(is_marker)
        .map_or(lines.len(), |i| start + i);
    tail(&lines[start..end].join("\n"), DEBUG_TAIL)
}

/// What one `meson test` run printed.
struct Found {
    /// Test name -> (result, its result line).
    results: BTreeMap<String, (String, String)>,
    /// All of meson's output.
    output: String,
    /// Meson's text log of the run (its JSON log is beside it).
    log: PathBuf,
}

/// The result of each test on meson's result lines (`N/M pkcs11-provider:TOKEN / NAME RESULT
/// ...`).
fn results(r: &Run, token: &str) -> Found {
    let stdout = &r.stdout;
    let project = format!("pkcs11-provider:{token}");
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let counted = w.first().is_some_and(|n| {
            n.split_once('/')
                .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
        });
        if counted && w.len() >= 5 && w[1] == project && w[2] == "/" {
            out.insert(w[3].to_owned(), (w[4].to_owned(), line.trim().to_owned()));
        }
    }
    // Meson names its log after --logbase and the wrapper, and says where it is.
    let log = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Full log written to "))
        .map_or_else(|| PathBuf::from("(meson wrote no log)"), PathBuf::from);
    Found {
        results: out,
        output: r.all(),
        log,
    }
}

/// What meson's JSON log of a run recorded of the test `name`: its stdout and stderr.
fn meson_log(found: &Found, token: &str, name: &str) -> (String, String) {
    let path = found.log.with_extension("json");
    let text = fs::read_to_string(&path).unwrap_or_default();
    let full = format!("pkcs11-provider:{token} / {name}");
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["name"].as_str() == Some(full.as_str()) {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            return (s("stdout"), s("stderr"));
        }
    }
    (
        format!("({} has no record of {full})", path.display()),
        String::new(),
    )
}

/// Whether a suite's log ends in the paragraph `title` (the provider's helpers print each as
/// `## <title>`): the suite failed there, after every earlier paragraph passed.
fn failed_in_paragraph(log: &str, title: &str) -> bool {
    // An empty title: the suite is about what is not offered alone, wherever it failed.
    title.is_empty()
        || log
            .lines()
            // tests/tpkey marks its parts "Testing key type ..." rather than "## ...".
            .filter_map(|l| {
                l.strip_prefix("## ")
                    .or_else(|| l.starts_with("Testing key type ").then_some(l))
            })
            .next_back()
            .is_some_and(|last| last.trim() == title)
}

/// The `export NAME="value"` lines of the provider's testvars file for a token.
fn testvars(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (the provider's setup did not finish)",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| {
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.to_owned(), v.to_owned())
        })
        .collect())
}

/// What became of one test.
enum Verdict {
    Pass,
    Fail(String),
    Excluded(&'static str),
    Unsupported(&'static str),
}

/// One set-up's run of the provider's tests.
struct ProviderRun<'a> {
    setup: &'a Setup,
    p: &'a Provider,
    token: &'static str,
    meson: PathBuf,
    /// The `meson test --wrapper` that marks each test's start in the debug log.
    marker: PathBuf,
}

impl ProviderRun<'_> {
    /// Our module (and for the cluster, the daemons' client configuration) for the tests.
    fn module_env(&self, c: &mut Command) {
        c.env("HSMPOOL_MODULE", &self.setup.module);
        if self.setup.kind != Kind::Embedded {
            c.env("HSMPOOL_CLUSTER_CONF", &self.setup.conf);
        }
    }

    /// `meson test` of this token's tests (all, or those in `only`), one at a time, logged to
    /// meson-logs/<logbase>-<the wrapper's name>.{txt,json}.
    fn meson_test(&self, logbase: &str, only: &[String]) -> Run {
        let mut c = self.setup.command(&self.meson);
        c.arg("test")
            .arg("-C")
            .arg(&self.p.build)
            .args([
                "--suite",
                self.token,
                "--no-rebuild",
                "--num-processes",
                "1",
            ])
            // Meson's own timeouts (30 s a test, 60-90 s for a few) with room for a loaded
            // machine; a hung test still ends the run.
            .args(["--timeout-multiplier", "3"])
            .args(["--logbase", logbase, "--wrapper"])
            .arg(&self.marker)
            .args(only);
        self.module_env(&mut c);
        run(c, self.setup.dir(), MESON_TIMEOUT)
    }

    fn debug_log_text(&self) -> String {
        tls::read_lossy(&self.p.debug_log(self.token))
    }

    /// The verdict on test `name` from its meson result, with the logs a failure needs.
    fn judge(&self, name: &str, found: &Found) -> Verdict {
        let (kind_excluded, kind_unsupported) = kind_lists(self.setup.kind);
        let unsupported = UNSUPPORTED
            .iter()
            .chain(kind_unsupported)
            .find(|(n, _, _)| *n == name);
        let excluded = EXCLUDED
            .iter()
            .chain(kind_excluded)
            .find(|(n, _)| *n == name)
            .map(|(_, why)| *why);
        let Some((result, line)) = found.results.get(name) else {
            return Verdict::Fail(format!(
                "meson printed no result for it (see {}); the last lines it printed:\n{}",
                found.log.display(),
                tail(&found.output, LOG_TAIL)
            ));
        };
        match (result.as_str(), unsupported, excluded) {
            ("OK", Some(_), _) => Verdict::Fail(format!(
                "passes now ({line}): remove it from UNSUPPORTED in \
                 tests/interop/pkcs11_provider.rs"
            )),
            ("OK", None, _) => Verdict::Pass,
            ("SKIP", _, Some(why)) => Verdict::Excluded(why),
            ("SKIP", _, None) => Verdict::Fail(format!(
                "skipped, and it is not in EXCLUDED ({line}){}",
                self.no_token_note()
            )),
            ("FAIL", Some((_, why, at)), _) => {
                let log = self
                    .p
                    .build
                    .join(format!("tests/{name}.{}.log", self.token));
                if failed_in_paragraph(&tls::read_lossy(&log), at) {
                    Verdict::Unsupported(why)
                } else {
                    Verdict::Fail(format!(
                        "{line}: it may fail only at \"{at}\" (what hsmpool does not offer), but \
                         failed before it{}",
                        self.logs(name, found)
                    ))
                }
            }
            _ => Verdict::Fail(format!("{line}{}", self.logs(name, found))),
        }
    }

    /// The tail of test `name`'s log and of its part of the provider's debug log.
    fn logs(&self, name: &str, found: &Found) -> String {
        let tests = self.p.build.join("tests");
        let debug = self.p.debug_log(self.token);
        let (log, text) = if name == "setup" {
            let (out, err) = meson_log(found, self.token, name);
            let text = format!(
                "{}\n--- last 15 lines of its stderr (set -x) ---\n{}",
                tail(&out, LOG_TAIL),
                tail(&err, 15)
            );
            let json = found.log.with_extension("json");
            (format!("{} (setup's stdout)", json.display()), text)
        } else {
            let path = tests.join(format!("{name}.{}.log", self.token));
            let text = tail(&tls::read_lossy(&path), LOG_TAIL);
            (path.display().to_string(), text)
        };
        format!(
            "{}\n--- last {LOG_TAIL} lines of {log} ---\n{text}\n--- last {DEBUG_TAIL} lines \
             of its part of {} ---\n{}",
            self.no_token_note(),
            debug.display(),
            debug_part(&self.debug_log_text(), name, self.token)
        )
    }

    /// A note when the provider's setup left no testvars (then every suite skips).
    fn no_token_note(&self) -> &'static str {
        if self.p.token_dir(self.token).join("testvars").exists() {
            ""
        } else {
            "\n(no testvars: the provider's setup did not finish, so every suite skips)"
        }
    }
}

/// Record a verdict: a check for a pass or a failure, an aside line for the others.
fn record(t: &mut Tally, asides: &mut Vec<String>, name: &str, v: Verdict) {
    let check = if name == "setup" {
        "setup (the provider's tests/setup.sh: token, keys, certificates)".to_owned()
    } else {
        format!("suite {name}")
    };
    match v {
        Verdict::Pass => {
            t.check(&check, || Ok(()));
        }
        Verdict::Fail(why) => {
            t.check(&check, || Err(why));
        }
        Verdict::Excluded(why) => {
            eprintln!("  skip  suite {name}: excluded: {why}");
            asides.push(format!("excluded, skipped: {name} ({why})"));
        }
        Verdict::Unsupported(why) => {
            eprintln!("  unsupported  suite {name}: fails where it needs {why}");
            asides.push(format!(
                "fails only where it needs what hsmpool does not offer: {name} ({why})"
            ));
        }
    }
}

/// The server checks beside the provider's `tls` suite, with the token its setup made.
fn tls_checks(t: &mut Tally, pr: &ProviderRun, openssl: &Path) {
    let setup = pr.setup;
    let vars = testvars(&pr.p.token_dir(pr.token).join("testvars"));
    let var = |name: &str| -> Result<String, String> {
        let vars = vars.as_ref().map_err(Clone::clone)?;
        vars.get(name)
            .cloned()
            .ok_or_else(|| format!("the provider's testvars have no {name}"))
    };
    // `openssl SUB -provider pkcs11 -provider default` as the provider's tests run it (the
    // configuration with the module and the PIN file, our module's configuration), with its
    // provider debug log in the scratch file `LOG.p11prov.log`.
    let token_openssl = |sub: &str, log: &str| -> Command {
        let mut c = setup.command(openssl);
        if let Ok(vars) = &vars {
            for name in ["OPENSSL_CONF", "PKCS11_PROVIDER_MODULE", "HSMPOOL_CONF"] {
                if let Some(v) = vars.get(name) {
                    c.env(name, v);
                }
            }
        }
        let log = setup.dir().join(format!("{log}.p11prov.log"));
        c.env("PKCS11_PROVIDER_DEBUG", format!("file:{}", log.display()))
            .args([sub, "-provider", "pkcs11", "-provider", "default"]);
        c
    };
    let plain_conf = setup.dir().join("openssl-plain.cnf");
    fs::write(&plain_conf, "").expect("the scratch dir is writable");
    let plain = || -> Command {
        let mut c = setup.command(openssl);
        c.env("OPENSSL_CONF", &plain_conf);
        c
    };
    let ext = setup.dir().join("server-ext.cnf");
    fs::write(
        &ext,
        "subjectAltName = IP:127.0.0.1\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n",
    )
    .expect("the scratch dir is writable");

    // The server certificates carry the token's public key as plain openssl writes it:
    // pkcs11-provider 1.2.0 exports EC public keys with explicit curve parameters (its
    // ec_export_params, with SoftHSMv2 as with hsmpool), which OpenSSL 3.0 refuses in a leaf
    // certificate (verify error 94); `pkey -ec_param_enc named_curve` names the curve again.
    let keys = [
        ("RSA", "testCert", "PRIURI", "PUBURI", ""),
        ("EC", "ecCert", "ECPRIURI", "ECPUBURI", "named_curve"),
    ];
    let mut certs = BTreeMap::new();
    for (serial, (alg, label, pri, publ, param_enc)) in keys.iter().enumerate() {
        t.check(
            &format!(
                "req -new and x509 -req -CA: a server certificate for the {alg} key {label} in \
                 the token, signed by the token's CA key"
            ),
            || {
                let (key, pubkey) = (var(pri)?, var(publ)?);
                let (ca, ca_key) = (var("CACRT")?, var("CAPRIURI")?);
                let file = |ext: &str| setup.dir().join(format!("server-{alg}.{ext}"));
                let (csr, exported, public, crt) =
                    (file("csr"), file("token-pub"), file("pub"), file("pem"));
                let mut req = token_openssl("req", "req");
                req.args(["-new", "-key", &key])
                    .args(["-subj", &format!("/CN=hsmpool-provider-{alg}"), "-out"])
                    .arg(&csr);
                setup.run(req).ok();
                let mut export = token_openssl("pkey", "pkey");
                export
                    .args(["-pubin", "-in", &pubkey, "-pubout", "-out"])
                    .arg(&exported);
                setup.run(export).ok();
                let mut rewrite = plain();
                rewrite
                    .args(["pkey", "-pubin", "-pubout", "-in"])
                    .arg(&exported);
                if !param_enc.is_empty() {
                    rewrite.args(["-ec_param_enc", param_enc]);
                }
                rewrite.arg("-out").arg(&public);
                setup.run(rewrite).ok();
                let mut x509 = token_openssl("x509", "x509");
                x509.args(["-req", "-in"])
                    .arg(&csr)
                    .args(["-CA", &ca, "-CAkey", &ca_key, "-sha256", "-days", "2"])
                    .args(["-set_serial", &(100 + serial).to_string(), "-extfile"])
                    .arg(&ext)
                    .arg("-force_pubkey")
                    .arg(&public)
                    .arg("-out")
                    .arg(&crt);
                setup.run(x509).ok();
                let mut verify = plain();
                verify
                    .args(["verify", "-CAfile", &ca, "-verify_ip", "127.0.0.1"])
                    .arg(&crt);
                setup.run(verify).ok().stdout_has(": OK");
                let mut cert_pub = plain();
                cert_pub
                    .args(["x509", "-noout", "-pubkey", "-in"])
                    .arg(&crt);
                let cert_pub = setup.run(cert_pub);
                ensure(
                    cert_pub.ok().stdout.as_bytes() == tls::read_lossy(&public).as_bytes(),
                    format!("the certificate's public key is not the token's {label}{cert_pub}"),
                )?;
                certs.insert(*alg, (key, crt, ca));
                Ok(())
            },
        );
    }

    t.check(
        "s_server refuses to start when its -key URI names no key in the token",
        || {
            let ca = var("CACRT")?;
            let mut c = token_openssl("s_server", "s_server-nokey");
            c.args(["-accept", "127.0.0.1:0", "-www", "-cert", &ca])
                .args(["-key", "pkcs11:type=private;object=no-such-key"]);
            // A server that loaded some other key would listen until killed: a failure.
            run(c, setup.dir(), Duration::from_secs(30))
                .failed()
                .has("Could not read server certificate private key");
            Ok(())
        },
    );

    let handshakes = [
        (
            "RSA",
            [
                ("TLSv1.3", "TLS_AES_256_GCM_SHA384", "RSA-PSS"),
                ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384", "RSA"),
            ],
        ),
        (
            "EC",
            [
                ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256", "ECDSA"),
                ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDSA"),
            ],
        ),
    ];
    for (alg, tries) in handshakes {
        let debug = setup.dir().join(format!("s_server-{alg}.p11prov.log"));
        let mut server = None;
        t.check(
            &format!("s_server -provider pkcs11 -provider default starts with the {alg} key in the token"),
            || {
                let (key, crt, _) = certs.get(alg).ok_or("no certificate was issued")?;
                let name = format!("s_server-{alg}");
                server = Some(Server::start(setup.dir(), &name, || {
                    let mut c = token_openssl("s_server", &name);
                    c.args(["-www", "-key", key, "-cert"]).arg(crt);
                    c
                }));
                Ok(())
            },
        );
        for hs in tries {
            let (proto, cipher, _) = hs;
            t.check(
                &format!(
                    "plain s_client: {proto} {cipher}, verified against the CA, signed with the \
                     {alg} key in the token (C_SignInit)"
                ),
                || {
                    let server = server.as_ref().ok_or("the server did not start")?;
                    let (_, _, ca) = certs.get(alg).ok_or("no certificate was issued")?;
                    let sign_inits = || {
                        tls::read_lossy(&debug)
                            .matches("Calling C_SignInit")
                            .count()
                    };
                    let before = sign_inits();
                    let name = format!("s_client-{alg}-{proto}");
                    handshake(plain(), server, setup.dir(), ca, hs, &name)?;
                    let after = sign_inits();
                    ensure(
                        after > before,
                        format!(
                            "the server's provider debug log {} shows no C_SignInit for this \
                             handshake ({before} before, {after} after): its signature was not \
                             made in the token",
                            debug.display()
                        ),
                    )
                },
            );
        }
        drop(server);
    }
}

fn suite(kind: Kind) {
    let meson = require_tool("meson");
    for tool in ["ninja", "pkg-config", "expect", "pkcs11-tool", "bash"] {
        require_tool(tool);
    }
    let openssl = require_tool("openssl");
    let setup = match kind {
        // The provider's setup.sh initialises the token with its own PIN (PINVALUE, outside
        // FIPS mode), which SoftHSMv2 checks against the SO PIN its tokens were made with.
        Kind::SoftHsm => Setup::softhsm_with(PROVIDER_PIN, PROVIDER_PIN),
        Kind::Mixed => Setup::mixed_with(PROVIDER_PIN, PROVIDER_PIN),
        kind => Setup::new(kind),
    };
    let token = token(kind);
    let mut t = Tally::new("pkcs11-provider", &setup);
    let mut asides = Vec::new();
    let started = Instant::now();

    let mut built = None;
    t.check(
        "the provider builds (meson + ninja, once per target dir and inputs)",
        || {
            built = Some(Provider::get());
            Ok(())
        },
    );
    let Some((p, fresh)) = built else {
        t.finish();
        return;
    };
    let build_time = started.elapsed();
    let tests = p.tests(token, setup.dir());
    t.check(
        "EXCLUDED and UNSUPPORTED name tests the provider has, each once",
        || {
            // Each list names tests the provider has, each once; each set-up's own lists are
            // checked among themselves (edwards is in UNSUPPORTED for every set-up and skips
            // altogether over SoftHSMv2 and on the mixed cluster).
            let each_once = |names: Vec<&str>| -> Result<(), String> {
                let mut seen = Vec::new();
                for name in names {
                    ensure(
                        tests.iter().any(|test| test.name == name),
                        format!("the provider has no test {name}"),
                    )?;
                    ensure(!seen.contains(&name), format!("{name} is listed twice"))?;
                    seen.push(name);
                }
                Ok(())
            };
            each_once(
                EXCLUDED
                    .iter()
                    .map(|(n, _)| *n)
                    .chain(UNSUPPORTED.iter().map(|(n, _, _)| *n))
                    .collect(),
            )?;
            for kind in [Kind::SoftHsm, Kind::Mixed] {
                let (excluded, unsupported) = kind_lists(kind);
                each_once(
                    excluded
                        .iter()
                        .map(|(n, _)| *n)
                        .chain(unsupported.iter().map(|(n, _, _)| *n))
                        .collect(),
                )?;
            }
            Ok(())
        },
    );

    let marker = setup.dir().join("mark-debug-log.sh");
    let debug_log = p.debug_log(token);
    let debug_dir = debug_log.parent().expect("the log is in a dir");
    assert!(
        !debug_log.to_string_lossy().contains('\''),
        "{} cannot be single-quoted",
        debug_log.display()
    );
    fs::write(
        &marker,
        format!(
            "#!/bin/sh\n# Written by hsmpool's pkcs11-provider interop test, run by meson test \
             --wrapper:\n# marks where each test's part of the provider's debug log begins.\n\
             if [ -d '{}' ]; then\n    echo \"{MARKER} $*\" >> '{}'\nfi\nexec \"$@\"\n",
            debug_dir.display(),
            debug_log.display()
        ),
    )
    .expect("the scratch dir is writable");
    fs::set_permissions(&marker, fs::Permissions::from_mode(0o755))
        .expect("the scratch dir is writable");
    let pr = ProviderRun {
        setup: &setup,
        p: &p,
        token,
        meson,
        marker,
    };

    // One run of the provider's tests at a time on this machine, whatever the target dir: they
    // write into the build dir, and the `tls` suite listens on a fixed port (23456).
    let waiting = Instant::now();
    let _running = Lock::take(&std::env::temp_dir().join("hsmpool-pkcs11-provider-tests.lock"));
    let wait_time = waiting.elapsed();
    let suites_started = Instant::now();
    // A suite that skips writes no log: none may be left from an earlier run.
    for test in &tests[1..] {
        let _ = fs::remove_file(p.build.join(format!("tests/{}.{token}.log", test.name)));
    }
    let found = results(&pr.meson_test(token, &[]), token);
    let v = pr.judge("setup", &found);
    record(&mut t, &mut asides, "setup", v);
    for test in &tests[1..] {
        let v = pr.judge(&test.name, &found);
        record(&mut t, &mut asides, &test.name, v);
    }
    let suites_time = suites_started.elapsed();

    let tls_started = Instant::now();
    tls_checks(&mut t, &pr, &openssl);
    let tls_time = tls_started.elapsed();

    for line in &asides {
        println!("pkcs11-provider ({}): {line}", setup.name());
    }
    println!(
        "pkcs11-provider ({}): {:.1} s: build {:.1} s ({}), waiting for the lock {:.1} s, \
         provider tests {:.1} s, s_server checks {:.1} s",
        setup.name(),
        started.elapsed().as_secs_f64(),
        build_time.as_secs_f64(),
        if fresh { "built" } else { "cached" },
        wait_time.as_secs_f64(),
        suites_time.as_secs_f64(),
        tls_time.as_secs_f64()
    );
    t.finish();
}

#[test]
fn interop_pkcs11_provider_embedded() {
    suite(Kind::Embedded);
}

#[test]
fn interop_pkcs11_provider_cluster() {
    suite(Kind::Cluster);
}

#[test]
fn interop_pkcs11_provider_softhsm() {
    suite(Kind::SoftHsm);
}

#[test]
fn interop_pkcs11_provider_mixed() {
    suite(Kind::Mixed);
}
