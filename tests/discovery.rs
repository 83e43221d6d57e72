//! Discovery and lookups between real daemons on `lo` inside a private network namespace
//! per test (docs/PROTOCOL.md; docs/DESIGN.md, "Testing").

mod common;
use common::*;
use flocon::protocol::{self, Header, Message, Query};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn start(t: &TempDir, i: u8, extra: &[&str]) -> Daemon {
    let cache = t.join(&format!("cache{i}"));
    std::fs::create_dir_all(&cache).unwrap();
    let name = format!("h{i}");
    let ip = format!("127.0.0.{}", i + 1);
    let mut o = DaemonOpts::new(t.path(), &cache);
    o.peer_ip = &ip;
    o.name = &name;
    o.extra = extra.iter().map(|s| s.to_string()).collect();
    Daemon::start(o)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn three_daemons_find_each_other_and_notice_departures() {
    netns!("three_daemons_find_each_other_and_notice_departures");
    let t = TempDir::new("disc3");
    let fast = ["--announce-interval", "1"];
    let t0 = Instant::now();
    let mut h1 = start(&t, 1, &fast);
    let h2 = start(&t, 2, &fast);
    let mut h3 = start(&t, 3, &fast);
    let all_found = wait_until(Duration::from_secs(2), || {
        sorted(h1.peer_names()) == ["h2", "h3"]
            && sorted(h2.peer_names()) == ["h1", "h3"]
            && sorted(h3.peer_names()) == ["h1", "h2"]
    });
    assert!(
        all_found,
        "not all found within 2 s: h1 {:?} h2 {:?} h3 {:?}",
        h1.peer_names(),
        h2.peer_names(),
        h3.peer_names()
    );
    eprintln!(
        "three daemons found each other {:?} after the first start",
        t0.elapsed()
    );

    // a clean stop says goodbye: gone once the peers' checks of it (3 × 250 ms) go
    // unanswered, far sooner than the expiry
    h3.signal("TERM");
    h3.wait_exit(Duration::from_secs(5)).expect("h3 exits");
    let t1 = Instant::now();
    assert!(wait_until(Duration::from_millis(1500), || h1.peer_names()
        == ["h2"]
        && h2.peer_names() == ["h1"]));
    eprintln!("goodbye noticed after {:?}", t1.elapsed());

    // a killed one is forgotten after the expiry (4 intervals of 1 s here)
    h1.child.as_mut().unwrap().kill().unwrap();
    let t2 = Instant::now();
    assert!(h2.peer_names() == ["h1"], "not gone before the expiry");
    assert!(
        wait_until(Duration::from_secs(8), || h2.peer_names().is_empty()),
        "{:?}",
        h2.peer_names()
    );
    let expired = t2.elapsed();
    assert!(
        expired >= Duration::from_secs(2),
        "expired too soon: {expired:?}"
    );
    drop(h1);

    // restarting brings it back
    let h1 = start(&t, 1, &fast);
    assert!(wait_until(Duration::from_secs(2), || h2.peer_names()
        == ["h1"]
        && h1.peer_names() == ["h2"]));
}

#[test]
fn lookups_hit_one_two_or_none_and_check_the_size() {
    netns!("lookups_hit_one_two_or_none_and_check_the_size");
    let t = TempDir::new("lookup");
    // the QUERY to every peer (daemons without digests): files appear in the caches after
    // start and are found at once; with digests see digests_ask_only_who_may_hold_…
    let old = |i: u8| {
        let cache = t.join(&format!("cache{i}"));
        std::fs::create_dir_all(&cache).unwrap();
        let (name, ip) = (format!("h{i}"), format!("127.0.0.{}", i + 1));
        let mut o = DaemonOpts::new(t.path(), &cache);
        o.peer_ip = &ip;
        o.name = &name;
        o.env = vec![("FLOCON_NO_DIGEST".into(), "1".into())];
        Daemon::start(o)
    };
    let h1 = old(1);
    let h2 = old(2);
    let h3 = old(3);
    assert!(wait_until(Duration::from_secs(3), || h1.peer_names().len() == 2));
    std::fs::write(t.join("cache2/one-1-1-any.pkg.tar.zst"), pattern(1000, 1)).unwrap();
    std::fs::write(t.join("cache2/two-1-1-any.pkg.tar.zst"), pattern(2000, 2)).unwrap();
    std::fs::write(t.join("cache3/two-1-1-any.pkg.tar.zst"), pattern(2000, 2)).unwrap();
    // a different build under the same name: other size
    std::fs::write(t.join("cache3/one-1-1-any.pkg.tar.zst"), pattern(1500, 3)).unwrap();

    let (asked, answered, have, _) = h1.lookup("two-1-1-any.pkg.tar.zst", Some(2000));
    assert_eq!(
        (asked, answered, sorted(have)),
        (2, 2, vec!["h2".to_string(), "h3".to_string()])
    );
    let (_, _, have, _) = h1.lookup("one-1-1-any.pkg.tar.zst", Some(1000));
    assert_eq!(have, ["h2"], "the 1500-byte build must not be taken");
    let (asked, answered, have, micros) = h1.lookup("none-1-1-any.pkg.tar.zst", None);
    assert_eq!((asked, answered), (2, 2));
    assert!(have.is_empty());
    assert!(
        micros < 50_000,
        "a miss is decided when all answered, not at the budget ({micros} µs)"
    );
    // a file appearing after start is found without a restart
    std::fs::write(t.join("cache3/late-1-1-any.pkg.tar.zst"), pattern(10, 4)).unwrap();
    assert_eq!(h1.lookup("late-1-1-any.pkg.tar.zst", None).2, ["h3"]);
    drop(h2);
    drop(h3);
}

#[test]
fn hostile_datagrams_change_nothing_and_are_not_amplified() {
    netns!("hostile_datagrams_change_nothing_and_are_not_amplified");
    let t = TempDir::new("hostile-udp");
    let h1 = start(&t, 1, &[]);
    let h2 = start(&t, 2, &[]);
    assert!(wait_until(Duration::from_secs(3), || h1.peer_names() == ["h2"]));
    let h2_instance = h2.instance();
    let attacker = UdpSocket::bind("127.0.0.9:0").unwrap();
    attacker
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let target = h1.peer;
    let mut valid_query = Vec::new();
    protocol::encode(
        &Header {
            instance: 0x1234_5678_9abc_def0,
            seq: 1,
        },
        &Message::Query(Query {
            id: 7,
            name: "x-1-1-any.pkg.tar.zst".into(),
            size: None,
            sha256: None,
        }),
        &mut valid_query,
    );
    let mut goodbye_spoof = Vec::new();
    protocol::encode(
        &Header {
            instance: h2_instance,
            seq: 999,
        },
        &Message::Goodbye,
        &mut goodbye_spoof,
    );
    let mut wrong_version = valid_query.clone();
    wrong_version[4] = 99;
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        b"FLCN".to_vec(),
        vec![0xff; 1400],
        vec![0; 9000],
        wrong_version,
        valid_query[..valid_query.len() - 1].to_vec(),
        goodbye_spoof,
    ];
    let mut rng = flocon::xorshift::XorShift::new(99);
    for _ in 0..200 {
        let x = rng.next();
        let mut m = valid_query.clone();
        let i = (x as usize) % m.len();
        m[i] ^= (x >> 32) as u8 | 1;
        cases.push(m);
    }
    for c in &cases {
        attacker.send_to(c, target).unwrap();
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = attacker.recv_from(&mut buf) {
            assert!(
                n <= c.len().max(1),
                "reply of {n} bytes to a {}-byte datagram",
                c.len()
            );
        }
    }
    // a valid query from an on-link stranger is answered, never with more than it sent
    attacker
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    attacker.send_to(&valid_query, target).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = attacker.recv_from(&mut buf).expect("valid query answered");
    assert!(n <= valid_query.len());
    assert!(protocol::decode(&buf[..n]).is_ok());
    // nothing changed: h2 is still a peer (the spoofed goodbye came from elsewhere)
    assert_eq!(h1.peer_names(), ["h2"]);
    // and lookups still work: a file h2 publishes is found there, and only there
    let since = h2.digest_version();
    std::fs::write(t.join("cache2/after-1-1-any.pkg.tar.zst"), pattern(100, 7)).unwrap();
    h2.wait_published(since, "after-1-1-any.pkg.tar.zst", &[&h1]);
    let (asked, answered, have, _) = h1.lookup("after-1-1-any.pkg.tar.zst", Some(100));
    assert_eq!((asked, answered, have), (1, 1, vec!["h2".to_string()]));
    let (_, _, have, _) = h1.lookup("nothing-1-1-any.pkg.tar.zst", None);
    assert!(have.is_empty());
}

#[test]
fn digests_ask_only_who_may_hold_and_old_peers_are_still_asked() {
    netns!("digests_ask_only_who_may_hold_and_old_peers_are_still_asked");
    let t = TempDir::new("digests");
    let start_env = |i: u8, env: &[(&str, &str)]| {
        let cache = t.join(&format!("cache{i}"));
        std::fs::create_dir_all(&cache).unwrap();
        let (name, ip) = (format!("h{i}"), format!("127.0.0.{}", i + 1));
        let mut o = DaemonOpts::new(t.path(), &cache);
        o.peer_ip = &ip;
        o.name = &name;
        o.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Daemon::start(o)
    };
    // a new digest version as soon as a cache changes (the default waits 30 s between two)
    let quick = [("FLOCON_DIGEST_GAP_MS", "0")];
    for (i, f) in [(2, "held"), (3, "old")] {
        std::fs::create_dir_all(t.join(&format!("cache{i}"))).unwrap();
        std::fs::write(
            t.join(&format!("cache{i}/{f}-1-1-any.pkg.tar.zst")),
            pattern(100, i),
        )
        .unwrap();
    }
    let h1 = start_env(1, &quick);
    let h2 = start_env(2, &quick);
    // h3 speaks the protocol without §14: no digest, no INTENTs
    let mut h3 = start_env(3, &[("FLOCON_NO_DIGEST", "1")]);
    let h4 = start_env(4, &quick);
    let ready = wait_until(Duration::from_secs(10), || {
        let s = h1.status_json();
        h1.peer_names().len() == 3
            && json_num(&s, "peers_fresh") == 2
            && json_num(&s, "peers_unknown") == 1
    });
    assert!(
        ready,
        "h1 does not hold h2's and h4's digests: {}",
        h1.status_json()
    );

    // a hit: the holder (its digest) and the old peer (no digest) are asked, h4 is not
    let (asked, answered, have, _) = h1.lookup("held-1-1-any.pkg.tar.zst", Some(100));
    assert_eq!((asked, answered, have), (2, 2, vec!["h2".to_string()]));
    // the old peer is asked for everything, and found
    let (asked, _, have, _) = h1.lookup("old-1-1-any.pkg.tar.zst", None);
    assert_eq!((asked, have), (1, vec!["h3".to_string()]));
    // a miss: only the old peer asked
    let (asked, answered, have, _) = h1.lookup("none-1-1-any.pkg.tar.zst", None);
    assert_eq!((asked, answered, have.len()), (1, 1, 0));

    // a file cached after start: found once its owner's new digest is fetched, by it
    let since = h4.digest_version();
    std::fs::write(t.join("cache4/late-1-1-any.pkg.tar.zst"), pattern(10, 4)).unwrap();
    h4.wait_published(since, "late-1-1-any.pkg.tar.zst", &[&h1]);
    let (asked, _, have, _) = h1.lookup("late-1-1-any.pkg.tar.zst", None);
    assert_eq!(
        (asked, have),
        (2, vec!["h4".to_string()]),
        "h3 (old) and h4 (digest)"
    );

    // without the old peer, a miss asks nobody: one INTENT to the group, decided at once
    h3.signal("TERM");
    h3.wait_exit(Duration::from_secs(5)).expect("h3 exits");
    assert!(wait_until(Duration::from_secs(3), || h1.peer_names().len() == 2));
    let before = h1.status_json();
    let t0 = Instant::now();
    let (asked, answered, have, micros) = h1.lookup("nowhere-1-1-any.pkg.tar.zst", None);
    let wall = t0.elapsed();
    let after = h1.status_json();
    assert_eq!((asked, answered, have.len()), (0, 0, 0));
    assert_eq!(
        json_num(&after, "lookups_unasked") - json_num(&before, "lookups_unasked"),
        1
    );
    assert_eq!(
        json_num(&after, "intents_sent") - json_num(&before, "intents_sent"),
        1
    );
    // one INTENT on lo (IPv4: IPv6 multicast does not work on lo); an announcement may fall
    // in between
    let sent = json_num(&after, "datagrams_out") - json_num(&before, "datagrams_out");
    assert!((1..=3).contains(&sent), "{sent} datagrams for a miss");
    assert!(
        micros < 50_000,
        "a miss without a QUERY waits no budget ({micros} µs, {wall:?})"
    );
    eprintln!("miss without a query decided in {micros} µs");

    // and the peers that publish digests still find what the holder has
    assert_eq!(h4.lookup("held-1-1-any.pkg.tar.zst", Some(100)).2, ["h2"]);
    drop(h2);
}
