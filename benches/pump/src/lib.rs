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

/// Read buffer per direction, as pgsluice's.
pub const BUFFER: usize = 8192;
