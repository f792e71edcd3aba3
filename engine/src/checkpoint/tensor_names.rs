//! The checkpoint names of the FFN and router tensors, in one place: the dense FFN
//! (`LlamaForCausalLM`'s `mlp.gate_proj/up_proj/down_proj`), the MoE experts (Mixtral's
//! `block_sparse_moe.experts.E.w1/w2/w3`), the shared expert and the router. The model's
//! module paths, the merges, growth and Hugging Face import/export all name them through
//! these functions, so Mixtral's w1/w2/w3 mapping is written once.

/// One of the three projections of a SwiGLU FFN: down(silu(gate(x)) * up(x)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 3] = [Projection::Gate, Projection::Up, Projection::Down];

    /// Llama's name (the dense FFN, a shared expert, Qwen2-MoE's experts).
    pub fn llama(self) -> &'static str {
        match self {
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// Mixtral's name of an expert's projection: w1 = gate, w2 = down, w3 = up.
    pub fn mixtral(self) -> &'static str {
        match self {
            Self::Gate => "w1",
            Self::Down => "w2",
            Self::Up => "w3",
        }
    }

    pub fn from_llama(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.llama() == name)
    }

    /// The `[out, in]` shape of the projection (Hugging Face layout) for an FFN of width
    /// `d_ff` in a model of width `d_model`: down maps d_ff to d_model, the others the reverse.
    pub fn shape(self, d_model: usize, d_ff: usize) -> Vec<usize> {
        match self {
            Self::Down => vec![d_model, d_ff],
            Self::Gate | Self::Up => vec![d_ff, d_model],
        }
    }

    /// The dimension of the projection's `[out, in]` weight that runs over the hidden units.
    pub fn hidden_dim(self) -> usize {
        if self == Self::Down { 1 } else { 0 }
    }
}

/// `model.layers.L.mlp.P.weight`: a dense FFN projection.
pub fn dense_ffn(layer: usize, proj: Projection) -> String {
    format!("model.layers.{layer}.mlp.{}.weight", proj.llama())
}

/// `model.layers.L.block_sparse_moe.experts.E.wN.weight`: an MoE expert's projection.
pub fn expert_ffn(layer: usize, expert: usize, proj: Projection) -> String {
    format!("model.layers.{layer}.block_sparse_moe.experts.{expert}.{}.weight", proj.mixtral())
}

/// `model.layers.L.block_sparse_moe.shared_expert.P.weight`: the shared expert's projection.
pub fn shared_expert_ffn(layer: usize, proj: Projection) -> String {
    format!("model.layers.{layer}.block_sparse_moe.shared_expert.{}.weight", proj.llama())
}

/// `model.layers.L.block_sparse_moe.gate.weight`: the router of an MoE layer.
pub fn router(layer: usize) -> String {
    format!("model.layers.{layer}.block_sparse_moe.gate.weight")
}

/// What every tensor name of a routed expert holds before the expert's number.
pub const ROUTED_EXPERTS: &str = ".block_sparse_moe.experts.";
/// The same for BAM's attention experts.
pub const ATTENTION_EXPERTS: &str = ".attention_experts.experts.";
/// The name ends of the two kinds of router.
pub const ROUTER_END: &str = ".block_sparse_moe.gate.weight";
pub const ATTENTION_ROUTER_END: &str = ".attention_experts.gate.weight";

/// What every name of a routed projection's tensors (MixtureKit's BTX) holds.
pub const PROJECTION_MOE: &str = ".projection_moe.";
/// What the names of a routed projection's experts hold (and no other tensor's).
pub const PROJECTION_EXPERTS: &str = "_proj.experts.";

/// Whether a tensor (by checkpoint name or Burn module path) is a router of any kind.
pub fn is_router(name: &str) -> bool {
    name.ends_with(ROUTER_END) || name.ends_with(ATTENTION_ROUTER_END) || (name.contains(PROJECTION_MOE) && name.ends_with(".gate.weight"))
}

/// Whether a tensor (by checkpoint name or Burn module path) belongs to an FFN: a dense FFN,
/// an MoE's experts or shared expert, a per-projection MoE's projections (routers aside).
pub fn is_ffn(name: &str) -> bool {
    !is_router(name) && (name.contains(".mlp.") || name.contains(".block_sparse_moe.") || name.contains(PROJECTION_MOE))
}

/// `model.layers.L.projection_moe.P.gate.weight`: the router of projection P (MixtureKit's
/// BTX), `[E, d_in]`.
pub fn projection_router(layer: usize, proj: Projection) -> String {
    format!("model.layers.{layer}{PROJECTION_MOE}{}.gate.weight", proj.llama())
}

/// `model.layers.L.projection_moe.P.experts.E.weight`: expert E of a routed projection.
pub fn projection_expert(layer: usize, proj: Projection, expert: usize) -> String {
    format!("model.layers.{layer}{PROJECTION_MOE}{}.experts.{expert}.weight", proj.llama())
}

/// `model.layers.L.projection_moe.P.plain.weight`: a projection the layer does not route.
pub fn projection_plain(layer: usize, proj: Projection) -> String {
    format!("model.layers.{layer}{PROJECTION_MOE}{}.plain.weight", proj.llama())
}

/// `.block_sparse_moe.experts.E.`: the part of a name every tensor of routed expert E holds.
pub fn routed_expert_part(expert: usize) -> String {
    format!("{ROUTED_EXPERTS}{expert}.")
}

/// `.attention_experts.experts.E.`: the same for attention expert E.
pub fn attention_expert_part(expert: usize) -> String {
    format!("{ATTENTION_EXPERTS}{expert}.")
}

/// `model.layers.L.self_attn.P`: an attention tensor (P: `q_proj.weight`, `q_norm.weight`, ...).
pub fn self_attention(layer: usize, part: &str) -> String {
    format!("model.layers.{layer}.self_attn.{part}")
}

/// `model.layers.L.attention_experts.experts.E.P`: the same tensor of attention expert E.
pub fn attention_expert(layer: usize, expert: usize, part: &str) -> String {
    format!("model.layers.{layer}{}{part}", attention_expert_part(expert))
}

/// `model.layers.L.attention_experts.P`: a tensor the attention experts share (`shared_kv`).
pub fn shared_attention(layer: usize, part: &str) -> String {
    format!("model.layers.{layer}.attention_experts.{part}")
}

/// The (layer, projection) of a dense FFN tensor name, or None for any other tensor.
pub fn parse_dense_ffn(name: &str) -> Option<(usize, Projection)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let proj = Projection::from_llama(rest.strip_prefix("mlp.")?.strip_suffix(".weight")?)?;
    Some((layer.parse().ok()?, proj))
}

/// A module path's expert projections renamed to Mixtral's (`experts.E.gate_proj.` ->
/// `experts.E.w1.`): the model's experts are FFN modules with Llama's field names.
pub fn mixtral_expert_path(path: &str) -> String {
    if !path.contains(ROUTED_EXPERTS) {
        return path.to_string();
    }
    Projection::ALL.iter().fold(path.to_string(), |p, proj| p.replace(&format!(".{}.", proj.llama()), &format!(".{}.", proj.mixtral())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_render_and_parse_back() {
        for proj in Projection::ALL {
            assert_eq!(parse_dense_ffn(&dense_ffn(3, proj)), Some((3, proj)));
            assert_eq!(Projection::from_llama(proj.llama()), Some(proj));
        }
        assert_eq!(expert_ffn(1, 2, Projection::Down), "model.layers.1.block_sparse_moe.experts.2.w2.weight");
        assert_eq!(mixtral_expert_path("layers.0.block_sparse_moe.experts.1.up_proj.weight"), "layers.0.block_sparse_moe.experts.1.w3.weight");
        assert_eq!(mixtral_expert_path("layers.0.block_sparse_moe.shared_expert.up_proj.weight"), "layers.0.block_sparse_moe.shared_expert.up_proj.weight");
        assert_eq!(parse_dense_ffn("model.layers.0.self_attn.q_proj.weight"), None);
        assert_eq!(Projection::Down.shape(8, 32), vec![8, 32]);
    }
}
