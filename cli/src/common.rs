//! What every command of the `hsmpool` tool shares: secrets from the environment, the
//! configuration and an engine logged in over it, argument parsing, hexadecimal, failure
//! messages that say what was wrong and what to do, and naming one key. It imports nothing
//! else of the tool, so every command module stands on it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cryptoki_sys::*;
use hsmpool_engine::config::Config;
use hsmpool_engine::types::{AttrAnswer, ObjectHandle, SessionHandle, SlotId};
use hsmpool_engine::{Attr, Engine, Error};
use hsmpool_member::users::{
    vendor_rv_name, CKR_HSMPOOL_LAST_OFFICER, CKR_HSMPOOL_QUORUM_REQUIRED,
    CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED, CKR_HSMPOOL_QUORUM_TOKEN_INVALID,
    CKR_HSMPOOL_QUORUM_TOO_HIGH, CKR_HSMPOOL_USER_EXISTS, CKR_HSMPOOL_USER_NOT_FOUND,
    CKR_HSMPOOL_USER_OWNS_KEYS,
};
use hsmpool_member::OwnedObject;
use zeroize::Zeroizing;

pub(crate) fn secret(name: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    std::env::var(name)
        .map(|v| Zeroizing::new(v.into_bytes()))
        .map_err(|_| format!("{name} is not set (secrets are read from the environment only)"))
}

/// What went wrong, and what to do, for an error of the engine.
pub(crate) fn explain(e: &Error, name: &str) -> String {
    let rv = e.ck_rv();
    match rv {
        CKR_HSMPOOL_USER_EXISTS => format!(
            "user {name} exists already (CKR_HSMPOOL_USER_EXISTS); `hsmpool user passwd {name}` \
             sets a new password"
        ),
        CKR_HSMPOOL_USER_NOT_FOUND => format!(
            "there is no user {name} (CKR_HSMPOOL_USER_NOT_FOUND); `hsmpool user list` shows \
             who there is"
        ),
        CKR_HSMPOOL_LAST_OFFICER => "refused (CKR_HSMPOOL_LAST_OFFICER): an officer cannot \
                                     delete, lock or demote itself, nor the last officer that \
                                     can log in; make another officer first"
            .to_string(),
        CKR_PIN_LEN_RANGE => "the password must be 4 to 255 bytes (CKR_PIN_LEN_RANGE)".into(),
        CKR_HSMPOOL_USER_OWNS_KEYS => format!(
            "{name} still owns token keys (CKR_HSMPOOL_USER_OWNS_KEYS), listed below; destroy \
             them or have them re-made by another user first, or pass --force (they then \
             become unusable)"
        ),
        CKR_ARGUMENTS_BAD => {
            format!("{name:?} cannot be a user name (1 to 64 bytes, no `:`, no control characters)")
        }
        CKR_FUNCTION_NOT_SUPPORTED => format!("{e}"),
        CKR_HSMPOOL_QUORUM_REQUIRED => "this change needs the approval of M distinct officers \
            (CKR_HSMPOOL_QUORUM_REQUIRED): `hsmpool quorum token-gen`, then `quorum sign` by \
            each, then this command with --token and one --approval per officer"
            .to_string(),
        CKR_HSMPOOL_QUORUM_TOO_HIGH => format!(
            "refused (CKR_HSMPOOL_QUORUM_TOO_HIGH): a key shared with {name} has its own quorum, \
             and without {name} it would have fewer users than approvals it needs, so no one \
             could use or manage it again; have its owner lower the quorum or share it with \
             another user first, or pass --force (the key is then lost)"
        ),
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID => "the quorum token is for another change, or was \
            used already (CKR_HSMPOOL_QUORUM_TOKEN_INVALID): make a new one"
            .to_string(),
        CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED => "the quorum token has expired: tokens live ten \
            minutes (CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED): make a new one"
            .to_string(),
        _ => format!(
            "{e} ({})",
            vendor_rv_name(rv).map_or_else(|| format!("CK_RV {rv:#x}"), str::to_string)
        ),
    }
}

/// The configuration the tool works on: one embedded store with the global `--data DIR`, else
/// the module's (HSMPOOL_CONF, else the embedded default).
pub(crate) fn config_for(data: Option<&std::path::Path>) -> Result<Config, String> {
    match data {
        Some(dir) => Config::parse(
            &format!(
                "[[member]]\nkind = \"embedded\"\ndata_dir = {:?}\n",
                dir.to_str().ok_or("--data: the path is not UTF-8")?
            ),
            "--data",
        ),
        None => Config::resolve(None),
    }
    .map_err(|e| e.to_string())
}

/// The engine over the configured cluster, logged in as a crypto officer with
/// `HSMPOOL_SO_PIN`.
pub(crate) fn open_cluster(
    data: Option<PathBuf>,
    pin: &[u8],
    user_type: CK_USER_TYPE,
    level: bool,
) -> Result<(Engine, hsmpool_engine::types::SessionHandle), String> {
    let cfg = config_for(data.as_deref())?;
    let engine = Engine::new(cfg).map_err(|e| format!("opening the cluster: {e}"))?;
    engine.set_level_at_login(level);
    let s = engine
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .map_err(|e| format!("opening a session: {e}"))?;
    let (who, var) = if user_type == CKU_SO {
        ("crypto officer", "HSMPOOL_SO_PIN")
    } else {
        ("crypto user", "HSMPOOL_PIN")
    };
    engine
        .login(s, user_type, pin, None)
        .map_err(|e| match e.ck_rv() {
            CKR_PIN_INCORRECT => {
                format!("{who} login: the PIN in {var} is wrong (CKR_PIN_INCORRECT)")
            }
            CKR_PIN_LOCKED => format!(
                "{who} login: locked (CKR_PIN_LOCKED); an officer unlocks it with `hsmpool \
                 user unlock`"
            ),
            _ => format!("{who} login: {e}"),
        })?;
    Ok((engine, s))
}

/// The arguments of command `prog` (`hsmpool user`), or the exit status after clap printed
/// the help (0) or the usage error (2).
pub(crate) fn parsed<T: Parser>(prog: &str, args: &[String]) -> Result<T, ExitCode> {
    T::try_parse_from(std::iter::once(prog.to_string()).chain(args.iter().cloned())).map_err(|e| {
        let code = e.exit_code();
        let _ = e.print();
        ExitCode::from(u8::try_from(code).unwrap_or(2))
    })
}

/// Lower-case hexadecimal of `b` (keys, tokens, signatures, digests on the command line).
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of hexadecimal `s` (surrounding white space ignored).
pub(crate) fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not hexadecimal"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// Exit status 1, after the message.
pub(crate) fn failed(msg: &str) -> ExitCode {
    eprintln!("hsmpool: {msg}");
    ExitCode::from(1)
}

pub(crate) fn class_name(class: CK_OBJECT_CLASS) -> &'static str {
    match class {
        CKO_SECRET_KEY => "secret key",
        CKO_PRIVATE_KEY => "private key",
        CKO_PUBLIC_KEY => "public key",
        CKO_CERTIFICATE => "certificate",
        CKO_DATA => "data",
        _ => "object",
    }
}

/// One line for a key: its cluster-wide id, class, label and CKA_ID.
pub(crate) fn describe(k: &OwnedObject) -> String {
    let mut s = format!("uid:{:016x} {}", k.id, class_name(k.class));
    if !k.label.is_empty() {
        s.push_str(&format!(" label {:?}", String::from_utf8_lossy(&k.label)));
    }
    if !k.ck_id.is_empty() {
        s.push_str(&format!(" id:{}", hex(&k.ck_id)));
    }
    s
}

/// A crypto user's engine (HSMPOOL_PIN) and the one token key `spec` names among theirs: the
/// start of every command on one of your keys. The outer error is a missing PIN (a usage
/// error); the inner one the exit status after the message of a failed login or find.
#[allow(clippy::type_complexity)]
pub(crate) fn user_and_key(
    data: Option<PathBuf>,
    spec: &str,
) -> Result<Result<(Engine, SessionHandle, ObjectHandle), ExitCode>, String> {
    let pin = secret("HSMPOOL_PIN")?;
    let (engine, s) = match open_cluster(data, &pin, CKU_USER, true) {
        Ok(x) => x,
        Err(e) => return Ok(Err(failed(&e))),
    };
    Ok(match one_key(&engine, s, spec) {
        Ok(o) => Ok((engine, s, o)),
        Err(e) => Err(failed(&e)),
    })
}

/// The one token key `spec` names among those the logged-in user sees.
pub(crate) fn one_key(
    engine: &Engine,
    s: hsmpool_engine::types::SessionHandle,
    spec: &str,
) -> Result<ObjectHandle, String> {
    let mut template = vec![Attr::bool(CKA_TOKEN, true)];
    if let Some(h) = spec.strip_prefix("uid:") {
        template.push(Attr::bytes(
            CKA_UNIQUE_ID,
            h.to_ascii_lowercase().as_bytes(),
        ));
    } else if let Some(h) = spec.strip_prefix("id:") {
        template.push(Attr::bytes(CKA_ID, &unhex(h)?));
    } else {
        template.push(Attr::bytes(CKA_LABEL, spec.as_bytes()));
    }
    engine
        .find_objects_init(s, template)
        .map_err(|e| e.to_string())?;
    let found = engine.find_objects(s, 16).map_err(|e| e.to_string());
    let _ = engine.find_objects_final(s);
    // A public key and its private key may share a label: the one of a class that can be
    // shared and is the user's own (a private or secret key) is meant.
    let found: Vec<ObjectHandle> = found?
        .into_iter()
        .filter(|o| {
            matches!(
                engine.get_attribute_value(s, *o, &[CKA_CLASS]).as_deref(),
                Ok([AttrAnswer::Value(v)]) if v.as_slice() != CKO_PUBLIC_KEY.to_ne_bytes()
            )
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no token key of yours matches {spec:?} (a label, id:HEX or uid:HEX)"
        )),
        _ => Err(format!(
            "{} keys match {spec:?}; name one by uid:HEX (`hsmpool key list` shows them)",
            found.len()
        )),
    }
}

/// What went wrong with a key's quorum, and what to do.
pub(crate) fn explain_key(e: &hsmpool_engine::Error, key: &str) -> String {
    match e.ck_rv() {
        CKR_HSMPOOL_QUORUM_REQUIRED => format!(
            "{key} needs the approval of M of its users first (CKR_HSMPOOL_QUORUM_REQUIRED): \
             `hsmpool quorum token-gen key use|manage {key}`, `quorum sign` by each, then \
             `hsmpool key approve {key} --token ... --approval ...`"
        ),
        CKR_HSMPOOL_QUORUM_TOO_HIGH => format!(
            "refused (CKR_HSMPOOL_QUORUM_TOO_HIGH): {key}'s quorum cannot exceed its users \
             (its owner and those it is shared with) that registered an approval key, and an \
             unshare cannot leave fewer of them than it; share it first, or lower the quorum"
        ),
        CKR_ACTION_PROHIBITED => "only the key's owner may change its sharing or quorum, and \
                                  only a user of the key may ask to use it \
                                  (CKR_ACTION_PROHIBITED)"
            .to_string(),
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID => "the token is for another key, service or user, or \
            was presented already (CKR_HSMPOOL_QUORUM_TOKEN_INVALID): make a new one"
            .to_string(),
        _ => explain(e, ""),
    }
}
