//! Transaction mode: the session settings a client's statements may change, noted so that
//! they are read back before its server is let go.

use super::*;

impl Relay {
    /// Transaction mode: notes the settings a Query or Parse text may change (the lexer runs
    /// only on texts that contain "set" at all).
    pub(super) fn note_settings(
        &mut self,
        at: usize,
        len: usize,
        mentions: Mentions,
    ) -> Result<Option<Box<[String]>>, Unsupported> {
        let text = &self.c.buf[at..at + len];
        if mentions.reserved && crate::sql::session::addresses_statements(text) {
            return Err(Unsupported::ReservedName);
        }
        if !mentions.may_touch() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(text.strip_suffix(&[0]).unwrap_or(text));
        let t = crate::sql::session::scan(&text);
        if t.listen {
            return Err(Unsupported::Listen);
        }
        if !t.any {
            return Ok(None);
        }
        let names: Box<[String]> = t.names.into();
        self.mark_settings(&names);
        Ok(Some(names))
    }

    /// The same for a Parse: its query text follows the statement name.
    pub(super) fn note_parse_settings(
        &mut self,
        h: &Header,
    ) -> Result<Option<Box<[String]>>, Unsupported> {
        let body = &self.c.buf[h.start + 5..h.start + 5 + h.body_len];
        let Some(name_end) = body.iter().position(|&b| b == 0) else {
            return Ok(None);
        };
        let query_len = body[name_end + 1..]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(0);
        let at = h.start + 5 + name_end + 1;
        let mentions = Mentions::of(&self.c.buf[at..at + query_len]);
        self.note_settings(at, query_len, mentions)
    }

    pub(super) fn mark_settings(&mut self, names: &[String]) {
        self.srv.session_dirty = true;
        let touched = self.touched.get_or_insert_with(Default::default);
        for n in names {
            if !touched.contains(n) {
                touched.push(n.clone());
            }
        }
    }

    /// Setting names the client's statements touched since the last call.
    pub fn take_touched(&mut self) -> Vec<String> {
        self.touched.take().map_or_else(Vec::new, |t| *t)
    }
}
