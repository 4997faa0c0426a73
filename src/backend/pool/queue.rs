//! Who waits for a server and in what order: one FIFO per priority class, served by
//! deadline. A waiter's deadline is its arrival plus `priority_aging` for each class it is
//! below the top, so a high-priority waiter goes ahead of lower ones that arrived less than
//! that before it, and nobody is overtaken by a waiter that arrived more than
//! 2 × `priority_aging` after it: low priority always progresses.
//!
//! Also what a holder of a server counts against ([`Hold`]): its identity's dedicated places
//! (`dedicated_connections`) while it has some left, else the shared part of the pool, of
//! which the lower classes may use all but `priority_reserve`; and its identity's cap
//! (`max_user_connections`).

use super::Grant;
pub use crate::admission::identities::Share;
use crate::config::{MAX_CLASSES, Priority};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Who asks for a server: its class and the share of the pool its identity may hold.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    pub class: Priority,
    pub share: Option<Arc<Share>>,
    /// A session-mode client: it holds its server for the whole session, so how long it
    /// holds one says nothing about the upstream (not sampled for adaptive_limit, shed_wait).
    pub session: bool,
    /// The kind of server the client asked for itself (its `target_session_attrs`), over
    /// the database's.
    pub attrs: Option<crate::config::SessionAttrs>,
    /// The region of the listener it came through: its servers are preferably there.
    pub region: Option<Arc<str>>,
}

impl Demand {
    pub fn of(class: Priority) -> Demand {
        Demand {
            class,
            ..Demand::default()
        }
    }
}

/// What a server's holder counts against, undone when the server comes back.
#[derive(Debug, Default)]
pub(super) struct Hold {
    /// Made by [`Queue::hold`] (not a connection nobody holds).
    pub(super) counted: bool,
    /// On one of its identity's dedicated places (else a shared one).
    pub(super) dedicated: bool,
    /// Counted in [`Queue::lower_busy`].
    pub(super) lower: bool,
    pub(super) share: Option<Arc<Share>>,
    /// When it was taken, where shed_wait needs the average hold time.
    pub(super) taken: Option<std::time::Instant>,
    /// How long its client's queries took on it, when the client measured them.
    pub(super) busy_us: Option<u64>,
}

pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) tx: oneshot::Sender<Grant>,
    pub(super) demand: Demand,
    pub(super) since: Instant,
}

/// The wait queue and the counts the grant rules read.
#[derive(Default)]
pub(super) struct Queue {
    by_class: [VecDeque<Waiter>; MAX_CLASSES],
    /// The highest class (the only one not counted in `lower_busy`).
    pub(super) top: Priority,
    /// Shared places held, and those held by classes below the top one.
    pub(super) busy: usize,
    pub(super) lower_busy: usize,
    /// Servers held per identity with a share (dedicated places included). Keys share the
    /// identity's string: counting allocates nothing.
    held: HashMap<Arc<str>, usize>,
    /// Servers held on dedicated places across the database's pools (its [`super::DbLimit`]'s).
    db_dedicated: Arc<AtomicUsize>,
    /// The adaptive concurrency limit on shared places, when `adaptive_limit` is on.
    pub(super) adaptive: Option<super::adaptive::Gradient>,
    /// Waiters whose identity holds its max_user_connections, out of the class queues so no
    /// grant scans past them: one comes back (by arrival) each time that identity gives a
    /// server back.
    parked: HashMap<Arc<str>, VecDeque<Waiter>>,
    parked_n: usize,
}

/// The rules a grant follows (from the pool's settings).
#[derive(Clone, Copy, Debug)]
pub(super) struct Rules {
    pub(super) aging: Duration,
    /// Places of the pool only the top class may take.
    pub(super) reserve: usize,
    /// Servers the queue may hand out at once: pool_size and reserve_pool_size.
    pub(super) size: usize,
    /// Places kept for identities' dedicated budgets.
    pub(super) dedicated: usize,
    /// The database's connections not held on dedicated places leave its reserve free: a
    /// client not on a dedicated place may hold a server.
    pub(super) shared_ok: bool,
}

/// A class's queue: classes beyond the last queue (none are configured) share it.
fn class_index(c: Priority) -> usize {
    c.index().min(MAX_CLASSES - 1)
}

impl Queue {
    pub(super) fn counting_into(db_dedicated: Arc<AtomicUsize>, top: Priority) -> Queue {
        Queue {
            db_dedicated,
            top,
            ..Queue::default()
        }
    }

    /// Whether `d` would take one of its identity's dedicated places.
    #[inline]
    pub(super) fn dedicated_for(&self, d: &Demand) -> bool {
        d.share
            .as_ref()
            .is_some_and(|s| self.held_by(s) < s.dedicated)
    }

    pub(super) fn len(&self) -> usize {
        self.by_class.iter().map(VecDeque::len).sum::<usize>() + self.parked_n
    }

    pub(super) fn is_empty(&self) -> bool {
        self.parked_n == 0 && self.by_class.iter().all(VecDeque::is_empty)
    }

    /// Waiting per class, by rank.
    pub(super) fn counts(&self) -> [usize; MAX_CLASSES] {
        let mut n = [0; MAX_CLASSES];
        for (c, q) in self.by_class.iter().enumerate() {
            n[c] = q.len();
        }
        for w in self.parked.values().flatten() {
            n[w.demand.class.index()] += 1;
        }
        n
    }

    pub(super) fn push(&mut self, w: Waiter) {
        if self.at_cap(&w.demand) {
            self.park(w);
        } else {
            self.by_class[class_index(w.demand.class)].push_back(w);
        }
    }

    fn park(&mut self, w: Waiter) {
        let Some(s) = &w.demand.share else { return };
        let who = s.who.clone();
        self.parked.entry(who).or_default().push_back(w);
        self.parked_n += 1;
    }

    /// Parks the waiters at the head of each class whose identity is at its cap (they became
    /// so while waiting), so the head is one a grant may consider.
    fn park_capped_heads(&mut self) {
        for c in 0..MAX_CLASSES {
            while self.by_class[c]
                .front()
                .is_some_and(|w| self.at_cap(&w.demand))
            {
                if let Some(w) = self.by_class[c].pop_front() {
                    self.park(w);
                }
            }
        }
    }

    /// The oldest parked waiter of `who` back in its class queue.
    fn unpark(&mut self, who: &Arc<str>) {
        let Some(list) = self.parked.get_mut(who) else {
            return;
        };
        let w = list.pop_front();
        if list.is_empty() {
            self.parked.remove(who);
        }
        if let Some(w) = w {
            self.parked_n -= 1;
            self.reinsert(w);
        }
    }

    /// Puts back a waiter taken out of the queue, where its arrival places it in its class.
    pub(super) fn reinsert(&mut self, w: Waiter) {
        let q = &mut self.by_class[class_index(w.demand.class)];
        let at = q.partition_point(|o| o.since <= w.since);
        q.insert(at, w);
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.by_class.iter().flatten().any(|w| w.id == id)
            || self.parked.values().flatten().any(|w| w.id == id)
    }

    pub(super) fn remove(&mut self, id: u64) {
        for q in &mut self.by_class {
            q.retain(|w| w.id != id);
        }
        if self.parked_n > 0 {
            let before: usize = self.parked.values().map(VecDeque::len).sum();
            for q in self.parked.values_mut() {
                q.retain(|w| w.id != id);
            }
            self.parked.retain(|_, q| !q.is_empty());
            let after: usize = self.parked.values().map(VecDeque::len).sum();
            self.parked_n -= before - after;
        }
    }

    #[inline]
    fn held_by(&self, s: &Share) -> usize {
        self.held.get(&s.who).copied().unwrap_or(0)
    }

    /// Whether `d` may take one more server now.
    #[inline]
    pub(super) fn may_hold(&self, d: &Demand, rules: &Rules) -> bool {
        if let Some(s) = &d.share {
            let held = self.held_by(s);
            if s.max > 0 && held >= s.max {
                return false;
            }
            if held < s.dedicated {
                return true;
            }
        }
        let size = self
            .adaptive
            .as_ref()
            .map_or(rules.size, |g| g.limit().min(rules.size));
        let shared = size.saturating_sub(rules.dedicated);
        let top = d.class >= self.top;
        rules.shared_ok
            && self.busy < shared
            && (top || rules.reserve == 0 || self.lower_busy + rules.reserve < shared)
    }

    /// Whether `d`'s identity holds its max_user_connections.
    pub(super) fn at_cap(&self, d: &Demand) -> bool {
        d.share
            .as_ref()
            .is_some_and(|s| s.max > 0 && self.held_by(s) >= s.max)
    }

    /// Waiters held back only by their own identity's max_user_connections (parked).
    pub(super) fn capped(&self) -> usize {
        self.parked_n
    }

    /// Whether `d` is refused rather than queued: its identity is at a cap it may not wait on.
    pub(super) fn refuses(&self, d: &Demand) -> Option<Arc<Share>> {
        d.share
            .as_ref()
            .filter(|s| s.refuse && self.at_cap(d))
            .cloned()
    }

    /// Counts a server taken by `d`: on a dedicated place of its identity while it has one.
    #[inline]
    pub(super) fn hold(&mut self, d: &Demand) -> Hold {
        let dedicated = self.dedicated_for(d);
        if dedicated {
            self.db_dedicated.fetch_add(1, Ordering::AcqRel);
        }
        let lower = !dedicated && d.class < self.top;
        self.busy += usize::from(!dedicated);
        self.lower_busy += usize::from(lower);
        if let Some(s) = &d.share {
            match self.held.get_mut(&s.who) {
                Some(n) => *n += 1,
                None => {
                    self.held.insert(s.who.clone(), 1);
                }
            }
        }
        Hold {
            counted: true,
            dedicated,
            lower,
            share: d.share.clone(),
            taken: None,
            busy_us: None,
        }
    }

    /// Undoes [`Queue::hold`].
    #[inline]
    pub(super) fn unhold(&mut self, h: Hold) -> Option<std::time::Instant> {
        // The default hold of a connection nobody holds (maintenance) counted nothing.
        self.busy -= usize::from(h.counted && !h.dedicated);
        if h.dedicated {
            self.db_dedicated.fetch_sub(1, Ordering::AcqRel);
        }
        self.lower_busy -= usize::from(h.lower);
        if let Some(s) = h.share
            && let Some(n) = self.held.get_mut(&s.who)
        {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&s.who);
            }
            if self.parked_n > 0 {
                self.unpark(&s.who);
            }
        }
        h.taken
    }

    /// The next waiter to serve among those that may hold a server: the earliest deadline
    /// (ties to the higher class), FIFO within a class.
    pub(super) fn pop(&mut self, rules: &Rules) -> Option<Waiter> {
        self.pop_if(rules, |_, _| true)
    }

    /// [`Queue::pop`] among the waiters `also` allows too (a new server's place in the
    /// database fits them).
    pub(super) fn pop_if(
        &mut self,
        rules: &Rules,
        also: impl Fn(&Queue, &Waiter) -> bool,
    ) -> Option<Waiter> {
        if !self.held.is_empty() {
            self.park_capped_heads();
        }
        let (c, i) = self.next(rules, also)?;
        self.by_class[c].remove(i)
    }

    /// Where the next waiter to serve is: (class, position).
    fn next(
        &self,
        rules: &Rules,
        also: impl Fn(&Queue, &Waiter) -> bool,
    ) -> Option<(usize, usize)> {
        let mut best: Option<(Instant, usize, usize)> = None;
        for c in (0..MAX_CLASSES).rev() {
            let q = &self.by_class[c];
            if q.is_empty() {
                continue;
            }
            // Without dedicated places every waiter at a class's head may take what any other
            // of the class may (capped ones are parked): only the head need be looked at.
            let look = if rules.dedicated == 0 { 1 } else { q.len() };
            let found = q
                .iter()
                .take(look)
                .position(|w| self.may_hold(&w.demand, rules) && also(self, w));
            let Some(i) = found else {
                continue;
            };
            let below_top = self.top.index().saturating_sub(c);
            let deadline = q[i].since + rules.aging * below_top as u32;
            if best.is_none_or(|(d, ..)| deadline < d) {
                best = Some((deadline, c, i));
            }
        }
        best.map(|(_, c, i)| (c, i))
    }

    /// Shedding: the newest waiter of the lowest class below `class`, taken out of the queue.
    pub(super) fn shed_below(&mut self, class: Priority) -> Option<Waiter> {
        self.by_class[..class_index(class)]
            .iter_mut()
            .find(|q| !q.is_empty())?
            .pop_back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue of the default classes.
    fn queue() -> Queue {
        Queue::counting_into(Arc::default(), Priority::HIGH)
    }

    fn waiter(id: u64, class: Priority, since: Instant) -> Waiter {
        Waiter {
            id,
            tx: oneshot::channel().0,
            demand: Demand::of(class),
            since,
        }
    }

    const RULES: Rules = Rules {
        aging: Duration::from_secs(5),
        reserve: 0,
        size: 2,
        dedicated: 0,
        shared_ok: true,
    };

    fn order(q: &mut Queue, rules: &Rules) -> Vec<u64> {
        std::iter::from_fn(|| q.pop(rules).map(|w| w.id)).collect()
    }

    #[test]
    fn a_higher_class_goes_ahead_of_recent_waiters_only() {
        let t = Instant::now();
        let mut q = queue();
        // Low waiters that arrived 11 s, 4 s and 1 s before a high one.
        q.push(waiter(1, Priority::LOW, t));
        q.push(waiter(2, Priority::LOW, t + Duration::from_secs(7)));
        q.push(waiter(3, Priority::LOW, t + Duration::from_secs(10)));
        q.push(waiter(4, Priority::HIGH, t + Duration::from_secs(11)));
        q.push(waiter(5, Priority::NORMAL, t + Duration::from_secs(11)));
        // Deadlines: 1 → t+10, 2 → t+17, 3 → t+20, 4 → t+11, 5 → t+16.
        assert_eq!(order(&mut q, &RULES), [1, 4, 5, 2, 3]);
    }

    #[test]
    fn ties_go_to_the_higher_class_and_fifo_holds_within_a_class() {
        let t = Instant::now();
        let mut q = queue();
        q.push(waiter(1, Priority::LOW, t));
        q.push(waiter(2, Priority::NORMAL, t + Duration::from_secs(5)));
        q.push(waiter(3, Priority::NORMAL, t + Duration::from_secs(5)));
        q.push(waiter(4, Priority::HIGH, t + Duration::from_secs(10)));
        assert_eq!(order(&mut q, &RULES), [4, 2, 3, 1]);
    }

    #[test]
    fn the_reserve_is_for_the_top_class() {
        let t = Instant::now();
        let rules = Rules {
            reserve: 1,
            ..RULES
        };
        let mut q = queue();
        let held = q.hold(&Demand::of(Priority::NORMAL));
        q.push(waiter(1, Priority::LOW, t));
        q.push(waiter(2, Priority::HIGH, t + Duration::from_secs(60)));
        // One of two places is held by a lower class: the other is the reserve.
        assert_eq!(order(&mut q, &rules), [2]);
        q.unhold(held);
        assert_eq!(order(&mut q, &rules), [1]);
    }

    #[test]
    fn a_share_at_its_cap_waits_while_others_pass() {
        let t = Instant::now();
        let share = Arc::new(Share {
            who: "noisy".into(),
            max: 1,
            refuse: false,
            dedicated: 0,
        });
        let noisy = Demand {
            class: Priority::NORMAL,
            share: Some(share.clone()),
            session: false,
            attrs: None,
            region: None,
        };
        let mut q = queue();
        let held = q.hold(&noisy);
        q.push(Waiter {
            demand: noisy.clone(),
            ..waiter(1, Priority::NORMAL, t)
        });
        q.push(waiter(2, Priority::NORMAL, t + Duration::from_secs(1)));
        assert_eq!(order(&mut q, &RULES), [2]);
        q.unhold(held);
        assert!(q.held.is_empty());
        assert_eq!(order(&mut q, &RULES), [1]);
    }

    /// A hostile identity's thousands of waiters at its cap are parked: a grant looks at one
    /// waiter per class, not at all of them, and theirs come back one per server returned.
    #[test]
    fn waiters_at_their_identitys_cap_are_parked_out_of_the_way() {
        let t = Instant::now();
        let share = Arc::new(Share {
            who: "key:noisy".into(),
            max: 1,
            refuse: false,
            dedicated: 0,
        });
        let noisy = Demand {
            class: Priority::NORMAL,
            share: Some(share),
            session: false,
            attrs: None,
            region: None,
        };
        let mut q = queue();
        let held = q.hold(&noisy);
        for id in 0..10_000 {
            q.push(Waiter {
                demand: noisy.clone(),
                ..waiter(id, Priority::NORMAL, t)
            });
        }
        q.push(waiter(20_000, Priority::NORMAL, t + Duration::from_secs(1)));
        assert_eq!(
            (q.len(), q.capped(), &q.counts()[..3]),
            (10_001, 10_000, &[0, 10_001, 0][..])
        );
        assert_eq!(q.pop(&RULES).map(|w| w.id), Some(20_000));
        assert!(q.pop(&RULES).is_none());
        // The identity gives its server back: its oldest waiter is next.
        q.unhold(held);
        assert_eq!(q.capped(), 9_999);
        let w = q.pop(&RULES).unwrap();
        assert_eq!(w.id, 0);
        q.remove(5);
        assert_eq!(q.len(), 9_998);
    }

    #[test]
    fn more_classes_age_by_their_distance_below_the_top() {
        // Five classes: 0 is four agings below the top, 3 one.
        let t = Instant::now();
        let mut q = Queue::counting_into(Arc::default(), Priority(4));
        let aging = RULES.aging;
        q.push(waiter(1, Priority(0), t));
        q.push(waiter(2, Priority(3), t + aging * 2));
        q.push(waiter(3, Priority(4), t + aging * 4));
        // Deadlines: 1 at t+4a, 2 at t+3a, 3 at t+4a (ties go to the higher class).
        let order: Vec<u64> = std::iter::from_fn(|| q.pop(&RULES).map(|w| w.id)).collect();
        assert_eq!(order, [2, 3, 1]);
        // The reserve is the top class's alone.
        let rules = Rules {
            reserve: 1,
            size: 2,
            ..RULES
        };
        let held = q.hold(&Demand::of(Priority(3)));
        assert!(!q.may_hold(&Demand::of(Priority(3)), &rules));
        assert!(q.may_hold(&Demand::of(Priority(4)), &rules));
        q.unhold(held);
    }

    #[test]
    fn shedding_takes_the_newest_of_the_lowest_class() {
        let t = Instant::now();
        let mut q = queue();
        q.push(waiter(1, Priority::LOW, t));
        q.push(waiter(2, Priority::LOW, t));
        q.push(waiter(3, Priority::NORMAL, t));
        assert_eq!(q.shed_below(Priority::HIGH).map(|w| w.id), Some(2));
        assert_eq!(q.shed_below(Priority::LOW).map(|w| w.id), None);
        assert_eq!(q.counts()[..3], [1, 1, 0]);
    }
}
