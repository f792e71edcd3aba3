//! BTX's MiX step (Sukhbaatar et al. 2024): in every layer the members' FFNs become the
//! experts of an MoE layer (Mixtral layout), every other tensor is the weighted average of
//! the members' tensors, and a router W_l (E x d_model) is added per layer. The seed may be
//! kept as one more, generalist, expert.
//!
//! Split experts (a BTX ablation): each member FFN is cut into C chunks along its hidden
//! dimension, giving E*C experts of width d_ff/C with top-(k*C) routing.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::router_init::{RouterInit, random_router, router_from_directions};
use super::{MergeInput, check_same_architecture, expert_tensor_name, ffn_tensor, normalized_weights, router_tensor_name, weighted_average};
use crate::checkpoint::tensor_file::{HostTensor, TensorMap};
use crate::config::ModelConfig;
use crate::model::moe_config::{MoeConfig, Routing};

/// The MoE a merge produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeOptions {
    #[serde(default = "crate::model::moe_config::default_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub routing: Routing,
    #[serde(default = "crate::model::moe_config::default_load_balance")]
    pub load_balance: f64,
    #[serde(default)]
    pub router_z_loss: f64,
    #[serde(default)]
    pub freeze_experts: bool,
    /// Cut each member FFN into this many experts (1 = whole FFNs).
    #[serde(default = "one")]
    pub split: usize,
    #[serde(default)]
    pub router_init: RouterInit,
    /// Seeds the random routers (and upcycling noise).
    #[serde(default)]
    pub seed: u64,
}

fn one() -> usize {
    1
}

impl Default for MoeOptions {
    fn default() -> Self {
        Self {
            top_k: crate::model::moe_config::default_top_k(),
            routing: Routing::TopK,
            load_balance: crate::model::moe_config::default_load_balance(),
            router_z_loss: 0.0,
            freeze_experts: false,
            split: 1,
            router_init: RouterInit::Random,
            seed: 0,
        }
    }
}

/// Per layer, per member: the vector its router row is built from (router_init Embedding or
/// Hidden). `None` for random routers.
pub type RouterDirections = Option<Vec<Vec<Vec<f32>>>>;

/// BTX MiX of `experts` (and the `seed`, kept as a generalist expert, last).
pub fn mix(
    experts: &[MergeInput],
    seed: Option<&MergeInput>,
    weights: Option<&[f64]>,
    options: &MoeOptions,
    directions: RouterDirections,
) -> Result<(ModelConfig, TensorMap)> {
    let members: Vec<&MergeInput> = experts.iter().chain(seed).collect();
    check_same_architecture(&members)?;
    let w = normalized_weights(weights, members.len())?;
    let mut shared = TensorMap::new();
    for name in members[0].tensors.keys().filter(|n| ffn_tensor(n).is_none()) {
        let tensors: Vec<_> = members.iter().map(|m| &m.tensors[name]).collect();
        shared.insert(name.clone(), weighted_average(&tensors, &w));
    }
    let member_tensors: Vec<&TensorMap> = members.iter().map(|m| &m.tensors).collect();
    assemble_moe(&members[0].config, shared, &member_tensors, options, directions)
}

/// Builds the MoE tensors: `shared` (every non-FFN tensor), each member's FFN as expert(s),
/// and a router per layer.
pub fn assemble_moe(
    dense: &ModelConfig,
    mut shared: TensorMap,
    members: &[&TensorMap],
    options: &MoeOptions,
    directions: RouterDirections,
) -> Result<(ModelConfig, TensorMap)> {
    let split = options.split.max(1);
    if dense.d_ff % split != 0 {
        bail!("cannot split experts into {split} chunks: d_ff ({}) is not divisible by {split}", dense.d_ff);
    }
    let num_experts = members.len() * split;
    let top_k = options.top_k * split;
    if top_k > num_experts {
        bail!("top_k ({}) x split ({split}) is more than the {num_experts} experts", options.top_k);
    }
    let chunk = dense.d_ff / split;
    for layer in 0..dense.n_layers {
        for (m, tensors) in members.iter().enumerate() {
            for proj in ["gate_proj", "up_proj", "down_proj"] {
                let name = format!("model.layers.{layer}.mlp.{proj}.weight");
                let Some(t) = tensors.get(&name) else { bail!("tensor `{name}` is missing") };
                for c in 0..split {
                    let piece = if proj == "down_proj" { columns(t, c * chunk, chunk) } else { rows(t, c * chunk, chunk) };
                    shared.insert(expert_tensor_name(layer, m * split + c, proj), piece);
                }
            }
        }
        let router = match (&directions, options.router_init) {
            (Some(dirs), RouterInit::Embedding | RouterInit::Hidden) => {
                let repeated: Vec<Vec<f32>> =
                    dirs[layer].iter().flat_map(|d| std::iter::repeat_n(d.clone(), split)).collect();
                router_from_directions(&repeated)
            }
            _ => random_router(num_experts, dense.d_model, layer, options.seed),
        };
        shared.insert(router_tensor_name(layer), router);
    }
    let config = ModelConfig {
        moe: Some(MoeConfig {
            num_experts,
            top_k,
            routing: options.routing.clone(),
            layers: None,
            expert_d_ff: (split > 1).then_some(chunk),
            load_balance: options.load_balance,
            router_z_loss: options.router_z_loss,
            freeze_experts: options.freeze_experts,
        }),
        ..dense.clone()
    };
    Ok((config, shared))
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
