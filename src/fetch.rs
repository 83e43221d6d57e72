//! flocon's outbound HTTP/1.1 client: one request on one connection, to a LAN peer or an
//! `http://` mirror (docs/DESIGN.md, "Upstreams"), driven by the daemon's single-threaded mio loop. It owns the
//! connection's state machine (connect, send, response head, body framing) and the three time
//! bounds that keep a dead server from stalling pacman. Parsing lives in http/, URLs in url.rs;
//! this file only moves bytes and decides when a response is complete.
//!
//! Contract with the loop: register `stream` for READABLE | WRITABLE, call `drive` on every
//! event for it, after `pause(false)`, and again while `wants_drive()` (the per-call read
//! budget ran out before the socket was drained: readiness is edge-triggered, so no new event
//! would come for bytes already waiting). Check `timed_out` (or wake at `next_deadline`) and
//! drop the fetch when it says so. Redirects are not followed here: the caller sees `Head`
//! with a 3xx status and its `location`.

use crate::chunk::{CHUNK_SIZE, Chunk};
use crate::http::{self, BodyFraming, ChunkedDecoder, Method, ResponseInfo};
use crate::url::HttpUrl;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A LAN peer or a mirror that has not completed the TCP handshake in 5 s is dead or
/// unreachable for our purpose; the caller moves on to the next source.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The response head must arrive within 10 s of the connection being up (the request is a
/// few hundred bytes and leaves at once). Also bounds a server trickling its head slowly.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// No body byte for 8 s means failed: pacman aborts after 10 s without progress, and the
/// caller needs the last 2 s to switch source and deliver something.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(8);
/// Most body bytes one `drive` call reads and delivers, so one fast connection cannot
/// monopolise a loop turn (fairness between transfers), and a consumer that pauses the fetch
/// whenever it has less room than this is never overrun.
pub(crate) const MAX_BODY_BUFFER: usize = 256 * 1024;
/// Size of one read: 64 KiB matches the usual socket receive quantum. Each read goes into a
/// pooled `Chunk` that becomes the body event itself (no copy, no allocation per read).
const READ_CHUNK: usize = CHUNK_SIZE;

/// One outbound request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: Method,
    pub addr: SocketAddr,
    /// What is asked for: the request target and the `Host` header (`addr` is where).
    pub url: HttpUrl,
    /// Extra request headers, e.g. `Range`, `If-Modified-Since`.
    pub headers: Vec<(String, String)>,
}

/// What a `drive` call observed, in wire order: `Head`, then `Body` pieces, then exactly one
/// of `Done` / `Failed` (`Failed` may also come before any `Head`). Nothing after either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Head(ResponseInfo),
    /// Decoded body bytes (chunk framing removed), never past the promised Content-Length.
    /// Dropping the chunk recycles its buffer.
    Body(Chunk),
    /// The body is complete (or there is none: HEAD, 1xx/204/304, Content-Length 0).
    Done,
    /// The connection failed or the server broke the protocol; the reason is for the log.
    Failed(String),
}

/// How the body ends; the counters are what is still expected.
#[derive(Debug)]
enum Body {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// What the connection waits for.
#[derive(Debug)]
enum State {
    /// Non-blocking connect in progress (first writable event tells how it ended).
    Connecting,
    /// Request bytes still to write.
    Sending,
    WaitingForHead,
    ReadingBody(Body),
    /// Done or Failed was emitted.
    Finished,
}

/// Tells whether a non-blocking connect has completed: Ok(true) connected, Ok(false) still
/// in progress, Err the reason it failed.
type ConnectCheck<S> = fn(&S) -> io::Result<bool>;

/// One request on one connection. Generic over the stream so tests drive the real state
/// machine over any `Read + Write`.
pub(crate) struct Fetch<S = mio::net::TcpStream> {
    /// The socket, for the caller to register with mio (READABLE | WRITABLE).
    pub stream: S,
    state: State,
    /// Set only by `connect`: other streams are connected when handed over.
    connect_check: Option<ConnectCheck<S>>,
    head_request: bool,
    /// The serialized request and how much of it is written.
    out: Vec<u8>,
    written: usize,
    /// Response head bytes; bounded by `http::MAX_RESPONSE_HEAD`. `head_start` skips 1xx
    /// interim heads already parsed.
    head: Vec<u8>,
    head_start: usize,
    /// Body bytes that arrived in the same reads as the head.
    carry: Vec<u8>,
    /// Start of the current connect/head bound.
    since: Instant,
    /// Last time a body byte was delivered (start of the stall bound).
    last_progress: Instant,
    /// Body bytes the consumer takes before it says again (`set_room`); 0 = paused.
    room: usize,
    /// Unpaused but not driven since: the stall bound restarts at the next `drive`, since the
    /// silence while paused was ours.
    stall_restart: bool,
    /// The last `drive` stopped on its budget, not on WouldBlock.
    more: bool,
    received: u64,
}

/// `stream.take_error()` reports a failed connect (ECONNREFUSED, EHOSTUNREACH, ...);
/// `peer_addr` failing with ENOTCONN means the handshake is still under way.
fn mio_connect_check(stream: &mio::net::TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotConnected || e.kind() == ErrorKind::WouldBlock => {
            Ok(false)
        }
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

impl Fetch<mio::net::TcpStream> {
    /// Starts a non-blocking connect to `req.addr`. An error here is immediate (no route, no
    /// local address); a refused or unreachable peer shows up later as `Failed`.
    pub(crate) fn connect(req: Request, now: Instant) -> io::Result<Self> {
        let stream = mio::net::TcpStream::connect(req.addr)?;
        // the request is one small write: send it at once
        let _ = stream.set_nodelay(true);
        let mut fetch = Fetch::build(stream, &req, now);
        fetch.state = State::Connecting;
        fetch.connect_check = Some(mio_connect_check);
        Ok(fetch)
    }
}

impl<S: Read + Write> Fetch<S> {
    /// Uses an already connected stream (tests, or a connection made elsewhere).
    #[cfg(test)]
    pub(crate) fn with_stream(stream: S, req: Request, now: Instant) -> Self {
        Fetch::build(stream, &req, now)
    }

    fn build(stream: S, req: &Request, now: Instant) -> Self {
        let mut out = Vec::new();
        let extra: Vec<(&str, &str)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        http::build_request(&mut out, req.method, &req.url, &extra);
        Fetch {
            stream,
            state: State::Sending,
            connect_check: None,
            head_request: req.method == Method::Head,
            out,
            written: 0,
            head: Vec::new(),
            head_start: 0,
            carry: Vec::new(),
            since: now,
            last_progress: now,
            room: usize::MAX,
            stall_restart: false,
            more: false,
            received: 0,
        }
    }

    /// Advances as far as possible without blocking and appends what happened to `events`.
    /// Safe to call on spurious wake-ups and after the end (it then does nothing).
    pub(crate) fn drive(&mut self, now: Instant, events: &mut Vec<Event>) {
        self.more = false;
        if let Err(reason) = self.step(now, events) {
            self.state = State::Finished;
            events.push(Event::Failed(reason));
        }
    }

    /// Which time bound has passed, if any: "connect", "response head" or "stall". The
    /// caller gives up on the fetch (this does not emit `Failed`).
    pub(crate) fn timed_out(&self, now: Instant) -> Option<&'static str> {
        let deadline = self.next_deadline()?;
        if now < deadline {
            return None;
        }
        Some(match self.state {
            State::Connecting => "connect",
            State::ReadingBody(_) => "stall",
            _ => "response head",
        })
    }

    /// When `timed_out` will first answer Some, for the loop's timer; None while paused or
    /// finished.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Connecting => Some(self.since + CONNECT_TIMEOUT),
            State::Sending | State::WaitingForHead => Some(self.since + HEAD_TIMEOUT),
            State::ReadingBody(_) if self.room == 0 || self.stall_restart => None,
            State::ReadingBody(_) => Some(self.last_progress + STALL_TIMEOUT),
            State::Finished => None,
        }
    }

    /// Backpressure: while paused, `drive` reads no body (the consumer is behind) and the
    /// stall bound is suspended. After unpausing, call `drive`: bytes already in the socket
    /// raise no new readiness event.
    #[cfg(test)]
    pub(crate) fn pause(&mut self, paused: bool) {
        self.set_room(if paused { 0 } else { usize::MAX });
    }

    /// Backpressure by count: the following `drive`s deliver at most `room` body bytes in
    /// all (0 pauses, as `pause(true)`), until the consumer says again. A consumer with a
    /// bounded buffer passes its free space and is never overrun.
    pub(crate) fn set_room(&mut self, room: usize) {
        if self.room == 0 && room > 0 {
            self.stall_restart = true;
        }
        self.room = room;
    }

    /// True when the last `drive` stopped on `MAX_BODY_BUFFER` or on its room with bytes
    /// possibly left in the socket: drive again without waiting for an event (after
    /// `set_room`; a drive without room reads nothing and clears this).
    pub(crate) fn wants_drive(&self) -> bool {
        self.more && !self.is_finished()
    }

    /// Body bytes delivered so far (after chunk decoding), e.g. for a resuming Range.
    #[cfg(test)]
    pub(crate) fn bytes_received(&self) -> u64 {
        self.received
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// One pass through the states, each falling through to the next when it completes.
    fn step(&mut self, now: Instant, events: &mut Vec<Event>) -> Result<(), String> {
        if let State::Connecting = self.state {
            let check = self.connect_check.ok_or("connect state without a socket")?;
            match check(&self.stream) {
                Ok(true) => {
                    self.state = State::Sending;
                    self.since = now;
                }
                Ok(false) => return Ok(()),
                Err(e) => return Err(format!("connect: {e}")),
            }
        }
        if let State::Sending = self.state {
            if !self.send()? {
                return Ok(());
            }
            self.state = State::WaitingForHead;
        }
        if let State::WaitingForHead = self.state {
            let Some(info) = self.read_head()? else {
                return Ok(());
            };
            let body = match info.framing(self.head_request) {
                BodyFraming::Empty => None,
                BodyFraming::Length(0) => None,
                BodyFraming::Length(n) => Some(Body::Length(n)),
                BodyFraming::Chunked => Some(Body::Chunked(ChunkedDecoder::new())),
                BodyFraming::UntilClose => Some(Body::UntilClose),
            };
            events.push(Event::Head(info));
            self.head = Vec::new();
            self.last_progress = now;
            match body {
                None => {
                    self.finish(events);
                    return Ok(());
                }
                Some(b) => self.state = State::ReadingBody(b),
            }
        }
        if let State::ReadingBody(_) = self.state {
            if self.room == 0 {
                return Ok(());
            }
            if self.stall_restart {
                self.stall_restart = false;
                self.last_progress = now;
            }
            self.read_body(now, events)?;
        }
        Ok(())
    }

    /// Writes what is left of the request; true once all of it is out.
    fn send(&mut self) -> Result<bool, String> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err("send: connection closed".into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("send: {e}")),
            }
        }
        self.out = Vec::new();
        Ok(true)
    }

    /// Reads until a final (non-1xx) response head is complete; None = wait for more.
    fn read_head(&mut self) -> Result<Option<ResponseInfo>, String> {
        loop {
            // Parse what is buffered first: a 1xx head may be followed by the final one.
            while self.head_start < self.head.len() {
                match http::parse_response(&self.head[self.head_start..]) {
                    Ok(None) => break,
                    Ok(Some(info)) if info.status == 101 => {
                        return Err("unexpected 101 Switching Protocols".into());
                    }
                    Ok(Some(info)) if info.status < 200 => self.head_start += info.head_len,
                    Ok(Some(info)) => {
                        self.carry = self.head.split_off(self.head_start + info.head_len);
                        return Ok(Some(info));
                    }
                    Err(e) => return Err(format!("response head: {e}")),
                }
            }
            let old = self.head.len();
            if old >= http::MAX_RESPONSE_HEAD {
                return Err(format!(
                    "response head: {}",
                    http::HttpError::ResponseTooLarge
                ));
            }
            self.head.resize(http::MAX_RESPONSE_HEAD, 0);
            let r = self.stream.read(&mut self.head[old..]);
            self.head.truncate(old + *r.as_ref().unwrap_or(&0));
            match r {
                Ok(0) if old == 0 => return Err("connection closed without a response".into()),
                Ok(0) => return Err("connection closed inside the response head".into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Reads and delivers body bytes: at most `MAX_BODY_BUFFER` raw bytes per call, counting
    /// those that came with the head (chunk decoding only shrinks them).
    fn read_body(&mut self, now: Instant, events: &mut Vec<Event>) -> Result<(), String> {
        let mut budget = MAX_BODY_BUFFER.min(self.room);
        if !self.carry.is_empty() {
            let mut carry = std::mem::take(&mut self.carry);
            let n = carry.len().min(budget);
            budget -= n;
            self.room = self.room.saturating_sub(n);
            let done = self.deliver(Chunk::copy_of(&carry[..n]), now, events)?;
            if done {
                self.finish(events);
                return Ok(());
            }
            if n < carry.len() {
                carry.drain(..n);
                self.carry = carry;
                self.more = true;
                return Ok(());
            }
        }
        loop {
            if budget == 0 {
                self.more = true;
                return Ok(());
            }
            let want = match self.state {
                // Never read past the promised length: those bytes are not ours to deliver.
                State::ReadingBody(Body::Length(left)) => {
                    usize::try_from(left).unwrap_or(usize::MAX).min(READ_CHUNK)
                }
                _ => READ_CHUNK,
            }
            .min(budget);
            let mut chunk = Chunk::new();
            match chunk.read_from(&mut self.stream, want) {
                Ok(0) => {
                    return match &self.state {
                        State::ReadingBody(Body::UntilClose) => {
                            self.finish(events);
                            Ok(())
                        }
                        State::ReadingBody(Body::Length(left)) => Err(format!(
                            "truncated body: connection closed with {left} bytes missing"
                        )),
                        _ => Err("truncated chunked body: connection closed".into()),
                    };
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.room = self.room.saturating_sub(n);
                    if self.deliver(chunk, now, events)? {
                        self.finish(events);
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Passes raw body bytes through the framing; true when the body is complete.
    fn deliver(
        &mut self,
        raw: Chunk,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> Result<bool, String> {
        let (piece, done) = match &mut self.state {
            State::ReadingBody(Body::Length(left)) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(raw.len());
                *left -= n as u64;
                let mut piece = raw;
                piece.truncate(n);
                (piece, *left == 0)
            }
            State::ReadingBody(Body::Chunked(dec)) => {
                let mut out = Chunk::new();
                let (_, done) = out
                    .fill_with(|v| dec.feed(&raw, v))
                    .map_err(|e| format!("chunked body: {e}"))?;
                (out, done)
            }
            State::ReadingBody(Body::UntilClose) => (raw, false),
            _ => return Ok(false),
        };
        if !piece.is_empty() {
            self.received += piece.len() as u64;
            self.last_progress = now;
            events.push(Event::Body(piece));
        }
        Ok(done)
    }

    fn finish(&mut self, events: &mut Vec<Event>) {
        self.state = State::Finished;
        self.carry = Vec::new();
        events.push(Event::Done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Interest, Poll, Token};
    use std::collections::VecDeque;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    // ---- helpers -------------------------------------------------------------------------

    fn request(addr: SocketAddr, method: Method, path: &str) -> Request {
        Request {
            method,
            addr,
            url: HttpUrl::parse(&format!("http://127.0.0.1:{}{path}", addr.port())).unwrap(),
            headers: Vec::new(),
        }
    }

    enum Step {
        Write(Vec<u8>),
        Sleep(u64),
    }

    fn w(bytes: &[u8]) -> Step {
        Step::Write(bytes.to_vec())
    }

    /// A one-connection server on 127.0.0.1: reads the request head, sends it back over the
    /// channel, plays `steps`, then closes.
    fn server(steps: Vec<Step>) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let _ = tx.send(req);
            for step in steps {
                match step {
                    Step::Write(bytes) => {
                        if s.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                    Step::Sleep(ms) => thread::sleep(Duration::from_millis(ms)),
                }
            }
        });
        (addr, rx)
    }

    /// Drives a real connect through a mio Poll until the fetch finishes (at most 10 s of
    /// wall time, which only a broken fetch reaches).
    fn run(req: Request) -> (Vec<Event>, Fetch) {
        drive_to_end(Fetch::connect(req, Instant::now()).unwrap())
    }

    fn drive_to_end(mut fetch: Fetch) -> (Vec<Event>, Fetch) {
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(
                &mut fetch.stream,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let mut events = Vec::new();
        // Before any readiness: the connect is usually still in progress; must be harmless.
        fetch.drive(Instant::now(), &mut events);
        let mut ready = Events::with_capacity(8);
        let give_up = Instant::now() + Duration::from_secs(10);
        while !fetch.is_finished() && Instant::now() < give_up {
            let timeout = if fetch.wants_drive() {
                Duration::ZERO
            } else {
                Duration::from_millis(50)
            };
            poll.poll(&mut ready, Some(timeout)).unwrap();
            if !ready.is_empty() || fetch.wants_drive() {
                fetch.drive(Instant::now(), &mut events);
            }
        }
        assert!(fetch.is_finished(), "fetch did not finish: {events:?}");
        check_order(&events);
        (events, fetch)
    }

    /// Head at most once and first; exactly one terminal event, last.
    fn check_order(events: &[Event]) {
        let terminal = events
            .iter()
            .filter(|e| matches!(e, Event::Done | Event::Failed(_)))
            .count();
        assert!(terminal <= 1, "{events:?}");
        if terminal == 1 {
            assert!(
                matches!(events.last(), Some(Event::Done | Event::Failed(_))),
                "{events:?}"
            );
        }
        let heads: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Event::Head(_)))
            .map(|(i, _)| i)
            .collect();
        assert!(
            heads.len() <= 1 && heads.iter().all(|&i| i == 0),
            "{events:?}"
        );
        if heads.is_empty() {
            assert!(
                !events
                    .iter()
                    .any(|e| matches!(e, Event::Body(_) | Event::Done))
            );
        }
    }

    fn head_of(events: &[Event]) -> &ResponseInfo {
        match &events[0] {
            Event::Head(h) => h,
            other => panic!("no head: {other:?}"),
        }
    }

    fn body_of(events: &[Event]) -> Vec<u8> {
        events
            .iter()
            .filter_map(|e| {
                if let Event::Body(b) = e {
                    Some(&b[..])
                } else {
                    None
                }
            })
            .collect::<Vec<_>>()
            .concat()
    }

    fn failure(events: &[Event]) -> Option<&str> {
        match events.last() {
            Some(Event::Failed(r)) => Some(r),
            _ => None,
        }
    }

    /// A scripted stream: `Some(bytes)` is one read's worth (split if the buffer is smaller),
    /// `None` one WouldBlock; after the script, EOF or WouldBlock forever.
    struct Script {
        reads: VecDeque<Option<Vec<u8>>>,
        eof: bool,
        written: Vec<u8>,
    }

    impl Script {
        fn new(pieces: &[&[u8]], eof: bool) -> Self {
            let mut reads = VecDeque::new();
            // An empty read would mean EOF, which is what `eof` is for.
            for p in pieces.iter().filter(|p| !p.is_empty()) {
                reads.push_back(Some(p.to_vec()));
                reads.push_back(None);
            }
            Script {
                reads,
                eof,
                written: Vec::new(),
            }
        }
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.reads.pop_front() {
                Some(Some(data)) => {
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    if n < data.len() {
                        self.reads.push_front(Some(data[n..].to_vec()));
                    }
                    Ok(n)
                }
                Some(None) => Err(ErrorKind::WouldBlock.into()),
                None if self.eof => Ok(0),
                None => Err(ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn mock_req(method: Method) -> Request {
        request("127.0.0.1:9".parse().unwrap(), method, "/x")
    }

    /// Drives a scripted fetch until it finishes or the script is spent.
    fn run_script(pieces: &[&[u8]], eof: bool, method: Method) -> (Vec<Event>, Fetch<Script>) {
        let now = Instant::now();
        let mut fetch = Fetch::with_stream(Script::new(pieces, eof), mock_req(method), now);
        let mut events = Vec::new();
        for _ in 0..(2 * pieces.iter().map(|p| p.len()).sum::<usize>() + 8) {
            if fetch.is_finished() {
                break;
            }
            fetch.drive(now, &mut events);
        }
        check_order(&events);
        (events, fetch)
    }

    const CL_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world";
    const CHUNKED_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n";

    // ---- real sockets ----------------------------------------------------------------------

    #[test]
    fn content_length_body_and_request_bytes() {
        let (addr, got) = server(vec![w(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde",
        )]);
        let mut req = request(addr, Method::Get, "/core/os/x86_64/a%20b.pkg.tar.zst");
        req.headers.push(("Range".into(), "bytes=3-".into()));
        req.headers.push((
            "If-Modified-Since".into(),
            "Sat, 01 Jan 2000 00:00:00 GMT".into(),
        ));
        let (events, fetch) = run(req);
        assert_eq!(head_of(&events).status, 200);
        assert_eq!(body_of(&events), b"abcde");
        assert_eq!(events.last(), Some(&Event::Done));
        assert_eq!(fetch.bytes_received(), 5);
        let sent = String::from_utf8(got.recv().unwrap()).unwrap();
        assert!(
            sent.starts_with("GET /core/os/x86_64/a%20b.pkg.tar.zst HTTP/1.1\r\n"),
            "{sent}"
        );
        assert!(
            sent.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", addr.port())),
            "{sent}"
        );
        assert!(sent.contains("\r\nRange: bytes=3-\r\n"), "{sent}");
        assert!(sent.contains("\r\nIf-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n"));
    }

    #[test]
    fn chunked_body_split_across_slow_writes() {
        let (addr, _got) = server(vec![
            w(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r"),
            Step::Sleep(30),
            w(b"\nwiki\r\n5\r\npe"),
            Step::Sleep(30),
            w(b"dia\r\n0\r"),
            Step::Sleep(30),
            w(b"\n\r\n"),
            // The connection stays open: the last chunk alone must end the body.
            Step::Sleep(3000),
        ]);
        let (events, _) = run(request(addr, Method::Get, "/"));
        assert!(head_of(&events).chunked);
        assert_eq!(body_of(&events), b"wikipedia");
        assert_eq!(events.last(), Some(&Event::Done));
    }

    #[test]
    fn close_delimited_body() {
        let (addr, _got) = server(vec![
            w(b"HTTP/1.0 200 OK\r\n\r\nfirst "),
            Step::Sleep(20),
            w(b"second"),
        ]);
        let (events, _) = run(request(addr, Method::Get, "/"));
        assert_eq!(head_of(&events).content_length, None);
        assert_eq!(body_of(&events), b"first second");
        assert_eq!(events.last(), Some(&Event::Done));
    }

    #[test]
    fn truncated_content_length_fails() {
        let (addr, _got) = server(vec![w(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345",
        )]);
        let (events, fetch) = run(request(addr, Method::Get, "/"));
        assert_eq!(body_of(&events), b"12345");
        assert!(
            failure(&events).is_some_and(|r| r.contains("truncated")),
            "{events:?}"
        );
        assert_eq!(fetch.bytes_received(), 5);
    }

    #[test]
    fn truncated_chunked_fails() {
        let (addr, _got) = server(vec![w(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )]);
        let (events, _) = run(request(addr, Method::Get, "/"));
        assert_eq!(body_of(&events), b"hello");
        assert!(
            failure(&events).is_some_and(|r| r.contains("truncated")),
            "{events:?}"
        );
    }

    #[test]
    fn not_modified_has_no_body_even_on_an_open_connection() {
        let (addr, _got) = server(vec![
            w(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n"),
            Step::Sleep(3000),
        ]);
        let (events, _) = run(request(addr, Method::Get, "/"));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(head_of(&events).status, 304);
        assert_eq!(events[1], Event::Done);
    }

    #[test]
    fn head_request_has_no_body() {
        let (addr, got) = server(vec![
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nLast-Modified: x\r\n\r\n"),
            Step::Sleep(3000),
        ]);
        let (events, _) = run(request(addr, Method::Head, "/f"));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(head_of(&events).content_length, Some(1000));
        assert_eq!(events[1], Event::Done);
        assert!(got.recv().unwrap().starts_with(b"HEAD /f HTTP/1.1\r\n"));
    }

    #[test]
    fn redirect_is_reported_not_followed() {
        let (addr, _got) = server(vec![w(b"HTTP/1.1 307 Temporary Redirect\r\n\
              Location: http://mirror.example/core/f\r\nContent-Length: 4\r\n\r\nmoveEXTRA")]);
        let (events, _) = run(request(addr, Method::Get, "/"));
        let head = head_of(&events);
        assert_eq!(head.status, 307);
        assert_eq!(
            head.location.as_deref(),
            Some("http://mirror.example/core/f")
        );
        // Bytes past Content-Length are never delivered.
        assert_eq!(body_of(&events), b"move");
        assert_eq!(events.last(), Some(&Event::Done));
    }

    #[test]
    fn silent_server_times_out_on_the_head() {
        let (addr, got) = server(vec![Step::Sleep(3000)]);
        let t0 = Instant::now();
        let mut poll = Poll::new().unwrap();
        let mut fetch = Fetch::connect(request(addr, Method::Get, "/"), t0).unwrap();
        assert_eq!(fetch.timed_out(t0 + CONNECT_TIMEOUT), Some("connect"));
        poll.registry()
            .register(
                &mut fetch.stream,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let mut events = Vec::new();
        let mut ready = Events::with_capacity(8);
        // Until the server has the request, the connection is up and the head clock runs.
        while got.try_recv().is_err() {
            poll.poll(&mut ready, Some(Duration::from_millis(20)))
                .unwrap();
            fetch.drive(t0, &mut events);
            assert!(t0.elapsed() < Duration::from_secs(5));
        }
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(fetch.timed_out(t0 + CONNECT_TIMEOUT), None);
        assert_eq!(
            fetch.timed_out(t0 + HEAD_TIMEOUT - Duration::from_millis(1)),
            None
        );
        assert_eq!(fetch.timed_out(t0 + HEAD_TIMEOUT), Some("response head"));
        assert_eq!(fetch.next_deadline(), Some(t0 + HEAD_TIMEOUT));
        assert!(!fetch.is_finished());
    }

    #[test]
    fn refused_connection_fails_with_the_reason() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        match Fetch::connect(request(addr, Method::Get, "/"), Instant::now()) {
            // Loopback may refuse at once; elsewhere the refusal comes with the first event.
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
            Ok(fetch) => {
                let (events, _) = drive_to_end(fetch);
                assert_eq!(events.len(), 1);
                let reason = failure(&events).unwrap();
                assert!(
                    reason.starts_with("connect:") && reason.contains("refused"),
                    "{reason}"
                );
            }
        }
    }

    #[test]
    fn garbage_and_oversized_heads_fail() {
        let (addr, _got) = server(vec![w(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")]);
        let (events, _) = run(request(addr, Method::Get, "/"));
        assert_eq!(events.len(), 1);
        assert!(
            failure(&events).is_some_and(|r| r.contains("response head")),
            "{events:?}"
        );

        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() <= http::MAX_RESPONSE_HEAD {
            huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let (addr, _got) = server(vec![Step::Write(huge), Step::Sleep(3000)]);
        let (events, _) = run(request(addr, Method::Get, "/"));
        assert_eq!(events.len(), 1);
        assert!(
            failure(&events).is_some_and(|r| r.contains("too large")),
            "{events:?}"
        );
    }

    #[test]
    fn closed_without_answer_fails() {
        let (addr, _got) = server(vec![]);
        let (events, _) = run(request(addr, Method::Get, "/"));
        assert_eq!(
            events,
            vec![Event::Failed("connection closed without a response".into())]
        );
    }

    #[test]
    fn large_body_over_a_real_socket() {
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        resp.extend_from_slice(&body);
        let (addr, _got) = server(vec![Step::Write(resp)]);
        let (events, fetch) = run(request(addr, Method::Get, "/"));
        assert!(events.iter().all(|e| match e {
            Event::Body(b) => b.len() <= READ_CHUNK,
            _ => true,
        }));
        assert_eq!(body_of(&events), body);
        assert_eq!(fetch.bytes_received(), body.len() as u64);
        assert_eq!(events.last(), Some(&Event::Done));
    }

    // ---- scripted streams: time, pause, budget, every split ------------------------------

    #[test]
    fn interim_responses_are_skipped() {
        let resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n\
                     HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (events, _) = run_script(&[resp], false, Method::Get);
        assert_eq!(head_of(&events).status, 200);
        assert_eq!(body_of(&events), b"ok");
        assert_eq!(events.last(), Some(&Event::Done));

        let (events, _) = run_script(&[b"HTTP/1.1 101 Switching\r\n\r\n"], false, Method::Get);
        assert!(
            failure(&events).is_some_and(|r| r.contains("101")),
            "{events:?}"
        );
    }

    #[test]
    fn stall_clock_runs_from_the_last_body_byte() {
        let t0 = Instant::now();
        let script = Script::new(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", b"c"],
            false,
        );
        let mut fetch = Fetch::with_stream(script, mock_req(Method::Get), t0);
        let mut events = Vec::new();
        assert_eq!(fetch.timed_out(t0 + HEAD_TIMEOUT), Some("response head"));
        let t1 = t0 + Duration::from_secs(3);
        fetch.drive(t1, &mut events);
        assert_eq!(body_of(&events), b"ab");
        assert_eq!(fetch.timed_out(t1 + HEAD_TIMEOUT), Some("stall"));
        assert_eq!(fetch.next_deadline(), Some(t1 + STALL_TIMEOUT));
        let t2 = t1 + Duration::from_secs(7);
        fetch.drive(t2, &mut events);
        assert_eq!(body_of(&events), b"abc");
        assert_eq!(fetch.timed_out(t1 + STALL_TIMEOUT), None);
        assert_eq!(fetch.timed_out(t2 + STALL_TIMEOUT), Some("stall"));
        // Nothing new to read: no progress, deadline unchanged.
        fetch.drive(t2 + Duration::from_secs(5), &mut events);
        assert_eq!(fetch.next_deadline(), Some(t2 + STALL_TIMEOUT));
    }

    #[test]
    fn pause_holds_the_body_and_the_stall_clock() {
        let t0 = Instant::now();
        let script = Script::new(&[CL_RESPONSE], false);
        let mut fetch = Fetch::with_stream(script, mock_req(Method::Get), t0);
        fetch.pause(true);
        let mut events = Vec::new();
        fetch.drive(t0, &mut events);
        assert_eq!(events.len(), 1, "only the head while paused: {events:?}");
        assert!(!fetch.wants_drive());
        let later = t0 + Duration::from_secs(60);
        assert_eq!(fetch.timed_out(later), None);
        fetch.pause(false);
        assert_eq!(fetch.timed_out(later), None);
        fetch.drive(later, &mut events);
        assert_eq!(body_of(&events), b"hello world");
        assert_eq!(events.last(), Some(&Event::Done));
        assert!(fetch.is_finished());
        assert_eq!(fetch.timed_out(later + Duration::from_secs(60)), None);
        // Nothing after the end.
        fetch.drive(later, &mut events);
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn room_bounds_what_is_delivered_including_bytes_that_came_with_the_head() {
        let len = 100_000usize;
        let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        resp.extend((0..len).map(|i| (i % 253) as u8));
        let now = Instant::now();
        // the head and 3,000 body bytes in one read, then the rest
        let split = resp.len() - len + 3000;
        let script = Script::new(&[&resp[..split], &resp[split..]], false);
        let mut fetch = Fetch::with_stream(script, mock_req(Method::Get), now);
        fetch.set_room(0);
        let mut events = Vec::new();
        fetch.drive(now, &mut events);
        assert_eq!(events.len(), 1, "the head only: {events:?}");
        let mut got = 0;
        for room in [1000, 0, 2500, 7, 40_000, 1, 100_000] {
            fetch.set_room(room);
            let mut ev = Vec::new();
            fetch.drive(now, &mut ev);
            while fetch.wants_drive() {
                fetch.drive(now, &mut ev);
            }
            let n = body_of(&ev).len();
            assert!(n <= room, "{n} bytes delivered with room for {room}");
            got += n;
            events.extend(ev);
        }
        assert_eq!(got, len);
        assert_eq!(body_of(&events), resp[resp.len() - len..]);
        assert_eq!(events.last(), Some(&Event::Done));
    }

    #[test]
    fn one_drive_reads_at_most_the_budget() {
        let len = 3 * MAX_BODY_BUFFER + 17;
        let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        resp.resize(resp.len() + len, b'z');
        let now = Instant::now();
        let mut fetch =
            Fetch::with_stream(Script::new(&[&resp], false), mock_req(Method::Get), now);
        let mut events = Vec::new();
        fetch.drive(now, &mut events);
        assert_eq!(fetch.bytes_received(), MAX_BODY_BUFFER as u64);
        assert!(fetch.wants_drive());
        let mut drives = 1;
        while fetch.wants_drive() {
            let before = fetch.bytes_received();
            fetch.drive(now, &mut events);
            assert!(fetch.bytes_received() - before <= MAX_BODY_BUFFER as u64);
            drives += 1;
        }
        assert_eq!(events.last(), Some(&Event::Done));
        assert_eq!(fetch.bytes_received(), len as u64);
        assert_eq!(drives, 4);
    }

    #[test]
    fn every_split_point_gives_the_same_body() {
        for resp in [CL_RESPONSE, CHUNKED_RESPONSE] {
            for cut in 0..=resp.len() {
                let (a, b) = resp.split_at(cut);
                let (events, _) = run_script(&[a, b], false, Method::Get);
                assert_eq!(body_of(&events), b"hello world", "cut {cut}");
                assert_eq!(events.last(), Some(&Event::Done), "cut {cut}");
            }
            // One byte per read.
            let pieces: Vec<&[u8]> = resp.chunks(1).collect();
            let (events, _) = run_script(&pieces, false, Method::Get);
            assert_eq!(body_of(&events), b"hello world");
            assert_eq!(events.last(), Some(&Event::Done));
        }
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        for resp in [CL_RESPONSE, CHUNKED_RESPONSE] {
            for cut in 0..resp.len() {
                let (events, fetch) = run_script(&[&resp[..cut]], true, Method::Get);
                assert!(fetch.is_finished(), "cut {cut}");
                assert!(failure(&events).is_some(), "cut {cut}: {events:?}");
                assert!(b"hello world".starts_with(&body_of(&events)), "cut {cut}");
            }
            let (events, _) = run_script(&[resp], true, Method::Get);
            assert_eq!(events.last(), Some(&Event::Done));
        }
    }

    use crate::xorshift::XorShift;

    #[test]
    fn mini_fuzz_random_responses_never_overdeliver() {
        let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
        let heads: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
            b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 2-8/9\r\nContent-Length: 7\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"",
        ];
        let alphabet = b"0123456789abcdefHTP/. :\r\n;";
        for round in 0..4000 {
            let head = heads[rng.below(heads.len())];
            let mut resp = head.to_vec();
            for _ in 0..rng.below(40) {
                let b = if rng.below(2) == 0 {
                    alphabet[rng.below(alphabet.len())]
                } else {
                    rng.next() as u8
                };
                resp.push(b);
            }
            let mut pieces = Vec::new();
            let mut rest = resp.as_slice();
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len());
                let (a, b) = rest.split_at(n);
                pieces.push(a);
                rest = b;
            }
            let eof = rng.below(2) == 0;
            let method = if rng.below(8) == 0 {
                Method::Head
            } else {
                Method::Get
            };
            let (events, fetch) = run_script(&pieces, eof, method);
            if eof {
                assert!(fetch.is_finished(), "round {round}: {events:?}");
            }
            if let Some(Event::Head(h)) = events.first() {
                let delivered = body_of(&events).len() as u64;
                match h.framing(method == Method::Head) {
                    BodyFraming::Length(n) => assert!(delivered <= n, "round {round}"),
                    BodyFraming::Empty => assert_eq!(delivered, 0, "round {round}"),
                    _ => {}
                }
            }
            assert_eq!(fetch.bytes_received(), body_of(&events).len() as u64);
        }
    }
}
