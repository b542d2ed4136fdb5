//! A cluster of real `hsmpool-hsmd` processes on loopback for the tests: certificates made with
//! the `hsmpool cluster` commands (customer CA, cluster certificate, one server certificate per
//! HSM, one client certificate), a shared clone key, and the module's configuration naming the
//! daemons. Each daemon can be killed (`SIGKILL`), restarted on the same port over the same
//! store, paused (`SIGSTOP`) and resumed, and have its connections dropped through
//! `hsmpool sim fault`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::hsmd::Hsmd;
use crate::pki::Identity;
use crate::workspace_bin;

/// The PKCS #11 user PIN and SO PIN the cluster tests use.
pub const SO_PIN: &str = "so-pin-1";
/// See [`SO_PIN`].
pub const USER_PIN: &str = "user-pin-1";

/// One daemon of the cluster.
pub struct Daemon {
    /// Its position in the configuration.
    pub index: usize,
    /// The process (start, kill -9, restart on the same address, log).
    pub hsmd: Hsmd,
    pki: PathBuf,
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Daemon {
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.hsmd.addr
    }

    /// `SIGKILL`, and reap it.
    pub fn kill9(&mut self) {
        self.hsmd.kill();
    }

    /// Start again on the same address over the same store.
    pub fn restart(&mut self) {
        self.hsmd.restart();
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.hsmd.pid() {
            run_ok(Command::new("kill").args([sig, &pid.to_string()]));
        }
    }

    /// `SIGSTOP`: the daemon stops answering, its connections stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `SIGCONT`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// `hsmpool sim fault ... VERB` against this daemon.
    pub fn fault(&self, verb: &[&str]) {
        run_ok(
            Command::new(workspace_bin("hsmpool"))
                .args(["sim", "fault", "--daemon", self.addr()])
                .arg("--ca")
                .arg(self.pki.join("customer-ca.pem"))
                .arg("--cert")
                .arg(self.pki.join("app.crt.pem"))
                .arg("--key")
                .arg(self.pki.join("app.key.pem"))
                .args(verb),
        );
    }
}

/// Several daemons and the module configuration that names them.
pub struct DaemonCluster {
    _tmp: tempfile::TempDir,
    /// The certificates.
    pub pki: PathBuf,
    /// The daemons.
    pub daemons: Vec<Daemon>,
    /// The module's configuration file.
    pub conf: PathBuf,
}

impl DaemonCluster {
    /// `n` daemons with certificates, a shared clone key, fault injection on (`seed`), and a
    /// module configuration with `cluster_toml` in its `[cluster]` table.
    pub fn start(n: usize, seed: u64, cluster_toml: &str) -> DaemonCluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let pki = tmp.path().join("pki");
        let hsmpool = workspace_bin("hsmpool");
        run_ok(
            Command::new(&hsmpool)
                .args(["cluster", "init", "--test-only-sign-with-new-ca", "--dir"])
                .arg(&pki),
        );
        for i in 0..n {
            run_ok(
                Command::new(&hsmpool)
                    .args([
                        "cluster",
                        "issue-hsm",
                        "--name",
                        &format!("hsm{i}"),
                        "--dir",
                    ])
                    .arg(&pki),
            );
        }
        run_ok(
            Command::new(&hsmpool)
                .args(["cluster", "issue-client", "--name", "app", "--dir"])
                .arg(&pki),
        );
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("hsm{i}"))).collect();
        let mut clone = Command::new(&hsmpool);
        clone.args(["cluster", "clone-key"]).args(&dirs);
        run_ok(&mut clone);
        let mut daemons = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let server = Identity {
                cert: pki.join(format!("hsm{i}.crt.pem")),
                key: pki.join(format!("hsm{i}.key.pem")),
            };
            let (seed, member) = (seed.to_string(), i.to_string());
            let hsmd = Hsmd::start_with(
                "127.0.0.1:0",
                &pki.join("customer-ca.pem"),
                &server,
                dir,
                &["--fault-seed", &seed, "--member", &member],
            );
            daemons.push(Daemon {
                index: i,
                hsmd,
                pki: pki.clone(),
            });
        }
        let conf = tmp.path().join("hsmpool.toml");
        let c = DaemonCluster {
            _tmp: tmp,
            pki,
            daemons,
            conf,
        };
        let all: Vec<usize> = (0..n).collect();
        std::fs::write(&c.conf, c.config_text(&all, cluster_toml)).expect("config written");
        c
    }

    /// A module configuration naming the daemons `members`, in that order, with
    /// `cluster_toml` in its `[cluster]` table (another process's view of the same cluster).
    pub fn config_text(&self, members: &[usize], cluster_toml: &str) -> String {
        let mut text = format!("[cluster]\n{cluster_toml}\n");
        for &i in members {
            text.push_str(&format!(
                "[[member]]\nkind = \"daemon\"\naddress = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                self.daemons[i].addr(),
                self.pki.join("customer-ca.pem").display(),
                self.pki.join("app.crt.pem").display(),
                self.pki.join("app.key.pem").display(),
            ));
        }
        text
    }

    /// The `pReserved` config argument (`conf=PATH`).
    pub fn config_arg(&self) -> String {
        format!("conf={}", self.conf.display())
    }

    /// Stop every daemon (resumed first, in case one is paused).
    pub fn stop(&mut self) {
        for d in &mut self.daemons {
            if let Some(pid) = d.hsmd.pid() {
                let _ = Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
            d.kill9();
        }
    }

    /// A data directory.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.daemons[i].hsmd.data
    }
}

impl Drop for DaemonCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
