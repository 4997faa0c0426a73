//! A transaction-mode login's session parameters (the pool's defaults with what the client
//! sent over them) and the ParameterStatus messages that tell the client, remembered for the
//! last login on this thread. A fleet of clients that connect alike (serverless agents,
//! `pgbench -C`) then merges, compares, interns and encodes thirteen parameters once, not at
//! every login: that work was an eighth of a login's instructions.
//!
//! A remembered result is reused only for the very same defaults (the same shared list,
//! held here so its address cannot be reused) and a client that sent equal parameters, so
//! no client can be given what another sent.

use crate::backend::params::{Params, SessionParams};
use crate::proto::emit;
use bytes::BytesMut;
use std::cell::RefCell;

/// The last merge that needed no server: its inputs and its result.
struct Merge {
    defaults: SessionParams,
    client: SessionParams,
    merged: SessionParams,
}

thread_local! {
    static LAST_MERGE: RefCell<Option<Merge>> = const { RefCell::new(None) };
    /// The last reported list encoded, with the list (held: compared by address).
    static LAST_STATUS: RefCell<Option<(Params, BytesMut)>> = const { RefCell::new(None) };
}

fn same(a: &SessionParams, b: &SessionParams) -> bool {
    a.reported.shares(&b.reported) && a.unreported.shares(&b.unreported)
}

/// What the last login merged from these very defaults and equal client parameters.
pub(super) fn remembered(
    defaults: &SessionParams,
    client: &SessionParams,
) -> Option<SessionParams> {
    LAST_MERGE.with_borrow(|last| {
        last.as_ref()
            .filter(|m| same(&m.defaults, defaults) && m.client == *client)
            .map(|m| m.merged.clone())
    })
}

/// Keeps a merge that needed no server for the next login.
pub(super) fn remember(defaults: SessionParams, client: SessionParams, merged: SessionParams) {
    LAST_MERGE.set(Some(Merge {
        defaults,
        client,
        merged,
    }));
}

/// A ParameterStatus message for every reported parameter, encoded once per list.
pub(super) fn write_status(out: &mut BytesMut, reported: &Params) {
    LAST_STATUS.with_borrow_mut(|last| {
        if let Some((list, encoded)) = last.as_ref()
            && list.shares(reported)
        {
            out.extend_from_slice(encoded);
            return;
        }
        let mut encoded = BytesMut::new();
        for (k, v) in reported.iter() {
            emit::parameter_status(&mut encoded, k, v);
        }
        out.extend_from_slice(&encoded);
        *last = Some((reported.clone(), encoded));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(app: &str) -> SessionParams {
        SessionParams::from_startup(&[("application_name".into(), app.into())])
    }

    fn defaults() -> SessionParams {
        SessionParams::from_startup(&[
            ("application_name".into(), String::new()),
            ("TimeZone".into(), "UTC".into()),
        ])
    }

    #[test]
    fn only_the_same_defaults_and_equal_client_parameters_get_a_remembered_merge() {
        let base = defaults();
        let mut merged = base.clone();
        merged.reported.set("application_name", "agent-a");
        remember(base.clone(), client("agent-a"), merged.clone());
        assert_eq!(remembered(&base, &client("agent-a")), Some(merged));
        // Another client's name is never handed out.
        assert_eq!(remembered(&base, &client("agent-b")), None);
        // Equal defaults in another list (a pool whose servers changed): computed again.
        assert_eq!(remembered(&defaults(), &client("agent-a")), None);
    }

    #[test]
    fn status_messages_are_those_of_the_list_given() {
        let loop_of = |p: &Params| {
            let mut b = BytesMut::new();
            for (k, v) in p.iter() {
                emit::parameter_status(&mut b, k, v);
            }
            b
        };
        let a = defaults().reported;
        let mut b = a.clone();
        b.set("application_name", "other");
        for list in [&a, &a, &b, &a] {
            let mut out = BytesMut::from(&b"x"[..]);
            write_status(&mut out, list);
            assert_eq!(&out[1..], &loop_of(list)[..]);
        }
    }
}
