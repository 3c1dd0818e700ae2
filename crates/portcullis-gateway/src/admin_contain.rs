//! Admin endpoints of breach containment: quarantines, the kill switch,
//! certificate and token revocation, circuit breakers. Each action is in
//! force before the answer goes out, audited with the admin's identity,
//! and stored; a store failure is reported (the action still holds until
//! restart) rather than hidden.

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::StatusCode;
use portcullis_contain::revocation::{Revocation, RevokedKind};
use portcullis_contain::state::KillSwitch;
use portcullis_contain::{now_unix, Mode, Quarantine, StoreError, Target, TargetKind};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::{parse, reply, Admin, AdminIdentity};
use crate::gateway::Gateway;

/// Containment routes, merged into the admin router (behind its guard).
pub(crate) fn routes() -> Router<Admin> {
    Router::new()
        .route(
            "/admin/quarantines",
            get(list_quarantines).post(add_quarantine),
        )
        .route("/admin/quarantines/remove", post(remove_quarantine))
        .route(
            "/admin/killswitch",
            get(get_killswitch).post(set_killswitch),
        )
        .route("/admin/revocations", get(list_revocations).post(revoke))
        .route("/admin/breakers", get(list_breakers))
        .route("/admin/breakers/reset", post(reset_breaker))
        .route("/admin/store", get(store_status))
        .route("/admin/pins", get(list_pins))
        .route("/admin/pins/diff", get(diff_pin))
        .route("/admin/pins/approve", post(approve_pin))
}

fn pin_json(p: &crate::pins::Pin, pending: Option<&crate::pins::Pin>) -> Value {
    json!({
        "server": p.server,
        "tool": p.tool,
        "status": if pending.is_some() { "changed" } else { "pinned" },
        "hash": p.hash,
        "pending_hash": pending.map(|q| q.hash.clone()),
        "by": p.by,
        "at": p.at,
    })
}

async fn list_pins(State(st): State<Admin>) -> Response {
    let pins: Vec<Value> = st
        .gw
        .pep
        .pins
        .list()
        .iter()
        .map(|(p, q)| pin_json(p, q.as_ref()))
        .collect();
    reply(StatusCode::OK, json!({"pins": pins}))
}

#[derive(Deserialize)]
struct PinRef {
    server: String,
    tool: String,
}

async fn diff_pin(
    State(st): State<Admin>,
    axum::extract::Query(q): axum::extract::Query<PinRef>,
) -> Response {
    match st.gw.pep.pins.get(&q.server, &q.tool) {
        (Some(p), Some(new)) => reply(
            StatusCode::OK,
            json!({
                "server": q.server, "tool": q.tool,
                "pinned_hash": p.hash, "pending_hash": new.hash,
                "diff": portcullis_inspect::pin::diff(&p.definition, &new.definition),
            }),
        ),
        (Some(p), None) => reply(
            StatusCode::OK,
            json!({"server": q.server, "tool": q.tool, "pinned_hash": p.hash, "pending_hash": null, "diff": ""}),
        ),
        (None, _) => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no pin for {}/{}", q.server, q.tool)}),
        ),
    }
}

async fn approve_pin(
    State(st): State<Admin>,
    Extension(who): Extension<AdminIdentity>,
    body: axum::body::Bytes,
) -> Response {
    let req: PinRef = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let by = format!("admin:{}", who.0);
    match approve(&st.gw, &req.server, &req.tool, &by, None).await {
        None => reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no pending change for {}/{}", req.server, req.tool)}),
        ),
        Some((p, r)) => stored(r, json!({"approved": pin_json(&p, None)})),
    }
}

/// Approves a tool's pending definition change, or releases a tool held
/// for poisoning (that exact definition): in force at once, audited as
/// `by` with the operator's `reason` (if given) and the approved hash,
/// then stored. `None` when nothing was pending.
pub(crate) async fn approve(
    gw: &Gateway,
    server: &str,
    tool: &str,
    by: &str,
    reason: Option<&str>,
) -> Option<(crate::pins::Pin, Result<(), StoreError>)> {
    // A pending change, else a definition held for poisoning findings.
    let (p, stored) = gw.pep.pins.approve(server, tool, by).or_else(|| {
        gw.defs
            .held(server, tool)
            .then(|| gw.pep.pins.acknowledge(server, tool, by))
            .flatten()
    })?;
    gw.defs.release(server, tool);
    let why = match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => format!("{r} (definition {})", p.hash),
        None => p.hash.clone(),
    };
    gw.pep.monitor.containment(
        "pin-approve",
        &format!("tool:{server}/{tool}"),
        Some(&why),
        by,
    );
    Some((p, stored.wait().await))
}

fn bad(why: impl Into<String>) -> Response {
    reply(StatusCode::BAD_REQUEST, json!({"error": why.into()}))
}

/// The answer after an action that is in force: 200, or 500 naming the
/// store failure (in force until restart, not persisted).
fn stored(r: Result<(), StoreError>, body: Value) -> Response {
    match r {
        Ok(()) => reply(StatusCode::OK, body),
        // A shared store that is away: in force here at once, queued and
        // retried until stored, then other replicas follow.
        Err(StoreError::Queued(why)) => {
            tracing::warn!(error = %why, "containment action in force here, queued for the shared store");
            let mut body = body;
            if let Some(o) = body.as_object_mut() {
                o.insert("queued".into(), Value::from(why));
            }
            reply(StatusCode::ACCEPTED, body)
        }
        Err(e) => {
            tracing::error!(error = %e, "containment action in force but not stored");
            let mut body = body;
            if let Some(o) = body.as_object_mut() {
                o.insert(
                    "error".into(),
                    Value::from(format!("in force until restart, but not stored: {e}")),
                );
            }
            reply(StatusCode::INTERNAL_SERVER_ERROR, body)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddQuarantine {
    kind: String,
    value: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuarantine {
    kind: String,
    value: String,
    #[serde(default)]
    reason: Option<String>,
}

#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, on a cold path"
)]
fn target(kind: &str, value: &str) -> Result<Target, Response> {
    let Some(k) = TargetKind::parse(kind) else {
        return Err(bad(format!(
            "kind {kind:?}: use identity, agent, user, device or session"
        )));
    };
    if value.trim().is_empty() {
        return Err(bad("value must not be empty"));
    }
    Ok(Target::new(k, value.trim()))
}

/// Which store this replica uses and whether it is current (a shared
/// store's outage, writes still queued, the last error).
async fn store_status(State(st): State<Admin>) -> Response {
    let store = st.gw.pep.contain.state.store();
    reply(
        StatusCode::OK,
        json!({
            "store": store.describe(),
            "shared": store.shared(),
            "status": store.status(),
        }),
    )
}

async fn list_quarantines(State(st): State<Admin>) -> Response {
    let q = st.gw.pep.contain.state.quarantines.list(now_unix());
    reply(StatusCode::OK, json!({"quarantines": q}))
}

async fn add_quarantine(
    State(st): State<Admin>,
    Extension(who): Extension<AdminIdentity>,
    body: axum::body::Bytes,
) -> Response {
    let req: AddQuarantine = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let t = match target(&req.kind, &req.value) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mode = match req.mode.as_deref().map(Mode::parse) {
        None => Mode::DenyAll,
        Some(Some(m)) => m,
        Some(None) => return bad("mode: use deny-all or read-only"),
    };
    let (q, r, affected) = quarantine(
        &st.gw,
        t,
        mode,
        req.reason.unwrap_or_else(|| "no reason given".into()),
        &format!("admin:{}", who.0),
        req.ttl_secs,
    )
    .await;
    stored(r, json!({"quarantine": q, "sessions_affected": affected}))
}

/// Quarantines `t`: in force at once, audited as `by`, then stored.
/// Returns the quarantine, whether it was stored, and how many open
/// sessions it (or anything else) restricts now.
pub(crate) async fn quarantine(
    gw: &Gateway,
    t: Target,
    mode: Mode,
    reason: String,
    by: &str,
    ttl_secs: Option<u64>,
) -> (Quarantine, Result<(), StoreError>, usize) {
    let now = now_unix();
    let q = Quarantine {
        target: t.clone(),
        mode,
        reason,
        by: by.to_owned(),
        created_at: now,
        expires_at: ttl_secs.map(|s| now + s),
    };
    gw.pep.monitor.containment(
        match mode {
            Mode::DenyAll => "quarantine-deny-all",
            Mode::ReadOnly => "quarantine-read-only",
        },
        &t.to_string(),
        Some(&q.reason),
        &q.by,
    );
    tracing::warn!(target = %t, mode = mode.as_str(), by = %q.by, reason = %q.reason, "quarantine");
    let r = gw.pep.contain.state.quarantine(q.clone()).await;
    let affected = gw
        .sessions
        .all()
        .iter()
        .filter(|c| gw.pep.contain.verdict(c).mode().is_some())
        .count();
    (q, r, affected)
}

async fn remove_quarantine(
    State(st): State<Admin>,
    Extension(who): Extension<AdminIdentity>,
    body: axum::body::Bytes,
) -> Response {
    let req: RemoveQuarantine = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let t = match target(&req.kind, &req.value) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match release(
        &st.gw,
        &t,
        req.reason.as_deref(),
        &format!("admin:{}", who.0),
    )
    .await
    {
        Ok(q) => reply(StatusCode::OK, json!({"removed": q.is_some()})),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": format!("released until restart, but not stored: {e}")}),
        ),
    }
}

/// Lifts the quarantine on `t` (audited as `by` when there was one).
pub(crate) async fn release(
    gw: &Gateway,
    t: &Target,
    reason: Option<&str>,
    by: &str,
) -> Result<Option<Quarantine>, StoreError> {
    let q = gw.pep.contain.state.release(t).await?;
    if q.is_some() {
        gw.pep
            .monitor
            .containment("quarantine-release", &t.to_string(), reason, by);
    }
    Ok(q)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetKill {
    mode: String,
    #[serde(default)]
    reason: Option<String>,
}

fn kill_json(k: Option<KillSwitch>) -> Value {
    match k {
        None => json!({"mode": "off"}),
        Some(k) => {
            json!({"mode": k.mode.as_str(), "reason": k.reason, "by": k.by, "since": k.since})
        }
    }
}

async fn get_killswitch(State(st): State<Admin>) -> Response {
    reply(
        StatusCode::OK,
        kill_json(st.gw.pep.contain.state.kill_switch()),
    )
}

async fn set_killswitch(
    State(st): State<Admin>,
    Extension(who): Extension<AdminIdentity>,
    body: axum::body::Bytes,
) -> Response {
    let req: SetKill = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mode = match req.mode.as_str() {
        "off" => None,
        m => match Mode::parse(m) {
            Some(mode) => Some(mode),
            None => return bad("mode: use deny-all, read-only or off"),
        },
    };
    let reason = req.reason.unwrap_or_else(|| "no reason given".into());
    let (k, r) = killswitch(&st.gw, mode, reason, &format!("admin:{}", who.0)).await;
    stored(r, kill_json(k))
}

/// Puts everyone under `mode` (`None`: lifts the kill switch): in force at
/// once, audited as `by`, then stored.
pub(crate) async fn killswitch(
    gw: &Gateway,
    mode: Option<Mode>,
    reason: String,
    by: &str,
) -> (Option<KillSwitch>, Result<(), StoreError>) {
    let k = mode.map(|mode| KillSwitch {
        mode,
        reason: reason.clone(),
        by: by.to_owned(),
        since: now_unix(),
    });
    let action = match mode {
        None => "killswitch-off",
        Some(Mode::DenyAll) => "killswitch-deny-all",
        Some(Mode::ReadOnly) => "killswitch-read-only",
    };
    tracing::warn!(action, by = %by, reason = %reason, "kill switch");
    gw.pep
        .monitor
        .containment(action, "everyone", Some(&reason), by);
    let r = gw.pep.contain.state.set_kill_switch(k.clone()).await;
    (k, r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

async fn list_revocations(State(st): State<Admin>) -> Response {
    reply(
        StatusCode::OK,
        json!({"revocations": st.gw.pep.contain.state.revocations.list()}),
    )
}

async fn revoke(
    State(st): State<Admin>,
    Extension(who): Extension<AdminIdentity>,
    body: axum::body::Bytes,
) -> Response {
    let req: Revoke = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let by = format!("admin:{}", who.0);
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| "no reason given".into());
    let given = [&req.fingerprint, &req.serial, &req.jti, &req.session];
    if given.iter().filter(|g| g.is_some()).count() != 1 {
        return bad("give exactly one of fingerprint, serial, jti, session");
    }
    if let Some(id) = &req.session {
        let ended = match st.gw.sessions.remove(id) {
            Some(c) => {
                st.gw.pep.monitor.containment(
                    "revoke-session",
                    &format!("session:{id}"),
                    Some(&reason),
                    &by,
                );
                crate::gateway::close_streams(&c);
                st.gw.end_session(&c, "revoked by admin").await;
                1
            }
            None => 0,
        };
        return reply(
            StatusCode::OK,
            json!({"revoked": format!("session:{id}"), "sessions_ended": ended}),
        );
    }
    let (kind, value) = match (&req.fingerprint, &req.serial, &req.jti) {
        (Some(f), _, _) => (RevokedKind::Certificate, f.trim().to_owned()),
        (_, Some(s), _) => (RevokedKind::Certificate, s.trim().to_owned()),
        (_, _, Some(j)) => (RevokedKind::Token, j.trim().to_owned()),
        _ => return bad("give exactly one of fingerprint, serial, jti, session"),
    };
    if value.is_empty() {
        return bad("the revoked value must not be empty");
    }
    let now = now_unix();
    let r = Revocation {
        kind,
        value: value.clone(),
        reason: reason.clone(),
        by: by.clone(),
        created_at: now,
        expires_at: req.ttl_secs.map(|s| now + s),
    };
    let action = match kind {
        RevokedKind::Certificate => {
            st.deny.add(&value);
            "revoke-certificate"
        }
        RevokedKind::Token => "revoke-token",
    };
    st.gw
        .pep
        .monitor
        .containment(action, &r.key(), Some(&reason), &by);
    // The sessions created with that certificate or token, found before the
    // revocation is announced (the containment watcher ends token sessions
    // too; whichever gets there first ends each one).
    let hits: Vec<_> = st
        .gw
        .sessions
        .all()
        .into_iter()
        .filter(|c| match kind {
            RevokedKind::Certificate => c
                .principal
                .cert
                .as_ref()
                .is_some_and(|p| st.deny.denies(&p.fingerprint, &p.serial)),
            RevokedKind::Token => {
                c.principal.user.as_ref().and_then(|u| u.jti.as_deref()) == Some(value.as_str())
            }
        })
        .collect();
    let stored_r = st.gw.pep.contain.state.revoke(r).await;
    let ended = hits.len();
    for c in hits {
        if let Some(c) = st.gw.sessions.remove(&c.id) {
            crate::gateway::close_streams(&c);
            st.gw.end_session(&c, "credential revoked by admin").await;
        }
    }
    tracing::warn!(kind = kind.as_str(), value = %value, reason = %reason, sessions_ended = ended, "revoked by admin");
    stored(
        stored_r,
        json!({"revoked": format!("{}:{value}", kind.as_str()), "sessions_ended": ended}),
    )
}

async fn list_breakers(State(st): State<Admin>) -> Response {
    let now = std::time::Instant::now();
    let list: Vec<Value> = st
        .gw
        .breakers()
        .into_iter()
        .map(|(name, b)| {
            let mut v = serde_json::to_value(b.snapshot(now)).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("upstream".into(), Value::from(name));
            }
            v
        })
        .collect();
    reply(StatusCode::OK, json!({"breakers": list}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBreaker {
    upstream: String,
}

async fn reset_breaker(
    State(st): State<Admin>,
    Extension(who): Extension<AdminIdentity>,
    body: axum::body::Bytes,
) -> Response {
    let req: ResetBreaker = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some((_, b)) = st
        .gw
        .breakers()
        .into_iter()
        .find(|(n, _)| *n == req.upstream)
    else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no upstream named {:?}", req.upstream)}),
        );
    };
    let changed = b.reset().is_some();
    st.gw.pep.monitor.containment(
        "breaker-reset",
        &format!("upstream:{}", req.upstream),
        None,
        &format!("admin:{}", who.0),
    );
    reply(StatusCode::OK, json!({"reset": changed}))
}
