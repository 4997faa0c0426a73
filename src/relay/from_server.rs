//! Server to client: walks the server's replies, drops the proxy's own, tracks what is owed.

use super::*;
use crate::proto::tag::backend as be;

/// What a CommandComplete's tag says the command did.
#[derive(Clone, Copy)]
struct Completed {
    /// DISCARD ALL, DEALLOCATE ALL: the server has no prepared statements.
    forgot_statements: bool,
    /// SET, RESET, DISCARD ALL.
    changed_settings: bool,
    /// SQL-level PREPARE or DEALLOCATE of one statement.
    sql_statement: bool,
}

impl Completed {
    fn of(tag: &[u8]) -> Completed {
        Completed {
            forgot_statements: matches!(tag, b"DISCARD ALL\0" | b"DEALLOCATE ALL\0"),
            changed_settings: matches!(tag, b"SET\0" | b"RESET\0" | b"DISCARD ALL\0"),
            sql_statement: matches!(tag, b"PREPARE\0" | b"DEALLOCATE\0"),
        }
    }
}

/// Where walking one server message left off.
enum Walked {
    Next,
    /// Its body has not all arrived.
    Incomplete,
    /// Transaction mode: the client's transaction ended; what follows is not its.
    TransactionOver,
}

impl Relay {
    pub(super) fn emit_ready_answers(&mut self) {
        let status = self.srv.status;
        while let Some(s) = self.pipeline.take_ready_answers() {
            self.s.insert(|b| match s {
                Synthetic::CloseComplete => emit::message(b, be::CLOSE_COMPLETE, |_| {}),
                Synthetic::Ready => emit::ready_for_query(b, status),
                Synthetic::Complete(tag) => emit::message(b, be::COMMAND_COMPLETE, |b| {
                    b.extend_from_slice(tag.as_bytes());
                    b.extend_from_slice(&[0]);
                }),
                Synthetic::Error(code, msg) => {
                    emit::error_response(b, emit::Severity::Error, code, &msg, None);
                }
            });
        }
    }

    /// Walks the server's new bytes: transaction status, parameter changes, replies owed.
    pub(super) fn walk_server(
        &mut self,
        srv: &mut ServerConn,
        state: &mut ClientSession,
    ) -> Result<(), FrameError> {
        loop {
            let Some(h) = self
                .s
                .framer
                .next(&self.s.buf, &mut self.s.pos, usize::MAX)?
            else {
                return Ok(());
            };
            if self.own_reply_at_head(&h) {
                if !self.swallow_own_reply(&h, srv)? {
                    return Ok(());
                }
                continue;
            }
            if self.srv.facts.has(Fact::CopyRunning)
                && matches!(h.tag, be::COMMAND_COMPLETE | be::ERROR_RESPONSE)
            {
                self.copy_ended(h.tag == be::ERROR_RESPONSE);
            }
            let read = match h.tag {
                be::PARSE_COMPLETE | be::BIND_COMPLETE | be::CLOSE_COMPLETE => {
                    self.statement_reply(&h)
                }
                be::READY_FOR_QUERY
                | be::PARAMETER_STATUS
                | be::ERROR_RESPONSE
                | be::COMMAND_COMPLETE
                    if h.body_len <= INSPECT_LIMIT =>
                {
                    self.inspect(&h, srv, state)
                }
                _ => {
                    self.pass_reply(&h, srv, state);
                    Walked::Next
                }
            };
            match read {
                Walked::Next => {}
                Walked::Incomplete | Walked::TransactionOver => return Ok(()),
            }
        }
    }

    /// The head of the pipeline is the proxy's own work whose replies this one belongs to
    /// (the hand-over reset's Query, the witness's Describe and Close, its own Sync).
    fn own_reply_at_head(&self, h: &Header) -> bool {
        self.pipeline.head().is_some_and(|e| {
            e.action == Action::Swallow
                && (matches!(e.kind, Kind::Query | Kind::Describe | Kind::Sync)
                    || (self.srv.claims_pending > 0
                        && matches!(e.kind, Kind::Parse | Kind::Bind | Kind::Execute))
                    || (e.kind == Kind::Close
                        && self.srv.witness_pending
                        && h.tag == be::ERROR_RESPONSE))
        })
    }

    /// ParseComplete, BindComplete, CloseComplete: the reply to the proxy's own Parse or
    /// Close is dropped.
    fn statement_reply(&mut self, h: &Header) -> Walked {
        if self
            .s
            .framer
            .take(h, &self.s.buf, &mut self.s.pos)
            .is_none()
        {
            return Walked::Incomplete;
        }
        if let Some(e) = self.pipeline.complete(h.tag)
            && e.action == Action::Swallow
        {
            self.s.remove_walked(h.start, 5 + h.body_len);
            if e.kind == Kind::Close {
                // The witness's Close comes before any other of the proxy's.
                self.srv.witness_pending = false;
            }
        }
        self.emit_ready_answers();
        Walked::Next
    }

    /// The replies whose bodies decide something, read whole.
    fn inspect(&mut self, h: &Header, srv: &mut ServerConn, state: &mut ClientSession) -> Walked {
        let Some(body) = self.s.framer.take(h, &self.s.buf, &mut self.s.pos) else {
            return Walked::Incomplete;
        };
        match h.tag {
            be::READY_FOR_QUERY => {
                // Whatever the witness opened has ended.
                self.srv.guard = Guard::None;
                self.srv.status = body.first().copied().unwrap_or(b'I');
                self.meter.ready(self.srv.status);
                self.pipeline.complete(be::READY_FOR_QUERY);
                self.emit_ready_answers();
                if self.transaction_mode && self.transaction_over() {
                    // The transaction is over: what follows is not this client's.
                    return Walked::TransactionOver;
                }
            }
            be::PARAMETER_STATUS => {
                if let Some((k, v)) = views::parameter_status(body) {
                    state.params.reported.set(k, v);
                    srv.params.reported.set(k, v);
                }
            }
            be::COMMAND_COMPLETE => {
                self.meter.command_complete(body);
                let done = Completed::of(body);
                self.command_complete(done, srv, state);
            }
            _ => {
                let f = views::error_fields(body).unwrap_or_default();
                self.meter.error(f.code);
                if f.severity == "FATAL" || f.severity == "PANIC" {
                    self.srv.server_fatal = true;
                }
                let stale =
                    f.code == "0A000" && f.message == "cached plan must not change result type";
                self.server_error(srv, state, stale);
            }
        }
        Walked::Next
    }

    /// CommandComplete: what the command did to the session and the statements.
    fn command_complete(
        &mut self,
        done: Completed,
        srv: &mut ServerConn,
        state: &mut ClientSession,
    ) {
        if done.forgot_statements {
            srv.statements.clear();
            state.statements.clear();
        }
        self.srv.session_dirty |= done.changed_settings;
        if self.transaction_mode && done.sql_statement {
            // SQL-level statements: one the next client must not find, or one of the
            // proxy's changed behind its back. The server's statement set is no longer
            // known: it is closed, not reused.
            self.srv.facts.set(Fact::Retire, true);
        }
        self.pipeline.complete(be::COMMAND_COMPLETE);
        self.emit_ready_answers();
    }

    /// A reply passed through by length, its body unread: only its tag counts.
    fn pass_reply(&mut self, h: &Header, srv: &mut ServerConn, state: &mut ClientSession) {
        if h.tag == be::COPY_IN_RESPONSE {
            let start = self.pipeline.copy_in_started();
            self.srv.facts.set(Fact::CopyRunning, true);
            self.srv.facts.set(Fact::CopyClientOpen, start.end_pending);
            self.srv
                .facts
                .set(Fact::CopySyncsIgnored, start.syncs_dropped);
        }
        if h.tag == be::ERROR_RESPONSE {
            // Too long to read: still an error.
            self.meter.error("");
            self.server_error(srv, state, false);
        } else if matches!(
            h.tag,
            be::ROW_DESCRIPTION
                | be::NO_DATA
                | be::COMMAND_COMPLETE
                | be::EMPTY_QUERY_RESPONSE
                | be::PORTAL_SUSPENDED
        ) && self.pipeline.complete(h.tag).is_some()
        {
            self.emit_ready_answers();
        }
        self.s.framer.pass(h, &mut self.s.pos);
    }

    /// One message of the reply to the proxy's own query: dropped from the client's stream.
    /// False when its body has not all arrived, or when the hand-over failed.
    pub(super) fn swallow_own_reply(
        &mut self,
        h: &Header,
        srv: &mut ServerConn,
    ) -> Result<bool, FrameError> {
        if h.body_len > INSPECT_LIMIT {
            // Nothing the proxy's own statements answer is this long.
            return Err(FrameError::BadLength {
                tag: h.tag as char,
                len: h.body_len as i64,
            });
        }
        let Some(body) = self.s.framer.take(h, &self.s.buf, &mut self.s.pos) else {
            return Ok(false);
        };
        match h.tag {
            be::PARAMETER_STATUS => {
                if let Some((k, v)) = views::parameter_status(body) {
                    srv.params.reported.set(k, v);
                }
            }
            be::ERROR_RESPONSE => {
                let f = views::error_fields(body).unwrap_or_default();
                let claims = self.srv.claims_pending > 0;
                tracing::warn!(
                    server = srv.id,
                    code = f.code,
                    message = f.message,
                    claims,
                    "the hand-over reset or the client's claims failed: the server is closed"
                );
                self.srv.facts.set(Fact::Retire, true);
                if f.severity == "FATAL" || f.severity == "PANIC" {
                    self.srv.handover_fatal = true;
                }
                // With claims, any error fails the hand-over: the reset's query may have failed
                // before its BEGIN, and the rest would then run outside the transaction.
                if claims
                    || self
                        .pipeline
                        .head()
                        .is_some_and(|e| matches!(e.kind, Kind::Describe | Kind::Close))
                {
                    // The claims were not set, or the witness is missing (or its Close was
                    // canceled): the server now skips the client's messages up to the next
                    // Sync.
                    self.srv.facts.set(Fact::HandoverFailed, true);
                }
            }
            tag => {
                let head = self.pipeline.head().map(|e| e.kind);
                if head.is_some_and(|k| k.ended_by(tag)) {
                    if tag == be::READY_FOR_QUERY && head == Some(Kind::Sync) {
                        self.srv.guard = Guard::None;
                    }
                    if head == Some(Kind::Execute) {
                        self.srv.claims_pending = self.srv.claims_pending.saturating_sub(1);
                    }
                    self.pipeline.complete(tag);
                }
            }
        }
        self.s.remove_walked(h.start, 5 + h.body_len);
        if h.tag == be::READY_FOR_QUERY {
            self.emit_ready_answers();
        }
        Ok(!self.srv.facts.has(Fact::HandoverFailed))
    }

    /// The server's COPY FROM STDIN ended (CommandComplete, or an error). A failed COPY
    /// stops reading at a point the proxy cannot see: Syncs the client sent inside it that
    /// the server had not read yet are each answered after all, so how many ReadyForQuery
    /// it owes is unknown, and the server is never handed to anyone else. (Idempotent: a
    /// header walked again when its body was incomplete changes nothing.)
    pub(super) fn copy_ended(&mut self, failed: bool) {
        if failed && self.srv.facts.has(Fact::CopySyncsIgnored) {
            self.srv.facts.set(Fact::Unaccounted, true);
            let lost = self.transaction_mode && self.pipeline.query_after_head();
            self.srv.facts.set(Fact::LostCount, lost);
        }
        // The server left COPY: from here on it answers every Sync.
        self.srv.facts.set(Fact::CopyRunning, false);
        self.srv.facts.set(Fact::CopyClientOpen, false);
    }

    /// An ErrorResponse from the server: in the extended protocol it ends the current
    /// message and the server skips to the next Sync; statements those messages would have
    /// created do not exist.
    pub(super) fn server_error(
        &mut self,
        srv: &mut ServerConn,
        state: &mut ClientSession,
        stale_plan: bool,
    ) {
        if matches!(
            self.pipeline.head().map(|e| e.kind),
            None | Some(Kind::Query) | Some(Kind::Sync)
        ) {
            return;
        }
        let (failed, skipped) = self.pipeline.fail();
        if self.pipeline.head().is_none() {
            // The Sync that ends the skipping has not been sent yet.
            self.srv.skip_pending = true;
        }
        if let Some(e) = &failed
            && stale_plan
            && let Some(name) = &e.statement
        {
            srv.statements.mark_stale(name);
        }
        for e in failed.iter().chain(skipped.iter()) {
            if e.kind == Kind::Close
                && e.action == Action::Swallow
                && let Some(name) = &e.statement
            {
                // The proxy's own Close did not run: the server still has the statement.
                srv.statements.close_skipped(name);
            }
            if e.kind == Kind::Parse {
                if let Some(name) = &e.statement {
                    srv.statements.remove(name);
                }
                if let Some(client) = &e.client_name {
                    state.statements.remove(client);
                }
            }
        }
        self.emit_ready_answers();
    }
}
