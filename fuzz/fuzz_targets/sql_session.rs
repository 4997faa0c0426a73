//! The statement scanners transaction mode runs on client SQL (SET/RESET/set_config, LISTEN,
//! DEALLOCATE) must never panic on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::sql::session;

fuzz_target!(|data: &[u8]| {
    let _ = session::may_touch(data);
    let text = String::from_utf8_lossy(data);
    let _ = session::scan(&text);
    let _ = session::listen_statement(&text);
    let _ = session::deallocate_name(&text);
});
