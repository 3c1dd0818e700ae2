//! `portcullis wrap -- CMD ARGS…`: a local client launches Portcullis as its
//! stdio server; Portcullis launches the real server and polices the
//! traffic in between. Names pass unchanged (one server, no namespace).

use std::path::PathBuf;
use std::sync::Arc;

use portcullis_gateway::config::UpstreamConfig;
use portcullis_gateway::session::{new_session_id, Client};
use portcullis_gateway::{Config, Gateway};
use portcullis_identity::principal::Principal;
use portcullis_wire::message::raw_u64;
use portcullis_wire::{stdio as framing, Kind, Message, Revision};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// Runs until stdin closes.
pub async fn run(
    config: Option<PathBuf>,
    name: String,
    agent: String,
    audit_log: Option<PathBuf>,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let mut cfg = match config {
        Some(p) => Config::load(&p)?,
        None => Config::empty(),
    };
    cfg.upstreams.retain(|u| u.name != name);
    cfg.upstreams
        .insert(0, UpstreamConfig::command(&name, command));
    if let Some(p) = audit_log {
        cfg.audit.path = Some(p);
    }
    cfg.validate()?;
    let max_line = cfg.limits.max_body_bytes;
    let max_depth = cfg.limits.max_json_depth;
    let single = cfg.upstreams.len() == 1;
    // Containment state persists when the config names a state folder.
    let contain = portcullis_gateway::contain::open_state(&cfg, None)
        .await
        .map_err(anyhow::Error::msg)?;
    let pep = std::sync::Arc::new(
        portcullis_gateway::pep::Pep::from_config(&cfg)
            .map_err(|e| anyhow::anyhow!("policy: {e}"))?
            .with_containment(contain.clone()),
    );
    pep.pins.load(&contain).await;
    pep.pins.persist(contain.store().clone());
    pep.watch();
    let gw = Gateway::new(cfg, &[], !single, pep);
    // The identity of a stdio front: the local user, as the configured agent.
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown-user".into());
    let principal = Principal::local(&user, &agent);
    tracing::info!(identity = %principal.key(), "wrap identity");

    let (out_tx, mut out_rx) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(m) = out_rx.recv().await {
            if stdout
                .write_all(&framing::frame(&m.to_bytes()))
                .await
                .is_err()
            {
                return;
            }
            let _ = stdout.flush().await;
        }
    });

    let mut session: Option<Arc<Client>> = None;
    let mut stdin = tokio::io::stdin();
    let mut lines = framing::LineBuffer::new(max_line);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stdin.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let Some(chunk) = buf.get(..n) else { break };
        for line in lines.feed(chunk) {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    let _ = out_tx
                        .send(Message::error(
                            None,
                            portcullis_wire::codes::INVALID_REQUEST,
                            &e.to_string(),
                            None,
                        ))
                        .await;
                    continue;
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if portcullis_wire::depth::within_depth(&line, max_depth).is_none() {
                let e = portcullis_wire::WireError::TooDeep(max_depth);
                let _ = out_tx
                    .send(Message::error(None, e.code(), &e.to_string(), None))
                    .await;
                continue;
            }
            let m = match Message::parse(&line) {
                Ok(m) => m,
                Err(e) => {
                    let id = portcullis_wire::message::id_of(&String::from_utf8_lossy(&line));
                    let _ = out_tx
                        .send(Message::error(id, e.code(), &e.to_string(), None))
                        .await;
                    continue;
                }
            };
            handle(&gw, &principal, &mut session, m, &out_tx).await;
        }
    }
    gw.shutdown();
    gw.pep.monitor.shutdown();
    drop(out_tx);
    let _ = writer.await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Ok(())
}

async fn handle(
    gw: &Arc<Gateway>,
    principal: &Principal,
    session: &mut Option<Arc<Client>>,
    m: Message,
    out: &mpsc::Sender<Message>,
) {
    let params = m.params();
    let modern = params
        .get("_meta")
        .and_then(|x| x.get(META_VERSION))
        .and_then(Value::as_str)
        == Some("2026-07-28");
    match (m.kind(), m.method()) {
        (Kind::Request, Some("initialize")) => {
            let v = Revision::negotiate_handshake(
                params
                    .get("protocolVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            );
            let caps = params
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let info = params
                .get("clientInfo")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let client = Client::new(
                new_session_id(),
                v,
                caps,
                info,
                gw.upstream_count(),
                principal.clone(),
                "stdio".into(),
            );
            gw.sessions.insert(client.clone(), usize::MAX);
            gw.pep.monitor.session_start(&client);
            // Unsolicited server messages (list_changed, …) go to stdout too.
            if let Some(mut rx) = client.open_outbound() {
                let o = out.clone();
                tokio::spawn(async move {
                    while let Some(x) = rx.recv().await {
                        if o.send(x).await.is_err() {
                            return;
                        }
                    }
                });
            }
            let result = gw.initialize(&client).await;
            gw.start_listening(&client).await;
            *session = Some(client);
            let _ = out
                .send(Message::response(
                    m.id_owned().unwrap_or_else(|| raw_u64(0)),
                    result,
                ))
                .await;
        }
        (Kind::Request, _) => {
            let client = match (modern, session.as_ref()) {
                (true, _) => {
                    let caps = params
                        .get("_meta")
                        .and_then(|x| x.get("io.modelcontextprotocol/clientCapabilities"))
                        .cloned()
                        .unwrap_or_else(|| json!({}));
                    {
                        let c = Client::new(
                            String::new(),
                            Revision::V2026_07_28,
                            caps,
                            json!({}),
                            0,
                            principal.clone(),
                            "stdio".into(),
                        );
                        let _ = c.facts.set(gw.identity_facts(&c.owner));
                        c
                    }
                }
                (false, Some(c)) => c.clone(),
                (false, None) => {
                    let _ = out
                        .send(Message::error(
                            m.id_owned(),
                            portcullis_wire::codes::INVALID_REQUEST,
                            "Server not initialized",
                            None,
                        ))
                        .await;
                    return;
                }
            };
            let gw = gw.clone();
            let out = out.clone();
            tokio::spawn(async move {
                let (tx, mut rx) = mpsc::channel::<Message>(64);
                let g = gw.clone();
                let c = client.clone();
                tokio::spawn(async move { g.dispatch(&c, m, &[], &tx).await });
                while let Some(x) = rx.recv().await {
                    if out.send(x).await.is_err() {
                        return;
                    }
                }
            });
        }
        (Kind::Notification, _) => {
            if let Some(c) = session.as_ref() {
                gw.client_notification(c, m).await;
            }
        }
        (Kind::Response | Kind::Error, _) => {
            if let Some(c) = session.as_ref() {
                gw.client_response(c, m).await;
            }
        }
    }
}
