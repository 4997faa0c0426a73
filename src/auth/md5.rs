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
    let mut h = Md5::new();
    h.update(hex::encode(stored).as_bytes());
    h.update(salt);
    let digest: [u8; 16] = h.finalize().into();
    format!("md5{}", hex::encode(digest))
}

/// Checks a PasswordMessage's text in constant time.
pub fn verify(stored: &[u8; 16], salt: [u8; 4], response: &[u8]) -> bool {
    let expected = expected_response(stored, salt);
    expected.as_bytes().ct_eq(response).into()
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
        assert_eq!(
            format!("md5{}", hex::encode(stored)),
            postgres_protocol::password::md5(b"pw", "alice")
        );
    }
}
