//! What one server connection has prepared: the proxy's statement names on it, least
//! recently used first out, and those PostgreSQL refused to reuse. Kept with the connection
//! (it outlives every client), filled in by the relay.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What one server connection has prepared, least recently used first out.
#[derive(Default, Debug)]
pub struct ServerStatements {
    used: HashMap<Arc<str>, u64>,
    tick: u64,
    /// Statements whose plan PostgreSQL refused to reuse: closed before they are prepared again.
    stale: HashSet<Arc<str>>,
}

impl ServerStatements {
    /// True if the server has `name`; marks it used.
    pub fn touch(&mut self, name: &Arc<str>) -> bool {
        self.tick += 1;
        match self.used.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    pub fn add(&mut self, name: Arc<str>) {
        self.tick += 1;
        self.used.insert(name, self.tick);
    }

    pub fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// With `capacity` statements already there, the least recently used to close first.
    pub fn evict_for_room(&mut self, capacity: usize) -> Option<Arc<str>> {
        if self.used.len() < capacity.max(1) {
            return None;
        }
        let victim = self
            .used
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(k, _)| k.clone())?;
        self.used.remove(&victim);
        Some(victim)
    }

    pub fn mark_stale(&mut self, name: &Arc<str>) {
        if self.used.remove(name).is_some() {
            self.stale.insert(name.clone());
        }
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
        assert!(s.touch(&names[0]));
        assert_eq!(s.evict_for_room(3).as_deref(), Some("s1"));
        assert_eq!(s.evict_for_room(3), None);
        assert_eq!(s.len(), 2);
    }
}
