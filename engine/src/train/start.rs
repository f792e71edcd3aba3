//! Where a training run starts: a fresh model, a branch of a checkpoint (`init_from`), or the
//! checkpoint it resumes (the same config, its optimizer moments and data position); the
//! autodiff device it trains on; and what it freezes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;

use super::adamw::AdamW;
use super::config::TrainConfig;
use super::precision::{FrozenPrecision, INITIAL_SCALE, LossScale, Precision};
use crate::checkpoint::{self, OPTIMIZER_FILE, TRAIN_CONFIG_FILE, TrainState, latest_checkpoint, tensor_file::read_tensors};
use crate::config::{parse_ron, resolve};
use crate::data::sampler::MixtureSampler;
use crate::device::SelectedDevice;
use crate::model::LanguageModel;

/// The autodiff device a run trains on: with `activation_checkpointing`, Burn's balanced
/// gradient checkpointing (every parameter and input must live on the same strategy).
pub fn training_device(device: &Device, config: &TrainConfig) -> Device {
    let device = device.clone().autodiff();
    if config.activation_checkpointing { device.gradient_checkpointing() } else { device }
}

/// The checkpoint a run continues from: the folder's latest with `resume` (none in an empty
/// folder), and an error without it if the folder already holds one.
pub(super) fn checkpoint_to_resume(out: &Path, resume: bool) -> Result<Option<PathBuf>> {
    let existing = latest_checkpoint(out);
    if existing.is_some() && !resume {
        bail!("{} already holds a checkpoint; pass --resume to continue that run, or choose another --out", out.display());
    }
    Ok(existing)
}

/// The model and state a run starts from: a fresh (or branched) model, or the checkpoint it
/// resumes, with the optimizer moments and data position restored.
pub(super) fn start_or_resume(
    config: &TrainConfig,
    origin: &str,
    resume_from: Option<PathBuf>,
    optimizer: &mut AdamW,
    sampler: &mut MixtureSampler,
    selected: &SelectedDevice,
    device: &Device,
) -> Result<(LanguageModel, TrainState)> {
    let Some(ckpt) = resume_from else {
        let state = TrainState {
            step: 0,
            optimizer_updates: 0,
            sampler_state: sampler.state(),
            tokens_seen: 0,
            train_flops: 0.0,
            wall_time_s: 0.0,
            device: selected.description.clone(),
            guard: Default::default(),
            loss_scale: (config.precision == Precision::F16 || config.frozen_precision.computes_in_f16(device))
                .then(|| LossScale { scale: config.initial_loss_scale.unwrap_or(INITIAL_SCALE), finite_steps: 0 }),
        };
        let model = initial_model(config, origin, device)?;
        let model = match &config.lora {
            Some(lora) => crate::model::lora::attach(model, lora).with_context(|| format!("{origin}: field `lora`"))?,
            None => model,
        };
        return Ok((model, state));
    };
    check_same_config(config, &ckpt)?;
    // A LoRA run's checkpoints before its end hold the adapters beside the frozen weights.
    let model = match &config.lora {
        Some(lora) if !checkpoint::holds_final_weights(&ckpt, config.steps)? => {
            let skeleton = crate::model::lora::attach(LanguageModel::new(&config.model, device), lora)?;
            checkpoint::load_model_into(&ckpt, skeleton)?
        }
        _ => checkpoint::load_model(&ckpt, device)?.1,
    };
    let state = checkpoint::read_train_state(&ckpt)?;
    let moments = read_tensors(&ckpt.join(OPTIMIZER_FILE))?;
    optimizer.load_state_tensors(&moments, state.optimizer_updates, device);
    sampler.restore(state.sampler_state);
    eprintln!("resuming {} at step {}", ckpt.display(), state.step);
    Ok((model, state))
}

/// `model` with every parameter that `trainable` does not name frozen (all train if absent),
/// the frozen projections held in `frozen_precision`.
pub(super) fn freeze_untrainable(model: LanguageModel, config: &TrainConfig, origin: &str) -> Result<LanguageModel> {
    let model = freeze(model, config, origin)?;
    Ok(hold_frozen_in(model, config.frozen_precision))
}

/// `model` with its frozen projections held in `precision` (unchanged at F32).
pub fn hold_frozen_in(model: LanguageModel, precision: FrozenPrecision) -> LanguageModel {
    let Some(dtype) = precision.dtype() else {
        return model;
    };
    checkpoint::module_tensors::cast_frozen_linear_weights(model, dtype, &FrozenPrecision::holds)
}

/// `model` with every parameter that `trainable` does not name frozen (all train if absent).
fn freeze(model: LanguageModel, config: &TrainConfig, origin: &str) -> Result<LanguageModel> {
    let trainable = match (&config.trainable, &config.lora) {
        (Some(trainable), _) => trainable,
        // The adapters (and an MoE's routers, where there are any); a finished LoRA run has
        // no adapters left: nothing to freeze.
        (None, Some(_)) if crate::model::lora::has_adapters(&model) => {
            return Ok(checkpoint::module_tensors::freeze_all_but(model, &crate::model::lora::trainable_names()).0);
        }
        (None, _) => return Ok(model),
    };
    let (frozen, names, _) = checkpoint::module_tensors::freeze_where(model, &|name| trainable.trains(name));
    trainable.check(&names, origin)?;
    Ok(frozen)
}

/// A fresh model, or the weights of `init_from` (a branch of an existing checkpoint).
fn initial_model(config: &TrainConfig, origin: &str, device: &Device) -> Result<LanguageModel> {
    let Some(init) = &config.init_from else {
        return Ok(LanguageModel::seeded(&config.model, config.seed, device));
    };
    let ckpt = checkpoint::resolve_checkpoint(&resolve(init))
        .with_context(|| format!("{origin}: field `init_from`"))?;
    let stored = checkpoint::read_model_config(&ckpt)?;
    if stored != config.model {
        bail!(
            "{origin}: field `init_from`: checkpoint {} has a different model config than field `model`:\n  checkpoint: {stored:?}\n  config:     {:?}",
            ckpt.display(),
            config.model
        );
    }
    Ok(checkpoint::load_model(&ckpt, device)?.1)
}

/// A resumed run must be the same run: every field that changes the result must match.
fn check_same_config(config: &TrainConfig, ckpt: &Path) -> Result<()> {
    let path = ckpt.join(TRAIN_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut stored: TrainConfig = parse_ron(&text, &path.display().to_string())?;
    // Only how often to evaluate and save may change between sessions.
    stored.checkpoint_every = config.checkpoint_every;
    stored.eval_every = config.eval_every;
    stored.eval_batches = config.eval_batches;
    if &stored != config {
        let a = serde_json::to_value(&stored)?;
        let b = serde_json::to_value(config)?;
        let fields: Vec<String> = a
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, _)| format!("`{k}`"))
            .collect();
        bail!(
            "cannot resume from {}: it was trained with a different config (fields {} differ); \
             use the same config, or a new --out folder",
            ckpt.display(),
            fields.join(", ")
        );
    }
    Ok(())
}
