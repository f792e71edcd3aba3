//! BTX's MiX step (Sukhbaatar et al. 2024, §2): in every layer the members' FFNs become
//! the experts of an MoE layer (Mixtral layout), every other tensor is the weighted average
//! of the members' tensors, and a router W_l (E x d_model) is added per layer. The seed may
//! be kept as one more, generalist, expert.
//!
//! Split experts (one of the paper's ablations): each member FFN is cut into C chunks along its
//! hidden dimension, giving E*C experts of width d_ff/C with top-(k*C) routing.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::plan::{Cut, MergePlan, Noise, Output, Reinit, Source, outputs_like};
use super::router_init::{RouterInit, random_router, router_from_directions};
use super::{MergeInput, check_same_architecture, ffn_tensor, normalized_weights};
use crate::checkpoint::tensor_names::{self, Projection};
use crate::config::{ModelConfig, is_key_value_part};
use crate::model::moe_config::AttentionExpertsConfig;
use crate::model::moe_config::{Balance, MoeConfig, RoutedProjection, Routing, default_load_balance, default_top_k};

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
    /// A shared expert beside the routed ones, and whose FFN it is.
    pub shared_expert: SharedExpert,
    /// MixtureKit's BTX granularity: a router per listed FFN projection (empty: one router
    /// per FFN). The projections not listed are the members' average.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routed_projections: Vec<RoutedProjection>,
}

/// Where the always-active shared expert's FFN comes from (DeepSeekMoE, Dai et al. 2024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SharedExpert {
    /// No shared expert (BTX, Mixtral).
    #[default]
    None,
    /// The seed's FFN; in BTX the seed is then the shared expert instead of a routed one.
    Seed,
    /// The weighted average of every member's FFN (the routed experts stay as they are).
    Average,
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
            shared_expert: SharedExpert::None,
            routed_projections: Vec::new(),
        }
    }
}

impl MoeOptions {
    /// The merged model's MoE config for `members` FFNs. Destructures both structs, so a
    /// field added to either fails to compile here until it is mapped.
    pub fn to_moe_config(&self, members: usize, d_ff: usize) -> MoeConfig {
        let Self { top_k, routing, load_balance, balance, router_z_loss, freeze_experts, split, router_init: _, seed: _, shared_expert, routed_projections } =
            self.clone();
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
            shared_expert: shared_expert != SharedExpert::None,
            routed_projections,
        }
    }
}

/// Per layer, per member: the vector its router row is built from (router_init Embedding or
/// Hidden). `None` for random routers.
pub type RouterDirections = Option<Vec<Vec<Vec<f32>>>>;

/// The attention of an MoE merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergedAttention {
    /// The members' attentions averaged, as every other shared tensor (BTX).
    #[default]
    Averaged,
    /// Each member's attention kept as an attention expert, softly routed (BAM); with
    /// `shared_kv`, the key and value projections averaged into one that all share.
    Experts { shared_kv: bool },
}

/// How each routed copy of an FFN is made to differ from the FFN it copies (upcycling, where
/// every expert starts from the same FFN).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Perturbation {
    /// Std of Gaussian noise added to every weight.
    pub noise_std: f64,
    /// Drop-Upcycling's ratio r of hidden units re-initialised (0 = plain upcycling).
    pub drop_ratio: f64,
}

/// BTX MiX of `experts` (and the `seed`, kept as a generalist expert, last).
pub fn mix<'a>(
    experts: &'a [MergeInput],
    seed: Option<&'a MergeInput>,
    weights: Option<&[f64]>,
    options: &MoeOptions,
    directions: RouterDirections,
) -> Result<MergePlan<'a>> {
    mix_with_attention(experts, seed, weights, options, directions, MergedAttention::Averaged)
}

/// BAM (Zhang et al. 2024): BTX MiX that also keeps every member's attention, as softly
/// routed attention experts (`model::attention_experts`).
pub fn bam<'a>(
    experts: &'a [MergeInput],
    seed: Option<&'a MergeInput>,
    weights: Option<&[f64]>,
    options: &MoeOptions,
    directions: RouterDirections,
    shared_kv: bool,
) -> Result<MergePlan<'a>> {
    mix_with_attention(experts, seed, weights, options, directions, MergedAttention::Experts { shared_kv })
}

fn mix_with_attention<'a>(
    experts: &'a [MergeInput],
    seed: Option<&'a MergeInput>,
    weights: Option<&[f64]>,
    options: &MoeOptions,
    directions: RouterDirections,
    attention: MergedAttention,
) -> Result<MergePlan<'a>> {
    let members: Vec<&MergeInput> = experts.iter().chain(seed).collect();
    check_same_architecture(&members)?;
    let weights = normalized_weights(weights, members.len())?;
    let average = |name: &str| Source::Average { name: name.to_string(), weights: weights.clone() };
    let attention_experts = attention != MergedAttention::Averaged;
    let shared = |n: &str| ffn_tensor(n).is_none() && !(attention_experts && attention_tensor(n).is_some());
    let mut outputs = outputs_like(members[0], shared, average);
    let routed: Vec<usize> = match options.shared_expert {
        SharedExpert::Seed if seed.is_none() => bail!("shared_expert Seed makes the seed the shared expert, but no seed is given (--seed, or keep_seed in a recipe)"),
        SharedExpert::Seed => {
            let seed_member = members.len() - 1;
            outputs.extend(shared_expert_outputs(members[0], |n| Source::whole(seed_member, n)));
            (0..experts.len()).collect()
        }
        SharedExpert::Average => {
            outputs.extend(shared_expert_outputs(members[0], average));
            (0..members.len()).collect()
        }
        SharedExpert::None => (0..members.len()).collect(),
    };
    if let MergedAttention::Experts { shared_kv } = attention {
        outputs.extend(attention_expert_outputs(&members[0].config, members.len(), shared_kv, &weights, options.seed, &directions));
    }
    let mut plan = assemble_moe(members[0].config.clone(), members.clone(), outputs, &routed, Perturbation::default(), options, directions)?;
    if let MergedAttention::Experts { shared_kv } = attention {
        plan.config.attention_experts = Some(AttentionExpertsConfig { num_experts: members.len(), shared_kv });
    }
    Ok(plan)
}

/// Splits an attention tensor name `model.layers.L.self_attn.P` into (L, P).
pub fn attention_tensor(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    Some((layer.parse().ok()?, rest.strip_prefix("self_attn.")?))
}

/// The shared expert of every layer: the FFN tensors of `like`, renamed, from `source`.
pub(crate) fn shared_expert_outputs(like: &MergeInput, source: impl Fn(&str) -> Source) -> Vec<Output> {
    let mut outputs = outputs_like(like, |n| ffn_tensor(n).is_some(), source);
    for o in &mut outputs {
        let (layer, proj) = ffn_tensor(&o.name).expect("filtered to FFN tensors");
        o.name = tensor_names::shared_expert_ffn(layer, proj);
    }
    outputs
}

/// BAM's attention experts: member e's attention as attention expert e (with `shared_kv`,
/// every member's keys and values averaged into one shared projection), and an attention
/// router per layer (from the members' router directions when given).
fn attention_expert_outputs(config: &ModelConfig, members: usize, shared_kv: bool, weights: &[f64], seed: u64, directions: &RouterDirections) -> Vec<Output> {
    let mut outputs = Vec::new();
    for layer in 0..config.n_layers {
        for e in 0..members {
            outputs.extend(member_attention_outputs(config, layer, e, e, shared_kv));
        }
        if shared_kv {
            for (part, shape) in config.attention_parts().into_iter().filter(|(part, _)| is_key_value_part(part)) {
                let source = Source::Average { name: tensor_names::self_attention(layer, part), weights: weights.to_vec() };
                outputs.push(Output { name: tensor_names::shared_attention(layer, part), shape, source });
            }
        }
        let router = match directions {
            Some(dirs) => router_from_directions(&dirs[layer]),
            None => random_router(members, config.d_model, layer, seed.wrapping_add(ATTENTION_ROUTER_SALT)),
        };
        outputs.push(Output { name: tensor_names::shared_attention(layer, "gate.weight"), shape: router.shape.clone(), source: Source::Given(router) });
    }
    outputs
}

/// Member `member`'s attention in layer `layer` as attention expert `expert`: every tensor of
/// it (projections, biases, q/k norms) but the keys' and values' when they are shared.
pub(crate) fn member_attention_outputs(config: &ModelConfig, layer: usize, member: usize, expert: usize, shared_kv: bool) -> Vec<Output> {
    config
        .attention_parts()
        .into_iter()
        .filter(|(part, _)| !(shared_kv && is_key_value_part(part)))
        .map(|(part, shape)| Output {
            name: tensor_names::attention_expert(layer, expert, part),
            shape,
            source: Source::whole(member, &tensor_names::self_attention(layer, part)),
        })
        .collect()
}

/// Keeps the attention routers' random draws apart from the FFN routers'.
const ATTENTION_ROUTER_SALT: u64 = 0xA77E_0000;

/// Builds the MoE plan: `outputs` (every tensor but the routed experts and routers), the FFN
/// of member `ffn_sources[e]` as expert e (cut into `split` pieces, perturbed per expert), a
/// router per layer.
pub(crate) fn assemble_moe<'a>(
    dense: ModelConfig,
    members: Vec<&'a MergeInput>,
    mut outputs: Vec<Output>,
    ffn_sources: &[usize],
    perturbation: Perturbation,
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
    let shapes = members[0].shapes();
    if !moe.routed_projections.is_empty() {
        moe.validate("the merge's MoE options", dense.n_layers)?;
        if split > 1 {
            bail!("a router per projection (routed_projections) routes whole FFN projections; split must be 1, found {split}");
        }
        outputs.extend(projection_moe_outputs(&dense, members.len(), ffn_sources, &moe, options, &directions));
        let config = ModelConfig { moe: Some(moe), ..dense };
        return Ok(MergePlan::new(config, members, outputs));
    }
    for layer in 0..dense.n_layers {
        for (e, &member) in ffn_sources.iter().enumerate() {
            let expert_seed = options.seed ^ (0xD20F_0000 + ((layer as u64) << 20) + e as u64);
            let perturb = |name: &str| {
                let salt = options.seed ^ name_hash(name) ^ (0xC0FFEE + e as u64);
                let noise = (perturbation.noise_std > 0.0).then_some(Noise { std: perturbation.noise_std, seed: salt });
                let reinit = (perturbation.drop_ratio > 0.0).then_some(Reinit {
                    ratio: perturbation.drop_ratio,
                    index_seed: expert_seed,
                    value_seed: salt.rotate_left(17),
                    hidden_in_rows: !name.contains("down_proj"),
                });
                (noise, reinit)
            };
            outputs.extend(ffn_expert_outputs(layer, member, e * split, split, &shapes, perturb)?);
        }
        let router = match (&directions, options.router_init) {
            (Some(dirs), RouterInit::Embedding | RouterInit::Hidden) => {
                let repeated: Vec<Vec<f32>> =
                    ffn_sources.iter().flat_map(|&m| std::iter::repeat_n(dirs[layer][m].clone(), split)).collect();
                router_from_directions(&repeated)
            }
            _ => random_router(moe.num_experts, dense.d_model, layer, options.seed),
        };
        outputs.push(Output { name: tensor_names::router(layer), shape: router.shape.clone(), source: Source::Given(router) });
    }
    let config = ModelConfig { moe: Some(moe), ..dense };
    Ok(MergePlan::new(config, members, outputs))
}

/// MixtureKit's BTX from dense members: in every layer, each routed projection's experts are
/// member `ffn_sources[e]`'s projection and it gets its own router (gate and up routers as the
/// FFN router would be built, down's random over d_ff); a projection not routed is the
/// average of the members' (uniform over `ffn_sources`).
fn projection_moe_outputs(dense: &ModelConfig, members: usize, ffn_sources: &[usize], moe: &MoeConfig, options: &MoeOptions, directions: &RouterDirections) -> Vec<Output> {
    let mut weights = vec![0.0; members];
    for &m in ffn_sources {
        weights[m] += 1.0 / ffn_sources.len() as f64;
    }
    let mut outputs = Vec::new();
    for layer in 0..dense.n_layers {
        for proj in Projection::ALL {
            let name = tensor_names::dense_ffn(layer, proj);
            let shape = proj.shape(dense.d_model, dense.d_ff);
            if !moe.routes(proj) {
                outputs.push(Output { name: tensor_names::projection_plain(layer, proj), shape, source: Source::Average { name, weights: weights.clone() } });
                continue;
            }
            for (e, &member) in ffn_sources.iter().enumerate() {
                outputs.push(Output { name: tensor_names::projection_expert(layer, proj, e), shape: shape.clone(), source: Source::whole(member, &name) });
            }
            let router = match (directions, options.router_init, proj) {
                (Some(dirs), RouterInit::Embedding | RouterInit::Hidden, Projection::Gate | Projection::Up) => {
                    router_from_directions(&ffn_sources.iter().map(|&m| dirs[layer][m].clone()).collect::<Vec<_>>())
                }
                // Each router its own draw; down's reads the d_ff hidden units.
                _ => random_router(moe.num_experts, shape[1], layer, options.seed ^ name_hash(&name)),
            };
            outputs.push(Output { name: tensor_names::projection_router(layer, proj), shape: router.shape.clone(), source: Source::Given(router) });
        }
    }
    outputs
}

/// Member `member`'s FFN in layer `layer` as routed experts `first..first + split` (cut along
/// its hidden dimension when `split` > 1), each projection perturbed as `perturb` says.
pub(crate) fn ffn_expert_outputs(
    layer: usize,
    member: usize,
    first: usize,
    split: usize,
    shapes: &std::collections::BTreeMap<&str, &[usize]>,
    perturb: impl Fn(&str) -> (Option<Noise>, Option<Reinit>),
) -> Result<Vec<Output>> {
    let mut outputs = Vec::new();
    for proj in Projection::ALL {
        let name = tensor_names::dense_ffn(layer, proj);
        let Some(&shape) = shapes.get(name.as_str()) else { bail!("tensor `{name}` is missing") };
        let (noise, reinit) = perturb(&name);
        let chunk = shape[proj.hidden_dim()] / split;
        for c in 0..split {
            // The hidden dimension is down_proj's columns and the others' rows.
            let (cut, piece_shape) = match (split, proj) {
                (1, _) => (Cut::Whole, shape.to_vec()),
                (_, Projection::Down) => (Cut::Columns { start: c * chunk, len: chunk }, vec![shape[0], chunk]),
                _ => (Cut::Rows { start: c * chunk, len: chunk }, vec![chunk, shape[1]]),
            };
            let source = Source::Piece { member, name: name.clone(), cut, noise, reinit };
            outputs.push(Output { name: tensor_names::expert_ffn(layer, first + c, proj), shape: piece_shape, source });
        }
    }
    Ok(outputs)
}

/// FNV-1a of a tensor name: seeds per-tensor noise independently of the order tensors are
/// computed in.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
