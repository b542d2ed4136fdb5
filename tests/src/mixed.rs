//! The mixed cluster the tests run: one `hsmpool-hsmd` daemon, one SoftHSMv2 token and one NSS
//! softokn database, as the members of one token.

use std::path::Path;

use crate::daemons::DaemonCluster;
use crate::nss::NssDb;
use crate::softhsm::SoftHsmTokens;

/// The three members, and the module configuration that names them.
pub struct MixedMembers {
    /// The SoftHSMv2 token (labelled `{prefix}-0`, made with the PINs given).
    pub tokens: SoftHsmTokens,
    /// The NSS database.
    pub nss: NssDb,
    /// The daemon (stopped when dropped).
    pub daemons: DaemonCluster,
    /// The configuration: the daemon (with `cluster_toml` in `[cluster]`), then the SoftHSMv2
    /// token, then the NSS database.
    pub toml: String,
}

impl MixedMembers {
    /// The members under `dir`; `SOFTHSM2_CONF` is set for this process (SoftHSMv2 reads it
    /// at `C_Initialize`).
    pub fn create(
        dir: &Path,
        prefix: &str,
        so_pin: &str,
        pin: &str,
        seed: u64,
        cluster_toml: &str,
    ) -> MixedMembers {
        let tokens = SoftHsmTokens::create(dir, 1, prefix, so_pin, pin);
        std::env::set_var("SOFTHSM2_CONF", &tokens.conf);
        let nss = NssDb::create(dir);
        let daemons = DaemonCluster::start(1, seed, cluster_toml);
        let toml = std::fs::read_to_string(&daemons.conf).expect("the daemon's configuration")
            + &tokens.members_toml()
            + &nss.member_toml();
        MixedMembers {
            tokens,
            nss,
            daemons,
            toml,
        }
    }
}
