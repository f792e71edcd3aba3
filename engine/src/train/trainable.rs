//! What a run trains (`trainable` in a training config or a recipe stage): every weight, the
//! routers only (MixtureKit's default finetune: the parameters named `gate` train, the rest is
//! frozen), the routers and the shared weights, the experts, or the parameters whose
//! checkpoint names match patterns. A frozen parameter gets no gradient, no optimizer moments
//! and no backward work for its weight gradient.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::checkpoint::tensor_names::{ATTENTION_EXPERTS, ATTENTION_ROUTER_END, PROJECTION_EXPERTS, ROUTED_EXPERTS, ROUTER_END};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trainable {
    /// Every parameter.
    All,
    /// The MoE routers (of the FFN experts and of BAM's attention experts).
    Routers,
    /// Everything but the experts: routers, attention, norms, embeddings, head.
    RoutersAndShared,
    /// The experts' weights (a dense model's FFNs).
    Experts,
    /// The parameters whose checkpoint names contain one of these strings; a pattern that
    /// starts with `!` excludes the names containing the rest (alone, it keeps all others).
    /// Each pattern must match a parameter of the model.
    Patterns(Vec<String>),
}

impl Trainable {
    /// The name patterns this stands for (`!` excludes).
    fn patterns(&self) -> Vec<String> {
        let s = |items: &[&str]| items.iter().map(|p| p.to_string()).collect();
        match self {
            Trainable::All => vec![],
            Trainable::Routers => s(&[ROUTER_END, ATTENTION_ROUTER_END, "_proj.gate.weight"]),
            Trainable::RoutersAndShared => vec![format!("!{ROUTED_EXPERTS}"), format!("!{ATTENTION_EXPERTS}"), format!("!{PROJECTION_EXPERTS}")],
            Trainable::Experts => {
                vec![ROUTED_EXPERTS.to_string(), ATTENTION_EXPERTS.to_string(), PROJECTION_EXPERTS.to_string(), ".mlp.".into(), format!("!{ATTENTION_ROUTER_END}")]
            }
            Trainable::Patterns(patterns) => patterns.clone(),
        }
    }

    /// Whether the parameter of checkpoint name `name` trains.
    pub fn trains(&self, name: &str) -> bool {
        let patterns = self.patterns();
        let (exclude, include): (Vec<&String>, Vec<&String>) = patterns.iter().partition(|p| p.starts_with('!'));
        (include.is_empty() || include.iter().any(|p| name.contains(p.as_str()))) && !exclude.iter().any(|p| name.contains(&p[1..]))
    }

    /// The weights of `model`'s matrix products that a token uses and this leaves frozen
    /// (a routed expert counted at its share of the routing, top_k / experts): their weight
    /// gradients, 2 FLOPs per weight and token, are never computed.
    pub fn frozen_matmul_params(&self, model: &crate::config::ModelConfig) -> f64 {
        let expert_share = model.moe.as_ref().map_or(1.0, |m| m.top_k as f64 / m.num_experts as f64);
        crate::hf::config::expected_tensors(model)
            .into_iter()
            .filter(|(name, shape)| shape.len() == 2 && !self.trains(name))
            // The embedding is a lookup unless it is also the head.
            .filter(|(name, _)| model.tie_embeddings || name != "model.embed_tokens.weight")
            .map(|(name, shape)| shape.iter().product::<usize>() as f64 * if name.contains(ROUTED_EXPERTS) || name.contains(PROJECTION_EXPERTS) { expert_share } else { 1.0 })
            .sum()
    }

    /// Errors unless the parameters `names` include one that trains and (for `Patterns`)
    /// every pattern matches one; `origin` names the config in errors.
    pub fn check(&self, names: &[String], origin: &str) -> Result<()> {
        if let Trainable::Patterns(patterns) = self {
            if patterns.is_empty() {
                bail!("{origin}: field `trainable`: Patterns([]) names nothing; use All to train every parameter");
            }
            for p in patterns {
                let bare = p.strip_prefix('!').unwrap_or(p);
                if bare.is_empty() || !names.iter().any(|n| n.contains(bare)) {
                    bail!("{origin}: field `trainable`: pattern {p:?} matches no parameter of the model (names look like {:?})", names.first().map(String::as_str).unwrap_or(""));
                }
            }
        }
        if !names.iter().any(|n| self.trains(n)) {
            bail!("{origin}: field `trainable`: {self:?} names no parameter of the model (a dense model has no routers)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_picks_its_parameters() {
        let router = "model.layers.0.block_sparse_moe.gate.weight";
        let expert = "model.layers.0.block_sparse_moe.experts.1.w1.weight";
        let attention = "model.layers.0.self_attn.q_proj.weight";
        let dense_ffn = "model.layers.0.mlp.up_proj.weight";
        let table = [
            (Trainable::All, [true, true, true, true]),
            (Trainable::Routers, [true, false, false, false]),
            (Trainable::RoutersAndShared, [true, false, true, true]),
            (Trainable::Experts, [false, true, false, true]),
            (Trainable::Patterns(vec!["self_attn".into()]), [false, false, true, false]),
            (Trainable::Patterns(vec!["!self_attn".into()]), [true, true, false, true]),
        ];
        for (kind, want) in table {
            let got = [router, expert, attention, dense_ffn].map(|n| kind.trains(n));
            assert_eq!(got, want, "{kind:?}");
        }
        let names: Vec<String> = [attention, dense_ffn].map(String::from).to_vec();
        assert!(Trainable::Routers.check(&names, "x.ron").unwrap_err().to_string().contains("no parameter"));
        let e = Trainable::Patterns(vec!["self_attn".into(), "nothing".into()]).check(&names, "x.ron").unwrap_err().to_string();
        assert!(e.contains("\"nothing\" matches no parameter"), "{e}");
        Trainable::Experts.check(&names, "x.ron").unwrap();
    }
}
