//! The loss spike guard. A learning rate too high for the model does not always make the
//! loss infinite: it can climb to many times its level and stay finite, and a run that only
//! checked for NaN would end "done" with a diverged model as its only checkpoint.
//!
//! Each step's loss is judged before its update is applied. The update is skipped (the
//! weights and optimizer moments stay as they were; the data and the schedule move on) when
//! the loss or the gradient norm is not finite, or when the loss is a spike:
//!
//!   loss_t > factor x min over applied steps s < t of mean(loss of the `window` applied
//!                                                       steps up to s)
//!
//! that is, far above the lowest running mean the run has reached. The lowest, not the
//! latest: a learning rate too high for the model makes the loss climb over several steps
//! (8.4, 8.4, 8.8, 9.4, 13.6, ... for the 1.8M-parameter dense-tiny model at lr 1.0), and a
//! running mean that follows the climb would call each step ordinary. In the shipped recipes'
//! stages the largest ratio of a step's loss to that reference was 1.24 (btx-tiny's finetune;
//! the experts 1.03-1.04); in that lr-1.0 run, 2.04. Judged from the second step on. One
//! skipped step is
//! noise; `patience` skipped in a row is divergence, and the run stops with an error naming
//! the step and the last good checkpoint: the newest one written before the update that
//! preceded the spikes (the loss of step t measures the weights after update t-1, so the
//! checkpoint of step t-1 already holds the weights that spiked). While steps are being
//! skipped no checkpoint is written, so the good ones are not rotated out (`keep_last`).
//! The guard's state (the recent losses, the run of skips) is saved in every checkpoint, so
//! a resumed run judges exactly as an uninterrupted one.

use std::collections::VecDeque;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// `spike_guard` in a training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpikeGuard {
    /// A loss above this multiple of the lowest running mean is a spike. 0 turns the test off
    /// (non-finite losses and gradients still stop the run).
    pub factor: f64,
    /// Applied steps in the running mean.
    pub window: usize,
    /// Steps skipped in a row after which the run stops.
    pub patience: usize,
}

impl Default for SpikeGuard {
    fn default() -> Self {
        Self { factor: 1.5, window: 20, patience: 5 }
    }
}

impl SpikeGuard {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        if !(self.factor == 0.0 || (self.factor > 1.0 && self.factor.is_finite())) {
            bail!("{origin}: field `spike_guard.factor` must be above 1 (or 0: no spike guard), found {}", self.factor);
        }
        for (field, value) in [("window", self.window), ("patience", self.patience)] {
            if value == 0 {
                bail!("{origin}: field `spike_guard.{field}` must be at least 1, found 0");
            }
        }
        Ok(())
    }
}

/// What the guard remembers between steps (saved in the checkpoint's state.json).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    /// Losses of the last `window` applied steps, oldest first.
    pub recent: VecDeque<f64>,
    /// The lowest running mean reached (the spike test's reference).
    #[serde(default)]
    pub best_mean: Option<f64>,
    /// Steps skipped since the last applied one.
    pub skipped_in_a_row: usize,
    /// Steps skipped in the whole run.
    pub skipped: u64,
}

/// The guard's decision on one step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Apply,
    /// Skip the update, for this reason.
    Skip(String),
    /// Skip it, and stop: `patience` steps in a row were skipped (the last for this reason).
    Stop(String),
}

impl GuardState {
    /// Judges one step from its loss and gradient norm, and records the decision.
    pub fn judge(&mut self, guard: &SpikeGuard, loss: f64, grad_norm: f64) -> Verdict {
        let reason = if !loss.is_finite() {
            Some(format!("the loss is {loss}"))
        } else if !grad_norm.is_finite() {
            Some(format!("the gradient norm is {grad_norm}"))
        } else {
            self.spike(guard, loss)
        };
        let Some(reason) = reason else {
            self.skipped_in_a_row = 0;
            self.recent.push_back(loss);
            while self.recent.len() > guard.window {
                self.recent.pop_front();
            }
            let mean = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
            self.best_mean = Some(self.best_mean.map_or(mean, |b| b.min(mean)));
            return Verdict::Apply;
        };
        self.skipped_in_a_row += 1;
        self.skipped += 1;
        // A non-finite loss has nothing left to recover with when the guard is off.
        if self.skipped_in_a_row >= guard.patience || (guard.factor == 0.0 && !loss.is_finite()) {
            Verdict::Stop(reason)
        } else {
            Verdict::Skip(reason)
        }
    }

    fn spike(&self, guard: &SpikeGuard, loss: f64) -> Option<String> {
        let best = self.best_mean.filter(|_| guard.factor > 0.0)?;
        (loss > guard.factor * best).then(|| {
            format!(
                "the loss {loss:.4} is {:.2} x the lowest running mean the run reached, {best:.4} (mean of up to {} applied steps; spike_guard.factor: {})",
                loss / best,
                guard.window,
                guard.factor
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> SpikeGuard {
        SpikeGuard { factor: 2.0, window: 3, patience: 2 }
    }

    #[test]
    fn spikes_are_skipped_and_a_run_of_them_stops() {
        let mut state = GuardState::default();
        // The first step has nothing to be judged against; from the second on, the lowest
        // running mean (here of up to three steps).
        assert_eq!(state.judge(&guard(), 30.0, 1.0), Verdict::Apply);
        assert!(matches!(state.judge(&guard(), 61.0, 1.0), Verdict::Skip(_)));
        for loss in [8.0, 7.0, 6.0, 5.0, 4.0] {
            assert_eq!(state.judge(&guard(), loss, 1.0), Verdict::Apply);
        }
        assert_eq!(state.best_mean, Some(5.0));
        // A slow climb moves the latest mean but not the reference: 9.9 is fine, 10.1 not.
        assert_eq!(state.judge(&guard(), 9.9, 1.0), Verdict::Apply);
        assert!(matches!(state.judge(&guard(), 10.1, 1.0), Verdict::Skip(r) if r.contains("lowest running mean")));
        // A skipped step's loss does not enter the mean; one applied step resets the run.
        assert_eq!(state.recent.back(), Some(&9.9));
        assert_eq!(state.judge(&guard(), 5.0, 1.0), Verdict::Apply);
        assert!(matches!(state.judge(&guard(), 5.0, f64::INFINITY), Verdict::Skip(r) if r.contains("gradient norm")));
        assert!(matches!(state.judge(&guard(), f64::NAN, 1.0), Verdict::Stop(r) if r.contains("NaN")));
        assert_eq!(state.skipped, 4);
    }

    #[test]
    fn with_the_guard_off_only_a_non_finite_loss_stops() {
        let off = SpikeGuard { factor: 0.0, ..guard() };
        let mut state = GuardState::default();
        for loss in [1.0, 1.0, 1.0, 100.0] {
            assert_eq!(state.judge(&off, loss, 1.0), Verdict::Apply);
        }
        assert!(matches!(state.judge(&off, f64::NAN, 1.0), Verdict::Stop(_)));
    }
}
