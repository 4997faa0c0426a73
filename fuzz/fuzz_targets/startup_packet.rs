//! The startup packet parser and `options` splitting must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pgsluice::proto::startup::parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = pgsluice::proto::startup::split_options(s);
    }
});
