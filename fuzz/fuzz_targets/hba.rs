//! The auth_hba_file parser reads an operator's file, and its matcher every connection's
//! names: neither may panic, and a parsed file must match without panicking too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::config::hba::{Hba, Incoming};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(h) = Hba::parse(&text) {
        for addr in [None, Some("127.0.0.1".parse().unwrap()), Some("::1".parse().unwrap())] {
            let _ = h.find(&Incoming {
                addr,
                tls: data.len() % 2 == 0,
                database: "app",
                user: "agent",
            });
        }
    }
});
