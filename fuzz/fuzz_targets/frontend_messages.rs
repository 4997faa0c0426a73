//! The client messages whose bodies the relay reads: statement names in Parse, Bind,
//! Describe and Close (transaction mode renames them), and the login messages
//! (PasswordMessage, SASLInitialResponse). None may panic or read past its body.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::proto::views;
use pgsluice::relay::prepared;

fuzz_target!(|data: &[u8]| {
    if let Some((name, tail)) = prepared::split_name(data) {
        assert!(name.len() + tail.len() < data.len());
    }
    if let Some((portal, name, prefix)) = prepared::bind_names(data) {
        assert!(portal.len() + name.len() + 2 <= prefix && prefix <= data.len());
    }
    let _ = views::password(data);
    let _ = views::sasl_initial_response(data);
});
