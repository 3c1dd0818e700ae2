//! `--features otel`: the gateway exports one span per request over
//! OTLP/HTTP, in the caller's trace and parented on the caller's span. The
//! collector here is a minimal HTTP sink on loopback that keeps the raw
//! protobuf bodies (a real OpenTelemetry Collector cannot run offline here);
//! the ids are found as raw bytes in the encoded spans.
#![cfg(feature = "otel")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use common::*;

/// What the sink received: (path, body) of each POST.
type Posts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Accepts OTLP/HTTP posts and keeps each.
fn collector() -> (u16, Posts) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).unwrap();
                    g.lock().unwrap().push((path, body));
                    let mut w = s.try_clone().unwrap();
                    let _ = w.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, got)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn request_spans_are_exported_in_the_callers_trace() {
    let (port, got) = collector();
    let dir = tempdir("otel");
    let gw = start(
        &[],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{port}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("PORTCULLIS_STATE_DIR", dir.display().to_string()),
        ],
    );
    assert!(
        gw.log_text().contains("exporting request spans")
            || eventually(5, || gw.log_text().contains("exporting request spans"))
    );
    let sid = gw.session();
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let parent = "10f067aa0ba902b8";
    let r = gw
        .post(
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
                ("traceparent", &format!("00-{trace}-{parent}-01")),
            ],
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"demo__echo","arguments":{"message":"t"}}}"#,
        )
        .json();
    assert!(r["result"].is_object(), "{r}");
    let trace_bytes = hex::decode(trace).unwrap();
    let parent_bytes = hex::decode(parent).unwrap();
    assert!(
        eventually(15, || got.lock().unwrap().iter().any(|(p, b)| p
            == "/v1/traces"
            && contains(b, &trace_bytes)
            && contains(b, &parent_bytes)
            && contains(b, b"mcp tools/call"))),
        "no span of the call reached the collector: {} posts",
        got.lock().unwrap().len()
    );
}
