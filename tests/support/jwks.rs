//! A real HTTP server for JWKS and OIDC discovery, whose keys a test can rotate, and ES256
//! signing keys made in the test.

use base64::Engine;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An ES256 key pair with its kid.
pub struct SigningKey {
    pub kid: String,
    pub pem: String,
    pub jwk: serde_json::Value,
}

impl SigningKey {
    pub fn new(kid: &str) -> SigningKey {
        let kp = rcgen::KeyPair::generate().unwrap();
        let raw = kp.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed P-256 point");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..]),
        });
        SigningKey {
            kid: kid.into(),
            pem: kp.serialize_pem(),
            jwk,
        }
    }

    /// The public key in PEM, as an attacker would use it for an HS256 "signature".
    pub fn public_pem(&self) -> String {
        rcgen::KeyPair::from_pem(&self.pem)
            .unwrap()
            .public_key_pem()
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }
}

/// Serves `/.well-known/openid-configuration` and `/jwks` on 127.0.0.1.
pub struct JwksServer {
    pub base: String,
    keys: Arc<Mutex<Vec<serde_json::Value>>>,
    pub fetches: Arc<Mutex<usize>>,
}

impl JwksServer {
    pub async fn start(keys: Vec<serde_json::Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(Mutex::new(0));
        let (k, f, b) = (keys.clone(), fetches.clone(), base.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (k, f, b) = (k.clone(), f.clone(), b.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req);
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (status, body) = match path.as_str() {
                        "/.well-known/openid-configuration" => (
                            "200 OK",
                            serde_json::json!({ "issuer": b, "jwks_uri": format!("{b}/jwks") })
                                .to_string(),
                        ),
                        "/jwks" => {
                            *f.lock().unwrap() += 1;
                            let keys = k.lock().unwrap().clone();
                            ("200 OK", serde_json::json!({ "keys": keys }).to_string())
                        }
                        _ => ("404 Not Found", String::new()),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                });
            }
        });
        JwksServer {
            base,
            keys,
            fetches,
        }
    }

    /// Replaces the keys served (the issuer rotated).
    pub fn serve(&self, keys: Vec<serde_json::Value>) {
        *self.keys.lock().unwrap() = keys;
    }
}
