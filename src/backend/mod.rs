//! The server side: opening and logging in to upstream connections, and pooling them.

pub mod activity;
pub mod connect;
pub mod notify;
pub mod params;
pub mod pool;
pub mod pools;
pub mod server;
pub mod upstream_auth;

pub use pool::{CheckoutError, Pool, PoolKey};
pub use server::ServerConn;
