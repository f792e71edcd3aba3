//! LoRA experts (Hu et al. 2021): a training run may train low-rank adapters on chosen
//! projections instead of the full weights (`lora` in a training config or a recipe stage).
//! The base stays frozen (no gradient, no optimizer state); at the end of the run the adapters
//! are merged into the weights (`merge`), so the checkpoint an expert leaves is a plain model
//! and MiX, BTM and every other merge read it unchanged. The layer itself is
//! `model::linear::Linear`; this file chooses which layers get adapters.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::LanguageModel;
use super::linear::Linear;

/// The projections LoRA can adapt, by the names PEFT's `target_modules` uses.
pub const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// A run's low-rank adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// r: the adapters' rank.
    pub rank: usize,
    /// The update is scaled by alpha / r (PEFT's `lora_alpha`); absent: alpha = r.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Dropout on the adapters' input while training (PEFT's `lora_dropout`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropout: f64,
    /// The projections adapted, in every layer (and every MoE expert); absent: all seven.
    #[serde(default = "all_projections")]
    pub targets: Vec<String>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn all_projections() -> Vec<String> {
    PROJECTIONS.iter().map(|p| p.to_string()).collect()
}

/// What a LoRA run trains, as the trainer's `trainable` name filter: the adapters, and an
/// MoE's routers in full (they start from nothing); everything else stays frozen.
pub fn trainable_names() -> Vec<String> {
    use crate::checkpoint::tensor_names::{ATTENTION_ROUTER_END, ROUTER_END};
    // "_proj.gate.weight": the routers of a per-projection MoE (MixtureKit's BTX).
    ["lora_a", "lora_b", ROUTER_END, ATTENTION_ROUTER_END, "_proj.gate.weight"].iter().map(|n| n.to_string()).collect()
}

impl LoraConfig {
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64)
    }

    /// Checks the settings; `origin` names the file (and field path) in the error.
    pub fn validate(&self, origin: &str) -> Result<()> {
        if self.rank == 0 {
            bail!("{origin}: field `lora.rank`: must be at least 1, found 0");
        }
        if let Some(alpha) = self.alpha
            && !(alpha > 0.0 && alpha.is_finite())
        {
            bail!("{origin}: field `lora.alpha`: must be > 0, found {alpha}");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("{origin}: field `lora.dropout`: must be in [0, 1), found {}", self.dropout);
        }
        if self.targets.is_empty() {
            bail!("{origin}: field `lora.targets`: names no projection (expected some of {PROJECTIONS:?})");
        }
        if let Some(unknown) = self.targets.iter().find(|t| !PROJECTIONS.contains(&t.as_str())) {
            bail!("{origin}: field `lora.targets`: unknown projection `{unknown}` (expected some of {PROJECTIONS:?})");
        }
        Ok(())
    }
}

impl LoraConfig {
    /// Adapter parameters a token passes through in `model` (r x (in + out) per targeted
    /// projection of every layer; in an MoE layer, of the experts a token is routed to and
    /// the shared expert).
    pub fn active_adapter_params(&self, model: &crate::config::ModelConfig) -> usize {
        let (d, q, kv) = (model.d_model, model.q_dim(), model.kv_heads() * model.head_dim());
        let targeted = |name: &str| self.targets.iter().any(|t| t == name);
        let adapter = |name: &str, d_in: usize, d_out: usize| if targeted(name) { self.rank * (d_in + d_out) } else { 0 };
        let attention = adapter("q_proj", d, q) + adapter("k_proj", d, kv) + adapter("v_proj", d, kv) + adapter("o_proj", q, d);
        let ffn = |d_ff: usize| adapter("gate_proj", d, d_ff) + adapter("up_proj", d, d_ff) + adapter("down_proj", d_ff, d);
        (0..model.n_layers)
            .map(|layer| {
                attention
                    + match &model.moe {
                        Some(moe) if moe.is_moe_layer(layer) => {
                            moe.active_experts() * ffn(moe.expert_d_ff.unwrap_or(model.d_ff)) + if moe.shared_expert { ffn(model.d_ff) } else { 0 }
                        }
                        _ => ffn(model.d_ff),
                    }
            })
            .sum()
    }

    /// Training FLOPs per token of a LoRA run: the forward pass (2 per weight) and the
    /// gradient of each layer's input (2 per weight) through the frozen base, no gradient of
    /// its weights; the adapters' forward and backward in full (6 per parameter); attention's
    /// score products as in a full run. `ModelConfig::train_flops_per_token` is the full
    /// run's 6 per weight.
    pub fn train_flops_per_token(&self, model: &crate::config::ModelConfig, seq_len: usize) -> f64 {
        let full = model.train_flops_per_token(seq_len);
        let weights_part = 6.0 * model.matmul_params() as f64;
        full - weights_part / 3.0 + 6.0 * self.active_adapter_params(model) as f64
    }
}

/// `model` with a fresh adapter on every targeted projection (A drawn from `seed` and the
/// layer's path, B zero: the model's outputs are unchanged until it trains).
pub fn attach(model: LanguageModel, config: &LoraConfig) -> Result<LanguageModel> {
    let attention_targeted = config.targets.iter().any(|t| ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&t.as_str()));
    if attention_targeted && model.layers.iter().any(|b| b.attention_experts.is_some()) {
        bail!("LoRA on attention experts (BAM) is not supported: target only the FFN projections (gate_proj, up_proj, down_proj)");
    }
    let (rank, alpha, dropout) = (config.rank, config.alpha(), config.dropout);
    Ok(map_projections(model, |path, name, layer| {
        if !config.targets.iter().any(|t| t == name) {
            return layer;
        }
        layer.with_adapter_of_rank(rank, alpha, dropout, super::init::fnv1a(path))
    }))
}

/// `model` with every adapter merged into its weight (W + (alpha / r) A B) and removed.
pub fn merge(model: LanguageModel) -> LanguageModel {
    map_projections(model, |_, _, layer| layer.merged())
}

/// Whether any projection of `model` carries an adapter.
pub fn has_adapters(model: &LanguageModel) -> bool {
    let mut found = false;
    // A module's clone shares its tensors: nothing is copied.
    map_projections(model.clone(), |_, _, layer| {
        found |= layer.lora_a.is_some();
        layer
    });
    found
}

/// Calls `f` with each adaptable projection's path, name and layer, and puts back what it
/// returns: attention's four projections and every FFN's three (dense, MoE experts, the
/// shared expert, a per-projection MoE's experts and plain projections); never the routers.
fn map_projections(mut model: LanguageModel, mut f: impl FnMut(&str, &str, Linear) -> Linear) -> LanguageModel {
    use super::ffn::FeedForward;
    let ffn = |path: String, ffn: FeedForward, f: &mut dyn FnMut(&str, &str, Linear) -> Linear| FeedForward {
        gate_proj: f(&format!("{path}.gate_proj"), "gate_proj", ffn.gate_proj),
        up_proj: f(&format!("{path}.up_proj"), "up_proj", ffn.up_proj),
        down_proj: f(&format!("{path}.down_proj"), "down_proj", ffn.down_proj),
        geglu: ffn.geglu,
    };
    model.layers = std::mem::take(&mut model.layers)
        .into_iter()
        .enumerate()
        .map(|(l, mut block)| {
            if let Some(mut a) = block.self_attn.take() {
                let p = format!("layers.{l}.self_attn");
                a.q_proj = f(&format!("{p}.q_proj"), "q_proj", a.q_proj);
                a.k_proj = f(&format!("{p}.k_proj"), "k_proj", a.k_proj);
                a.v_proj = f(&format!("{p}.v_proj"), "v_proj", a.v_proj);
                a.o_proj = f(&format!("{p}.o_proj"), "o_proj", a.o_proj);
                block.self_attn = Some(a);
            }
            block.mlp = block.mlp.take().map(|m| ffn(format!("layers.{l}.mlp"), m, &mut f));
            if let Some(mut moe) = block.block_sparse_moe.take() {
                let experts = std::mem::take(&mut moe.experts);
                moe.experts = experts.into_iter().enumerate().map(|(e, m)| ffn(format!("layers.{l}.block_sparse_moe.experts.{e}"), m, &mut f)).collect();
                moe.shared_expert = moe.shared_expert.take().map(|m| ffn(format!("layers.{l}.block_sparse_moe.shared_expert"), m, &mut f));
                block.block_sparse_moe = Some(moe);
            }
            if let Some(mut moe) = block.projection_moe.take() {
                let p = format!("layers.{l}.projection_moe");
                let mut routed = |name: &str, part: super::projection_moe::ProjectionExperts| super::projection_moe::ProjectionExperts {
                    experts: part.experts.into_iter().enumerate().map(|(e, x)| f(&format!("{p}.{name}.experts.{e}"), name, x)).collect(),
                    plain: part.plain.map(|x| f(&format!("{p}.{name}.plain"), name, x)),
                    gate: part.gate,
                };
                moe.gate_proj = routed("gate_proj", moe.gate_proj);
                moe.up_proj = routed("up_proj", moe.up_proj);
                moe.down_proj = routed("down_proj", moe.down_proj);
                block.projection_moe = Some(moe);
            }
            block
        })
        .collect();
    model
}
