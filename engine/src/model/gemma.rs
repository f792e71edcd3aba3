//! The options that make the decoder a Gemma 2 / Gemma 3 one (Gemma Team 2024, "Gemma 2",
//! §2; 2025, "Gemma 3 Technical Report", §2), as transformers' `modeling_gemma3.py` computes
//! them:
//!
//! - RMSNorm scales by (1 + weight), its weights starting at 0 (`norm::RmsNorm::unit_offset`);
//! - four norms per layer ("sandwich" norms): x + post_attn(attn(input(x))), then
//!   h + post_ffn(ffn(pre_ffn(h))) (`block`);
//! - GeGLU: down(gelu_tanh(gate(x)) * up(x)), GELU's tanh approximation (`ffn`);
//! - the embedding multiplied by sqrt(d_model) (`lm`), the tied head reading the unscaled table;
//! - attention scores scaled by query_pre_attn_scalar^-1/2, not head_dim^-1/2;
//! - local layers attending to the last `sliding_window` positions (their own included),
//!   global layers to every earlier one; Gemma 3's local layers rotate with their own RoPE
//!   base (10,000) and without the global layers' scaling;
//! - Gemma 2's soft caps, cap * tanh(x / cap), on the attention scores and the final logits.
//!
//! Gemma 3's per-head q/k norms are the model's `qk_norm` (Qwen3's), with the unit offset.

use serde::{Deserialize, Serialize};

/// The Gemma settings of a model config (`ModelConfig::gemma`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmaOptions {
    /// Attention scores are q.k / sqrt(query_pre_attn_scalar) (Gemma 3 4B: 256).
    pub query_pre_attn_scalar: f64,
    /// Positions a local layer attends to, its own included; absent: every layer is global.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// The global (full-attention) layers; the others are local when `sliding_window` is set.
    /// Gemma 3: every sixth layer (5, 11, ...); Gemma 2: every second (1, 3, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub full_attention_layers: Vec<usize>,
    /// RoPE base of the local layers (Gemma 3's `rope_local_base_freq`, 10,000); absent: the
    /// model's `rope_theta`. The model's `rope_scaling` applies to the global layers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    /// Gemma 2's cap on the final logits (`final_logit_softcapping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcap: Option<f64>,
    /// Gemma 2's cap on the attention scores (`attn_logit_softcapping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcap: Option<f64>,
}

impl GemmaOptions {
    /// The window of `layer`'s attention: None for a global layer.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| !self.full_attention_layers.contains(&layer))
    }

    /// Checks the values; the error names the field under `model.gemma`.
    pub fn validate(&self, n_layers: usize) -> Result<(), String> {
        let positive = |field: &str, v: Option<f64>| match v {
            Some(v) if !(v > 0.0 && v.is_finite()) => Err(format!("field `model.gemma.{field}` must be positive, found {v}")),
            _ => Ok(()),
        };
        positive("query_pre_attn_scalar", Some(self.query_pre_attn_scalar))?;
        positive("local_rope_theta", self.local_rope_theta)?;
        positive("final_logit_softcap", self.final_logit_softcap)?;
        positive("attn_logit_softcap", self.attn_logit_softcap)?;
        if self.sliding_window == Some(0) {
            return Err("field `model.gemma.sliding_window` must be at least 1, found 0".into());
        }
        if let Some(&layer) = self.full_attention_layers.iter().find(|&&l| l >= n_layers) {
            return Err(format!("field `model.gemma.full_attention_layers` names layer {layer}; the model has {n_layers} (0..{})", n_layers.saturating_sub(1)));
        }
        Ok(())
    }
}

/// How attention scores are formed beyond q.k / sqrt(head_dim) and the causal mask: the
/// Gemma options one attention layer uses (all absent for the other families).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScoreOptions {
    /// Multiplies q.k in place of head_dim^-1/2.
    pub scale: Option<f64>,
    /// cap * tanh(score / cap) before the softmax.
    pub softcap: Option<f64>,
    /// Keys at most `window - 1` positions before the query.
    pub window: Option<usize>,
}

impl ScoreOptions {
    /// Layer `layer`'s options under `gemma` (none without it).
    pub fn of_layer(gemma: Option<&GemmaOptions>, layer: usize) -> Self {
        gemma.map_or_else(Self::default, |g| Self {
            scale: Some(g.query_pre_attn_scalar.powf(-0.5)),
            softcap: g.attn_logit_softcap,
            window: g.window(layer),
        })
    }
}

/// cap * tanh(x / cap): Gemma 2's soft cap.
pub fn soft_cap<const D: usize>(x: burn::prelude::Tensor<D>, cap: f64) -> burn::prelude::Tensor<D> {
    (x / cap).tanh() * cap
}

/// GELU's tanh approximation (PyTorch's `gelu(approximate="tanh")`):
/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). The cube is x * x * x: a float power of a
/// negative base is NaN in GPU shaders.
pub fn gelu_tanh<const D: usize>(x: burn::prelude::Tensor<D>) -> burn::prelude::Tensor<D> {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * sqrt_2_over_pi;
    x * (inner.tanh() + 1.0) * 0.5
}
