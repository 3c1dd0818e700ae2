//! The containment stage: before policy, every request meets the kill
//! switch, the caller's quarantines, its concurrency cap and its rate
//! limits; after policy, denials and findings feed the rules that
//! quarantine automatically. The state itself lives in
//! `portcullis-contain`; this module maps a session onto it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_contain::breaker::BreakerConfig;
use portcullis_contain::concurrency::{InFlight, Slot};
use portcullis_contain::rate::{lease_for, lease_size, Leases, Limiter, Rate};
use portcullis_contain::rules::{AutoRule, AutoRules, Severity, Trigger};
use portcullis_contain::{Containment, Mode, Quarantine, Subject, Target, TargetKind, Verdict};
use portcullis_policy::{Action, ResourceFacts, ResourceKind};
use serde::Deserialize;

use crate::session::Client;

/// `[containment]`: limits and automatic responses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainCfg {
    /// Labels a tool (or resource, prompt) needs to stay usable in
    /// read-only mode, besides a `readOnlyHint` annotation for tools.
    /// Empty: the annotation alone suffices.
    #[serde(default = "default_safe")]
    pub read_only_labels: Vec<String>,
    /// Requests one identity may have in flight at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_per_identity: usize,
    /// Rate limits (GCRA).
    #[serde(default)]
    pub rate: RateCfg,
    /// Upstream circuit breakers.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Rules that quarantine automatically.
    #[serde(default)]
    pub auto: Vec<AutoRule>,
}

fn default_safe() -> Vec<String> {
    vec!["safe".into()]
}
fn default_concurrency() -> usize {
    64
}

impl Default for ContainCfg {
    fn default() -> Self {
        ContainCfg {
            read_only_labels: default_safe(),
            max_concurrent_per_identity: default_concurrency(),
            rate: RateCfg::default(),
            breaker: BreakerConfig::default(),
            auto: Vec::new(),
        }
    }
}

/// `[containment.rate]`: every limit applies per calling identity.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateCfg {
    /// All of an identity's requests.
    #[serde(default)]
    pub identity: Option<Rate>,
    /// An identity's calls of one tool, by client-facing tool name.
    #[serde(default)]
    pub tools: BTreeMap<String, Rate>,
    /// An identity's requests into one segment, by segment name.
    #[serde(default)]
    pub segments: BTreeMap<String, Rate>,
}

/// `[store]`: where containment state, pins, baselines and (when shared)
/// session bindings persist, and what a shared store's outage does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreCfg {
    /// `file` (default: embedded journal under `path`), `memory`, or
    /// `redis` (shared by every replica; `[store.redis]` says where).
    #[serde(default)]
    pub kind: StoreKind,
    /// Folder of the file store (default: `<state_dir>/store`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `[store.redis]`: the shared Redis (kind `redis` only).
    #[serde(default)]
    pub redis: Option<portcullis_redis::RedisCfg>,
    /// While a shared store is unreachable: `last-known` (default) keeps
    /// enforcing the last known containment state and serves; `deny`
    /// refuses every request until the store is back.
    #[serde(default)]
    pub on_unreachable: OnUnreachable,
    /// While a shared store is unreachable, a rate limit: `local`
    /// (default) is enforced by this replica alone (per replica, so up to
    /// N times the global rate with N replicas); `deny` refuses the
    /// limited requests.
    #[serde(default)]
    pub rate_fallback: RateFallback,
    /// How a tool call learns a session's taint recorded by another
    /// replica: `cached` (default) from the change feed, like containment
    /// (milliseconds behind); `strict` reads it from the store before every
    /// tool call (one lookup each), so no window remains.
    #[serde(default)]
    pub taint_reads: TaintReads,
}

/// `[store] taint_reads`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaintReads {
    /// The local copy, kept current by the change feed.
    #[default]
    Cached,
    /// A lookup in the store before every tool call.
    Strict,
}

impl StoreCfg {
    /// Checks the kind against its table; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match (self.kind, &self.redis) {
            (StoreKind::Redis, None) => Err((
                "store.redis".into(),
                "kind = \"redis\" needs a [store.redis] table with at least url".into(),
            )),
            (StoreKind::Redis, Some(r)) => r
                .validate()
                .map_err(|e| ("store.redis".into(), e.to_string())),
            (_, Some(_)) => Err((
                "store.redis".into(),
                "only read with kind = \"redis\"".into(),
            )),
            (_, None) => Ok(()),
        }
    }
}

/// Which store implementation.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded, persistent journal.
    #[default]
    File,
    /// In memory: lost at exit.
    Memory,
    /// Redis, shared by every replica of a deployment.
    Redis,
}

/// `[store] on_unreachable`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnreachable {
    /// Serve, enforcing the last known state (and this replica's own
    /// actions, queued until stored).
    #[default]
    LastKnown,
    /// Refuse every request while reads are not current.
    Deny,
}

/// `[store] rate_fallback`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateFallback {
    /// This replica's own limiter.
    #[default]
    Local,
    /// Refuse what the shared limiter cannot check.
    Deny,
}

impl ContainCfg {
    /// Checks values a typo could make dangerous; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_concurrent_per_identity == 0 {
            return Err((
                "containment.max_concurrent_per_identity".into(),
                "must be positive".into(),
            ));
        }
        let rates = self
            .rate
            .identity
            .iter()
            .map(|r| ("containment.rate.identity".to_owned(), r))
            .chain(
                self.rate
                    .tools
                    .iter()
                    .map(|(k, r)| (format!("containment.rate.tools.{k}"), r)),
            )
            .chain(
                self.rate
                    .segments
                    .iter()
                    .map(|(k, r)| (format!("containment.rate.segments.{k}"), r)),
            );
        for (k, r) in rates {
            if r.per_minute == 0 {
                return Err((format!("{k}.per_minute"), "must be positive".into()));
            }
        }
        if self.breaker.failures == 0 || self.breaker.open_secs == 0 {
            return Err((
                "containment.breaker".into(),
                "failures and open_secs must be positive".into(),
            ));
        }
        for (i, r) in self.auto.iter().enumerate() {
            r.validate()
                .map_err(|e| (format!("containment.auto[{i}]"), e))?;
        }
        Ok(())
    }
}

/// Why containment stopped a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// Quarantined or kill switch: the client gets `QUARANTINED`.
    Restricted {
        /// Deny-all or read-only.
        mode: Mode,
        /// `killswitch` or the quarantine's target.
        source: String,
        /// For operators (audit), never for the caller.
        reason: String,
    },
    /// Over a rate limit: retry after this long.
    Rate {
        /// Which limit (`identity`, `tool:<name>`, `segment:<name>`, `class:<name>`).
        limit: String,
        /// Wait before retrying.
        wait: Duration,
    },
}

/// The containment stage shared by every request.
pub struct Guard {
    /// Quarantines, kill switch, revocations (persisted).
    pub state: Arc<Containment>,
    cfg: ContainCfg,
    on_unreachable: OnUnreachable,
    rate_fallback: RateFallback,
    rules: AutoRules,
    rates: Limiter,
    /// Cells taken ahead from a shared (global) limiter.
    leases: Leases,
    inflight: InFlight,
}

impl Guard {
    /// The stage over `state` with `cfg`.
    pub fn new(state: Arc<Containment>, cfg: ContainCfg) -> Guard {
        Guard {
            rules: AutoRules::new(cfg.auto.clone()),
            state,
            cfg,
            on_unreachable: OnUnreachable::default(),
            rate_fallback: RateFallback::default(),
            rates: Limiter::default(),
            leases: Leases::default(),
            inflight: InFlight::default(),
        }
    }

    /// The same stage with `[store]`'s outage rules.
    pub fn with_store_rules(mut self, store: &StoreCfg) -> Guard {
        self.on_unreachable = store.on_unreachable;
        self.rate_fallback = store.rate_fallback;
        self
    }

    /// The same rules over another state (the opened store's).
    pub fn over(&self, state: Arc<Containment>) -> Guard {
        Guard::new(state, self.cfg.clone()).with_store_rules(&StoreCfg {
            on_unreachable: self.on_unreachable,
            rate_fallback: self.rate_fallback,
            ..StoreCfg::default()
        })
    }

    /// Config of this stage.
    pub fn cfg(&self) -> &ContainCfg {
        &self.cfg
    }

    /// What containment says about this client now.
    pub fn verdict(&self, client: &Client) -> Verdict {
        if self.on_unreachable == OnUnreachable::Deny {
            let st = self.state.store().status();
            if !st.current {
                return Verdict::Restricted {
                    mode: Mode::DenyAll,
                    source: "store-unreachable".into(),
                    reason: format!(
                        "[store] on_unreachable = \"deny\": {}",
                        st.last_error
                            .as_deref()
                            .unwrap_or("the state store is not current")
                    ),
                };
            }
        }
        if self.state.is_clear() {
            return Verdict::Clear;
        }
        let ids = client.subject_ids();
        let s = Subject {
            identity: &client.owner,
            agent: ids.agent.as_deref(),
            user: ids.user.as_deref(),
            device: ids.device.as_deref(),
            session: (!client.id.is_empty()).then_some(client.id.as_str()),
        };
        self.state.verdict(&s, portcullis_contain::now_unix())
    }

    /// Whether a restricted caller may still do `action` on `res`:
    /// deny-all allows nothing; read-only allows listings and pings, tools
    /// annotated read-only (and not destructive) that carry a safe label,
    /// and reads of items that carry one.
    pub fn permits(&self, mode: Mode, action: &Action, res: &ResourceFacts) -> bool {
        if mode == Mode::DenyAll {
            return false;
        }
        let safe = self.cfg.read_only_labels.is_empty()
            || res
                .labels
                .iter()
                .any(|l| self.cfg.read_only_labels.contains(l));
        match action {
            Action::ListTools
            | Action::ListResources
            | Action::ListResourceTemplates
            | Action::ListPrompts
            | Action::Ping
            | Action::Discover
            | Action::SetLogLevel => true,
            Action::CallTool => {
                res.kind == ResourceKind::Tool
                    && res.annotations.read_only == Some(true)
                    && res.annotations.destructive != Some(true)
                    && safe
            }
            Action::ReadResource | Action::GetPrompt | Action::Subscribe | Action::Complete => safe,
            _ => false,
        }
    }

    /// Takes one of the identity's concurrent-request slots.
    pub fn slot(&self, client: &Client) -> Option<Slot> {
        self.inflight
            .acquire(&client.owner, self.cfg.max_concurrent_per_identity)
    }

    /// The configured rate limits that apply to one allowed request,
    /// plus the policy's rate class; the first one exceeded stops it. With
    /// a shared store the limits are global: cells are taken in the store
    /// (one atomic script), a lease of several at once under a large burst
    /// (`rate::lease_size`), spent here without a round trip; what happens
    /// when the store cannot be reached is `[store] rate_fallback`.
    pub async fn rate(
        &self,
        client: &Client,
        tool: Option<&str>,
        segments: &[String],
        class: Option<(&str, Rate)>,
    ) -> Result<(), Stop> {
        let mut limits: Vec<(String, Rate)> = Vec::new();
        if let Some(r) = self.cfg.rate.identity {
            limits.push(("identity".into(), r));
        }
        if let Some((t, r)) = tool.and_then(|t| self.cfg.rate.tools.get(t).map(|r| (t, r))) {
            limits.push((format!("tool:{t}"), *r));
        }
        for s in segments {
            if let Some(r) = self.cfg.rate.segments.get(s) {
                limits.push((format!("segment:{s}"), *r));
            }
        }
        if let Some((name, r)) = class {
            limits.push((format!("class:{name}"), r));
        }
        let who = &client.owner;
        let shared = self.state.store().limiter();
        for (limit, rate) in limits {
            let key = format!("{who}\u{0}{limit}");
            let local = || {
                self.rates
                    .check(&key, rate, Instant::now())
                    .map_err(|wait| Stop::Rate {
                        limit: limit.clone(),
                        wait,
                    })
            };
            let Some(shared) = shared else {
                local()?;
                continue;
            };
            let now = Instant::now();
            if self.leases.spend(&key, now) {
                continue;
            }
            match shared.take(&key, rate, lease_size(rate), None).await {
                Ok(g) if g.cells > 0 => {
                    self.leases
                        .lease(&key, g.cells - 1, now, now + lease_for(rate));
                }
                Ok(g) => {
                    return Err(Stop::Rate {
                        limit,
                        wait: g.wait,
                    })
                }
                Err(e) => match self.rate_fallback {
                    RateFallback::Local => {
                        tracing::debug!(error = %e, limit = %limit, "global rate limit not checked; this replica's limiter decides");
                        local()?;
                    }
                    RateFallback::Deny => {
                        tracing::warn!(error = %e, limit = %limit, "global rate limit not checked; refused ([store] rate_fallback = \"deny\")");
                        return Err(Stop::Rate {
                            limit,
                            wait: Duration::from_secs(1),
                        });
                    }
                },
            }
        }
        Ok(())
    }

    /// Rules fired by a risk score.
    pub fn on_risk(&self, score: u8) -> Vec<Trigger> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        self.rules.on_risk(score)
    }

    /// Rules fired by a finding.
    pub fn on_finding(&self, severity: Severity, rule: &str) -> Vec<Trigger> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        self.rules.on_finding(severity, rule)
    }

    /// Rules fired by a denial of this client.
    pub fn on_denial(&self, client: &Client) -> Vec<Trigger> {
        if self.rules.is_empty() {
            return Vec::new();
        }
        self.rules.on_denial(&client.owner, Instant::now())
    }

    /// The quarantine a fired rule asks for, if the client has the part it
    /// names (a rule on `agent` does nothing to a caller without a workload).
    pub fn quarantine_for(&self, client: &Client, t: &Trigger) -> Option<Quarantine> {
        let ids = client.subject_ids();
        let value = match t.target {
            TargetKind::Identity => Some(client.owner.clone()),
            TargetKind::Agent => ids.agent.clone(),
            TargetKind::User => ids.user.clone(),
            TargetKind::Device => ids.device.clone(),
            TargetKind::Session => (!client.id.is_empty()).then(|| client.id.clone()),
        }?;
        let now = portcullis_contain::now_unix();
        Some(Quarantine {
            target: Target::new(t.target, value),
            mode: t.mode,
            reason: t.reason.clone(),
            by: format!("auto:{}", t.rule),
            created_at: now,
            expires_at: t.ttl_secs.map(|s| now + s),
        })
    }
}

/// Opens the configured state store and loads containment from it: the
/// embedded file store under `[store] path`, else `<state_dir>/store`
/// (config `state_dir`, or `default_state` — the no-config default's
/// folder); in memory when no folder is known or `kind = "memory"`.
pub async fn open_state(
    cfg: &crate::Config,
    default_state: Option<&std::path::Path>,
) -> Result<Arc<Containment>, String> {
    cfg.store
        .validate()
        .map_err(|(k, e)| format!("config: {k}: {e}"))?;
    if let (StoreKind::Redis, Some(r)) = (cfg.store.kind, &cfg.store.redis) {
        // Never started without having read the shared state: a replica
        // that has not seen it has no last known state to enforce.
        let store = portcullis_redis::RedisStore::connect(r)
            .await
            .map_err(|e| format!("store: {e}"))?;
        return open_over(Arc::new(store)).await;
    }
    let dir = match (&cfg.store.kind, &cfg.store.path) {
        (StoreKind::Memory | StoreKind::Redis, _) => None,
        (StoreKind::File, Some(p)) => Some(p.clone()),
        (StoreKind::File, None) => cfg
            .state_dir
            .as_deref()
            .or(default_state)
            .map(|d| d.join("store")),
    };
    let store: Arc<dyn portcullis_contain::StateStore> = match &dir {
        Some(d) => {
            Arc::new(portcullis_contain::FileStore::open(d).map_err(|e| format!("store: {e}"))?)
        }
        None => {
            if cfg.store.kind == StoreKind::File {
                tracing::warn!("no state folder (state_dir or [store] path): quarantines and revocations are kept in memory only and end with the process");
            }
            Arc::new(portcullis_contain::MemoryStore::default())
        }
    };
    open_over(store).await
}

/// Loads containment from an opened store and follows its changes.
async fn open_over(
    store: Arc<dyn portcullis_contain::StateStore>,
) -> Result<Arc<Containment>, String> {
    tracing::info!(store = %store.describe(), "containment state store");
    let state = Arc::new(
        Containment::open(store)
            .await
            .map_err(|e| format!("store: {e}"))?,
    );
    // A shared store reports what other replicas decide: enforce it here.
    state.follow();
    Ok(state)
}

/// Store namespace of behavioural risk baselines.
pub const NS_RISK: &str = "risk";

/// Loads the risk baselines the store remembers into `risk` (a restart
/// neither forgets an identity's normal behaviour nor launders an alarm).
pub async fn restore_baselines(
    state: &Containment,
    risk: &portcullis_monitor::risk::RiskEngine,
) -> usize {
    let entries = match state.store().list(NS_RISK).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "risk baselines not restored");
            return 0;
        }
    };
    let items = entries.into_iter().filter_map(|e| {
        serde_json::from_value::<portcullis_monitor::risk::Baseline>(e.value)
            .ok()
            .map(|b| (e.key, b))
    });
    risk.import_baselines(items, portcullis_contain::now_unix())
}

/// Writes every identity's risk baseline to the store (one sync).
pub async fn save_baselines(
    state: &Containment,
    risk: &portcullis_monitor::risk::RiskEngine,
) -> Result<usize, portcullis_contain::StoreError> {
    let entries: Vec<portcullis_contain::store::Entry> = risk
        .export_baselines(portcullis_contain::now_unix())
        .into_iter()
        .filter_map(|(key, b)| {
            Some(portcullis_contain::store::Entry {
                key,
                value: serde_json::to_value(b).ok()?,
                expires_at: None,
            })
        })
        .collect();
    let n = entries.len();
    state.store().put_many(NS_RISK, entries).await?;
    Ok(n)
}

/// Saves risk baselines every `every` (and leaves the last save to the
/// caller at shutdown).
pub fn spawn_baseline_saver(
    state: Arc<Containment>,
    monitor: Arc<crate::monitor::Monitor>,
    every: Duration,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = save_baselines(&state, &monitor.risk).await {
                tracing::warn!(error = %e, "risk baselines not saved");
            }
        }
    });
}
