//! A training run's memory, planned before anything is allocated: weights, gradients, AdamW's
//! two moments, the activations the backward pass keeps at the run's batch and sequence length,
//! and the LM head's logits. `btx train --plan` prints it; a run whose plan exceeds the
//! device's memory stops before its first allocation, naming what to change and by how much.
//!
//! The activation term counts what this engine's layers keep per token for the backward pass
//! (f32): attention keeps its input and normalised input, q, k and v (and q, k after RoPE), its
//! probabilities (heads x sequence) and output, o_proj's output; the FFN its input, normalised
//! input, gate, up, the gated product and down's output; an MoE layer the router's logits and,
//! per routed copy of a token, its input and the expert's three hidden vectors. Burn's
//! balanced activation checkpointing recomputes only memory-bound operations, and the large
//! activations here are kept by compute-bound ones (the products, attention, SwiGLU, the head):
//! measured, it saves nothing (bench/RESULTS.md), so the plan counts it as saving nothing. The
//! head is fused
//! with its cross-entropy on the CPU (chunks of at most 64M logits); elsewhere the logits, their
//! softmax and gradient are whole [tokens x vocabulary] tensors.

use anyhow::{Result, bail};

use super::TrainConfig;
use super::precision::FrozenPrecision;
use crate::checkpoint::tensor_names::Projection;
use crate::config::ModelConfig;

const F32: f64 = 4.0;
/// What the process holds besides the model: the runtime, the tokenizer, the data's
/// memory maps, allocator slack.
const RUNTIME_BYTES: f64 = 60e6;
/// Logits the fused head holds at once (`kernels::cross_entropy`).
const FUSED_HEAD_LOGITS: f64 = 64.0 * 1024.0 * 1024.0;

/// One part of the plan, in bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlanPart {
    pub name: &'static str,
    pub bytes: f64,
    /// How it was counted.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryPlan {
    pub parts: Vec<PlanPart>,
    /// Bytes of activations per sequence of the batch (what a smaller batch saves).
    pub activations_per_sequence: f64,
}

impl MemoryPlan {
    pub fn total(&self) -> f64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    fn part(&self, name: &str) -> f64 {
        self.parts.iter().filter(|p| p.name == name).map(|p| p.bytes).sum()
    }

    /// The plan as a table, against `available` bytes where known.
    pub fn table(&self, available: Option<f64>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            out += &format!("  {:<18} {:>9}  {}\n", p.name, gb(p.bytes), p.detail);
        }
        out += &format!("  {:<18} {:>9}", "expected peak", gb(self.total()));
        if let Some(a) = available {
            out += &format!("  (device memory available: {})", gb(a));
        }
        out
    }

    /// Errors, naming what would make it fit and by how much, if the plan exceeds `available`.
    pub fn check_fits(&self, config: &TrainConfig, available: f64, origin: &str) -> Result<()> {
        let (total, over) = (self.total(), self.total() - available);
        if over <= 0.0 {
            return Ok(());
        }
        let mut fixes = Vec::new();
        let fixed = total - self.part("activations");
        let fitting_batch = ((available - fixed) / self.activations_per_sequence).floor();
        if fitting_batch >= 1.0 {
            fixes.push(format!("`batch_size: {}` (from {}; with `grad_accum: {}` for the same tokens per step)", fitting_batch, config.batch_size, (config.batch_size as f64 / fitting_batch).ceil() as usize * config.grad_accum));
        }
        if config.lora.is_none() {
            let lora = crate::model::lora::LoraConfig { rank: 16, alpha: None, dropout: 0.0, targets: crate::model::lora::PROJECTIONS.iter().map(|p| p.to_string()).collect() };
            let with_lora = plan(&TrainConfig { lora: Some(lora), trainable: None, ..config.clone() }).total();
            fixes.push(format!("`lora: (rank: 16, ...)` on the seven projections ({} less)", gb(total - with_lora)));
        }
        if config.frozen_precision.is_default() && config.freezes_weights() {
            let half = plan(&TrainConfig { frozen_precision: FrozenPrecision::BF16, ..config.clone() }).total();
            fixes.push(format!("`frozen_precision: BF16` (F16 on WGPU) for the frozen weights ({} less)", gb(total - half)));
        }
        bail!(
            "{origin}: this run needs about {} of memory and the device has {} available ({} too much):\n{}\nto fit, change one of: {}",
            gb(total),
            gb(available),
            gb(over),
            self.table(Some(available)),
            fixes.join("; ")
        )
    }
}

pub fn gb(bytes: f64) -> String {
    format!("{:.2} GB", bytes / 1e9)
}

/// Parameters of `model` that train under `config` (LoRA: the adapters), and all of them.
fn parameter_counts(config: &TrainConfig) -> (f64, f64) {
    let tensors = crate::hf::config::expected_tensors(&config.model);
    let all: usize = tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let trained: usize = match (&config.lora, &config.trainable) {
        // An adapter of rank r on a [out, in] projection: r x (in + out), every expert's.
        (Some(lora), _) => tensors
            .iter()
            .filter(|(name, shape)| shape.len() == 2 && lora.targets.iter().any(|t| name.ends_with(&format!("{t}.weight"))))
            .map(|(_, shape)| lora.rank * (shape[0] + shape[1]))
            .sum(),
        (None, Some(trainable)) => tensors.iter().filter(|(name, _)| trainable.trains(name)).map(|(_, s)| s.iter().product::<usize>()).sum(),
        (None, None) => all,
    };
    let adapters = if config.lora.is_some() { trained } else { 0 };
    (trained as f64, (all + adapters) as f64)
}

/// Parameters `config` holds in its `frozen_precision` (0 at F32): the frozen projections
/// that `FrozenPrecision::holds` (`train::start::hold_frozen_in`).
fn half_held_parameters(config: &TrainConfig) -> f64 {
    if config.frozen_precision.is_default() {
        return 0.0;
    }
    crate::hf::config::expected_tensors(&config.model)
        .into_iter()
        .filter(|(name, shape)| shape.len() == 2 && !base_weight_trains(config, name) && FrozenPrecision::holds(name))
        .map(|(_, shape)| shape.iter().product::<usize>() as f64)
        .sum()
}

/// Floats one layer keeps per token for the backward pass (see the module's comment), and
/// per sequence for attention's probabilities.
fn layer_activations(model: &ModelConfig, layer: usize, seq_len: usize) -> f64 {
    let (d, q, kv) = (model.d_model as f64, model.q_dim() as f64, (model.kv_heads() * model.head_dim()) as f64);
    // Input, norm, q/k/v, q/k after RoPE, probabilities, output, o_proj's output.
    let attention = 2.0 * d + q + 2.0 * kv + q + kv + (model.n_heads * seq_len) as f64 + q + d;
    let ffn_of = |f: f64| d + 3.0 * f + d;
    let ffn = match &model.moe {
        Some(moe) if moe.is_moe_layer(layer) && moe.routed_projections.is_empty() => {
            let f = moe.expert_d_ff.unwrap_or(model.d_ff) as f64;
            let routed = moe.active_experts() as f64 * (d + 3.0 * f + d);
            moe.num_experts as f64 + routed + d + if moe.shared_expert { ffn_of(model.d_ff as f64) } else { 0.0 }
        }
        // Per-projection routers (MixtureKit): each routed projection mixes its experts'
        // outputs, every expert computing (soft) or top-k of them.
        Some(moe) if moe.is_moe_layer(layer) => {
            let f = model.d_ff as f64;
            let copies = moe.active_experts() as f64;
            let routed = |p: Projection, width: f64| if moe.routes(p) { copies * width + moe.num_experts as f64 } else { 0.0 };
            ffn_of(f) + routed(Projection::Gate, f) + routed(Projection::Up, f) + routed(Projection::Down, d)
        }
        _ => ffn_of(model.d_ff as f64),
    };
    attention + ffn
}

/// The memory plan of `config` on a backend with (`fused_head`) or without the fused head.
pub fn plan_for(config: &TrainConfig, fused_head: bool) -> MemoryPlan {
    let model = &config.model;
    let (trained, all) = parameter_counts(config);
    let (batch, seq) = (config.batch_size as f64, config.data.seq_len);
    let tokens = batch * seq as f64;
    let per_token: f64 = (0..model.n_layers).map(|l| layer_activations(model, l, seq)).sum::<f64>() + 2.0 * model.d_model as f64;
    let activations = F32 * per_token * tokens;
    let vocab = model.vocab_size as f64;
    let (head, head_detail) = if fused_head {
        // A chunk's logits and their exponentials, the hidden states' gradient, and the head's
        // weight gradient computed in the forward pass (where the head trains).
        let chunk = (FUSED_HEAD_LOGITS / vocab).floor().max(1.0).min(tokens) * vocab;
        let weight_grad = if head_trains(config) { vocab * model.d_model as f64 } else { 0.0 };
        (F32 * (2.0 * chunk + tokens * model.d_model as f64 + weight_grad), format!("fused with the loss, {:.0} logits at a time", chunk))
    } else {
        (F32 * 3.0 * tokens * vocab, format!("{tokens:.0} x {vocab:.0} logits, their softmax and gradient"))
    };
    let parts = vec![
        weights_part(config, all),
        PlanPart { name: "gradients", bytes: F32 * trained, detail: format!("{:.1}M trained parameters", trained / 1e6) },
        PlanPart { name: "optimizer state", bytes: 2.0 * F32 * trained, detail: "AdamW's two moments".into() },
        PlanPart {
            name: "activations",
            bytes: activations,
            detail: format!("{} x {seq} tokens, {} layers{}", config.batch_size, model.n_layers, if config.activation_checkpointing { ", checkpointed" } else { "" }),
        },
        PlanPart { name: "LM head", bytes: head, detail: head_detail },
        PlanPart { name: "runtime and data", bytes: RUNTIME_BYTES, detail: "the process, tokenizer, data maps".into() },
    ];
    MemoryPlan { parts, activations_per_sequence: activations / batch }
}

/// Whether the LM head's weight (the embedding, when tied) trains.
fn head_trains(config: &TrainConfig) -> bool {
    base_weight_trains(config, if config.model.tie_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" })
}

/// Whether the model's parameter `name` (not a LoRA adapter) trains under `config`: a LoRA
/// run's base is frozen but for an MoE's routers (`train::start::freeze_untrainable`).
fn base_weight_trains(config: &TrainConfig, name: &str) -> bool {
    match (&config.lora, &config.trainable) {
        (Some(_), _) => crate::train::trainable::Trainable::Routers.trains(name),
        (None, Some(trainable)) => trainable.trains(name),
        (None, None) => true,
    }
}

/// The weights: f32, but the frozen projections in the run's `frozen_precision`.
fn weights_part(config: &TrainConfig, all: f64) -> PlanPart {
    let half = half_held_parameters(config);
    let bytes = F32 * (all - half) + config.frozen_precision.bytes() * half;
    let detail = if half > 0.0 {
        format!("{:.1}M parameters, {:.1}M of them frozen in {:?}", all / 1e6, half / 1e6, config.frozen_precision)
    } else {
        format!("{:.1}M parameters, f32", all / 1e6)
    };
    PlanPart { name: "weights", bytes, detail }
}

/// The plan on the CPU (the fused head).
pub fn plan(config: &TrainConfig) -> MemoryPlan {
    plan_for(config, true)
}

/// The plan on `device` (the head is fused on the CPU only).
pub fn plan_on(config: &TrainConfig, device: &burn::prelude::Device) -> MemoryPlan {
    plan_for(config, crate::device::is_cpu(device))
}

/// Memory the device has for the run: the CPU's available memory (`MemAvailable`, Linux), or
/// None where the engine cannot tell (a GPU through WGPU reports no memory size).
pub fn available_memory(device: &burn::prelude::Device) -> Option<f64> {
    if !crate::device::is_cpu(device) {
        return None;
    }
    crate::memory::available_bytes().map(|b| b as f64)
}
