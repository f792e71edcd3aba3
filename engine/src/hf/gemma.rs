//! Gemma 2 and Gemma 3 `config.json` <-> the engine's model config (`model::gemma`), by the
//! rules of transformers' `configuration_gemma3.py` / `configuration_gemma2.py`: the keys a
//! Hub config leaves out take those classes' defaults (google/gemma-3-4b-pt's `text_config`
//! names six keys), and both the 5.x layout (`layer_types`, `rope_parameters` per layer kind)
//! and the 4.x one (`sliding_window_pattern`, `rope_theta`, `rope_local_base_freq`,
//! `rope_scaling`) are read.

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};

use crate::config::ModelConfig;
use crate::model::gemma::GemmaOptions;
use crate::model::rope::RopeScaling;

/// Which Gemma a config.json describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmaVersion {
    Gemma2,
    Gemma3,
}

impl GemmaVersion {
    /// transformers' defaults of the keys a config may leave out (Gemma2Config,
    /// Gemma3TextConfig).
    fn default(self, key: &str) -> Value {
        let gemma3 = self == Self::Gemma3;
        match key {
            "vocab_size" => json!(if gemma3 { 262_208 } else { 256_000 }),
            "hidden_size" => json!(2304),
            "intermediate_size" => json!(9216),
            "num_hidden_layers" => json!(26),
            "num_attention_heads" => json!(8),
            "num_key_value_heads" => json!(4),
            "head_dim" => json!(256),
            "hidden_activation" => json!("gelu_pytorch_tanh"),
            "max_position_embeddings" => json!(if gemma3 { 131_072 } else { 8192 }),
            "rms_norm_eps" => json!(1e-6),
            "tie_word_embeddings" => json!(true),
            "query_pre_attn_scalar" => json!(256),
            "sliding_window" => json!(4096),
            "final_logit_softcapping" => if gemma3 { Value::Null } else { json!(30.0) },
            "attn_logit_softcapping" => if gemma3 { Value::Null } else { json!(50.0) },
            "rope_theta" => json!(if gemma3 { 1_000_000.0 } else { 10_000.0 }),
            "rope_local_base_freq" => json!(10_000.0),
            "sliding_window_pattern" => json!(if gemma3 { 6 } else { 2 }),
            _ => Value::Null,
        }
    }
}

/// The text model's config of a Gemma config.json: Gemma3ForCausalLM's own keys, or the
/// `text_config` of Gemma3ForConditionalGeneration (its vision tower is not imported).
pub fn gemma_version(arch: &str) -> Option<GemmaVersion> {
    match arch {
        "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => Some(GemmaVersion::Gemma3),
        "Gemma2ForCausalLM" => Some(GemmaVersion::Gemma2),
        _ => None,
    }
}

/// The engine's config of a Gemma 2 / Gemma 3 config.json (`text` is the text model's keys);
/// every setting the engine cannot compute is refused by name.
pub fn from_gemma_config(text: &Value, version: GemmaVersion, origin: &str) -> Result<ModelConfig> {
    let get = |key: &str| text.get(key).filter(|v| !v.is_null()).cloned().unwrap_or_else(|| version.default(key));
    let int = |key: &str| get(key).as_u64().map(|v| v as usize).ok_or_else(|| anyhow!("{origin}: field `{key}` is missing or not a positive integer"));
    let float = |key: &str| get(key).as_f64().ok_or_else(|| anyhow!("{origin}: field `{key}` is not a number"));
    let cap = |key: &str| -> Result<Option<f64>> { Ok(if get(key).is_null() { None } else { Some(float(key)?) }) };
    if get("hidden_activation") != "gelu_pytorch_tanh" {
        bail!("{origin}: field `hidden_activation` is {}; the engine's Gemma computes gelu_pytorch_tanh only", get("hidden_activation"));
    }
    for (key, what) in [("attention_bias", "biases on the attention projections"), ("use_bidirectional_attention", "bidirectional attention (EmbeddingGemma's)")] {
        if get(key).as_bool() == Some(true) {
            bail!("{origin}: field `{key}` is true: {what} is an attention variant the engine lacks (causal attention only)");
        }
    }
    let n_layers = int("num_hidden_layers")?;
    let sliding = sliding_layers(text, version, n_layers, origin)?;
    let (rope_theta, rope_scaling, local_theta) = gemma_rope(text, version, origin)?;
    let window = if get("sliding_window").is_null() || !sliding.iter().any(|&s| s) { None } else { Some(int("sliding_window")?) };
    let config = ModelConfig {
        vocab_size: int("vocab_size")?,
        d_model: int("hidden_size")?,
        n_layers,
        n_heads: int("num_attention_heads")?,
        n_kv_heads: Some(int("num_key_value_heads")?),
        d_ff: int("intermediate_size")?,
        max_seq_len: int("max_position_embeddings")?,
        rope_theta,
        rope_scaling,
        head_dim: Some(int("head_dim")?),
        attention_bias: false,
        qk_norm: version == GemmaVersion::Gemma3,
        norm_eps: float("rms_norm_eps")?,
        tie_embeddings: get("tie_word_embeddings").as_bool().unwrap_or(true),
        attention_experts: None,
        moe: None,
        gemma: Some(GemmaOptions {
            query_pre_attn_scalar: float("query_pre_attn_scalar")?,
            sliding_window: window,
            full_attention_layers: if window.is_some() { (0..n_layers).filter(|&l| !sliding[l]).collect() } else { Vec::new() },
            local_rope_theta: Some(local_theta),
            final_logit_softcap: cap("final_logit_softcapping")?,
            attn_logit_softcap: cap("attn_logit_softcapping")?,
        }),
    };
    config.validate(origin)?;
    Ok(config)
}

/// Whether each layer is local: `layer_types` (transformers >= 4.53), else every layer but
/// each `sliding_window_pattern`-th (Gemma 3: 6; Gemma 2: 2).
fn sliding_layers(text: &Value, version: GemmaVersion, n_layers: usize, origin: &str) -> Result<Vec<bool>> {
    if let Some(types) = text.get("layer_types").and_then(Value::as_array) {
        if types.len() != n_layers {
            bail!("{origin}: field `layer_types` lists {} layers; num_hidden_layers is {n_layers}", types.len());
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => bail!("{origin}: field `layer_types` has {t}; the engine's attention kinds are sliding_attention and full_attention"),
            })
            .collect();
    }
    let key = if text.get("sliding_window_pattern").is_some() { "sliding_window_pattern" } else { "_sliding_window_pattern" };
    let pattern = text.get(key).and_then(Value::as_u64).unwrap_or_else(|| version.default("sliding_window_pattern").as_u64().unwrap_or(6)) as usize;
    Ok((0..n_layers).map(|i| pattern == 0 || (i + 1) % pattern != 0).collect())
}

/// The global layers' RoPE base and scaling and the local layers' base: transformers 5's
/// `rope_parameters` (per layer kind for Gemma 3), else 4.x's `rope_theta`, `rope_scaling`
/// and `rope_local_base_freq`. The local layers may not be scaled.
fn gemma_rope(text: &Value, version: GemmaVersion, origin: &str) -> Result<(f64, Option<RopeScaling>, f64)> {
    let number = |v: Option<&Value>, key: &str| v.filter(|v| !v.is_null()).and_then(Value::as_f64).or_else(|| version.default(key).as_f64());
    let params = text.get("rope_parameters").filter(|p| p.is_object());
    let (global, local) = match params {
        Some(p) if p.get("full_attention").is_some() => (p.get("full_attention"), p.get("sliding_attention")),
        Some(p) => (Some(p), Some(p)),
        None => (text.get("rope_scaling").filter(|s| s.is_object()), None),
    };
    let global_theta = number(global.and_then(|g| g.get("rope_theta")).or(text.get("rope_theta")), "rope_theta").unwrap_or(1e6);
    let local_theta = match version {
        GemmaVersion::Gemma3 => number(local.and_then(|l| l.get("rope_theta")).or(text.get("rope_local_base_freq")), "rope_local_base_freq"),
        GemmaVersion::Gemma2 => Some(global_theta),
    }
    .unwrap_or(10_000.0);
    if let Some(kind) = local.and_then(|l| l.get("rope_type")).and_then(Value::as_str).filter(|k| *k != "default")
        && version == GemmaVersion::Gemma3
    {
        bail!("{origin}: field `rope_parameters.sliding_attention` has rope_type `{kind}`; the engine rotates local layers with default RoPE only");
    }
    let scaling = match global {
        Some(g) => super::config::rope_scaling_of(g, "rope_parameters.full_attention", origin)?,
        None => None,
    };
    Ok((global_theta, scaling, local_theta))
}

/// A Gemma2ForCausalLM (no q/k norms) or Gemma3ForCausalLM config.json for a dense model with
/// Gemma options, in transformers 5's keys and 4.x's beside them.
pub fn to_gemma_config(config: &ModelConfig, gemma: &GemmaOptions) -> Value {
    let gemma3 = config.qk_norm;
    let layer_types: Vec<&str> = (0..config.n_layers).map(|l| if gemma.window(l).is_some() { "sliding_attention" } else { "full_attention" }).collect();
    let local_theta = gemma.local_rope_theta.unwrap_or(config.rope_theta);
    let mut full = json!({ "rope_type": "default", "rope_theta": config.rope_theta });
    if let Some(scaling) = &config.rope_scaling {
        full = super::config::rope_parameters_of(config.rope_theta, Some(scaling));
    }
    let sliding = json!({ "rope_type": "default", "rope_theta": local_theta });
    let mut hf = json!({
        "architectures": [if gemma3 { "Gemma3ForCausalLM" } else { "Gemma2ForCausalLM" }],
        "model_type": if gemma3 { "gemma3_text" } else { "gemma2" },
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads(),
        "head_dim": config.head_dim(),
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        // transformers' strict config types it as an int (Gemma's are 256, 144, 168).
        "query_pre_attn_scalar": if gemma.query_pre_attn_scalar.fract() == 0.0 { json!(gemma.query_pre_attn_scalar as u64) } else { json!(gemma.query_pre_attn_scalar) },
        "sliding_window": gemma.sliding_window.unwrap_or(config.max_seq_len),
        "layer_types": layer_types,
        "final_logit_softcapping": gemma.final_logit_softcap,
        "attn_logit_softcapping": gemma.attn_logit_softcap,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "use_cache": true,
        "rope_theta": config.rope_theta,
    });
    if gemma3 {
        hf["rope_parameters"] = json!({ "full_attention": full, "sliding_attention": sliding });
        hf["rope_local_base_freq"] = json!(local_theta);
        if config.rope_scaling.is_some() {
            // transformers 4.x reads the global layers' scaling from here.
            hf["rope_scaling"] = full;
        }
    } else {
        hf["rope_parameters"] = full;
    }
    hf
}
