//! `subscriptions/listen` (2026-07-28): one long SSE response per client
//! that carries the list-changed and resource-updated notifications it asked
//! for, gathered from every upstream whatever its revision.
//!
//! - 2026-07-28 upstreams: a `subscriptions/listen` of the gateway's own,
//!   narrowed to that upstream's URIs, relayed.
//! - Handshake-era upstreams (stdio, or the session the gateway holds for
//!   2026-07-28 clients): their unsolicited notifications feed the
//!   gateway's hub; URIs are subscribed with `resources/subscribe`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use portcullis_wire::message::raw_u64;
use portcullis_wire::{Kind, Message};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc};

use crate::conn::Conn;
use crate::gateway::Gateway;
use crate::protocol;
use crate::session::{lock, Client};

/// `_meta` key naming the listen stream a notification belongs to.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// What one listen stream asked for.
#[derive(Debug, Default, Clone)]
struct Filter {
    tools: bool,
    prompts: bool,
    resources: bool,
    uris: Vec<String>,
}

impl Filter {
    fn parse(params: &Value) -> Filter {
        let n = params.get("notifications").cloned().unwrap_or(Value::Null);
        let flag = |k: &str| n.get(k).and_then(Value::as_bool).unwrap_or(false);
        Filter {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            uris: n
                .get("resourceSubscriptions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The honoured subset, as the ack reports it (false flags and an empty
    /// list are left out).
    fn to_json(&self, uris: &[String]) -> Value {
        let mut m = Map::new();
        for (k, v) in [
            ("toolsListChanged", self.tools),
            ("promptsListChanged", self.prompts),
            ("resourcesListChanged", self.resources),
        ] {
            if v {
                m.insert(k.into(), Value::Bool(true));
            }
        }
        if !uris.is_empty() {
            m.insert("resourceSubscriptions".into(), json!(uris));
        }
        Value::Object(m)
    }

    fn wants(&self, m: &Message) -> bool {
        match m.method() {
            Some("notifications/tools/list_changed") => self.tools,
            Some("notifications/prompts/list_changed") => self.prompts,
            Some("notifications/resources/list_changed") => self.resources,
            Some("notifications/resources/updated") => {
                let p = m.params();
                let uri = p.get("uri").and_then(Value::as_str).unwrap_or_default();
                self.uris.iter().any(|u| u == uri)
            }
            _ => false,
        }
    }
}

fn tag(m: &Message, sub: &Value) -> Message {
    let mut p = m.params();
    if !p.is_object() {
        p = json!({});
    }
    protocol::set_path(&mut p, &["_meta", META_SUBSCRIPTION_ID], sub.clone());
    let mut out = m.clone();
    out.set_params(&p);
    out
}

async fn c_call(
    conn: Conn,
    req: Message,
    tx: mpsc::Sender<Message>,
) -> Result<Message, crate::upstream::UpstreamError> {
    conn.call(&req, &[], &tx, std::time::Duration::from_secs(24 * 3600))
        .await
}

/// Removes the listen stream's tag before a handshake client sees it.
fn untag(m: &Message) -> Message {
    let mut p = m.params();
    let Some(meta) = p.get_mut("_meta").and_then(Value::as_object_mut) else {
        return m.clone();
    };
    meta.remove(META_SUBSCRIPTION_ID);
    if meta.is_empty() {
        if let Some(o) = p.as_object_mut() {
            o.remove("_meta");
        }
    }
    let mut out = m.clone();
    out.set_params(&p);
    out
}

impl Gateway {
    /// Serves one `subscriptions/listen` until the client closes the stream.
    pub(crate) async fn listen(
        self: &Arc<Self>,
        client: &Arc<Client>,
        id: Option<Box<RawValue>>,
        params: &Value,
        out: &crate::monitor::Out<'_>,
    ) {
        let filter = Filter::parse(params);
        let sub: Value = id
            .as_ref()
            .and_then(|i| serde_json::from_str(i.get()).ok())
            .unwrap_or(Value::Null);
        let mut hub = self.hub.subscribe();
        let (ev_tx, mut ev_rx) = mpsc::channel::<Message>(64);
        let mut tasks = Vec::new();
        let mut honoured_uris = Vec::new();
        for idx in 0..self.upstream_count() {
            let Ok(conn) = self.conn(client, idx).await else {
                continue;
            };
            let mut mine = Vec::new();
            for uri in &filter.uris {
                if self.route_uri(client, uri).await == Some(idx) {
                    mine.push(uri.clone());
                }
            }
            honoured_uris.extend(mine.iter().cloned());
            match &conn {
                Conn::Stateless(..) => {
                    let narrowed = Filter {
                        uris: mine,
                        ..filter.clone()
                    };
                    let mut p = json!({"notifications": narrowed.to_json(&narrowed.uris)});
                    self.shape_params(client, &conn, &mut p);
                    let req =
                        Message::request(raw_u64(self.next_uid()), "subscriptions/listen", Some(p));
                    let tx = ev_tx.clone();
                    let c = conn.clone();
                    tasks.push(tokio::spawn(async move {
                        // A listen stream has no call timeout; it lasts as long as the client's.
                        let _ = c
                            .call(&req, &[], &tx, std::time::Duration::from_secs(24 * 3600))
                            .await;
                    }));
                }
                Conn::Session(s) => {
                    if let Ok(u) = self.upstream(idx) {
                        if !u.hub_fed.swap(true, Ordering::SeqCst) {
                            let s = s.clone();
                            let me = self.clone();
                            tokio::spawn(async move {
                                let (tx, mut rx) = mpsc::channel::<Message>(64);
                                let feed = s.listen(&tx);
                                tokio::pin!(feed);
                                loop {
                                    tokio::select! {
                                        _ = &mut feed => break,
                                        Some(m) = rx.recv() => {
                                            if m.kind() == Kind::Notification {
                                                let _ = me.hub.send((idx, m));
                                            }
                                        }
                                    }
                                }
                                if let Ok(u) = me.upstream(idx) {
                                    u.hub_fed.store(false, Ordering::SeqCst);
                                }
                            });
                        }
                    }
                    self.subscribe_all(client, idx, &conn, &mine).await;
                }
                Conn::Stdio(_) => self.subscribe_all(client, idx, &conn, &mine).await,
            }
        }
        let ack = Message::notification(
            "notifications/subscriptions/acknowledged",
            Some(
                json!({"notifications": filter.to_json(&honoured_uris), "_meta": {META_SUBSCRIPTION_ID: sub}}),
            ),
        );
        if out.send(ack).await.is_ok() {
            loop {
                let m = tokio::select! {
                    _ = out.closed() => break,
                    r = hub.recv() => match r {
                        Ok((_, m)) => m,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "listen stream fell behind; notifications dropped");
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    Some(m) = ev_rx.recv() => m,
                };
                if filter.wants(&m) && out.send(tag(&m, &sub)).await.is_err() {
                    break;
                }
            }
        }
        for t in tasks {
            t.abort();
        }
    }

    /// Handshake client, 2026-07-28 upstream: `resources/subscribe` opens a
    /// listen stream upstream for that URI (unsubscribe closes it).
    pub(crate) async fn subscribe_via_listen(
        self: &Arc<Self>,
        client: &Arc<Client>,
        idx: usize,
        uri: &str,
        on: bool,
    ) {
        let old = lock(&client.upstream_subscriptions).remove(uri);
        if let Some(h) = old {
            h.abort();
        }
        if !on {
            return;
        }
        let Ok(conn) = self.conn(client, idx).await else {
            return;
        };
        let h = self.relay_listen(client, idx, conn, json!({"resourceSubscriptions": [uri]}));
        lock(&client.upstream_subscriptions).insert(uri.to_owned(), h);
    }

    /// Opens `subscriptions/listen` with `filter` on a 2026-07-28 upstream
    /// and relays its notifications to the client's GET stream.
    pub(crate) fn relay_listen(
        self: &Arc<Self>,
        client: &Arc<Client>,
        idx: usize,
        conn: Conn,
        filter: Value,
    ) -> tokio::task::AbortHandle {
        let mut p = json!({"notifications": filter});
        self.shape_params(client, &conn, &mut p);
        let req = Message::request(raw_u64(self.next_uid()), "subscriptions/listen", Some(p));
        let weak = Arc::downgrade(client);
        let name = self
            .upstream(idx)
            .map(|u| u.name.clone())
            .unwrap_or_default();
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::channel::<Message>(64);
            let call = c_call(conn, req, tx);
            tokio::pin!(call);
            loop {
                tokio::select! {
                    r = &mut call => {
                        tracing::debug!(upstream = %name, ended = ?r.err(), "upstream listen stream ended");
                        break;
                    }
                    Some(m) = rx.recv() => {
                        if m.method() == Some("notifications/subscriptions/acknowledged") {
                            continue;
                        }
                        let Some(client) = weak.upgrade() else { break };
                        if !client.deliver_wait(untag(&m)).await {
                            break;
                        }
                    }
                }
            }
        })
        .abort_handle()
    }

    async fn subscribe_all(
        self: &Arc<Self>,
        client: &Arc<Client>,
        idx: usize,
        conn: &Conn,
        uris: &[String],
    ) {
        if uris.is_empty()
            || !conn
                .capabilities()
                .get("resources")
                .and_then(|r| r.get("subscribe"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        {
            return;
        }
        for uri in uris {
            let mut p = json!({"uri": uri});
            self.shape_params(client, conn, &mut p);
            let m = Message::request(raw_u64(self.next_uid()), "resources/subscribe", Some(p));
            let (tx, _rx) = mpsc::channel(4);
            let t = self.upstream(idx).map(|u| u.timeout).unwrap_or_default();
            if let Err(e) = conn.call(&m, &[], &tx, t).await {
                tracing::warn!(error = %e, uri, "resources/subscribe for a listen stream failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_honours_only_what_was_asked() {
        let f = Filter::parse(
            &json!({"notifications": {"toolsListChanged": true, "promptsListChanged": false, "resourceSubscriptions": ["a://x"]}}),
        );
        let tools = Message::notification("notifications/tools/list_changed", None);
        let prompts = Message::notification("notifications/prompts/list_changed", None);
        let upd = Message::notification(
            "notifications/resources/updated",
            Some(json!({"uri": "a://x"})),
        );
        let other = Message::notification(
            "notifications/resources/updated",
            Some(json!({"uri": "a://y"})),
        );
        assert!(f.wants(&tools) && !f.wants(&prompts) && f.wants(&upd) && !f.wants(&other));
        assert_eq!(
            f.to_json(&["a://x".into()]),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["a://x"]})
        );
        let t = tag(&tools, &json!("L1"));
        assert_eq!(t.params()["_meta"][META_SUBSCRIPTION_ID], "L1");
    }
}
