//! Hugging Face `config.json` <-> the engine's model config, for LlamaForCausalLM (and
//! Mistral without sliding windows), Qwen2ForCausalLM, Qwen3ForCausalLM and
//! MixtralForCausalLM (the Qwen MoEs, export only: `qwen_moe`); and the tensors each must
//! hold.

use crate::checkpoint::tensor_names::{self, Projection};
use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::config::{ModelConfig, is_key_value_part};
use crate::model::rope::RopeScaling;
use crate::model::moe_config::{MoeConfig, Routing};

/// The transformers families the engine's attention options reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama (2 and 3), Mistral, Mixtral: no biases, no q/k norms.
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k and v.
    Qwen2,
    /// Qwen3: RMSNorm of each query and key head, an explicit head width.
    Qwen3,
}

impl Family {
    /// The family a model config is built as.
    pub fn of(config: &ModelConfig) -> Result<Self> {
        match (config.attention_bias, config.qk_norm) {
            (false, false) => Ok(Self::Llama),
            (true, false) => Ok(Self::Qwen2),
            (false, true) => Ok(Self::Qwen3),
            (true, true) => bail!("a model with both attention_bias and qk_norm is no transformers family (Qwen2 has the biases, Qwen3 the norms)"),
        }
    }
}

/// The engine's model config from a Hugging Face config.json; `origin` names the file.
pub fn from_hf_config(hf: &Value, origin: &str) -> Result<ModelConfig> {
    if super::mixturekit::is_mixturekit(hf) {
        return super::mixturekit::from_mixturekit_config(hf, origin);
    }
    let arch = hf["architectures"].as_array().and_then(|a| a.first()).and_then(Value::as_str).unwrap_or("");
    match super::gemma::gemma_version(arch) {
        Some(version) => {
            // Gemma3ForConditionalGeneration's language model is described by its
            // `text_config` (absent: every default).
            let defaults = json!({});
            let text = if arch.ends_with("ConditionalGeneration") { hf.get("text_config").unwrap_or(&defaults) } else { hf };
            super::gemma::from_gemma_config(text, version, origin)
        }
        None => from_llama_family_config(hf, arch, origin),
    }
}

/// The config of a Llama, Mistral, Mixtral, Qwen2 or Qwen3 config.json (architecture `arch`).
fn from_llama_family_config(hf: &Value, arch: &str, origin: &str) -> Result<ModelConfig> {
    let (family, moe) = match arch {
        "LlamaForCausalLM" | "MistralForCausalLM" => (Family::Llama, false),
        "MixtralForCausalLM" => (Family::Llama, true),
        "Qwen2ForCausalLM" => (Family::Qwen2, false),
        "Qwen3ForCausalLM" => (Family::Qwen3, false),
        other => bail!(
            "{origin}: field `architectures` is {:?}; supported: LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration (its language model)",
            if other.is_empty() { "missing".to_string() } else { other.to_string() }
        ),
    };
    let int = |field: &str| -> Result<usize> {
        hf[field].as_u64().map(|v| v as usize).ok_or_else(|| anyhow::anyhow!("{origin}: field `{field}` is missing or not a positive integer"))
    };
    let d_model = int("hidden_size")?;
    let n_heads = int("num_attention_heads")?;
    // An explicit head width is kept only where it differs from d_model / n_heads (Qwen3).
    let head_dim = hf.get("head_dim").and_then(Value::as_u64).map(|h| h as usize).filter(|&h| h * n_heads != d_model);
    // transformers 5 nests RoPE settings in `rope_parameters`; 4.x has `rope_theta` and
    // `rope_scaling` at the top level.
    let rope_theta = hf
        .get("rope_parameters")
        .and_then(|r| r.get("rope_theta"))
        .or_else(|| hf.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0);
    let rope_scaling = rope_scaling_from_hf(hf, origin)?;
    // Qwen2 always has q/k/v biases (and none on o_proj); Llama's and Qwen3's
    // `attention_bias` would put one on o_proj too, which the engine has not.
    for (field, ok) in [
        ("attention_bias", family == Family::Qwen2 || !hf.get("attention_bias").and_then(Value::as_bool).unwrap_or(false)),
        ("mlp_bias", !hf.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false)),
        ("hidden_act", hf.get("hidden_act").and_then(Value::as_str).is_none_or(|a| a == "silu")),
    ] {
        if !ok {
            bail!("{origin}: field `{field}` is {}; the engine supports SiLU only, and biases only on Qwen2's q, k and v", hf[field]);
        }
    }
    let max_seq_len = int("max_position_embeddings")?;
    // Qwen's configs carry a `sliding_window` that only `use_sliding_window` turns on.
    // (transformers 5 lists each layer's kind in `layer_types`).
    let sliding_layers = hf.get("layer_types").and_then(Value::as_array).is_some_and(|t| t.iter().any(|k| k == "sliding_attention"));
    let window_on = family == Family::Llama || sliding_layers || hf.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false);
    if let Some(w) = hf.get("sliding_window").and_then(Value::as_u64).filter(|_| window_on)
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
        head_dim,
        attention_bias: family == Family::Qwen2,
        qk_norm: family == Family::Qwen3,
        norm_eps: hf.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
        tie_embeddings: hf.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
        attention_experts: None,
        moe: if moe { Some(mixtral_moe(hf, int)?) } else { None },
        gemma: None,
    };
    config.validate(origin)?;
    Ok(config)
}

/// Mixtral's MoE: top-k of `num_local_experts`, with the balancing it was trained with.
fn mixtral_moe(hf: &Value, int: impl Fn(&str) -> Result<usize>) -> Result<MoeConfig> {
    Ok(MoeConfig {
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
        routed_projections: Vec::new(),
    })
}

/// The RoPE scaling of a config.json: transformers 5 nests it with `rope_theta` in
/// `rope_parameters`, 4.x has `rope_scaling` (`rope_type`, or `type` before 4.45) beside a
/// top-level `rope_theta`.
fn rope_scaling_from_hf(hf: &Value, origin: &str) -> Result<Option<RopeScaling>> {
    match (hf.get("rope_parameters").filter(|v| v.is_object()), hf.get("rope_scaling").filter(|v| v.is_object())) {
        (Some(p), _) => rope_scaling_of(p, "rope_parameters", origin),
        (None, Some(s)) => rope_scaling_of(s, "rope_scaling", origin),
        (None, None) => Ok(None),
    }
}

/// The scaling `params` (a `rope_parameters` or `rope_scaling` object, at `field`) describe:
/// `default` or absent: none; `linear` and `llama3` are the engine's `RopeScaling`; any other
/// type is refused by name.
pub(crate) fn rope_scaling_of(params: &Value, field: &str, origin: &str) -> Result<Option<RopeScaling>> {
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
    rope_parameters_of(config.rope_theta, config.rope_scaling.as_ref())
}

/// `rope_parameters` of a base `theta` and a scaling.
pub(crate) fn rope_parameters_of(theta: f64, scaling: Option<&RopeScaling>) -> Value {
    let mut params = json!({ "rope_type": "default", "rope_theta": theta });
    match scaling {
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
    match (&config.gemma, &config.moe) {
        (Some(gemma), None) if config.attention_experts.is_none() => return Ok(super::gemma::to_gemma_config(config, gemma)),
        (Some(_), _) => bail!("an MoE of Gemma experts has no transformers class: export it in MixtureKit's format (`btx export-hf --format mixturekit`), which loads with trust_remote_code"),
        (None, _) => {}
    }
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
            let (arch, model_type) = match Family::of(config)? {
                Family::Llama => ("LlamaForCausalLM", "llama"),
                Family::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
                Family::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
            };
            hf["architectures"] = json!([arch]);
            hf["model_type"] = json!(model_type);
            hf["intermediate_size"] = json!(config.d_ff);
            hf["attention_bias"] = json!(false);
            hf["mlp_bias"] = json!(false);
            if model_type != "llama" {
                hf["use_sliding_window"] = json!(false);
                hf["sliding_window"] = Value::Null;
            }
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
            // Mixtral has no shared expert and no Qwen attention: those go to the Qwen MoEs.
            match (Family::of(config)?, moe.shared_expert) {
                (Family::Qwen3, true) => bail!("Qwen3-MoE has no shared expert, and no other transformers architecture has Qwen3's attention with one"),
                (Family::Qwen3, false) => {
                    super::qwen_moe::qwen_moe_config(&mut hf, config, moe, top_k, true);
                    return Ok(hf);
                }
                (Family::Qwen2, _) | (Family::Llama, true) => {
                    super::qwen_moe::qwen_moe_config(&mut hf, config, moe, top_k, false);
                    return Ok(hf);
                }
                (Family::Llama, false) => {}
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
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d]), ("model.norm.weight".to_string(), vec![d])];
    if !config.tie_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, d]));
    }
    for l in 0..config.n_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        if config.gemma.is_some() {
            out.push((format!("{p}.pre_feedforward_layernorm.weight"), vec![d]));
            out.push((format!("{p}.post_feedforward_layernorm.weight"), vec![d]));
        }
        match &config.attention_experts {
            None => out.extend(config.attention_parts().into_iter().map(|(part, shape)| (tensor_names::self_attention(l, part), shape))),
            Some(a) => {
                out.push((tensor_names::shared_attention(l, "gate.weight"), vec![a.num_experts, d]));
                for (part, shape) in config.attention_parts() {
                    if a.shared_kv && is_key_value_part(part) {
                        out.push((tensor_names::shared_attention(l, part), shape));
                    } else {
                        out.extend((0..a.num_experts).map(|e| (tensor_names::attention_expert(l, e, part), shape.clone())));
                    }
                }
            }
        }
        match &config.moe {
            Some(moe) if moe.is_moe_layer(l) && !moe.routed_projections.is_empty() => {
                for proj in Projection::ALL {
                    let shape = proj.shape(d, config.d_ff);
                    if moe.routes(proj) {
                        out.push((tensor_names::projection_router(l, proj), vec![moe.num_experts, shape[1]]));
                        out.extend((0..moe.num_experts).map(|e| (tensor_names::projection_expert(l, proj, e), shape.clone())));
                    } else {
                        out.push((tensor_names::projection_plain(l, proj), shape));
                    }
                }
            }
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
