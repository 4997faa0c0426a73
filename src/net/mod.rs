//! Sockets: listeners for TCP (IPv4, IPv6) and unix sockets, and the stream type both sides use.

pub mod listener;
pub mod stream;

pub use stream::Stream;
