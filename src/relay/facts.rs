//! What the relay knows about the attached server beyond its reply queue, as one byte of
//! flags: reset together (by assignment) whenever a server is attached or let go, and small,
//! because every client's relay carries them.

/// One fact about the attached server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fact {
    /// COPY FROM STDIN: CopyInResponse seen, and no CommandComplete or ErrorResponse since.
    CopyRunning = 1,
    /// The client has not sent its CopyDone or CopyFail: its Syncs are ignored by the server.
    CopyClientOpen = 2,
    /// Some client Sync was counted as ignored during this COPY.
    CopySyncsIgnored = 4,
    /// The server may owe replies the proxy cannot count (a failed COPY with Syncs inside
    /// it). Invariant: such a server is never reused; at the transaction's end it is closed.
    Unaccounted = 8,
    /// Transaction mode, with Unaccounted: the client had a simple query in flight behind
    /// the COPY, whose replies cannot be told from the stray ones; the client is closed.
    LostCount = 16,
    /// The server holds session state the proxy cannot vouch for (SQL-level PREPARE or
    /// DEALLOCATE, a failed reset): closed at the transaction's end, never reused.
    Retire = 32,
    /// Transaction mode: the client sent a Parse of the unnamed statement to this server.
    /// Invariant: a client may address the unnamed statement only then; otherwise it would
    /// be the previous client's (its text, its parameters).
    UnnamedParsed = 64,
    /// The hand-over reset did not finish (its witness was missing): the server skipped the
    /// client's messages up to a Sync. Both connections are closed.
    HandoverFailed = 128,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts(u8);

impl Facts {
    pub fn has(self, f: Fact) -> bool {
        self.0 & f as u8 != 0
    }

    pub fn set(&mut self, f: Fact, on: bool) {
        if on {
            self.0 |= f as u8;
        } else {
            self.0 &= !(f as u8);
        }
    }

    /// Whether the server must be closed rather than reused.
    pub fn retire(self) -> bool {
        self.has(Fact::Unaccounted) || self.has(Fact::Retire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_independent_bits() {
        let mut f = Facts::default();
        f.set(Fact::CopyRunning, true);
        f.set(Fact::Retire, true);
        assert!(f.has(Fact::CopyRunning) && f.has(Fact::Retire) && f.retire());
        assert!(!f.has(Fact::Unaccounted) && !f.has(Fact::UnnamedParsed));
        f.set(Fact::Retire, false);
        assert!(!f.retire() && f.has(Fact::CopyRunning));
    }
}
