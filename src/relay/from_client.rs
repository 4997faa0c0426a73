//! Client to server: walks the client's messages, forwards, answers or refuses each.

use super::*;
use crate::proto::tag::frontend as fe;

/// What walking one client message decided.
enum Step {
    /// Handled: on to the next message.
    Done,
    /// Nothing more to do with it here (dropped, or walked past): on to the next.
    Next,
    /// It needs more bytes, or must wait for the server: stop walking for now.
    Wait,
    /// The session must act.
    Stop(Event),
}

/// Which frontend messages are which, for the relay's checks.
mod tag {
    use crate::proto::tag::frontend as fe;

    /// Messages PostgreSQL reads with its small-message limit (postgres.c, copyfromparse.c).
    pub fn small_message(t: u8) -> bool {
        matches!(
            t,
            fe::CLOSE
                | fe::DESCRIBE
                | fe::EXECUTE
                | fe::FLUSH
                | fe::SYNC
                | fe::TERMINATE
                | fe::COPY_DONE
                | fe::COPY_FAIL
        )
    }

    /// Messages a client may send once logged in (Terminate is handled before this).
    pub fn after_startup(t: u8) -> bool {
        matches!(
            t,
            fe::QUERY
                | fe::PARSE
                | fe::BIND
                | fe::EXECUTE
                | fe::DESCRIBE
                | fe::CLOSE
                | fe::FLUSH
                | fe::SYNC
                | fe::FUNCTION_CALL
                | fe::COPY_DATA
                | fe::COPY_DONE
                | fe::COPY_FAIL
        )
    }

    /// What a client sends during COPY FROM STDIN.
    pub fn copy_from_client(t: u8) -> bool {
        matches!(t, fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL)
    }
}

impl Relay {
    /// Walks the client's new bytes. Forwarding is implicit: walked bytes are written next.
    pub(super) fn walk_client(
        &mut self,
        mut server: Option<&mut ServerConn>,
        state: &mut ClientSession,
    ) -> Option<Event> {
        loop {
            let mut h = match self
                .c
                .framer
                .next(&self.c.buf, &mut self.c.pos, MAX_MESSAGE_LEN)
            {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Some(Event::Protocol(ClientError::protocol(e.to_string()))),
            };
            let step = match self.gate(&mut h, server.is_some()) {
                Step::Done => match server.as_deref_mut() {
                    None => self.without_server(&h),
                    Some(_) if !self.meter_message(&h, state) => Step::Wait,
                    Some(srv) => self.with_server(&h, srv, state),
                },
                other => other,
            };
            match step {
                Step::Done => {
                    self.metered = false;
                    self.need = 0;
                }
                Step::Next => {}
                Step::Wait => break,
                Step::Stop(ev) => return Some(ev),
            }
        }
        if self.discard != Discard::No {
            self.c.discard_walked();
            if self.discard == Discard::Tail && !self.c.framer.mid_message() {
                self.discard = Discard::No;
            }
        }
        None
    }

    /// What holds a message back before it is looked at: PostgreSQL's limits and valid
    /// tags, a refused request's messages being dropped, a server that may not be sent more.
    /// `Done` lets it through.
    fn gate(&mut self, h: &mut Header, attached: bool) -> Step {
        // PostgreSQL's limit counts the length word itself (pq_getmessage).
        if h.body_len + 4 > SMALL_MESSAGE_LIMIT && tag::small_message(h.tag) {
            return Step::Stop(Event::Protocol(ClientError::protocol(format!(
                "invalid message length {} for message type {:?}",
                h.body_len, h.tag as char
            ))));
        }
        if self.discard == Discard::Tail {
            // The dropped message is fully gone: back to normal.
            self.c.discard_walked();
            self.discard = Discard::No;
            return Step::Next;
        }
        if self.held_after_sync() && attached {
            // Not past a Sync before the witness has answered (see `witness_pending`).
            return Step::Wait;
        }
        if self.srv.facts.has(Fact::Unaccounted) && self.transaction_mode && attached {
            // Nothing more goes to a server whose replies can no longer be counted: the
            // client's next messages wait for the server it gets next.
            return Step::Wait;
        }
        match h.tag {
            fe::TERMINATE => return Step::Stop(Event::ClientTerminated),
            t if tag::after_startup(t) => {}
            other => {
                return Step::Stop(Event::Protocol(ClientError::protocol(format!(
                    "invalid frontend message type {other}"
                ))));
            }
        }
        if self.srv.skip_pending && attached {
            // Everything before this message goes; from here the server would skip.
            self.srv.skip_pending = false;
            self.c.cut_at(h.start);
            h.start = 0;
            self.discard = Discard::UntilSync;
        }
        if self.discard != Discard::UntilSync {
            return Step::Done;
        }
        if attached && h.tag == fe::SYNC {
            // The server gets the Sync and answers it; the skipped messages never left.
            self.c.discard_walked();
            h.start = 0;
            self.discard = Discard::No;
            return Step::Done;
        }
        // Dropped as it streams: nothing of it is held.
        self.need = 0;
        self.c.framer.pass(h, &mut self.c.pos);
        if !attached && matches!(h.tag, fe::QUERY | fe::SYNC | fe::FUNCTION_CALL) {
            self.discard = Discard::Tail;
            self.s.insert(|b| emit::ready_for_query(b, b'I'));
        }
        Step::Next
    }

    /// A message with no server attached: LISTEN for the hub, COPY leftovers dropped, or a
    /// request for a server once the part read with it attached is here.
    fn without_server(&mut self, h: &Header) -> Step {
        if self.transaction_mode && h.tag == fe::QUERY && h.body_len <= MAX_LISTEN_TEXT {
            if !self.have_whole(h) {
                return Step::Wait;
            }
            let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
            if crate::sql::session::may_be_listen(body) && Mentions::of(body).listen {
                let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
                if let Some(cmd) = crate::sql::session::listen_statement(&text) {
                    self.drop_message(h);
                    return Step::Stop(Event::Listen(cmd));
                }
            }
        }
        if self.transaction_mode && tag::copy_from_client(h.tag) {
            // COPY data after its COPY ended (the server failed it and was let go):
            // PostgreSQL ignores these outside COPY, so no server is taken for them.
            self.c.framer.pass(h, &mut self.c.pos);
            self.discard = Discard::Tail;
            return Step::Next;
        }
        // Ask for a server only once the part of the message that will be read with it
        // attached is here: a server given for a message still arriving would be idle and
        // handed back at once, over and over.
        if !self.buffered(self.bytes_needed(h)) {
            return Step::Wait;
        }
        Step::Stop(Event::NeedServer)
    }

    /// A message with a server attached: forwarded, rewritten, answered or refused.
    fn with_server(&mut self, h: &Header, srv: &mut ServerConn, state: &mut ClientSession) -> Step {
        let rewrite = self.max_prepared > 0;
        let handled = match h.tag {
            fe::QUERY if self.transaction_mode && h.body_len <= MAX_SCANNED_QUERY => {
                return self.scanned_query(h, state);
            }
            fe::QUERY | fe::FUNCTION_CALL => self.forward(h, Entry::pass(Kind::Query)),
            fe::SYNC
                if self.srv.facts.has(Fact::CopyRunning)
                    && self.srv.facts.has(Fact::CopyClientOpen) =>
            {
                // Ignored by the server while its COPY runs: owed no reply, unless the
                // COPY fails before the server reads it.
                self.srv.facts.set(Fact::CopySyncsIgnored, true);
                self.c.framer.pass(h, &mut self.c.pos);
                true
            }
            fe::SYNC => {
                self.srv.unsynced = false;
                self.srv.synced_since_witness |= self.srv.witness_pending;
                self.forward(h, Entry::pass(Kind::Sync))
            }
            fe::COPY_DONE | fe::COPY_FAIL => {
                if self.srv.facts.has(Fact::CopyClientOpen) {
                    self.srv.facts.set(Fact::CopyClientOpen, false);
                } else {
                    self.pipeline.push(Entry::pass(Kind::CopyEnd));
                }
                self.c.framer.pass(h, &mut self.c.pos);
                true
            }
            fe::EXECUTE => {
                self.srv.unsynced = true;
                self.forward(h, Entry::pass(Kind::Execute))
            }
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE => {
                self.srv.unsynced = true;
                let kind = match h.tag {
                    fe::PARSE => Kind::Parse,
                    fe::BIND => Kind::Bind,
                    fe::DESCRIBE => Kind::Describe,
                    _ => Kind::Close,
                };
                if !rewrite {
                    self.forward(h, Entry::pass(kind))
                } else {
                    match self.rewrite_statement_message(h, kind, srv, state) {
                        Ok(done) => done,
                        Err(e) => return Step::Stop(Event::Protocol(e)),
                    }
                }
            }
            _ => {
                // Flush and CopyData: no reply of their own.
                self.c.framer.pass(h, &mut self.c.pos);
                true
            }
        };
        if handled { Step::Done } else { Step::Wait }
    }

    /// A simple Query in transaction mode, read whole: a DEALLOCATE of a client's
    /// statement is answered here, and a text that changes settings is noted (or refused).
    fn scanned_query(&mut self, h: &Header, state: &mut ClientSession) -> Step {
        if !self.have_whole(h) {
            return Step::Wait;
        }
        let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
        let mentions = Mentions::of(body);
        if self.max_prepared > 0 && mentions.deallocate && self.deallocate_here(h, state) {
            self.metered = false;
            return Step::Next;
        }
        match self.note_settings(h.start + 5, h.body_len, mentions) {
            Ok(_) => {
                self.forward(h, Entry::pass(Kind::Query));
            }
            Err(refused) => {
                // Answered here as PostgreSQL answers a refused query.
                self.drop_message(h);
                self.answer(Kind::Query, refused.error());
                self.answer(Kind::Query, Synthetic::Ready);
            }
        }
        Step::Done
    }

    /// True when all of `h` is buffered; otherwise asks for it.
    pub(super) fn have_whole(&mut self, h: &Header) -> bool {
        self.buffered(h.start + 5 + h.body_len)
    }

    /// The one check of "enough bytes": true when the client buffer holds `end` bytes;
    /// otherwise `need` asks the reads for them (past the usual read limit if it must).
    pub(super) fn buffered(&mut self, end: usize) -> bool {
        let enough = self.c.buf.len() >= end;
        self.need = if enough { 0 } else { end };
        enough
    }

    /// How much of the buffer must hold `h` before it can be handled with a server attached:
    /// the whole of a message the relay reads whole, the names of a Bind it rewrites, else
    /// the header.
    pub(super) fn bytes_needed(&self, h: &Header) -> usize {
        let body = h.start + 5;
        let whole = body + h.body_len;
        let rewrite = self.max_prepared > 0;
        let fingerprinted = self.meter.tracks_queries() && h.body_len <= MAX_FINGERPRINTED;
        match h.tag {
            fe::QUERY if self.transaction_mode && h.body_len <= MAX_SCANNED_QUERY => whole,
            fe::QUERY | fe::PARSE if fingerprinted => whole,
            // A Parse too long to hold is read as far as its statement name.
            fe::PARSE if rewrite && h.body_len > held::MAX_HELD_MESSAGE => {
                body + h.body_len.min(MAX_NAMES)
            }
            fe::PARSE | fe::DESCRIBE | fe::CLOSE if rewrite => whole,
            fe::BIND if rewrite => body + h.body_len.min(MAX_NAMES),
            _ => body,
        }
    }

    /// Counts a message that asks for work and reads what names the statement: a Query's or
    /// Parse's text (whole, up to MAX_FINGERPRINTED), a Bind's statement name. False when the
    /// text needs more bytes first.
    pub(super) fn meter_message(&mut self, h: &Header, state: &ClientSession) -> bool {
        if self.metered
            || !matches!(
                h.tag,
                fe::QUERY | fe::PARSE | fe::BIND | fe::EXECUTE | fe::FUNCTION_CALL
            )
        {
            return true;
        }
        let body_at = h.start + 5;
        let track = self.meter.tracks_queries();
        let has_text = matches!(h.tag, fe::QUERY | fe::PARSE);
        if track && has_text && h.body_len <= MAX_FINGERPRINTED && !self.have_whole(h) {
            return false;
        }
        // A long Parse's and a Bind's statement name say what runs: they must be in hand.
        let names_at = body_at + h.body_len.min(MAX_NAMES);
        let long_parse = h.tag == fe::PARSE && h.body_len > MAX_FINGERPRINTED;
        if track && (long_parse || h.tag == fe::BIND) && !self.buffered(names_at) {
            return false;
        }
        self.meter.request();
        match h.tag {
            fe::PARSE => self.meter.parse_message(self.max_prepared == 0),
            fe::BIND => self.meter.bind_message(),
            _ => {}
        }
        if !track {
            return true;
        }
        if has_text && h.body_len > MAX_FINGERPRINTED {
            let name = long_parse
                .then(|| prepared::split_name(&self.c.buf[body_at..names_at]))
                .flatten()
                .map(|(n, _)| n);
            self.meter.long_statement(name);
        } else if has_text {
            let body = &self.c.buf[body_at..body_at + h.body_len];
            if h.tag == fe::QUERY {
                self.meter.query_text(body);
            } else if let Some((name, tail)) = prepared::split_name(body) {
                let text_len = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
                self.meter.parse_text(name, &tail[..text_len]);
            }
        } else if h.tag == fe::BIND {
            let name = prepared::bind_names(&self.c.buf[body_at..names_at]).map(|(_, n, _)| n);
            match name {
                // Transaction mode's statement cache: the relay files the fingerprint.
                Some(n) if self.meter.names_in_relay && !n.is_empty() => {
                    let known = state.statements.get(n).and_then(|s| s.fingerprint.as_ref());
                    self.meter.bind_statement(known);
                }
                _ => self.meter.bind_name(name),
            }
        }
        // Counted once even if the message is walked again for more bytes.
        self.metered = true;
        true
    }

    pub(super) fn forward(&mut self, h: &Header, entry: Entry) -> bool {
        self.pipeline.push(entry);
        self.c.framer.pass(h, &mut self.c.pos);
        true
    }

    /// Removes a whole client message from the stream (it is answered, not forwarded).
    pub(super) fn drop_message(&mut self, h: &Header) {
        self.c.cut_at(h.start);
        self.c.drop_front(5 + h.body_len);
    }

    /// Answers a message here, in its place among the server's replies.
    pub(super) fn answer(&mut self, kind: Kind, s: Synthetic) {
        self.pipeline.push(Entry {
            action: Action::Answer(s),
            ..Entry::pass(kind)
        });
        self.emit_ready_answers();
    }

    /// An error for the current message, in its place; the client's messages up to its
    /// Sync are dropped, as PostgreSQL skips them after an error.
    pub(super) fn refuse_in_pipeline(&mut self, kind: Kind, code: &'static str, message: String) {
        self.answer(kind, Synthetic::Error(code, message));
        self.discard = Discard::UntilSync;
    }
}
