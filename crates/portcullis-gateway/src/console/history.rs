//! A bounded history of each identity's risk score, for the sparkline:
//! at most [`SAMPLES`] samples per identity, taken at most once per
//! [`EVERY`], for at most [`MAX_IDENTITIES`] identities (the riskiest).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_monitor::risk::RiskEngine;

/// Samples kept per identity.
pub const SAMPLES: usize = 60;
/// The shortest time between two samples.
pub const EVERY: Duration = Duration::from_secs(10);
/// Identities with a history at once.
pub const MAX_IDENTITIES: usize = 500;

#[derive(Default)]
struct Inner {
    last: Option<Instant>,
    scores: HashMap<String, VecDeque<u8>>,
}

/// Per-identity score history.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

impl History {
    /// Takes a sample of every tracked identity unless one was taken less
    /// than [`EVERY`] ago; identities no longer tracked are dropped.
    pub fn sample(&self, risk: &RiskEngine) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        g.last = Some(Instant::now());
        let mut snap = risk.snapshot();
        if snap.len() > MAX_IDENTITIES {
            snap.sort_by(|a, b| b.1.score.cmp(&a.1.score).then_with(|| a.0.cmp(&b.0)));
            snap.truncate(MAX_IDENTITIES);
        }
        self.record(&mut g, snap.into_iter().map(|(id, s)| (id, s.score)));
    }

    fn record(&self, g: &mut Inner, now: impl Iterator<Item = (String, u8)>) {
        let mut next = HashMap::new();
        for (id, score) in now {
            let mut q = g.scores.remove(&id).unwrap_or_default();
            if q.len() >= SAMPLES {
                q.pop_front();
            }
            q.push_back(score);
            next.insert(id, q);
        }
        g.scores = next;
    }

    /// The samples of `identity`, oldest first.
    pub fn of(&self, identity: &str) -> Vec<u8> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.scores
            .get(identity)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Samples forever (every [`EVERY`]) while `risk` lives.
    pub fn spawn(self: &std::sync::Arc<Self>, monitor: std::sync::Weak<crate::monitor::Monitor>) {
        let me = std::sync::Arc::downgrade(self);
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                let (Some(h), Some(m)) = (me.upgrade(), monitor.upgrade()) else {
                    return;
                };
                h.sample(&m.risk);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_identity_and_drops_the_untracked() {
        let h = History::default();
        let mut g = h.inner.lock().unwrap();
        for i in 0..SAMPLES + 5 {
            let s = u8::try_from(i % 100).unwrap();
            h.record(
                &mut g,
                [("a".to_owned(), s), ("b".to_owned(), 1)].into_iter(),
            );
        }
        h.record(&mut g, [("a".to_owned(), 99)].into_iter());
        drop(g);
        let a = h.of("a");
        assert_eq!(a.len(), SAMPLES);
        assert_eq!(a.last(), Some(&99));
        assert!(h.of("b").is_empty());
    }

    #[test]
    fn samples_at_most_once_per_interval() {
        let m = crate::monitor::Monitor::without_audit(&crate::config::Config::empty());
        m.risk
            .on_outcome("x", portcullis_monitor::risk::Outcome::Denied);
        let h = History::default();
        h.sample(&m.risk);
        h.sample(&m.risk);
        assert_eq!(h.of("x").len(), 1);
    }
}
