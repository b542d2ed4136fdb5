//! The embedded kind: the simulator in this process (feature `embedded`, the default member).

use hsmpool_sim::hsm::HsmConfig;
use hsmpool_sim::member::SimMember;
use hsmpool_sim::timing::TimingConfig;

use super::MemberId;
use crate::config::{Config, MemberConfig, MemberKind};
use crate::error::{Error, Result};

/// Before the members open: embedded members of one cluster share a clone key (see
/// `hsmpool_sim::cluster`; it also names the cluster, for its backups) and the fleet's backup
/// key, made once and given to each data directory. A lone embedded member gets them too.
pub(super) fn prepare(cfg: &Config) -> Result<()> {
    let members = cfg.members();
    let dirs: Vec<std::path::PathBuf> = (0..members.len())
        .filter(|i| matches!(members[*i].kind(), Ok(MemberKind::Embedded)))
        .map(|i| cfg.member_data_dir(i))
        .collect();
    if !dirs.is_empty() {
        hsmpool_sim::cluster::provision(&dirs).map_err(|e| Error::Config(e.to_string()))?;
    }
    Ok(())
}

/// Open embedded member `i` of `cfg` (`m`).
pub(super) fn open(id: MemberId, cfg: &Config, i: usize, m: &MemberConfig) -> Result<SimMember> {
    let mut hcfg = HsmConfig::new(cfg.member_data_dir(i));
    if let Some(n) = m.pin_iterations {
        hcfg.pin_iterations = n;
    }
    if let Some(f) = m.max_login_failures {
        hcfg.max_login_failures = f;
    }
    hcfg.timing = match m.timing.as_deref() {
        Some("hsm2m.medium") => Some(TimingConfig::default()),
        Some("hsm1.medium") => Some(TimingConfig::cloudhsm_hsm1_medium()),
        _ => None,
    };
    Ok(SimMember::open(id, hcfg)?)
}
