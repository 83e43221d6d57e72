//! One server-side HTTP/1.x connection, for both listeners: the peer file server
//! (server.rs) and the loopback front (front.rs). A `Conn` reads request heads, hands each
//! one over (`Progress::Request`), and sends whatever answer it is given: a small in-memory
//! body, a file with sendfile, or a stream fed by a fetch. It owns the HTTP bounds that do
//! not depend on the listener: head size and time, send stalls, fairness per turn. After
//! any failure once the head is out, the connection is closed, never ended cleanly (a short
//! body must look like an error to the client).

use crate::http::{self, Method, Request, Version};
use crate::outbuf::OutBuf;
use crate::stager::Growth;
use crate::sys;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client must send its whole request head within this time (slowloris guard).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A receiver that takes nothing for this long is dead or hostile.
pub(crate) const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on bytes (and memory) buffered for a streamed answer; the source is read only
/// while there is room. The kernel's socket buffer does the real smoothing: this only has to
/// hold one read's worth, and 256 slow clients at 32 KiB are 8 MiB (docs/DESIGN.md, "Memory").
pub(crate) const MAX_STREAM_BUFFER: usize = 32 * 1024;
/// Bytes per sendfile call: big enough for full throughput, small enough that one huge
/// transfer yields the loop to the other connections between calls.
pub(crate) const SENDFILE_CHUNK: usize = 1 << 20;
/// sendfile calls per readiness turn before the connection goes to the back of the queue.
pub(crate) const SENDFILE_CALLS_PER_TURN: usize = 4;
/// Longest a copy sent while it grows may bring nothing new before the connection is cut
/// (the requester's own pace check gives up after 3 s; this only frees the slot).
pub(crate) const GROWTH_STALL: Duration = Duration::from_secs(15);
/// Room a chunked stream keeps for its framing: one chunk's size line and CRLF, and the last
/// chunk (a streamed answer of unknown length is chunked to an HTTP/1.1 client, so that a
/// source cut short never reaches it as a clean end).
const CHUNK_FRAMING: usize = 12 + LAST_CHUNK.len();
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Reading a request head.
    WaitingForHead,
    /// A request was handed to the daemon; nothing to send yet.
    WaitingForSource,
    /// Writing `out` (head and maybe a small body).
    SendingHead,
    /// sendfile of `file[offset..end]`.
    SendingFile,
    /// Writing bytes pushed by a fetch; `stream_left` more are promised.
    Streaming,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    Blocked,
    Yielded,
    /// A complete request head is ready: the daemon should `take_request()`.
    Request,
    Close,
}

pub(crate) struct Conn<S> {
    pub stream: S,
    state: State,
    inbuf: Vec<u8>,
    out: OutBuf,
    /// Shared with whoever else serves the same staged copy (see `answer_file`).
    file: Option<Arc<File>>,
    /// The file is still being written (a copy in flight): send what is written, wait for
    /// more, cut when it fails.
    growth: Option<Arc<Growth>>,
    /// Everything written so far is sent: waiting for `growth` to grow.
    starved: bool,
    offset: u64,
    end: u64,
    /// Body bytes still promised by a streaming answer (None: until the source ends).
    stream_left: Option<u64>,
    stream_done: bool,
    /// The streamed body goes out in chunks (length unknown, HTTP/1.1 client).
    chunked: bool,
    keep_alive: bool,
    pending: Option<Request>,
    pub version: Version,
    pub method: Method,
    last_active: Instant,
    head_started: Instant,
    head_bytes: bool,
    /// How long a keep-alive connection may sit idle (the listener's choice).
    idle_timeout: Duration,
    /// Requests read so far: tells a timer set for one request from the next one on the
    /// same keep-alive connection.
    requests: u64,
    pub body_bytes: u64,
}

impl<S: Read + Write + AsRawFd> Conn<S> {
    pub(crate) fn new(stream: S, now: Instant, idle_timeout: Duration) -> Self {
        Conn {
            stream,
            state: State::WaitingForHead,
            inbuf: Vec::new(),
            out: OutBuf::new(MAX_STREAM_BUFFER),
            file: None,
            growth: None,
            starved: false,
            offset: 0,
            end: 0,
            stream_left: None,
            stream_done: false,
            chunked: false,
            keep_alive: false,
            pending: None,
            version: Version::Http11,
            method: Method::Get,
            last_active: now,
            head_started: now,
            head_bytes: false,
            idle_timeout,
            requests: 0,
            body_bytes: 0,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    pub(crate) fn timed_out(&self, now: Instant) -> bool {
        match self.state {
            State::WaitingForHead if self.head_bytes => {
                now.duration_since(self.head_started) > HEAD_TIMEOUT
            }
            State::WaitingForHead => now.duration_since(self.last_active) > self.idle_timeout,
            // the daemon owns the deadline while it looks for the bytes
            State::WaitingForSource => false,
            State::SendingFile if self.starved => {
                self.growth.as_ref().is_some_and(|g| g.failed())
                    || now.duration_since(self.last_active) > GROWTH_STALL
            }
            State::SendingHead | State::SendingFile => {
                now.duration_since(self.last_active) > SEND_STALL_TIMEOUT
            }
            State::Streaming => {
                !self.out.is_empty() && now.duration_since(self.last_active) > SEND_STALL_TIMEOUT
            }
            State::Done => true,
        }
    }

    /// What it is doing, for choosing which connection gives way on a full listener.
    pub(crate) fn activity(&self) -> crate::guard::Activity {
        use crate::guard::Activity;
        match self.state {
            State::WaitingForHead if self.requests > 0 && !self.head_bytes => {
                Activity::Idle(self.last_active)
            }
            State::WaitingForHead if self.head_bytes => Activity::Partial(self.head_started),
            State::WaitingForHead => Activity::Fresh(self.last_active),
            _ => Activity::Busy,
        }
    }

    /// How many requests this connection has read (the current one's number).
    pub(crate) fn request_number(&self) -> u64 {
        self.requests
    }

    /// The request the last `Progress::Request` announced.
    pub(crate) fn take_request(&mut self) -> Option<Request> {
        self.pending.take()
    }

    /// It sent every byte its growing file has so far and waits for more.
    pub(crate) fn starved(&self) -> bool {
        self.state == State::SendingFile && self.starved
    }

    /// Room for more streamed bytes (backpressure on the upstream read).
    pub(crate) fn stream_room(&self) -> usize {
        match self.state {
            State::Streaming if !self.stream_done && self.chunked => {
                self.out.room().saturating_sub(CHUNK_FRAMING)
            }
            State::Streaming if !self.stream_done => self.out.room(),
            _ => 0,
        }
    }

    /// Memory held for unsent bytes (tests, status).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.out.capacity()
    }

    pub(crate) fn drive(&mut self, now: Instant) -> Progress {
        loop {
            let step = match self.state {
                State::WaitingForHead => self.read_head(now),
                State::WaitingForSource => Ok(Some(self.watch_close())),
                State::SendingHead => self.send_out(now),
                State::SendingFile => self.send_file(now),
                State::Streaming => self.send_stream(now),
                State::Done => return Progress::Close,
            };
            match step {
                Ok(None) => continue,
                Ok(Some(p)) => return p,
                Err(_) => return Progress::Close,
            }
        }
    }

    /// While the daemon looks for the bytes, notice a client that hung up.
    fn watch_close(&mut self) -> Progress {
        let mut b = [0u8; 512];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return Progress::Close,
                // pipelined bytes: keep them for after this answer, within the head bound
                Ok(n) if self.inbuf.len() + n <= http::MAX_HEAD => {
                    self.inbuf.extend_from_slice(&b[..n])
                }
                Ok(_) => return Progress::Close,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Close,
            }
        }
    }

    fn read_head(&mut self, now: Instant) -> io::Result<Option<Progress>> {
        loop {
            match http::parse_request(&self.inbuf) {
                Ok(Some(req)) => {
                    self.inbuf.drain(..req.head_len);
                    self.version = req.version;
                    self.method = req.method;
                    self.keep_alive = req.keep_alive;
                    self.requests += 1;
                    self.pending = Some(req);
                    self.state = State::WaitingForSource;
                    return Ok(Some(Progress::Request));
                }
                Ok(None) => {}
                Err(e) => {
                    self.keep_alive = false;
                    self.answer_error(e.status());
                    return Ok(None);
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Some(Progress::Close)),
                Ok(n) => {
                    if !self.head_bytes {
                        self.head_bytes = true;
                        self.head_started = now;
                    }
                    self.last_active = now;
                    self.inbuf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Some(Progress::Blocked));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn begin(&mut self) {
        self.out.clear();
        self.file = None;
        self.growth = None;
        self.starved = false;
        self.stream_left = None;
        self.stream_done = false;
        self.chunked = false;
    }

    /// An error status with a small text body (none for HEAD); keep-alive kept when the
    /// request allows it.
    pub(crate) fn answer_error(&mut self, status: u16) {
        self.begin();
        if self.method == Method::Head {
            http::error_head(self.out.whole(), self.version, status, self.keep_alive);
        } else {
            http::error_response(self.out.whole(), self.version, status, self.keep_alive);
        }
        self.state = State::SendingHead;
    }

    /// A complete in-memory answer (status pages, redirects, 304, 416).
    pub(crate) fn answer_bytes(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.begin();
        let len = body.len().to_string();
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        h.push(("Content-Length", &len));
        let out = self.out.whole();
        http::write_head(out, self.version, status, &h, self.keep_alive);
        if self.method == Method::Get {
            out.extend_from_slice(body);
        }
        self.state = State::SendingHead;
    }

    /// `file[start..end]` after `headers` (which must carry Content-Length = end - start).
    /// Read at explicit offsets, so one file can serve many connections at once (a staged
    /// copy is shared through an `Arc`: whoever holds the last one closes it — the stager,
    /// for a staged copy, so that freeing its pages never stalls the loop).
    pub(crate) fn answer_file(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        file: impl Into<Arc<File>>,
        start: u64,
        end: u64,
    ) {
        if self.begin_file_head(status, headers, start, end) {
            self.file = Some(file.into());
        }
    }

    /// As `answer_file`, for a file still being written (a copy in flight, shared by
    /// `growth`): the head promises `end - start` bytes; they are sent as they are written,
    /// and the connection is cut if the copy fails or stops growing (`GROWTH_STALL`).
    pub(crate) fn answer_growing(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        growth: Arc<Growth>,
        start: u64,
        end: u64,
    ) {
        if self.begin_file_head(status, headers, start, end) {
            self.file = growth.file();
            self.growth = Some(growth);
        }
    }

    /// A file answer's head, and the body's bounds when a body follows (a GET of a
    /// non-empty range): then the caller sets where the bytes come from.
    fn begin_file_head(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        start: u64,
        end: u64,
    ) -> bool {
        self.begin();
        let out = self.out.whole();
        http::write_head(out, self.version, status, headers, self.keep_alive);
        self.state = State::SendingHead;
        let body = self.method == Method::Get && end > start;
        if body {
            self.offset = start;
            self.end = end;
        }
        body
    }

    /// Starts a streamed answer: the head now, the body through `push_stream`.
    /// `length` is the promised body length (None: chunked to an HTTP/1.1 client, so that
    /// only `end_stream(true)` ends it cleanly; close-delimited to an HTTP/1.0 one).
    pub(crate) fn answer_stream(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        length: Option<u64>,
    ) {
        self.begin();
        self.chunked =
            length.is_none() && self.version == Version::Http11 && self.method != Method::Head;
        if length.is_none() && !self.chunked {
            self.keep_alive = false;
        }
        let mut all = headers.to_vec();
        if self.chunked {
            all.push(("Transfer-Encoding", "chunked"));
        }
        http::write_head(
            self.out.whole(),
            self.version,
            status,
            &all,
            self.keep_alive,
        );
        self.stream_left = if self.method == Method::Head {
            Some(0)
        } else {
            length
        };
        self.stream_done = self.method == Method::Head;
        self.state = State::Streaming;
    }

    /// Appends streamed body bytes (never more than promised). The source gives at most
    /// `stream_room()`: bytes beyond it would break the bound, so the stream is cut instead
    /// (the client sees a failure, never a body with a hole). False when that happened.
    pub(crate) fn push_stream(&mut self, data: &[u8]) -> bool {
        if self.state != State::Streaming || self.stream_done {
            return true;
        }
        let take = match self.stream_left {
            Some(left) => (left.min(data.len() as u64)) as usize,
            None => data.len(),
        };
        if self.chunked {
            if take == 0 {
                return true;
            }
            // more than `stream_room()`: the source overran the room kept for the framing
            if take > self.out.room().saturating_sub(CHUNK_FRAMING) {
                self.cut();
                return false;
            }
            let size = format!("{take:x}\r\n");
            self.out.push(size.as_bytes());
            self.out.push(&data[..take]);
            self.out.push(b"\r\n");
            return true;
        }
        if self.out.push(&data[..take]) < take {
            self.cut();
            return false;
        }
        if let Some(left) = &mut self.stream_left {
            *left -= take as u64;
        }
        true
    }

    fn cut(&mut self) {
        self.keep_alive = false;
        // drop what is queued: a clean-looking tail of a broken body helps nobody
        self.out.release();
        self.state = State::Done;
    }

    /// The source ended. `complete`: it delivered everything it promised; otherwise the
    /// connection must be cut so the client sees the failure.
    pub(crate) fn end_stream(&mut self, complete: bool) {
        if self.state != State::Streaming {
            return;
        }
        let all_promised = self.stream_left.is_none_or(|l| l == 0);
        if !complete || !all_promised {
            // a chunked body without its last chunk: the client sees the failure
            self.cut();
            return;
        }
        if self.chunked && self.out.push(LAST_CHUNK) < LAST_CHUNK.len() {
            self.cut();
            return;
        }
        self.stream_done = true;
    }

    fn send_out(&mut self, now: Instant) -> io::Result<Option<Progress>> {
        if let Some(p) = self.write_out(now)? {
            return Ok(Some(p));
        }
        self.state = if self.file.is_some() || self.growth.is_some() {
            State::SendingFile
        } else {
            self.finish(now)
        };
        Ok(None)
    }

    fn write_out(&mut self, now: Instant) -> io::Result<Option<Progress>> {
        while !self.out.is_empty() {
            match self.out.write_to(&mut self.stream) {
                Ok(0) => return Ok(Some(Progress::Close)),
                Ok(_) => self.last_active = now,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Some(Progress::Blocked));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn send_file(&mut self, now: Instant) -> io::Result<Option<Progress>> {
        if let Some(g) = &self.growth
            && self.file.is_none()
        {
            self.file = g.file();
        }
        if self.file.is_none() && self.growth.is_none() {
            self.state = self.finish(now);
            return Ok(None);
        }
        for _ in 0..SENDFILE_CALLS_PER_TURN {
            if self.offset >= self.end {
                self.file = None;
                self.growth = None;
                self.state = self.finish(now);
                return Ok(None);
            }
            // what is written of a growing file; at its end, wait (or cut, if it failed)
            let limit = match &self.growth {
                Some(g) if self.file.is_some() => g.written().min(self.end),
                Some(_) => 0,
                None => self.end,
            };
            if self.offset >= limit {
                let g = self
                    .growth
                    .as_ref()
                    .expect("only a growing file runs short");
                if g.failed() {
                    return Ok(Some(Progress::Close));
                }
                g.want_wake();
                // created or written meanwhile? then nobody would wake us
                if self.file.is_none() {
                    self.file = g.file();
                }
                if g.written().min(self.end) <= self.offset || self.file.is_none() {
                    self.starved = true;
                    return Ok(Some(Progress::Blocked));
                }
                continue;
            }
            self.starved = false;
            let want = (limit - self.offset).min(SENDFILE_CHUNK as u64) as usize;
            let Some(file) = &self.file else {
                return Ok(Some(Progress::Close));
            };
            match sys::sendfile(
                self.stream.as_raw_fd(),
                file.as_raw_fd(),
                &mut self.offset,
                want,
            ) {
                Ok(0) => return Ok(Some(Progress::Close)),
                Ok(n) => {
                    self.body_bytes += n as u64;
                    self.last_active = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Some(Progress::Blocked));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(Progress::Yielded))
    }

    fn send_stream(&mut self, now: Instant) -> io::Result<Option<Progress>> {
        let before = self.out.pending();
        let r = self.write_out(now)?;
        self.body_bytes += (before - self.out.pending()) as u64;
        if let Some(p) = r {
            return Ok(Some(p));
        }
        if self.stream_done {
            self.state = self.finish(now);
            return Ok(None);
        }
        // everything queued is out; wait for the source to push more
        Ok(Some(Progress::Blocked))
    }

    fn finish(&mut self, now: Instant) -> State {
        self.out.release();
        if !self.keep_alive {
            return State::Done;
        }
        self.head_bytes = !self.inbuf.is_empty();
        self.head_started = now;
        self.last_active = now;
        State::WaitingForHead
    }
}

/// The fixed answer for a connection accepted while the table is full.
pub(crate) fn busy_response() -> Vec<u8> {
    let mut out = Vec::new();
    http::error_response(&mut out, Version::Http11, 503, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Conn<UnixStream>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, Instant::now(), Duration::from_secs(30)), b)
    }

    fn read_all(mut b: UnixStream) -> String {
        let mut s = Vec::new();
        b.read_to_end(&mut s).unwrap();
        String::from_utf8_lossy(&s).into_owned()
    }

    #[test]
    fn a_request_is_handed_over_then_answered() {
        let (mut c, mut b) = pair();
        b.write_all(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(c.drive(Instant::now()), Progress::Request);
        assert_eq!(c.take_request().unwrap().target, "/x");
        c.answer_bytes(200, &[("Content-Type", "text/plain")], b"hello");
        assert_eq!(c.drive(Instant::now()), Progress::Close);
        drop(c);
        let text = read_all(b);
        assert!(text.starts_with("HTTP/1.1 200"));
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    }

    #[test]
    fn a_broken_stream_is_cut_not_ended() {
        let (mut c, b) = pair();
        let mut w = b.try_clone().unwrap();
        w.write_all(b"GET /x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(c.drive(Instant::now()), Progress::Request);
        c.take_request();
        c.answer_stream(200, &[("Content-Length", "10")], Some(10));
        c.push_stream(b"12345");
        assert_eq!(c.drive(Instant::now()), Progress::Blocked);
        c.end_stream(false);
        assert_eq!(c.drive(Instant::now()), Progress::Close);
        drop(c);
        drop(w);
        let text = read_all(b);
        assert!(text.ends_with("12345"), "{text}");
    }

    /// A client reading slower than the source: the buffer stays within its bound (it used
    /// to be compacted only when fully drained, and grew to the whole package).
    #[test]
    fn a_slow_reader_keeps_the_stream_buffer_bounded() {
        const LEN: usize = 16 << 20;
        let byte = |i: usize| (i % 251) as u8;
        let (mut c, b) = pair();
        let mut w = b.try_clone().unwrap();
        w.write_all(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(c.drive(Instant::now()), Progress::Request);
        c.take_request();
        let len = LEN.to_string();
        c.answer_stream(200, &[("Content-Length", &len)], Some(LEN as u64));
        let reader = std::thread::spawn(move || {
            let mut b = b;
            let (mut got, mut bad, mut buf) = (0usize, 0usize, [0u8; 8192]);
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut one = [0u8; 1];
                b.read_exact(&mut one).unwrap();
                head.push(one[0]);
            }
            for reads in 0.. {
                let n = b.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                bad += (0..n).filter(|k| buf[*k] != byte(got + k)).count();
                got += n;
                if reads % 32 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            (got, bad)
        });
        let (mut sent, mut piece) = (0usize, vec![0u8; 64 * 1024]);
        let mut peak = 0;
        let t0 = Instant::now();
        loop {
            let room = c.stream_room().min(LEN - sent).min(piece.len());
            if room > 0 {
                for (k, v) in piece[..room].iter_mut().enumerate() {
                    *v = byte(sent + k);
                }
                assert!(c.push_stream(&piece[..room]));
                sent += room;
                if sent == LEN {
                    c.end_stream(true);
                }
            }
            peak = peak.max(c.buffer_capacity());
            match c.drive(Instant::now()) {
                Progress::Close => break,
                Progress::Blocked if c.stream_room() == 0 => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => {}
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "stuck at {sent}");
        }
        drop(c);
        drop(w);
        assert_eq!(reader.join().unwrap(), (LEN, 0), "every byte, in order");
        assert!(peak <= MAX_STREAM_BUFFER, "buffer reached {peak} bytes");
    }

    #[test]
    fn pushing_past_the_room_cuts_the_stream() {
        let (mut c, b) = pair();
        let mut w = b.try_clone().unwrap();
        w.write_all(b"GET /x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(c.drive(Instant::now()), Progress::Request);
        c.answer_stream(200, &[], None);
        let too_much = vec![1u8; c.stream_room() + 1];
        assert!(!c.push_stream(&too_much));
        assert_eq!(c.drive(Instant::now()), Progress::Close);
    }

    /// A stream of unknown length is chunked to an HTTP/1.1 client: a clean end has the last
    /// chunk, a cut one never does (a close-delimited body cut short looked complete).
    #[test]
    fn a_stream_of_unknown_length_is_chunked_and_a_cut_shows() {
        for complete in [true, false] {
            let (mut c, b) = pair();
            let mut w = b.try_clone().unwrap();
            w.write_all(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            assert_eq!(c.drive(Instant::now()), Progress::Request);
            c.take_request();
            c.answer_stream(200, &[], None);
            assert!(c.push_stream(b"hello "));
            assert!(c.push_stream(b"world"));
            let _ = c.drive(Instant::now());
            c.end_stream(complete);
            while c.drive(Instant::now()) != Progress::Close {}
            drop(c);
            drop(w);
            let text = read_all(b);
            assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            if complete {
                assert!(
                    text.ends_with("\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
                    "{text}"
                );
            } else {
                assert!(
                    !text.ends_with("0\r\n\r\n"),
                    "a cut stream ended cleanly: {text}"
                );
                assert!(body.len() < 30, "{text}");
            }
        }
        // HTTP/1.0 has no chunks: close-delimited as before
        let (mut c, b) = pair();
        let mut w = b.try_clone().unwrap();
        w.write_all(b"GET /x HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(c.drive(Instant::now()), Progress::Request);
        c.answer_stream(200, &[], None);
        assert!(c.push_stream(b"abc"));
        c.end_stream(true);
        while c.drive(Instant::now()) != Progress::Close {}
        drop(c);
        drop(w);
        let text = read_all(b);
        assert!(
            !text.contains("chunked") && text.ends_with("\r\n\r\nabc"),
            "{text}"
        );
    }

    #[test]
    fn a_stream_never_exceeds_its_promise() {
        let (mut c, b) = pair();
        let mut w = b.try_clone().unwrap();
        w.write_all(b"GET /x HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(c.drive(Instant::now()), Progress::Request);
        c.answer_stream(200, &[("Content-Length", "3")], Some(3));
        c.push_stream(b"abcdef");
        c.end_stream(true);
        assert_eq!(c.drive(Instant::now()), Progress::Close);
        drop(c);
        drop(w);
        assert!(read_all(b).ends_with("\r\n\r\nabc"));
    }
}
