//! The statement scanners transaction mode runs on client SQL (SET/RESET/set_config, LISTEN,
//! DEALLOCATE) must never panic on any text, and the
//! cheap filter in front of the scanner never hides a text the scanner acts on.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::sql::session;

fuzz_target!(|data: &[u8]| {
    let may = session::may_touch(data);
    let text = String::from_utf8_lossy(data);
    let t = session::scan(&text);
    // The cheap filter must let through every text the scanner acts on.
    assert!(may || !(t.any || t.listen), "{text:?} -> {t:?}");
    let _ = session::listen_statement(&text);
    let _ = session::deallocate_name(&text);
});
