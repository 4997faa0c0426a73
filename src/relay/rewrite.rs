//! Transaction mode's statement names: Parse, Bind, Describe and Close by the client's names
//! become messages by the server's ([`prepared`]); Close and DEALLOCATE are answered here.

use super::*;

impl Relay {
    /// Transaction mode: Parse/Bind/Describe/Close by the client's statement names become
    /// messages by server names; Close is answered here. Returns false when the message
    /// needs more bytes first.
    pub(super) fn rewrite_statement_message(
        &mut self,
        h: &Header,
        kind: Kind,
        srv: &mut ServerConn,
        state: &mut ClientSession,
    ) -> Result<bool, ClientError> {
        if kind == Kind::Bind {
            return self.rewrite_bind(h, srv, state);
        }
        if kind == Kind::Parse && h.body_len > held::MAX_HELD_MESSAGE {
            return self.oversized_parse(h);
        }
        // Parse, Describe and Close: handled whole.
        if !self.have_whole(h) {
            return Ok(false);
        }
        match kind {
            Kind::Parse => self.rewrite_parse(h, srv, state),
            _ => self.rewrite_describe_or_close(h, kind, srv, state),
        }
    }

    /// A Bind names the server's copy of the client's statement (given to the server first
    /// if it lacks one); the rest of its body streams through unread.
    fn rewrite_bind(
        &mut self,
        h: &Header,
        srv: &mut ServerConn,
        state: &mut ClientSession,
    ) -> Result<bool, ClientError> {
        let end = (h.start + 5 + h.body_len.min(MAX_NAMES)).min(self.c.buf.len());
        let Some((_, name, prefix)) = prepared::bind_names(&self.c.buf[h.start + 5..end]) else {
            if end - (h.start + 5) >= h.body_len.min(MAX_NAMES) {
                return Err(ClientError::protocol("invalid Bind message"));
            }
            return Ok(self.buffered(h.start + 5 + h.body_len.min(MAX_NAMES)));
        };
        self.need = 0;
        if name.is_empty() && self.srv.facts.has(Fact::UnnamedParsed) {
            return Ok(self.forward(h, Entry::pass(Kind::Bind)));
        }
        let Some(stmt) = state
            .statements
            .get(name)
            .cloned()
            .filter(|_| !name.is_empty())
        else {
            let msg = no_such_statement(name);
            self.c.cut_at(h.start);
            // After the cut the message starts at 0; its bytes are dropped as they come.
            self.c
                .framer
                .pass(&Header { start: 0, ..*h }, &mut self.c.pos);
            self.refuse_in_pipeline(Kind::Bind, "26000", msg);
            return Ok(true);
        };
        if let Some(names) = &stmt.settings {
            self.mark_settings(names);
        }
        self.c.cut_at(h.start);
        self.give_server(srv, &stmt);
        // After the cut the message starts at 0: portal and name are at 5.
        let (portal, old, _) =
            prepared::bind_names(&self.c.buf[5..5 + prefix]).unwrap_or((&[], &[], 0));
        prepared::write_bind_head(
            &mut self.c.out,
            h.body_len,
            portal,
            old.len(),
            &stmt.server_name,
        );
        self.c.drop_front(5 + prefix);
        self.c.framer.pass_rest(h.body_len - prefix);
        self.pipeline.push(Entry {
            statement: Some(stmt.server_name.clone()),
            ..Entry::pass(Kind::Bind)
        });
        Ok(true)
    }

    /// A named Parse is kept for the client and sent under the server's name.
    fn rewrite_parse(
        &mut self,
        h: &Header,
        srv: &mut ServerConn,
        state: &mut ClientSession,
    ) -> Result<bool, ClientError> {
        let settings = match self.note_parse_settings(h) {
            Ok(s) => s,
            Err(refused) => {
                self.drop_message(h);
                self.answer(Kind::Parse, refused.error());
                self.discard = Discard::UntilSync;
                return Ok(true);
            }
        };
        let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
        let Some((name, tail)) = prepared::split_name(body) else {
            return Err(ClientError::protocol("invalid Parse message"));
        };
        if name.is_empty() {
            self.srv.facts.set(Fact::UnnamedParsed, true);
            return Ok(self.forward(h, Entry::pass(Kind::Parse)));
        }
        let full = state.statements.len() >= self.max_client_statements as usize
            || state.statements.bytes() + tail.len() > prepared::MAX_CLIENT_STATEMENT_BYTES;
        if full {
            let msg = format!(
                "this client keeps {} prepared statements ({} bytes of text), the most transaction mode allows (max_client_prepared_statements, {} MiB): deallocate some first",
                state.statements.len(),
                state.statements.bytes(),
                prepared::MAX_CLIENT_STATEMENT_BYTES >> 20
            );
            self.drop_message(h);
            self.refuse_in_pipeline(Kind::Parse, "54000", msg);
            return Ok(true);
        }
        if state.statements.get(name).is_some() {
            let msg = format!(
                "prepared statement \"{}\" already exists",
                String::from_utf8_lossy(name)
            );
            self.drop_message(h);
            self.refuse_in_pipeline(Kind::Parse, "42P05", msg);
            return Ok(true);
        }
        let client_name: Box<[u8]> = name.into();
        let stmt = Arc::new(Statement {
            settings,
            // Its Binds are filed under what its Parse was (metered in this walk).
            fingerprint: self.meter.statement_of(h.body_len),
            ..Statement::new(
                tail,
                state
                    .params
                    .unreported
                    .get("search_path")
                    .unwrap_or("")
                    .as_bytes(),
            )
        });
        state.statements.insert(&client_name, stmt.clone());
        self.drop_message(h);
        let entry = Entry {
            client_name: Some(client_name),
            ..Entry::pass(Kind::Parse)
        };
        // The statement is newer than any copy the server has (`Statement::parsed`):
        // the Parse always reaches the server, after a Close of an older copy.
        self.ensure_on_server(srv, &stmt, entry);
        Ok(true)
    }

    /// Describe of a client's statement goes to the server's copy; Close is answered here
    /// (the server keeps the copy for whoever prepares the text next).
    fn rewrite_describe_or_close(
        &mut self,
        h: &Header,
        kind: Kind,
        srv: &mut ServerConn,
        state: &mut ClientSession,
    ) -> Result<bool, ClientError> {
        let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
        let (Some(&target), Some((name, _))) =
            (body.first(), body.get(1..).and_then(prepared::split_name))
        else {
            return Err(ClientError::protocol("invalid Describe or Close message"));
        };
        if target != b'S' || (name.is_empty() && self.srv.facts.has(Fact::UnnamedParsed)) {
            return Ok(self.forward(h, Entry::pass(kind)));
        }
        if name.is_empty() && kind == Kind::Describe {
            self.drop_message(h);
            self.refuse_in_pipeline(Kind::Describe, "26000", no_such_statement(b""));
            return Ok(true);
        }
        if kind == Kind::Close {
            // The server keeps the statement for whoever prepares the same text next.
            let name: Box<[u8]> = name.into();
            state.statements.remove(&name);
            self.drop_message(h);
            self.answer(Kind::Close, Synthetic::CloseComplete);
            return Ok(true);
        }
        let Some(stmt) = state.statements.get(name).cloned() else {
            let msg = no_such_statement(name);
            self.drop_message(h);
            self.refuse_in_pipeline(Kind::Describe, "26000", msg);
            return Ok(true);
        };
        self.drop_message(h);
        self.give_server(srv, &stmt);
        prepared::write_describe_statement(&mut self.c.out, &stmt.server_name);
        self.pipeline.push(Entry::pass(Kind::Describe));
        Ok(true)
    }

    /// A Parse longer than the relay holds whole: an unnamed one goes through unread (its
    /// text unscanned; a SET in it is still seen by its CommandComplete), a named one cannot
    /// be kept for the client's other servers and is refused (54000).
    pub(super) fn oversized_parse(&mut self, h: &Header) -> Result<bool, ClientError> {
        let at = h.start + 5;
        let end = (at + MAX_NAMES).min(self.c.buf.len());
        let Some(name_len) = self.c.buf[at..end].iter().position(|&b| b == 0) else {
            if end - at >= MAX_NAMES {
                return Err(ClientError::protocol("invalid Parse message"));
            }
            return Ok(self.buffered(at + MAX_NAMES));
        };
        self.need = 0;
        if name_len == 0 {
            self.srv.facts.set(Fact::UnnamedParsed, true);
            return Ok(self.forward(h, Entry::pass(Kind::Parse)));
        }
        let msg = format!(
            "a named prepared statement of {} bytes is over the {} MiB transaction mode keeps per statement",
            h.body_len,
            held::MAX_HELD_MESSAGE >> 20
        );
        self.c.cut_at(h.start);
        // After the cut the message starts at 0; its bytes are dropped as they come.
        self.c
            .framer
            .pass(&Header { start: 0, ..*h }, &mut self.c.pos);
        self.refuse_in_pipeline(Kind::Parse, "54000", msg);
        Ok(true)
    }

    /// `DEALLOCATE name` of a protocol-level statement: the client's names exist only here in
    /// transaction mode, so the proxy answers it as PostgreSQL would.
    pub(super) fn deallocate_here(&mut self, h: &Header, state: &mut ClientSession) -> bool {
        let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
        if body.len() > 200 {
            return false;
        }
        let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
        let Some(name) = crate::sql::session::deallocate_name(&text) else {
            return false;
        };
        self.drop_message(h);
        if state.statements.get(name.as_bytes()).is_some() {
            state.statements.remove(name.as_bytes());
            self.answer(Kind::Query, Synthetic::Complete("DEALLOCATE"));
        } else {
            let msg = no_such_statement(name.as_bytes());
            self.answer(Kind::Query, Synthetic::Error("26000", msg));
        }
        self.answer(Kind::Query, Synthetic::Ready);
        true
    }

    /// Makes sure `srv` has `stmt` before a message that uses it (the proxy's own Parse).
    pub(super) fn give_server(&mut self, srv: &mut ServerConn, stmt: &Statement) {
        let own = Entry {
            action: Action::Swallow,
            ..Entry::pass(Kind::Parse)
        };
        self.ensure_on_server(srv, stmt, own);
    }

    /// Gives the server `stmt` unless it has a copy parsed since the client's Parse: closes
    /// what must go first, then a Parse tracked as `entry` (the proxy's own, Swallow, when
    /// the client did not ask for one).
    fn ensure_on_server(&mut self, srv: &mut ServerConn, stmt: &Statement, entry: Entry) {
        let have = &mut srv.statements;
        if have.touch(&stmt.server_name, stmt.parsed) {
            self.meter.prepared(true);
            return;
        }
        self.meter.prepared(false);
        let out = &mut self.c.out;
        let capacity = self.max_prepared as usize;
        if make_room(out, &mut self.pipeline, have, capacity, &stmt.server_name) {
            self.meter.prepared_evicted();
        }
        prepared::write_parse(out, &stmt.server_name, &stmt.tail);
        have.add(stmt.server_name.clone());
        self.pipeline.push(Entry {
            statement: Some(stmt.server_name.clone()),
            ..entry
        });
    }
}

/// PostgreSQL's words for a statement name it does not know (26000).
pub(super) fn no_such_statement(name: &[u8]) -> String {
    if name.is_empty() {
        return "unnamed prepared statement does not exist".into();
    }
    format!(
        "prepared statement \"{}\" does not exist",
        String::from_utf8_lossy(name)
    )
}

/// Closes the least recently used statement when the server is full (true: one was), and a
/// stale copy of `name` if PostgreSQL refused to reuse its plan.
pub(super) fn make_room(
    out: &mut BytesMut,
    pipeline: &mut Pipeline,
    have: &mut ServerStatements,
    capacity: usize,
    name: &Arc<str>,
) -> bool {
    let mut close = |out: &mut BytesMut, victim: Arc<str>| {
        prepared::write_close_statement(out, &victim);
        // Named, so that a Close the server skips (an error ahead of it) is known to have
        // left the statement there (`Relay::server_error`).
        pipeline.push(Entry {
            action: Action::Swallow,
            statement: Some(victim),
            ..Entry::pass(Kind::Close)
        });
    };
    if have.take_stale(name) {
        close(out, name.clone());
    }
    if let Some(victim) = have.evict_for_room(capacity) {
        close(out, victim);
        return true;
    }
    false
}
