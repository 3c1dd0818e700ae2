//! The console's actions (form POSTs): quarantine, release, kill a
//! session, approve a pin, the kill switch. Each is checked (same origin,
//! CSRF token, a reason) before anything happens, then goes through the
//! same containment code as the admin API, audited as
//! `console:<who>`, and answers 303 back to its page.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use http::{header, HeaderMap, StatusCode};
use portcullis_contain::{Mode, StoreError, Target, TargetKind};
use serde::Deserialize;

use super::auth::{same_origin, Who};
use super::pages::Frame;
use super::{refused, render, see_other, Console};
use crate::admin_contain;

/// A form as posted; every field optional so a missing one is refused
/// with a reason, not a parse error.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Form {
    csrf: String,
    reason: String,
    identity: String,
    mode: String,
    session: String,
    server: String,
    tool: String,
    state: String,
    confirm: String,
    read_only: String,
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct Message<'a> {
    frame: Frame,
    title: &'a str,
    message: &'a str,
    back: &'a str,
}

fn message(
    c: &Console,
    who: &Who,
    status: StatusCode,
    title: &str,
    text: &str,
    back: &'static str,
) -> Response {
    let mut r = render(&Message {
        frame: Frame::new(c, who, ""),
        title,
        message: text,
        back,
    });
    *r.status_mut() = status;
    r
}

/// Parses and checks a form: `Err` is the refusal, and nothing happened.
#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, on a cold path"
)]
fn checked(
    c: &Console,
    who: &Who,
    headers: &HeaderMap,
    body: &[u8],
    back: &'static str,
) -> Result<Form, Response> {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let refuse = |why: &str| {
        tracing::warn!(reason = %why, who = %who.label(), "console: action refused");
        c.gw()
            .pep
            .monitor
            .auth_failure(&format!("console action: {why}"), "csrf", "", 403);
        refused(StatusCode::FORBIDDEN, "Refused", why)
    };
    if !same_origin(origin, host) {
        return Err(refuse("the request came from another origin"));
    }
    let Ok(f) = serde_urlencoded::from_bytes::<Form>(body) else {
        return Err(refuse("the form could not be read"));
    };
    if !c.auth.csrf_ok(who, &f.csrf) {
        return Err(refuse(
            "the form's CSRF token is missing or not valid (reload the page)",
        ));
    }
    if f.reason.trim().is_empty() {
        return Err(message(
            c,
            who,
            StatusCode::BAD_REQUEST,
            "A reason is required",
            "Every action needs a reason: nothing was done.",
            back,
        ));
    }
    Ok(f)
}

/// One action's context: who asked, from which page, and how to answer.
struct Act<'a> {
    c: &'a Console,
    who: &'a Who,
    back: &'static str,
}

impl<'a> Act<'a> {
    /// Checks the request ([`checked`]) and keeps what answering needs.
    #[expect(
        clippy::result_large_err,
        reason = "the error is the HTTP answer itself, on a cold path"
    )]
    fn start(
        c: &'a Console,
        who: &'a Who,
        headers: &HeaderMap,
        body: &[u8],
        back: &'static str,
    ) -> Result<(Act<'a>, Form), Response> {
        let f = checked(c, who, headers, body, back)?;
        Ok((Act { c, who, back }, f))
    }

    /// A page saying why nothing (or not all) was done.
    fn say(&self, status: StatusCode, title: &str, text: &str) -> Response {
        message(self.c, self.who, status, title, text, self.back)
    }

    /// Back to the page once the action is in force ([`done`]).
    fn done(&self, r: Result<(), StoreError>) -> Response {
        done(self.c, self.who, r, self.back)
    }
}

/// 303 back when stored; a page naming the store failure otherwise (the
/// action is in force here either way).
fn done(c: &Console, who: &Who, r: Result<(), StoreError>, back: &'static str) -> Response {
    match r {
        Ok(()) => see_other(back),
        Err(StoreError::Queued(why)) => {
            tracing::warn!(error = %why, "console action in force here, queued for the shared store");
            see_other(back)
        }
        Err(e) => {
            tracing::error!(error = %e, "console action in force but not stored");
            message(
                c,
                who,
                StatusCode::INTERNAL_SERVER_ERROR,
                "In force, not stored",
                &format!("The action is in force until restart, but was not stored: {e}"),
                back,
            )
        }
    }
}

/// `POST /console/actions/quarantine` (identity, mode, reason, csrf).
pub(crate) async fn quarantine(
    State(c): State<Console>,
    Extension(who): Extension<Who>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    const BACK: &str = "/console/identities";
    let (act, f) = match Act::start(&c, &who, &headers, &body, BACK) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let identity = f.identity.trim();
    let mode = match f.mode.as_str() {
        "" => Some(Mode::DenyAll),
        m => Mode::parse(m),
    };
    let (false, Some(mode)) = (identity.is_empty(), mode) else {
        return act.say(
            StatusCode::BAD_REQUEST,
            "Not done",
            "Name the identity, and a mode of deny-all or read-only.",
        );
    };
    let t = Target::new(TargetKind::Identity, identity);
    let (_, r, _) = admin_contain::quarantine(
        c.gw(),
        t,
        mode,
        f.reason.trim().to_owned(),
        &who.actor(),
        None,
    )
    .await;
    act.done(r)
}

/// `POST /console/actions/release` (identity, reason, csrf).
pub(crate) async fn release(
    State(c): State<Console>,
    Extension(who): Extension<Who>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    const BACK: &str = "/console/identities";
    let (act, f) = match Act::start(&c, &who, &headers, &body, BACK) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let t = Target::new(TargetKind::Identity, f.identity.trim());
    match admin_contain::release(c.gw(), &t, Some(f.reason.trim()), &who.actor()).await {
        Ok(Some(_)) => see_other(BACK),
        Ok(None) => act.say(StatusCode::NOT_FOUND, "Nothing to release", "That identity has no quarantine of its own (it may be quarantined by agent, user or device: use the CLI)."),
        Err(e) => act.done(Err(e)),
    }
}

/// `POST /console/actions/kill-session` (session, reason, csrf).
pub(crate) async fn kill_session(
    State(c): State<Console>,
    Extension(who): Extension<Who>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    const BACK: &str = "/console/identities";
    let (act, f) = match Act::start(&c, &who, &headers, &body, BACK) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let id = f.session.trim();
    if id.is_empty() {
        return act.say(StatusCode::BAD_REQUEST, "Not done", "Name the session.");
    }
    let ended: Vec<_> = c.gw().sessions.remove(id).into_iter().collect();
    let n = crate::admin::end_sessions(
        c.gw(),
        None,
        Some(id),
        &format!("session:{id}"),
        ended,
        Some(f.reason.trim()),
        &who.actor(),
    )
    .await;
    if n == 0 {
        return act.say(
            StatusCode::NOT_FOUND,
            "No such session",
            "That session has already ended.",
        );
    }
    see_other(BACK)
}

/// `POST /console/actions/approve-pin` (server, tool, reason, csrf).
pub(crate) async fn approve_pin(
    State(c): State<Console>,
    Extension(who): Extension<Who>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    const BACK: &str = "/console/tools";
    let (act, f) = match Act::start(&c, &who, &headers, &body, BACK) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let by = who.actor();
    match admin_contain::approve(
        c.gw(),
        f.server.trim(),
        f.tool.trim(),
        &by,
        Some(f.reason.trim()),
    )
    .await
    {
        None => act.say(
            StatusCode::NOT_FOUND,
            "Nothing to approve",
            "That tool has no pending change and is not held.",
        ),
        Some((p, r)) => {
            tracing::warn!(server = %p.server, tool = %p.tool, by = %by, reason = %f.reason.trim(), "pin approved from the console");
            act.done(r)
        }
    }
}

/// `POST /console/actions/killswitch` (state=on|off, reason, confirm=KILL
/// for on, optional read_only=1, csrf).
pub(crate) async fn killswitch(
    State(c): State<Console>,
    Extension(who): Extension<Who>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    const BACK: &str = "/console/health";
    let (act, f) = match Act::start(&c, &who, &headers, &body, BACK) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mode = match f.state.as_str() {
        "off" => None,
        "on" if f.confirm == "KILL" => Some(if f.read_only.is_empty() {
            Mode::DenyAll
        } else {
            Mode::ReadOnly
        }),
        "on" => {
            return act.say(
                StatusCode::BAD_REQUEST,
                "Not confirmed",
                "Type KILL to turn the kill switch on: nothing was done.",
            )
        }
        _ => {
            return act.say(
                StatusCode::BAD_REQUEST,
                "Not done",
                "state must be on or off.",
            )
        }
    };
    let (_, r) =
        admin_contain::killswitch(c.gw(), mode, f.reason.trim().to_owned(), &who.actor()).await;
    act.done(r)
}
