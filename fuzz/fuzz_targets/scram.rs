//! SCRAM messages from clients (client-first, client-final, inside SASLInitialResponse and
//! SASLResponse) and from servers (server-first, server-final, for SCRAM passthrough) must
//! be refused or accepted, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::auth::scram::{Exchange, KeyClient, Verifier};
use pgsluice::proto::views;

fuzz_target!(|data: &[u8]| {
    let v = Verifier::from_password("pw", b"fuzz-salt-000000", 1);
    let (first, rest) = data.split_at(data.len() / 2);
    let _ = views::sasl_initial_response(data);
    let _ = views::password(data);
    if let Ok(ex) = Exchange::start(v.clone(), first, b"server-nonce-fuzz!!!!!!!") {
        let _ = ex.server_first();
        let _ = ex.finish(rest);
    }
    let keys = KeyClient {
        client_key: [7; 32],
        verifier: v,
    };
    let (mut kx, _) = keys.start(b"client-nonce");
    let _ = kx.respond(first);
    let _ = kx.verify(rest);
});
