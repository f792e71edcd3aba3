//! Routing statistics per MoE layer: the share of token assignments each expert received,
//! and the share dropped for capacity. Summed over batches during training or evaluation.

use serde::{Deserialize, Serialize};

use super::moe::MoeAux;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerRouting {
    /// Assignments each expert processed.
    pub expert_tokens: Vec<usize>,
    pub dropped: usize,
    pub assignments: usize,
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
