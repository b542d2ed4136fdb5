//! `hsmpool sim`: administration of a running `hsmpool-hsmd` over its mutual-TLS connection
//! (the same connection code as the engine's daemon backend).

use std::process::ExitCode;

use cryptoki_sys::{CKR_ARGUMENTS_BAD, CKR_FUNCTION_NOT_SUPPORTED, CK_RV};
use hsmpool_engine::backend::remote::{admin_request, RemoteConfig, DEFAULT_TIMEOUT_MS};
use hsmpool_wire::{Request, Response};

/// The `sim` part of the usage text.
pub const USAGE: &str =
    "  sim fault DAEMON VERB...    apply one fault verb to a running hsmpool-hsmd (it must run
                              with --fault-seed): crash, restart, hold, release, partition,
                              repair, delay <us|5ms>, fail_with <rv> <probability>,
                              drop_connections
  sim stats DAEMON            a running hsmpool-hsmd's counters
                              DAEMON is: --daemon HOST:PORT --ca PEM --cert PEM --key PEM
                              [--server-name NAME] [--timeout-ms N]; the client certificate
                              must chain to the CA the daemon trusts, and the daemon's to
                              --ca
";

fn rv_text(rv: CK_RV) -> String {
    let name = match rv {
        CKR_ARGUMENTS_BAD => " (CKR_ARGUMENTS_BAD: not a fault verb)",
        CKR_FUNCTION_NOT_SUPPORTED => {
            " (CKR_FUNCTION_NOT_SUPPORTED: the daemon runs without --fault-seed)"
        }
        _ => "",
    };
    format!("{rv:#x}{name}")
}

/// The connection flags, taken out of `args`; what is left is the command's own.
fn connection(args: &[String]) -> Result<(RemoteConfig, Vec<String>), String> {
    let (mut daemon, mut ca, mut cert, mut key) = (None, None, None, None);
    let mut server_name = None;
    let mut timeout_ms = DEFAULT_TIMEOUT_MS;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--daemon" => daemon = Some(value()?),
            "--ca" => ca = Some(value()?),
            "--cert" => cert = Some(value()?),
            "--key" => key = Some(value()?),
            "--server-name" => server_name = Some(value()?),
            "--timeout-ms" => {
                let v = value()?;
                timeout_ms = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--timeout-ms: {v:?} is not a positive number"))?;
            }
            _ => rest.push(a.clone()),
        }
    }
    let need = |v: Option<String>, flag: &str| v.ok_or_else(|| format!("{flag} is required"));
    let mut cfg = RemoteConfig::new(
        need(daemon, "--daemon")?,
        need(ca, "--ca")?,
        need(cert, "--cert")?,
        need(key, "--key")?,
    );
    cfg.server_name = server_name;
    cfg.timeout_ms = timeout_ms;
    Ok((cfg, rest))
}

/// `hsmpool sim ...` (the words after `sim`).
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err("sim: fault or stats?".into());
    };
    let (cfg, words) = connection(rest)?;
    let req = match cmd.as_str() {
        "fault" if words.is_empty() => return Err("sim fault: which verb?".into()),
        "fault" => Request::Fault {
            verb: words.join(" "),
        },
        "stats" if words.is_empty() => Request::Stats,
        "stats" => return Err(format!("sim stats: unexpected arguments {words:?}")),
        other => return Err(format!("sim: unknown command {other:?} (fault or stats)")),
    };
    let resp = admin_request(&cfg, &req).map_err(|e| format!("{}: {e}", cfg.address))?;
    match (req, resp) {
        (Request::Fault { verb }, Response::Ok) => {
            println!("{}: {verb}: done", cfg.address);
            Ok(ExitCode::SUCCESS)
        }
        (Request::Stats, Response::Stats(st)) => {
            for (name, v) in st.fields() {
                println!("{name}: {v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        (_, Response::Err(rv)) => {
            eprintln!("hsmpool: {}: refused with {}", cfg.address, rv_text(rv));
            Ok(ExitCode::from(1))
        }
        (req, other) => Err(format!(
            "{}: answer {} to {} makes no sense",
            cfg.address,
            other.name(),
            req.name()
        )),
    }
}
