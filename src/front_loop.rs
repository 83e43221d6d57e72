//! What the loop hands the front: a front connection's turn (pacman's request routed: the
//! status pages, 421 for a Host that is not the loopback, 503 while stopping, else the front;
//! room freed in a streaming answer lets its fetch read again), an outbound fetch's turn (it
//! reads what its consumer has room for; its events go to the front), the datagrams discovery
//! reads (a peer asking for a file is answered from the cache or a copy here), and
//! discovery's events (lookups decided; then the peers' digests wanted are fetched). The
//! daemon calls these from its dispatch with the front and the loop's narrow view (env.rs).

use crate::conn;
use crate::conns;
use crate::discovery::{self, DiscoveryEvent};
use crate::env::{Loop, Slot, Timer};
use crate::front::{Deadline, Env, Front, Reply};
use crate::guard;
use crate::http::Request;
use crate::rescan;
use crate::status::{self, Counters};
use mio::Token;

/// One turn of front connection `t` (None: the slot holds none), then the lookups it decided.
pub(crate) fn drive_client(
    front: &mut Front,
    env: &mut Loop,
    t: Token,
    stopping: bool,
    counters: &Counters,
) -> Option<conn::Progress> {
    let Some(Slot::Front(c)) = env.slots.get_mut(t) else {
        return None;
    };
    let p = c.drive(env.now);
    match p {
        conn::Progress::Request => {
            if let Some(req) = c.take_request() {
                let number = c.request_number();
                on_request(front, env, t, number, req, stopping, counters);
            }
        }
        conn::Progress::Blocked => {
            // room freed in a streaming answer: let its fetch read again
            if let Some(f) = front.client_fetch(t) {
                env.ready.schedule(f);
            }
        }
        _ => {}
    }
    on_discovery_events(front, env, Vec::new());
    Some(p)
}

fn on_request(
    front: &mut Front,
    env: &mut Loop,
    t: Token,
    number: u64,
    req: Request,
    stopping: bool,
    counters: &Counters,
) {
    // only the loopback by name: a web page that rebinds its own name to 127.0.0.1 still
    // sends that name, and gets nothing (status, lookups, packages) from the front
    if !guard::is_loopback_host(req.host.as_deref()) {
        debug!("Host {:?} is not the loopback: 421", req.host);
        env.reply(t, Reply::Error(421));
        return;
    }
    let path = req.target.split('?').next().unwrap_or("");
    match status::page(path, env, front, counters) {
        Some((body, ct)) => {
            let h = [("Content-Type", ct)];
            env.reply(t, Reply::Bytes(200, &h, body.as_bytes()));
        }
        None if stopping => _ = env.reply(t, Reply::Error(503)),
        None => front.on_request(env, t, number, req),
    }
}

/// The helper threads' reports: names resolved (a static peer's go to discovery), copies
/// staged, room freed in the stager's queue, sync dbs loaded.
pub(crate) fn on_wake(front: &mut Front, env: &mut Loop) {
    for (id, r) in env.resolver.results() {
        if let Some(i) = discovery::static_peer_of(id) {
            env.discovery.static_resolved(i, r);
            continue;
        }
        front.on_resolved(env, id, r);
    }
    for r in env.stager.reports() {
        front.on_staged(env, r);
    }
    // the stager's queue has room again: peer copies paused for it read on
    if env.stager.take_room_freed() {
        for t in front
            .copy_fetches("")
            .into_iter()
            .chain(front.tee_fetches())
        {
            env.ready.schedule(t);
        }
    }
    // a copy that peers are sent while it grows got bytes (or failed)
    if env.stager.take_grown() {
        let starved = |t: &Token| matches!(env.slots.get(*t), Some(Slot::Peer(c)) if c.starved());
        for t in env.slots.tokens().into_iter().filter(starved) {
            env.ready.schedule(t);
        }
    }
    if rescan::install_loaded(env.cfg, env.index, env.dbload) {
        front.on_dbs_loaded(env);
    }
    on_discovery_events(front, env, Vec::new());
}

/// Discovery reads the datagrams waiting on `token`. A peer's QUERY or INTENT for a file is
/// answered from the cache dirs, else from a copy here, verified or on its way (front.rs).
pub(crate) fn on_datagrams(front: &mut Front, env: &mut Loop, token: Token) {
    let mut events = Vec::new();
    env.discovery.uploads = conns::uploads_in_flight(env.slots);
    let (me, cache, index, now) = (env.discovery.instance(), env.cache, &*env.index, env.now);
    let mut has_file = |name: &str, asker: u64| match conns::offer(cache, index, name) {
        Some((size, sha)) => Some((size, sha, None)),
        None => front.in_flight(name, now, (asker < me).then_some(asker)),
    };
    env.discovery
        .on_readable(token, now, &mut has_file, &mut events);
    on_discovery_events(front, env, events);
}

/// A deadline of the front's (front.rs `Deadline`).
pub(crate) fn on_deadline(front: &mut Front, env: &mut Loop, d: Deadline) {
    front.on_deadline(env, d);
    on_discovery_events(front, env, Vec::new());
}

/// A lookup's deadline (or the end of its INTENT's wait): it may be decided now.
pub(crate) fn on_lookup_deadline(front: &mut Front, env: &mut Loop, id: u32) {
    let mut events = Vec::new();
    env.discovery.lookup_deadline(id, env.now, &mut events);
    on_discovery_events(front, env, events);
}

/// Discovery's events, and the lookups decided outside them (nobody to ask), until none is
/// left: a decided lookup's request may start another.
pub(crate) fn on_discovery_events(
    front: &mut Front,
    env: &mut Loop,
    mut events: Vec<DiscoveryEvent>,
) {
    loop {
        events.append(env.decided);
        if events.is_empty() {
            // peers announced digests we lack, or a fetch ended with more waiting
            if env.discovery.wants_digests() {
                env.fetch_digests();
            }
            return;
        }
        for ev in events.drain(..) {
            match ev {
                DiscoveryEvent::PeerUp => {
                    if let Some(at) = env.discovery.wake_at() {
                        env.timers.always(at, Timer::Announce);
                    }
                }
                DiscoveryEvent::Decided(d) => {
                    front.on_decided(env, d.id, d.candidates, d.asked, d.answered);
                }
            }
        }
    }
}

/// One turn of fetch `tok`; whether it finished (the caller closes it).
pub(crate) fn drive_fetch(front: &mut Front, env: &mut Loop, tok: Token) -> bool {
    // backpressure: a proxied stream reads what its client's buffer has room for, a
    // peer copy what the stager's queue has
    let room = match front.fetch_client(tok).map(|c| env.slots.get(c)) {
        // a proxy that also feeds a copy: the stager's room too
        Some(Some(Slot::Front(c))) if front.is_tee(tok) => {
            c.stream_room().min(env.stager.handle().room())
        }
        Some(Some(Slot::Front(c))) => c.stream_room(),
        Some(_) => usize::MAX,
        // a peer's .sig waits for nobody's room (a full stager must not stall it)
        None if front.is_sig_fetch(tok) => usize::MAX,
        None => env.stager.handle().room(),
    };
    let Some(Slot::Fetch(f)) = env.slots.get_mut(tok) else {
        return false;
    };
    f.set_room(room);
    let mut events = Vec::new();
    f.drive(env.now, &mut events);
    let finished = f.is_finished();
    // it stopped at its per-turn bound with bytes left in the socket: no event will come
    if !finished && f.wants_drive() {
        env.ready.schedule(tok);
    }
    for ev in events {
        front.on_fetch_event(env, tok, ev);
    }
    finished
}
