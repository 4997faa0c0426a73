//! The limits against abuse, before and around authentication: connections per address,
//! connection attempts per second per address, lockout after repeated failed passwords;
//! and after it, each identity's limits (`identities`).
//! (Address lists and the pg_hba.conf-style rules are configuration: `config::addresses`,
//! `config::hba`; `frontend::access` applies them.)

pub mod identities;
pub mod limits;
