//! Keys derived from upstream passwords, kept per (password, salt, iterations). A role's
//! SCRAM salt and iteration count stay the same until its password changes, so without this
//! every server connection a pool opens would run the same PBKDF2 (4,096 HMAC rounds by
//! default): the cost PostgreSQL's clients cannot avoid, but a proxy that opens connections
//! for them can.

use super::scram::KeyClient;
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use tokio::sync::OnceCell;

/// Bounded: the server chooses the salt, and a hostile one could send a new one each login.
const MAX_ENTRIES: usize = 256;

/// The most PBKDF2 rounds a server may ask for (PostgreSQL's default is 4,096; OWASP's advice
/// for PBKDF2-SHA256 is 600,000): about 1.3 s of one core. A server asking for more is
/// refused rather than let burn a blocking thread for minutes.
pub const MAX_ITERATIONS: u32 = 10_000_000;

type Cells = HashMap<[u8; 32], Arc<OnceCell<KeyClient>>>;

#[derive(Default)]
pub struct SaltedKeys {
    /// Keyed by a digest of (password, salt, iterations): no second copy of the password.
    map: Mutex<Cells>,
    /// PBKDF2 derivations run (`pgsluice_upstream_scram_derivations_total`).
    pub derivations: Counter,
}

static GLOBAL: LazyLock<SaltedKeys> = LazyLock::new(SaltedKeys::default);

impl SaltedKeys {
    /// The process's cache, shared by every pool's upstream logins.
    pub fn global() -> &'static SaltedKeys {
        &GLOBAL
    }

    /// The keys for this password under the server's salt and iteration count, derived on a
    /// blocking thread the first time; logins that ask meanwhile (a pool filling up) wait
    /// for that one derivation instead of running their own. None when the iteration count
    /// is past [`MAX_ITERATIONS`] or the derivation could not run.
    pub async fn keys(&self, password: &str, salt: &[u8], iterations: u32) -> Option<KeyClient> {
        if iterations > MAX_ITERATIONS {
            return None;
        }
        let cell = self.cell(digest(password, salt, iterations));
        if let Some(k) = cell.get() {
            return Some(k.clone());
        }
        let derive = || async {
            self.derivations.inc();
            let (pw, s, fill) = (password.to_owned(), salt.to_vec(), cell.clone());
            // The blocking task fills the cell itself: a login that gives up waiting (its
            // connect timeout) does not throw the work away.
            tokio::task::spawn_blocking(move || {
                let k = KeyClient::from_password(&pw, &s, iterations);
                let _ = fill.set(k.clone());
                k
            })
            .await
            .map_err(|_| ())
        };
        cell.get_or_try_init(derive).await.ok().cloned()
    }

    fn cell(&self, id: [u8; 32]) -> Arc<OnceCell<KeyClient>> {
        let mut map = self.lock();
        if let Some(c) = map.get(&id) {
            return c.clone();
        }
        if map.len() >= MAX_ENTRIES {
            // One out, not all: a server sending a new salt each login costs the others
            // nothing.
            if let Some(old) = map.keys().next().copied() {
                map.remove(&old);
            }
        }
        map.entry(id).or_default().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Cells> {
        // The map holds no invariant a panicking holder could break.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn digest(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((password.len() as u64).to_le_bytes());
    h.update(password.as_bytes());
    h.update(iterations.to_le_bytes());
    h.update(salt);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn derives_once_per_password_salt_and_iterations() {
        let cache = SaltedKeys::default();
        let a = cache.keys("pencil", b"salt-one", 64).await.unwrap();
        assert_eq!(a, KeyClient::from_password("pencil", b"salt-one", 64));
        assert_eq!(cache.keys("pencil", b"salt-one", 64).await, Some(a.clone()));
        assert_eq!(
            cache.derivations.get(),
            1,
            "the second login reuses the keys"
        );
        // Any part changed is another derivation, with other keys.
        let b = cache.keys("pencil", b"salt-two", 64).await.unwrap();
        let c = cache.keys("pencil", b"salt-one", 65).await.unwrap();
        let d = cache.keys("pencils", b"salt-one", 64).await.unwrap();
        assert_eq!(cache.derivations.get(), 4);
        for other in [&b, &c, &d] {
            assert_ne!(other.client_key, a.client_key);
        }
    }

    #[tokio::test]
    async fn stays_bounded_under_a_new_salt_each_login() {
        let cache = SaltedKeys::default();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            cache.keys("pw", &i.to_le_bytes(), 1).await;
        }
        assert!(cache.lock().len() <= MAX_ENTRIES);
        assert_eq!(cache.derivations.get(), MAX_ENTRIES as u64 + 10);
        // One entry made room for each new one: the rest are still there.
        assert_eq!(cache.lock().len(), MAX_ENTRIES);
        let before = cache.derivations.get();
        cache
            .keys("pw", &(MAX_ENTRIES as u32 + 9).to_le_bytes(), 1)
            .await;
        assert_eq!(cache.derivations.get(), before);
    }

    #[tokio::test]
    async fn refuses_an_iteration_count_past_the_bound() {
        let cache = SaltedKeys::default();
        assert_eq!(cache.keys("pw", b"salt", MAX_ITERATIONS + 1).await, None);
        assert_eq!(cache.derivations.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logins_at_once_share_one_derivation() {
        let cache = Arc::new(SaltedKeys::default());
        let logins: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.keys("pencil", b"salt", 20_000).await.unwrap() })
            })
            .collect();
        let mut keys = Vec::new();
        for l in logins {
            keys.push(l.await.expect("login task"));
        }
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(cache.derivations.get(), 1);
    }
}
