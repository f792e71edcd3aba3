//! Export of an MoE with a shared expert as transformers' `Qwen2MoeForCausalLM`, the
//! architecture that has one: y = sum_i g_i(x) FFN_i(x) + sigmoid(w_s . x) FFN_shared(x).
//!
//! The engine's shared expert is ungated (DeepSeekMoE's), so the export sets the shared
//! expert's gate w_s to zero, where sigmoid gives exactly 1/2, and doubles the shared
//! expert's down projection (exact in floating point): the logits are the engine's. Qwen2's
//! attention biases are turned off (`qkv_bias: false`), and its top-k gates are renormalised
//! (`norm_topk_prob: true`), which is Mixtral's (and the engine's) softmax over the top-k.

use serde_json::{Value, json};

use crate::checkpoint::tensor_names::{self, Projection};
use crate::config::ModelConfig;
use crate::model::moe_config::MoeConfig;

/// Where one exported tensor comes from.
pub struct ExportedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// The engine tensor it copies, times `scale`; None: zeros.
    pub from: Option<String>,
    pub scale: f32,
}

impl ExportedTensor {
    /// The engine tensor `from` as it is.
    pub fn copy(name: String, shape: Vec<usize>, from: String) -> Self {
        Self { name, shape, from: Some(from), scale: 1.0 }
    }
}

/// The config.json fields that make a Qwen2-MoE of the engine's MoE (`hf` holds the fields
/// every architecture shares).
pub fn qwen2_moe_config(hf: &mut Value, config: &ModelConfig, moe: &MoeConfig, top_k: usize) {
    let expert_d_ff = moe.expert_d_ff.unwrap_or(config.d_ff);
    for (field, value) in [
        ("architectures", json!(["Qwen2MoeForCausalLM"])),
        ("model_type", json!("qwen2_moe")),
        ("intermediate_size", json!(config.d_ff)),
        ("moe_intermediate_size", json!(expert_d_ff)),
        ("shared_expert_intermediate_size", json!(config.d_ff)),
        ("num_experts", json!(moe.num_experts)),
        ("num_experts_per_tok", json!(top_k)),
        ("norm_topk_prob", json!(true)),
        ("decoder_sparse_step", json!(1)),
        ("mlp_only_layers", json!([])),
        ("qkv_bias", json!(false)),
        ("use_sliding_window", json!(false)),
        ("sliding_window", Value::Null),
        ("router_aux_loss_coef", json!(moe.load_balance)),
        ("output_router_logits", json!(false)),
    ] {
        hf[field] = value;
    }
}

/// Every Qwen2-MoE tensor, named and shaped as transformers saves it, from the engine's.
pub fn qwen2_moe_tensors(config: &ModelConfig, moe: &MoeConfig) -> Vec<ExportedTensor> {
    let copy = ExportedTensor::copy;
    let (d, v) = (config.d_model, config.vocab_size);
    let kv = config.kv_heads() * config.head_dim();
    let (f, shared_f) = (moe.expert_d_ff.unwrap_or(config.d_ff), config.d_ff);
    let same = |name: &str, shape: Vec<usize>| copy(name.to_string(), shape, name.to_string());
    let mut out = vec![same("model.embed_tokens.weight", vec![v, d]), same("model.norm.weight", vec![d])];
    if !config.tie_embeddings {
        out.push(same("lm_head.weight", vec![v, d]));
    }
    for l in 0..config.n_layers {
        let p = format!("model.layers.{l}");
        for (part, shape) in [
            ("input_layernorm", vec![d]),
            ("post_attention_layernorm", vec![d]),
            ("self_attn.q_proj", vec![d, d]),
            ("self_attn.k_proj", vec![kv, d]),
            ("self_attn.v_proj", vec![kv, d]),
            ("self_attn.o_proj", vec![d, d]),
        ] {
            out.push(same(&format!("{p}.{part}.weight"), shape));
        }
        out.push(copy(format!("{p}.mlp.gate.weight"), vec![moe.num_experts, d], tensor_names::router(l)));
        for e in 0..moe.num_experts {
            for proj in Projection::ALL {
                out.push(copy(format!("{p}.mlp.experts.{e}.{}.weight", proj.llama()), proj.shape(d, f), tensor_names::expert_ffn(l, e, proj)));
            }
        }
        for proj in Projection::ALL {
            let mut t = copy(format!("{p}.mlp.shared_expert.{}.weight", proj.llama()), proj.shape(d, shared_f), tensor_names::shared_expert_ffn(l, proj));
            if proj == Projection::Down {
                t.scale = 2.0; // sigmoid(0) = 1/2 halves it again
            }
            out.push(t);
        }
        out.push(ExportedTensor { name: format!("{p}.mlp.shared_expert_gate.weight"), shape: vec![1, d], from: None, scale: 1.0 });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
