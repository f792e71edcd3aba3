//! A training run's config file (RON): model sizes, data, optimizer and schedule.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::guard::SpikeGuard;
use super::precision::{FrozenPrecision, Precision};
use crate::checkpoint::Retention;
use crate::config::{ModelConfig, read_ron};
use crate::data::DataConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub optimizer: OptimizerConfig,
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Seeds the initial weights and the data order.
    #[serde(default)]
    pub seed: u64,
    /// Write a checkpoint every this many steps (and always at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Evaluate every this many steps (and always at the end); 0 = only at the end.
    #[serde(default)]
    pub eval_every: usize,
    /// Validation batches per domain at each evaluation.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Start from this checkpoint's weights instead of a random initialisation (a branch).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Train only the parameters whose checkpoint names contain one of these strings; the
    /// rest stay frozen (an expert added to an MoE learns against the MoE's fixed shared
    /// weights, as FlexOlmo's experts do). Absent: every parameter trains (and it is left
    /// out of written configs, so the configs of runs that predate it are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<super::trainable::Trainable>,
    /// Train low-rank adapters (LoRA) on these projections instead of the weights; the base
    /// stays frozen and the adapters are merged into it when the run ends (`model::lora`).
    /// Absent: full training (and left out of written configs, as `trainable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::model::lora::LoraConfig>,
    /// Checkpoints kept: the newest `keep_last` (at least 1)...
    #[serde(default = "default_keep_last", skip_serializing_if = "is_default_keep_last")]
    pub keep_last: usize,
    /// ...and, for good, every one whose step is a multiple of `keep_every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_every: Option<usize>,
    /// Updates skipped when the loss spikes; a run whose loss stays up stops (see
    /// `train::guard`). Left out of written configs while at its defaults, as the two above,
    /// so the configs (and recipe stage keys) of runs that predate them are unchanged.
    #[serde(default, skip_serializing_if = "SpikeGuard::is_default")]
    pub spike_guard: SpikeGuard,
    /// `F32` (the default), or `F16`: projections and attention in f16 with f32 weights and
    /// optimizer, and dynamic loss scaling (`train::precision`). Left out of written configs
    /// at its default, as the fields above.
    #[serde(default, skip_serializing_if = "Precision::is_default")]
    pub precision: Precision,
    /// How the weights the run does not train are held: `F32` (the default), `F16` or `BF16`
    /// (`train::precision::FrozenPrecision`): half the memory of a LoRA base or of a
    /// router-only finetune's experts. Left out of written configs at its default.
    #[serde(default, skip_serializing_if = "FrozenPrecision::is_default")]
    pub frozen_precision: FrozenPrecision,
    /// F16 only: the loss scale the run starts from (default 65536, PyTorch's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_loss_scale: Option<f64>,
    /// Activation (gradient) checkpointing: Burn's balanced strategy on the autodiff device,
    /// which keeps the outputs of compute-bound operations (matrix products, attention, the
    /// fused head) and recomputes the memory-bound ones (norms, residual sums, activations'
    /// elementwise steps) in the backward pass instead of holding them. Same losses and
    /// gradients, less activation memory, some recomputation. Left out of written configs
    /// when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
}

fn default_keep_last() -> usize {
    2
}
fn is_default_keep_last(n: &usize) -> bool {
    *n == default_keep_last()
}

fn one() -> usize {
    1
}
fn default_checkpoint_every() -> usize {
    100
}
fn default_eval_batches() -> usize {
    4
}

/// AdamW with decoupled weight decay, global-norm gradient clipping, and a schedule of
/// linear warmup then cosine decay to `min_lr_ratio * lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub lr: f64,
    #[serde(default = "default_warmup")]
    pub warmup_steps: usize,
    /// The floor of the cosine decay, as a fraction of `lr`.
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Decoupled weight decay, applied to matrices only (not to norms).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Largest global gradient norm; larger gradients are scaled down. 0 = no clipping.
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// The routers' learning rate as a multiple of the schedule's (an MoE finetune: the
    /// routers start from nothing while every other weight is trained). Left out of written
    /// configs at 1, so the configs and stage keys of runs that predate it are unchanged.
    #[serde(default = "default_router_lr_multiplier", skip_serializing_if = "is_one")]
    pub router_lr_multiplier: f64,
    /// The shared weights' learning rate (attention, norms, embeddings, head: all but the FFNs,
    /// experts and routers) as a multiple of the schedule's: below 1 an expert moves them
    /// little, as a large seed's do in the BTX paper, and they average with less loss at the
    /// merge; 0 freezes them in effect (their moments are kept, their updates are 0). Left
    /// out of written configs at 1.
    #[serde(default = "default_router_lr_multiplier", skip_serializing_if = "is_one")]
    pub shared_lr_multiplier: f64,
}

/// A stage's changes to the recipe's optimizer (each field left out keeps the recipe's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSettings {
    /// Peak learning rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<usize>,
    /// The floor of the cosine decay, as a fraction of `lr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// The routers' learning rate as a multiple of `lr` (MoE finetunes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_lr_multiplier: Option<f64>,
    /// The shared (non-FFN, non-router) weights' learning rate as a multiple of `lr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_lr_multiplier: Option<f64>,
}

impl OptimizerConfig {
    /// Checks the values; errors name `origin` and the config's `field`.
    pub fn validate(&self, origin: &str, field: &str) -> Result<()> {
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            bail!("{origin}: field `{field}.lr` must be in (0, 1], found {}", self.lr);
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!("{origin}: field `{field}.min_lr_ratio` must be in [0, 1], found {}", self.min_lr_ratio);
        }
        for (name, value) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                bail!("{origin}: field `{field}.{name}` must be in [0, 1), found {value}");
            }
        }
        if !(self.router_lr_multiplier > 0.0 && self.router_lr_multiplier.is_finite()) {
            bail!("{origin}: field `{field}.router_lr_multiplier` must be a finite number > 0, found {}", self.router_lr_multiplier);
        }
        if !(self.shared_lr_multiplier >= 0.0 && self.shared_lr_multiplier.is_finite()) {
            bail!("{origin}: field `{field}.shared_lr_multiplier` must be a finite number >= 0, found {}", self.shared_lr_multiplier);
        }
        for (name, value) in [("weight_decay", self.weight_decay), ("grad_clip", self.grad_clip), ("eps", self.eps)] {
            if !(value >= 0.0 && value.is_finite()) {
                bail!("{origin}: field `{field}.{name}` must be a finite number >= 0, found {value}");
            }
        }
        Ok(())
    }
}

impl OptimizerSettings {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with these settings applied.
    pub fn apply(&self, base: &OptimizerConfig) -> OptimizerConfig {
        OptimizerConfig {
            lr: self.lr.unwrap_or(base.lr),
            warmup_steps: self.warmup_steps.unwrap_or(base.warmup_steps),
            min_lr_ratio: self.min_lr_ratio.unwrap_or(base.min_lr_ratio),
            weight_decay: self.weight_decay.unwrap_or(base.weight_decay),
            router_lr_multiplier: self.router_lr_multiplier.unwrap_or(base.router_lr_multiplier),
            shared_lr_multiplier: self.shared_lr_multiplier.unwrap_or(base.shared_lr_multiplier),
            ..base.clone()
        }
    }

    /// These settings over `under` (a stage's own over its group's).
    pub fn over(&self, under: &OptimizerSettings) -> OptimizerSettings {
        OptimizerSettings {
            lr: self.lr.or(under.lr),
            warmup_steps: self.warmup_steps.or(under.warmup_steps),
            min_lr_ratio: self.min_lr_ratio.or(under.min_lr_ratio),
            weight_decay: self.weight_decay.or(under.weight_decay),
            router_lr_multiplier: self.router_lr_multiplier.or(under.router_lr_multiplier),
            shared_lr_multiplier: self.shared_lr_multiplier.or(under.shared_lr_multiplier),
        }
    }
}

fn default_router_lr_multiplier() -> f64 {
    1.0
}
fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn default_warmup() -> usize {
    100
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}
fn default_grad_clip() -> f64 {
    1.0
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let config: Self = read_ron(path)?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Checks every field that a parser cannot; `origin` names the file in errors.
    /// Training FLOPs per token: a full run's (`ModelConfig::train_flops_per_token`), or a
    /// LoRA run's, whose frozen base computes no weight gradients, or, with `trainable`, a
    /// full run's less the weight gradients of the frozen weights (the gradients of the
    /// activations still flow back through them to what trains below).
    pub fn train_flops_per_token(&self) -> f64 {
        match (&self.lora, &self.trainable) {
            (Some(lora), _) => lora.train_flops_per_token(&self.model, self.data.seq_len),
            (None, Some(trainable)) => self.model.train_flops_per_token(self.data.seq_len) - 2.0 * trainable.frozen_matmul_params(&self.model),
            (None, None) => self.model.train_flops_per_token(self.data.seq_len),
        }
    }

    /// Whether the run leaves weights frozen (LoRA's base, or what `trainable` does not name).
    pub fn freezes_weights(&self) -> bool {
        self.lora.is_some() || self.trainable.is_some()
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        self.model.validate(origin)?;
        if let Some(lora) = &self.lora {
            lora.validate(origin)?;
            if self.trainable.is_some() {
                bail!("{origin}: fields `lora` and `trainable` together: a LoRA run trains its adapters only; remove one");
            }
        }
        if !self.frozen_precision.is_default() && !self.freezes_weights() {
            bail!(
                "{origin}: field `frozen_precision` ({:?}) holds the weights a run does not train, but this run trains every \
                 weight (no `lora`, no `trainable`); remove the field",
                self.frozen_precision
            );
        }
        if let Some(scale) = self.initial_loss_scale {
            if self.precision != Precision::F16 && self.frozen_precision != FrozenPrecision::F16 {
                bail!("{origin}: field `initial_loss_scale` applies to `precision: F16` or `frozen_precision: F16` only (this run computes in f32)");
            }
            if !(scale >= 1.0 && scale.is_finite()) {
                bail!("{origin}: field `initial_loss_scale` must be a finite number >= 1, found {scale}");
            }
        }
        self.data.validate(origin)?;
        if self.data.seq_len > self.model.max_seq_len {
            bail!(
                "{origin}: field `data.seq_len` ({}) is longer than `model.max_seq_len` ({})",
                self.data.seq_len,
                self.model.max_seq_len
            );
        }
        for (field, value) in [("steps", self.steps), ("batch_size", self.batch_size), ("grad_accum", self.grad_accum)] {
            if value == 0 {
                bail!("{origin}: field `{field}` must be at least 1, found 0");
            }
        }
        if self.checkpoint_every == 0 {
            bail!("{origin}: field `checkpoint_every` must be at least 1, found 0");
        }
        if self.keep_last == 0 {
            bail!("{origin}: field `keep_last` must be at least 1 (the checkpoint a resume starts from), found 0");
        }
        if self.keep_every == Some(0) {
            bail!("{origin}: field `keep_every` must be at least 1, found 0 (leave it out to keep no checkpoint for good)");
        }
        self.spike_guard.validate(origin)?;
        self.optimizer.validate(origin, "optimizer")
    }

    /// Which checkpoints a run keeps.
    pub fn retention(&self) -> Retention {
        Retention { keep_last: self.keep_last, keep_every: self.keep_every }
    }

    /// Tokens consumed per optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.grad_accum * self.data.seq_len
    }
}

/// Learning rate at `step` (0-based): linear warmup to `lr`, then cosine decay to
/// `min_lr_ratio * lr` at the last step.
pub fn learning_rate(o: &OptimizerConfig, step: usize, total_steps: usize) -> f64 {
    if step < o.warmup_steps {
        return o.lr * (step + 1) as f64 / o.warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(o.warmup_steps).max(1);
    let progress = ((step - o.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    let floor = o.lr * o.min_lr_ratio;
    floor + (o.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}
