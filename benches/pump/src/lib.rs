//! What both pumps share: their command line.

use std::net::SocketAddr;

/// `pump LISTEN UPSTREAM`, both `host:port`.
pub fn addresses() -> (SocketAddr, SocketAddr) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize| -> SocketAddr {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: pump LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT");
            std::process::exit(2)
        })
    };
    (parse(0), parse(1))
}

/// Read buffer per direction (pgsluice reads 16 KiB at a time; a select's messages are far
/// smaller than either).
pub const BUFFER: usize = 8192;

/// SIGINT back to its default: a script starts the pumps in the background, where bash
/// ignores it, and the benches stop them with it (as pgsluice, which handles it).
pub fn stop_on_sigint() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}
