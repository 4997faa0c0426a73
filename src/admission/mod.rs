//! Who may connect, before and around authentication: address allow/deny lists (global, per
//! database, per user), the pg_hba.conf-style rules file, and the limits against abuse
//! (connections per address, connection attempts per second per address, lockout after
//! repeated failed passwords).

pub mod addresses;
pub mod limits;
