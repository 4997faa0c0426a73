//! What one server connection has prepared: the proxy's statement names on it, least
//! recently used first out, when each was parsed, and those that must be closed before they
//! are prepared again. Kept with the connection (it outlives every client), filled in by the
//! relay.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Orders Parses across the process: a client's Parse and every server's copy of a
/// statement get a reading, so that "this copy was parsed before that client's Parse" is a
/// comparison. (A copy parsed earlier may predate a schema change the client's Parse saw.)
static PARSE_CLOCK: AtomicU64 = AtomicU64::new(1);

/// A fresh reading of the parse clock: later calls return larger values.
pub fn parse_clock() -> u64 {
    PARSE_CLOCK.fetch_add(1, Ordering::Relaxed)
}

/// What one server connection has prepared, least recently used first out.
#[derive(Default, Debug)]
pub struct ServerStatements {
    /// foldhash: looked up per prepared transaction; bounded by max_prepared_statements.
    used: HashMap<Arc<str>, Kept, foldhash::fast::RandomState>,
    tick: u64,
    /// Statements that must be closed before they are prepared again: PostgreSQL refused to
    /// reuse their plan, or the copy is older than a client's Parse of the same text.
    stale: HashSet<Arc<str>>,
}

#[derive(Debug, Clone)]
struct Kept {
    last_used: u64,
    parsed: u64,
}

impl ServerStatements {
    /// True if the server has a copy of `name` parsed no earlier than `since` (the client's
    /// own Parse): PostgreSQL fixes a statement's result type when it parses it, so an older
    /// copy may answer with a plan from before a schema change the client's Parse saw
    /// ("cached plan must not change result type" where a direct connection plans afresh).
    /// Such a copy is marked stale, to be closed and parsed again. Marks the copy used.
    pub fn touch(&mut self, name: &Arc<str>, since: u64) -> bool {
        self.tick += 1;
        match self.used.get_mut(name) {
            Some(c) if c.parsed >= since => {
                c.last_used = self.tick;
                true
            }
            Some(_) => {
                self.mark_stale(name);
                false
            }
            None => false,
        }
    }

    /// The server was sent a Parse of `name` now.
    pub fn add(&mut self, name: Arc<str>) {
        self.tick += 1;
        let copy = Kept {
            last_used: self.tick,
            parsed: parse_clock(),
        };
        self.used.insert(name, copy);
    }

    pub fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// With `capacity` statements already there, the one to close first: a stale one (still
    /// on the server, so it counts), else the least recently used. Stale ones that are never
    /// used again would otherwise pile up on the server past `capacity` (a client can make
    /// the server skip the proxy's Closes with errors, over and over).
    pub fn evict_for_room(&mut self, capacity: usize) -> Option<Arc<str>> {
        if self.used.len() + self.stale.len() < capacity.max(1) {
            return None;
        }
        if let Some(name) = self.stale.iter().next().cloned() {
            self.stale.remove(&name);
            return Some(name);
        }
        let victim = self
            .used
            .iter()
            .min_by_key(|(_, c)| c.last_used)
            .map(|(k, _)| k.clone())?;
        self.used.remove(&victim);
        Some(victim)
    }

    pub fn mark_stale(&mut self, name: &Arc<str>) {
        if self.used.remove(name).is_some() {
            self.stale.insert(name.clone());
        }
    }

    /// The server skipped the proxy's Close of `name` (an error earlier in its pipeline): it
    /// still has a copy, which is closed before the next Parse of that name.
    pub fn close_skipped(&mut self, name: &Arc<str>) {
        self.used.remove(name);
        self.stale.insert(name.clone());
    }

    /// True once for a stale statement, which must be closed before it is prepared again.
    pub fn take_stale(&mut self, name: &str) -> bool {
        self.stale.remove(name)
    }

    /// After DISCARD ALL or DEALLOCATE ALL the server has nothing.
    pub fn clear(&mut self) {
        self.used.clear();
        self.stale.clear();
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recent() {
        let mut s = ServerStatements::default();
        let names: Vec<Arc<str>> = (0..3).map(|i| Arc::from(format!("s{i}"))).collect();
        for n in &names {
            s.add(n.clone());
        }
        assert!(s.touch(&names[0], 0));
        assert_eq!(s.evict_for_room(3).as_deref(), Some("s1"));
        assert_eq!(s.evict_for_room(3), None);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn stale_statements_count_towards_the_capacity_and_are_closed_first() {
        let mut s = ServerStatements::default();
        let names: Vec<Arc<str>> = (0..3).map(|i| Arc::from(format!("s{i}"))).collect();
        for n in &names {
            s.add(n.clone());
        }
        // Closes the server skipped: the statements are still there, no longer in use.
        s.close_skipped(&names[0]);
        s.close_skipped(&names[1]);
        assert_eq!(s.evict_for_room(4), None, "3 on the server, room for 4");
        let first = s.evict_for_room(3).expect("at capacity");
        assert!(
            names[..2].contains(&first),
            "a stale one goes first: {first}"
        );
        let second = s
            .evict_for_room(2)
            .expect("one stale and one used: at capacity 2");
        assert!(second != first && names[..2].contains(&second));
        assert_eq!(s.evict_for_room(2), None, "only s2 is left");
        assert_eq!(
            s.evict_for_room(1).as_deref(),
            Some("s2"),
            "then the used one"
        );
    }

    #[test]
    fn a_copy_older_than_the_clients_parse_is_closed_first() {
        let mut s = ServerStatements::default();
        let name: Arc<str> = Arc::from("s");
        s.add(name.clone());
        let client_parse = parse_clock();
        assert!(
            !s.touch(&name, client_parse),
            "parsed before the client's Parse"
        );
        assert!(s.take_stale(&name), "closed before it is parsed again");
        assert!(s.is_empty());
        s.add(name.clone());
        assert!(s.touch(&name, client_parse), "parsed after it");
    }
}
