//! The `.sig` files flocon takes from a peer: the check that one is a single OpenPGP
//! signature packet of plausible size (pacman verifies the signature itself; this only keeps
//! garbage from failing its transaction), and `SigFetch`, the bounds of fetching one. (A sync
//! db's `%PGPSIG%` needs neither: syncdb.rs decodes it, and it is right by construction.)
//! Pure: bytes in, verdict out, time passed in. See docs/DESIGN.md, "The .sig files".

use crate::policy::Conduct;
use std::time::{Duration, Instant};

/// Largest `.sig` accepted. pacman itself refuses a `.sig` above 16 KiB ("hard upper limit"
/// in libalpm's dload.c), so nothing bigger can ever be useful to it; real ones are 119 bytes
/// (ed25519) to ~570 (RSA 4096), and even an RSA 16384 signature with generous subpackets
/// stays under 3 KiB.
pub(crate) const MAX_SIG_BYTES: usize = 16 * 1024;

/// The whole `.sig` from a peer within this, else upstream: a LAN peer sends a few hundred
/// bytes in milliseconds, and pacman's 10 s no-progress clock must keep room for the mirror.
pub(crate) const SIG_DEADLINE: Duration = Duration::from_secs(2);

/// OpenPGP packet tag of a signature (RFC 9580, 5.2).
const TAG_SIGNATURE: u8 = 2;
/// Signature type "binary document": what `gpg --detach-sign` makes of a package file.
const SIG_BINARY: u8 = 0x00;

/// Why bytes are not a `.sig` pacman could use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SigError {
    Empty,
    TooLong(usize),
    /// The first octet is not a packet header (bit 7 clear), e.g. ASCII armor or text.
    NotAPacket,
    /// Another packet than a signature (a public key, literal data, ...).
    WrongTag(u8),
    /// A length form a signature never uses (old-format indeterminate, new-format partial).
    BadLengthForm,
    /// The packet's length runs past the end of the bytes.
    Truncated,
    /// Bytes after the one packet (a second signature, junk).
    Trailing(usize),
    UnknownVersion(u8),
    /// The signature is over something else than a binary document.
    WrongType(u8),
    /// The signature's own fields (subpacket areas, salt) do not fit its packet.
    Inconsistent,
}

impl std::fmt::Display for SigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigError::Empty => write!(f, "empty .sig"),
            SigError::TooLong(n) => write!(f, ".sig of {n} bytes (at most {MAX_SIG_BYTES})"),
            SigError::NotAPacket => write!(f, "not an OpenPGP packet"),
            SigError::WrongTag(t) => write!(f, "OpenPGP packet of tag {t}, not a signature"),
            SigError::BadLengthForm => write!(f, "a packet length form signatures never use"),
            SigError::Truncated => write!(f, "the signature packet is cut short"),
            SigError::Trailing(n) => write!(f, "{n} bytes after the signature packet"),
            SigError::UnknownVersion(v) => write!(f, "signature version {v}"),
            SigError::WrongType(t) => write!(f, "signature type {t:#04x}, not a binary document"),
            SigError::Inconsistent => write!(f, "the signature's fields do not fit its length"),
        }
    }
}

/// Accepts exactly one OpenPGP signature packet (old or new header format) over a binary
/// document, whose header length, subpacket areas and version-specific fields are
/// consistent with its size, and nothing else.
pub(crate) fn check(bytes: &[u8]) -> Result<(), SigError> {
    if bytes.is_empty() {
        return Err(SigError::Empty);
    }
    if bytes.len() > MAX_SIG_BYTES {
        return Err(SigError::TooLong(bytes.len()));
    }
    let (tag, header, len) = packet_header(bytes)?;
    if tag != TAG_SIGNATURE {
        return Err(SigError::WrongTag(tag));
    }
    let end = header.checked_add(len).ok_or(SigError::Truncated)?;
    if end > bytes.len() {
        return Err(SigError::Truncated);
    }
    if end < bytes.len() {
        return Err(SigError::Trailing(bytes.len() - end));
    }
    signature_body(&bytes[header..end])
}

/// (tag, header length, body length) of the packet starting `b`.
fn packet_header(b: &[u8]) -> Result<(u8, usize, usize), SigError> {
    let ctb = b[0];
    if ctb & 0x80 == 0 {
        return Err(SigError::NotAPacket);
    }
    let at = |i: usize| {
        b.get(i)
            .copied()
            .map(usize::from)
            .ok_or(SigError::Truncated)
    };
    if ctb & 0x40 == 0 {
        // old format: tag in bits 5-2, length type in bits 1-0
        let tag = (ctb >> 2) & 0x0f;
        return match ctb & 3 {
            0 => Ok((tag, 2, at(1)?)),
            1 => Ok((tag, 3, at(1)? << 8 | at(2)?)),
            2 => Ok((tag, 5, be32(b, 1)?)),
            _ => Err(SigError::BadLengthForm),
        };
    }
    let tag = ctb & 0x3f;
    match at(1)? {
        o if o < 192 => Ok((tag, 2, o)),
        o if o < 224 => Ok((tag, 3, ((o - 192) << 8) + at(2)? + 192)),
        255 => Ok((tag, 6, be32(b, 2)?)),
        // partial body lengths are for data packets only
        _ => Err(SigError::BadLengthForm),
    }
}

fn be32(b: &[u8], at: usize) -> Result<usize, SigError> {
    let s: [u8; 4] = b
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or(SigError::Truncated)?;
    Ok(u32::from_be_bytes(s) as usize)
}

/// The version-specific layout (RFC 9580 5.2.2 and 5.2.3; v5 as LibrePGP).
fn signature_body(b: &[u8]) -> Result<(), SigError> {
    let version = *b.first().ok_or(SigError::Inconsistent)?;
    match version {
        3 => {
            // version, 5, type, time(4), key id(8), pk algo, hash algo, hash16(2), MPIs
            if b.len() < 20 || b[1] != 5 {
                return Err(SigError::Inconsistent);
            }
            if b[2] != SIG_BINARY {
                return Err(SigError::WrongType(b[2]));
            }
            Ok(())
        }
        4..=6 => {
            // version, type, pk algo, hash algo, hashed area, unhashed area, hash16(2), ...
            if b.len() < 4 {
                return Err(SigError::Inconsistent);
            }
            if b[1] != SIG_BINARY {
                return Err(SigError::WrongType(b[1]));
            }
            let count_len = if version == 6 { 4 } else { 2 };
            let mut at = 4;
            for _ in 0..2 {
                let n = count(b, at, count_len)?;
                at += count_len;
                let area = b.get(at..at + n).ok_or(SigError::Inconsistent)?;
                subpackets(area)?;
                at += n;
            }
            at += 2;
            if version == 6 {
                // a salt of its own length
                let salt = usize::from(*b.get(at).ok_or(SigError::Inconsistent)?);
                at += 1 + salt;
            }
            // the signature material itself: at least one octet
            if at >= b.len() {
                return Err(SigError::Inconsistent);
            }
            Ok(())
        }
        v => Err(SigError::UnknownVersion(v)),
    }
}

fn count(b: &[u8], at: usize, len: usize) -> Result<usize, SigError> {
    let s = b.get(at..at + len).ok_or(SigError::Inconsistent)?;
    Ok(s.iter().fold(0usize, |n, &o| n << 8 | usize::from(o)))
}

/// A subpacket area must be whole subpackets, each with a type octet.
fn subpackets(mut area: &[u8]) -> Result<(), SigError> {
    while let Some(&o) = area.first() {
        let (header, len) = match usize::from(o) {
            o if o < 192 => (1, o),
            o if o < 255 => {
                let o2 = usize::from(*area.get(1).ok_or(SigError::Inconsistent)?);
                (2, ((o - 192) << 8) + o2 + 192)
            }
            _ => (5, be32(area, 1).map_err(|_| SigError::Inconsistent)?),
        };
        if len == 0 {
            return Err(SigError::Inconsistent);
        }
        let end = header + len;
        if end > area.len() {
            return Err(SigError::Inconsistent);
        }
        area = &area[end..];
    }
    Ok(())
}

/// A `.sig` being fetched from a peer: the whole file within `SIG_DEADLINE` and
/// `MAX_SIG_BYTES`, checked before anything reaches pacman. Each step returns the peer's
/// `Conduct` when it fails (policy.rs judges it); the caller then asks the mirror.
#[derive(Debug)]
pub(crate) struct SigFetch {
    deadline: Instant,
    bytes: Vec<u8>,
}

impl SigFetch {
    pub(crate) fn new(now: Instant) -> Self {
        SigFetch {
            deadline: now + SIG_DEADLINE,
            bytes: Vec::new(),
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The answer's head. A flocon peer answers 200 with a Content-Length for a file it has,
    /// 404 for one it has not, 503 when full; nothing else (no redirect is ever followed).
    pub(crate) fn on_head(&mut self, status: u16, length: Option<u64>) -> Result<(), Conduct> {
        match status {
            200 => {}
            404 | 416 => return Err(Conduct::Gone),
            503 => return Err(Conduct::Busy),
            _ => return Err(Conduct::BadHead),
        }
        match length {
            Some(n) if n > 0 && n <= MAX_SIG_BYTES as u64 => Ok(()),
            Some(_) => Err(Conduct::BadSig),
            None => Err(Conduct::BadHead),
        }
    }

    pub(crate) fn on_body(&mut self, data: &[u8], now: Instant) -> Result<(), Conduct> {
        if now >= self.deadline {
            return Err(self.late());
        }
        if self.bytes.len() + data.len() > MAX_SIG_BYTES {
            return Err(Conduct::BadSig);
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    /// The body ended cleanly: the bytes if they are one signature.
    pub(crate) fn finish(&mut self, now: Instant) -> Result<Vec<u8>, Conduct> {
        if now >= self.deadline {
            return Err(self.late());
        }
        check(&self.bytes).map_err(|_| Conduct::BadSig)?;
        Ok(std::mem::take(&mut self.bytes))
    }

    /// The deadline passed with the `.sig` incomplete: nothing (a stall) or some (a drip).
    pub(crate) fn late(&self) -> Conduct {
        if self.bytes.is_empty() {
            Conduct::Stall
        } else {
            Conduct::Drip
        }
    }

    #[cfg(test)]
    pub(crate) fn timed_out(&self, now: Instant) -> bool {
        now >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                &include_bytes!(concat!("../tests/data/sig/", $name))[..],
            )
        };
    }

    #[test]
    fn real_signatures_pass_and_the_rest_is_refused() {
        let good = [
            fixture!("ed25519.sig"),
            fixture!("nistp256.sig"),
            fixture!("rsa2048.sig"),
            fixture!("rsa4096.sig"),
            fixture!("notation.sig"),
            fixture!("ed25519-new.sig"),
            fixture!("rsa4096-new.sig"),
            fixture!("rsa4096-new4.sig"),
            fixture!("ed25519-old4.sig"),
            fixture!("rsa4096-old4.sig"),
        ];
        for (name, bytes) in good {
            assert_eq!(check(bytes), Ok(()), "{name}");
        }
        let bad = [
            (fixture!("two.sig"), SigError::Trailing(310)),
            (fixture!("text.sig"), SigError::WrongType(1)),
            (fixture!("armored.sig"), SigError::NotAPacket),
            (fixture!("pubkey-ed25519.gpg"), SigError::WrongTag(6)),
        ];
        for ((name, bytes), want) in bad {
            assert_eq!(check(bytes), Err(want), "{name}");
        }
    }

    #[test]
    fn what_a_lying_peer_sends_is_refused() {
        let real = include_bytes!("../tests/data/sig/rsa4096.sig");
        let x1000 = vec![b'x'; 1000];
        let huge = {
            let mut v = real.to_vec();
            v.resize(MAX_SIG_BYTES + 1, 0);
            v
        };
        let cases: Vec<(&str, Vec<u8>, SigError)> = vec![
            ("nothing", vec![], SigError::Empty),
            ("1000 x", x1000, SigError::NotAPacket),
            ("html", b"<html>404</html>".to_vec(), SigError::NotAPacket),
            ("too big", huge, SigError::TooLong(MAX_SIG_BYTES + 1)),
            ("cut short", real[..300].to_vec(), SigError::Truncated),
            ("header only", real[..2].to_vec(), SigError::Truncated),
            ("one byte", real[..1].to_vec(), SigError::Truncated),
            (
                "junk after",
                [&real[..], b"\n"].concat(),
                SigError::Trailing(1),
            ),
            // old-format indeterminate length, new-format partial length
            (
                "indeterminate",
                [&[0x8bu8][..], &real[3..]].concat(),
                SigError::BadLengthForm,
            ),
            (
                "partial",
                [&[0xc2u8, 0xe5][..], &real[3..]].concat(),
                SigError::BadLengthForm,
            ),
        ];
        for (what, bytes, want) in cases {
            assert_eq!(check(&bytes), Err(want), "{what}");
        }
    }

    #[test]
    fn the_signature_fields_must_fit_the_packet() {
        let real = include_bytes!("../tests/data/sig/ed25519.sig").to_vec();
        // [0x88, len, version 4, type, pk, hash, hashed count (2), ...]
        assert_eq!(real[2], 4);
        let with = |i: usize, v: u8| {
            let mut b = real.clone();
            b[i] = v;
            b
        };
        assert_eq!(check(&with(2, 7)), Err(SigError::UnknownVersion(7)));
        assert_eq!(check(&with(3, 0x13)), Err(SigError::WrongType(0x13)));
        // a hashed area longer than the packet
        assert_eq!(check(&with(6, 0xff)), Err(SigError::Inconsistent));
        // a subpacket of length 0 / running past its area
        assert_eq!(check(&with(8, 0)), Err(SigError::Inconsistent));
        assert_eq!(check(&with(8, 0x40)), Err(SigError::Inconsistent));
        // nothing after the areas: no signature material
        // (2 header + 4 fixed + 2 + 29 hashed + 2 + 10 unhashed + 2 hash16 = 51 bytes)
        let mut cut = real[..51].to_vec();
        cut[1] = 49;
        assert_eq!(check(&cut), Err(SigError::Inconsistent));
        // a v3 signature: fixed fields
        let mut v3 = vec![0x88, 0, 3, 5, 0];
        v3.extend_from_slice(&[0; 4 + 8 + 2 + 2]);
        v3.extend_from_slice(&[0, 8, 0xaa]);
        v3[1] = (v3.len() - 2) as u8;
        assert_eq!(check(&v3), Ok(()));
        v3[3] = 4;
        assert_eq!(check(&v3), Err(SigError::Inconsistent));
    }

    #[test]
    fn every_prefix_and_every_byte_flip_never_panics() {
        // a small mini-fuzz: truncations and single-byte changes of real signatures
        for (_, bytes) in [fixture!("rsa4096-new.sig"), fixture!("notation.sig")] {
            for n in 0..bytes.len() {
                assert!(check(&bytes[..n]).is_err(), "prefix {n}");
            }
            for i in 0..bytes.len() {
                for v in [0u8, 0x7f, 0xc0, 0xff] {
                    let mut b = bytes.to_vec();
                    b[i] = v;
                    let _ = check(&b);
                }
            }
        }
    }

    #[test]
    fn a_peer_sig_fetch() {
        let real = include_bytes!("../tests/data/sig/ed25519.sig");
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // the good case, in pieces
        let mut f = SigFetch::new(t0);
        f.on_head(200, Some(real.len() as u64)).unwrap();
        f.on_body(&real[..50], ms(10)).unwrap();
        f.on_body(&real[50..], ms(20)).unwrap();
        assert_eq!(f.finish(ms(30)).unwrap(), real);
        // heads
        let head = |status, len| SigFetch::new(t0).on_head(status, len);
        assert_eq!(head(404, Some(0)), Err(Conduct::Gone));
        assert_eq!(head(503, Some(0)), Err(Conduct::Busy));
        assert_eq!(head(302, Some(0)), Err(Conduct::BadHead));
        assert_eq!(head(200, None), Err(Conduct::BadHead));
        assert_eq!(head(200, Some(0)), Err(Conduct::BadSig));
        assert_eq!(
            head(200, Some(MAX_SIG_BYTES as u64 + 1)),
            Err(Conduct::BadSig)
        );
        // 1,000 bytes of x: the right length, the wrong bytes
        let mut f = SigFetch::new(t0);
        f.on_head(200, Some(1000)).unwrap();
        f.on_body(&[b'x'; 1000], ms(5)).unwrap();
        assert_eq!(f.finish(ms(6)), Err(Conduct::BadSig));
        // more than the cap, whatever the head said
        let mut f = SigFetch::new(t0);
        f.on_body(&[0; MAX_SIG_BYTES], ms(5)).unwrap();
        assert_eq!(f.on_body(&[0], ms(6)), Err(Conduct::BadSig));
        // a drip: some bytes, then the deadline
        let mut f = SigFetch::new(t0);
        f.on_head(200, Some(real.len() as u64)).unwrap();
        f.on_body(&real[..1], ms(1000)).unwrap();
        assert!(!f.timed_out(ms(1999)));
        assert!(f.timed_out(ms(2000)));
        assert_eq!(f.on_body(&real[1..2], ms(2000)), Err(Conduct::Drip));
        assert_eq!(f.late(), Conduct::Drip);
        // a stall: nothing at all
        let f = SigFetch::new(t0);
        assert_eq!(f.late(), Conduct::Stall);
        assert_eq!(f.deadline(), t0 + SIG_DEADLINE);
        // the whole file, but too late
        let mut f = SigFetch::new(t0);
        let mut g = SigFetch::new(t0);
        g.on_body(real, ms(100)).unwrap();
        assert_eq!(g.finish(ms(200)).unwrap(), real);
        f.on_body(real, ms(100)).unwrap();
        assert_eq!(f.finish(ms(2500)), Err(Conduct::Drip));
    }
}
