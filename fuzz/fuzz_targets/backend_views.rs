//! Every read-only message view must return None on malformed bodies, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::proto::views;

fuzz_target!(|data: &[u8]| {
    let _ = views::parameter_status(data);
    let _ = views::backend_key_data(data);
    let _ = views::error_fields(data);
    let _ = views::auth_request(data);
    let _ = views::sasl_initial_response(data);
    let _ = views::password(data);
    let _ = views::row_description(data);
    let _ = views::data_row(data);
    let _ = views::command_tag(data);
});
