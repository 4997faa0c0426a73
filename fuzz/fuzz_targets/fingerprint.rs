//! Query fingerprints are computed over every client's statement text: no panic, the text cut
//! to its bound, and the hash and the normalized text always from the same walk (equal
//! normalized texts never get different fingerprints); a text whose shape equals that of the
//! same text with other digits has its fingerprint.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::sql::fingerprint::{MAX_TEXT, fingerprint, normalize, shape};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let n = normalize(&text);
    assert!(n.len() <= MAX_TEXT + 3);
    let fp = fingerprint(&text);
    assert_ne!(fp, 0);
    if !n.ends_with("...") {
        // Normalizing is idempotent on texts it did not cut: same fingerprint again.
        assert_eq!(normalize(&n), n);
    }
    // The same bytes with every digit turned by one: equal shapes, equal fingerprints.
    let other: Vec<u8> = data
        .iter()
        .map(|&b| if b.is_ascii_digit() { b'0' + (b - b'0' + 1) % 10 } else { b })
        .collect();
    if let Some(s) = shape(data)
        && shape(&other) == Some(s)
    {
        let other = String::from_utf8_lossy(&other);
        assert_eq!(fingerprint(&text), fingerprint(&other));
    }
});
