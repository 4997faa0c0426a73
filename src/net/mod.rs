//! Sockets: listeners for TCP (IPv4, IPv6) and unix sockets, the stream type both sides use
//! (plaintext or TLS), and TLS configuration.

pub mod isolate;
pub mod listener;
pub mod stream;
pub mod tls;

pub use stream::{Addr, Stream};
