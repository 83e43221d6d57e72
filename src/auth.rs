//! The optional group key (docs/PROTOCOL.md §10): loading and generating key files,
//! HMAC-SHA-256, the MAC trailer of keyed datagrams with its replay window, and the
//! `Flocon-Auth` header of peer HTTP requests. Pure functions and small records: the wall
//! clock is passed in, sockets live elsewhere.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Keys accepted at once: the current one (which signs) and the one being rotated out.
pub const MAX_KEYS: usize = 2;
/// A shorter key is a typo or an empty file, not a secret.
pub const MIN_KEY_LEN: usize = 16;
/// Key files are small; a bound keeps a wrong path (a disk image) from being read whole.
pub const MAX_KEY_LEN: usize = 1024;
/// What `flocon genkey` writes: 256 random bits.
pub const GENERATED_KEY_LEN: usize = 32;
/// Truncated MAC length: 128 bits, as RFC 2104 §5 allows (≥ half the hash, ≥ 80 bits).
pub const MAC_LEN: usize = 16;
/// Bytes a keyed datagram carries after its message: the 8-byte stamp and the MAC.
pub const TRAILER_LEN: usize = 8 + MAC_LEN;
/// A keyed datagram whose stamp is further than this from the receiver's clock is dropped:
/// a captured datagram cannot be replayed later, a restarted peer's old datagrams neither.
/// Hosts of one LAN keep their clocks within seconds (NTP); 60 s leaves room.
pub const STAMP_WINDOW_US: u64 = 60_000_000;
/// Datagrams of one sender may arrive this much out of order (it sends from two sockets).
pub const REORDER_US: u64 = 250_000;
/// Stamps remembered per sender to drop exact replays within the reorder allowance.
const RECENT_STAMPS: usize = 64;
/// Senders tracked by the replay guard; beyond, the one heard from longest ago is
/// forgotten (its stamps still have to be within STAMP_WINDOW_US of now).
pub const MAX_SENDERS: usize = 1024;
/// A peer HTTP request's time must be within this of the server's clock.
pub const HTTP_WINDOW_SECS: u64 = 60;
/// The request header carrying the peer HTTP authentication.
pub const HTTP_HEADER: &str = "Flocon-Auth";

const LABEL_DATAGRAM: &[u8] = b"flocon datagram v1";
const LABEL_HTTP: &[u8] = b"flocon http v1";

/// HMAC-SHA-256 (RFC 2104) with the padded key already absorbed: each MAC costs two
/// clones and the hashing of the message.
#[derive(Clone)]
pub struct Hmac {
    inner: Sha256,
    outer: Sha256,
}

impl Hmac {
    pub fn new(key: &[u8]) -> Hmac {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut inner = Sha256::new();
        let mut outer = Sha256::new();
        inner.update(block.map(|b| b ^ 0x36));
        outer.update(block.map(|b| b ^ 0x5c));
        Hmac { inner, outer }
    }

    /// The full 32-byte MAC of the concatenated parts.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut i = self.inner.clone();
        for p in parts {
            i.update(p);
        }
        let mut o = self.outer.clone();
        o.update(i.finalize());
        o.finalize().into()
    }
}

/// One group key, as the two subkeys derived from it (so a MAC of one kind can never be
/// replayed as the other): `HMAC(key, "flocon datagram v1")` and `HMAC(key, "flocon http v1")`.
#[derive(Clone)]
pub struct Key {
    datagram: Hmac,
    http: Hmac,
}

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        let root = Hmac::new(secret);
        Key {
            datagram: Hmac::new(&root.mac(&[LABEL_DATAGRAM])),
            http: Hmac::new(&root.mac(&[LABEL_HTTP])),
        }
    }
}

/// The configured keys: the first signs, every one verifies (rotation: add the new key
/// second everywhere, then swap the order, then drop the old one).
#[derive(Clone, Default)]
pub struct Keys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({})", self.keys.len())
    }
}

impl Keys {
    pub fn from_secrets(secrets: &[&[u8]]) -> Keys {
        Keys {
            keys: secrets.iter().take(MAX_KEYS).map(|s| Key::new(s)).collect(),
        }
    }

    /// Reads key files (raw bytes, MIN_KEY_LEN..=MAX_KEY_LEN). A file that others may read
    /// is accepted with a warning in the result's second part.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<(Keys, Vec<String>), String> {
        use std::os::unix::fs::PermissionsExt;
        if paths.len() > MAX_KEYS {
            return Err(format!(
                "at most {MAX_KEYS} key files (the current and the old one)"
            ));
        }
        let mut secrets = Vec::new();
        let mut warnings = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let f = std::fs::File::open(p).map_err(|e| format!("key file {}: {e}", p.display()))?;
            let meta = f
                .metadata()
                .map_err(|e| format!("key file {}: {e}", p.display()))?;
            if !meta.is_file() {
                return Err(format!("key file {}: not a regular file", p.display()));
            }
            if meta.permissions().mode() & 0o077 != 0 {
                warnings.push(format!(
                    "key file {} can be read by other users (chmod 600 it)",
                    p.display()
                ));
            }
            let mut buf = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(f, MAX_KEY_LEN as u64 + 1),
                &mut buf,
            )
            .map_err(|e| format!("key file {}: {e}", p.display()))?;
            if buf.len() < MIN_KEY_LEN || buf.len() > MAX_KEY_LEN {
                return Err(format!(
                    "key file {}: {} bytes; a key is {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes \
                     (write one with `flocon genkey {}`)",
                    p.display(),
                    buf.len(),
                    p.display()
                ));
            }
            secrets.push(buf);
        }
        let refs: Vec<&[u8]> = secrets.iter().map(|s| s.as_slice()).collect();
        Ok((Keys::from_secrets(&refs), warnings))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Appends the trailer to a datagram encoded with FLAG_AUTH set: `stamp` (8 bytes) and
    /// the MAC of everything before it, under the signing key.
    pub fn seal(&self, datagram: &mut Vec<u8>, stamp: u64) {
        let Some(k) = self.keys.first() else { return };
        datagram.extend_from_slice(&stamp.to_be_bytes());
        let mac = k.datagram.mac(&[datagram]);
        datagram.extend_from_slice(&mac[..MAC_LEN]);
    }

    /// Checks a keyed datagram's MAC under every key; returns the message part (without the
    /// trailer) and the stamp. Constant-time comparison is not needed for a MAC checked
    /// against a fresh value each time, but costs nothing.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<(&'a [u8], u64), AuthError> {
        if datagram.len() < TRAILER_LEN {
            return Err(AuthError::TooShort);
        }
        let (signed, mac) = datagram.split_at(datagram.len() - MAC_LEN);
        let ok = self
            .keys
            .iter()
            .any(|k| eq_ct(&k.datagram.mac(&[signed])[..MAC_LEN], mac));
        if !ok {
            return Err(AuthError::BadMac);
        }
        let (msg, stamp) = signed.split_at(signed.len() - 8);
        let stamp = u64::from_be_bytes(stamp.try_into().unwrap_or([0; 8]));
        Ok((msg, stamp))
    }

    /// The `Flocon-Auth` value for a peer request: `<unix seconds>.<32 hex digits>`, the MAC
    /// of `METHOD "\n" path "\n" seconds` under the signing key's HTTP subkey.
    pub fn sign_request(&self, method: &str, path: &str, unix_secs: u64) -> Option<String> {
        let k = self.keys.first()?;
        Some(format!(
            "{unix_secs}.{}",
            hex(&http_mac(&k.http, method, path, unix_secs))
        ))
    }

    /// Whether `value` (the request's `Flocon-Auth`, if any) authenticates `method path`
    /// at `unix_secs` under one of the keys, within HTTP_WINDOW_SECS.
    pub fn verify_request(
        &self,
        method: &str,
        path: &str,
        value: Option<&str>,
        unix_secs: u64,
    ) -> bool {
        let Some((t, mac)) = value.and_then(|v| v.trim().split_once('.')) else {
            return false;
        };
        let Ok(t) = t.parse::<u64>() else {
            return false;
        };
        if t.abs_diff(unix_secs) > HTTP_WINDOW_SECS || mac.len() != 2 * MAC_LEN {
            return false;
        }
        let Some(mac) = unhex(mac) else { return false };
        self.keys
            .iter()
            .any(|k| eq_ct(&http_mac(&k.http, method, path, t), &mac))
    }
}

fn http_mac(k: &Hmac, method: &str, path: &str, secs: u64) -> [u8; MAC_LEN] {
    let full = k.mac(&[
        method.as_bytes(),
        b"\n",
        path.as_bytes(),
        b"\n",
        secs.to_string().as_bytes(),
    ]);
    let mut m = [0u8; MAC_LEN];
    m.copy_from_slice(&full[..MAC_LEN]);
    m
}

fn eq_ct(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Shorter than a trailer.
    TooShort,
    /// No configured key produces this MAC: forged, altered, or another group's.
    BadMac,
    /// The stamp is outside STAMP_WINDOW_US of our clock.
    Stale,
    /// This sender's datagram with this stamp was already accepted, or it is older than
    /// the reorder allowance.
    Replayed,
}

/// Writes a new random key file (mode 600), refusing to overwrite an existing one.
pub fn generate(path: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; GENERATED_KEY_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(&key)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Stamps for our own keyed datagrams: the wall clock in microseconds, strictly increasing
/// (two datagrams in the same microsecond, or a clock stepped back, still get new stamps).
#[derive(Debug, Default)]
pub struct Stamper {
    last: u64,
}

impl Stamper {
    pub fn next(&mut self, unix_us: u64) -> u64 {
        self.last = unix_us.max(self.last + 1);
        self.last
    }
}

/// What the replay guard remembers of one sender (by instance id).
#[derive(Debug, Clone)]
struct SenderWindow {
    highest: u64,
    recent: [u64; RECENT_STAMPS],
    next: usize,
}

/// Drops keyed datagrams that were already accepted or are too old. A stamp is accepted
/// once per sender when it is within STAMP_WINDOW_US of our clock and not older than the
/// sender's newest accepted stamp minus REORDER_US.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<u64, SenderWindow>,
}

impl ReplayGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks and records `stamp` from `instance` at our wall clock `unix_us`.
    pub fn check(&mut self, instance: u64, stamp: u64, unix_us: u64) -> Result<(), AuthError> {
        if stamp.abs_diff(unix_us) > STAMP_WINDOW_US {
            return Err(AuthError::Stale);
        }
        if let Some(w) = self.senders.get_mut(&instance) {
            if stamp.saturating_add(REORDER_US) < w.highest || w.recent.contains(&stamp) {
                return Err(AuthError::Replayed);
            }
            w.highest = w.highest.max(stamp);
            w.recent[w.next] = stamp;
            w.next = (w.next + 1) % RECENT_STAMPS;
            return Ok(());
        }
        if self.senders.len() >= MAX_SENDERS {
            // Forgetting a sender only readmits stamps that are still within the window.
            let oldest = self
                .senders
                .iter()
                .min_by_key(|(_, w)| w.highest)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.senders.remove(&k);
            }
        }
        let mut recent = [0u64; RECENT_STAMPS];
        recent[0] = stamp;
        self.senders.insert(
            instance,
            SenderWindow {
                highest: stamp,
                recent,
                next: 1,
            },
        );
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex_str(s: &str) -> Vec<u8> {
        unhex(&s.replace([' ', '\n'], "")).unwrap()
    }

    /// RFC 4231 test cases 1, 2 and 6 (key longer than the block).
    #[test]
    fn hmac_sha256_rfc4231() {
        let cases: [(&[u8], &[u8], &str); 3] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, msg, want) in cases {
            assert_eq!(hex(&Hmac::new(key).mac(&[msg])), want);
            // parts are concatenated
            let (a, b) = msg.split_at(3);
            assert_eq!(hex(&Hmac::new(key).mac(&[a, b])), want);
        }
    }

    /// The test vectors of docs/PROTOCOL.md §10.6: a second implementation must produce
    /// these exact bytes.
    #[test]
    fn protocol_md_test_vectors() {
        let secret: Vec<u8> = (0u8..32).collect();
        let keys = Keys::from_secrets(&[&secret]);
        // the GOODBYE of §4 with FLAG_AUTH, stamp 1_700_000_000_000_000 µs
        let mut d = unhex_str("464c434e 0102 0001 1122334455667788 00000007");
        keys.seal(&mut d, 1_700_000_000_000_000);
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md"))
            .unwrap();
        let want_dgram = hex(&d);
        let want_http = keys
            .sign_request("GET", "/v6-1.0-1-any.pkg.tar.zst", 1_700_000_000)
            .unwrap();
        let root = Hmac::new(&secret);
        let k_dgram = hex(&root.mac(&[LABEL_DATAGRAM]));
        let k_http = hex(&root.mac(&[LABEL_HTTP]));
        for (what, v) in [
            ("datagram subkey", &k_dgram),
            ("http subkey", &k_http),
            ("keyed GOODBYE", &want_dgram),
            ("Flocon-Auth", &want_http),
        ] {
            assert!(
                doc.contains(v.as_str()),
                "PROTOCOL.md §10.6 lacks the {what}: {v}"
            );
        }
        assert_eq!(d.len(), 20 + TRAILER_LEN);
        let (msg, stamp) = keys.open(&d).unwrap();
        assert_eq!((msg.len(), stamp), (20, 1_700_000_000_000_000));
    }

    #[test]
    fn datagrams_seal_open_and_reject_changes() {
        let keys = Keys::from_secrets(&[b"0123456789abcdef"]);
        let other = Keys::from_secrets(&[b"fedcba9876543210"]);
        let mut d = b"FLCN\x01\x02\x00\x01\x11\x22\x33\x44\x55\x66\x77\x88\0\0\0\x07".to_vec();
        keys.seal(&mut d, 42);
        assert!(keys.open(&d).is_ok());
        assert_eq!(other.open(&d), Err(AuthError::BadMac));
        for i in 0..d.len() {
            let mut x = d.clone();
            x[i] ^= 1;
            assert_eq!(keys.open(&x), Err(AuthError::BadMac), "byte {i}");
        }
        assert_eq!(keys.open(&d[..10]), Err(AuthError::TooShort));
        assert_eq!(keys.open(&d[..d.len() - 1]), Err(AuthError::BadMac));
        // rotation: a receiver with both keys takes either
        let both = Keys::from_secrets(&[b"fedcba9876543210", b"0123456789abcdef"]);
        assert!(both.open(&d).is_ok());
    }

    #[test]
    fn http_auth() {
        let keys = Keys::from_secrets(&[b"0123456789abcdef"]);
        let v = keys.sign_request("GET", "/a.pkg.tar.zst", 1000).unwrap();
        assert!(v.starts_with("1000.") && v.len() == 5 + 32);
        assert!(keys.verify_request("GET", "/a.pkg.tar.zst", Some(&v), 1000));
        assert!(keys.verify_request("GET", "/a.pkg.tar.zst", Some(&v), 1060));
        assert!(!keys.verify_request("GET", "/a.pkg.tar.zst", Some(&v), 1061));
        assert!(!keys.verify_request("HEAD", "/a.pkg.tar.zst", Some(&v), 1000));
        assert!(!keys.verify_request("GET", "/b.pkg.tar.zst", Some(&v), 1000));
        assert!(!keys.verify_request("GET", "/a.pkg.tar.zst", None, 1000));
        for bad in ["", "1000", "1000.", "x.00", "1000.zz", &v[..v.len() - 1]] {
            assert!(!keys.verify_request("GET", "/a.pkg.tar.zst", Some(bad), 1000));
        }
        let other = Keys::from_secrets(&[b"fedcba9876543210"]);
        assert!(!other.verify_request("GET", "/a.pkg.tar.zst", Some(&v), 1000));
        assert_eq!(Keys::default().sign_request("GET", "/", 1), None);
    }

    #[test]
    fn replay_guard() {
        let mut g = ReplayGuard::new();
        let now = 1_000_000_000_000u64;
        assert_eq!(g.check(1, now, now), Ok(()));
        assert_eq!(g.check(1, now, now), Err(AuthError::Replayed));
        assert_eq!(g.check(2, now, now), Ok(()), "other sender");
        assert_eq!(g.check(1, now + 10, now), Ok(()));
        // slightly out of order: fine once
        assert_eq!(g.check(1, now + 5, now), Ok(()));
        assert_eq!(g.check(1, now + 5, now), Err(AuthError::Replayed));
        assert_eq!(g.check(1, now + 1_000_000, now), Ok(()));
        assert_eq!(
            g.check(1, now + 20, now),
            Err(AuthError::Replayed),
            "older than the reorder allowance"
        );
        assert_eq!(
            g.check(3, now - STAMP_WINDOW_US - 1, now),
            Err(AuthError::Stale)
        );
        assert_eq!(
            g.check(3, now + STAMP_WINDOW_US + 1, now),
            Err(AuthError::Stale)
        );
        for i in 0..(MAX_SENDERS as u64 * 2) {
            let _ = g.check(100 + i, now + i, now);
            assert!(g.len() <= MAX_SENDERS);
        }
        let mut s = Stamper::default();
        assert_eq!(s.next(10), 10);
        assert_eq!(s.next(10), 11);
        assert_eq!(s.next(5), 12);
        assert_eq!(s.next(100), 100);
    }

    #[test]
    fn key_files() {
        let dir = std::env::temp_dir().join(format!("flocon-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let k = dir.join("k");
        generate(&k).unwrap();
        assert!(generate(&k).is_err(), "never overwrites");
        let (keys, warnings) = Keys::load(&[&k]).unwrap();
        assert_eq!((keys.len(), warnings.len()), (1, 0));
        std::fs::write(dir.join("short"), b"abc").unwrap();
        assert!(Keys::load(&[dir.join("short")]).is_err());
        assert!(Keys::load(&[dir.join("none")]).is_err());
        assert!(Keys::load(&[&k, &k, &k]).is_err());
        std::fs::write(dir.join("open"), [7u8; 20]).unwrap();
        let (_, w) = Keys::load(&[dir.join("open")]).unwrap();
        assert_eq!(w.len(), 1, "a world-readable key is reported");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
