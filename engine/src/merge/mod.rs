//! Merges: pure functions over checkpoint tensors (named host tensors), one tensor at a time,
//! needing no device. BTX MiX, sparse upcycling and BTM parameter averaging.

pub mod average;
pub mod mix;
pub mod router_data;
pub mod router_init;
pub mod upcycle;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::checkpoint::tensor_file::{HostTensor, TensorMap, read_tensors};
use crate::checkpoint::{MODEL_FILE, read_model_config, resolve_checkpoint};
use crate::config::ModelConfig;

/// A dense checkpoint read for merging.
pub struct MergeInput {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub tensors: TensorMap,
}

impl MergeInput {
    pub fn load(path: &Path) -> Result<Self> {
        let dir = resolve_checkpoint(path)?;
        let config = read_model_config(&dir)?;
        let tensors = read_tensors(&dir.join(MODEL_FILE))?;
        Ok(Self { path: dir, config, tensors })
    }
}

/// Checks that every input is a dense model of one architecture with the same tensors,
/// naming the first mismatch.
pub fn check_same_architecture(inputs: &[&MergeInput]) -> Result<()> {
    let Some(first) = inputs.first() else { bail!("no checkpoints to merge") };
    for input in inputs {
        if input.config.moe.is_some() {
            bail!("{} is an MoE checkpoint; merges take dense checkpoints", input.path.display());
        }
    }
    for other in inputs[1..].iter() {
        if other.config != first.config {
            bail!(
                "{} and {} do not share one architecture: model configs differ\n  {:?}\n  {:?}",
                first.path.display(),
                other.path.display(),
                first.config,
                other.config
            );
        }
        for (name, t) in &first.tensors {
            match other.tensors.get(name) {
                None => bail!("tensor `{name}` of {} is missing from {}", first.path.display(), other.path.display()),
                Some(o) if o.shape != t.shape => bail!(
                    "tensor `{name}` has shape {:?} in {} but {:?} in {}",
                    t.shape,
                    first.path.display(),
                    o.shape,
                    other.path.display()
                ),
                Some(_) => {}
            }
        }
        if let Some(extra) = other.tensors.keys().find(|n| !first.tensors.contains_key(*n)) {
            bail!("tensor `{extra}` of {} is missing from {}", other.path.display(), first.path.display());
        }
    }
    Ok(())
}

/// Normalised merge weights: uniform when `weights` is None.
pub fn normalized_weights(weights: Option<&[f64]>, n: usize) -> Result<Vec<f64>> {
    let w = match weights {
        None => vec![1.0; n],
        Some(w) if w.len() != n => bail!("{} weights given for {n} checkpoints", w.len()),
        Some(w) => w.to_vec(),
    };
    if w.iter().any(|x| !(*x >= 0.0 && x.is_finite())) || w.iter().sum::<f64>() <= 0.0 {
        bail!("merge weights must be >= 0 with a positive sum, found {w:?}");
    }
    let total: f64 = w.iter().sum();
    Ok(w.into_iter().map(|x| x / total).collect())
}

/// sum_j w_j * theta_j for one tensor.
pub fn weighted_average(tensors: &[&HostTensor], weights: &[f64]) -> HostTensor {
    let mut values = vec![0.0f64; tensors[0].values.len()];
    for (t, &w) in tensors.iter().zip(weights) {
        for (acc, v) in values.iter_mut().zip(&t.values) {
            *acc += w * *v as f64;
        }
    }
    HostTensor::new(tensors[0].shape.clone(), values.into_iter().map(|v| v as f32).collect())
}

/// Splits a dense FFN tensor name `model.layers.L.mlp.P.weight` into (L, P).
pub fn ffn_tensor(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let proj = rest.strip_prefix("mlp.")?.strip_suffix(".weight")?;
    Some((layer.parse().ok()?, proj))
}

/// The Mixtral name of expert `e`'s projection `proj` (gate_proj, up_proj, down_proj) in layer `l`.
pub fn expert_tensor_name(layer: usize, expert: usize, proj: &str) -> String {
    let w = match proj {
        "gate_proj" => "w1",
        "down_proj" => "w2",
        "up_proj" => "w3",
        other => other,
    };
    format!("model.layers.{layer}.block_sparse_moe.experts.{expert}.{w}.weight")
}

pub fn router_tensor_name(layer: usize) -> String {
    format!("model.layers.{layer}.block_sparse_moe.gate.weight")
}
