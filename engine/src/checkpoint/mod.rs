//! Checkpoints: a folder per saved step, written whole under a temporary name and renamed
//! into place, with a `latest` file (also replaced atomically) naming the newest one. A crash
//! at any moment leaves the previous checkpoint intact and `latest` pointing at a whole one.
//! Each folder is sealed with its files' hashes (`integrity`), checked whenever it is loaded;
//! a run keeps its last few checkpoints (`Retention`), so a good one outlives a bad stretch.
//!
//! ```text
//! RUN/latest                      "checkpoints/step-0000300"
//! RUN/checkpoints/step-0000300/   model.safetensors  (Hugging Face names and layout)
//!                                 model.ron          (the model config)
//!                                 optimizer.safetensors, state.json, train.ron (training only)
//!                                 checksums.json     (every other file's SHA-256)
//! ```

pub mod integrity;
pub mod module_tensors;
pub mod stream;
pub mod tensor_file;
pub mod tensor_names;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, parse_ron, to_ron};
use crate::fsutil::{write_atomic, write_dir_atomic};
use crate::model::LanguageModel;
use module_tensors::module_from_tensors;
use tensor_file::{TensorMap, read_tensors, write_tensors};

pub const MODEL_FILE: &str = "model.safetensors";
pub const MODEL_CONFIG_FILE: &str = "model.ron";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const TRAIN_CONFIG_FILE: &str = "train.ron";
pub const LATEST_FILE: &str = "latest";

/// Where a training run stands: enough, with the optimizer moments, to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Updates the optimizer has applied (AdamW's t).
    pub optimizer_updates: u64,
    /// The data sampler's RNG state: the data position.
    pub sampler_state: u64,
    pub tokens_seen: u64,
    /// Training FLOPs so far (6 x active params x tokens, plus attention).
    pub train_flops: f64,
    /// Seconds spent training, summed over resumed sessions.
    pub wall_time_s: f64,
    pub device: String,
    /// The loss spike guard's memory (absent in checkpoints that predate it).
    #[serde(default)]
    pub guard: crate::train::guard::GuardState,
    /// F16 runs: the dynamic loss scale (absent for F32 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<crate::train::precision::LossScale>,
}

impl TrainState {
    /// Records one more optimizer step (applied or skipped: the data and schedule move on
    /// either way) of `tokens` tokens, `flops` FLOPs and `seconds` of wall time.
    pub fn advance(&mut self, tokens: u64, flops: f64, seconds: f64, optimizer_updates: u64, sampler_state: u64) {
        self.step += 1;
        self.optimizer_updates = optimizer_updates;
        self.sampler_state = sampler_state;
        self.tokens_seen += tokens;
        self.train_flops += flops;
        self.wall_time_s += seconds;
    }
}

/// What one checkpoint holds besides the weights (absent for a weights-only checkpoint).
pub struct TrainingParts<'a> {
    /// Writes the optimizer's state to the file it is given (streamed, one tensor at a time).
    pub optimizer: &'a dyn Fn(&Path) -> Result<()>,
    pub state: &'a TrainState,
    pub train_config_ron: &'a str,
}

/// Resolves a path given by a user to a checkpoint folder: either the folder itself
/// (it holds model.safetensors) or a run folder whose `latest` names one.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(MODEL_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join(LATEST_FILE);
    if latest.is_file() {
        let name = std::fs::read_to_string(&latest).with_context(|| format!("cannot read {}", latest.display()))?;
        let dir = path.join(name.trim());
        if dir.join(MODEL_FILE).is_file() {
            return Ok(dir);
        }
        bail!("{} names {}, which holds no {MODEL_FILE}", latest.display(), dir.display());
    }
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    bail!(
        "{} is not a checkpoint: expected a folder with {MODEL_FILE} and {MODEL_CONFIG_FILE}, \
         or a run folder with a `{LATEST_FILE}` file",
        path.display()
    )
}

/// The newest checkpoint of a run folder, if it has one.
pub fn latest_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    run_dir.join(LATEST_FILE).is_file().then(|| resolve_checkpoint(run_dir).ok()).flatten()
}

/// Which of a run's checkpoints survive a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many (at least 1: the one `latest` names).
    pub keep_last: usize,
    /// Also every checkpoint whose step is a multiple of this, for good.
    pub keep_every: Option<usize>,
}

/// Writes a checkpoint of `model` as `RUN/checkpoints/step-N`, then points `latest` at it
/// and removes the older checkpoints of the run that `retention` does not keep.
pub fn save_checkpoint(
    run_dir: &Path,
    step: usize,
    model: &LanguageModel,
    config: &ModelConfig,
    training: Option<TrainingParts<'_>>,
    retention: Retention,
) -> Result<PathBuf> {
    let parent = run_dir.join("checkpoints");
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let name = format!("step-{step:07}");
    let final_dir = parent.join(&name);
    write_dir_atomic(&final_dir, |tmp| {
        write_model_files(tmp, model, config)?;
        if let Some(t) = training {
            (t.optimizer)(&tmp.join(OPTIMIZER_FILE))?;
            write_atomic(&tmp.join(STATE_FILE), serde_json::to_string_pretty(t.state)?.as_bytes())?;
            write_atomic(&tmp.join(TRAIN_CONFIG_FILE), t.train_config_ron.as_bytes())?;
        }
        integrity::seal(tmp)
    })?;
    write_atomic(&run_dir.join(LATEST_FILE), format!("checkpoints/{name}\n").as_bytes())?;
    let mut steps = checkpoint_steps(run_dir);
    steps.sort_unstable_by(|a, b| b.cmp(a));
    for (rank, (old, dir)) in steps.into_iter().enumerate() {
        let kept = rank < retention.keep_last.max(1) || retention.keep_every.is_some_and(|k| k > 0 && old % k == 0);
        if !kept && old != step {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(final_dir)
}

/// The run's checkpoint folders (`checkpoints/step-N`) with their steps, in no order.
pub fn checkpoint_steps(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("checkpoints")) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let step = e.file_name().to_string_lossy().strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect()
}

/// Writes a weights-only checkpoint folder (model.safetensors, model.ron, and `extra`
/// files) from host tensors: built under a temporary name and renamed into place, so `dir`
/// is either absent or whole. An existing `dir` is replaced.
pub fn write_tensor_checkpoint(dir: &Path, config: &ModelConfig, tensors: &TensorMap, extra: &[(&str, String)]) -> Result<()> {
    write_weights_checkpoint(dir, config, extra, |tmp| {
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_tensors(&tmp.join(MODEL_FILE), tensors, metadata)
    })
}

/// The same folder, with model.safetensors written by `write_weights` into the temporary
/// folder it is given (a streamed writer, for merges larger than memory).
pub fn write_weights_checkpoint(
    dir: &Path,
    config: &ModelConfig,
    extra: &[(&str, String)],
    write_weights: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    write_dir_atomic(dir, |tmp| {
        write_weights(tmp)?;
        write_atomic(&tmp.join(MODEL_CONFIG_FILE), to_ron(config)?.as_bytes())?;
        for (file, text) in extra {
            write_atomic(&tmp.join(file), text.as_bytes())?;
        }
        integrity::seal(tmp)
    })
}

/// Writes model.safetensors and model.ron into `dir`.
pub fn write_model_files(dir: &Path, model: &LanguageModel, config: &ModelConfig) -> Result<()> {
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    module_tensors::write_module(model, &dir.join(MODEL_FILE), metadata)?;
    write_atomic(&dir.join(MODEL_CONFIG_FILE), to_ron(config)?.as_bytes())
}

pub fn read_model_config(ckpt: &Path) -> Result<ModelConfig> {
    let path = ckpt.join(MODEL_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: ModelConfig = parse_ron(&text, &path.display().to_string())?;
    config.validate(&path.display().to_string())?;
    Ok(config)
}

/// Loads a checkpoint's model onto `device`, after checking its files' hashes.
pub fn load_model(ckpt: &Path, device: &Device) -> Result<(ModelConfig, LanguageModel)> {
    integrity::verify(ckpt)?;
    let config = read_model_config(ckpt)?;
    let path = ckpt.join(MODEL_FILE);
    let tensors = read_tensors(&path)?;
    let model = module_from_tensors(LanguageModel::new(&config, device), &tensors, &path.display().to_string())?;
    Ok((config, model))
}

/// `skeleton` (a model of the checkpoint's config, with whatever else it carries, such as
/// LoRA adapters) with every parameter read from the checkpoint `ckpt`.
pub fn load_model_into(ckpt: &Path, skeleton: LanguageModel) -> Result<LanguageModel> {
    integrity::verify(ckpt)?;
    let path = ckpt.join(MODEL_FILE);
    let tensors = read_tensors(&path)?;
    module_from_tensors(skeleton, &tensors, &path.display().to_string())
}

/// Whether `ckpt` is its run's last checkpoint (step `steps`): for a LoRA run, the one whose
/// adapters are already merged.
pub fn holds_final_weights(ckpt: &Path, steps: usize) -> Result<bool> {
    Ok(read_train_state(ckpt)?.step >= steps)
}

pub fn read_train_state(ckpt: &Path) -> Result<TrainState> {
    let path = ckpt.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid training state", path.display()))
}
