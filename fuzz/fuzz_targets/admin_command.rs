//! Admin console commands are read from any console user: parsing must return a command or
//! an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(cmd) = pgsluice::admin::command::parse(&text) {
        let _ = cmd.read_only();
    }
});
