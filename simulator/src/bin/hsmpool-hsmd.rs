//! `hsmpool-hsmd`: one simulated HSM served over mutual TLS. Everything is in
//! [`hsmpool_sim::daemon`].

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    hsmpool_sim::daemon::main(&args)
}
