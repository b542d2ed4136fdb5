//! The interop harness itself (`common.rs`): both set-ups come up, take a token
//! initialisation, and answer `pkcs11-tool --list-slots` with the token; the tally counts.

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
