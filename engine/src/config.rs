//! Configuration files (RON): the model's sizes and a training run's settings.
//!
//! Every struct rejects unknown fields, and every check names the file and the field, so a
//! typo in a config is an error with its line and column, never a silently ignored setting.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::model::moe_config::AttentionExpertsConfig;
use crate::model::moe_config::MoeConfig;

/// Sizes of a Llama-style decoder (the seed and every expert share one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Rows of the embedding table; at least the tokenizer's vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of decoder blocks.
    pub n_layers: usize,
    /// Query heads per attention layer.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention); equal to `n_heads` for plain attention.
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    /// Hidden width of each SwiGLU feed-forward network.
    pub d_ff: usize,
    /// Longest sequence the model is trained or evaluated on.
    pub max_seq_len: usize,
    /// RoPE base frequency.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Rescaled RoPE frequencies for a longer context (Llama 3.1's, or linear); absent: none
    /// (and left out of written configs, so those of earlier models are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<crate::model::rope::RopeScaling>,
    /// Width of each attention head; absent: d_model / n_heads. Qwen3 sets it apart (its
    /// queries are then n_heads x head_dim wide, not d_model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Biases on the query, key and value projections (not the output's): Qwen2's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attention_bias: bool,
    /// RMSNorm of each query and key head before RoPE: Qwen3's `q_norm` and `k_norm`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// RMSNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Share the embedding matrix with the LM head.
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Attention experts in every layer in place of the one attention (BAM); absent: one
    /// attention per layer.
    #[serde(default)]
    pub attention_experts: Option<AttentionExpertsConfig>,
    /// Mixture-of-Experts layers in place of the FFN (absent: a dense model).
    #[serde(default)]
    pub moe: Option<MoeConfig>,
    /// Gemma 2 / Gemma 3's options (`model::gemma`): unit-offset and sandwich norms, GeGLU,
    /// the scaled embedding and attention scores, sliding-window layers, soft caps. Absent:
    /// a Llama-family model (and left out of written configs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemma: Option<crate::model::gemma::GemmaOptions>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_norm_eps() -> f64 {
    1e-5
}

impl ModelConfig {
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.d_model / self.n_heads)
    }

    /// Width of the queries (and of the attention's output before `o_proj`).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim()
    }

    /// The tensors of one layer's attention, named by what follows `self_attn.` (or an
    /// attention expert's prefix), with their shapes: Llama's four projections, Qwen2's q/k/v
    /// biases, Qwen3's per-head q/k norms.
    pub fn attention_parts(&self) -> Vec<(&'static str, Vec<usize>)> {
        let (d, q, kv, head) = (self.d_model, self.q_dim(), self.kv_heads() * self.head_dim(), self.head_dim());
        let mut parts = vec![("q_proj.weight", vec![q, d]), ("k_proj.weight", vec![kv, d]), ("v_proj.weight", vec![kv, d]), ("o_proj.weight", vec![d, q])];
        if self.attention_bias {
            parts.extend([("q_proj.bias", vec![q]), ("k_proj.bias", vec![kv]), ("v_proj.bias", vec![kv])]);
        }
        if self.qk_norm {
            parts.extend([("q_norm.weight", vec![head]), ("k_norm.weight", vec![head])]);
        }
        parts
    }

    /// Checks the sizes fit together; `origin` names the file in the error.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let err = |field: &str, msg: String| -> Result<()> {
            bail!("{origin}: field `model.{field}`: {msg}")
        };
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
        ] {
            if value == 0 {
                err(field, "must be at least 1, found 0".into())?;
            }
        }
        if self.head_dim.is_none() && self.d_model % self.n_heads != 0 {
            err(
                "n_heads",
                format!(
                    "d_model ({}) must be divisible by n_heads ({})",
                    self.d_model, self.n_heads
                ),
            )?;
        }
        if self.head_dim() % 2 != 0 {
            err(
                "n_heads",
                format!(
                    "the head dimension (head_dim, or d_model / n_heads) = {} must be even for RoPE",
                    self.head_dim()
                ),
            )?;
        }
        let kv = self.kv_heads();
        if kv == 0 || self.n_heads % kv != 0 {
            err(
                "n_kv_heads",
                format!(
                    "n_heads ({}) must be a multiple of n_kv_heads ({kv})",
                    self.n_heads
                ),
            )?;
        }
        if !(self.rope_theta > 0.0) {
            err("rope_theta", format!("must be positive, found {}", self.rope_theta))?;
        }
        if let Some(Err(e)) = self.rope_scaling.as_ref().map(|s| s.validate()) {
            err("rope_scaling", e)?;
        }
        if self.head_dim == Some(0) {
            err("head_dim", "must be at least 2".into())?;
        }
        if !(self.norm_eps > 0.0) {
            err("norm_eps", format!("must be positive, found {}", self.norm_eps))?;
        }
        if let Some(moe) = &self.moe {
            moe.validate(origin, self.n_layers)?;
        }
        if let Some(Err(e)) = self.gemma.as_ref().map(|g| g.validate(self.n_layers)) {
            bail!("{origin}: {e}");
        }
        if self.attention_experts.as_ref().is_some_and(|a| a.num_experts == 0) {
            err("attention_experts.num_experts", "must be at least 1, found 0".into())?;
        }
        Ok(())
    }

    /// Parameters of the whole model (every expert counted).
    pub fn num_params(&self) -> usize {
        self.count_params(false)
    }

    /// Parameters one token uses: an MoE layer counts its router and the k experts a token
    /// is routed to, not all E (the active parameters the BTX paper compares compute by).
    pub fn active_params(&self) -> usize {
        self.count_params(true)
    }

    fn count_params(&self, active_only: bool) -> usize {
        let d = self.d_model;
        // Attention experts are all active (soft routing), so they count in both totals.
        let attention: usize = self
            .attention_parts()
            .iter()
            .map(|(part, shape)| {
                let copies = match &self.attention_experts {
                    None => 1,
                    Some(a) if a.shared_kv && is_key_value_part(part) => 1,
                    Some(a) => a.num_experts,
                };
                copies * shape.iter().product::<usize>()
            })
            .sum::<usize>()
            + self.attention_experts.as_ref().map_or(0, |a| a.num_experts * d);
        let dense_ffn = 3 * d * self.d_ff;
        let ffn = |layer: usize| match &self.moe {
            Some(moe) if moe.is_moe_layer(layer) && !moe.routed_projections.is_empty() => {
                // Per routed projection: a router over its input and E copies (k used).
                let used = if active_only { moe.top_k } else { moe.num_experts };
                let routed = moe.routed_projections.len();
                let router_inputs: usize = moe.routed_projections.iter().map(|p| if p.projection() == crate::checkpoint::tensor_names::Projection::Down { self.d_ff } else { d }).sum();
                moe.num_experts * router_inputs + (routed * used + 3 - routed) * d * self.d_ff
            }
            Some(moe) if moe.is_moe_layer(layer) => {
                let expert = 3 * d * moe.expert_d_ff.unwrap_or(self.d_ff);
                let used = if active_only { moe.active_experts() } else { moe.num_experts };
                d * moe.num_experts + used * expert + if moe.shared_expert { dense_ffn } else { 0 }
            }
            _ => dense_ffn,
        };
        let norms = if self.gemma.is_some() { 4 * d } else { 2 * d };
        let blocks: usize = (0..self.n_layers).map(|l| attention + ffn(l) + norms).sum();
        let head = if self.tie_embeddings { 0 } else { self.vocab_size * d };
        self.vocab_size * d + blocks + d + head
    }

    /// Training FLOPs per token (forward + backward): 6 x the active parameters a token
    /// multiplies by (the embedding lookup is not a matmul; a tied head is), plus attention's
    /// score and mix matmuls (nanoGPT's estimate, 12 x layers x d_model x seq_len, once per
    /// attention expert).
    pub fn train_flops_per_token(&self, seq_len: usize) -> f64 {
        let attentions = self.attention_experts.as_ref().map_or(1, |a| a.num_experts);
        6.0 * self.matmul_params() as f64 + 12.0 * (attentions * self.n_layers * self.d_model * seq_len) as f64
    }

    /// The weights a token's matrix products use: the active parameters less the embedding
    /// lookup, plus the LM head's products when it is the tied embedding.
    pub fn matmul_params(&self) -> usize {
        self.active_params() - self.vocab_size * self.d_model + if self.tie_embeddings { self.vocab_size * self.d_model } else { 0 }
    }
}

/// Whether an attention part (`ModelConfig::attention_parts`) belongs to the keys or values,
/// which BAM's `shared_kv` shares between the attention experts.
pub fn is_key_value_part(part: &str) -> bool {
    part.starts_with("k_") || part.starts_with("v_")
}

/// Reads a RON file into `T`, with the file name, line and column in every error.
pub fn read_ron<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_ron(&text, &path.display().to_string())
}

/// Parses RON text; `origin` names its source in errors.
pub fn parse_ron<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .from_str(text)
        .map_err(|e| {
            anyhow::anyhow!(
                "{origin}: line {} column {}: {}",
                e.position.line,
                e.position.col,
                e.code
            )
        })
}

/// Writes `T` as pretty RON.
pub fn to_ron<T: Serialize>(value: &T) -> Result<String> {
    Ok(ron::ser::to_string_pretty(value, ron::ser::PrettyConfig::default())?)
}

/// Resolves a path from a config file: absolute paths stay, relative ones are taken from the
/// current directory (recipes and configs name `assets/...` from the repository root).
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
    }
}
