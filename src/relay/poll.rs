//! The relay's loop: reads, walks and writes both directions until the session must act.

use super::*;

/// What one turn with the server attached came to.
enum Served {
    /// Carry on (true: bytes moved).
    Progress(bool),
    /// The proxy queued its own Sync: walk again before anything else.
    Again,
    /// The session must act.
    Stop(Event),
}

/// Which sockets' reads said Pending during one [`Relay::poll_relay`]: each has this task's
/// waker, so it is not read again before it wakes the task (a read that would find nothing
/// still costs tokio's readiness check and waker bookkeeping, twice per statement).
#[derive(Default)]
struct Waiting {
    client: bool,
    server: bool,
}

impl Relay {
    /// Moves bytes both ways until something needs the session's attention.
    pub fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        mut server: Option<&mut ServerConn>,
        state: &mut ClientSession,
    ) -> Poll<Event> {
        let mut waiting = Waiting::default();
        loop {
            let mut progress = match self.read_client(cx, client, &mut waiting.client) {
                Ok(read) => read,
                Err(ev) => return Poll::Ready(ev),
            };
            if let Some(ev) = self.walk_client(server.as_deref_mut(), state) {
                return Poll::Ready(ev);
            }
            if self.srv.guard == Guard::Open && server.is_some() && self.nothing_forwarded() {
                self.close_guard();
            }
            if let Some(srv) = server.as_deref_mut() {
                match self.serve(cx, srv, state, &mut waiting.server) {
                    Served::Progress(p) => progress |= p,
                    Served::Again => continue,
                    Served::Stop(ev) => return Poll::Ready(ev),
                }
            }
            match self.write_client(cx, client) {
                Ok(wrote) => progress |= wrote,
                Err(ev) => return Poll::Ready(ev),
            }
            if self.watch_phase {
                let phase = self.phase();
                if phase != self.reported_phase {
                    self.reported_phase = phase;
                    return Poll::Ready(Event::Phase(phase));
                }
            }
            if !progress {
                // Waiting between transactions (or in session mode, where the server stays
                // with an idle client): buffers with nothing in them go back, so an idle
                // client costs its state, not 16 KiB or more of buffers per direction.
                // Inside a transaction the next statement needs them again at once, and
                // only as many clients as there are servers can be there: kept, up to two
                // reads' worth each.
                let keep = self.transaction_mode && server.is_some();
                self.c.release_empty(keep);
                self.s.release_empty(keep);
                self.pipeline.release_empty(keep);
                return Poll::Pending;
            }
        }
    }

    /// Client -> proxy: reads while the queue has room (or a whole message needs more) and
    /// the replies it waits for are bounded. Ok(true) when bytes came.
    fn read_client(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut Stream,
        waiting: &mut bool,
    ) -> Result<bool, Event> {
        if !held::resize(&mut self.held, self.need.saturating_sub(MAX_BUFFERED)) {
            return Err(Event::Protocol(ClientError::limit(
                "54000",
                "message too large to hold whole, or the proxy's memory for such messages is in use",
            )));
        }
        if *waiting
            || self.c.buf.len() >= MAX_BUFFERED.max(self.need)
            || self.pipeline.len() >= MAX_OUTSTANDING
        {
            return Ok(false);
        }
        match read_into(cx, client, &mut self.c.buf) {
            Poll::Ready(Ok(0)) => Err(Event::ClientGone(Lost::Closed)),
            Poll::Ready(Err(e)) => Err(Event::ClientGone(Lost::of(&e))),
            Poll::Ready(Ok(n)) => {
                self.meter.received(n);
                Ok(true)
            }
            Poll::Pending => {
                *waiting = true;
                Ok(false)
            }
        }
    }

    /// Proxy -> server, server -> proxy, then whether the server can be let go.
    fn serve(
        &mut self,
        cx: &mut Context<'_>,
        srv: &mut ServerConn,
        state: &mut ClientSession,
        waiting: &mut bool,
    ) -> Served {
        let mut progress = match write_out(cx, &mut srv.stream, &mut self.c) {
            Ok(wrote) => wrote,
            Err(lost) => return Served::Stop(Event::ServerGone(lost)),
        };
        // Read while the client's queue has room.
        if !*waiting && self.s.buf.len() < MAX_BUFFERED {
            match read_into(cx, &mut srv.stream, &mut self.s.buf) {
                Poll::Ready(Ok(0)) => {
                    // Deliver what the server said before it went (often its FATAL).
                    let _ = self.walk_server(srv, state);
                    return Served::Stop(Event::ServerGone(Lost::Closed));
                }
                Poll::Ready(Err(e)) => {
                    let _ = self.walk_server(srv, state);
                    return Served::Stop(Event::ServerGone(Lost::of(&e)));
                }
                Poll::Ready(Ok(n)) => {
                    self.meter.sent(n);
                    progress = true;
                }
                Poll::Pending => *waiting = true,
            }
        }
        if let Err(e) = self.walk_server(srv, state) {
            return Served::Stop(Event::ServerGone(Lost::Protocol(e)));
        }
        if self.srv.facts.has(Fact::HandoverFailed) {
            return Served::Stop(Event::HandoverFailed);
        }
        // Not while a message the client started is still arriving (need > 0).
        if !(self.transaction_mode && self.need == 0 && self.transaction_over()) {
            return Served::Progress(progress);
        }
        if self.srv.guard == Guard::Open {
            self.close_guard();
            return Served::Again;
        }
        if self.srv.facts.has(Fact::LostCount) {
            return Served::Stop(Event::Protocol(ClientError::protocol(LOST_COUNT)));
        }
        let clean = self.s.buf.len() == self.s.pos && !self.srv.facts.retire();
        self.s.buf.truncate(self.s.pos);
        let resync = std::mem::take(&mut self.srv.session_dirty);
        Served::Stop(Event::Release { clean, resync })
    }

    /// Proxy -> client; a client that takes nothing while its results wait is cut off after
    /// stall_timeout (the timer exists only while it is stalled). Ok(true) if it took bytes.
    fn write_client(&mut self, cx: &mut Context<'_>, client: &mut Stream) -> Result<bool, Event> {
        match write_out(cx, client, &mut self.s) {
            Ok(true) => {
                self.stall = None;
                return Ok(true);
            }
            Ok(false) => {}
            Err(lost) => return Err(Event::ClientGone(lost)),
        }
        if let Some(limit) = self.stall_timeout
            && self.s.buf.len() >= MAX_BUFFERED
        {
            let timer = self
                .stall
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            if timer.as_mut().poll(cx).is_ready() {
                self.stall = None;
                return Err(Event::ClientStalled);
            }
        }
        Ok(false)
    }
}

/// Writes what `half` has ready until the socket would block. Ok(true) if anything was
/// written; Err says why the peer is gone.
pub(super) fn write_out(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    half: &mut Half,
) -> Result<bool, Lost> {
    let mut wrote = false;
    while half.has_output() {
        let written = match half.output_parts() {
            [out, walked]
                if !out.is_empty() && !walked.is_empty() && stream.is_write_vectored() =>
            {
                let parts = [std::io::IoSlice::new(out), std::io::IoSlice::new(walked)];
                Pin::new(&mut *stream).poll_write_vectored(cx, &parts)
            }
            _ => Pin::new(&mut *stream).poll_write(cx, half.output()),
        };
        match written {
            Poll::Ready(Ok(0)) => return Err(Lost::Closed),
            Poll::Ready(Err(e)) => return Err(Lost::of(&e)),
            Poll::Ready(Ok(n)) => {
                half.consume_output(n);
                wrote = true;
            }
            Poll::Pending => break,
        }
    }
    // TLS keeps bytes a write accepted until its records reach the socket; plaintext's
    // flush is a no-op, not called.
    if !stream.is_plain()
        && let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(cx)
    {
        return Err(Lost::of(&e));
    }
    Ok(wrote)
}

/// One read into the spare room of `buf`, growing it to a read-sized chunk first.
pub(super) fn read_into(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() == 0 {
        *buf = half::spare_buffer(READ_CHUNK);
    } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let n = ready!(poll_read_buf(Pin::new(stream), cx, buf))?;
    Poll::Ready(Ok(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Socket, Type};

    /// A Stream over a socket that keeps each write's boundary (SOCK_SEQPACKET), and its peer.
    fn packet_pair() -> (Stream, Socket) {
        let (ours, peer) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).expect("socketpair");
        ours.set_nonblocking(true).expect("nonblocking");
        let std = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(ours));
        let stream = tokio::net::UnixStream::from_std(std).expect("register");
        (Stream::Unix(stream), peer)
    }

    fn packet(peer: &Socket) -> Vec<u8> {
        let mut buf = [std::mem::MaybeUninit::new(0u8); 64];
        let n = peer.recv(&mut buf).expect("recv");
        buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect()
    }

    /// A renamed Bind's head (or the proxy's own statement) and the client's bytes walked
    /// after it leave in one write: two would wake the server twice per statement.
    #[tokio::test]
    async fn a_change_and_the_bytes_after_it_leave_in_one_write() {
        let (mut stream, peer) = packet_pair();
        let mut half = Half::default();
        half.buf.extend_from_slice(b"BODYrest");
        half.pos = 4;
        half.out.extend_from_slice(b"HEAD");
        // A new registration learns it is writable from the reactor: wait until it wrote.
        std::future::poll_fn(|cx| match write_out(cx, &mut stream, &mut half) {
            Ok(false) => Poll::Pending,
            done => Poll::Ready(done),
        })
        .await
        .expect("written");
        assert_eq!(packet(&peer), b"HEADBODY");
        assert_eq!(
            (&half.buf[..], half.pos, half.out.is_empty()),
            (&b"rest"[..], 0, true)
        );
    }
}
