//! Reusable read buffers. A fetch reads body bytes straight into a `Chunk`; the chunk travels
//! as the body event to whoever consumes it (a client's output buffer, the stager thread)
//! and goes back to a small process-wide pool when dropped, on whichever thread. So a 1 GiB
//! copy reuses a handful of 64 KiB buffers instead of allocating, faulting in and freeing
//! 16,384 of them (which cost more CPU than the hashing; see docs/DESIGN.md, "Memory").

use std::fmt;
use std::io::{self, Read};
use std::ops::Deref;
use std::sync::Mutex;

/// Bytes one chunk holds: one socket read's worth.
pub(crate) const CHUNK_SIZE: usize = 64 * 1024;
/// Free chunks kept for reuse (2 MiB): enough for every chunk in flight to the stager
/// (`stager::QUEUE_BYTES`) plus a few being read; more are freed.
const MAX_POOLED: usize = 32;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Up to `CHUNK_SIZE` bytes. `buf` is always `CHUNK_SIZE` long (initialised once, when first
/// allocated); `len` of them are the chunk's contents.
pub(crate) struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

impl Chunk {
    /// An empty chunk, from the pool when one is free.
    pub(crate) fn new() -> Self {
        let pooled = POOL.lock().map(|mut p| p.pop()).unwrap_or(None);
        Chunk {
            buf: pooled.unwrap_or_else(|| vec![0; CHUNK_SIZE]),
            len: 0,
        }
    }

    /// A chunk holding `data` (at most `CHUNK_SIZE` bytes are taken).
    pub(crate) fn copy_of(data: &[u8]) -> Self {
        let mut c = Chunk::new();
        let n = data.len().min(CHUNK_SIZE);
        c.buf[..n].copy_from_slice(&data[..n]);
        c.len = n;
        c
    }

    /// Free space at the end.
    pub(crate) fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    /// One `read` of at most `max` bytes appended to the chunk (0 = end of stream, or no
    /// room).
    pub(crate) fn read_from<R: Read>(&mut self, r: &mut R, max: usize) -> io::Result<usize> {
        let end = self.len + max.min(self.room());
        let n = r.read(&mut self.buf[self.len..end])?;
        self.len += n;
        Ok(n)
    }

    /// Keeps only the first `n` bytes.
    pub(crate) fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Drops the first `n` bytes (moving the rest down).
    #[cfg(test)]
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Appends what `fill` writes into a vector; for decoders that produce into a
    /// `Vec<u8>`. Nothing is lost: a chunk filled past `CHUNK_SIZE` grows (and is freed, not
    /// pooled, when dropped).
    pub(crate) fn fill_with<T>(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        let mut v = std::mem::take(&mut self.buf);
        v.truncate(self.len);
        let r = fill(&mut v);
        self.len = v.len();
        if v.len() < CHUNK_SIZE {
            v.resize(CHUNK_SIZE, 0);
        }
        self.buf = v;
        r
    }
}

impl Default for Chunk {
    fn default() -> Self {
        Chunk::new()
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() == CHUNK_SIZE
            && let Ok(mut pool) = POOL.lock()
            && pool.len() < MAX_POOLED
        {
            pool.push(buf);
        }
    }
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Clone for Chunk {
    fn clone(&self) -> Self {
        Chunk::copy_of(self)
    }
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Chunk) -> bool {
        **self == **other
    }
}

impl Eq for Chunk {}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Chunk({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_append_and_buffers_come_back() {
        let mut src: &[u8] = b"hello world";
        let mut c = Chunk::new();
        assert_eq!(c.read_from(&mut src, 5).unwrap(), 5);
        assert_eq!(c.read_from(&mut src, 100).unwrap(), 6);
        assert_eq!(&*c, b"hello world");
        c.consume(6);
        assert_eq!(&*c, b"world");
        c.truncate(3);
        assert_eq!(&*c, b"wor");
        let r = c.fill_with(|v| {
            v.extend_from_slice(b"ld!");
            7
        });
        assert_eq!((r, &*c), (7, &b"world!"[..]));
        drop(c);
        // a recycled buffer comes back empty and full-sized
        let d = Chunk::new();
        assert!(d.is_empty() && d.room() == CHUNK_SIZE);
    }

    #[test]
    fn fill_with_loses_nothing() {
        let mut c = Chunk::copy_of(&[1u8; 10]);
        c.fill_with(|v| v.extend_from_slice(&vec![2u8; 2 * CHUNK_SIZE]));
        assert_eq!(c.len(), 10 + 2 * CHUNK_SIZE);
        assert_eq!(c.room(), 0);
    }
}
