//! A planned merge: each output tensor's name, shape and source, executed one tensor at a
//! time. `write` streams the result into a checkpoint folder; `into_tensors` builds it in
//! memory (tests, and the proof that both give the same bits).

use std::path::Path;

use anyhow::Result;

use super::MergeInput;
use crate::checkpoint::stream::StreamWriter;
use crate::checkpoint::tensor_file::{HostTensor, TensorMap};
use crate::checkpoint::{MODEL_FILE, write_weights_checkpoint};
use crate::config::ModelConfig;
use crate::data::rng::Rng;

/// How one output tensor is computed from the members' tensors.
#[derive(Debug, Clone)]
pub enum Source {
    /// sum_j w_j * theta_j[name] over every member (the weights sum to 1).
    Average { name: String, weights: Vec<f64> },
    /// A piece of one member's tensor, optionally with Gaussian noise added to the whole
    /// tensor, or some of its hidden units re-initialised, before it is cut.
    Piece { member: usize, name: String, cut: Cut, noise: Option<Noise>, reinit: Option<Reinit> },
    /// A tensor computed up front (routers: small).
    Given(HostTensor),
}

impl Source {
    /// Member `member`'s tensor `name`, as it is.
    pub fn whole(member: usize, name: &str) -> Self {
        Source::Piece { member, name: name.to_string(), cut: Cut::Whole, noise: None, reinit: None }
    }
}

/// Which part of a 2-D tensor a piece takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cut {
    Whole,
    Rows { start: usize, len: usize },
    Columns { start: usize, len: usize },
}

/// N(0, std^2) noise drawn from `seed` (the same seed gives the same noise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Noise {
    pub std: f64,
    pub seed: u64,
}

/// Drop-Upcycling's partial re-initialisation (Nakamura et al. 2025, §3): the hidden units in
/// a random set S of `round(ratio * d_ff)` are drawn afresh from N(mean, std^2) of the
/// original matrix's own weights. S comes from `index_seed` alone, so an expert's gate, up
/// and down projections drop the same units; the new values come from `value_seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reinit {
    pub ratio: f64,
    pub index_seed: u64,
    pub value_seed: u64,
    /// Where the hidden units are: rows (gate_proj, up_proj, `[d_ff, d_model]`) or columns
    /// (down_proj, `[d_model, d_ff]`).
    pub hidden_in_rows: bool,
}

impl Reinit {
    /// The hidden units re-initialised, out of `units`: the first `round(ratio * units)` of
    /// a seeded Fisher-Yates shuffle.
    pub fn dropped_units(&self, units: usize) -> Vec<usize> {
        let count = ((self.ratio * units as f64).round() as usize).min(units);
        let mut order: Vec<usize> = (0..units).collect();
        let mut rng = Rng::new(self.index_seed);
        for i in 0..count {
            let j = i + rng.below((units - i) as u64) as usize;
            order.swap(i, j);
        }
        order.truncate(count);
        order
    }

    fn apply(&self, t: &mut HostTensor) {
        let n = t.values.len() as f64;
        let mean = t.values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (t.values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let mut rng = Rng::new(self.value_seed);
        for unit in self.dropped_units(if self.hidden_in_rows { rows } else { cols }) {
            let cells: Vec<usize> = if self.hidden_in_rows { (0..cols).map(|c| unit * cols + c).collect() } else { (0..rows).map(|r| r * cols + unit).collect() };
            for cell in cells {
                t.values[cell] = (mean + std * rng.normal()) as f32;
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub source: Source,
}

/// One output per tensor of `member` that `keep` accepts, named and shaped as it is, computed
/// by `source(name)`.
pub fn outputs_like(member: &MergeInput, keep: impl Fn(&str) -> bool, source: impl Fn(&str) -> Source) -> Vec<Output> {
    member
        .shapes()
        .into_iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, shape)| Output { name: name.to_string(), shape: shape.to_vec(), source: source(name) })
        .collect()
}

pub struct MergePlan<'a> {
    /// The merged model's config.
    pub config: ModelConfig,
    members: Vec<&'a MergeInput>,
    /// In name order (the order of the written file).
    outputs: Vec<Output>,
}

impl<'a> MergePlan<'a> {
    pub fn new(config: ModelConfig, members: Vec<&'a MergeInput>, mut outputs: Vec<Output>) -> Self {
        outputs.sort_by(|a, b| a.name.cmp(&b.name));
        Self { config, members, outputs }
    }

    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// Computes one output tensor, reading only the member tensors it needs.
    pub fn compute(&self, output: &Output) -> Result<HostTensor> {
        Ok(match &output.source {
            Source::Average { name, weights } => {
                // Accumulated in f64 one member at a time: one member tensor in memory.
                let mut acc = vec![0.0f64; output.shape.iter().product()];
                for (member, &w) in self.members.iter().zip(weights) {
                    let t = member.read(name)?;
                    for (a, v) in acc.iter_mut().zip(&t.values) {
                        *a += w * *v as f64;
                    }
                }
                HostTensor::new(output.shape.clone(), acc.into_iter().map(|v| v as f32).collect())
            }
            Source::Piece { member, name, cut, noise, reinit } => {
                let mut t = self.members[*member].read(name)?;
                if let Some(noise) = noise {
                    let mut rng = Rng::new(noise.seed);
                    t.values.iter_mut().for_each(|v| *v += (rng.normal() * noise.std) as f32);
                }
                if let Some(reinit) = reinit {
                    reinit.apply(&mut t);
                }
                match *cut {
                    Cut::Whole => t,
                    Cut::Rows { start, len } => rows(&t, start, len),
                    Cut::Columns { start, len } => columns(&t, start, len),
                }
            }
            Source::Given(t) => t.clone(),
        })
    }

    /// The merged tensors in memory.
    pub fn into_tensors(self) -> Result<(ModelConfig, TensorMap)> {
        let mut map = TensorMap::new();
        for o in &self.outputs {
            map.insert(o.name.clone(), self.compute(o)?);
        }
        Ok((self.config, map))
    }

    /// Writes the merged checkpoint folder (model.safetensors, model.ron, `extra` files)
    /// atomically, computing and appending one tensor at a time.
    pub fn write(&self, dir: &Path, extra: &[(&str, String)]) -> Result<()> {
        write_weights_checkpoint(dir, &self.config, extra, |tmp| {
            let layout = self.outputs.iter().map(|o| (o.name.clone(), o.shape.clone())).collect();
            let mut writer = StreamWriter::create(&tmp.join(MODEL_FILE), layout)?;
            for o in &self.outputs {
                writer.write(&o.name, &self.compute(o)?)?;
            }
            writer.finish()
        })
    }
}

/// Rows `start..start+len` of a 2-D tensor.
fn rows(t: &HostTensor, start: usize, len: usize) -> HostTensor {
    let cols = t.shape[1];
    HostTensor::new(vec![len, cols], t.values[start * cols..(start + len) * cols].to_vec())
}

/// Columns `start..start+len` of a 2-D tensor.
fn columns(t: &HostTensor, start: usize, len: usize) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut values = Vec::with_capacity(r * len);
    for i in 0..r {
        values.extend_from_slice(&t.values[i * c + start..i * c + start + len]);
    }
    HostTensor::new(vec![r, len], values)
}
