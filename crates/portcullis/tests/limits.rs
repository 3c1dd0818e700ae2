//! Slow and numerous clients against the gateway binary, over real loopback
//! sockets: headers sent a byte at a time (slowloris), a body that trickles,
//! a kept-alive connection left idle, and the caps on open connections in
//! total and per client address. Each bound is checked with a clock, and
//! a slow body is checked against the upstream's own log: it never arrives.
//!
//! (An oversized body and too-deep JSON are covered, with the same upstream
//! log proof, by `bad_input_is_rejected_before_the_upstream` in gateway.rs.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code: a panic is a failed assertion

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A gateway with `[limits]` set to `limits` and one demo upstream `demo`
/// that appends every line it receives to the returned log file.
fn gateway(dir: &Path, limits: &str) -> (Gateway, PathBuf) {
    let log = dir.join("upstream.log");
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[limits]\n{limits}\n\n[[upstream]]\nname = \"demo\"\ncommand = [{BIN:?}, \"demo-server\"]\nenv = {{ PORTCULLIS_DEMO_LOG = {:?} }}\n",
            log.display().to_string()
        ),
    )
    .unwrap();
    (
        start(&["--config".into(), cfg.display().to_string()], &[]),
        log,
    )
}

/// What a read on an idle socket tells about it.
#[derive(Debug, PartialEq)]
enum State {
    /// Nothing to read yet: the gateway keeps it open.
    Open,
    /// End of stream or reset: the gateway closed it.
    Closed,
    /// The gateway sent bytes.
    Data,
}

fn state(s: &mut TcpStream) -> State {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 512];
    let st = match s.read(&mut b) {
        Ok(0) => State::Closed,
        Ok(_) => State::Data,
        Err(e) if e.kind() == ErrorKind::WouldBlock => State::Open,
        Err(_) => State::Closed,
    };
    s.set_nonblocking(false).unwrap();
    st
}

/// Waits up to `within` for the gateway to close `s`; returns how long it took.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut b = [0u8; 512];
    while t.elapsed() < within {
        match s.read(&mut b) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

/// Connects from a chosen loopback source address (Linux routes all of
/// 127/8 to lo), so one test can be several clients.
fn connect_from(src: &str, to: &str) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{src}:0").parse::<SocketAddr>().unwrap())
            .unwrap();
        let s = sock.connect(to.parse().unwrap()).await.unwrap();
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// Whether a fresh connection gets an HTTP answer (any status).
fn served(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let req = format!(
        "GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).is_ok() && read_response(&mut s, Duration::from_secs(2)).is_some()
}

fn echo_body(id: u32, message: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"demo__echo","arguments":{{"message":"{message}"}}}}}}"#
    )
}

/// Reads one response with a `Content-Length` body; returns (status, body).
fn read_response(s: &mut TcpStream, within: Duration) -> Option<(u16, String)> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while t.elapsed() < within {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, String::from_utf8_lossy(&buf[end + 4..]).to_string()))
}

#[test]
fn slowloris_headers_are_cut_off_while_normal_clients_are_served() {
    const N: usize = 50;
    let dir = tempdir("slowloris");
    let (gw, _) = gateway(&dir, "header_timeout_ms = 1000");
    let sid = gw.session();

    // A normal client, once the slow ones are all connected.
    let (go, ready) = std::sync::mpsc::channel::<()>();
    let normal = {
        let addr = gw.addr.clone();
        let path = gw.path.clone();
        let sid = sid.clone();
        std::thread::spawn(move || {
            ready.recv().unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let t = Instant::now();
            let r = raw(
                &addr,
                "POST",
                &path,
                &[
                    ACCEPT,
                    JSON,
                    ("mcp-session-id", &sid),
                    ("mcp-protocol-version", "2025-06-18"),
                ],
                echo_body(1, "normal").as_bytes(),
            );
            (t.elapsed(), r)
        })
    };

    let start = Instant::now();
    let mut conns: Vec<(TcpStream, Instant, Option<Duration>)> = (0..N)
        .map(|_| {
            let s = TcpStream::connect(&gw.addr).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, Instant::now(), None)
        })
        .collect();
    go.send(()).unwrap();
    // One header byte every 200 ms per connection; the header never ends.
    let header = format!("POST {} HTTP/1.1\r\nHost: {}\r\nX-Slow: ", gw.path, gw.addr)
        .into_bytes()
        .into_iter()
        .chain(std::iter::repeat(b'a'));
    let header: Vec<u8> = header.take(200).collect();
    let mut sent = 0usize;
    let mut next_byte = Instant::now();
    while start.elapsed() < Duration::from_secs(5) && conns.iter().any(|c| c.2.is_none()) {
        let write_now = Instant::now() >= next_byte;
        for (s, opened, closed) in conns.iter_mut().filter(|c| c.2.is_none()) {
            let mut b = [0u8; 64];
            let gone = match s.read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            let gone = gone || (write_now && s.write_all(&header[sent..=sent]).is_err());
            if gone {
                *closed = Some(opened.elapsed());
            }
        }
        if write_now {
            sent += 1;
            next_byte += Duration::from_millis(200);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let all_closed = start.elapsed();
    let (latency, r) = normal.join().unwrap();

    let times: Vec<Duration> = conns.iter().filter_map(|c| c.2).collect();
    assert_eq!(times.len(), N, "every slow connection is closed");
    let first = times.iter().min().unwrap();
    let last = times.iter().max().unwrap();
    eprintln!(
        "slowloris: {N} connections, {sent} header bytes each, closed after {first:?}..{last:?}, all within {all_closed:?}; normal call meanwhile took {latency:?}"
    );
    assert!(
        *first >= Duration::from_millis(800),
        "closed before the header timeout: {first:?}"
    );
    assert!(
        all_closed <= Duration::from_secs(3),
        "all closed within 3 s, took {all_closed:?}"
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["result"]["content"][0]["text"],
        "Echo: normal",
        "the normal client is served"
    );
    assert!(
        latency < Duration::from_secs(1),
        "normal call under slowloris took {latency:?}"
    );
}

#[test]
fn slow_body_gets_408_and_never_reaches_the_upstream() {
    let dir = tempdir("slowbody");
    let (gw, up) = gateway(&dir, "body_timeout_ms = 1000");
    let sid = gw.session();
    let headers = |len: usize| {
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nMcp-Session-Id: {sid}\r\nMcp-Protocol-Version: 2025-06-18\r\nContent-Length: {len}\r\n\r\n",
            gw.path, gw.addr
        )
    };
    // A complete, valid call of exactly 1000 bytes.
    let body = |marker: &str| {
        let b = echo_body(7, marker);
        let pad = "x".repeat(1000 - b.len());
        echo_body(7, &format!("{marker}{pad}"))
    };

    // At full speed the same call reaches the upstream (the log works).
    let fast = body("FAST-BODY-MARKER");
    assert_eq!(fast.len(), 1000);
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.write_all(headers(fast.len()).as_bytes()).unwrap();
    s.write_all(fast.as_bytes()).unwrap();
    let (status, _) = read_response(&mut s, Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200);

    // 900 bytes at once, then one byte every 200 ms.
    let slow = body("SLOW-BODY-MARKER");
    assert_eq!(slow.len(), 1000);
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.write_all(headers(slow.len()).as_bytes()).unwrap();
    s.write_all(&slow.as_bytes()[..900]).unwrap();
    let t = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut w = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for i in 900..1000 {
            if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return i;
            }
            if w.write_all(&slow.as_bytes()[i..=i]).is_err() {
                return i;
            }
        }
        1000
    });
    let resp = read_response(&mut s, Duration::from_secs(5));
    let took = t.elapsed();
    let _ = tx.send(());
    let sent = trickle.join().unwrap();
    eprintln!("slow body: answered {resp:?} after {took:?}, {sent} of 1000 bytes sent");
    assert!(sent < 1000, "the body never completed");
    let (status, text) = resp.expect("an answer before the connection closed");
    assert_eq!(status, 408);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not arrive within 1000 ms"),
        "{v}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "408 after the body timeout, took {took:?}"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).is_some(),
        "the connection is closed after the 408"
    );

    // The session still works; the upstream saw the fast call, never the slow one.
    assert_eq!(
        gw.call(
            &sid,
            "8",
            "tools/call",
            r#"{"name":"demo__echo","arguments":{"message":"after"}}"#
        )["result"]["content"][0]["text"],
        "Echo: after"
    );
    let log = std::fs::read_to_string(&up).unwrap_or_default();
    assert!(log.contains("FAST-BODY-MARKER") && log.contains("after"));
    assert!(
        !log.contains("SLOW-BODY-MARKER"),
        "a timed-out body reached the upstream"
    );
}

#[test]
fn idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let dir = tempdir("keepalive");
    let (gw, _) = gateway(&dir, "header_timeout_ms = 1000");
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    write!(
        s,
        "GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: {}\r\n\r\n",
        gw.addr
    )
    .unwrap();
    let (status, _) = read_response(&mut s, Duration::from_secs(5)).unwrap();
    assert!(status < 500, "{status}");
    // Kept alive (no Connection: close), then nothing more is sent.
    assert_eq!(state(&mut s), State::Open);
    let idle = closed_within(&mut s, Duration::from_secs(5));
    eprintln!("idle kept-alive connection closed after {idle:?}");
    let idle = idle.expect("the idle connection is closed");
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[test]
fn per_ip_cap_closes_the_extra_connection_and_frees_slots_on_close() {
    let dir = tempdir("percap");
    let (gw, _) = gateway(&dir, "max_connections_per_ip = 20");
    let open = |n: usize| -> Vec<TcpStream> {
        (0..n)
            .map(|_| TcpStream::connect(&gw.addr).unwrap())
            .collect()
    };
    for round in 0..2 {
        let mut first = open(20);
        let mut extra = TcpStream::connect(&gw.addr).unwrap();
        let refused = closed_within(&mut extra, Duration::from_secs(2));
        eprintln!("round {round}: the 21st connection closed after {refused:?}");
        assert!(
            refused.is_some_and(|d| d < Duration::from_millis(500)),
            "the 21st connection is closed at once: {refused:?}"
        );
        // Another client address is not affected by this one's cap.
        let mut other = connect_from("127.0.0.2", &gw.addr);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(state(&mut other), State::Open, "127.0.0.2 is accepted");
        for (i, s) in first.iter_mut().enumerate() {
            assert_eq!(state(s), State::Open, "connection {i} of the first 20");
        }
        // The first 20 are served, not just held.
        write!(
            first[0],
            "GET /.well-known/oauth-protected-resource HTTP/1.1\r\nHost: {}\r\n\r\n",
            gw.addr
        )
        .unwrap();
        let (status, _) = read_response(&mut first[0], Duration::from_secs(5)).unwrap();
        assert!(status < 500, "{status}");
        drop(first);
        drop(other);
        // Closing them frees the slots (the next round opens 20 again).
        assert!(
            eventually(3, || served(&gw.addr)),
            "served after the slots were freed"
        );
        // The probe's own slot is freed when its connection task ends, just
        // after the answer the probe read: give it time, or the next round's
        // 20th connection can find it still counted (a flake under load).
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = gw.log_text();
    let lines = log.matches("connection refused").count();
    assert!(
        (1..=2).contains(&lines),
        "refusals are logged, at most once a second: {lines}\n{log}"
    );
}

#[test]
fn total_cap_counts_connections_from_every_address() {
    let dir = tempdir("totalcap");
    let (gw, _) = gateway(&dir, "max_connections = 10\nmax_connections_per_ip = 8");
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&gw.addr).unwrap())
        .collect();
    held.push(connect_from("127.0.0.2", &gw.addr));
    held.push(connect_from("127.0.0.2", &gw.addr));
    let mut extra = connect_from("127.0.0.3", &gw.addr);
    let refused = closed_within(&mut extra, Duration::from_secs(2));
    assert!(
        refused.is_some_and(|d| d < Duration::from_millis(500)),
        "the 11th connection is closed at once: {refused:?}"
    );
    for (i, s) in held.iter_mut().enumerate() {
        assert_eq!(state(s), State::Open, "held connection {i}");
    }
    held.truncate(9);
    let mut again = connect_from("127.0.0.3", &gw.addr);
    let ok = eventually(3, || {
        again = connect_from("127.0.0.3", &gw.addr);
        std::thread::sleep(Duration::from_millis(100));
        state(&mut again) == State::Open
    });
    assert!(ok, "a freed slot is given to a new address");
}
