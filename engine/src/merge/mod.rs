//! Merges: BTX MiX, sparse upcycling and BTM parameter averaging, as pure functions over
//! checkpoint tensors that need no device.
//!
//! A merge is planned first (`plan::MergePlan`: every output tensor's name, shape and how it
//! is computed from the members' tensors), then executed one output tensor at a time, reading
//! only the member tensors it needs from their safetensors files and streaming the result to
//! disk. Peak memory is a few tensors, whatever the model size (merging four 7B experts does
//! not need four 7B models in memory).

pub mod average;
pub mod diagnosis;
pub mod experts;
pub mod method;
pub mod mix;
pub mod plan;
pub mod record;
pub mod request;
pub mod router_data;
pub mod router_init;
pub mod upcycle;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::checkpoint::stream::TensorIndex;
use crate::checkpoint::tensor_file::{HostTensor, TensorMap, read_tensors};
use crate::checkpoint::{MODEL_FILE, read_model_config, resolve_checkpoint};
use crate::checkpoint::tensor_names::Projection;
use crate::config::ModelConfig;
pub use method::MergeMethod;
pub use request::{MergeRequest, RuleError, check_router_init, expert_names};

/// The name of the seed when BTX keeps it as one more expert (Sukhbaatar et al. 2024, §2:
/// the seed's FFN as a generalist expert beside the domain experts).
pub const GENERALIST: &str = "generalist";

/// A dense checkpoint to merge. Its tensors are read on demand from the file (`load`) or
/// were read whole up front (`load_in_memory`); both give the same merge, bit for bit.
pub struct MergeInput {
    pub path: PathBuf,
    pub config: ModelConfig,
    store: Store,
}

enum Store {
    File(TensorIndex),
    Memory(TensorMap),
}

impl MergeInput {
    /// Reads the config and the safetensors header only.
    pub fn load(path: &Path) -> Result<Self> {
        let dir = resolve_checkpoint(path)?;
        crate::checkpoint::integrity::verify(&dir)?;
        let config = read_model_config(&dir)?;
        let store = Store::File(TensorIndex::open(&dir)?);
        Ok(Self { path: dir, config, store })
    }

    /// Reads every tensor into memory.
    pub fn load_in_memory(path: &Path) -> Result<Self> {
        let dir = resolve_checkpoint(path)?;
        crate::checkpoint::integrity::verify(&dir)?;
        let config = read_model_config(&dir)?;
        let store = Store::Memory(read_tensors(&dir.join(MODEL_FILE))?);
        Ok(Self { path: dir, config, store })
    }

    /// Every tensor's name and shape, in name order.
    pub fn shapes(&self) -> BTreeMap<&str, &[usize]> {
        match &self.store {
            Store::File(index) => index.tensors.iter().map(|(n, t)| (n.as_str(), t.shape.as_slice())).collect(),
            Store::Memory(map) => map.iter().map(|(n, t)| (n.as_str(), t.shape.as_slice())).collect(),
        }
    }

    pub fn read(&self, name: &str) -> Result<HostTensor> {
        match &self.store {
            Store::File(index) => index.read(name),
            Store::Memory(map) => match map.get(name) {
                Some(t) => Ok(t.clone()),
                None => bail!("{}: missing tensor `{name}`", self.path.display()),
            },
        }
    }
}

/// The name of the run a checkpoint belongs to: `RUN` for `RUN/checkpoints/step-N`, else the
/// folder's own name.
pub(crate) fn run_name(checkpoint: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match checkpoint.parent() {
        Some(parent) if parent.file_name().is_some_and(|n| n == "checkpoints") => parent.parent().map(name).unwrap_or_default(),
        _ => name(checkpoint),
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
    let first_shapes = first.shapes();
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
        let shapes = other.shapes();
        for (name, shape) in &first_shapes {
            match shapes.get(name) {
                None => bail!("tensor `{name}` of {} is missing from {}", first.path.display(), other.path.display()),
                Some(o) if o != shape => bail!(
                    "tensor `{name}` has shape {shape:?} in {} but {o:?} in {}",
                    first.path.display(),
                    other.path.display()
                ),
                Some(_) => {}
            }
        }
        if let Some(extra) = shapes.keys().find(|n| !first_shapes.contains_key(*n)) {
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

/// Splits a dense FFN tensor name `model.layers.L.mlp.P.weight` into (L, P).
pub fn ffn_tensor(name: &str) -> Option<(usize, Projection)> {
    crate::checkpoint::tensor_names::parse_dense_ffn(name)
}

/// The name of each routed expert of a `method` merge (index = expert id): the members'
/// names, then "generalist" for a seed that is routed (kept, and not the shared expert);
/// "copy N" for upcycling; split experts get ".0", ".1", ... Empty for a dense result. One
/// rule for `btx merge`, which records them, and for a recipe, which knows them beforehand.
pub fn routed_expert_names(method: &MergeMethod, members: Vec<String>, routed_seed: bool, split: usize) -> Vec<String> {
    let whole: Vec<String> = match *method {
        MergeMethod::Average | MergeMethod::Transplant { .. } | MergeMethod::Ensemble { .. } => return vec![],
        MergeMethod::Upcycle { experts, .. } => (0..experts).map(|e| format!("copy {e}")).collect(),
        MergeMethod::Btx | MergeMethod::Bam { .. } => members.into_iter().chain(routed_seed.then(|| GENERALIST.to_string())).collect(),
    };
    split_expert_names(&whole, split)
}

/// Expert names as split experts are named: "NAME.0", "NAME.1", ... (unchanged when `split`
/// is 1).
pub fn split_expert_names(whole: &[String], split: usize) -> Vec<String> {
    if split <= 1 {
        return whole.to_vec();
    }
    whole.iter().flat_map(|n| (0..split).map(move |c| format!("{n}.{c}"))).collect()
}

