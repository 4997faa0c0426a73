//! LISTEN for transaction-mode clients: one dedicated server connection per database holds
//! every channel any client listens on, and fans NotificationResponse messages out to the
//! subscribed clients, who get them between their transactions as PostgreSQL delivers them.
//! If that connection drops it is reopened and re-LISTENs; notifications sent meanwhile are
//! lost (as they would be for a direct connection that dropped).

use super::connect::{self, Upstream};
use crate::error::ClientError;
use crate::net::stream::read_message;
use crate::proto::emit;
use crate::proto::tag::backend as be;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Notifications a client may have waiting before the newest are dropped.
pub const CLIENT_QUEUE: usize = 1024;

type Subscribers = HashMap<String, Vec<(u64, mpsc::Sender<Bytes>)>>;

enum HubCmd {
    Listen(String, oneshot::Sender<Result<(), ClientError>>),
    Unlisten(String),
}

pub struct NotifyHub {
    subscribers: Arc<Mutex<Subscribers>>,
    cmds: mpsc::UnboundedSender<HubCmd>,
}

fn lock(m: &Mutex<Subscribers>) -> std::sync::MutexGuard<'_, Subscribers> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl NotifyHub {
    pub fn start(upstream: Arc<Upstream>, connect_timeout: Duration) -> Arc<NotifyHub> {
        let subscribers = Arc::new(Mutex::new(Subscribers::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(upstream, connect_timeout, subscribers.clone(), rx));
        Arc::new(NotifyHub {
            subscribers,
            cmds: tx,
        })
    }

    /// Subscribes client `id`; the hub's connection LISTENs on the channel first if it is new.
    pub async fn listen(
        &self,
        channel: &str,
        id: u64,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<(), ClientError> {
        let first = {
            let mut subs = lock(&self.subscribers);
            let list = subs.entry(channel.to_owned()).or_default();
            if list.iter().any(|(c, _)| *c == id) {
                return Ok(());
            }
            list.push((id, tx));
            list.len() == 1
        };
        if !first {
            return Ok(());
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        let sent = self
            .cmds
            .send(HubCmd::Listen(channel.to_owned(), ack_tx))
            .is_ok();
        let result = match (sent, ack_rx.await) {
            (true, Ok(r)) => r,
            _ => Err(ClientError::server_unavailable(
                "LISTEN: the notification connection is unavailable",
            )),
        };
        if result.is_err() {
            self.unlisten(channel, id);
        }
        result
    }

    /// Unsubscribes client `id` from `channel`; the last one out UNLISTENs.
    pub fn unlisten(&self, channel: &str, id: u64) {
        let mut subs = lock(&self.subscribers);
        if let Some(list) = subs.get_mut(channel) {
            list.retain(|(c, _)| *c != id);
            if list.is_empty() {
                subs.remove(channel);
                let _ = self.cmds.send(HubCmd::Unlisten(channel.to_owned()));
            }
        }
    }

    pub fn unlisten_all(&self, channels: &[String], id: u64) {
        for c in channels {
            self.unlisten(c, id);
        }
    }
}

/// The hub's connection: LISTEN/UNLISTEN on command, notifications out to subscribers.
async fn run(
    upstream: Arc<Upstream>,
    connect_timeout: Duration,
    subscribers: Arc<Mutex<Subscribers>>,
    mut cmds: mpsc::UnboundedReceiver<HubCmd>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Wait for something to do before opening a connection.
        let first = match cmds.recv().await {
            Some(c) => c,
            None => return,
        };
        // NOTIFY runs on the primary, and LISTEN is refused during recovery.
        let primary = Some(crate::config::SessionAttrs::Primary);
        let mut conn = match connect::establish_own(&upstream, connect_timeout, primary).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "notification connection failed");
                if let HubCmd::Listen(_, ack) = first {
                    let _ = ack.send(Err(e.to_client()));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Re-LISTEN whatever clients still want (after a reconnect), then the first command.
        let mut acks: VecDeque<Option<oneshot::Sender<Result<(), ClientError>>>> = VecDeque::new();
        let mut out = BytesMut::new();
        let existing: Vec<String> = lock(&subscribers).keys().cloned().collect();
        let mut pending = vec![first];
        for ch in existing {
            if !matches!(&pending[0], HubCmd::Listen(c, _) if *c == ch) {
                emit::query(&mut out, &format!("LISTEN {}", quote_ident(&ch)));
                acks.push_back(None);
            }
        }
        let mut buf = BytesMut::with_capacity(4096);
        let mut failure: Option<ClientError> = None;
        'conn: loop {
            for cmd in pending.drain(..) {
                match cmd {
                    HubCmd::Listen(ch, ack) => {
                        emit::query(&mut out, &format!("LISTEN {}", quote_ident(&ch)));
                        acks.push_back(Some(ack));
                    }
                    HubCmd::Unlisten(ch) => {
                        emit::query(&mut out, &format!("UNLISTEN {}", quote_ident(&ch)));
                        acks.push_back(None);
                    }
                }
            }
            if !out.is_empty() {
                if conn.stream.send(&out).await.is_err() {
                    break 'conn;
                }
                out.clear();
            }
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(c) => pending.push(c),
                    None => return,
                },
                msg = read_message(&mut conn.stream, &mut buf, 1 << 20) => {
                    let Ok((tag, body)) = msg else { break 'conn };
                    match tag {
                        be::NOTIFICATION_RESPONSE => dispatch(&subscribers, &body),
                        be::ERROR_RESPONSE => failure = Some(ClientError::from_server(&body)),
                        be::READY_FOR_QUERY => {
                            if let Some(Some(ack)) = acks.pop_front() {
                                let _ = ack.send(failure.take().map_or(Ok(()), Err));
                            }
                            failure = None;
                        }
                        _ => {}
                    }
                }
            }
        }
        tracing::warn!("notification connection lost; reopening");
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(Err(ClientError::server_lost()));
        }
    }
}

/// Sends a NotificationResponse, as the server wrote it, to every subscriber of its channel.
fn dispatch(subscribers: &Mutex<Subscribers>, body: &[u8]) {
    // Body: Int32 pid, channel NUL, payload NUL.
    let Some(channel) = body.get(4..).and_then(|r| r.split(|&b| b == 0).next()) else {
        return;
    };
    let Ok(channel) = std::str::from_utf8(channel) else {
        return;
    };
    let mut msg = BytesMut::with_capacity(body.len() + 5);
    emit::message(&mut msg, be::NOTIFICATION_RESPONSE, |b| {
        b.extend_from_slice(body)
    });
    let msg = msg.freeze();
    let subs = lock(subscribers);
    for (id, tx) in subs.get(channel).into_iter().flatten() {
        if tx.try_send(msg.clone()).is_err() {
            tracing::warn!(
                client = id,
                channel,
                "client notification queue full: notification dropped"
            );
        }
    }
}
