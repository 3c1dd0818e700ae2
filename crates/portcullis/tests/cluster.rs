//! Cluster mode end to end: real `redis-server` processes on loopback and
//! two `portcullis serve` replicas sharing one through `[store] kind =
//! "redis"`, with bearer-token identities valid on both (alice, bob, …
//! from one development issuer). Measured: a quarantine (and its release)
//! issued on replica A's admin API is enforced by replica B within 100 ms.
//! Checked: a global rate limit holds across replicas; a session created
//! on A continues on B (2025 sessions and 2026-07-28 stateless requests,
//! taint included) and an admin kill on A ends it on B; Redis killed with
//! SIGKILL mid-run and restarted with its data or empty — containment
//! stays enforced, sessions survive, a quarantine issued during the outage
//! reaches the other replica once Redis is back; the outage fails closed
//! where configured (`on_unreachable`, `rate_fallback`); the change feed
//! stays subscribed while idle; a pin approved on A shows the tool again
//! on B.
//!
//! Each test has its own redis-server (its own port and folder) and key
//! prefix; every process is killed on drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::*;
use common::{eventually, Gateway};
use serde_json::{json, Value};

/// What containment answers a quarantined caller.
const QUARANTINED: i64 = -32032;
/// What a rate limit answers.
const LIMITED: i64 = -32029;

fn echo(msg: &str) -> Value {
    json!({"message": msg})
}

/// One call B answered, as the poller saw it.
#[derive(Clone, Copy)]
struct Sample {
    end: Instant,
    denied: bool,
    allowed: bool,
}

/// Calls `tools/call demo__echo` on `gw` back to back (one connection
/// each) until stopped, recording every answer.
struct Poller {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    fn start(gw: &Gateway, token: String, sid: String) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (addr, path) = (gw.addr.clone(), gw.path.clone());
        let (stop2, samples2) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let auth = format!("Bearer {token}");
            let mut id = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                id += 1;
                let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": "demo__echo", "arguments": {"message": "poll"}}})
                .to_string();
                let r = common::raw(
                    &addr,
                    "POST",
                    &path,
                    &[
                        common::ACCEPT,
                        common::JSON,
                        ("authorization", &auth),
                        ("mcp-session-id", &sid),
                        ("mcp-protocol-version", "2025-06-18"),
                    ],
                    body.as_bytes(),
                );
                let end = Instant::now();
                let v = r.json();
                samples2.lock().unwrap().push(Sample {
                    end,
                    denied: code(&v) == QUARANTINED,
                    allowed: v["result"].is_object(),
                });
            }
        });
        Poller {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// The first sample that started after `after` and satisfies `f`,
    /// waiting up to `within`.
    fn first_after(
        &self,
        after: Instant,
        within: Duration,
        f: impl Fn(&Sample) -> bool,
    ) -> Option<Sample> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self
                .samples
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.end >= after && f(s))
            {
                return Some(*s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn quarantine_on_a_is_enforced_by_b_within_100_ms() {
    let redis = Redis::start();
    let mut c = Cluster::new("cl-latency", &redis, "");
    let a = c.replica();
    let b = c.replica();
    let alice = c.token("alice");
    let bob = c.token("bob");
    let sid = session(&b.gw, &alice).unwrap();
    let bob_sid = session(&b.gw, &bob).unwrap();
    assert!(call(&b.gw, &alice, &sid, 1, "demo__echo", echo("warm"))["result"].is_object());
    let admin = a.admin();
    let poll = Poller::start(&b.gw, alice.clone(), sid.clone());

    const ROUNDS: usize = 20;
    let (mut q_lat, mut q_sent, mut r_lat, mut r_sent) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        // Quarantine on A, timed from A's answer to B's first refusal.
        let sent = Instant::now();
        let (status, v) = admin.quarantine_user("alice");
        let answered = Instant::now();
        assert_eq!(status, 200, "{v}");
        let s = poll
            .first_after(sent, Duration::from_secs(3), |s| s.denied)
            .unwrap_or_else(|| panic!("round {round}: B never refused alice"));
        q_lat.push(s.end.saturating_duration_since(answered));
        q_sent.push(s.end.saturating_duration_since(sent));
        // Nothing B answered after that first refusal was allowed.
        let after = poll.first_after(s.end, Duration::from_millis(20), |x| x.allowed);
        assert!(after.is_none(), "round {round}: B allowed alice again");

        // Release on A, timed from A's answer to B's first allowed call.
        let sent = Instant::now();
        let (status, v) = admin.release_user("alice");
        let answered = Instant::now();
        assert_eq!((status, &v["removed"]), (200, &json!(true)), "{v}");
        let s = poll
            .first_after(sent, Duration::from_secs(3), |s| s.allowed)
            .unwrap_or_else(|| panic!("round {round}: B never allowed alice again"));
        r_lat.push(s.end.saturating_duration_since(answered));
        r_sent.push(s.end.saturating_duration_since(sent));
        std::thread::sleep(Duration::from_millis(20));
    }
    let polls = poll.samples.lock().unwrap().len();
    drop(poll);
    let (qm, qx) = median_max(&mut q_lat);
    let (qsm, qsx) = median_max(&mut q_sent);
    let (rm, rx) = median_max(&mut r_lat);
    let (rsm, rsx) = median_max(&mut r_sent);
    eprintln!(
        "quarantine A→B over {ROUNDS} rounds ({polls} calls polled on B): \
         after A's answer median {:.2} ms, max {:.2} ms; after the admin request was sent median {:.2} ms, max {:.2} ms",
        ms(qm),
        ms(qx),
        ms(qsm),
        ms(qsx)
    );
    eprintln!(
        "release A→B: after A's answer median {:.2} ms, max {:.2} ms; after sent median {:.2} ms, max {:.2} ms",
        ms(rm),
        ms(rx),
        ms(rsm),
        ms(rsx)
    );
    // The criterion is 100 ms; a single sample on a loaded 2-core machine
    // may be delayed by scheduling, so the bound on every sample is looser.
    assert!(qm <= Duration::from_millis(100), "quarantine median {qm:?}");
    assert!(rm <= Duration::from_millis(100), "release median {rm:?}");
    assert!(qsx <= Duration::from_millis(300), "quarantine max {qsx:?}");
    assert!(rsx <= Duration::from_millis(300), "release max {rsx:?}");

    // Bob was never affected on B.
    assert!(call(&b.gw, &bob, &bob_sid, 2, "demo__echo", echo("bob"))["result"].is_object());
    // B recorded its refusals as decisions of the quarantine.
    let refused = b
        .audit()
        .iter()
        .filter(|r| {
            r["policies"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|x| x.as_str().is_some_and(|x| x.starts_with("containment:")))
            })
        })
        .count();
    assert!(
        refused >= ROUNDS,
        "B's audit: {refused} containment refusals"
    );
}

#[test]
fn a_global_rate_limit_holds_across_replicas() {
    let redis = Redis::start();
    // 6 a minute: no token comes back during the test; the burst is all.
    let mut c = Cluster::new(
        "cl-rate",
        &redis,
        "[containment.rate]\nidentity = { per_minute = 6, burst = 8 }\n",
    );
    let a = c.replica();
    let b = c.replica();
    // Bob on A alone: what one replica allows.
    let bob = c.token("bob");
    let sb = session(&a.gw, &bob).unwrap();
    let mut alone = 0usize;
    for i in 0..20 {
        let r = call(&a.gw, &bob, &sb, i, "demo__echo", echo("bob"));
        if r["result"].is_object() {
            alone += 1;
        } else {
            assert_eq!(code(&r), LIMITED, "{r}");
        }
    }
    // Alice alternating A and B (a session on each, the same identity).
    let alice = c.token("alice");
    let (sa, sb) = (
        session(&a.gw, &alice).unwrap(),
        session(&b.gw, &alice).unwrap(),
    );
    let (mut on_a, mut on_b, mut limited_b) = (0usize, 0usize, 0usize);
    for i in 0..20 {
        let (gw, sid) = if i % 2 == 0 {
            (&a.gw, &sa)
        } else {
            (&b.gw, &sb)
        };
        let r = call(
            gw,
            &alice,
            sid,
            i,
            "demo__echo",
            echo(&format!("alice-{i}")),
        );
        if r["result"].is_object() {
            if i % 2 == 0 {
                on_a += 1
            } else {
                on_b += 1
            }
        } else {
            assert_eq!(code(&r), LIMITED, "call {i}: {r}");
            assert!(r["error"]["data"]["retryAfterSeconds"].as_f64().unwrap() > 0.0);
            if i % 2 == 1 {
                limited_b += 1;
            }
        }
    }
    let total = on_a + on_b;
    eprintln!(
        "one replica allowed {alone} of 20; alternating A/B allowed {total} (A {on_a}, B {on_b})"
    );
    assert!((1..=8).contains(&alone), "one replica: {alone}");
    // One session more on the alternating side (one initialize per
    // replica) may cost one token, the GCRA edge another.
    assert!(
        total.abs_diff(alone) <= 1,
        "across replicas {total} vs one replica {alone}: the limit is not global"
    );
    assert!(on_b >= 1 && limited_b >= 1, "B served and limited alice");
    // Nothing limited reached the upstream.
    let reached = (0..20)
        .filter(|i| c.upstream_saw(&format!("\"alice-{i}\"")) > 0)
        .count();
    assert_eq!(reached, total, "only allowed calls reached the upstream");
}

/// Permit everything; a caller that read injected instructions may not
/// send data out (`fetch_url` is in the `egress` segment).
const TAINT_POLICY: &str = r#"
@id("all") permit (principal, action, resource);
@id("no-egress-when-tainted") @reason("read untrusted instructions")
forbid (principal, action == Portcullis::Action::"CallTool", resource)
  when { context.session.tainted && resource.labels.contains("egress") };
"#;

/// A cluster whose policy refuses egress to tainted sessions, with
/// `[store] taint_reads = "strict"` (no window between replicas).
fn taint_cluster(tag: &str, redis: &Redis) -> Cluster {
    let mut c = taint_cluster_cached(tag, redis);
    c.store_extra = "taint_reads = \"strict\"".into();
    c
}

/// The same with the default `taint_reads = "cached"` (the change feed).
fn taint_cluster_cached(tag: &str, redis: &Redis) -> Cluster {
    let dir = common::tempdir(&format!("{tag}-policy"));
    let policy = dir.join("p.cedar");
    std::fs::write(&policy, TAINT_POLICY).unwrap();
    Cluster::new(
        tag,
        redis,
        &format!(
            r#"
[policy]
files = [{policy:?}]
taint_labels = ["confidential", "injected"]

[[segment]]
name = "outbound"
labels = ["egress"]
tools = ["demo__fetch_url"]

[[segment]]
name = "secrets"
labels = ["confidential"]
tools = ["demo__read_secret"]
"#,
            policy = policy.display().to_string()
        ),
    )
}

#[test]
fn a_session_created_on_a_continues_on_b() {
    let redis = Redis::start();
    let mut c = taint_cluster("cl-session", &redis);
    let a = c.replica();
    let b = c.replica();
    let alice = c.token("alice");
    let bob = c.token("bob");

    // Initialize on A, list and call on B.
    let sid = session(&a.gw, &alice).unwrap();
    let names = tool_names(&b.gw, &alice, &sid).unwrap_or_else(|v| panic!("list on B: {v}"));
    assert!(names.contains(&"demo__echo".to_owned()), "{names:?}");
    let r = call(&b.gw, &alice, &sid, 2, "demo__echo", echo("on-b"));
    assert_eq!(r["result"]["content"][0]["text"], "Echo: on-b", "{r}");
    assert_eq!(c.upstream_saw("on-b"), 1);
    // Another identity cannot use it on B.
    let r = request(&b.gw, &bob, &sid, 3, "tools/list", json!({}));
    assert_eq!(r.status, 404, "bob used alice's session on B");
    // Taint follows the session: read a confidential item on A, then the
    // egress tool is refused on B.
    let r = call(
        &a.gw,
        &alice,
        &sid,
        4,
        "demo__fetch_url",
        json!({"url": "https://example.org/before"}),
    );
    assert!(r["result"].is_object(), "egress allowed before: {r}");
    let r = call(&a.gw, &alice, &sid, 5, "demo__read_secret", json!({}));
    assert!(r["result"].is_object(), "{r}");
    // Strict taint reads: refused on B at the very first attempt.
    assert_eq!(
        code(&call(
            &b.gw,
            &alice,
            &sid,
            6,
            "demo__fetch_url",
            json!({"url": "https://example.org/exfil-from-b"}),
        )),
        -32030,
        "the session's taint reached B"
    );
    assert_eq!(c.upstream_saw("exfil-from-b"), 0);
    // Killed via A's admin: refused on both.
    let (status, v) = a.admin().post(
        "/admin/sessions/kill",
        json!({"session": sid, "reason": "test"}),
    );
    assert_eq!((status, v["ended"].as_u64()), (200, Some(1)), "{v}");
    assert!(
        eventually(2, || request(
            &b.gw,
            &alice,
            &sid,
            7,
            "tools/list",
            json!({})
        )
        .status
            == 404),
        "the killed session still works on B"
    );
    assert_eq!(
        request(&a.gw, &alice, &sid, 8, "tools/list", json!({})).status,
        404
    );
}

/// A token revoked through A is refused by B too, and B ends the sessions
/// it holds for that token; another token of the same identity still works.
#[test]
fn a_token_revoked_via_a_is_refused_on_b() {
    let redis = Redis::start();
    let mut c = Cluster::new("cl-revoke", &redis, "");
    let a = c.replica();
    let b = c.replica();
    let leaked = c.token("grace");
    let fresh = c.token("grace");
    let sid = session(&b.gw, &leaked).unwrap();
    let r = call(&b.gw, &leaked, &sid, 1, "demo__echo", echo("rv-before"));
    assert!(r["result"].is_object(), "{r}");
    let (status, v) = a.admin().post(
        "/admin/revocations",
        json!({"jti": common::jti(&leaked), "reason": "leaked", "ttl_secs": 3600}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(
        eventually(2, || session(&b.gw, &leaked).is_err()),
        "B still accepts the revoked token"
    );
    let r = request(
        &b.gw,
        &leaked,
        &sid,
        2,
        "tools/call",
        json!({"name": "demo__echo", "arguments": echo("rv-after")}),
    );
    assert!(
        r.status == 401 || r.status == 404,
        "the revoked token's session on B: {}",
        r.status
    );
    assert_eq!(c.upstream_saw("rv-after"), 0);
    let sid2 = session(&b.gw, &fresh).unwrap();
    let r = call(&b.gw, &fresh, &sid2, 3, "demo__echo", echo("rv-fresh"));
    assert!(r["result"].is_object(), "another token still works: {r}");
}

#[test]
fn a_session_of_b_killed_via_a_is_refused_on_b() {
    let redis = Redis::start();
    let mut c = Cluster::new("cl-kill", &redis, "");
    let a = c.replica();
    let b = c.replica();
    let (alice, bob) = (c.token("alice"), c.token("bob"));
    // Sessions only B serves (A holds no copy of them).
    let one = session(&b.gw, &alice).unwrap();
    let two = session(&b.gw, &alice).unwrap();
    let other = session(&b.gw, &bob).unwrap();
    for sid in [&one, &two] {
        assert!(call(&b.gw, &alice, sid, 1, "demo__echo", echo("before"))["result"].is_object());
    }
    // By id.
    let (status, v) = a.admin().post(
        "/admin/sessions/kill",
        json!({"session": one, "reason": "test"}),
    );
    assert_eq!((status, v["ended"].as_u64()), (200, Some(1)), "{v}");
    assert!(
        eventually(2, || request(
            &b.gw,
            &alice,
            &one,
            2,
            "tools/list",
            json!({})
        )
        .status
            == 404),
        "B's session survived a kill via A"
    );
    assert!(call(&b.gw, &alice, &two, 3, "demo__echo", echo("two"))["result"].is_object());
    // By identity: alice's other session goes, bob's stays.
    let key = b.admin().get("/admin/sessions").1["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == two.as_str())
        .map(|s| s["identity"].as_str().unwrap().to_owned())
        .unwrap();
    let (status, v) = a
        .admin()
        .post("/admin/sessions/kill", json!({"identity": key}));
    assert_eq!((status, v["ended"].as_u64()), (200, Some(1)), "{v}");
    assert!(
        eventually(2, || request(
            &b.gw,
            &alice,
            &two,
            4,
            "tools/list",
            json!({})
        )
        .status
            == 404),
        "alice's session on B survived a kill of her identity via A"
    );
    assert!(call(&b.gw, &bob, &other, 5, "demo__echo", echo("bob"))["result"].is_object());
    // Unknown on A afterwards too.
    let (status, v) = a
        .admin()
        .post("/admin/sessions/kill", json!({"session": one}));
    assert_eq!((status, v["ended"].as_u64()), (200, Some(0)), "{v}");
}

#[test]
fn stateless_requests_are_served_by_either_replica_with_taint_and_quarantine_shared() {
    let redis = Redis::start();
    let mut c = taint_cluster("cl-stateless", &redis);
    let a = c.replica();
    let b = c.replica();
    let carol = c.token("carol");
    let dave = c.token("dave");
    // 2026-07-28: no sessions; both replicas serve the identity.
    let r = stateless_call(&a.gw, &carol, 1, "demo__echo", echo("stateless-a"));
    assert_eq!(
        r["result"]["content"][0]["text"], "Echo: stateless-a",
        "{r}"
    );
    let r = stateless_call(&b.gw, &carol, 2, "demo__echo", echo("stateless-b"));
    assert_eq!(
        r["result"]["content"][0]["text"], "Echo: stateless-b",
        "{r}"
    );
    let r = stateless_call(
        &b.gw,
        &carol,
        3,
        "demo__fetch_url",
        json!({"url": "https://example.org/stateless-before"}),
    );
    assert!(r["result"].is_object(), "{r}");
    // The identity's taint (the confidential item it read on A) holds on B.
    let r = stateless_call(&a.gw, &carol, 4, "demo__read_secret", json!({}));
    assert!(r["result"].is_object(), "{r}");
    let r = stateless_call(
        &a.gw,
        &carol,
        40,
        "demo__fetch_url",
        json!({"url": "https://example.org/stateless-exfil-a"}),
    );
    assert_eq!(code(&r), -32030, "tainted on A itself: {r}");
    assert_eq!(
        code(&stateless_call(
            &b.gw,
            &carol,
            5,
            "demo__fetch_url",
            json!({"url": "https://example.org/stateless-exfil"}),
        )),
        -32030,
        "a 2026-07-28 identity's taint reached B at the first attempt"
    );
    assert_eq!(c.upstream_saw("stateless-exfil"), 0);
    // Another identity is not tainted.
    let r = stateless_call(
        &b.gw,
        &dave,
        6,
        "demo__fetch_url",
        json!({"url": "https://example.org/dave"}),
    );
    assert!(r["result"].is_object(), "{r}");
    // A quarantine on A holds for its stateless requests on B.
    let (status, v) = a.admin().quarantine_user("dave");
    assert_eq!(status, 200, "{v}");
    // Calls made before the quarantine arrives are served; the one refused
    // must not have reached the upstream (each attempt has its own marker).
    let mut attempt = 0;
    assert!(
        eventually(2, || {
            attempt += 1;
            code(&stateless_call(
                &b.gw,
                &dave,
                7,
                "demo__echo",
                echo(&format!("stateless-q{attempt}-")),
            )) == QUARANTINED
        }),
        "quarantine reached B's stateless requests"
    );
    assert_eq!(c.upstream_saw(&format!("stateless-q{attempt}-")), 0);
}

#[test]
fn an_injection_taint_on_a_holds_on_b() {
    let redis = Redis::start();
    let mut c = taint_cluster("cl-inject", &redis);
    let a = c.replica();
    let b = c.replica();
    let erin = c.token("erin");
    let r = stateless_call(
        &a.gw,
        &erin,
        1,
        "demo__read_document",
        json!({"name": "ticket"}),
    );
    assert!(r["result"].is_object(), "{r}");
    let fetch = |gw: &Gateway, id: u64, url: &str| {
        code(&stateless_call(
            gw,
            &erin,
            id,
            "demo__fetch_url",
            json!({ "url": url }),
        ))
    };
    assert_eq!(fetch(&a.gw, 2, "https://example.org/inj-a"), -32030);
    assert_eq!(
        fetch(&b.gw, 3, "https://example.org/inj-b"),
        -32030,
        "the injection taint reached B at the first attempt"
    );
    assert_eq!(c.upstream_saw("inj-b"), 0);
}

/// With the default `taint_reads = "cached"`, B learns a session's taint
/// from the change feed: measured from A's answer to the confidential read
/// until B refuses the egress call, it takes well under 100 ms.
#[test]
fn cached_taint_reaches_b_within_100_ms() {
    let redis = Redis::start();
    let mut c = taint_cluster_cached("cl-taint-cached", &redis);
    let a = c.replica();
    let b = c.replica();
    let mut took = Vec::new();
    for round in 0..10u64 {
        let who = c.token(&format!("frank{round}"));
        let sid = session(&a.gw, &who).unwrap();
        // Known on B before the read, so B holds a copy the feed must update.
        let r = call(&b.gw, &who, &sid, 1, "demo__echo", echo("warm"));
        assert!(r["result"].is_object(), "{r}");
        let r = call(&a.gw, &who, &sid, 2, "demo__read_secret", json!({}));
        assert!(r["result"].is_object(), "{r}");
        let t0 = Instant::now();
        let mut id = 3;
        while code(&call(
            &b.gw,
            &who,
            &sid,
            id,
            "demo__fetch_url",
            json!({"url": format!("https://example.org/cached-{round}-{id}")}),
        )) != -32030
        {
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "taint never reached B"
            );
            id += 1;
        }
        took.push(t0.elapsed());
    }
    let (median, max) = median_max(&mut took);
    println!("cached taint A→B: median {median:?}, max {max:?}");
    assert!(median <= Duration::from_millis(100), "median {median:?}");
    assert!(max <= Duration::from_millis(300), "max {max:?}");
}

/// Two replicas recording labels for one session at once each write the
/// whole binding; the one stored last can lack the other's label (seen:
/// B's own label write superseded A's taint, and B served egress for the
/// 2 s the test waited). The per-label taint entries keep it: here the
/// binding is overwritten without the label, as that race leaves it, and a
/// replica picking the session up is still refused egress.
#[test]
fn a_binding_overwritten_without_its_label_keeps_the_session_tainted() {
    let redis = Redis::start();
    let tag = "cl-taint-lost";
    let mut c = taint_cluster_cached(tag, &redis);
    let a = c.replica();
    let who = c.token("grace");
    let sid = session(&a.gw, &who).unwrap();
    let r = call(&a.gw, &who, &sid, 1, "demo__read_secret", json!({}));
    assert!(r["result"].is_object(), "{r}");
    let key = format!("{tag}:e:session:{sid}");
    let mut e: Value = serde_json::from_str(redis.cli(&["GET", &key]).trim()).unwrap();
    assert_ne!(
        e["value"]["labels_read"],
        json!([]),
        "the read is recorded: {e}"
    );
    e["value"]["labels_read"] = json!([]);
    assert_eq!(
        redis.cli(&["SET", &key, &e.to_string(), "KEEPTTL"]).trim(),
        "OK"
    );
    let b = c.replica();
    let r = call(
        &b.gw,
        &who,
        &sid,
        2,
        "demo__fetch_url",
        json!({"url": "https://example.org/lost-label"}),
    );
    assert_eq!(code(&r), -32030, "{r}");
    assert_eq!(c.upstream_saw("lost-label"), 0);
}

/// Whether `who` is refused as quarantined on `gw`: a 2026-07-28 request
/// (no session involved) and, if given, a call in its session there.
fn refused(gw: &Gateway, token: &str, sid: Option<&str>, marker: &str) -> bool {
    let stateless = code(&stateless_call(gw, token, 90, "demo__echo", echo(marker)));
    let in_session = sid.map(|sid| code(&call(gw, token, sid, 91, "demo__echo", echo(marker))));
    stateless == QUARANTINED && in_session.is_none_or(|c| c == QUARANTINED)
}

/// Whether `who` is served on `gw`, as [`refused`].
fn served(gw: &Gateway, token: &str, sid: Option<&str>, marker: &str) -> bool {
    let stateless = stateless_call(gw, token, 92, "demo__echo", echo(marker));
    let in_session = sid.map(|sid| call(gw, token, sid, 93, "demo__echo", echo(marker)));
    stateless["result"].is_object() && in_session.is_none_or(|v| v["result"].is_object())
}

/// Redis killed (SIGKILL) mid-run and restarted on the same port, with its
/// data (`persistent`: append-only file, fsynced each write) or empty.
fn outage(tag: &str, persistent: bool) {
    let mut redis = if persistent {
        Redis::start_persistent()
    } else {
        Redis::start()
    };
    let mut c = Cluster::new(tag, &redis, "");
    let a = c.replica();
    let b = c.replica();
    let (alice, bob, carol) = (c.token("alice"), c.token("bob"), c.token("carol"));
    // Sessions local to each replica, made before the outage.
    let s = |gw: &Gateway, t: &str| session(gw, t).unwrap();
    let (alice_a, alice_b) = (s(&a.gw, &alice), s(&b.gw, &alice));
    let (bob_a, bob_b) = (s(&a.gw, &bob), s(&b.gw, &bob));
    let (carol_a, carol_b) = (s(&a.gw, &carol), s(&b.gw, &carol));
    let (status, v) = a.admin().quarantine_user("alice");
    assert_eq!(status, 200, "{v}");
    assert!(eventually(2, || refused(
        &b.gw,
        &alice,
        Some(&alice_b),
        "x"
    )));
    assert!(served(&b.gw, &carol, Some(&carol_b), "carol-before"));

    // Redis dies.
    redis.kill();
    std::thread::sleep(Duration::from_millis(300));
    // What was in force stays in force on both; the others are served
    // (`on_unreachable = "last-known"`, the default).
    assert!(refused(&a.gw, &alice, Some(&alice_a), "alice-outage"));
    assert!(refused(&b.gw, &alice, Some(&alice_b), "alice-outage"));
    assert_eq!(c.upstream_saw("alice-outage"), 0);
    assert!(
        served(&a.gw, &bob, Some(&bob_a), "bob-outage"),
        "A serves bob"
    );
    assert!(
        served(&b.gw, &bob, Some(&bob_b), "bob-outage"),
        "B serves bob"
    );
    // A quarantine issued on A during the outage: in force on A at once,
    // the answer (202) says it is queued, retried until stored.
    let (status, v) = a.admin().quarantine_user("carol");
    eprintln!("{tag}: quarantine during the outage: {status} {v}");
    assert_eq!(status, 202, "{v}");
    assert_eq!(
        v["quarantine"]["target"]["value"], "urn:portcullis:dev#carol",
        "{v}"
    );
    assert!(v["queued"].is_string(), "{v}");
    assert!(refused(&a.gw, &carol, Some(&carol_a), "carol-outage-a"));
    let (_, st) = a.admin().get("/admin/store");
    assert_eq!(st["status"]["current"], false, "{st}");
    assert!(st["status"]["pending_writes"].as_u64() >= Some(1), "{st}");
    // B cannot know yet: carol is still served there.
    assert!(served(&b.gw, &carol, Some(&carol_b), "carol-b-outage"));

    // Redis comes back on the same port.
    let back = Instant::now();
    redis.restart();
    assert!(
        eventually(10, || refused(&b.gw, &carol, None, "carol-after")),
        "the outage's quarantine reached B; redis: {}",
        redis.cli(&["--scan", "--pattern", &format!("{tag}:*")]),
    );
    eprintln!(
        "{tag}: quarantine from the outage enforced on B {:.0} ms after redis-server restarted",
        ms(back.elapsed())
    );
    assert!(
        eventually(5, || redis
            .cli(&["--scan", "--pattern", &format!("{tag}:e:quarantine:*")])
            .contains("carol")),
        "carol's quarantine stored in Redis"
    );
    assert!(eventually(5, || a.admin().get("/admin/store").1["status"]
        ["pending_writes"]
        == 0));
    // Settled: give resyncs time to announce whatever they found.
    std::thread::sleep(Duration::from_millis(1500));
    // The quarantine stored before the outage still holds everywhere.
    assert!(
        refused(&a.gw, &alice, None, "alice-after"),
        "A lifted alice's quarantine"
    );
    assert!(
        refused(&b.gw, &alice, None, "alice-after"),
        "B lifted alice's quarantine; B's quarantines: {}",
        b.admin().get("/admin/quarantines").1
    );
    assert!(refused(&b.gw, &carol, Some(&carol_b), "carol-after-b"));
    assert_eq!(c.upstream_saw("alice-after"), 0);
    // Sessions survive the outage.
    for (gw, sid, name) in [(&a.gw, &bob_a, "A"), (&b.gw, &bob_b, "B")] {
        let r = call(gw, &bob, sid, 9, "demo__echo", echo("bob-after"));
        assert!(
            r["result"].is_object(),
            "bob's session on {name} after: {r}"
        );
    }
    // The link works both ways again: a release on B reaches A.
    let (status, v) = b.admin().release_user("carol");
    assert_eq!(status, 200, "{v}");
    assert!(
        eventually(2, || served(&a.gw, &carol, None, "carol-free")),
        "the release on B reached A"
    );
}

#[test]
fn redis_killed_and_restarted_with_its_data_containment_holds_and_catches_up() {
    outage("cl-outage-aof", true);
}

#[test]
fn redis_killed_and_restarted_empty_containment_holds_and_catches_up() {
    outage("cl-outage-empty", false);
}

#[test]
fn store_outage_fails_closed_where_configured() {
    let mut redis = Redis::start_persistent();
    let mut c = Cluster::new("cl-closed", &redis, "");
    // C: every request refused while the store is away.
    c.store_extra = "on_unreachable = \"deny\"".into();
    let cr = c.replica();
    // D and E: a global rate limit; D refuses what it cannot check, E
    // falls back to its own limiter (the default).
    c.extra = "[containment.rate]\nidentity = { per_minute = 60000, burst = 1000 }\n".into();
    c.store_extra = "rate_fallback = \"deny\"".into();
    let d = c.replica();
    c.store_extra = String::new();
    let e = c.replica();
    let bob = c.token("bob");
    let sessions: Vec<String> = [&cr, &d, &e]
        .iter()
        .map(|r| session(&r.gw, &bob).unwrap())
        .collect();
    for (r, sid) in [&cr, &d, &e].iter().zip(&sessions) {
        assert!(
            served(&r.gw, &bob, Some(sid), "before"),
            "{} before",
            r.name
        );
    }

    redis.kill();
    std::thread::sleep(Duration::from_millis(300));
    let r = call(
        &cr.gw,
        &bob,
        &sessions[0],
        1,
        "demo__echo",
        echo("c-outage"),
    );
    assert_eq!(code(&r), QUARANTINED, "on_unreachable = deny: {r}");
    // The answer is a deny-all refusal; the audit names the cause.
    assert!(
        cr.audit()
            .iter()
            .any(|x| x["policies"] == json!(["containment:store-unreachable"])),
        "C's audit names the store"
    );
    let r = stateless_call(&cr.gw, &bob, 2, "demo__echo", echo("c-outage"));
    assert_eq!(code(&r), QUARANTINED, "{r}");
    let r = call(&d.gw, &bob, &sessions[1], 3, "demo__echo", echo("d-outage"));
    assert_eq!(code(&r), LIMITED, "rate_fallback = deny: {r}");
    assert_eq!(c.upstream_saw("c-outage") + c.upstream_saw("d-outage"), 0);
    assert!(
        served(&e.gw, &bob, Some(&sessions[2]), "e-outage"),
        "rate_fallback = local serves"
    );

    redis.restart();
    assert!(
        eventually(10, || served(&cr.gw, &bob, Some(&sessions[0]), "c-back")),
        "C serves again once the store is back"
    );
    assert!(
        eventually(10, || served(&d.gw, &bob, Some(&sessions[1]), "d-back")),
        "D serves again once the store is back"
    );
}

#[test]
fn a_pin_approved_on_a_shows_the_tool_again_on_b() {
    let redis = Redis::start();
    let mut c = Cluster::new("cl-pins", &redis, "");
    let rug = c.dir.join("rug.txt");
    c.rug = Some(rug.clone());
    let a = c.replica();
    let b = c.replica();
    let alice = c.token("alice");
    let (sa, sb) = (
        session(&a.gw, &alice).unwrap(),
        session(&b.gw, &alice).unwrap(),
    );
    let has_echo = |gw: &Gateway, sid: &str| {
        tool_names(gw, &alice, sid)
            .unwrap()
            .contains(&"demo__echo".to_owned())
    };
    assert!(has_echo(&a.gw, &sa) && has_echo(&b.gw, &sb));

    // The server changes the tool (both replicas' demo servers read the
    // same file): hidden on both.
    std::fs::write(&rug, "Echo the message back, in capitals.").unwrap();
    assert!(eventually(5, || !has_echo(&a.gw, &sa)), "hidden on A");
    assert!(eventually(5, || !has_echo(&b.gw, &sb)), "hidden on B");
    let r = call(&b.gw, &alice, &sb, 3, "demo__echo", echo("while-changed"));
    assert_eq!(code(&r), -32602, "{r}");
    assert_eq!(c.upstream_saw("while-changed"), 0);

    // Approved via A: visible on B too.
    let (code_, out, err) = a.cli(&["pins", "approve", "demo", "echo"]);
    assert_eq!(code_, 0, "{out}{err}");
    let approved = Instant::now();
    assert!(eventually(3, || has_echo(&b.gw, &sb)), "visible on B");
    eprintln!(
        "pin approval on A visible on B after {:.0} ms",
        ms(approved.elapsed())
    );
    let r = call(&b.gw, &alice, &sb, 4, "demo__echo", echo("approved-b"));
    assert!(r["result"].is_object(), "{r}");
    assert!(has_echo(&a.gw, &sa));
    // Nothing is pending on either replica any more.
    let (code_, _, _) = b.cli(&["pins", "approve", "demo", "echo"]);
    assert_eq!(code_, 1, "nothing pending on B");
}

#[test]
fn the_change_feed_stays_subscribed_while_nothing_happens() {
    let redis = Redis::start();
    let mut c = Cluster::new("cl-feed", &redis, "");
    let a = c.replica();
    std::thread::sleep(Duration::from_millis(2500));
    let lost: Vec<String> =
        a.gw.log_text()
            .lines()
            .filter(|l| l.contains("change feed lost"))
            .map(str::to_owned)
            .collect();
    assert!(lost.is_empty(), "{lost:#?}");
    let (_, st) = a.admin().get("/admin/store");
    assert_eq!(st["status"]["current"], true, "{st}");
    assert!(st["status"]["last_error"].is_null(), "{st}");
}
