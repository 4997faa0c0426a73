//! Delivering a token client's claims to the server its transaction runs on, as bind
//! parameters (never statement text, so pg_stat_activity and statement logs do not show them).
//!
//! *Compat*: `request.jwt.claims`, `request.jwt.claim.sub` and `request.jwt.claim.role`, set
//! for the session, as PostgREST sets them; the hand-over reset (RESET ALL) clears them
//! before another client's transaction. The client can overwrite them itself.
//!
//! *Sealed*: `pgsluice.seal(claims, counter, mac)` (sql/pgsluice.sql), where the mac is an
//! HMAC-SHA-256 over (backend pid, counter, claims) with a key derived from the config. The
//! function checks the mac and that the counter exceeds the backend's last, then records the
//! claims where only it can write; `pgsluice.claims()` reads them. A client cannot forge a mac,
//! replay one on another backend (the pid differs) or again on its own (the counter).

use super::Identity;
use crate::config::{ClaimsMode, Config};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, Ordering};

/// Its row is three booleans, not the values: claims of any size fit the relay's reading of
/// the proxy's own replies.
pub const COMPAT_SQL: &str = "SELECT pg_catalog.set_config('request.jwt.claims', $1, false) IS NULL, pg_catalog.set_config('request.jwt.claim.sub', $2, false) IS NULL, pg_catalog.set_config('request.jwt.claim.role', $3, false) IS NULL";
pub const SEAL_SQL: &str = "SELECT pgsluice.seal($1, $2::bigint, $3)";
/// What the seal records for a client without claims.
const NO_CLAIMS: &str = "null";

/// The statement and its three text parameters.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub sql: &'static str,
    pub params: [String; 3],
}

impl Delivery {
    pub fn params(&self) -> [&str; 3] {
        [&self.params[0], &self.params[1], &self.params[2]]
    }
}

/// The key sealed claims are signed with: HMAC-SHA-256 of a fixed label under
/// `claims_secret` (or the JWT secret), so `install-sql` derives the same one from the file.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl SealKey {
    pub fn from_config(config: &Config) -> Option<SealKey> {
        let jwt = config.jwt.as_ref()?;
        let secret = jwt.claims_secret.as_ref().or(jwt.secret.as_ref())?;
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).ok()?;
        mac.update(b"pgsluice sealed claims v1");
        Some(SealKey(mac.finalize().into_bytes().into()))
    }

    /// HMAC's inner and outer padded keys, which sql/pgsluice.sql stores to check macs
    /// with two sha256() calls.
    pub fn pads(&self) -> ([u8; 64], [u8; 64]) {
        let mut inner = [0x36u8; 64];
        let mut outer = [0x5cu8; 64];
        for (i, b) in self.0.iter().enumerate() {
            inner[i] ^= b;
            outer[i] ^= b;
        }
        (inner, outer)
    }

    /// The mac over what a seal binds together.
    pub fn mac(&self, pid: i32, counter: i64, claims: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{pid}:{counter}:{claims}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// A counter that only grows, across restarts too (it starts from the clock in microseconds),
/// so a seal's counter always exceeds any an earlier process left on a backend.
pub fn next_counter() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = i64::try_from(crate::stats::unix_micros()).unwrap_or(i64::MAX);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev.saturating_add(1));
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// A token client's claims.
pub struct Bearer {
    pub identity: std::sync::Arc<Identity>,
    /// Compat mode's statement, the same for every server: built once.
    compat: Delivery,
}

impl Bearer {
    pub fn new(identity: std::sync::Arc<Identity>) -> Bearer {
        let compat = compat(&identity);
        Bearer { identity, compat }
    }
}

/// What a server has of claims: whose, and whether a seal sits on it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Held {
    /// The client whose claims are set (0: none).
    pub client: u64,
    /// pgsluice.seal() recorded claims (or their absence) on this backend.
    pub sealed: bool,
    /// Delivery has been decided once: a fresh backend of a token pool may reuse the pid of
    /// one that died sealed, so in sealed mode it counts as sealed until told otherwise.
    pub known: bool,
}

impl Held {
    /// Whether a client without claims can use the server with nothing sent first.
    pub fn clear(&self) -> bool {
        self.known && !self.sealed
    }
}

/// What the configuration says now (a RELOAD may change the mode while clients stay).
pub struct Current {
    pub mode: ClaimsMode,
    pub key: Option<SealKey>,
    /// The pool's upstream role is a `[[roles]]` mapping: token clients may use it.
    pub token_pool: bool,
}

impl Current {
    /// `held` is the server's: the seal key is derived only when a seal may be written.
    pub fn of(config: &Config, upstream_role: &str, held: &Held) -> Current {
        let mode = config.claims_mode();
        let sealing = mode == ClaimsMode::Sealed || held.sealed || !held.known;
        Current {
            mode,
            key: sealing.then(|| SealKey::from_config(config)).flatten(),
            token_pool: config
                .roles
                .iter()
                .any(|r| r.get_ref().server_user.as_str() == upstream_role),
        }
    }
}

/// What must run ahead of `client`'s work on a server with `held` and backend `pid`, in
/// order, updating `held` as if it ran (the hand-over reset clears `held.client`: RESET ALL
/// clears the compat settings, while a seal stays until replaced). Another client's seal is
/// replaced by this client's claims, or by none, whatever the mode is now.
pub fn due<'b>(
    bearer: Option<&'b Bearer>,
    now: &Current,
    client: u64,
    held: &mut Held,
    pid: i32,
) -> Result<Vec<Cow<'b, Delivery>>, NoKey> {
    if !held.known {
        held.known = true;
        held.sealed = now.mode == ClaimsMode::Sealed && now.token_pool;
    }
    let mut out = Vec::new();
    let seal_with = |claims: &str| now.key.as_ref().map(|k| seal(k, pid, claims)).ok_or(NoKey);
    // The client's claims are on the server in the form the mode asks for: a RELOAD that
    // changed the mode between two of its transactions needs them again in the other form.
    let delivered = held.client == client && held.sealed == (now.mode == ClaimsMode::Sealed);
    match bearer {
        Some(b) if !delivered => {
            held.client = client;
            if now.mode == ClaimsMode::Sealed {
                out.push(Cow::Owned(seal_with(&b.identity.claims)?));
                held.sealed = true;
            } else {
                if held.sealed {
                    out.push(Cow::Owned(seal_with(NO_CLAIMS)?));
                    held.sealed = false;
                }
                out.push(Cow::Borrowed(&b.compat));
            }
        }
        Some(_) => {}
        None if held.sealed => {
            // Another client's seal must not outlive its transactions: replaced by none.
            out.push(Cow::Owned(seal_with(NO_CLAIMS)?));
            held.sealed = false;
            held.client = 0;
        }
        None => {}
    }
    Ok(out)
}

/// A server holds a seal the configuration no longer has the key to replace.
#[derive(Debug)]
pub struct NoKey;

/// For a server whose seal cannot be replaced: a seal that fails, so the hand-over fails and
/// the server is closed.
pub fn refusing() -> Delivery {
    Delivery {
        sql: SEAL_SQL,
        params: [NO_CLAIMS.into(), "0".into(), String::new()],
    }
}

fn compat(identity: &Identity) -> Delivery {
    Delivery {
        sql: COMPAT_SQL,
        params: [
            identity.claims.to_string(),
            identity.subject.to_string(),
            identity.role.to_string(),
        ],
    }
}

fn seal(key: &SealKey, pid: i32, claims: &str) -> Delivery {
    let counter = next_counter();
    Delivery {
        sql: SEAL_SQL,
        params: [
            claims.to_owned(),
            counter.to_string(),
            key.mac(pid, counter, claims),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Source;
    use std::sync::Arc;

    fn bearer(sub: &str) -> Bearer {
        Bearer::new(Arc::new(Identity {
            name: sub.into(),
            source: Source::Jwt,
            subject: sub.into(),
            issuer: None,
            role: "authenticated".into(),
            priority: None,
            claims: format!("{{\"sub\":\"{sub}\"}}").into(),
            audit_statements: false,
            limits: Default::default(),
        }))
    }

    fn now(mode: ClaimsMode) -> Current {
        Current {
            mode,
            key: Some(SealKey([7; 32])),
            token_pool: true,
        }
    }

    fn sqls(out: &[Cow<'_, Delivery>]) -> Vec<(&'static str, String)> {
        out.iter().map(|d| (d.sql, d.params[0].clone())).collect()
    }

    #[test]
    fn the_same_client_again_needs_nothing() {
        let b = bearer("bob");
        for mode in [ClaimsMode::Sealed, ClaimsMode::Compat] {
            let mut held = Held::default();
            assert_eq!(due(Some(&b), &now(mode), 2, &mut held, 9).unwrap().len(), 1);
            assert!(
                due(Some(&b), &now(mode), 2, &mut held, 9)
                    .unwrap()
                    .is_empty()
            );
        }
    }

    /// A RELOAD from compat to sealed between two transactions of one client on one server
    /// (no hand-over between them): its claims are sealed, else pgsluice.uid() reads none.
    #[test]
    fn a_mode_change_delivers_the_same_clients_claims_again() {
        let b = bearer("bob");
        let claims = r#"{"sub":"bob"}"#.to_string();
        let mut held = Held::default();
        due(Some(&b), &now(ClaimsMode::Compat), 2, &mut held, 9).unwrap();
        let out = due(Some(&b), &now(ClaimsMode::Sealed), 2, &mut held, 9).unwrap();
        assert_eq!(sqls(&out), [(SEAL_SQL, claims.clone())]);
        assert!(held.sealed);
        // And back: the seal is replaced by none, then the compat settings.
        let out = due(Some(&b), &now(ClaimsMode::Compat), 2, &mut held, 9).unwrap();
        assert_eq!(
            sqls(&out),
            [(SEAL_SQL, NO_CLAIMS.to_string()), (COMPAT_SQL, claims)]
        );
        assert!(!held.sealed);
    }

    #[test]
    fn a_client_without_claims_replaces_a_seal_with_none() {
        let b = bearer("bob");
        let mut held = Held::default();
        due(Some(&b), &now(ClaimsMode::Sealed), 2, &mut held, 9).unwrap();
        let out = due(None, &now(ClaimsMode::Sealed), 3, &mut held, 9).unwrap();
        assert_eq!(sqls(&out), [(SEAL_SQL, NO_CLAIMS.to_string())]);
        assert!(held.clear());
    }
}
