//! BTX's MiX step (Sukhbaatar et al. 2024, §2): in every layer the members' FFNs become
//! the experts of an MoE layer (Mixtral layout), every other tensor is the weighted average
//! of the members' tensors, and a router W_l (E x d_model) is added per layer. The seed may
//! be kept as one more, generalist, expert.
//!
//! Split experts (one of the paper's ablations): each member FFN is cut into C chunks along its
//! hidden dimension, giving E*C experts of width d_ff/C with top-(k*C) routing.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::plan::{Cut, MergePlan, Noise, Output, Source, outputs_like};
use super::router_init::{RouterInit, random_router, router_from_directions};
use super::{MergeInput, check_same_architecture, expert_tensor_name, ffn_tensor, normalized_weights, router_tensor_name};
use crate::config::ModelConfig;
use crate::model::moe_config::{Balance, MoeConfig, Routing, default_load_balance, default_top_k};

/// The MoE a merge produces: the routing fields of `MoeConfig` (one conversion,
/// `to_moe_config`, that lists every field of both) plus how the merge builds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoeOptions {
    pub top_k: usize,
    pub routing: Routing,
    pub load_balance: f64,
    /// Per layer (BTX) or pooled over layers (Mixtral).
    pub balance: Balance,
    pub router_z_loss: f64,
    pub freeze_experts: bool,
    /// Cut each member FFN into this many experts (1 = whole FFNs).
    pub split: usize,
    pub router_init: RouterInit,
    /// Seeds the random routers (and upcycling noise).
    pub seed: u64,
}

impl Default for MoeOptions {
    fn default() -> Self {
        Self {
            top_k: default_top_k(),
            routing: Routing::default(),
            load_balance: default_load_balance(),
            balance: Balance::default(),
            router_z_loss: 0.0,
            freeze_experts: false,
            split: 1,
            router_init: RouterInit::default(),
            seed: 0,
        }
    }
}

impl MoeOptions {
    /// The merged model's MoE config for `members` FFNs. Destructures both structs, so a
    /// field added to either fails to compile here until it is mapped.
    pub fn to_moe_config(&self, members: usize, d_ff: usize) -> MoeConfig {
        let Self { top_k, routing, load_balance, balance, router_z_loss, freeze_experts, split, router_init: _, seed: _ } = self.clone();
        let split = split.max(1);
        MoeConfig {
            num_experts: members * split,
            top_k: top_k * split,
            routing,
            layers: None,
            expert_d_ff: (split > 1).then_some(d_ff / split),
            load_balance,
            balance,
            router_z_loss,
            freeze_experts,
        }
    }
}

/// Per layer, per member: the vector its router row is built from (router_init Embedding or
/// Hidden). `None` for random routers.
pub type RouterDirections = Option<Vec<Vec<Vec<f32>>>>;

/// BTX MiX of `experts` (and the `seed`, kept as a generalist expert, last).
pub fn mix<'a>(
    experts: &'a [MergeInput],
    seed: Option<&'a MergeInput>,
    weights: Option<&[f64]>,
    options: &MoeOptions,
    directions: RouterDirections,
) -> Result<MergePlan<'a>> {
    let members: Vec<&MergeInput> = experts.iter().chain(seed).collect();
    check_same_architecture(&members)?;
    let weights = normalized_weights(weights, members.len())?;
    let average = |name: &str| Source::Average { name: name.to_string(), weights: weights.clone() };
    let shared = outputs_like(members[0], |n| ffn_tensor(n).is_none(), average);
    let ffn_sources: Vec<usize> = (0..members.len()).collect();
    let config = members[0].config.clone();
    assemble_moe(config, members, shared, &ffn_sources, None, options, directions)
}

/// Builds the MoE plan: `shared` (every non-FFN tensor), the FFN of member `ffn_sources[e]`
/// as expert e (cut into `split` pieces, with `noise` seeded per expert), a router per layer.
pub(crate) fn assemble_moe<'a>(
    dense: ModelConfig,
    members: Vec<&'a MergeInput>,
    mut outputs: Vec<Output>,
    ffn_sources: &[usize],
    noise: Option<(f64, u64)>,
    options: &MoeOptions,
    directions: RouterDirections,
) -> Result<MergePlan<'a>> {
    let split = options.split.max(1);
    if dense.d_ff % split != 0 {
        bail!("cannot split experts into {split} chunks: d_ff ({}) is not divisible by {split}", dense.d_ff);
    }
    let moe = options.to_moe_config(ffn_sources.len(), dense.d_ff);
    if moe.top_k > moe.num_experts {
        bail!("top_k ({}) x split ({split}) is more than the {} experts", options.top_k, moe.num_experts);
    }
    let chunk = dense.d_ff / split;
    let shapes = members[0].shapes();
    for layer in 0..dense.n_layers {
        for (e, &member) in ffn_sources.iter().enumerate() {
            for proj in ["gate_proj", "up_proj", "down_proj"] {
                let name = format!("model.layers.{layer}.mlp.{proj}.weight");
                let Some(&shape) = shapes.get(name.as_str()) else { bail!("tensor `{name}` is missing") };
                let noise = noise.map(|(std, seed)| Noise { std, seed: seed ^ name_hash(&name) ^ (0xC0FFEE + e as u64) });
                for c in 0..split {
                    // The hidden dimension is down_proj's columns and the others' rows.
                    let (cut, piece_shape) = match (split, proj) {
                        (1, _) => (Cut::Whole, shape.to_vec()),
                        (_, "down_proj") => (Cut::Columns { start: c * chunk, len: chunk }, vec![shape[0], chunk]),
                        _ => (Cut::Rows { start: c * chunk, len: chunk }, vec![chunk, shape[1]]),
                    };
                    outputs.push(Output {
                        name: expert_tensor_name(layer, e * split + c, proj),
                        shape: piece_shape,
                        source: Source::Piece { member, name: name.clone(), cut, noise },
                    });
                }
            }
        }
        let router = match (&directions, options.router_init) {
            (Some(dirs), RouterInit::Embedding | RouterInit::Hidden) => {
                let repeated: Vec<Vec<f32>> =
                    dirs[layer].iter().flat_map(|d| std::iter::repeat_n(d.clone(), split)).collect();
                router_from_directions(&repeated)
            }
            _ => random_router(moe.num_experts, dense.d_model, layer, options.seed),
        };
        outputs.push(Output { name: router_tensor_name(layer), shape: router.shape.clone(), source: Source::Given(router) });
    }
    let config = ModelConfig { moe: Some(moe), ..dense };
    Ok(MergePlan::new(config, members, outputs))
}

/// FNV-1a of a tensor name: seeds per-tensor noise independently of the order tensors are
/// computed in.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
