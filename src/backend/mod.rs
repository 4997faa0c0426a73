//! The server side: opening and logging in to upstream connections, and pooling them.

pub mod activity;
pub mod connect;
#[cfg(test)]
pub mod fake;
pub mod notify;
pub mod params;
pub mod pool;
pub mod pools;
pub mod route;
pub mod server;
pub mod statements;
pub mod upstream_auth;

pub use crate::pool_key::PoolKey;
pub use pool::{CheckoutError, Demand, Pool};
pub use server::ServerConn;
