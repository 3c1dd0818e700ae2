//! Circuit breakers per upstream: an upstream that keeps timing out,
//! crashing or tripping detectors is opened (calls fail fast instead of
//! piling up), probed half-open after a cool-down, and closed again when a
//! probe succeeds. Each failed probe doubles the cool-down, up to a cap.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures (timeouts, crashes, detector trips) that open it.
    #[serde(default = "d_failures")]
    pub failures: u32,
    /// First cool-down before a half-open probe (seconds).
    #[serde(default = "d_open")]
    pub open_secs: u64,
    /// Longest cool-down after repeated failed probes (seconds).
    #[serde(default = "d_max_open")]
    pub max_open_secs: u64,
    /// Calls let through at once while half-open.
    #[serde(default = "d_probes")]
    pub half_open_probes: u32,
}

fn d_failures() -> u32 {
    5
}
fn d_open() -> u64 {
    30
}
fn d_max_open() -> u64 {
    300
}
fn d_probes() -> u32 {
    1
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: d_failures(),
            open_secs: d_open(),
            max_open_secs: d_max_open(),
            half_open_probes: d_probes(),
        }
    }
}

/// A breaker's state, as operators and metrics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Calls flow.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probe calls are let through.
    HalfOpen,
}

impl State {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

/// A change of state worth logging and auditing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub to: State,
    /// Why.
    pub reason: String,
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    /// When an open breaker may probe.
    until: Instant,
    /// The cool-down to use next time it opens.
    cooldown: Duration,
    probes: u32,
    last_reason: String,
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

/// Permission to call: dropping it without `record` counts as neither
/// success nor failure (a cancelled call), and frees a half-open slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A normal call.
    Call,
    /// A half-open probe: its outcome decides the state.
    Probe,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                until: Instant::now(),
                cooldown: Duration::from_secs(cfg.open_secs),
                probes: 0,
                last_reason: String::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long an open breaker still refuses calls at `now` (`None` when
    /// a call or a probe would be let through): a check that takes nothing
    /// and copies nothing, for refusing before the forward.
    pub fn refusing_for(&self, now: Instant) -> Option<Duration> {
        let g = self.lock();
        (g.state == State::Open && now < g.until).then(|| g.until - now)
    }

    /// Asks to call at `now`: `Err` is how long until a probe may go.
    pub fn allow(&self, now: Instant) -> Result<Permit, Duration> {
        let mut g = self.lock();
        match g.state {
            State::Closed => Ok(Permit::Call),
            State::Open if now >= g.until => {
                g.state = State::HalfOpen;
                g.probes = 1;
                Ok(Permit::Probe)
            }
            State::Open => Err(g.until - now),
            State::HalfOpen if g.probes < self.cfg.half_open_probes.max(1) => {
                g.probes += 1;
                Ok(Permit::Probe)
            }
            // A probe is out: others wait for its answer.
            State::HalfOpen => Err(Duration::from_secs(1)),
        }
    }

    /// Reports a call's outcome.
    pub fn record(
        &self,
        permit: Permit,
        ok: bool,
        reason: &str,
        now: Instant,
    ) -> Option<Transition> {
        let mut g = self.lock();
        if permit == Permit::Probe {
            g.probes = g.probes.saturating_sub(1);
        }
        if ok {
            g.consecutive = 0;
            if g.state == State::HalfOpen && permit == Permit::Probe {
                g.state = State::Closed;
                g.cooldown = Duration::from_secs(self.cfg.open_secs);
                return Some(Transition {
                    to: State::Closed,
                    reason: "probe succeeded".into(),
                });
            }
            return None;
        }
        g.consecutive = g.consecutive.saturating_add(1);
        g.last_reason = reason.to_owned();
        match g.state {
            State::HalfOpen if permit == Permit::Probe => {
                let max = Duration::from_secs(self.cfg.max_open_secs.max(self.cfg.open_secs));
                g.cooldown = (g.cooldown * 2).min(max);
                Some(Self::open(&mut g, now, format!("probe failed: {reason}")))
            }
            State::Closed if g.consecutive >= self.cfg.failures.max(1) => {
                let why = format!("{} consecutive failures, last: {reason}", g.consecutive);
                Some(Self::open(&mut g, now, why))
            }
            _ => None,
        }
    }

    /// A call given up before any outcome (client went away): frees a probe slot.
    pub fn cancel(&self, permit: Permit) {
        if permit == Permit::Probe {
            let mut g = self.lock();
            g.probes = g.probes.saturating_sub(1);
            if g.state == State::HalfOpen && g.probes == 0 {
                // Let the next caller probe.
                g.state = State::Open;
            }
        }
    }

    /// Opens the breaker now (a detector tripped, or an operator said so).
    pub fn trip(&self, reason: &str, now: Instant) -> Option<Transition> {
        let mut g = self.lock();
        if g.state == State::Open {
            return None;
        }
        Some(Self::open(&mut g, now, reason.to_owned()))
    }

    /// Closes the breaker now (operator reset).
    pub fn reset(&self) -> Option<Transition> {
        let mut g = self.lock();
        g.consecutive = 0;
        g.probes = 0;
        g.cooldown = Duration::from_secs(self.cfg.open_secs);
        if g.state == State::Closed {
            return None;
        }
        g.state = State::Closed;
        Some(Transition {
            to: State::Closed,
            reason: "reset by operator".into(),
        })
    }

    fn open(g: &mut Inner, now: Instant, reason: String) -> Transition {
        g.state = State::Open;
        g.until = now + g.cooldown;
        g.probes = 0;
        g.last_reason = reason.clone();
        Transition {
            to: State::Open,
            reason,
        }
    }

    /// The state, the consecutive failures, seconds until a probe (when
    /// open) and the last failure's reason.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let g = self.lock();
        Snapshot {
            state: g.state,
            consecutive_failures: g.consecutive,
            retry_in_secs: (g.state == State::Open)
                .then(|| g.until.saturating_duration_since(now).as_secs_f64()),
            last_failure: g.last_reason.clone(),
        }
    }
}

/// A breaker's state for `/admin/breakers` and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Closed, open or half-open.
    pub state: State,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Seconds until a probe is let through (open only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_secs: Option<f64>,
    /// Why the last call failed.
    pub last_failure: String,
}

/// A permit tied to its breaker: report the outcome with
/// [`Ticket::finish`]; dropped unfinished (the call was abandoned), it
/// frees its half-open slot so the breaker cannot stick half-open.
pub struct Ticket {
    breaker: std::sync::Arc<Breaker>,
    permit: Option<Permit>,
}

impl Ticket {
    /// Asks `breaker` to call at `now`.
    pub fn take(breaker: &std::sync::Arc<Breaker>, now: Instant) -> Result<Ticket, Duration> {
        breaker.allow(now).map(|p| Ticket {
            breaker: breaker.clone(),
            permit: Some(p),
        })
    }

    /// Reports the call's outcome.
    pub fn finish(mut self, ok: bool, reason: &str, now: Instant) -> Option<Transition> {
        let p = self.permit.take()?;
        self.breaker.record(p, ok, reason, now)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.cancel(p);
        }
    }
}
