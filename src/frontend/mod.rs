//! The client side: handshake, login, cancel routing, and each client's session.

pub mod access;
pub mod cancel;
pub mod handshake;
pub mod login;
pub mod passthrough;
pub mod peers;
pub mod session;
pub mod token_login;
