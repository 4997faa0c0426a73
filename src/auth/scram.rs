//! The server side of SCRAM-SHA-256 (RFC 5802/7677, as PostgreSQL runs it: protocol 53.3.1,
//! src/backend/libpq/auth-scram.c). Primitives come from RustCrypto; this file is the exchange.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const MECHANISM: &str = "SCRAM-SHA-256";
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// A SCRAM-SHA-256 verifier: what the server needs to check a client, never the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// SASLprep as PostgreSQL applies it: skipped where the password is not valid UTF-8 or is refused.
fn prepare(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

impl Verifier {
    /// Derives a verifier from a plaintext password. PBKDF2 makes this deliberately slow:
    /// call it off the reactor (`spawn_blocking`) and cache the result.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        KeyClient::from_password(password, salt, iterations).verifier
    }

    /// Parses PostgreSQL's text form `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<Verifier> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Verifier {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// A verifier for a user that does not exist: the exchange runs the same steps and
    /// fails at the proof, so timing and messages do not reveal which users exist.
    pub fn decoy(user: &str, instance_secret: &[u8; 32]) -> Verifier {
        let salt = hmac(instance_secret, user.as_bytes());
        Verifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt[..16].to_vec(),
            stored_key: hmac(instance_secret, b"decoy stored key"),
            server_key: hmac(instance_secret, b"decoy server key"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported on this connection")]
    ChannelBinding,
    /// PostgreSQL's words and code (0A000) for a gs2 header with `a=` (auth-scram.c).
    #[error("client uses authorization identity, but it is not supported")]
    AuthorizationIdentity,
    #[error("SCRAM proof does not match")]
    BadProof,
}

/// One server-side exchange, advanced message by message.
pub struct Exchange {
    verifier: Verifier,
    nonce: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
}

impl Exchange {
    /// Handles the client-first-message; returns the server-first-message to send.
    /// `server_nonce` is random bytes chosen by the caller (injectable for tests).
    pub fn start(
        verifier: Verifier,
        client_first: &[u8],
        server_nonce: &[u8],
    ) -> Result<Exchange, ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let cbind = parts
            .next()
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        let authzid = parts
            .next()
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("missing client-first-message-bare"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        if authzid.starts_with("a=") {
            return Err(ScramError::AuthorizationIdentity);
        }
        if !authzid.is_empty() {
            return Err(ScramError::Malformed("bad authzid"));
        }
        let mut client_nonce = None;
        for attr in bare.split(',') {
            if let Some(r) = attr.strip_prefix("r=") {
                client_nonce = Some(r);
            } else if attr.starts_with("m=") {
                return Err(ScramError::Malformed("mandatory extension not supported"));
            }
        }
        let client_nonce = client_nonce
            .filter(|r| !r.is_empty() && r.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("missing or invalid client nonce"))?;
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(Exchange {
            verifier,
            nonce,
            gs2_header: format!("{cbind},{authzid},"),
            client_first_bare: bare.to_owned(),
            server_first,
        })
    }

    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final-message; returns the server-final-message (`v=...`) and the
    /// ClientKey the proof revealed (what SCRAM passthrough logs in upstream with).
    pub fn finish(self, client_final: &[u8]) -> Result<(String, [u8; 32]), ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                binding = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let binding = B64
            .decode(binding.ok_or(ScramError::Malformed("missing channel binding"))?)
            .map_err(|_| ScramError::Malformed("bad channel binding encoding"))?;
        if binding != self.gs2_header.as_bytes() {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        if !bool::from(sha256(&client_key).ct_eq(&self.verifier.stored_key)) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok((format!("v={}", B64.encode(server_signature)), client_key))
    }
}

/// The client side of SCRAM-SHA-256 from keys instead of a password (SCRAM passthrough, as
/// PgBouncer and Supavisor do it): the ClientKey recovered from a client's own exchange and
/// the verifier proves the same identity to the upstream, whose salt and iteration count
/// must be the verifier's.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyClient {
    pub client_key: [u8; 32],
    pub verifier: Verifier,
}

impl std::fmt::Debug for KeyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyClient")
    }
}

/// The client-first-message for this nonce (`n,,n=,r=<nonce>`; PostgreSQL takes the user
/// from the startup packet).
pub fn client_first(nonce: &[u8]) -> String {
    format!("n,,n=,r={}", B64.encode(nonce))
}

/// A server-first-message (`r=<nonce>,s=<salt>,i=<iterations>`), read.
pub struct ServerFirst<'a> {
    pub text: &'a str,
    pub nonce: &'a str,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl<'a> ServerFirst<'a> {
    pub fn parse(message: &'a [u8]) -> Result<ServerFirst<'a>, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(v);
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = Some(v);
            }
        }
        Ok(ServerFirst {
            text,
            nonce: nonce.ok_or(ScramError::Malformed("missing nonce"))?,
            salt: B64
                .decode(salt.ok_or(ScramError::Malformed("missing salt"))?)
                .map_err(|_| ScramError::Malformed("bad salt"))?,
            iterations: iterations
                .and_then(|i| i.parse().ok())
                .filter(|&i| i > 0)
                .ok_or(ScramError::Malformed("bad iteration count"))?,
        })
    }
}

/// One client-side exchange in progress.
pub struct KeyExchange {
    keys: KeyClient,
    client_first_bare: String,
    nonce: String,
    auth_message: Option<String>,
}

impl KeyClient {
    /// The keys a password gives for a salt and iteration count: what a client needs to log
    /// in to a server holding that verifier. PBKDF2, as slow as [`Verifier::from_password`].
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> KeyClient {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&prepare(password), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        KeyClient {
            client_key,
            verifier: Verifier {
                iterations,
                salt: salt.to_vec(),
                stored_key: sha256(&client_key),
                server_key: hmac(&salted, b"Server Key"),
            },
        }
    }

    /// The client-first-message (`n,,n=,r=<nonce>`; PostgreSQL takes the user from the
    /// startup packet).
    pub fn start(&self, nonce: &[u8]) -> (KeyExchange, String) {
        let first = client_first(nonce);
        let bare = first["n,,".len()..].to_owned();
        let nonce = bare["n=,r=".len()..].to_owned();
        (
            KeyExchange {
                keys: self.clone(),
                client_first_bare: bare,
                nonce,
                auth_message: None,
            },
            first,
        )
    }
}

impl KeyExchange {
    /// Answers the server-first-message with the client-final-message.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let ServerFirst {
            text,
            nonce,
            salt,
            iterations,
        } = ServerFirst::parse(server_first)?;
        if !nonce.starts_with(&self.nonce) {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let v = &self.keys.verifier;
        if salt != v.salt || iterations != v.iterations {
            // The password changed upstream since this verifier was read.
            return Err(ScramError::BadProof);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac(&v.stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for (i, p) in proof.iter_mut().enumerate() {
            *p = self.keys.client_key[i] ^ signature[i];
        }
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message (`v=<ServerSignature>`).
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let sig = text
            .strip_prefix("v=")
            .and_then(|s| B64.decode(s).ok())
            .ok_or(ScramError::Malformed("bad server-final-message"))?;
        let auth = self
            .auth_message
            .as_deref()
            .ok_or(ScramError::Malformed("server-final before server-first"))?;
        let want = hmac(&self.keys.verifier.server_key, auth.as_bytes());
        if bool::from(want.ct_eq(&sig[..])) {
            Ok(())
        } else {
            Err(ScramError::BadProof)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs postgres-protocol's client against our server side.
    fn run(verifier: Verifier, client_password: &str) -> Result<(), ScramError> {
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let ex = Exchange::start(verifier, client.message(), b"0123456789abcdef01234567")?;
        client
            .update(ex.server_first().as_bytes())
            .map_err(|_| ScramError::Malformed("client"))?;
        let (server_final, _) = ex.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::Malformed("server signature rejected"))
    }

    #[test]
    fn passthrough_proves_the_same_identity_with_the_recovered_key() {
        // A client logs in to us with its password; we recover its ClientKey ...
        let v = Verifier::from_password("pencil", b"salt-salt-salt-2", 4096);
        let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
        let ex = Exchange::start(v.clone(), client.message(), b"nonce-nonce-nonce-nonce!").unwrap();
        client.update(ex.server_first().as_bytes()).unwrap();
        let (_, client_key) = ex.finish(client.message()).unwrap();
        // ... and log in to another server holding the same verifier with it.
        let keys = KeyClient {
            client_key,
            verifier: v.clone(),
        };
        let (mut kx, first) = keys.start(b"client-nonce-xyz");
        let upstream =
            Exchange::start(v.clone(), first.as_bytes(), b"upstream-nonce-upstream!").unwrap();
        let final_msg = kx.respond(upstream.server_first().as_bytes()).unwrap();
        let (server_final, key_again) = upstream.finish(final_msg.as_bytes()).unwrap();
        assert_eq!(key_again, client_key);
        assert_eq!(kx.verify(server_final.as_bytes()), Ok(()));
        assert!(
            kx.verify(b"v=AAAA").is_err(),
            "a wrong server signature is caught"
        );
        // A verifier with another salt (the password changed upstream) is refused.
        let other = Verifier::from_password("pencil", b"another-salt-123", 4096);
        let up2 =
            Exchange::start(other, keys.start(b"n2").1.as_bytes(), b"upstream-nonce-2").unwrap();
        let (mut kx2, _) = keys.start(b"n2");
        assert_eq!(
            kx2.respond(up2.server_first().as_bytes()),
            Err(ScramError::BadProof)
        );
    }

    #[test]
    fn accepts_right_password_and_refuses_wrong() {
        let v = Verifier::from_password("pencil", b"salt-salt-salt-1", 4096);
        assert_eq!(run(v.clone(), "pencil"), Ok(()));
        assert_eq!(run(v, "pencils"), Err(ScramError::BadProof));
    }

    #[test]
    fn parses_postgres_verifier_text() {
        let text = postgres_protocol::password::scram_sha_256(b"hunter2");
        let v = Verifier::parse(&text).unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(run(v, "hunter2"), Ok(()));
        assert!(Verifier::parse("SCRAM-SHA-256$x:abc$def").is_none());
    }

    #[test]
    fn decoy_fails_like_a_wrong_password() {
        let v = Verifier::decoy("nobody", &[7; 32]);
        assert_eq!(run(v.clone(), "anything"), Err(ScramError::BadProof));
        assert_eq!(
            v,
            Verifier::decoy("nobody", &[7; 32]),
            "stable salt per user"
        );
    }

    #[test]
    fn refuses_malformed_messages() {
        let v = Verifier::from_password("x", b"s", 1);
        assert!(Exchange::start(v.clone(), b"garbage", b"n").is_err());
        assert_eq!(
            Exchange::start(v.clone(), b"p=tls-server-end-point,,n=,r=abc", b"n").err(),
            Some(ScramError::ChannelBinding)
        );
        // PostgreSQL refuses an authorization identity rather than ignoring it.
        assert_eq!(
            Exchange::start(v.clone(), b"n,a=admin,n=,r=abc", b"n").err(),
            Some(ScramError::AuthorizationIdentity)
        );
        let ex = Exchange::start(v, b"n,,n=,r=abc", b"n").unwrap();
        assert!(ex.finish(b"c=biws,r=wrong,p=AAAA").is_err());
    }
}
