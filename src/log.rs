//! JSON log lines, written straight into the line buffer. tracing-subscriber's own JSON format
//! serializes every field through serde and parses each span's fields back from text for
//! every line; with one line per login that was a quarter of the proxy's instructions per
//! `-C` connection (docs/benchmarks.md). The lines keep that format's shape:
//! `{"timestamp":..,"level":..,"fields":{"message":..,..},"target":..,"span":{..,"name":..}}`.

use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format.
pub struct Json;

/// How span fields are kept: already as JSON members (`"id":1,"mode":"session"`), so a line
/// copies them instead of formatting them again.
pub struct JsonFields;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        crate::stats::write_rfc3339(&mut w, crate::stats::unix_micros())?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_str("\",\"fields\":{")?;
        let mut members = Members::new(&mut w);
        event.record(&mut members);
        members.result?;
        w.write_str("},\"target\":")?;
        string(&mut w, meta.target())?;
        if let Some(span) = ctx.lookup_current() {
            w.write_str(",\"span\":{")?;
            let ext = span.extensions();
            if let Some(f) = ext.get::<FormattedFields<N>>().filter(|f| !f.is_empty()) {
                w.write_str(f)?;
                w.write_char(',')?;
            }
            w.write_str("\"name\":")?;
            string(&mut w, span.name())?;
            w.write_char('}')?;
        }
        w.write_str("}\n")
    }
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        let mut members = Members::new(&mut w);
        fields.record(&mut members);
        members.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut members = Members::new(&mut current.fields);
        members.first = members.w.is_empty();
        fields.record(&mut members);
        members.result
    }
}

/// Writes fields as JSON object members, comma-separated.
struct Members<'a, W: Write> {
    w: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<'a, W: Write> Members<'a, W> {
    fn new(w: &'a mut W) -> Self {
        Members {
            w,
            first: true,
            result: Ok(()),
        }
    }

    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.w.write_char(',')?;
            }
            string(self.w, field.name())?;
            self.w.write_char(':')?;
            value(self.w)
        })();
    }
}

impl<W: Write> Visit for Members<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| string(w, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.member(field, |w| write!(w, "{value}"));
        } else {
            self.member(field, |w| write!(w, "\"{value}\""));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// Field formatting for the text format: `name=value` as tracing-subscriber writes them, with
/// control characters escaped, so a value a client chose (a user name with a newline, an
/// ANSI escape) cannot forge or hide log lines.
pub struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = TextVisitor {
            w: &mut w,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct TextVisitor<'a, W: Write> {
    w: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: Write> Visit for TextVisitor<'_, W> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.w.write_char(' ')?;
            }
            if field.name() != "message" {
                write!(self.w, "{}=", field.name())?;
            }
            write!(Controls(&mut *self.w), "{value:?}")
        })();
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // As the default text format: quoted, with Debug's escapes, except the message.
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// Escapes control characters (`\n`, `\u{1b}`, ...) in what goes through it.
struct Controls<'a, W: Write + ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for Controls<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if c.is_control() {
                self.0.write_str(&s[plain..i])?;
                write!(self.0, "{}", c.escape_default())?;
                plain = i + c.len_utf8();
            }
        }
        self.0.write_str(&s[plain..])
    }
}

/// A JSON string literal.
fn string<W: Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what goes through it for the inside of a JSON string.
struct Escaped<'a, W: Write + ?Sized>(&'a mut W);

impl<W: Write + ?Sized> Write for Escaped<'_, W> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        // Everything to escape is ASCII, so a byte scan never splits a character; plain runs
        // are found by a tight scan and written whole (a login's line is mostly plain).
        while let Some(i) = s.bytes().position(|b| b < 0x20 || b == b'"' || b == b'\\') {
            self.0.write_str(&s[..i])?;
            let b = s.as_bytes()[i];
            match b {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                _ => write!(self.0, "\\u{b:04x}")?,
            }
            s = &s[i + 1..];
        }
        self.0.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::prelude::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `log` writes through a subscriber made of `layer` and a capturing writer.
    fn captured<L>(layer: impl FnOnce(Lines) -> L, log: impl FnOnce()) -> String
    where
        L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync,
    {
        let out = Lines::default();
        let subscriber = tracing_subscriber::registry().with(layer(out.clone()));
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn text_lines_escape_control_characters() {
        let layer = |w: Lines| {
            tracing_subscriber::fmt::layer()
                .fmt_fields(TextFields)
                .with_ansi(false)
                .with_writer(move || w.clone())
        };
        let text = captured(layer, || {
            let user = "mallory\n2026-12-02T00:00:00Z  INFO forged line\u{1b}[2J";
            tracing::info!(user = %user, name = "a\rb", n = 3u64, "client logged in");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(
                r"client logged in user=mallory\n2026-12-02T00:00:00Z  INFO forged line\u{1b}[2J"
            ),
            "{text}"
        );
        assert!(text.contains(r#"name="a\rb" n=3"#), "{text}");
    }

    #[test]
    fn lines_are_json_with_fields_and_span() {
        let layer = |w: Lines| {
            tracing_subscriber::fmt::layer()
                .event_format(Json)
                .fmt_fields(JsonFields)
                .with_writer(move || w.clone())
        };
        let text = captured(layer, || {
            let span = tracing::info_span!("conn", id = 7u64, mode = "session");
            let _e = span.enter();
            let peer = "127.0.0.1:5432";
            tracing::info!(conn = 7u64, %peer, ok = true, n = -3i64, "quote \" and\nnewline \u{1}");
            drop(_e);
            tracing::warn!("outside");
        });
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["fields"]["message"], "quote \" and\nnewline \u{1}");
        assert_eq!(first["fields"]["conn"], 7);
        assert_eq!(first["fields"]["peer"], "127.0.0.1:5432");
        assert_eq!(first["fields"]["ok"], true);
        assert_eq!(first["fields"]["n"], -3);
        assert_eq!(first["span"]["id"], 7);
        assert_eq!(first["span"]["mode"], "session");
        assert_eq!(first["span"]["name"], "conn");
        assert_eq!(first["target"], "pgsluice::log::tests");
        let ts = first["timestamp"].as_str().unwrap();
        assert!(ts.len() == 27 && ts.ends_with('Z'), "{ts}");
        assert_eq!(lines[1]["fields"]["message"], "outside");
        assert!(lines[1].get("span").is_none());
    }
}
