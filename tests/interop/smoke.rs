//! The interop harness itself (`common.rs`): both set-ups come up, take a token
//! initialisation, and answer `pkcs11-tool --list-slots` with the token; the tally counts.
//! Also OpenSC's call tracer `pkcs11-spy.so` between pkcs11-tool and the module: it writes into
//! the interface record `C_GetInterface` returns, which crashed it while that record was
//! read-only.

mod common;

use common::{Kind, Setup, Tally, TOKEN_LABEL};
use hsmpool_tests::require_tool;

fn suite(kind: Kind) {
    let tool = require_tool("pkcs11-tool");
    let setup = Setup::new(kind);
    let mut t = Tally::new("interop harness", &setup);
    t.check("the token initialises through the C ABI", || {
        setup.init_token();
        Ok(())
    });
    t.check("pkcs11-tool lists the initialised token", || {
        let mut c = setup.command(&tool);
        c.arg("--module").arg(&setup.module).arg("--list-slots");
        setup.run(c).ok().stdout_has(TOKEN_LABEL);
        Ok(())
    });
    t.check(
        "pkcs11-spy interposed between pkcs11-tool and the module traces the calls",
        || {
            let spy = std::path::Path::new("/usr/lib/x86_64-linux-gnu/pkcs11-spy.so");
            if !spy.exists() {
                return Err(format!(
                    "{} is missing (Debian package opensc)",
                    spy.display()
                ));
            }
            let log = setup.dir().join("spy.log");
            let mut c = setup.command(&tool);
            c.arg("--module")
                .arg(spy)
                .arg("--list-slots")
                .env("PKCS11SPY", &setup.module)
                .env("PKCS11SPY_OUTPUT", &log);
            setup.run(c).ok().stdout_has(TOKEN_LABEL);
            let traced = std::fs::read_to_string(&log).map_err(|e| format!("spy log: {e}"))?;
            for call in [
                "C_GetInterface",
                "C_Initialize",
                "C_GetSlotList",
                "C_GetTokenInfo",
            ] {
                if !traced.contains(call) {
                    return Err(format!("the spy log lacks {call}:\n{traced}"));
                }
            }
            Ok(())
        },
    );
    t.finish();
}

#[test]
fn interop_smoke_embedded() {
    suite(Kind::Embedded);
}

#[test]
fn interop_smoke_cluster() {
    suite(Kind::Cluster);
}

#[test]
fn interop_smoke_softhsm() {
    suite(Kind::SoftHsm);
}

#[test]
fn interop_smoke_mixed() {
    suite(Kind::Mixed);
}
