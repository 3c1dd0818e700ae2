//! Exponential backoff with a cap and jitter, so replicas that lost Redis
//! together do not all knock at the same instant when it returns.

use std::time::Duration;

use rand::Rng;

/// Waits `min`, then twice as long after each failure, up to `max`; each
/// wait is drawn from 75–100 % of the step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// The next wait.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let f: f64 = rand::rng().random_range(0.75..=1.0);
        step.mul_f64(f)
    }

    /// After a success: start from `min` again.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_wait()).collect();
        let steps = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (w, s) in waits.iter().zip(steps) {
            assert!(*w <= ms(s) && *w >= ms(s * 3 / 4), "{w:?} vs {s}");
        }
        b.reset();
        assert!(b.next_wait() <= ms(100));
    }
}
