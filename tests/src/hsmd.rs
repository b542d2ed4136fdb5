//! `hsmpool-hsmd` as a child process for tests: started on a free loopback port (found through
//! its `--port-file`), its stderr (the log) and stdout kept in files the test can search,
//! killed with SIGKILL and restarted on the same address over the same data directory. The
//! binary comes from the target directory: build the workspace first (`cargo build
//! --workspace`, as scripts/test-all.sh does).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::{Identity, Pki};

/// How long a daemon may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running daemon. Dropping it kills it.
pub struct Hsmd {
    child: Option<Child>,
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    /// Its data directory.
    pub data: PathBuf,
    /// stderr of every run (the tracing log), appended.
    log: PathBuf,
    /// stdout of every run, appended.
    out: PathBuf,
    port_file: PathBuf,
    /// The arguments after `--listen`.
    args: Vec<String>,
}

impl std::fmt::Debug for Hsmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsmd")
            .field("addr", &self.addr)
            .field("data", &self.data)
            .finish()
    }
}

impl Hsmd {
    /// Start a daemon for `data` on a free loopback port, presenting `server` and trusting
    /// the PKI's customer CA for clients; `extra` flags are appended (`--pin-iterations 1000`
    /// unless `extra` sets it). Returns once it listens.
    pub fn start(pki: &Pki, server: &Identity, data: &Path, extra: &[&str]) -> Hsmd {
        Self::start_on("127.0.0.1:0", pki, server, data, extra)
    }

    /// [`Hsmd::start`] on a given address.
    pub fn start_on(
        listen: &str,
        pki: &Pki,
        server: &Identity,
        data: &Path,
        extra: &[&str],
    ) -> Hsmd {
        Self::start_with(listen, &pki.customer_ca, server, data, extra)
    }

    /// A daemon on `listen` trusting the customer CA certificate `ca` for clients (the PKI
    /// may come from anywhere: the openssl-made [`Pki`], or `hsmpool cluster`).
    pub fn start_with(
        listen: &str,
        ca: &Path,
        server: &Identity,
        data: &Path,
        extra: &[&str],
    ) -> Hsmd {
        let s = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();
        let mut args = vec![
            "--data".into(),
            s(data),
            "--cert".into(),
            s(&server.cert),
            "--key".into(),
            s(&server.key),
            "--ca".into(),
            s(ca),
        ];
        if !extra.contains(&"--pin-iterations") {
            args.extend(["--pin-iterations".into(), "1000".into()]);
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let mut name = data.as_os_str().to_owned();
        name.push(".log");
        let log = PathBuf::from(name);
        let mut name = data.as_os_str().to_owned();
        name.push(".out");
        let out = PathBuf::from(name);
        let mut name = data.as_os_str().to_owned();
        name.push(".port");
        let port_file = PathBuf::from(name);
        let mut d = Hsmd {
            child: None,
            addr: listen.to_owned(),
            data: data.to_path_buf(),
            log,
            out,
            port_file,
            args,
        };
        d.launch();
        d
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(&self.port_file);
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("open a daemon output file")
        };
        let (out, err) = (open(&self.out), open(&self.log));
        let child = Command::new(crate::workspace_bin("hsmpool-hsmd"))
            .arg("--listen")
            .arg(&self.addr)
            .arg("--port-file")
            .arg(&self.port_file)
            .args(&self.args)
            .env_remove("HSMPOOL_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn hsmpool-hsmd");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.port_file) {
                if text.ends_with('\n') {
                    self.addr = text.trim().to_owned();
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("hsmpool-hsmd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "hsmpool-hsmd did not start listening within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill it with SIGKILL (no clean-up of any kind) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same address, data directory and flags.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Everything it wrote to stderr so far (all runs): its log.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Everything it wrote to stdout so far (all runs).
    pub fn stdout(&self) -> String {
        read_lossy(&self.out)
    }

    /// Wait until its output contains `needle` (at most `within`); whether it did.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_lossy(p: &Path) -> String {
    let mut b = Vec::new();
    if let Ok(mut f) = File::open(p) {
        use std::io::Read;
        let _ = f.read_to_end(&mut b);
    }
    String::from_utf8_lossy(&b).into_owned()
}

impl Drop for Hsmd {
    fn drop(&mut self) {
        self.kill();
    }
}
