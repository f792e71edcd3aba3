//! Routing statistics per MoE layer: the share of token assignments each expert received,
//! and the share dropped for capacity. Summed over batches during training or evaluation;
//! at evaluation also the routers' mean entropy.

use serde::{Deserialize, Serialize};

use super::moe::MoeAux;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerRouting {
    /// Assignments each expert processed.
    pub expert_tokens: Vec<usize>,
    pub dropped: usize,
    pub assignments: usize,
    /// Evaluation: the router's entropy summed over `entropy_tokens` tokens.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub entropy_sum: f64,
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub entropy_tokens: usize,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
fn is_zero_count(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingStats {
    /// One entry per MoE layer, in depth order.
    pub layers: Vec<LayerRouting>,
}

impl RoutingStats {
    pub fn add(&mut self, aux: &[MoeAux]) {
        if self.layers.is_empty() {
            self.layers = aux
                .iter()
                .map(|a| LayerRouting { expert_tokens: vec![0; a.expert_tokens.len()], ..Default::default() })
                .collect();
        }
        for (layer, a) in self.layers.iter_mut().zip(aux) {
            for (sum, n) in layer.expert_tokens.iter_mut().zip(&a.expert_tokens) {
                *sum += n;
            }
            layer.dropped += a.dropped;
            layer.assignments += a.assignments;
            if let Some(h) = &a.router_entropy_sum {
                layer.entropy_sum += h.clone().into_scalar::<f32>() as f64;
                layer.entropy_tokens += a.tokens;
            }
        }
    }

    /// `[layer][expert]`: the share of processed assignments each expert took.
    pub fn shares(&self) -> Vec<Vec<f64>> {
        self.layers
            .iter()
            .map(|l| {
                let total = l.expert_tokens.iter().sum::<usize>().max(1) as f64;
                l.expert_tokens.iter().map(|&n| n as f64 / total).collect()
            })
            .collect()
    }

    /// Per layer, the router's mean entropy per token (nats; empty unless evaluated).
    pub fn entropies(&self) -> Vec<f64> {
        if self.layers.iter().any(|l| l.entropy_tokens == 0) {
            return vec![];
        }
        self.layers.iter().map(|l| l.entropy_sum / l.entropy_tokens as f64).collect()
    }

    /// The share of all assignments dropped for capacity.
    pub fn dropped_fraction(&self) -> f64 {
        let dropped: usize = self.layers.iter().map(|l| l.dropped).sum();
        let total: usize = self.layers.iter().map(|l| l.assignments).sum();
        dropped as f64 / total.max(1) as f64
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}
