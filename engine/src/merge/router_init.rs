//! Initial router weights of a merged MoE: random N(0, 0.02) as in the BTX paper, or one row
//! per expert from a vector describing its domain (mean token embedding, or mean hidden
//! state at that layer), scaled to the random initialisation's norm.

use serde::{Deserialize, Serialize};

use crate::checkpoint::tensor_file::HostTensor;
use crate::data::rng::Rng;
use crate::model::init::INIT_STD;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
pub enum RouterInit {
    /// N(0, 0.02), as in the BTX paper.
    #[default]
    Random,
    /// Row e = the mean token embedding of expert e's domain data.
    Embedding,
    /// Row e = the mean hidden state entering that layer's FFN, with expert e on its domain.
    Hidden,
}

/// A random router `[E, d_model]` for layer `layer`, from `seed`.
pub fn random_router(num_experts: usize, d_model: usize, layer: usize, seed: u64) -> HostTensor {
    let mut rng = Rng::new(seed ^ (0x5EED_0000 + layer as u64));
    let values = (0..num_experts * d_model).map(|_| (rng.normal() * INIT_STD) as f32).collect();
    HostTensor::new(vec![num_experts, d_model], values)
}

/// A router whose row e is `directions[e]`, centred (the mean over experts removed, so
/// the rows differ where the domains differ) and scaled to the norm of a random row.
pub fn router_from_directions(directions: &[Vec<f32>]) -> HostTensor {
    let (e, d) = (directions.len(), directions[0].len());
    let mean: Vec<f32> = (0..d).map(|i| directions.iter().map(|v| v[i]).sum::<f32>() / e as f32).collect();
    let target = (INIT_STD * (d as f64).sqrt()) as f32;
    let mut values = Vec::with_capacity(e * d);
    for v in directions {
        let centred: Vec<f32> = v.iter().zip(&mean).map(|(a, m)| a - m).collect();
        let norm = centred.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        values.extend(centred.iter().map(|x| x / norm * target));
    }
    HostTensor::new(vec![e, d], values)
}
