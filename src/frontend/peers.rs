//! Cancel requests between instances behind one address (docs/scaling.md). Each instance's
//! cancel keys carry its `peer_id` in the secret's first byte; a CancelRequest for another
//! instance's key is forwarded to that peer, signed with the shared `peer_secret` (the key's
//! four bytes followed by an HMAC-SHA256, in the longer secret protocol 3.2 allows). A peer
//! carries out a signed request itself and never forwards it again, so a misconfigured
//! `[[peers]]` cannot loop, and nobody without the secret can use the peer path.

use crate::app::App;
use bytes::{BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIGNED: usize = 4 + 32;

fn mac(secret: &str, pid: i32, key: &[u8]) -> Hmac<sha2::Sha256> {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(b"pgsluice cancel");
    m.update(&pid.to_be_bytes());
    m.update(key);
    m
}

/// The secret of a new cancel key: random, with `peer` in its first byte when there are peers.
pub fn key_secret(peer: u8) -> i32 {
    let r = rand::random::<i32>();
    if peer == 0 {
        r
    } else {
        (r & 0x00ff_ffff) | (i32::from(peer) << 24)
    }
}

/// A CancelRequest: carried out here, forwarded to the peer whose id its key carries, or (a
/// peer's, signed) carried out here once the signature checks. Unknown keys and bad
/// signatures are ignored, as PostgreSQL ignores unknown keys.
pub async fn cancel(app: &App, pid: i32, secret: &[u8]) -> bool {
    let config = app.config.load();
    let g = &config.general;
    let shared = g.peer_secret.as_deref().unwrap_or("");
    match secret.len() {
        4 if g.peer_id != 0 && secret[0] != g.peer_id => {
            // Keys made before peer_id was set (or changed by a RELOAD) are still ours.
            if app.cancels.cancel(pid, secret).await {
                return true;
            }
            let owner = secret[0];
            let Some(peer) = config
                .peers
                .iter()
                .map(|p| p.get_ref())
                .find(|p| p.id == owner)
            else {
                return false;
            };
            let mut signed = secret.to_vec();
            signed.extend_from_slice(&mac(shared, pid, secret).finalize().into_bytes());
            let (host, port) = (peer.host.to_string(), peer.port);
            match tokio::time::timeout(Duration::from_secs(5), forward(&host, port, pid, &signed))
                .await
            {
                Ok(Ok(())) => {
                    tracing::debug!(peer = owner, pid, "cancel request forwarded to its peer");
                    true
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = owner, %host, port, error = %e, "cannot forward a cancel request to its peer");
                    false
                }
                Err(_) => {
                    tracing::warn!(peer = owner, %host, port, "forwarding a cancel request timed out");
                    false
                }
            }
        }
        SIGNED if g.peer_id != 0 && !shared.is_empty() => {
            let (key, sig) = secret.split_at(4);
            if mac(shared, pid, key).verify_slice(sig).is_err() {
                tracing::warn!(
                    pid,
                    "a forwarded cancel request with a bad signature: ignored"
                );
                return false;
            }
            app.cancels.cancel(pid, key).await
        }
        _ => app.cancels.cancel(pid, secret).await,
    }
}

/// Sends the signed CancelRequest and waits for the peer to close, as a server does.
async fn forward(host: &str, port: u16, pid: i32, secret: &[u8]) -> std::io::Result<()> {
    let mut s = tokio::net::TcpStream::connect((host, port)).await?;
    let mut out = BytesMut::with_capacity(12 + secret.len());
    out.put_i32((12 + secret.len()) as i32);
    out.put_i32(crate::proto::startup::CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_slice(secret);
    s.write_all(&out).await?;
    let mut sink = [0u8; 16];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_peer_and_signatures_bind_pid_and_key() {
        for _ in 0..100 {
            assert_eq!(key_secret(7).to_be_bytes()[0], 7);
        }
        let m = mac("a shared secret!", 42, &[7, 1, 2, 3])
            .finalize()
            .into_bytes();
        assert!(
            mac("a shared secret!", 42, &[7, 1, 2, 3])
                .verify_slice(&m)
                .is_ok()
        );
        assert!(
            mac("a shared secret!", 43, &[7, 1, 2, 3])
                .verify_slice(&m)
                .is_err()
        );
        assert!(
            mac("another secret!!", 42, &[7, 1, 2, 3])
                .verify_slice(&m)
                .is_err()
        );
    }
}
