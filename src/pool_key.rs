//! The key of a pool, a leaf module: statistics and metrics name pools by it without
//! depending on the pools themselves.

use std::sync::Arc;

/// The pool key: the database clients name, and the upstream role the connections log in as.
/// Agent identities mapped to the same role share a pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: Arc<str>,
    pub role: Arc<str>,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.database, self.role)
    }
}
