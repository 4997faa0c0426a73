//! md5 password authentication (PostgreSQL protocol 53.3, AuthenticationMD5Password):
//! the client sends `md5` + hex(md5(hex(md5(password || user)) || salt)).

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// md5(password || user), the form PostgreSQL stores.
pub fn stored_hash(password: &str, user: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    h.finalize().into()
}

/// What a correct client answers for `stored` and `salt`.
pub fn expected_response(stored: &[u8; 16], salt: [u8; 4]) -> String {
    let answer = expected(stored, salt);
    // ASCII by construction: "md5" and hex digits.
    String::from_utf8_lossy(&answer).into_owned()
}

/// `md5` + hex(md5(hex(stored) || salt)), built on the stack: a login checks one per md5
/// client, and hex::encode's String is built a char at a time.
fn expected(stored: &[u8; 16], salt: [u8; 4]) -> [u8; 35] {
    let mut hex_stored = [0u8; 32];
    // Both buffers are exactly twice their input's length, so encoding cannot fail.
    let _ = hex::encode_to_slice(stored, &mut hex_stored);
    let mut h = Md5::new();
    h.update(hex_stored);
    h.update(salt);
    let digest: [u8; 16] = h.finalize().into();
    let mut answer = [0u8; 35];
    answer[..3].copy_from_slice(b"md5");
    let _ = hex::encode_to_slice(digest, &mut answer[3..]);
    answer
}

/// Checks a PasswordMessage's text in constant time.
pub fn verify(stored: &[u8; 16], salt: [u8; 4], response: &[u8]) -> bool {
    expected(stored, salt)[..].ct_eq(response).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_protocol() {
        // postgres-protocol implements the client side; both must agree.
        let salt = [1, 2, 3, 4];
        let client = postgres_protocol::authentication::md5_hash(b"alice", b"pw", salt);
        let stored = stored_hash("pw", "alice");
        assert!(verify(&stored, salt, client.as_bytes()));
        assert!(!verify(&stored, [4, 3, 2, 1], client.as_bytes()));
        assert_eq!(expected_response(&stored, salt), client);
        assert!(
            !verify(&stored, salt, &client.as_bytes()[..34]),
            "a prefix is not enough"
        );
        assert_eq!(
            format!("md5{}", hex::encode(stored)),
            postgres_protocol::password::md5(b"pw", "alice")
        );
    }
}
