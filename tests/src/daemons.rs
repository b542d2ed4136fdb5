//! A cluster of real `hsmpool-hsmd` processes on loopback for the tests: certificates made with
//! the `hsmpool cluster` commands (customer CA, cluster certificate, one server certificate per
//! HSM, one client certificate), a shared clone key, and the module's configuration naming the
//! daemons. Each daemon can be killed (`SIGKILL`), restarted on the same port over the same
//! store, paused (`SIGSTOP`) and resumed, and have its connections dropped through
//! `hsmpool sim fault`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_bin;

/// The PKCS #11 user PIN and SO PIN the cluster tests use.
pub const SO_PIN: &str = "so-pin-1";
/// See [`SO_PIN`].
pub const USER_PIN: &str = "user-pin-1";

/// One daemon.
pub struct Daemon {
    /// Its position in the configuration.
    pub index: usize,
    /// Its data directory.
    pub dir: PathBuf,
    /// `127.0.0.1:PORT`, fixed after the first start.
    pub addr: String,
    pki: PathBuf,
    log: PathBuf,
    fault_seed: u64,
    child: Option<Child>,
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
    fn spawn(&mut self, listen: &str) {
        let port_file = self.dir.join("port");
        let _ = std::fs::remove_file(&port_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let name = format!("hsm{}", self.index);
        let child = Command::new(workspace_bin("hsmpool-hsmd"))
            .arg("--data")
            .arg(&self.dir)
            .args(["--listen", listen])
            .arg("--cert")
            .arg(self.pki.join(format!("{name}.crt.pem")))
            .arg("--key")
            .arg(self.pki.join(format!("{name}.key.pem")))
            .arg("--ca")
            .arg(self.pki.join("customer-ca.pem"))
            .args(["--pin-iterations", "1000"])
            .args(["--fault-seed", &self.fault_seed.to_string()])
            .args(["--member", &self.index.to_string()])
            .arg("--port-file")
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("hsmpool-hsmd starts");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Ok(a) = std::fs::read_to_string(&port_file) {
                if !a.trim().is_empty() {
                    self.addr = a.trim().to_string();
                    return;
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "hsmpool-hsmd {} exited at start ({st}): {}",
                    self.index,
                    self.log_text()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "hsmpool-hsmd {} did not start: {}",
                self.index,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `SIGKILL`, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same address over the same store.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.clone();
        // The port was just freed: binding it again may take a moment.
        let t0 = Instant::now();
        loop {
            self.spawn(&addr);
            if self.addr == addr {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "port {addr} not free again"
            );
        }
    }

    fn signal(&self, sig: &str) {
        run_ok(Command::new("kill").args([sig, &self.pid().to_string()]));
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
                .args(["sim", "fault", "--daemon", &self.addr])
                .arg("--ca")
                .arg(self.pki.join("customer-ca.pem"))
                .arg("--cert")
                .arg(self.pki.join("app.crt.pem"))
                .arg("--key")
                .arg(self.pki.join("app.key.pem"))
                .args(verb),
        );
    }

    /// What it logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
        for (i, dir) in dirs.into_iter().enumerate() {
            let mut d = Daemon {
                index: i,
                log: tmp.path().join(format!("hsm{i}.log")),
                dir,
                addr: String::new(),
                pki: pki.clone(),
                fault_seed: seed,
                child: None,
            };
            d.spawn("127.0.0.1:0");
            daemons.push(d);
        }
        let conf = tmp.path().join("hsmpool.toml");
        let mut text = format!("[cluster]\n{cluster_toml}\n");
        for d in &daemons {
            text.push_str(&format!(
                "[[member]]\nkind = \"daemon\"\naddress = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                d.addr,
                pki.join("customer-ca.pem").display(),
                pki.join("app.crt.pem").display(),
                pki.join("app.key.pem").display(),
            ));
        }
        std::fs::write(&conf, text).expect("config written");
        DaemonCluster {
            _tmp: tmp,
            pki,
            daemons,
            conf,
        }
    }

    /// The `pReserved` config argument (`conf=PATH`).
    pub fn config_arg(&self) -> String {
        format!("conf={}", self.conf.display())
    }

    /// Stop every daemon (resumed first, in case one is paused).
    pub fn stop(&mut self) {
        for d in &mut self.daemons {
            if d.child.is_some() {
                let _ = Command::new("kill")
                    .args(["-CONT", &d.pid().to_string()])
                    .status();
            }
            d.kill9();
        }
    }

    /// A data directory.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.daemons[i].dir
    }
}

impl Drop for DaemonCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
