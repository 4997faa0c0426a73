//! The audit log: one JSON line per connection event (accepted, tls, authenticated,
//! refused, disconnected), with a timestamp, the connection id every log line of that
//! connection carries, the source address, and user, database and pool where known. Never a
//! password or token: only names, methods, SQLSTATEs and the messages clients are sent.
//!
//! Lines go through a channel to one writer task that batches them (written and flushed when
//! the channel runs dry), so connections never wait on the disk. A full channel makes the
//! connection setup wait rather than drop a line, and graceful shutdown flushes everything.

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// Lines that may wait for the writer.
const QUEUE: usize = 65_536;

/// Where the lines go.
pub use crate::config::AuditDestination as Destination;

enum Msg {
    Line(String),
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
pub struct Audit {
    tx: Option<mpsc::Sender<Msg>>,
}

impl Audit {
    /// Starts the writer (on the current runtime). A file is opened for appending first, so
    /// a path that cannot be written is an error at startup.
    pub async fn start(dest: Option<&Destination>) -> std::io::Result<Audit> {
        let Some(dest) = dest else {
            return Ok(Audit::default());
        };
        let out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match dest {
            Destination::Stdout => Box::new(tokio::io::stdout()),
            Destination::File(p) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .await
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("audit log {}: {e}", p.display()))
                    })?,
            ),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, tokio::io::BufWriter::new(out)));
        Ok(Audit { tx: Some(tx) })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Records `event` for connection `conn` with `fields` (a JSON object).
    pub async fn event(&self, event: &str, conn: u64, fields: Value) {
        let Some(tx) = &self.tx else { return };
        let text = line(event, conn, fields);
        if let Err(mpsc::error::TrySendError::Full(m)) = tx.try_send(Msg::Line(text)) {
            let _ = tx.send(m).await;
        }
    }

    /// A handle for lines written where nothing may wait (the relay), when the log is on.
    pub fn sink(&self) -> Option<Sink> {
        self.tx.clone().map(Sink)
    }

    /// Waits until every line recorded so far is written and flushed.
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (ack, done) = oneshot::channel();
        if tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// One audit line: the timestamp, the event, the connection, then `fields`.
fn line(event: &str, conn: u64, fields: Value) -> String {
    let mut line = Map::new();
    line.insert(
        "ts".into(),
        crate::stats::format_rfc3339(crate::stats::unix_micros()).into(),
    );
    line.insert("event".into(), event.into());
    line.insert("conn".into(), conn.into());
    if let Value::Object(f) = fields {
        line.extend(f);
    }
    Value::Object(line).to_string()
}

/// Writes lines without waiting: a line that finds the queue full (65,536 waiting) is
/// dropped with a warning rather than stalling a client's relay.
#[derive(Clone)]
pub struct Sink(mpsc::Sender<Msg>);

impl Sink {
    pub fn event(&self, event: &str, conn: u64, fields: Value) {
        if self
            .0
            .try_send(Msg::Line(line(event, conn, fields)))
            .is_err()
        {
            tracing::warn!(conn, event, "audit queue full: line dropped");
        }
    }
}

async fn write_lines(
    mut rx: mpsc::Receiver<Msg>,
    mut out: tokio::io::BufWriter<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Everything already queued goes out in one flush.
        while let Some(m) = next.take().or_else(|| rx.try_recv().ok()) {
            match m {
                Msg::Line(l) => {
                    if out.write_all(l.as_bytes()).await.is_err()
                        || out.write_all(b"\n").await.is_err()
                    {
                        tracing::warn!("audit log write failed");
                    }
                }
                Msg::Flush(ack) => {
                    let _ = out.flush().await;
                    let _ = ack.send(());
                }
            }
        }
        if out.flush().await.is_err() {
            tracing::warn!("audit log flush failed");
        }
    }
}

/// The fields of a refusal: its SQLSTATE and the message the client was sent.
pub fn refusal(code: &str, message: &str) -> Value {
    json!({ "code": code, "reason": message })
}
