//! Configuration: a TOML file named by `HSMPOOL_CONF` or by the `pReserved` string of
//! `C_Initialize`; with neither, the embedded default (one in-process simulated HSM whose data
//! lives under `HSMPOOL_DATA`, else `$XDG_DATA_HOME/hsmpool`, else `~/.local/share/hsmpool`).
//!
//! ```toml
//! log = "info"                 # tracing filter; HSMPOOL_LOG overrides; off when neither
//! [token]
//! label_hint = "hsmpool"       # shown in the slot description
//! [[member]]
//! kind = "embedded"            # the in-process simulator
//! data_dir = "/var/lib/hsmpool/hsm0"
//! pin_iterations = 100000      # PBKDF2 iterations for new PIN hashes
//! max_login_failures = 10
//! timing = "off"               # or "hsm2m.medium" / "hsm1.medium": the simulator's timing model
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tracing filter (`HSMPOOL_LOG` overrides).
    pub log: Option<String>,
    /// Token presentation.
    #[serde(default)]
    pub token: TokenConfig,
    /// Cluster members; empty means the embedded default.
    #[serde(default)]
    pub member: Vec<MemberConfig>,
    /// Cluster behaviour (pools, replication, retries, health).
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[cluster]`: every key optional; see [`crate::cluster::Settings`] for the defaults.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Member sessions per member (default 4).
    pub sessions_per_member: Option<usize>,
    /// Members a token object must reach (default 2, or all when fewer).
    pub min_replicas: Option<usize>,
    /// Longest a call may take, retries included, in ms (default 20000).
    pub call_deadline_ms: Option<u64>,
    /// Health probe period in ms (default 200).
    pub probe_interval_ms: Option<u64>,
    /// Weight ramp of a returning member in ms (default 3000).
    pub slow_start_ms: Option<u64>,
    /// No completion for this long with work outstanding marks a member stalled (default 750).
    pub stall_ms: Option<u64>,
    /// Consecutive device failures that open a member's circuit (default 3).
    pub breaker_failures: Option<u32>,
    /// How long a find result is served from the engine's cache, in ms (default 100; changes
    /// made through this engine invalidate it at once, this bounds how long a change made by
    /// another process can go unseen).
    pub find_cache_ttl_ms: Option<u64>,
    /// How long a token create waits for `min_replicas` members before it is rolled back, in
    /// ms (default 3000).
    pub replicate_wait_ms: Option<u64>,
}

/// How the token presents itself.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Slot description.
    pub slot_description: Option<String>,
}

/// One cluster member.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// `embedded` (in-process simulator).
    pub kind: String,
    /// Where an embedded member keeps its store.
    pub data_dir: Option<PathBuf>,
    /// PBKDF2 iterations for new PIN hashes.
    pub pin_iterations: Option<u32>,
    /// Consecutive failed logins that lock a user.
    pub max_login_failures: Option<u32>,
    /// Timing model of an embedded member: `"off"` (default), `"hsm2m.medium"` or
    /// `"hsm1.medium"` (AWS CloudHSM per-HSM figures; see simulator/src/timing.rs).
    pub timing: Option<String>,
}

/// Where the embedded default keeps its data.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HSMPOOL_DATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("hsmpool");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/hsmpool"),
        None => PathBuf::from("/tmp/hsmpool"),
    }
}

impl Config {
    /// Parse TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| Error::Config(format!("{origin}: {}", e.to_string().trim())))?;
        for (i, m) in cfg.member.iter().enumerate() {
            if m.kind != "embedded" {
                return Err(Error::Config(format!(
                    "{origin}: member[{i}].kind: unknown kind {:?} (this build knows \"embedded\")",
                    m.kind
                )));
            }
            if let Some(t) = &m.timing {
                if !matches!(t.as_str(), "off" | "hsm2m.medium" | "hsm1.medium") {
                    return Err(Error::Config(format!(
                        "{origin}: member[{i}].timing: unknown model {t:?} (\"off\", \"hsm2m.medium\" or \"hsm1.medium\")"
                    )));
                }
            }
            if m.pin_iterations == Some(0) {
                return Err(Error::Config(format!(
                    "{origin}: member[{i}].pin_iterations: must be at least 1"
                )));
            }
        }
        Ok(cfg)
    }

    /// Load from a file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Resolve the configuration from the `pReserved` string (`conf=<path>` or `toml=<text>`),
    /// else `HSMPOOL_CONF`, else the embedded default.
    pub fn resolve(init_string: Option<&str>) -> Result<Config> {
        if let Some(s) = init_string {
            if let Some(path) = s.strip_prefix("conf=") {
                return Config::load(Path::new(path));
            }
            if let Some(text) = s.strip_prefix("toml=") {
                return Config::parse(text, "C_Initialize pReserved");
            }
            if s.is_empty() {
                return Ok(Config::default());
            }
            return Err(Error::Config(format!(
                "C_Initialize pReserved: expected \"hsmpool:conf=<path>\" or \"hsmpool:toml=<text>\", got {:?}",
                s.chars().take(40).collect::<String>()
            )));
        }
        match std::env::var_os("HSMPOOL_CONF").filter(|v| !v.is_empty()) {
            Some(p) => Config::load(Path::new(&p)),
            None => Ok(Config::default()),
        }
    }

    /// Where the first embedded member keeps its store.
    pub fn embedded_data_dir(&self) -> PathBuf {
        self.member_data_dir(0)
    }

    /// Where embedded member `i` keeps its store: its `data_dir`, else `hsm<i>` under the
    /// default data directory.
    pub fn member_data_dir(&self, i: usize) -> PathBuf {
        self.members()
            .get(i)
            .and_then(|m| m.data_dir.clone())
            .unwrap_or_else(|| default_data_dir().join(format!("hsm{i}")))
    }

    /// The cluster settings, defaults filled in.
    pub fn cluster_settings(&self) -> crate::cluster::Settings {
        use std::time::Duration;
        let c = &self.cluster;
        let d = crate::cluster::Settings::default();
        crate::cluster::Settings {
            sessions_per_member: c.sessions_per_member.unwrap_or(d.sessions_per_member),
            min_replicas: c.min_replicas.unwrap_or(d.min_replicas),
            call_deadline: c
                .call_deadline_ms
                .map_or(d.call_deadline, Duration::from_millis),
            probe_interval: c
                .probe_interval_ms
                .map_or(d.probe_interval, Duration::from_millis),
            slow_start: c.slow_start_ms.map_or(d.slow_start, Duration::from_millis),
            stall: c.stall_ms.map_or(d.stall, Duration::from_millis),
            breaker_failures: c.breaker_failures.unwrap_or(d.breaker_failures),
            replicate_wait: c
                .replicate_wait_ms
                .map_or(d.replicate_wait, Duration::from_millis),
        }
    }

    /// The members, with the embedded default filled in when none is configured.
    pub fn members(&self) -> Vec<MemberConfig> {
        if self.member.is_empty() {
            vec![MemberConfig {
                kind: "embedded".into(),
                data_dir: None,
                pin_iterations: None,
                max_login_failures: None,
                timing: None,
            }]
        } else {
            self.member.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_name_the_file_and_the_key() {
        let e = Config::parse(
            "[[member]]\nkind = \"embedded\"\ndata_dri = \"/x\"\n",
            "/etc/h.toml",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/etc/h.toml") && msg.contains("data_dri"),
            "{msg}"
        );
    }

    #[test]
    fn timing_models_are_named() {
        assert!(Config::parse(
            "[[member]]\nkind = \"embedded\"\ntiming = \"hsm2m.medium\"\n",
            "f"
        )
        .is_ok());
        let e =
            Config::parse("[[member]]\nkind = \"embedded\"\ntiming = \"fast\"\n", "f").unwrap_err();
        assert!(e.to_string().contains("member[0].timing"), "{e}");
    }

    #[test]
    fn unknown_member_kind_is_refused() {
        let e = Config::parse("[[member]]\nkind = \"quantum\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("member[0].kind"), "{e}");
    }

    #[test]
    fn empty_config_is_the_embedded_default() {
        let c = Config::parse("", "f").expect("empty config parses");
        assert_eq!(c.members().len(), 1);
        assert_eq!(c.members()[0].kind, "embedded");
    }
}
