//! Statement names: renaming, answers the proxy gives itself, eviction, and the hand-over reset.

use super::*;

#[tokio::test]
async fn a_named_statement_is_renamed_on_the_server_and_answered_from_it_later() {
    let mut r = Rig::new(true).await;
    let name = server_name("SELECT 1");
    r.client_sends(&cat(&[parse("s1", "SELECT 1"), sync()]))
        .await;
    r.expect_server(&cat(&[parse(&name, "SELECT 1"), sync()]))
        .await;
    r.server_sends(&cat(&[parse_complete(), ready(b'I')])).await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
    // Bound by its client name: the server sees the keyed name.
    r.client_sends(&cat(&[bind("", "s1"), execute(), sync()]))
        .await;
    r.expect_server(&cat(&[bind("", &name), execute(), sync()]))
        .await;
}

#[tokio::test]
async fn a_second_parse_of_the_same_text_replaces_the_older_copy_on_the_server() {
    let mut r = Rig::new(true).await;
    let name = server_name("SELECT 1");
    r.client_sends(&cat(&[parse("a", "SELECT 1"), sync()]))
        .await;
    r.server_sends(&cat(&[parse_complete(), ready(b'I')])).await;
    r.expect_server(&cat(&[parse(&name, "SELECT 1"), sync()]))
        .await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
    // Same text under another client name: the server's copy predates this Parse (a schema
    // change in between would give it another result type), so it is parsed again.
    r.client_sends(&cat(&[parse("b", "SELECT 1"), sync()]))
        .await;
    r.expect_server(&cat(&[
        close_statement(&name),
        parse(&name, "SELECT 1"),
        sync(),
    ]))
    .await;
    r.server_sends(&cat(&[m(b'3', &[]), parse_complete(), ready(b'I')]))
        .await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
    // Both client names now run on that copy without another Parse.
    r.client_sends(&cat(&[
        bind("", "a"),
        execute(),
        bind("", "b"),
        execute(),
        sync(),
    ]))
    .await;
    r.expect_server(&cat(&[
        bind("", &name),
        execute(),
        bind("", &name),
        execute(),
        sync(),
    ]))
    .await;
}

#[tokio::test]
async fn binding_an_unknown_statement_is_refused_by_the_proxy() {
    let mut r = Rig::new(true).await;
    r.client_sends(&cat(&[bind("", "nope"), execute(), sync()]))
        .await;
    // Nothing reaches the server but the Sync that ends the pipeline.
    r.expect_server(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    let got = r.read_until(false, &ready(b'I')).await;
    let shown = show(&got);
    assert!(
        shown[0].starts_with("E:") && shown[0].contains("26000"),
        "{shown:?}"
    );
    assert_eq!(shown.last().map(String::as_str), Some("Z:I"));
}

#[tokio::test]
async fn sql_prepare_retires_the_server() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("PREPARE p AS SELECT 1")).await;
    r.server_sends(&cat(&[complete("PREPARE"), ready(b'I')]))
        .await;
    assert_eq!(
        r.last_event().await,
        Some(&Event::Release {
            clean: false,
            resync: false
        })
    );
    assert!(!r.relay.server_reusable());
}

#[tokio::test]
async fn statements_under_the_proxys_names_are_refused_in_sql() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("EXECUTE pgsluice_abc")).await;
    let got = r.read_until(false, &ready(b'I')).await;
    let shown = show(&got);
    assert!(shown[0].contains("42501"), "{shown:?}");
    r.expect_server(&[]).await;
}

#[tokio::test]
async fn deallocate_of_a_client_statement_is_answered_by_the_proxy() {
    let mut r = Rig::new(true).await;
    prepared(&mut r, "s1", "SELECT 1").await;
    r.client_sends(&query("DEALLOCATE s1")).await;
    r.expect_client(&cat(&[complete("DEALLOCATE"), ready(b'I')]))
        .await;
    // Gone for the client: binding it is refused, and only the Sync reaches a server.
    r.client_sends(&cat(&[bind("", "s1"), execute(), sync()]))
        .await;
    r.expect_server(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    let got = r.read_until(false, &ready(b'I')).await;
    assert!(show(&got)[0].contains("26000"), "{:?}", show(&got));
}

#[tokio::test]
async fn closing_a_statement_keeps_it_on_the_server_for_others() {
    let mut r = Rig::new(true).await;
    prepared(&mut r, "s1", "SELECT 1").await;
    r.client_sends(&cat(&[close_statement("s1"), sync()])).await;
    // Only the Sync reaches the server; the CloseComplete is the proxy's.
    r.expect_server(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    r.expect_client(&cat(&[m(b'3', &[]), ready(b'I')])).await;
    assert_eq!(r.server.as_ref().map(|s| s.statements.len()), Some(1));
}

#[tokio::test]
async fn describe_of_a_statement_goes_to_its_server_name() {
    let mut r = Rig::new(true).await;
    prepared(&mut r, "s1", "SELECT 1").await;
    r.client_sends(&cat(&[describe(b'S', "s1"), sync()])).await;
    r.expect_server(&cat(&[describe(b'S', &server_name("SELECT 1")), sync()]))
        .await;
    let reply = cat(&[m(b't', &[0, 0]), m(b'T', &[0, 0]), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
}

#[tokio::test]
async fn the_unnamed_statement_of_someone_else_cannot_be_bound() {
    let mut r = Rig::new(true).await;
    // No Parse of the unnamed statement in this attachment.
    r.client_sends(&cat(&[bind("", ""), execute(), sync()]))
        .await;
    r.expect_server(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    let got = r.read_until(false, &ready(b'I')).await;
    assert!(show(&got)[0].contains("26000"), "{:?}", show(&got));
}

#[tokio::test]
async fn the_least_recently_used_statement_is_closed_to_make_room() {
    let mut r = Rig::new(true).await;
    r.relay.max_prepared = 1;
    prepared(&mut r, "a", "SELECT 1").await;
    r.client_sends(&cat(&[parse("b", "SELECT 2"), sync()]))
        .await;
    r.expect_server(&cat(&[
        close_statement(&server_name("SELECT 1")),
        parse(&server_name("SELECT 2"), "SELECT 2"),
        sync(),
    ]))
    .await;
    // The CloseComplete is the proxy's own: dropped.
    r.server_sends(&cat(&[m(b'3', &[]), parse_complete(), ready(b'I')]))
        .await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
}

#[tokio::test]
async fn an_evicted_statement_is_prepared_again_when_used() {
    let mut r = Rig::new(true).await;
    r.relay.max_prepared = 1;
    prepared(&mut r, "a", "SELECT 1").await;
    r.client_sends(&cat(&[parse("b", "SELECT 2"), sync()]))
        .await;
    r.server_sends(&cat(&[m(b'3', &[]), parse_complete(), ready(b'I')]))
        .await;
    r.expect_server(&cat(&[
        close_statement(&server_name("SELECT 1")),
        parse(&server_name("SELECT 2"), "SELECT 2"),
        sync(),
    ]))
    .await;
    r.expect_client(&cat(&[parse_complete(), ready(b'I')]))
        .await;
    // `a` again: SELECT 2 goes, SELECT 1 comes back, then the Bind.
    r.client_sends(&cat(&[bind("", "a"), execute(), sync()]))
        .await;
    r.expect_server(&cat(&[
        close_statement(&server_name("SELECT 2")),
        parse(&server_name("SELECT 1"), "SELECT 1"),
        bind("", &server_name("SELECT 1")),
        execute(),
        sync(),
    ]))
    .await;
    r.server_sends(&cat(&[
        m(b'3', &[]),
        parse_complete(),
        bind_complete(),
        row("1"),
        complete("SELECT 1"),
        ready(b'I'),
    ]))
    .await;
    r.expect_client(&cat(&[
        bind_complete(),
        row("1"),
        complete("SELECT 1"),
        ready(b'I'),
    ]))
    .await;
}

#[tokio::test]
async fn a_close_the_server_skipped_after_an_error_is_sent_again() {
    let mut r = Rig::new(true).await;
    let name = server_name("SELECT 1");
    prepared(&mut r, "s1", "SELECT 1").await;
    // An error ahead of a second Parse of the same text: the server skips the proxy's Close
    // of its older copy, and the Parse after it.
    r.client_sends(&cat(&[
        parse("", "SELECT 1/0"),
        bind("", ""),
        execute(),
        parse("s2", "SELECT 1"),
        sync(),
    ]))
    .await;
    r.expect_server(&cat(&[
        parse("", "SELECT 1/0"),
        bind("", ""),
        execute(),
        close_statement(&name),
        parse(&name, "SELECT 1"),
        sync(),
    ]))
    .await;
    r.server_sends(&cat(&[
        parse_complete(),
        bind_complete(),
        error("22012"),
        ready(b'I'),
    ]))
    .await;
    let got = show(&r.read_until(false, &ready(b'I')).await);
    assert!(got[2].contains("22012"), "{got:?}");
    // The server still has its older copy: it is closed before it is parsed again (a Parse
    // alone would be refused with 42P05 on every use from now on).
    r.client_sends(&cat(&[bind("", "s1"), execute(), sync()]))
        .await;
    r.expect_server(&cat(&[
        close_statement(&name),
        parse(&name, "SELECT 1"),
        bind("", &name),
        execute(),
        sync(),
    ]))
    .await;
}

#[tokio::test]
async fn the_handover_reset_goes_ahead_of_the_clients_message_and_its_replies_are_dropped() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    r.client_sends(&query("SELECT 1")).await;
    let got = r.read_until(true, &query("SELECT 1")).await;
    let shown = show(&got);
    assert!(
        shown[0].starts_with("Q:BEGIN; RESET ALL; COMMIT; PREPARE pgsluice_w_"),
        "{shown:?}"
    );
    assert!(shown[1].starts_with("D:Spgsluice_w_"), "{shown:?}");
    assert!(shown[2].starts_with("C:Spgsluice_w_"), "{shown:?}");
    assert_eq!(shown[3], "Q:SELECT 1\0");
    // The reset's replies, the witness's, then the client's own.
    let own = cat(&[
        complete("RESET"),
        complete("PREPARE"),
        ready(b'I'),
        m(b't', &[0, 0]),
        m(b'T', &[0, 0]),
        m(b'3', &[]),
    ]);
    let mine = cat(&[row("1"), complete("SELECT 1"), ready(b'I')]);
    r.server_sends(&cat(&[own, mine.clone()])).await;
    r.expect_client(&mine).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn a_reset_that_did_not_finish_stops_the_clients_work() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    r.client_sends(&query("SELECT 'secret'")).await;
    // Canceled during the reset: its error, then the witness is missing.
    r.server_sends(&cat(&[error("57014"), ready(b'I'), error("26000")]))
        .await;
    assert_eq!(r.last_event().await, Some(&Event::HandoverFailed));
    assert!(!r.relay.handover_ended_by_server());
    r.expect_client(&[]).await;
}

/// The server shut down during the hand-over (its FATAL where the witness's Describe was
/// owed): the client's work never ran, and it is told the server went away, not that a
/// cancel or its claims failed.
#[tokio::test]
async fn a_server_ending_during_the_reset_is_reported_as_lost() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    r.client_sends(&query("SELECT 'secret'")).await;
    r.server_sends(&cat(&[
        complete("RESET"),
        complete("PREPARE"),
        ready(b'I'),
        fatal("57P01"),
    ]))
    .await;
    assert_eq!(r.last_event().await, Some(&Event::HandoverFailed));
    assert!(r.relay.handover_ended_by_server());
    r.expect_client(&[]).await;
}

#[tokio::test]
async fn a_reset_followed_by_a_refused_query_ends_the_witness_transaction_before_release() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    r.client_sends(&query("BEGIN; LISTEN jobs")).await;
    // Nothing of the client's reaches the server: the reset, the witness, and the proxy's own
    // Sync that ends the witness's transaction (and makes the server send its replies).
    let to_server = show(&r.read_until(true, &sync()).await);
    assert_eq!(to_server.len(), 4, "{to_server:?}");
    assert!(to_server[0].starts_with("Q:BEGIN; RESET ALL; COMMIT; PREPARE"));
    assert!(to_server[2].starts_with("C:Spgsluice_w_"));
    assert_eq!(to_server[3], "S:");
    let own = cat(&[
        complete("RESET"),
        complete("PREPARE"),
        ready(b'I'),
        m(b't', &[0, 0]),
        m(b'T', &[0, 0]),
        m(b'3', &[]),
    ]);
    r.server_sends(&own).await;
    let got = show(&r.read_until(false, &ready(b'I')).await);
    assert!(got[0].contains("0A000"), "{got:?}");
    assert!(
        r.events.is_empty(),
        "not let go before the Sync's ReadyForQuery"
    );
    assert!(!r.relay.server_reusable());
    // The Sync's ReadyForQuery is the proxy's: dropped.
    r.server_sends(&ready(b'I')).await;
    r.expect_release(true).await;
    r.expect_client(&[]).await;
}

fn witness_replies() -> Vec<u8> {
    cat(&[
        complete("RESET"),
        complete("PREPARE"),
        ready(b'I'),
        m(b't', &[0, 0]),
        m(b'T', &[0, 0]),
        m(b'3', &[]),
    ])
}

#[tokio::test]
async fn after_a_failed_reset_nothing_past_the_first_sync_reaches_the_server() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    let group = |sql: &str| cat(&[parse("", sql), bind("", ""), execute(), sync()]);
    r.client_sends(&cat(&[group("SELECT 1"), group("SELECT 'second'")]))
        .await;
    // PostgreSQL would skip the first group only: the second must not have left the proxy.
    let to_server = show(&r.read_until(true, &sync()).await);
    assert_eq!(to_server.len(), 7, "{to_server:?}");
    assert_eq!(to_server[6], "S:");
    r.server_sends(&cat(&[
        error("57014"),
        ready(b'I'),
        error("26000"),
        ready(b'I'),
    ]))
    .await;
    assert_eq!(r.last_event().await, Some(&Event::HandoverFailed));
    r.expect_server(&[]).await;
}

#[tokio::test]
async fn after_a_confirmed_reset_the_rest_of_a_pipeline_follows() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    let group = |sql: &str| cat(&[parse("", sql), bind("", ""), execute(), sync()]);
    r.client_sends(&cat(&[group("SELECT 1"), group("SELECT 2")]))
        .await;
    let first = show(&r.read_until(true, &sync()).await);
    assert_eq!(first.len(), 7, "{first:?}");
    r.server_sends(&witness_replies()).await;
    r.expect_server(&group("SELECT 2")).await;
}

#[tokio::test]
async fn a_refused_first_message_with_a_flush_does_not_wait_for_the_witness() {
    let mut r = Rig::new(true).await;
    r.reset = Some("RESET ALL");
    r.client_sends(&cat(&[bind("", "unknown"), m(b'H', &[])]))
        .await;
    // Nothing of the client's goes; the proxy's own Sync makes the server answer the witness.
    let to_server = show(&r.read_until(true, &sync()).await);
    assert_eq!(to_server.len(), 4, "{to_server:?}");
    assert_eq!(to_server[3], "S:");
    r.server_sends(&cat(&[witness_replies(), ready(b'I')]))
        .await;
    let got = show(&r.read_until(false, &[0, 0]).await);
    assert!(got[0].contains("26000"), "{got:?}");
}
