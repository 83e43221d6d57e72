//! A tiny deterministic pseudo-random generator (xorshift64): announcement jitter, which only
//! has to differ between hosts, and the mini-fuzz loops of the unit tests. Not for anything
//! that must be unpredictable.

#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A zero seed would stay zero forever; it is nudged to 1.
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform enough in `0..n` for tests (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_never_stuck_at_zero() {
        let (mut a, mut b) = (XorShift::new(42), XorShift::new(42));
        let xs: Vec<u64> = (0..100).map(|_| a.next()).collect();
        assert_eq!(xs, (0..100).map(|_| b.next()).collect::<Vec<_>>());
        assert!(xs.iter().all(|&x| x != 0));
        let mut z = XorShift::new(0);
        assert_ne!(z.next(), 0);
        assert!((0..1000).all(|_| z.below(7) < 7));
    }
}
