//! Several instances behind one address (docs/scaling.md): `[[peers]]` says where each
//! instance listens, so a CancelRequest that lands on the wrong one is forwarded to the one
//! whose id its key carries.

use super::Text;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The instance's `[general] peer_id`, 1 to 255.
    pub id: u8,
    pub host: Text,
    /// One of its listeners (any mode: cancel requests are served by every listener).
    pub port: u16,
}

/// The peers' rules: ids unique and not 0, and a shared secret to sign forwarded cancels.
pub(super) fn validate(
    config: &super::Config,
) -> Result<(), (std::ops::Range<usize>, &'static str, String)> {
    let g = &config.general;
    let mut seen = std::collections::HashSet::new();
    for p in &config.peers {
        let peer = p.get_ref();
        if peer.id == 0 {
            return Err((p.span(), "id", "peer ids go from 1 to 255".into()));
        }
        if !seen.insert(peer.id) {
            return Err((p.span(), "id", format!("peer {} is listed twice", peer.id)));
        }
    }
    if !config.peers.is_empty() {
        if g.peer_id == 0 {
            return Err((
                0..0,
                "general.peer_id",
                "[[peers]] needs this instance's own peer_id (1 to 255)".into(),
            ));
        }
        if g.peer_secret.as_ref().is_none_or(|s| s.len() < 16) {
            return Err((
                0..0,
                "general.peer_secret",
                "[[peers]] needs a peer_secret of at least 16 characters, the same on every peer"
                    .into(),
            ));
        }
    }
    if g.instances == 0 {
        return Err((0..0, "general.instances", "must be at least 1".into()));
    }
    Ok(())
}
