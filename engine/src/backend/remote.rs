//! The daemon kind: an `hsmpool-hsmd` over mutual TLS (feature `daemon`). The client itself is
//! the wire crate's ([`hsmpool_wire::client`]); here is how a configuration file names one.

use std::path::PathBuf;

pub use hsmpool_wire::client::{
    admin_request, Remote, RemoteConfig, DEFAULT_CONNECTIONS, DEFAULT_TIMEOUT_MS, RECONNECT_BACKOFF,
};

use crate::config::MemberConfig;
use crate::error::{Error, Result};

/// The client configuration of a `kind = "daemon"` member of the configuration file (already
/// validated by [`crate::config::Config::parse`]; a missing key is still an error here, not a
/// panic).
pub fn remote_config(m: &MemberConfig) -> Result<RemoteConfig> {
    let need = |v: &Option<PathBuf>, key: &str| {
        v.clone()
            .ok_or_else(|| Error::Config(format!("daemon member: {key} is required")))
    };
    let address = m
        .address
        .clone()
        .ok_or_else(|| Error::Config("daemon member: address is required".into()))?;
    Ok(RemoteConfig {
        address,
        ca: need(&m.ca, "ca")?,
        cert: need(&m.cert, "cert")?,
        key: need(&m.key, "key")?,
        server_name: m.server_name.clone(),
        connections: m.connections.unwrap_or(DEFAULT_CONNECTIONS),
        timeout_ms: m.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_config_fills_the_defaults() {
        let m = MemberConfig {
            kind: "daemon".into(),
            address: Some("127.0.0.1:2225".into()),
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            ..MemberConfig::default()
        };
        let r = remote_config(&m).unwrap();
        assert_eq!(
            r,
            RemoteConfig::new("127.0.0.1:2225", "ca.pem", "c.pem", "k.pem")
        );
        assert_eq!((r.connections, r.timeout_ms), (4, 10_000));
        let e = remote_config(&MemberConfig { key: None, ..m }).unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
    }
}
