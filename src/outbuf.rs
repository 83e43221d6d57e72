//! The bytes a connection still has to send, with a bound that holds: a stream fed faster
//! than its reader drains it stops at `bound` pending bytes and at `bound` bytes of memory.
//! Sent bytes at the front are reclaimed by moving the pending tail down before the buffer
//! would grow, so a reader that never quite catches up cannot make the allocation creep (a
//! buffer compacted only once fully drained grows to the whole stream). A whole answer built
//! in place (a head, a status page) is not bounded here: its size is the caller's.

use std::io::{self, Write};

pub(crate) struct OutBuf {
    buf: Vec<u8>,
    /// Bytes of `buf` before this are sent.
    start: usize,
    bound: usize,
}

/// Capacity kept across answers; a larger buffer is freed when its answer ends, so an idle
/// keep-alive connection costs no stream-sized allocation.
const KEEP_CAPACITY: usize = 4096;

impl OutBuf {
    pub(crate) const fn new(bound: usize) -> Self {
        OutBuf {
            buf: Vec::new(),
            start: 0,
            bound,
        }
    }

    /// Bytes waiting to be sent.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// How many more bytes `push` takes now.
    pub(crate) fn room(&self) -> usize {
        self.bound.saturating_sub(self.pending())
    }

    /// Memory held (for tests and the status page).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends as much of `data` as the bound allows; returns how much that was.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let take = data.len().min(self.room());
        if take == 0 {
            return 0;
        }
        if self.buf.len() + take > self.buf.capacity() && self.start > 0 {
            self.compact();
        }
        let need = self.buf.len() + take;
        if need > self.buf.capacity() {
            // grow geometrically, but never past the bound
            let target = need.max(self.buf.capacity() * 2).min(self.bound.max(need));
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(&data[..take]);
        take
    }

    /// Starts a whole answer built in place: drops anything pending and hands out the
    /// (empty) vector to write the head and body into.
    pub(crate) fn whole(&mut self) -> &mut Vec<u8> {
        self.clear();
        &mut self.buf
    }

    /// One `write` of the pending bytes. Once all are out the buffer is empty again (memory
    /// kept for the next push).
    pub(crate) fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        let n = w.write(&self.buf[self.start..])?;
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(n)
    }

    /// Drops what is pending (a cut stream, a new answer).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// The answer ended: drops what is pending and frees a stream-sized allocation.
    pub(crate) fn release(&mut self) {
        self.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start.., 0);
        self.buf.truncate(self.buf.len() - self.start);
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xorshift::XorShift;

    /// Takes at most `max` bytes per write, or refuses (WouldBlock) when `max` is 0.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.max == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.max);
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_never_catches_up_cannot_grow_it() {
        const BOUND: usize = 4096;
        let mut rng = XorShift::new(42);
        let mut b = OutBuf::new(BOUND);
        let source: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        let mut w = Trickle {
            got: Vec::new(),
            max: 0,
        };
        while w.got.len() < source.len() {
            // the source fills whatever room there is, in odd pieces
            while sent < source.len() && b.room() > 0 {
                let piece = (1 + rng.below(3000)).min(source.len() - sent);
                sent += b.push(&source[sent..sent + piece]);
            }
            assert!(b.pending() <= BOUND);
            assert!(b.capacity() <= BOUND, "capacity {}", b.capacity());
            // the reader takes less than is pending, so the buffer is never drained
            w.max = rng.below(BOUND / 2);
            match b.write_to(&mut w) {
                Ok(_) => {}
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert!(
            w.got == source,
            "bytes arrive in order, none lost or repeated"
        );
    }

    #[test]
    fn push_stops_at_the_bound_and_room_comes_back() {
        let mut b = OutBuf::new(10);
        assert_eq!(b.push(b"0123456789abc"), 10);
        assert_eq!(b.room(), 0);
        assert_eq!(b.push(b"x"), 0);
        let mut w = Trickle {
            got: Vec::new(),
            max: 4,
        };
        assert_eq!(b.write_to(&mut w).unwrap(), 4);
        assert_eq!(b.room(), 4);
        assert_eq!(b.push(b"abcdef"), 4);
        w.max = 100;
        b.write_to(&mut w).unwrap();
        assert!(b.is_empty());
        assert_eq!(w.got, b"0123456789abcd");
    }

    #[test]
    fn a_whole_answer_is_not_bounded_and_is_freed_after() {
        let mut b = OutBuf::new(16);
        b.whole().extend_from_slice(&[7u8; 10_000]);
        assert_eq!(b.pending(), 10_000);
        assert_eq!(b.room(), 0);
        b.release();
        assert!(b.is_empty());
        assert_eq!(b.capacity(), 0);
    }
}
