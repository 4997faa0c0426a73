//! The PostgreSQL wire protocol (protocol chapter 53): framing, the startup packet, the few
//! messages the proxy reads, and the messages it writes. Depends on nothing else in the crate.

pub mod emit;
pub mod frame;
pub mod startup;
pub mod tag;
pub mod views;

pub use frame::{FrameError, Framer, Header};

/// Longest message PostgreSQL accepts from a client (`PQ_LARGE_MESSAGE_LIMIT`, pqcomm.h).
pub const MAX_MESSAGE_LEN: usize = 0x3fff_ffff;
