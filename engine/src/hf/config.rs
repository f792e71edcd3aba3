//! Hugging Face `config.json` <-> the engine's model config, for LlamaForCausalLM (and
//! Mistral without sliding windows) and MixtralForCausalLM (Qwen2MoeForCausalLM for an MoE
//! with a shared expert, export only); and the tensors each must hold.

use crate::checkpoint::tensor_names::{self, Projection};
use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::config::ModelConfig;
use crate::model::rope::RopeScaling;
use crate::model::moe_config::{MoeConfig, Routing};

/// The engine's model config from a Hugging Face config.json; `origin` names the file.
pub fn from_hf_config(hf: &Value, origin: &str) -> Result<ModelConfig> {
    let arch = hf["architectures"].as_array().and_then(|a| a.first()).and_then(Value::as_str).unwrap_or("");
    let moe = match arch {
        "LlamaForCausalLM" | "MistralForCausalLM" => false,
        "MixtralForCausalLM" => true,
        other => bail!(
            "{origin}: field `architectures` is {:?}; supported: LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM",
            if other.is_empty() { "missing".to_string() } else { other.to_string() }
        ),
    };
    let int = |field: &str| -> Result<usize> {
        hf[field].as_u64().map(|v| v as usize).ok_or_else(|| anyhow::anyhow!("{origin}: field `{field}` is missing or not a positive integer"))
    };
    let d_model = int("hidden_size")?;
    let n_heads = int("num_attention_heads")?;
    if let Some(hd) = hf.get("head_dim").and_then(Value::as_u64)
        && hd as usize != d_model / n_heads
    {
        bail!("{origin}: field `head_dim` is {hd}, but the engine needs hidden_size / num_attention_heads = {}", d_model / n_heads);
    }
    // transformers 5 nests RoPE settings in `rope_parameters`; 4.x has `rope_theta` and
    // `rope_scaling` at the top level.
    let rope_theta = hf
        .get("rope_parameters")
        .and_then(|r| r.get("rope_theta"))
        .or_else(|| hf.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0);
    let rope_scaling = rope_scaling_from_hf(hf, origin)?;
    for (field, ok) in [
        ("attention_bias", !hf.get("attention_bias").and_then(Value::as_bool).unwrap_or(false)),
        ("mlp_bias", !hf.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false)),
        ("hidden_act", hf.get("hidden_act").and_then(Value::as_str).is_none_or(|a| a == "silu")),
    ] {
        if !ok {
            bail!("{origin}: field `{field}` is {}; the engine supports no biases and SiLU only", hf[field]);
        }
    }
    let max_seq_len = int("max_position_embeddings")?;
    if let Some(w) = hf.get("sliding_window").and_then(Value::as_u64)
        && (w as usize) < max_seq_len
    {
        bail!("{origin}: field `sliding_window` is {w}: sliding-window attention is not supported (null, or at least max_position_embeddings, is)");
    }
    let config = ModelConfig {
        vocab_size: int("vocab_size")?,
        d_model,
        n_layers: int("num_hidden_layers")?,
        n_heads,
        n_kv_heads: Some(hf.get("num_key_value_heads").and_then(Value::as_u64).map_or(n_heads, |v| v as usize)),
        d_ff: int("intermediate_size")?,
        max_seq_len,
        rope_theta,
        rope_scaling,
        norm_eps: hf.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
        tie_embeddings: hf.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
        attention_experts: None,
        moe: if moe {
            Some(MoeConfig {
                num_experts: int("num_local_experts")?,
                top_k: int("num_experts_per_tok")?,
                routing: Routing::TopK,
                layers: None,
                expert_d_ff: None,
                // transformers' default coefficient, applied as transformers applies it.
                load_balance: hf.get("router_aux_loss_coef").and_then(Value::as_f64).unwrap_or(0.001),
                balance: crate::model::moe_config::Balance::Mixtral,
                router_z_loss: 0.0,
                freeze_experts: false,
                shared_expert: false,
            })
        } else {
            None
        },
    };
    config.validate(origin)?;
    Ok(config)
}

/// The RoPE scaling of a config.json: transformers 5 nests it with `rope_theta` in
/// `rope_parameters`, 4.x has `rope_scaling` (`rope_type`, or `type` before 4.45) beside a
/// top-level `rope_theta`. `default` or absent: none; `linear` and `llama3` are the engine's
/// `RopeScaling`; any other type is refused by name.
fn rope_scaling_from_hf(hf: &Value, origin: &str) -> Result<Option<RopeScaling>> {
    let (field, params) = match (hf.get("rope_parameters").filter(|v| v.is_object()), hf.get("rope_scaling").filter(|v| v.is_object())) {
        (Some(p), _) => ("rope_parameters", p),
        (None, Some(s)) => ("rope_scaling", s),
        (None, None) => return Ok(None),
    };
    let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
    let number = |name: &str| -> Result<f64> {
        params.get(name).and_then(Value::as_f64).ok_or_else(|| anyhow::anyhow!("{origin}: field `{field}.{name}` is missing or not a number (rope_type {kind} needs it)"))
    };
    let scaling = match kind {
        "default" => return Ok(None),
        "linear" => RopeScaling::Linear { factor: number("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")? as usize,
        },
        other => bail!("{origin}: field `{field}` has rope_type `{other}`; the engine supports default, linear and llama3 RoPE"),
    };
    scaling.validate().map_err(|e| anyhow::anyhow!("{origin}: field `{field}`: {e}"))?;
    Ok(Some(scaling))
}

/// `rope_parameters` (transformers 5; 4.x reads the same keys from `rope_scaling`) for the
/// engine's RoPE settings.
fn rope_parameters_to_hf(config: &ModelConfig) -> Value {
    let mut params = json!({ "rope_type": "default", "rope_theta": config.rope_theta });
    match &config.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            params["rope_type"] = json!("linear");
            params["factor"] = json!(factor);
        }
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            params["rope_type"] = json!("llama3");
            params["factor"] = json!(factor);
            params["low_freq_factor"] = json!(low_freq_factor);
            params["high_freq_factor"] = json!(high_freq_factor);
            params["original_max_position_embeddings"] = json!(original_max_position_embeddings);
        }
    }
    params
}

/// A Hugging Face config.json for the engine's model config. Routing Mixtral cannot express
/// is an error unless `closest` is set (then Switch and sample-top-1 become top-1, soft
/// becomes top-E).
pub fn to_hf_config(config: &ModelConfig, closest: bool) -> Result<Value> {
    let mut hf = json!({
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads(),
        "head_dim": config.head_dim(),
        "max_position_embeddings": config.max_seq_len,
        "rope_theta": config.rope_theta,
        "rope_parameters": rope_parameters_to_hf(config),
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    if config.rope_scaling.is_some() {
        // transformers 4.x reads the scaling from here.
        hf["rope_scaling"] = rope_parameters_to_hf(config);
    }
    match &config.moe {
        None => {
            hf["architectures"] = json!(["LlamaForCausalLM"]);
            hf["model_type"] = json!("llama");
            hf["intermediate_size"] = json!(config.d_ff);
            hf["attention_bias"] = json!(false);
            hf["mlp_bias"] = json!(false);
        }
        Some(_) if config.attention_experts.is_some() => bail!(
            "this model has attention experts (BAM), which neither Mixtral nor any other transformers architecture has; \
             the engine's own checkpoint keeps them (train, evaluate and generate with it here)"
        ),
        Some(moe) => {
            if moe.layers.is_some() {
                bail!("Mixtral has an MoE layer in every layer; this model has MoE layers {:?} only", moe.layers.as_ref().unwrap());
            }
            let top_k = match (&moe.routing, closest) {
                (Routing::TopK, _) => moe.top_k,
                (Routing::Switch { .. } | Routing::SampleTop1 { .. }, true) => 1,
                (Routing::Soft, true) => moe.num_experts,
                (other, false) => bail!(
                    "Mixtral routes with softmax over the top-k router logits and cannot express {other:?} routing; \
                     pass --closest to export the nearest top-k equivalent (Switch and sample-top-1 -> top-1 \
                     without capacity, soft -> top-{})",
                    moe.num_experts
                ),
            };
            if moe.shared_expert {
                super::qwen2_moe::qwen2_moe_config(&mut hf, config, moe, top_k);
                return Ok(hf);
            }
            hf["architectures"] = json!(["MixtralForCausalLM"]);
            hf["model_type"] = json!("mixtral");
            hf["intermediate_size"] = json!(moe.expert_d_ff.unwrap_or(config.d_ff));
            hf["num_local_experts"] = json!(moe.num_experts);
            hf["num_experts_per_tok"] = json!(top_k);
            hf["router_aux_loss_coef"] = json!(moe.load_balance);
            hf["output_router_logits"] = json!(false);
            hf["sliding_window"] = Value::Null;
        }
    }
    Ok(hf)
}

/// Every tensor a model of `config` holds, with its shape, in Hugging Face names and layout.
pub fn expected_tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, v) = (config.d_model, config.vocab_size);
    let kv = config.kv_heads() * config.head_dim();
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d]), ("model.norm.weight".to_string(), vec![d])];
    if !config.tie_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, d]));
    }
    for l in 0..config.n_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        match &config.attention_experts {
            None => {
                out.push((format!("{p}.self_attn.q_proj.weight"), vec![d, d]));
                out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
                out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
                out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, d]));
            }
            Some(a) => {
                let q = format!("{p}.attention_experts");
                out.push((format!("{q}.gate.weight"), vec![a.num_experts, d]));
                let kv_owners: Vec<String> =
                    if a.shared_kv { vec![q.clone()] } else { (0..a.num_experts).map(|e| format!("{q}.experts.{e}")).collect() };
                for owner in kv_owners {
                    out.push((format!("{owner}.k_proj.weight"), vec![kv, d]));
                    out.push((format!("{owner}.v_proj.weight"), vec![kv, d]));
                }
                for e in 0..a.num_experts {
                    out.push((format!("{q}.experts.{e}.q_proj.weight"), vec![d, d]));
                    out.push((format!("{q}.experts.{e}.o_proj.weight"), vec![d, d]));
                }
            }
        }
        match &config.moe {
            Some(moe) if moe.is_moe_layer(l) => {
                let f = moe.expert_d_ff.unwrap_or(config.d_ff);
                out.push((tensor_names::router(l), vec![moe.num_experts, d]));
                for e in 0..moe.num_experts {
                    out.extend(Projection::ALL.map(|proj| (tensor_names::expert_ffn(l, e, proj), proj.shape(d, f))));
                }
                if moe.shared_expert {
                    out.extend(Projection::ALL.map(|proj| (tensor_names::shared_expert_ffn(l, proj), proj.shape(d, config.d_ff))));
                }
            }
            _ => out.extend(Projection::ALL.map(|proj| (tensor_names::dense_ffn(l, proj), proj.shape(d, config.d_ff)))),
        }
    }
    out.sort();
    out
}
