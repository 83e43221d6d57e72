//! The parts of the single-threaded event loop that are not sockets: the slot table that maps
//! mio tokens to connections (with generations, so an event for a closed and reused slot is
//! recognised as stale), the ready queue of what has work this pass, and the timers that
//! feed poll's timeout (with a timerfd for the deadlines closer than a millisecond).

use crate::sys;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Tokens below this are fixed (listeners, UDP sockets, signalfd, waker); slots start here.
pub(crate) const FIXED_TOKENS: usize = 1024;
/// Slot indexes and generations share a token: 16 bits each, so tokens fit a 32-bit usize.
const INDEX_BITS: u32 = 16;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
/// Most slots the table will ever hold (index space above FIXED_TOKENS).
pub(crate) const MAX_SLOTS: usize = INDEX_MASK + 1 - FIXED_TOKENS;

struct Entry<T> {
    generation: u16,
    value: Option<T>,
}

/// A slab whose tokens carry a generation: `get_mut` on a token whose slot was freed (and
/// maybe reused) returns None instead of the new occupant.
pub(crate) struct Slots<T> {
    entries: Vec<Entry<T>>,
    free: Vec<usize>,
    len: usize,
    limit: usize,
}

impl<T> Slots<T> {
    pub(crate) fn new(limit: usize) -> Self {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
            limit: limit.min(MAX_SLOTS),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.limit
    }

    fn token(index: usize, generation: u16) -> Token {
        Token(((generation as usize) << INDEX_BITS) | (index + FIXED_TOKENS))
    }

    fn index(token: Token) -> Option<(usize, u16)> {
        let raw = token.0 & INDEX_MASK;
        let index = raw.checked_sub(FIXED_TOKENS)?;
        Some((index, (token.0 >> INDEX_BITS) as u16))
    }

    /// Stores the value `make` builds for its own token; None when the table is full.
    pub(crate) fn insert_with(&mut self, make: impl FnOnce(Token) -> T) -> Option<Token> {
        if self.is_full() {
            return None;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    value: None,
                });
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[index];
        let token = Self::token(index, entry.generation);
        entry.value = Some(make(token));
        self.len += 1;
        Some(token)
    }

    pub(crate) fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        let (index, generation) = Self::index(token)?;
        let entry = self.entries.get_mut(index)?;
        if entry.generation != generation {
            return None;
        }
        entry.value.as_mut()
    }

    pub(crate) fn get(&self, token: Token) -> Option<&T> {
        let (index, generation) = Self::index(token)?;
        let entry = self.entries.get(index)?;
        if entry.generation != generation {
            return None;
        }
        entry.value.as_ref()
    }

    /// Frees the slot and bumps its generation so that old tokens no longer match.
    pub(crate) fn remove(&mut self, token: Token) -> Option<T> {
        let (index, generation) = Self::index(token)?;
        let entry = self.entries.get_mut(index)?;
        if entry.generation != generation || entry.value.is_none() {
            return None;
        }
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(index);
        self.len -= 1;
        entry.value.take()
    }

    /// Tokens of every occupied slot (a snapshot, so the caller may remove while iterating).
    pub(crate) fn tokens(&self) -> Vec<Token> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.value.is_some())
            .map(|(i, e)| Self::token(i, e.generation))
            .collect()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| e.value.as_ref())
    }
}

/// Connections and fetches with work to do in this pass: a FIFO without duplicates. Whatever
/// has work (an event, a yielded turn, bytes pushed to a client) goes through `schedule`, so
/// the one place that drives them can bound the work done per pass.
#[derive(Default)]
pub(crate) struct Ready {
    queue: VecDeque<Token>,
    queued: HashSet<Token>,
}

impl Ready {
    /// Queues `t` unless it is queued already (its one turn does all its work).
    pub(crate) fn schedule(&mut self, t: Token) {
        if self.queued.insert(t) {
            self.queue.push_back(t);
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Token> {
        let t = self.queue.pop_front()?;
        self.queued.remove(&t);
        Some(t)
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// A timer's handle, for cancelling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TimerId(Instant, u64);

/// Deadlines in order. Timers of requests are cancelled with their request, so the table
/// holds only live ones; whoever handles a timer still checks that it matters.
pub(crate) struct Timers<K> {
    map: BTreeMap<TimerId, K>,
    seq: u64,
}

/// The loop wakes at least this often even with nothing scheduled, so that sweeps of idle
/// connections and interface rescans never depend on a timer having been set.
pub(crate) const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// Bound on timers so that a flood of lookups cannot grow the table without end. Only `at`
/// is bounded: the daemon's own periodic timers (`always`) are a fixed handful and must
/// never be dropped.
pub(crate) const MAX_TIMERS: usize = 65536;

impl<K> Timers<K> {
    pub(crate) fn new() -> Self {
        Timers {
            map: BTreeMap::new(),
            seq: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Schedules `kind` at `at`; None when the table is full (the caller degrades gracefully:
    /// a request without its timer is still bounded by the sweep of its connection).
    pub(crate) fn at(&mut self, at: Instant, kind: K) -> Option<TimerId> {
        if self.map.len() >= MAX_TIMERS {
            return None;
        }
        Some(self.always(at, kind))
    }

    /// Schedules `kind` whatever the table holds: for the daemon's own few timers.
    pub(crate) fn always(&mut self, at: Instant, kind: K) -> TimerId {
        self.seq += 1;
        let id = TimerId(at, self.seq);
        self.map.insert(id, kind);
        id
    }

    /// Removes a timer that has not fired yet (nothing happens if it has).
    pub(crate) fn cancel(&mut self, id: TimerId) {
        self.map.remove(&id);
    }

    /// Removes and returns the earliest timer due at `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<K> {
        let entry = self.map.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        Some(entry.remove())
    }

    /// Removes and returns every timer due at `now`, in deadline order.
    #[cfg(test)]
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<K> {
        std::iter::from_fn(|| self.pop_expired(now)).collect()
    }

    /// The earliest deadline, if any.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.map.keys().next().map(|k| k.0)
    }

    /// How long poll may sleep: until the next deadline, at most MAX_POLL_WAIT.
    pub(crate) fn poll_timeout(&self, now: Instant) -> Duration {
        match self.next() {
            Some(at) => at.saturating_duration_since(now).min(MAX_POLL_WAIT),
            None => MAX_POLL_WAIT,
        }
    }
}

/// epoll's timeout counts whole milliseconds (mio rounds up): a deadline closer than that
/// (a lookup's INTENT wait, digest.rs MISS_WAIT) is met by this timerfd, registered with the
/// poll under its own token.
pub(crate) struct PreciseWake(OwnedFd);

impl PreciseWake {
    pub(crate) fn new(registry: &Registry, token: Token) -> io::Result<PreciseWake> {
        let fd = sys::timerfd()?;
        (registry).register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(PreciseWake(fd))
    }

    /// What to give epoll for `timeout`: under a millisecond, the timerfd is armed for it
    /// and wakes the loop on time, and epoll's own timeout is a whole millisecond.
    pub(crate) fn poll_timeout(&self, timeout: Duration) -> Duration {
        let ms = Duration::from_millis(1);
        if !timeout.is_zero() && timeout < ms && sys::timerfd_arm(&self.0, timeout).is_ok() {
            return ms;
        }
        timeout
    }

    /// The timerfd fired: its count is read so that the next expiry wakes the loop again.
    pub(crate) fn drain(&self) {
        sys::timerfd_drain(&self.0)
    }
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_tokens_do_not_reach_a_reused_slot() {
        let mut s = Slots::new(10);
        let a = s.insert_with(|_| "a").unwrap();
        assert_eq!(s.get(a), Some(&"a"));
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert_with(|_| "b").unwrap();
        assert_ne!(a, b, "same index, new generation");
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert!(a.0 >= FIXED_TOKENS && b.0 & INDEX_MASK >= FIXED_TOKENS);
    }

    #[test]
    fn fixed_tokens_never_match_a_slot() {
        let mut s: Slots<u8> = Slots::new(10);
        s.insert_with(|_| 1).unwrap();
        for t in 0..FIXED_TOKENS {
            assert!(s.get(Token(t)).is_none());
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let mut s = Slots::new(3);
        let toks: Vec<_> = (0..3).map(|i| s.insert_with(|_| i).unwrap()).collect();
        assert!(s.insert_with(|_| 9).is_none());
        s.remove(toks[1]);
        assert!(s.insert_with(|_| 9).is_some());
        assert_eq!(s.len(), 3);
        assert_eq!(s.tokens().len(), 3);
    }

    #[test]
    fn the_token_passed_to_make_is_the_returned_one() {
        let mut s = Slots::new(3);
        let t = s.insert_with(|t| t).unwrap();
        assert_eq!(s.get(t), Some(&t));
    }

    #[test]
    fn timers_fire_in_order_and_feed_the_poll_timeout() {
        let now = Instant::now();
        let mut t = Timers::new();
        assert_eq!(t.poll_timeout(now), MAX_POLL_WAIT);
        t.at(now + Duration::from_millis(30), 3);
        t.at(now + Duration::from_millis(10), 1);
        t.at(now + Duration::from_millis(20), 2);
        assert_eq!(t.poll_timeout(now), Duration::from_millis(10));
        assert!(t.expired(now).is_empty());
        assert_eq!(t.expired(now + Duration::from_millis(25)), vec![1, 2]);
        assert_eq!(t.expired(now + Duration::from_secs(5)), vec![3]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_cancelled_timer_never_fires_and_frees_its_room() {
        let now = Instant::now();
        let mut t = Timers::new();
        let a = t.at(now, "a").unwrap();
        t.at(now, "b").unwrap();
        t.cancel(a);
        t.cancel(a);
        assert_eq!(t.len(), 1);
        assert_eq!(t.expired(now), vec!["b"]);
    }

    #[test]
    fn a_full_table_refuses_requests_but_not_the_daemons_own_timers() {
        let now = Instant::now();
        let mut t = Timers::new();
        for i in 0..MAX_TIMERS {
            assert!(t.at(now + Duration::from_secs(60), i).is_some());
        }
        assert!(t.at(now, 0).is_none(), "full");
        t.always(now, usize::MAX);
        assert_eq!(t.pop_expired(now), Some(usize::MAX));
        assert_eq!(t.pop_expired(now), None);
    }

    #[test]
    fn the_ready_queue_holds_each_token_once_in_order() {
        let mut r = Ready::default();
        r.schedule(Token(5));
        r.schedule(Token(3));
        r.schedule(Token(5));
        assert_eq!(r.len(), 2);
        assert_eq!(r.pop(), Some(Token(5)));
        r.schedule(Token(5));
        assert_eq!(r.pop(), Some(Token(3)));
        assert_eq!(r.pop(), Some(Token(5)));
        assert_eq!(r.pop(), None);
        assert!(r.is_empty());
    }
}
