//! SHOW POOLS: one row per (database, role) pool: its clients by state, its servers by
//! state, the longest current wait; then pgsluice's paused, pool_size and upstream_up, and
//! per priority class the clients waiting, servers handed out and clients shed, and the
//! servers it may use at once (the adaptive limit, else pool_size).

use super::{Table, Type, split_us};
use crate::app::App;
use crate::stats::clients::ClientState;
use crate::stats::servers::ServerState;
use std::sync::atomic::{AtomicU64, Ordering};

pub fn table(app: &App) -> Table {
    let mut t = Table::new(&[
        ("database", Type::Text),
        ("user", Type::Text),
        ("cl_active", Type::Int4),
        ("cl_waiting", Type::Int4),
        ("cl_active_cancel_req", Type::Int4),
        ("cl_waiting_cancel_req", Type::Int4),
        ("sv_active", Type::Int4),
        ("sv_active_cancel", Type::Int4),
        ("sv_being_canceled", Type::Int4),
        ("sv_idle", Type::Int4),
        ("sv_used", Type::Int4),
        ("sv_tested", Type::Int4),
        ("sv_login", Type::Int4),
        ("maxwait", Type::Int4),
        ("maxwait_us", Type::Int4),
        ("pool_mode", Type::Text),
        ("load_balance_hosts", Type::Text),
        ("paused", Type::Int4),
        ("pool_size", Type::Int4),
        ("upstream_up", Type::Int4),
    ]);
    // Per class, highest first: cl_waiting_<class>, then served_<class>, then shed_<class>.
    let classes = app.config.load().classes.clone();
    let ranks: Vec<_> = classes.iter().rev().collect();
    for (what, ty) in [
        ("cl_waiting", Type::Int4),
        ("served", Type::Int8),
        ("shed", Type::Int8),
    ] {
        for (_, name) in &ranks {
            t.column(format!("{what}_{name}"), ty);
        }
    }
    t.column("concurrency_limit".into(), Type::Int4);
    let clients = app.clients.all();
    let now = crate::stats::unix_micros();
    let mode = app.listener_modes();
    for p in app.pools.all() {
        let (mut active, mut waiting, mut oldest) = (0u64, 0u64, 0u64);
        for c in clients.iter().filter(|c| c.facts.pool == p.key) {
            match c.state() {
                ClientState::Active => active += 1,
                ClientState::Waiting => {
                    waiting += 1;
                    if c.wait_since() > 0 {
                        oldest = oldest.max(now.saturating_sub(c.wait_since()));
                    }
                }
            }
        }
        let servers = p.servers();
        let count = |s: ServerState| servers.iter().filter(|i| i.state() == s).count();
        let (secs, us) = split_us(oldest);
        let by_class = p.waiting_by_class();
        let load = |a: &[AtomicU64], i: usize| a[i].load(Ordering::Relaxed);
        let s = &p.stats;
        let mut row = vec![
            p.key.database.as_ref().into(),
            p.key.role.as_ref().into(),
            active.into(),
            waiting.into(),
            0u64.into(),
            0u64.into(),
            count(ServerState::Active).into(),
            0u64.into(),
            0u64.into(),
            count(ServerState::Idle).into(),
            0u64.into(),
            count(ServerState::Tested).into(),
            0u64.into(),
            secs.into(),
            us.into(),
            mode.clone().into(),
            super::load_balance_hosts(p.upstream().route.is_some()).into(),
            p.is_paused().into(),
            p.settings().size.into(),
            (!p.upstream_failing()).into(),
        ];
        let ranks = ranks.iter().map(|(r, _)| r.index());
        row.extend(ranks.clone().map(|i| (by_class[i] as u64).into()));
        row.extend(ranks.clone().map(|i| load(&s.served, i).into()));
        row.extend(ranks.map(|i| load(&s.shed, i).into()));
        row.push((p.concurrency_limit().unwrap_or(p.settings().size) as u64).into());
        t.push(row);
    }
    t
}
