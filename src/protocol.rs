//! The discovery wire format: encoding and strict, bounded decoding of the four UDP datagrams
//! (ANNOUNCE, GOODBYE, QUERY, ANSWER), the checking constructor of our own ANNOUNCE, and the
//! well-known groups and port. No sockets here. docs/PROTOCOL.md is the normative
//! description; this file and that one change together (a unit test holds its §12 table to
//! the constants here).

use crate::names;
use std::net::{Ipv4Addr, Ipv6Addr};

/// First bytes of every datagram, so stray traffic on the port is dropped cheaply.
pub const MAGIC: [u8; 4] = *b"FLCN";
/// Protocol version; a receiver drops every other value (no negotiation, see PROTOCOL.md).
pub const VERSION: u8 = 1;
/// The default `--port`: discovery's UDP port and the peer server's TCP port, one number
/// (README, "Ports").
pub const PORT: u16 = 19432;
/// Administratively scoped (RFC 2365); "194.32" recalls the port 19432.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 194, 32);
/// Link-local scope; group id 0x0019_0432 lies outside every IANA ff02:: assignment (see
/// PROTOCOL.md), and its MAC 33:33:00:19:04:32 outside the solicited-node 33:33:ff:… range.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x19, 0x432);
/// Multicast TTL / hop limit: discovery never leaves the link.
pub const MULTICAST_HOPS: u32 = 1;

/// magic 4 + version 1 + type 1 + flags 2 + instance 8 + seq 4.
pub const HEADER_LEN: usize = 20;
/// Human host name: Linux HOST_NAME_MAX is 64.
pub const MAX_NAME_LEN: usize = 64;
/// os-release `ID` values are short ("arch", "archarm"); 32 leaves room without waste.
pub const MAX_DISTRO_LEN: usize = 32;
/// pacman.conf hosts rarely list more than two; 4 bounds the announcement.
pub const MAX_ARCHS: usize = 4;
/// Longest real pacman arch names are ~9 bytes ("x86_64_v3", "pentium4").
pub const MAX_ARCH_LEN: usize = 16;
/// A QUERY's file name: the one rule's bound (names.rs).
pub const MAX_FILE_NAME_LEN: usize = names::MAX_FILE_NAME;
/// Every ANSWER has exactly this size: header + id 4 + status 1 + flags 1 + size 8 +
/// sha256 32 + uploads 2.
pub const ANSWER_LEN: usize = HEADER_LEN + 4 + 1 + 1 + 8 + 32 + 2;
/// A QUERY is padded to at least this, so the answer it causes is never larger (no
/// amplification, by construction).
pub const MIN_QUERY_LEN: usize = ANSWER_LEN;
/// An ARRIVING answer: the ANSWER layout, then received 8 + rate 4. Sent only in reply to a
/// QUERY at least this long (never larger than its query: PROTOCOL.md §4.6).
pub const ARRIVING_LEN: usize = ANSWER_LEN + 8 + 4;
/// Largest legal ANNOUNCE: port, uploads, name, distro, arch count and arches.
pub const MAX_ANNOUNCE_LEN: usize =
    HEADER_LEN + 2 + 2 + 1 + MAX_NAME_LEN + 1 + MAX_DISTRO_LEN + 1 + MAX_ARCHS * (1 + MAX_ARCH_LEN);
/// Largest legal QUERY: id, flags, size, sha256, name.
pub const MAX_QUERY_LEN: usize = HEADER_LEN + 4 + 1 + 8 + 32 + 1 + MAX_FILE_NAME_LEN;
/// Upper bound on any datagram we accept. Far below 576 (IPv4 minimum reassembly size) and
/// the IPv6 minimum MTU, so no datagram is ever fragmented; room left for later versions.
pub const MAX_DATAGRAM: usize = 512;
/// Receive buffer size: one byte more than MAX_DATAGRAM so an oversized datagram is seen as
/// such (it fills the buffer) instead of being silently truncated into a valid-looking one.
pub const RECV_BUFFER: usize = MAX_DATAGRAM + 1;

const _: () = assert!(MAX_ANNOUNCE_LEN <= MAX_DATAGRAM && MAX_QUERY_LEN <= MAX_DATAGRAM);
const _: () = assert!(ANSWER_LEN <= MIN_QUERY_LEN);

const TYPE_ANNOUNCE: u8 = 1;
const TYPE_GOODBYE: u8 = 2;
const TYPE_QUERY: u8 = 3;
const TYPE_ANSWER: u8 = 4;
/// Added within version 1 (docs/PROTOCOL.md §14): older decoders drop it (BadType).
const TYPE_DIGEST: u8 = 5;
/// A DIGEST datagram: the header and the digest version.
pub const DIGEST_DATAGRAM_LEN: usize = HEADER_LEN + 4;

/// Header flag bit reserved for the optional group key (a MAC trailer); never set in v1.
pub const FLAG_AUTH: u16 = 0x0001;
const QUERY_HAS_SIZE: u8 = 0x01;
const QUERY_HAS_SHA: u8 = 0x02;
/// An INTENT (docs/PROTOCOL.md §14.4): a QUERY to the groups, never answered; older decoders
/// drop it (an unknown flag bit).
const QUERY_INTENT: u8 = 0x04;
const ANSWER_HAS_SHA: u8 = 0x01;
const STATUS_DONT_HAVE: u8 = 0;
const STATUS_HAVE: u8 = 1;
/// The file is on its way to the answerer (PROTOCOL.md §4.6); a version-1 decoder that does
/// not know it drops the datagram (unknown status), so it is never read as HAVE.
const STATUS_ARRIVING: u8 = 2;
/// ARRIVING only: the answerer's own lookup for the file is still in flight (nothing fetched
/// yet); the lower instance fetches, the higher one joins (the tie-break).
const ANSWER_LOOKING: u8 = 0x02;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Random, non-zero, chosen once per daemon start; identifies the sender.
    pub instance: u64,
    /// Incremented (wrapping) for each datagram round the sender emits.
    pub seq: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Announce(Announce),
    Goodbye,
    Query(Query),
    Answer(Answer),
    /// An ANSWER with status ARRIVING.
    Arriving(Arriving),
    /// The version of the sender's cache digest (docs/PROTOCOL.md §14.1).
    Digest(u32),
    /// "I am about to fetch this": a QUERY with the INTENT flag, sent to the groups when a
    /// lookup found nobody; never answered (docs/PROTOCOL.md §14.4).
    Intent(Query),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub tcp_port: u16,
    pub uploads: u16,
    pub name: String,
    pub distro: String,
    pub archs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u32,
    pub name: String,
    pub size: Option<u64>,
    pub sha256: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: u32,
    pub have: bool,
    /// 0 when `have` is false.
    pub size: u64,
    /// Always None when `have` is false.
    pub sha256: Option<[u8; 32]>,
    pub uploads: u16,
}

/// "It is arriving here": a copy of the file in flight at the answerer, which its peer
/// server sends as it grows (docs/DESIGN.md, "One download per LAN").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arriving {
    pub id: u32,
    /// The whole file's size (the answerer's sync db).
    pub size: u64,
    pub sha256: Option<[u8; 32]>,
    pub uploads: u16,
    /// Bytes arrived so far.
    pub received: u64,
    /// Bytes per second arriving now (0: not measured yet).
    pub rate: u32,
    /// Its own lookup is still in flight: nothing is fetched yet.
    pub looking: bool,
}

/// What an answerer says of a file it does not hold whole yet (the ARRIVING fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub received: u64,
    pub rate: u32,
    pub looking: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooShort,
    TooLong,
    BadMagic,
    BadVersion(u8),
    BadType(u8),
    BadField(&'static str),
    Trailing,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooShort => write!(f, "datagram too short"),
            DecodeError::TooLong => write!(f, "datagram too long"),
            DecodeError::BadMagic => write!(f, "bad magic"),
            DecodeError::BadVersion(v) => write!(f, "unsupported protocol version {v}"),
            DecodeError::BadType(t) => write!(f, "unknown message type {t}"),
            DecodeError::BadField(name) => write!(f, "invalid field: {name}"),
            DecodeError::Trailing => write!(f, "trailing bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Answer {
    /// The canonical "don't have" answer (size 0, no hash), the only form decoders accept.
    pub fn dont_have(id: u32, uploads: u16) -> Answer {
        Answer {
            id,
            have: false,
            size: 0,
            sha256: None,
            uploads,
        }
    }
}

/// Why our own announcement cannot be sent: the field, its value and the rule every receiver
/// applies to it (§5), so the operator reads one line naming both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceError {
    /// "name", "distro", "architecture" or "architectures" (the list as a whole).
    pub field: &'static str,
    pub value: String,
    pub rule: String,
}

impl std::fmt::Display for AnnounceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.value.escape_debug();
        write!(f, "{} '{value}': {}", self.field, self.rule)
    }
}

impl std::error::Error for AnnounceError {}

impl Announce {
    /// Our own announcement: the one way the daemon builds it. Every field is checked against
    /// the rules decoders apply, so a value that every receiver would drop (an uppercase
    /// `Architecture`, a name too long) is an error naming it, never an announcement sent
    /// and silently ignored.
    pub fn new(
        tcp_port: u16,
        uploads: u16,
        name: &str,
        distro: &str,
        archs: &[String],
    ) -> Result<Announce, AnnounceError> {
        let refuse = |field, value: &str, rule: String| AnnounceError {
            field,
            value: value.to_string(),
            rule,
        };
        if tcp_port == 0 {
            return Err(refuse("tcp port", "0", "must be 1-65535".into()));
        }
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            let rule =
                format!("must be 1-{MAX_NAME_LEN} bytes of UTF-8 without control characters");
            return Err(refuse("name", name, rule));
        }
        check_distro(distro)?;
        if archs.len() > MAX_ARCHS {
            let rule = format!("an announcement carries at most {MAX_ARCHS} architectures");
            return Err(refuse("architectures", &archs.join(" "), rule));
        }
        for (i, arch) in archs.iter().enumerate() {
            if !valid_arch(arch.as_bytes()) {
                let rule = format!("must be 1-{MAX_ARCH_LEN} bytes of a-z, 0-9, '_' and '-'");
                return Err(refuse("architecture", arch, rule));
            }
            if archs[..i].contains(arch) {
                return Err(refuse("architecture", arch, "listed twice".into()));
            }
        }
        Ok(Announce {
            tcp_port,
            uploads,
            name: name.to_string(),
            distro: distro.to_string(),
            archs: archs.to_vec(),
        })
    }
}

fn valid_distro_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
}

/// The distro rule: os-release(5)'s `ID` charset, within the wire bound.
pub fn check_distro(distro: &str) -> Result<(), AnnounceError> {
    if valid_distro(distro.as_bytes()) {
        return Ok(());
    }
    Err(AnnounceError {
        field: "distro",
        value: distro.to_string(),
        rule: format!("must be 1-{MAX_DISTRO_LEN} bytes of a-z, 0-9, '.', '_' and '-'"),
    })
}

fn valid_distro(s: &[u8]) -> bool {
    !s.is_empty() && s.len() <= MAX_DISTRO_LEN && s.iter().all(|&b| valid_distro_byte(b))
}

fn valid_arch(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ARCH_LEN
        && s.iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Encodes one datagram into `out` (cleared first). Writes the message as given, except that
/// strings and lists are cut to their wire limits so the output stays well-formed and bounded;
/// use `check` (or the constructors) to be sure the receiver will accept it.
pub fn encode(h: &Header, m: &Message, out: &mut Vec<u8>) {
    out.clear();
    let ty = match m {
        Message::Announce(_) => TYPE_ANNOUNCE,
        Message::Goodbye => TYPE_GOODBYE,
        Message::Query(_) | Message::Intent(_) => TYPE_QUERY,
        Message::Answer(_) | Message::Arriving(_) => TYPE_ANSWER,
        Message::Digest(_) => TYPE_DIGEST,
    };
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(ty);
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&h.instance.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    match m {
        Message::Announce(a) => {
            out.extend_from_slice(&a.tcp_port.to_be_bytes());
            out.extend_from_slice(&a.uploads.to_be_bytes());
            put_str(out, &a.name, MAX_NAME_LEN);
            put_str(out, &a.distro, MAX_DISTRO_LEN);
            let n = a.archs.len().min(MAX_ARCHS);
            out.push(n as u8);
            for arch in &a.archs[..n] {
                put_str(out, arch, MAX_ARCH_LEN);
            }
        }
        Message::Goodbye => {}
        Message::Digest(version) => out.extend_from_slice(&version.to_be_bytes()),
        Message::Query(q) | Message::Intent(q) => {
            out.extend_from_slice(&q.id.to_be_bytes());
            let mut flags = if matches!(m, Message::Intent(_)) {
                QUERY_INTENT
            } else {
                0
            };
            if q.size.is_some() {
                flags |= QUERY_HAS_SIZE;
            }
            if q.sha256.is_some() {
                flags |= QUERY_HAS_SHA;
            }
            out.push(flags);
            out.extend_from_slice(&q.size.unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&q.sha256.unwrap_or([0; 32]));
            put_str(out, &q.name, MAX_FILE_NAME_LEN);
            if out.len() < MIN_QUERY_LEN {
                out.resize(MIN_QUERY_LEN, 0);
            }
        }
        Message::Answer(a) => {
            out.extend_from_slice(&a.id.to_be_bytes());
            out.push(if a.have {
                STATUS_HAVE
            } else {
                STATUS_DONT_HAVE
            });
            out.push(if a.sha256.is_some() {
                ANSWER_HAS_SHA
            } else {
                0
            });
            out.extend_from_slice(&a.size.to_be_bytes());
            out.extend_from_slice(&a.sha256.unwrap_or([0; 32]));
            out.extend_from_slice(&a.uploads.to_be_bytes());
        }
        Message::Arriving(a) => {
            out.extend_from_slice(&a.id.to_be_bytes());
            out.push(STATUS_ARRIVING);
            let mut flags = 0;
            if a.sha256.is_some() {
                flags |= ANSWER_HAS_SHA;
            }
            if a.looking {
                flags |= ANSWER_LOOKING;
            }
            out.push(flags);
            out.extend_from_slice(&a.size.to_be_bytes());
            out.extend_from_slice(&a.sha256.unwrap_or([0; 32]));
            out.extend_from_slice(&a.uploads.to_be_bytes());
            out.extend_from_slice(&a.received.to_be_bytes());
            out.extend_from_slice(&a.rate.to_be_bytes());
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let b = s.as_bytes();
    let n = b.len().min(max);
    out.push(n as u8);
    out.extend_from_slice(&b[..n]);
}

/// Whether a receiver would accept `m` exactly as given (encode, decode, compare). For
/// messages whose fields come from configuration or the file system.
pub fn check(h: &Header, m: &Message) -> Result<(), DecodeError> {
    let mut buf = Vec::with_capacity(MAX_DATAGRAM);
    encode(h, m, &mut buf);
    let (h2, m2) = decode(&buf)?;
    if &h2 == h && &m2 == m {
        Ok(())
    } else {
        Err(DecodeError::BadField("not representable"))
    }
}

/// Bounds-checked reader over a datagram; every read past the end is `TooShort`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::TooShort)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::TooShort)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A u8 length then that many bytes; the length must be 1..=max.
    fn short_bytes(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u8()? as usize;
        if n == 0 || n > max {
            return Err(DecodeError::BadField(field));
        }
        self.bytes(n)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Sets the header flags of an encoded datagram (FLAG_AUTH before the MAC trailer is added).
pub fn set_flags(buf: &mut [u8], flags: u16) {
    if let Some(f) = buf.get_mut(6..8) {
        f.copy_from_slice(&flags.to_be_bytes());
    }
}

/// Decodes one datagram, accepting only the exact v1 layout (see PROTOCOL.md "Validation").
pub fn decode(buf: &[u8]) -> Result<(Header, Message), DecodeError> {
    decode_with_flags(buf, 0)
}

/// Decodes a datagram whose header flags must be exactly `flags`: 0 for an open LAN,
/// FLAG_AUTH for the message part of a keyed datagram whose trailer was checked and removed
/// (auth.rs).
pub fn decode_with_flags(buf: &[u8], flags: u16) -> Result<(Header, Message), DecodeError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLong);
    }
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::TooShort);
    }
    let mut r = Reader { buf, pos: 0 };
    if r.array::<4>()? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let ty = r.u8()?;
    if !(TYPE_ANNOUNCE..=TYPE_DIGEST).contains(&ty) {
        return Err(DecodeError::BadType(ty));
    }
    // FLAG_AUTH changes the layout (MAC trailer), so an open receiver cannot interpret a
    // keyed datagram and a keyed receiver takes nothing else.
    if r.u16()? != flags {
        return Err(DecodeError::BadField("flags"));
    }
    let instance = r.u64()?;
    if instance == 0 {
        return Err(DecodeError::BadField("instance"));
    }
    let seq = r.u32()?;
    let header = Header { instance, seq };
    let msg = match ty {
        TYPE_ANNOUNCE => Message::Announce(decode_announce(&mut r)?),
        TYPE_GOODBYE => Message::Goodbye,
        TYPE_QUERY => decode_query(&mut r)?,
        TYPE_DIGEST => Message::Digest(r.u32()?),
        _ => decode_answer(&mut r)?,
    };
    if r.remaining() != 0 {
        return Err(DecodeError::Trailing);
    }
    Ok((header, msg))
}

fn decode_announce(r: &mut Reader<'_>) -> Result<Announce, DecodeError> {
    let tcp_port = r.u16()?;
    if tcp_port == 0 {
        return Err(DecodeError::BadField("tcp port"));
    }
    let uploads = r.u16()?;
    let name = std::str::from_utf8(r.short_bytes(MAX_NAME_LEN, "name")?)
        .map_err(|_| DecodeError::BadField("name"))?;
    // Control characters would let a peer forge log lines or garble `flocon status`.
    if name.chars().any(char::is_control) {
        return Err(DecodeError::BadField("name"));
    }
    let distro = r.short_bytes(MAX_DISTRO_LEN, "distro")?;
    if !valid_distro(distro) {
        return Err(DecodeError::BadField("distro"));
    }
    let count = r.u8()? as usize;
    if count > MAX_ARCHS {
        return Err(DecodeError::BadField("arch count"));
    }
    let mut archs: Vec<String> = Vec::with_capacity(count);
    for _ in 0..count {
        let a = r.short_bytes(MAX_ARCH_LEN, "arch")?;
        if !valid_arch(a) || archs.iter().any(|x| x.as_bytes() == a) {
            return Err(DecodeError::BadField("arch"));
        }
        // valid_arch admits ASCII only, so this is lossless.
        archs.push(String::from_utf8_lossy(a).into_owned());
    }
    Ok(Announce {
        tcp_port,
        uploads,
        name: name.to_string(),
        // valid_distro admits ASCII only.
        distro: String::from_utf8_lossy(distro).into_owned(),
        archs,
    })
}

fn decode_query(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let id = r.u32()?;
    let flags = r.u8()?;
    if flags & !(QUERY_HAS_SIZE | QUERY_HAS_SHA | QUERY_INTENT) != 0 {
        return Err(DecodeError::BadField("query flags"));
    }
    let size = r.u64()?;
    let sha = r.array::<32>()?;
    // Absent values must be zero so every query has exactly one encoding.
    if flags & QUERY_HAS_SIZE == 0 && size != 0 {
        return Err(DecodeError::BadField("size"));
    }
    if flags & QUERY_HAS_SHA == 0 && sha != [0; 32] {
        return Err(DecodeError::BadField("sha256"));
    }
    let name = r.short_bytes(MAX_FILE_NAME_LEN, "file name")?;
    if !names::is_file_name(name) {
        return Err(DecodeError::BadField("file name"));
    }
    // Exactly the zero padding that brings the datagram to MIN_QUERY_LEN: a shorter query
    // could earn an answer larger than itself.
    let pad = MIN_QUERY_LEN.saturating_sub(r.pos);
    if r.bytes(pad)?.iter().any(|&b| b != 0) {
        return Err(DecodeError::BadField("padding"));
    }
    let q = Query {
        id,
        // names::is_file_name admits ASCII only.
        name: String::from_utf8_lossy(name).into_owned(),
        size: (flags & QUERY_HAS_SIZE != 0).then_some(size),
        sha256: (flags & QUERY_HAS_SHA != 0).then_some(sha),
    };
    Ok(if flags & QUERY_INTENT != 0 {
        Message::Intent(q)
    } else {
        Message::Query(q)
    })
}

fn decode_answer(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let id = r.u32()?;
    let status = r.u8()?;
    let flags = r.u8()?;
    let size = r.u64()?;
    let sha = r.array::<32>()?;
    let uploads = r.u16()?;
    let known = if status == STATUS_ARRIVING {
        ANSWER_HAS_SHA | ANSWER_LOOKING
    } else {
        ANSWER_HAS_SHA
    };
    if flags & !known != 0 {
        return Err(DecodeError::BadField("answer flags"));
    }
    if flags & ANSWER_HAS_SHA == 0 && sha != [0; 32] {
        return Err(DecodeError::BadField("sha256"));
    }
    let sha256 = (flags & ANSWER_HAS_SHA != 0).then_some(sha);
    let have = match status {
        STATUS_HAVE => true,
        STATUS_DONT_HAVE => {
            if size != 0 || flags != 0 {
                return Err(DecodeError::BadField("dont-have answer"));
            }
            false
        }
        STATUS_ARRIVING => {
            let received = r.u64()?;
            let rate = r.u32()?;
            // something on its way has a size, and has not arrived whole
            if size == 0 || received >= size {
                return Err(DecodeError::BadField("arriving answer"));
            }
            let looking = flags & ANSWER_LOOKING != 0;
            if looking && (received != 0 || rate != 0) {
                return Err(DecodeError::BadField("arriving answer"));
            }
            return Ok(Message::Arriving(Arriving {
                id,
                size,
                sha256,
                uploads,
                received,
                rate,
                looking,
            }));
        }
        _ => return Err(DecodeError::BadField("status")),
    };
    Ok(Message::Answer(Answer {
        id,
        have,
        size,
        sha256,
        uploads,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> Header {
        Header {
            instance: 0x0123_4567_89ab_cdef,
            seq: 0xfedc_ba98,
        }
    }

    fn long(c: char, n: usize) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    /// One valid example of every message type and edge of every field.
    fn samples() -> Vec<Message> {
        vec![
            Message::Announce(Announce {
                tcp_port: 19432,
                uploads: 3,
                name: "pi-kitchen".into(),
                distro: "archarm".into(),
                archs: vec!["aarch64".into()],
            }),
            Message::Announce(Announce {
                tcp_port: 65535,
                uploads: u16::MAX,
                name: long('é', MAX_NAME_LEN / 2),
                distro: long('a', MAX_DISTRO_LEN),
                archs: vec![long('a', 16), long('b', 16), long('c', 16), long('d', 16)],
            }),
            Message::Announce(Announce {
                tcp_port: 1,
                uploads: 0,
                name: "x".into(),
                distro: "arch".into(),
                archs: vec![],
            }),
            Message::Goodbye,
            Message::Query(Query {
                id: 7,
                name: "a".into(),
                size: None,
                sha256: None,
            }),
            Message::Query(Query {
                id: u32::MAX,
                name: "linux-6.9.1.arch1-1-x86_64.pkg.tar.zst".into(),
                size: Some(140_000_000),
                sha256: Some([0xab; 32]),
            }),
            Message::Query(Query {
                id: 0,
                name: long('z', MAX_FILE_NAME_LEN),
                size: Some(0),
                sha256: None,
            }),
            Message::Query(Query {
                id: 1,
                name: "b.sig".into(),
                size: None,
                sha256: Some([1; 32]),
            }),
            Message::Answer(Answer {
                id: 42,
                have: true,
                size: u64::MAX,
                sha256: Some([0x5a; 32]),
                uploads: 2,
            }),
            Message::Answer(Answer {
                id: 43,
                have: true,
                size: 1234,
                sha256: None,
                uploads: 0,
            }),
            Message::Answer(Answer::dont_have(44, 9)),
            Message::Arriving(Arriving {
                id: 45,
                size: 100_000_000,
                sha256: Some([0x11; 32]),
                uploads: 1,
                received: 40_000_000,
                rate: 2_500_000,
                looking: false,
            }),
            Message::Arriving(Arriving {
                id: 46,
                size: 1,
                sha256: None,
                uploads: 0,
                received: 0,
                rate: 0,
                looking: true,
            }),
            Message::Digest(0),
            Message::Digest(u32::MAX),
            Message::Intent(Query {
                id: 9,
                name: "linux-6.9.1.arch1-1-x86_64.pkg.tar.zst".into(),
                size: Some(140_000_000),
                sha256: Some([0xcd; 32]),
            }),
            Message::Intent(Query {
                id: 10,
                name: "a".into(),
                size: None,
                sha256: None,
            }),
        ]
    }

    /// The two additions of §14 in bytes: a decoder that predates them refuses both (type 5
    /// is outside 1..=4; qflags bit 2 is not HAS_SIZE or HAS_SHA).
    #[test]
    fn digest_and_intent_layouts() {
        let d = enc(&hdr(), &Message::Digest(0x0102_0304));
        assert_eq!(d.len(), DIGEST_DATAGRAM_LEN);
        assert_eq!(&d[4..8], &[1, 5, 0, 0]);
        assert_eq!(&d[20..], &[1, 2, 3, 4]);
        assert_eq!(decode(&d[..23]), Err(DecodeError::TooShort));
        let mut long = d.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::Trailing));
        let q = Query {
            id: 3,
            name: "zstd-1.5.6-1-x86_64.pkg.tar.zst".into(),
            size: Some(7),
            sha256: None,
        };
        let i = enc(&hdr(), &Message::Intent(q.clone()));
        let plain = enc(&hdr(), &Message::Query(q));
        assert_eq!(i.len(), plain.len());
        assert_eq!(i[24], 0x05, "HAS_SIZE | INTENT");
        assert_eq!(plain[24], 0x01);
        assert_eq!(i[..24], plain[..24]);
        assert_eq!(i[25..], plain[25..]);
        let mut b = i.clone();
        b[24] = 0x0d;
        assert_eq!(decode(&b), Err(DecodeError::BadField("query flags")));
    }

    fn enc(h: &Header, m: &Message) -> Vec<u8> {
        let mut out = vec![0xff; 3]; // encode must clear it
        encode(h, m, &mut out);
        out
    }

    #[test]
    fn round_trips() {
        for m in samples() {
            let buf = enc(&hdr(), &m);
            assert!(buf.len() <= MAX_DATAGRAM);
            assert_eq!(decode(&buf), Ok((hdr(), m.clone())), "{m:?}");
            assert_eq!(check(&hdr(), &m), Ok(()));
        }
    }

    #[test]
    fn exact_layouts() {
        let g = enc(
            &Header {
                instance: 1,
                seq: 2,
            },
            &Message::Goodbye,
        );
        assert_eq!(
            g,
            [
                b'F', b'L', b'C', b'N', 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2
            ]
        );
        let a = enc(&hdr(), &Message::Answer(Answer::dont_have(5, 1)));
        assert_eq!(a.len(), ANSWER_LEN);
        assert_eq!(&a[20..26], &[0, 0, 0, 5, 0, 0]);
        assert_eq!(&a[66..], &[0, 1]);
    }

    #[test]
    fn limits_add_up() {
        let mut lens = vec![];
        for m in samples() {
            lens.push(enc(&hdr(), &m).len());
        }
        assert!(lens.contains(&MAX_ANNOUNCE_LEN));
        assert!(lens.contains(&MAX_QUERY_LEN));
        assert!(lens.contains(&MIN_QUERY_LEN));
        assert!(lens.contains(&HEADER_LEN));
    }

    #[test]
    fn arriving_exact_bytes() {
        // "arriving: 0x1000 of 0x2000 bytes at 0x300 bytes/s, hash 0x11.., 1 upload", to
        // query 0x2a of instance 0x1122334455667788, seq 7 (docs/PROTOCOL.md §4.6)
        let h = Header {
            instance: 0x1122_3344_5566_7788,
            seq: 7,
        };
        let m = Message::Arriving(Arriving {
            id: 0x2a,
            size: 0x2000,
            sha256: Some([0x11; 32]),
            uploads: 1,
            received: 0x1000,
            rate: 0x300,
            looking: false,
        });
        let mut want = vec![
            0x46, 0x4c, 0x43, 0x4e, 0x01, 0x04, 0x00, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
            0x77, 0x88, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x2a, 0x02, 0x01, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x20, 0x00,
        ];
        want.extend_from_slice(&[0x11; 32]);
        want.extend_from_slice(&[0x00, 0x01]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x10, 0x00, 0, 0, 0x03, 0x00]);
        let got = enc(&h, &m);
        assert_eq!(got, want);
        assert_eq!(got.len(), ARRIVING_LEN);
        assert_eq!(decode(&got), Ok((h.clone(), m.clone())));
        // a version-1 decoder reads the status at offset 24 and knows only 0 and 1, and
        // takes exactly 68 bytes: it drops this (BadField), it never reads HAVE
        assert!(got[24] > STATUS_HAVE);
        assert_ne!(got.len(), ANSWER_LEN);
        // the "looking" form: flags bit 1, nothing received, no rate
        let l = Message::Arriving(Arriving {
            id: 0x2a,
            size: 0x2000,
            sha256: None,
            uploads: 0,
            received: 0,
            rate: 0,
            looking: true,
        });
        let lb = enc(&h, &l);
        assert_eq!(&lb[24..26], &[0x02, 0x02]);
        assert_eq!(decode(&lb), Ok((h.clone(), l)));
        // what no sender makes is refused: looking with bytes, all received, size 0,
        // LOOKING on a HAVE, an ARRIVING cut to the v1 length
        let mut bad = lb.clone();
        bad[ANSWER_LEN + 7] = 1;
        assert!(decode(&bad).is_err());
        let mut bad = got.clone();
        bad[ANSWER_LEN..ANSWER_LEN + 8].copy_from_slice(&0x2000u64.to_be_bytes());
        assert!(decode(&bad).is_err());
        let mut bad = got.clone();
        bad[26..34].copy_from_slice(&[0; 8]);
        assert!(decode(&bad).is_err());
        let mut bad = enc(&hdr(), &Message::Answer(Answer::dont_have(1, 0)));
        bad[24] = STATUS_HAVE;
        bad[25] = ANSWER_LOOKING;
        bad[33] = 1;
        assert_eq!(decode(&bad), Err(DecodeError::BadField("answer flags")));
        assert_eq!(decode(&got[..ANSWER_LEN]), Err(DecodeError::TooShort));
        // under a group key it carries the same 24-byte trailer as any datagram (§10.2)
        let keys = crate::auth::Keys::from_secrets(&[b"0123456789abcdef"]);
        let mut keyed = got.clone();
        set_flags(&mut keyed, FLAG_AUTH);
        keys.seal(&mut keyed, 1_700_000_000_000_000);
        assert_eq!(keyed.len(), ARRIVING_LEN + 24);
        let (body, _) = keys.open(&keyed).unwrap();
        assert_eq!(decode_with_flags(body, FLAG_AUTH), Ok((h, m)));
    }

    #[test]
    fn no_amplification() {
        let smallest_query = Message::Query(Query {
            id: 1,
            name: "a".into(),
            size: None,
            sha256: None,
        });
        let q = enc(&hdr(), &smallest_query);
        assert_eq!(q.len(), MIN_QUERY_LEN);
        let largest_answer = Message::Answer(Answer {
            id: 1,
            have: true,
            size: u64::MAX,
            sha256: Some([0xff; 32]),
            uploads: u16::MAX,
        });
        assert!(enc(&hdr(), &largest_answer).len() <= q.len());
        // The unpadded query is shorter than an answer: dropping the padding must fail.
        let unpadded = &q[..q.len() - 1];
        assert_eq!(decode(unpadded), Err(DecodeError::TooShort));
        // Every accepted query, whatever its name, is at least one answer long.
        for n in 1..=MAX_FILE_NAME_LEN {
            let m = Message::Query(Query {
                id: 1,
                name: long('q', n),
                size: None,
                sha256: None,
            });
            assert!(enc(&hdr(), &m).len() >= ANSWER_LEN);
        }
    }

    #[test]
    fn every_truncation_fails() {
        for m in samples() {
            let buf = enc(&hdr(), &m);
            for cut in 0..buf.len() {
                assert!(decode(&buf[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn trailing_bytes_fail() {
        for m in samples() {
            let mut buf = enc(&hdr(), &m);
            buf.push(0);
            assert_eq!(decode(&buf), Err(DecodeError::Trailing), "{m:?}");
        }
    }

    #[test]
    fn header_checks() {
        let good = enc(&hdr(), &Message::Goodbye);
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(decode(&b), Err(DecodeError::BadMagic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(decode(&b), Err(DecodeError::BadVersion(2)));
        for ty in [0u8, 6, 255] {
            let mut b = good.clone();
            b[5] = ty;
            assert_eq!(decode(&b), Err(DecodeError::BadType(ty)));
        }
        let mut b = good.clone();
        b[7] = FLAG_AUTH as u8;
        assert_eq!(decode(&b), Err(DecodeError::BadField("flags")));
        let zero = enc(
            &Header {
                instance: 0,
                seq: 0,
            },
            &Message::Goodbye,
        );
        assert_eq!(decode(&zero), Err(DecodeError::BadField("instance")));
        assert_eq!(decode(&[0; MAX_DATAGRAM + 1]), Err(DecodeError::TooLong));
        let mut huge = good.clone();
        huge.resize(RECV_BUFFER, 0);
        assert_eq!(decode(&huge), Err(DecodeError::TooLong));
    }

    fn announce(name: &str, distro: &str, archs: &[&str]) -> Message {
        Message::Announce(Announce {
            tcp_port: 1,
            uploads: 0,
            name: name.into(),
            distro: distro.into(),
            archs: archs.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn oversized_or_invalid_fields() {
        let bad = |m: Message| check(&hdr(), &m).is_err();
        assert!(bad(announce(&long('n', MAX_NAME_LEN + 1), "arch", &[])));
        assert!(bad(announce("", "arch", &[])));
        assert!(bad(announce("a\nb", "arch", &[])));
        assert!(bad(announce("a\u{7f}", "arch", &[])));
        assert!(bad(announce("n", &long('d', MAX_DISTRO_LEN + 1), &[])));
        assert!(bad(announce("n", "Arch", &[])));
        assert!(bad(announce("n", "", &[])));
        assert!(bad(announce("n", "arch", &["a", "b", "c", "d", "e"])));
        assert!(bad(announce("n", "arch", &[&long('a', MAX_ARCH_LEN + 1)])));
        assert!(bad(announce("n", "arch", &["x86 64"])));
        assert!(bad(announce("n", "arch", &["any", "any"])));
        assert!(bad(Message::Announce(Announce {
            tcp_port: 0,
            uploads: 0,
            name: "n".into(),
            distro: "arch".into(),
            archs: vec![],
        })));
        for name in ["", ".hidden", "a/b", "a b", "é", "a\0", &long('x', 256)] {
            let q = Message::Query(Query {
                id: 1,
                name: name.into(),
                size: None,
                sha256: None,
            });
            assert!(bad(q), "{name:?}");
        }
        let dont_have_with_size = Message::Answer(Answer {
            id: 1,
            have: false,
            size: 3,
            sha256: None,
            uploads: 0,
        });
        assert!(bad(dont_have_with_size));

        // Raw-byte violations that the encoder can never produce.
        let q = enc(
            &hdr(),
            &Message::Query(Query {
                id: 1,
                name: "a".into(),
                size: None,
                sha256: None,
            }),
        );
        let mut b = q.clone();
        b[24] = 0x08; // unknown query flag (0x04 is INTENT)
        assert_eq!(decode(&b), Err(DecodeError::BadField("query flags")));
        let mut b = q.clone();
        b[32] = 1; // size present though flagged absent
        assert_eq!(decode(&b), Err(DecodeError::BadField("size")));
        let mut b = q.clone();
        b[40] = 1; // sha present though flagged absent
        assert_eq!(decode(&b), Err(DecodeError::BadField("sha256")));
        let mut b = q.clone();
        b[67] = 1; // non-zero padding
        assert_eq!(decode(&b), Err(DecodeError::BadField("padding")));
        let mut b = q.clone();
        b[65] = 0; // zero-length name
        assert_eq!(decode(&b), Err(DecodeError::BadField("file name")));

        let a = enc(&hdr(), &Message::Answer(Answer::dont_have(1, 0)));
        let mut b = a.clone();
        b[24] = 3;
        assert_eq!(decode(&b), Err(DecodeError::BadField("status")));
        // ARRIVING in the 68 bytes of a v1 answer: too short, never a HAVE
        let mut b = a.clone();
        b[24] = 2;
        assert_eq!(decode(&b), Err(DecodeError::TooShort));
        let mut b = a.clone();
        b[25] = 2;
        assert_eq!(decode(&b), Err(DecodeError::BadField("answer flags")));
        let mut b = a.clone();
        b[24] = 1;
        b[40] = 9; // hash bytes without the hash flag
        assert_eq!(decode(&b), Err(DecodeError::BadField("sha256")));
        let mut b = a.clone();
        b[25] = 1; // "don't have" cannot carry a hash
        assert_eq!(decode(&b), Err(DecodeError::BadField("dont-have answer")));

        let an = enc(&hdr(), &announce("n", "arch", &[]));
        let mut b = an.clone();
        b[25] = 0xff; // name: invalid UTF-8
        assert_eq!(decode(&b), Err(DecodeError::BadField("name")));
        let mut b = an.clone();
        *b.last_mut().unwrap() = (MAX_ARCHS + 1) as u8;
        assert_eq!(decode(&b), Err(DecodeError::BadField("arch count")));
    }

    /// The constructor accepts what receivers accept and refuses the rest, naming the field,
    /// the value and the rule.
    #[test]
    fn announce_new_checks_every_field() {
        let archs = |list: &[&str]| -> Vec<String> { list.iter().map(|a| a.to_string()).collect() };
        let a = Announce::new(19432, 3, "pi", "archarm", &archs(&["armv7h"])).unwrap();
        assert_eq!(
            a,
            Announce {
                tcp_port: 19432,
                uploads: 3,
                name: "pi".into(),
                distro: "archarm".into(),
                archs: archs(&["armv7h"]),
            }
        );
        let longest = archs(&[&long('a', 16), &long('b', 16), "x86_64_v3", "i-6_8"]);
        let a = Announce::new(1, 0, &long('é', 32), &long('a', 32), &longest).unwrap();
        assert_eq!(check(&hdr(), &Message::Announce(a)), Ok(()));
        assert!(Announce::new(1, 0, "h", "arch", &[]).is_ok());

        let refused = |port, name: &str, distro: &str, list: &[&str]| {
            Announce::new(port, 0, name, distro, &archs(list))
                .unwrap_err()
                .to_string()
        };
        let arch_rule = "must be 1-16 bytes of a-z, 0-9, '_' and '-'";
        let cases: &[(u16, &str, &str, &[&str], String)] = &[
            (0, "h", "arch", &[], "tcp port '0': must be 1-65535".into()),
            (
                1,
                "",
                "arch",
                &[],
                "name '': must be 1-64 bytes of UTF-8 without control characters".into(),
            ),
            (
                1,
                &long('x', 65),
                "arch",
                &[],
                format!("name '{}': must be 1-64", long('x', 65)),
            ),
            (1, "a\nb", "arch", &[], "name 'a\\nb': must be".into()),
            (
                1,
                "h",
                "Arch Linux!",
                &[],
                "distro 'Arch Linux!': must be 1-32 bytes of a-z, 0-9, '.', '_' and '-'".into(),
            ),
            (1, "h", &long('a', 33), &[], "distro 'aaaa".into()),
            (1, "h", "", &[], "distro '': must be".into()),
            (
                1,
                "h",
                "arch",
                &["X86_64"],
                format!("architecture 'X86_64': {arch_rule}"),
            ),
            (
                1,
                "h",
                "arch",
                &["x86_64", ""],
                format!("architecture '': {arch_rule}"),
            ),
            (
                1,
                "h",
                "arch",
                &[&long('a', 17)],
                format!("architecture '{}': {arch_rule}", long('a', 17)),
            ),
            (
                1,
                "h",
                "arch",
                &["x86_64", "x86_64"],
                "architecture 'x86_64': listed twice".into(),
            ),
            (
                1,
                "h",
                "arch",
                &["a", "b", "c", "d", "e"],
                "architectures 'a b c d e': an announcement carries at most 4 architectures".into(),
            ),
        ];
        for (port, name, distro, list, message) in cases {
            let got = refused(*port, name, distro, list);
            assert!(
                got.starts_with(message.as_str()),
                "{got:?} does not start with {message:?}"
            );
        }
    }

    /// Mini-fuzz: `Announce::new` accepts exactly the announcements that survive an encode and
    /// decode unchanged, so nothing it builds is dropped by a receiver and nothing a receiver
    /// takes is refused.
    #[test]
    fn announce_new_agrees_with_the_decoder() {
        let alphabet = [
            "a", "z", "0", "9", "_", "-", ".", "A", "Z", " ", "é", "\n", "\u{7f}", "/",
        ];
        let mut rng = crate::xorshift::XorShift::new(0x0a11_0c4e);
        // Mostly the first seven (every field's rule admits most of them), now and then all.
        let text = |rng: &mut crate::xorshift::XorShift, max: usize| -> String {
            let letters = if rng.below(4) == 0 { alphabet.len() } else { 7 };
            (0..rng.below(max))
                .map(|_| alphabet[rng.below(letters)])
                .collect()
        };
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..20_000 {
            // Long fields now and then, near each bound.
            let max = if round % 8 == 0 { 70 } else { 20 };
            let name = text(&mut rng, max);
            let distro = text(&mut rng, max);
            let list: Vec<String> = (0..rng.below(MAX_ARCHS + 2))
                .map(|_| text(&mut rng, max))
                .collect();
            let port = rng.below(3) as u16;
            let raw = Announce {
                tcp_port: port,
                uploads: 7,
                name: name.clone(),
                distro: distro.clone(),
                archs: list.clone(),
            };
            let wire = check(&hdr(), &Message::Announce(raw.clone())).is_ok();
            match Announce::new(port, 7, &name, &distro, &list) {
                Ok(a) => {
                    assert!(wire, "{a:?} built but dropped by a receiver");
                    assert_eq!(a, raw);
                    accepted += 1;
                }
                Err(e) => {
                    assert!(!wire, "{raw:?} refused ({e}) but a receiver takes it");
                    refused += 1;
                }
            }
        }
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }

    /// QUERY names follow the one file-name rule (names.rs): what it refuses is a bad field.
    #[test]
    fn query_names_follow_the_one_rule() {
        let query = |name: &str| {
            let m = Message::Query(Query {
                id: 7,
                name: name.into(),
                size: None,
                sha256: None,
            });
            let mut out = Vec::new();
            encode(&hdr(), &m, &mut out);
            decode(&out)
        };
        for good in ["zstd-1.5.6-1-x86_64.pkg.tar.zst.sig", "a", "core.db"] {
            assert!(query(good).is_ok(), "{good:?}");
        }
        for bad in [
            "..", ".a", "x/y", "x\\y", "x\x7f", "a b", "a.part", "x.PART",
        ] {
            assert_eq!(
                query(bad).unwrap_err(),
                DecodeError::BadField("file name"),
                "{bad:?}"
            );
        }
    }

    use crate::xorshift::XorShift;

    /// Whatever decode accepts must re-encode to the same bytes: one encoding per message.
    fn decode_is_canonical(buf: &[u8]) -> bool {
        match decode(buf) {
            Ok((h, m)) => {
                assert_eq!(enc(&h, &m), buf);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn mini_fuzz() {
        let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
        // Random buffers, some starting with a valid magic/version/type so the body
        // decoders get exercised, not only the magic check.
        for i in 0..10_000 {
            let len = (rng.next() % (RECV_BUFFER as u64 + 1)) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 && len >= HEADER_LEN {
                buf[..4].copy_from_slice(&MAGIC);
                buf[4] = VERSION;
                buf[5] = 1 + (rng.next() % 4) as u8;
                buf[6] = 0;
                buf[7] = 0;
            }
            decode_is_canonical(&buf);
        }
        // Mutations of valid messages: flipped bytes, inserted and removed bytes.
        let valid: Vec<Vec<u8>> = samples().iter().map(|m| enc(&hdr(), m)).collect();
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut buf = valid[(rng.next() % valid.len() as u64) as usize].clone();
            for _ in 0..1 + rng.next() % 4 {
                let pos = (rng.next() % (buf.len() as u64 + 1)) as usize;
                match rng.next() % 4 {
                    0 if pos < buf.len() => buf[pos] ^= 1 << (rng.next() % 8),
                    1 if pos < buf.len() => buf[pos] = rng.next() as u8,
                    2 => buf.insert(pos, rng.next() as u8),
                    _ if pos < buf.len() => {
                        buf.remove(pos);
                    }
                    _ => {}
                }
            }
            accepted += usize::from(decode_is_canonical(&buf));
        }
        // Mutations that stay valid (ids, counters) must exist, or the body decoders were
        // never reached past their first check.
        assert!(accepted > 100, "{accepted}");
    }

    /// A duration as docs/PROTOCOL.md §12 writes it, in `unit` (ms, s, min or h).
    fn in_unit(d: std::time::Duration, unit: &str) -> String {
        let per: u128 = match unit {
            "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => panic!("unit {unit}"),
        };
        let n = d.as_nanos();
        if n.is_multiple_of(per) {
            format!("{} {unit}", n / per)
        } else {
            format!("{} {unit}", n as f64 / per as f64)
        }
    }

    /// The code's value of a constant named in §12, written as the table writes it; `None`
    /// for a name the code does not have.
    fn code_value(name: &str) -> Option<String> {
        use crate::{auth, digest, discovery, env, front, peers};
        use std::time::Duration;
        let d = in_unit;
        Some(match name {
            "MAGIC" => format!("\"{}\"", std::str::from_utf8(&MAGIC).unwrap()),
            "VERSION" => VERSION.to_string(),
            "PORT" => PORT.to_string(),
            "GROUP_V4" => GROUP_V4.to_string(),
            "GROUP_V6" => GROUP_V6.to_string(),
            "MULTICAST_HOPS" => MULTICAST_HOPS.to_string(),
            "HEADER_LEN" => HEADER_LEN.to_string(),
            "MAX_NAME_LEN" => MAX_NAME_LEN.to_string(),
            "MAX_DISTRO_LEN" => MAX_DISTRO_LEN.to_string(),
            "MAX_ARCHS" => MAX_ARCHS.to_string(),
            "MAX_ARCH_LEN" => MAX_ARCH_LEN.to_string(),
            "MAX_FILE_NAME_LEN" => MAX_FILE_NAME_LEN.to_string(),
            "ANSWER_LEN" => ANSWER_LEN.to_string(),
            "MIN_QUERY_LEN" => MIN_QUERY_LEN.to_string(),
            "ARRIVING_LEN" => ARRIVING_LEN.to_string(),
            "MAX_ANNOUNCE_LEN" => MAX_ANNOUNCE_LEN.to_string(),
            "MAX_QUERY_LEN" => MAX_QUERY_LEN.to_string(),
            "MAX_DATAGRAM" => MAX_DATAGRAM.to_string(),
            "RECV_BUFFER" => RECV_BUFFER.to_string(),
            "FLAG_AUTH" => format!("0x{FLAG_AUTH:04x}"),
            "DIGEST_DATAGRAM_LEN" => DIGEST_DATAGRAM_LEN.to_string(),
            "MIN_LOG2_BITS" => digest::MIN_LOG2_BITS.to_string(),
            "MAX_LOG2_BITS" => digest::MAX_LOG2_BITS.to_string(),
            "BITS_PER_NAME" => digest::BITS_PER_NAME.to_string(),
            "HASHES" => digest::HASHES.to_string(),
            "MAX_DIGEST_LEN" => digest::MAX_DIGEST_LEN.to_string(),
            "DIGEST_FANOUT" => digest::DIGEST_FANOUT.to_string(),
            "MISS_WAIT" => d(digest::MISS_WAIT, "µs"),
            "DIGEST_GAP" => d(digest::DIGEST_GAP, "s"),
            "DIGEST_BURST" => digest::DIGEST_BURST.to_string(),
            "INTENT_TTL" => d(digest::INTENT_TTL, "s"),
            "MAX_INTENTS" => digest::MAX_INTENTS.to_string(),
            "INTENDERS_PER_NAME" => digest::INTENDERS_PER_NAME.to_string(),
            "MAX_DIGEST_FETCHES" => env::MAX_DIGEST_FETCHES.to_string(),
            "DIGEST_RETRY" => d(discovery::DIGEST_RETRY, "s"),
            "JOIN_SHARE" => format!(
                "{} of the copy budget ({})",
                front::JOIN_SHARE,
                d(front::COPY_BUDGET, "s")
            ),
            "ANNOUNCE_INTERVAL" => d(peers::ANNOUNCE_INTERVAL, "s"),
            "ANNOUNCE_JITTER" => d(peers::ANNOUNCE_JITTER, "s"),
            "ANNOUNCE_INTERVAL_MAX" => d(peers::ANNOUNCE_INTERVAL_MAX, "s"),
            "STARTUP_ANNOUNCES" => peers::STARTUP_ANNOUNCES.to_string(),
            "STARTUP_GAP" => d(peers::STARTUP_GAP, "s"),
            "HURRY_DELAY_MAX" => d(peers::HURRY_DELAY_MAX, "ms"),
            "MIN_ANNOUNCE_GAP" => d(peers::MIN_ANNOUNCE_GAP, "s"),
            "PEER_EXPIRY" => d(peers::PEER_EXPIRY, "s"),
            "ADDR_FAILOVER" => d(peers::ADDR_FAILOVER, "s"),
            "MAX_PEERS" => peers::MAX_PEERS.to_string(),
            "LOOKUP_BUDGET" => d(peers::LOOKUP_BUDGET, "ms"),
            "MAX_LOOKUP_STRETCH" => d(peers::MAX_LOOKUP_STRETCH, "ms"),
            "MARK_HALF_LIFE" => d(peers::MARK_HALF_LIFE, "s"),
            "RATE_PER_SEC" => format!("{}/s", peers::RATE_PER_SEC),
            "RATE_BURST" => peers::RATE_BURST.to_string(),
            "RATE_SOURCES" => peers::RATE_SOURCES.to_string(),
            "BAN_FIRST" => d(peers::BAN_FIRST, "min"),
            "BAN_MAX" => d(peers::BAN_MAX, "h"),
            "BAN_MEMORY" => d(peers::BAN_MEMORY, "h"),
            "MAX_BANS" => peers::MAX_BANS.to_string(),
            "MAX_CHECKS" => peers::MAX_CHECKS.to_string(),
            "CHECK_RATE" => format!("{}/s", peers::CHECK_RATE),
            "CHECK_TIMEOUT" => d(peers::CHECK_TIMEOUT, "ms"),
            "CHECK_TRIES" => peers::CHECK_TRIES.to_string(),
            "CHECK_NAME" => format!("`{}`", peers::CHECK_NAME),
            "SILENT_AFTER" => peers::SILENT_AFTER.to_string(),
            "SILENT_FOR" => d(peers::SILENT_FOR, "s"),
            "SILENT_RETRY" => peers::SILENT_RETRY.to_string(),
            "CHECK_BACKOFF" => d(peers::CHECK_BACKOFF, "s"),
            "MAX_FAILED_CHECKS" => peers::MAX_FAILED_CHECKS.to_string(),
            "MAX_LATE_CHECKS" => peers::MAX_LATE_CHECKS.to_string(),
            "STRANGER_ANSWERS" => format!("{}/s", discovery::STRANGER_ANSWERS),
            "MAX_FANOUT" => discovery::MAX_FANOUT.to_string(),
            "MAX_STATIC_PEERS" => discovery::MAX_STATIC_PEERS.to_string(),
            "TRAILER_LEN" => auth::TRAILER_LEN.to_string(),
            "MAC_LEN" => auth::MAC_LEN.to_string(),
            "STAMP_WINDOW_US" => d(Duration::from_micros(auth::STAMP_WINDOW_US), "s"),
            "REORDER_US" => d(Duration::from_micros(auth::REORDER_US), "ms"),
            "HTTP_WINDOW_SECS" => d(Duration::from_secs(auth::HTTP_WINDOW_SECS), "s"),
            _ => return None,
        })
    }

    /// docs/PROTOCOL.md §12 cannot drift from the code: every name it lists is defined in the
    /// file it names, with exactly the value it gives, and every public constant of this
    /// file (the wire format) is listed.
    #[test]
    fn protocol_md_constants_match_the_code() {
        let doc = include_str!("../docs/PROTOCOL.md");
        let sources = [
            ("protocol.rs", include_str!("protocol.rs")),
            ("peers.rs", include_str!("peers.rs")),
            ("front.rs", include_str!("front.rs")),
            ("discovery.rs", include_str!("discovery.rs")),
            ("auth.rs", include_str!("auth.rs")),
            ("digest.rs", include_str!("digest.rs")),
            ("env.rs", include_str!("env.rs")),
        ];
        let start = doc
            .find("\n## 12. Constants (as in the code)\n")
            .expect("PROTOCOL.md has §12");
        let section = &doc[start + 1..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
        let mut listed: Vec<String> = Vec::new();
        for row in &rows {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            let [names, values, file] = cells[..] else {
                panic!("§12 row {row:?}: expected | names | values | file |");
            };
            let names: Vec<&str> = names.split('`').skip(1).step_by(2).collect();
            let mut values: Vec<&str> = values
                .split(", ")
                .flat_map(|v| v.split(" / "))
                .flat_map(|v| v.split(" ± "))
                .collect();
            // `A` = `B` | v: both have the value.
            if values.len() == 1 && row.contains("` = `") {
                values = vec![values[0]; names.len()];
            }
            assert_eq!(
                names.len(),
                values.len(),
                "§12 row {row:?}: names and values"
            );
            let (_, source) = sources
                .iter()
                .find(|(f, _)| *f == file)
                .unwrap_or_else(|| panic!("§12 row {row:?}: unknown file {file}"));
            for (name, value) in names.iter().zip(values) {
                let code = code_value(name)
                    .unwrap_or_else(|| panic!("§12 lists {name}, which the code does not have"));
                assert_eq!(value, code, "§12: {name}");
                assert!(
                    source.contains(&format!("const {name}:")),
                    "§12: {name} is not defined in {file}"
                );
                listed.push(name.to_string());
            }
        }
        assert!(rows.len() > 20, "{} rows in §12", rows.len());
        let public = sources[0]
            .1
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split(':').next());
        for name in public {
            assert!(listed.iter().any(|l| l == name), "§12 does not list {name}");
        }
    }
}
