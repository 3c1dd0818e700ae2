//! Sessions across replicas: when the state store is shared (Redis), a
//! handshake-era session created on one replica is bound in the store, so
//! any replica can serve its next request without session affinity. The
//! binding carries what the binding check and policy need — the owner's
//! identity key, certificate fingerprint and route, the negotiated
//! revision, the client's capabilities and info, the creation time (the
//! absolute lifetime holds cluster-wide) and the labels the session has
//! read (its taint: hopping replicas must not launder it).
//!
//! Taint is also kept one entry per (session or identity, label) in
//! [`NS_TAINT`]: replicas only ever add those, so two replicas recording
//! labels at once cannot overwrite each other's. A whole binding written by
//! one replica can lack a label another wrote a moment before; its
//! `labels_read` is a copy, and the entries are what every replica reads.
//!
//! What stays with a replica: open SSE streams and their resumption
//! buffers, server→client requests in flight, and upstream sessions — a
//! replica that picks a session up opens its own upstream sessions for it
//! with the client's stored capabilities.
//!
//! Lifetimes: the binding expires after the idle timeout and is refreshed
//! (at most every quarter of it) by whichever replica serves the session;
//! a replica's own idle sweep only drops its local copy. Ending a session
//! (client `DELETE`, admin kill, revocation, absolute lifetime) removes
//! the binding, and every replica holding a copy ends it on the change.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_contain::store::{Change, StoreError};
use portcullis_wire::Revision;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gateway::Gateway;
use crate::session::Client;

/// Store namespace of session bindings.
pub const NS_SESSION: &str = "session";
/// Store namespace of 2026-07-28 clients' facts, per identity (they have
/// no session; their taint is the identity's).
pub const NS_IDENTITY_FACTS: &str = "identity-facts";

/// Store namespace of labels read: one entry per (session or identity,
/// label), added and never rewritten with less.
pub const NS_TAINT: &str = "taint";

/// One label read by a session or a 2026-07-28 identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TaintEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<String>,
    label: String,
}

/// Whose taint: a handshake-era session, or a 2026-07-28 identity.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Session(&'a str),
    Identity(&'a str),
}

impl Subject<'_> {
    fn of(c: &Client) -> Subject<'_> {
        if c.id.is_empty() {
            Subject::Identity(&c.owner)
        } else {
            Subject::Session(&c.id)
        }
    }

    /// The entry's key: unambiguous for any identity key and label.
    fn key(self, label: &str) -> String {
        let (kind, who) = match self {
            Subject::Session(s) => ("s", s),
            Subject::Identity(i) => ("i", i),
        };
        serde_json::to_string(&[kind, who, label]).unwrap_or_default()
    }

    fn entry(self, label: &str) -> TaintEntry {
        let (session, identity) = match self {
            Subject::Session(s) => (Some(s.to_owned()), None),
            Subject::Identity(i) => (None, Some(i.to_owned())),
        };
        TaintEntry {
            session,
            identity,
            label: label.to_owned(),
        }
    }
}

/// What the store keeps of an identity's facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IdentityFacts {
    labels_read: Vec<String>,
}

/// A session as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    /// `Principal::key()` of the creator.
    pub owner: String,
    /// The creating client certificate's fingerprint, if any.
    pub fingerprint: Option<String>,
    /// The listener and path it was created on.
    pub route: String,
    /// The negotiated protocol revision.
    pub revision: String,
    /// The client's declared capabilities.
    pub caps: Value,
    /// The client's `clientInfo`.
    pub info: Value,
    /// When it was created (Unix seconds).
    pub created: u64,
    /// Labels of items read so far (taint).
    #[serde(default)]
    pub labels_read: Vec<String>,
}

impl Binding {
    fn of(c: &Client) -> Binding {
        let age = c.created.elapsed().as_secs();
        Binding {
            owner: c.owner.clone(),
            fingerprint: c.fingerprint.clone(),
            route: c.route.clone(),
            revision: c.revision.as_str().to_owned(),
            caps: c.caps.clone(),
            info: c.info.clone(),
            created: portcullis_contain::now_unix().saturating_sub(age),
            labels_read: c.facts().labels(),
        }
    }
}

impl Gateway {
    /// Whether sessions must be bound in the store (it is shared).
    pub fn sessions_shared(&self) -> bool {
        self.pep.contain.state.store().shared()
    }

    fn binding_ttl(&self) -> u64 {
        self.cfg.limits.session_idle_timeout_secs.max(1)
    }

    /// Binds a new session in the shared store (awaited: another replica
    /// may get its next request at once). A no-op for a local store.
    pub async fn bind_session(&self, c: &Client) -> Result<(), StoreError> {
        if !self.sessions_shared() {
            return Ok(());
        }
        self.put_binding(c).await
    }

    async fn put_binding(&self, c: &Client) -> Result<(), StoreError> {
        let now = portcullis_contain::now_unix();
        let v =
            serde_json::to_value(Binding::of(c)).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.pep
            .contain
            .state
            .store()
            .put(NS_SESSION, &c.id, v, Some(now + self.binding_ttl()))
            .await?;
        c.bound_at.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// Picks up a session another replica created: its binding, checked
    /// against the caller exactly as a local session is (by the caller).
    /// `None` when the store has no such session (or cannot say: unknown
    /// sessions fail closed as 404).
    pub async fn adopt_session(
        &self,
        id: &str,
        principal: &portcullis_identity::principal::Principal,
    ) -> Option<Arc<Client>> {
        if !self.sessions_shared() || id.is_empty() || id.len() > 128 {
            return None;
        }
        let entry = match self.pep.contain.state.store().get(NS_SESSION, id).await {
            Ok(e) => e?,
            Err(e) => {
                tracing::warn!(error = %e, "session binding unreadable: treated as unknown");
                return None;
            }
        };
        let b: Binding = match serde_json::from_value(entry.value) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(session = %id, error = %e, "session binding unreadable: treated as unknown");
                return None;
            }
        };
        let revision = Revision::parse(&b.revision).filter(|r| r.is_handshake())?;
        let age = portcullis_contain::now_unix().saturating_sub(b.created);
        let created = Instant::now()
            .checked_sub(Duration::from_secs(age))
            .unwrap_or_else(Instant::now);
        let c = Client::restored(
            id.to_owned(),
            revision,
            b.caps,
            b.info,
            self.upstream_count(),
            principal.clone(),
            b.route,
            created,
            b.owner,
            b.fingerprint,
        );
        c.facts().read(&b.labels_read);
        self.read_taint(Subject::Session(id), &c.facts(), true)
            .await;
        c.bound_at
            .store(portcullis_contain::now_unix(), Ordering::Relaxed);
        if !self
            .sessions
            .insert(c.clone(), self.cfg.limits.max_sessions)
        {
            return None;
        }
        // A label recorded elsewhere between that read and the insert came
        // by the feed while the session was not held here: read again.
        self.read_taint(Subject::Session(id), &c.facts(), true)
            .await;
        tracing::info!(session = %id, "session picked up from the shared store");
        Some(c)
    }

    /// Keeps a served session's binding alive (at most every quarter of the
    /// idle timeout; in the background).
    pub fn refresh_binding(self: &Arc<Self>, c: &Arc<Client>) {
        if !self.sessions_shared() {
            return;
        }
        let now = portcullis_contain::now_unix();
        let last = c.bound_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.binding_ttl() / 4 {
            return;
        }
        c.bound_at.store(now, Ordering::Relaxed);
        self.spawn_put_binding(c);
    }

    /// Stores the binding again now (new taint labels), in the background.
    pub fn spawn_put_binding(self: &Arc<Self>, c: &Arc<Client>) {
        let (me, c) = (self.clone(), c.clone());
        tokio::spawn(async move {
            if let Err(e) = me.put_binding(&c).await {
                tracing::warn!(session = %c.id, error = %e, "session binding not refreshed");
            }
        });
    }

    /// Removes an ended session's binding, so every replica ends it.
    pub async fn forget_session(&self, id: &str) {
        if !self.sessions_shared() {
            return;
        }
        if let Err(e) = self.pep.contain.state.store().remove(NS_SESSION, id).await {
            tracing::warn!(session = %id, error = %e, "ended session's binding not removed (it expires)");
        }
    }

    /// Ends, cluster-wide, the bound sessions that no local copy covers:
    /// those of `owner`, or the one session `id` (an admin kill on any
    /// replica reaches sessions created on the others). Returns the ids
    /// whose bindings were removed; every replica holding one ends it on
    /// the change.
    pub async fn forget_bound(&self, owner: Option<&str>, id: Option<&str>) -> Vec<String> {
        if !self.sessions_shared() {
            return Vec::new();
        }
        let store = self.pep.contain.state.store();
        let entries = match (owner, id) {
            (_, Some(id)) => match store.get(NS_SESSION, id).await {
                Ok(e) => e.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "session bindings unreadable");
                    Vec::new()
                }
            },
            (Some(_), None) => store.list(NS_SESSION).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "session bindings unreadable");
                Vec::new()
            }),
            (None, None) => Vec::new(),
        };
        let mut gone = Vec::new();
        for e in entries {
            let Ok(b) = serde_json::from_value::<Binding>(e.value) else {
                continue;
            };
            if owner.is_some_and(|o| o != b.owner) {
                continue;
            }
            if matches!(store.remove(NS_SESSION, &e.key).await, Ok(true)) {
                gone.push(e.key);
            }
        }
        gone
    }

    /// An identity's facts for a 2026-07-28 request; the first time this
    /// replica sees the identity, what other replicas recorded is read
    /// from a shared store. A store that cannot answer fails closed: the
    /// identity counts as having read every taint label here (egress
    /// refused) until these facts expire.
    pub async fn shared_identity_facts(&self, key: &str) -> Arc<crate::session::Facts> {
        let (f, fresh) = self.identity_facts_entry(key);
        if fresh && self.sessions_shared() {
            match self
                .pep
                .contain
                .state
                .store()
                .get(NS_IDENTITY_FACTS, key)
                .await
            {
                Ok(Some(e)) => {
                    if let Ok(x) = serde_json::from_value::<IdentityFacts>(e.value) {
                        f.read(&x.labels_read);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(identity = %key, error = %e, "identity facts unreadable: treated as tainted");
                    f.read(self.pep.taint_labels());
                }
            }
            self.read_taint(Subject::Identity(key), &f, true).await;
        }
        f
    }

    /// Stores what a session (or a 2026-07-28 identity) has read, awaited:
    /// the taint is in the shared store before the read's data can leave,
    /// so no replica can be asked to send it out unaware. A store that is
    /// away queues it (in force here).
    pub async fn store_taint(&self, client: &Client) {
        if !self.sessions_shared() {
            return;
        }
        let r = if client.id.is_empty() {
            let ttl = self.cfg.auth.session_lifetime_secs.max(1);
            match serde_json::to_value(IdentityFacts {
                labels_read: client.facts().labels(),
            }) {
                Ok(v) => {
                    self.pep
                        .contain
                        .state
                        .store()
                        .put(
                            NS_IDENTITY_FACTS,
                            &client.owner,
                            v,
                            Some(portcullis_contain::now_unix() + ttl),
                        )
                        .await
                }
                Err(e) => Err(StoreError::Encode(e.to_string())),
            }
        } else {
            self.put_binding(client).await
        };
        let r = r.and(self.put_taint(client).await);
        if let Err(e) = r {
            tracing::warn!(identity = %client.owner, session = %client.id, error = %e, "taint not stored yet");
        }
    }

    /// Adds one [`NS_TAINT`] entry per label the client has read (awaited).
    /// They expire with the absolute session lifetime, which no session or
    /// identity facts outlive.
    async fn put_taint(&self, client: &Client) -> Result<(), StoreError> {
        let subject = Subject::of(client);
        let expires = portcullis_contain::now_unix() + self.cfg.auth.session_lifetime_secs.max(1);
        let mut entries = Vec::new();
        for l in client.facts().labels() {
            let value = serde_json::to_value(subject.entry(&l))
                .map_err(|e| StoreError::Encode(e.to_string()))?;
            entries.push(portcullis_contain::store::Entry {
                key: subject.key(&l),
                value,
                expires_at: Some(expires),
            });
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.pep
            .contain
            .state
            .store()
            .put_many(NS_TAINT, entries)
            .await
    }

    /// Every label a session or identity can have read: the segments'
    /// labels, the taint labels and the injection label.
    fn label_universe(&self) -> Vec<String> {
        let mut v = self.pep.segments.all_labels();
        v.extend(self.pep.taint_labels().iter().cloned());
        v.push(crate::inspection::INJECTED_LABEL.to_owned());
        v.sort();
        v.dedup();
        v
    }

    /// Reads `subject`'s [`NS_TAINT`] entries from the store into `facts`
    /// (one round trip on Redis). When the store cannot answer: with
    /// `fail_closed` every taint label counts as read (nothing is known of
    /// this subject here yet), otherwise the taint known here stands.
    async fn read_taint(
        &self,
        subject: Subject<'_>,
        facts: &crate::session::Facts,
        fail_closed: bool,
    ) {
        let labels = self.label_universe();
        let keys: Vec<String> = labels.iter().map(|l| subject.key(l)).collect();
        match self
            .pep
            .contain
            .state
            .store()
            .get_many(NS_TAINT, &keys)
            .await
        {
            Ok(found) => {
                let read: Vec<String> = labels
                    .into_iter()
                    .zip(found)
                    .filter_map(|(l, e)| e.map(|_| l))
                    .collect();
                facts.read(&read);
            }
            Err(e) if fail_closed => {
                tracing::warn!(error = %e, "labels read elsewhere unreadable: treated as tainted");
                facts.read(self.pep.taint_labels());
            }
            Err(e) => {
                tracing::debug!(error = %e, "labels read elsewhere unreadable: the known taint stands");
            }
        }
    }

    /// With `[store] taint_reads = "strict"`, before a decision taint can
    /// change (a tool call): the labels other replicas recorded for this
    /// session (or 2026-07-28 identity), read from the shared store — one
    /// round trip for every label entry — and added here, so a label read
    /// through another replica a moment ago is never missed. A store that
    /// cannot answer leaves the last known taint (and `on_unreachable`).
    pub async fn refresh_taint(&self, client: &Client) {
        if !self.sessions_shared() {
            return;
        }
        self.read_taint(Subject::of(client), &client.facts(), false)
            .await;
    }

    /// Applies a binding change from the store: a session ended elsewhere
    /// ends here; labels another replica recorded taint the local copy.
    async fn on_binding_change(&self, c: &Change) {
        if c.ns == NS_TAINT {
            let Some(t) = c
                .entry
                .as_ref()
                .and_then(|e| serde_json::from_value::<TaintEntry>(e.value.clone()).ok())
            else {
                return;
            };
            let facts = match (&t.session, &t.identity) {
                (Some(s), _) => self.sessions.peek(s).map(|c| c.facts()),
                (None, Some(i)) => self.identity_facts_held(i),
                (None, None) => None,
            };
            if let Some(f) = facts {
                f.read(std::slice::from_ref(&t.label));
            }
            return;
        }
        if c.ns == NS_IDENTITY_FACTS {
            if let (Some(e), Some(f)) = (&c.entry, self.identity_facts_held(&c.key)) {
                if let Ok(x) = serde_json::from_value::<IdentityFacts>(e.value.clone()) {
                    f.read(&x.labels_read);
                }
            }
            return;
        }
        if c.ns != NS_SESSION {
            return;
        }
        match &c.entry {
            None => {
                if let Some(local) = self.sessions.remove(&c.key) {
                    crate::gateway::close_streams(&local);
                    self.end_session_local(&local, "ended on another replica")
                        .await;
                }
            }
            Some(e) => {
                let Some(local) = self.sessions.peek(&c.key) else {
                    return;
                };
                if let Ok(b) = serde_json::from_value::<Binding>(e.value.clone()) {
                    local.facts().read(&b.labels_read);
                }
            }
        }
    }

    /// Follows session bindings on the shared store while the gateway lives.
    pub fn follow_bindings(self: &Arc<Self>) {
        if !self.sessions_shared() {
            return;
        }
        let me = Arc::downgrade(self);
        let mut rx = self.pep.contain.state.store().changes();
        tokio::spawn(async move {
            loop {
                let r = rx.recv().await;
                let Some(gw) = me.upgrade() else { return };
                match r {
                    Ok(c) => gw.on_binding_change(&c).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "session binding changes missed");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}
