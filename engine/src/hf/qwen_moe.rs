//! Export of an MoE as transformers' Qwen MoE architectures: `Qwen2MoeForCausalLM` (an MoE
//! with a shared expert, or of Qwen2 experts) and `Qwen3MoeForCausalLM` (an MoE of Qwen3
//! experts). Qwen2-MoE computes y = sum_i g_i(x) FFN_i(x) + sigmoid(w_s . x) FFN_shared(x).
//!
//! The engine's shared expert is ungated (DeepSeekMoE's), so the export sets the shared
//! expert's gate w_s to zero, where sigmoid gives exactly 1/2, and doubles the shared
//! expert's down projection (exact in floating point): the logits are the engine's. An MoE of
//! Qwen2 experts without a shared expert gets a shared expert of zeros (its output is exactly
//! 0). Both renormalise their top-k gates (`norm_topk_prob: true`), which is Mixtral's (and
//! the engine's) softmax over the top-k; Qwen2's q/k/v biases and Qwen3's q/k norms and head
//! width carry over as the engine has them.

use serde_json::{Value, json};

use super::config::{Family, expected_tensors};
use crate::checkpoint::tensor_names::{self, Projection, ROUTED_EXPERTS};
use crate::config::ModelConfig;
use crate::model::moe_config::MoeConfig;

/// Where one exported tensor comes from.
pub struct ExportedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// The engine tensor it copies, times `scale`; None: zeros, or N(0, init_std^2) draws.
    pub from: Option<String>,
    pub scale: f32,
    pub init_std: f32,
}

impl ExportedTensor {
    /// The engine tensor `from` as it is.
    pub fn copy(name: String, shape: Vec<usize>, from: String) -> Self {
        Self { name, shape, from: Some(from), scale: 1.0, init_std: 0.0 }
    }
}

/// The config.json fields that make a Qwen2-MoE (`qwen3: false`) or Qwen3-MoE of the engine's
/// MoE (`hf` holds the fields every architecture shares).
pub fn qwen_moe_config(hf: &mut Value, config: &ModelConfig, moe: &MoeConfig, top_k: usize, qwen3: bool) {
    let expert_d_ff = moe.expert_d_ff.unwrap_or(config.d_ff);
    let (arch, model_type) = if qwen3 { ("Qwen3MoeForCausalLM", "qwen3_moe") } else { ("Qwen2MoeForCausalLM", "qwen2_moe") };
    for (field, value) in [
        ("architectures", json!([arch])),
        ("model_type", json!(model_type)),
        ("intermediate_size", json!(config.d_ff)),
        ("moe_intermediate_size", json!(expert_d_ff)),
        ("num_experts", json!(moe.num_experts)),
        ("num_experts_per_tok", json!(top_k)),
        ("norm_topk_prob", json!(true)),
        ("decoder_sparse_step", json!(1)),
        ("mlp_only_layers", json!([])),
        ("use_sliding_window", json!(false)),
        ("sliding_window", Value::Null),
        ("router_aux_loss_coef", json!(moe.load_balance)),
        ("output_router_logits", json!(false)),
    ] {
        hf[field] = value;
    }
    if qwen3 {
        // transformers 5 names Qwen3-MoE's expert count as Mixtral does.
        hf.as_object_mut().map(|o| o.remove("num_experts"));
        hf["num_local_experts"] = json!(moe.num_experts);
        hf["attention_bias"] = json!(false);
    } else {
        hf["shared_expert_intermediate_size"] = json!(config.d_ff);
        hf["qkv_bias"] = json!(config.attention_bias);
    }
}

/// Every tensor of the Qwen MoE, named and shaped as transformers saves it, from the
/// engine's: attention, norms and embeddings under their own names, the router and experts
/// under `mlp.`, and for Qwen2-MoE the shared expert (zeros where the engine has none).
pub fn qwen_moe_tensors(config: &ModelConfig, moe: &MoeConfig) -> Vec<ExportedTensor> {
    let copy = ExportedTensor::copy;
    let d = config.d_model;
    let (f, shared_f) = (moe.expert_d_ff.unwrap_or(config.d_ff), config.d_ff);
    let qwen2_moe = Family::of(config).is_ok_and(|f| f != Family::Qwen3);
    // Everything but the MoE layers keeps its name.
    let mut out: Vec<ExportedTensor> = expected_tensors(config)
        .into_iter()
        .filter(|(name, _)| !name.contains(ROUTED_EXPERTS) && !name.contains(".block_sparse_moe."))
        .map(|(name, shape)| copy(name.clone(), shape, name))
        .collect();
    for l in 0..config.n_layers {
        let p = format!("model.layers.{l}");
        out.push(copy(format!("{p}.mlp.gate.weight"), vec![moe.num_experts, d], tensor_names::router(l)));
        for e in 0..moe.num_experts {
            for proj in Projection::ALL {
                out.push(copy(format!("{p}.mlp.experts.{e}.{}.weight", proj.llama()), proj.shape(d, f), tensor_names::expert_ffn(l, e, proj)));
            }
        }
        if !qwen2_moe {
            continue;
        }
        for proj in Projection::ALL {
            let name = format!("{p}.mlp.shared_expert.{}.weight", proj.llama());
            let mut t = match moe.shared_expert {
                true => copy(name, proj.shape(d, shared_f), tensor_names::shared_expert_ffn(l, proj)),
                false => ExportedTensor { name, shape: proj.shape(d, shared_f), from: None, scale: 1.0, init_std: 0.0 },
            };
            if proj == Projection::Down {
                t.scale = 2.0; // sigmoid(0) = 1/2 halves it again
            }
            out.push(t);
        }
        out.push(ExportedTensor { name: format!("{p}.mlp.shared_expert_gate.weight"), shape: vec![1, d], from: None, scale: 1.0, init_std: 0.0 });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
