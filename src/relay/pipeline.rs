//! What the server still owes, in order: one entry per forwarded message that gets a reply
//! (protocol 55.2.3, extended query; Query and FunctionCall end at ReadyForQuery). It tells
//! the relay which reply ends which message, which replies are the proxy's own to drop, where
//! the proxy's own answers go, and what an error makes the server skip.

use crate::proto::tag::backend as be;
use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Simple Query or FunctionCall: ends at ReadyForQuery.
    Query,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// Where the client's CopyDone or CopyFail sits: Syncs before it, sent while COPY FROM
    /// STDIN runs, are ignored by the server (copyfromparse.c) and get no reply.
    CopyEnd,
}

impl Kind {
    /// Whether a server message with `tag` ends a message of this kind (errors aside).
    pub fn ended_by(self, tag: u8) -> bool {
        match self {
            Kind::Query | Kind::Sync => tag == be::READY_FOR_QUERY,
            Kind::Parse => tag == be::PARSE_COMPLETE,
            Kind::Bind => tag == be::BIND_COMPLETE,
            Kind::Close => tag == be::CLOSE_COMPLETE,
            Kind::Describe => tag == be::ROW_DESCRIPTION || tag == be::NO_DATA,
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
            Kind::CopyEnd => false,
        }
    }
}

/// A reply the proxy gives itself, in the client's stream where the server's would be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Synthetic {
    CloseComplete,
    /// ReadyForQuery with the current transaction status (after a refused simple Query).
    Ready,
    /// CommandComplete with this tag.
    Complete(&'static str),
    /// SQLSTATE and message.
    Error(&'static str, String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The client's message went to the server: its reply goes to the client.
    Pass,
    /// The proxy's own message: its reply is dropped.
    Swallow,
    /// Answered by the proxy: emitted once everything before it is answered.
    Answer(Synthetic),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: Kind,
    pub action: Action,
    /// The server-side statement a Parse creates or a Bind uses.
    pub statement: Option<Arc<str>>,
    /// For the client's own Parse: its name, which fails with the Parse.
    pub client_name: Option<Box<[u8]>>,
}

impl Entry {
    pub fn pass(kind: Kind) -> Entry {
        Entry {
            kind,
            action: Action::Pass,
            statement: None,
            client_name: None,
        }
    }
}

/// Empty reply queues kept per worker thread (see [`crate::spare`]).
const SPARE_QUEUES_MAX: usize = 64;
/// Larger queues are freed instead of kept.
const SPARE_QUEUE_CAPACITY_MAX: usize = 256;

thread_local! {
    static SPARE_QUEUES: crate::spare::List<VecDeque<Entry>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// What [`Pipeline::copy_in_started`] found behind the COPY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyStart {
    /// The client has not sent its CopyDone or CopyFail yet: its Syncs stay ignored until it does.
    pub end_pending: bool,
    /// Syncs were taken off the queue as ignored. Should the COPY fail, the server may not
    /// have read them yet and answer each after all: the count is then uncertain.
    pub syncs_dropped: bool,
}

#[derive(Default)]
pub struct Pipeline {
    q: VecDeque<Entry>,
}

impl Pipeline {
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn clear(&mut self) {
        self.q.clear();
    }

    /// Gives the queue's memory back while nothing is owed (the relay is about to wait);
    /// with `keep_ordinary`, only a queue grown past what the spare pool keeps.
    pub fn release_empty(&mut self, keep_ordinary: bool) {
        let min = if keep_ordinary {
            SPARE_QUEUE_CAPACITY_MAX + 1
        } else {
            1
        };
        if self.q.is_empty() && self.q.capacity() >= min {
            let q = std::mem::take(&mut self.q);
            // A queue grown by a long pipeline is freed, not kept at its peak.
            if crate::spare::QUEUES && q.capacity() <= SPARE_QUEUE_CAPACITY_MAX {
                crate::spare::give(&SPARE_QUEUES, q, SPARE_QUEUES_MAX);
            }
        }
    }

    pub fn push(&mut self, e: Entry) {
        if self.q.capacity() == 0 {
            self.q = crate::spare::take(&SPARE_QUEUES);
        }
        self.q.push_back(e);
        self.drop_markers();
    }

    /// Markers at the head have nothing left to mark.
    fn drop_markers(&mut self) {
        while self.q.front().is_some_and(|e| e.kind == Kind::CopyEnd) {
            self.q.pop_front();
        }
    }

    /// The server entered COPY FROM STDIN for the head entry: the Syncs the client sent
    /// before its CopyDone/CopyFail are ignored by the server while the COPY runs
    /// (copyfromparse.c), so they are taken off the queue here.
    pub fn copy_in_started(&mut self) -> CopyStart {
        let mut start = CopyStart {
            end_pending: true,
            syncs_dropped: false,
        };
        let mut i = 1;
        while i < self.q.len() {
            match self.q[i].kind {
                Kind::CopyEnd => {
                    self.q.remove(i);
                    start.end_pending = false;
                    return start;
                }
                Kind::Sync => {
                    self.q.remove(i);
                    start.syncs_dropped = true;
                }
                _ => i += 1,
            }
        }
        start
    }

    /// A simple Query or FunctionCall of the client's behind the head. A stray
    /// ReadyForQuery would complete it before its rows arrive, and they would be lost. Other
    /// messages are matched by their own reply tags; a stray ReadyForQuery among them reaches
    /// the client as PostgreSQL sent it (drivers that pipeline the next query behind a
    /// CopyFail, as tokio-postgres does, must keep working).
    pub fn query_after_head(&self) -> bool {
        self.q
            .iter()
            .skip(1)
            .any(|e| e.kind == Kind::Query && e.action == Action::Pass)
    }

    /// No entry is the client's own message on its way to the server.
    pub fn only_proxy_work(&self) -> bool {
        self.q.iter().all(|e| e.action != Action::Pass)
    }

    pub fn head(&self) -> Option<&Entry> {
        self.q.front()
    }

    /// If `tag` ends the head entry, removes and returns it.
    pub fn complete(&mut self, tag: u8) -> Option<Entry> {
        if !self.q.front().is_some_and(|e| e.kind.ended_by(tag)) {
            return None;
        }
        let e = self.q.pop_front();
        self.drop_markers();
        e
    }

    /// An ErrorResponse in the extended protocol ends the head entry, and the server skips
    /// everything up to the next Sync. Returns the failed entry and the skipped ones.
    pub fn fail(&mut self) -> (Option<Entry>, Vec<Entry>) {
        let failed = self.q.pop_front();
        let mut skipped = Vec::new();
        while self.q.front().is_some_and(|e| e.kind != Kind::Sync) {
            if let Some(e) = self.q.pop_front() {
                skipped.push(e);
            }
        }
        (failed, skipped)
    }

    /// Proxy answers now at the head: everything before them is answered.
    pub fn take_ready_answers(&mut self) -> Option<Synthetic> {
        match self.q.front() {
            Some(Entry {
                action: Action::Answer(_),
                ..
            }) => match self.q.pop_front() {
                Some(Entry {
                    action: Action::Answer(s),
                    ..
                }) => {
                    self.drop_markers();
                    Some(s)
                }
                _ => None,
            },
            _ => None,
        }
    }
}

// One per reply a client has outstanding, up to MAX_OUTSTANDING of them (80 bytes today).
const _: () = assert!(std::mem::size_of::<Entry>() <= 80);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_skips_to_sync() {
        let mut p = Pipeline::default();
        for k in [
            Kind::Parse,
            Kind::Bind,
            Kind::Execute,
            Kind::Sync,
            Kind::Bind,
        ] {
            p.push(Entry::pass(k));
        }
        assert!(p.complete(b'1').is_some());
        let (failed, skipped) = p.fail();
        assert_eq!(failed.map(|e| e.kind), Some(Kind::Bind));
        assert_eq!(skipped.len(), 1);
        assert!(p.complete(b'Z').is_some());
        assert_eq!(p.head().map(|e| e.kind), Some(Kind::Bind));
    }

    #[test]
    fn syncs_sent_during_copy_in_get_no_reply() {
        // tokio-postgres: Bind, Execute, Sync, then CopyData..., CopyDone, Sync.
        let mut p = Pipeline::default();
        for k in [
            Kind::Bind,
            Kind::Execute,
            Kind::Sync,
            Kind::CopyEnd,
            Kind::Sync,
        ] {
            p.push(Entry::pass(k));
        }
        assert!(p.complete(b'2').is_some());
        let start = p.copy_in_started();
        assert!(!start.end_pending, "CopyDone already sent");
        assert!(start.syncs_dropped, "the Sync before CopyDone is ignored");
        assert!(p.complete(b'C').is_some());
        assert!(p.complete(b'Z').is_some());
        assert!(p.is_empty());
        // CopyInResponse before the client finished: its later Syncs are ignored too.
        p.push(Entry::pass(Kind::Query));
        assert_eq!(
            p.copy_in_started(),
            CopyStart {
                end_pending: true,
                syncs_dropped: false
            }
        );
    }

    #[test]
    fn answers_wait_their_turn() {
        let mut p = Pipeline::default();
        p.push(Entry::pass(Kind::Bind));
        p.push(Entry {
            action: Action::Answer(Synthetic::CloseComplete),
            ..Entry::pass(Kind::Close)
        });
        assert_eq!(p.take_ready_answers(), None);
        assert!(p.complete(b'2').is_some());
        assert_eq!(p.take_ready_answers(), Some(Synthetic::CloseComplete));
        assert!(p.is_empty());
    }
}
