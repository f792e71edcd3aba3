//! Sparse upcycling (Komatsuzaki et al. 2022): the seed's FFN copied into E experts
//! (optionally with a little Gaussian noise so they can diverge), a new router per layer,
//! every other tensor the seed's own. BTX with no expert training.

use anyhow::Result;

use super::mix::{MoeOptions, RouterDirections, assemble_moe};
use super::{MergeInput, check_same_architecture, ffn_tensor};
use crate::checkpoint::tensor_file::TensorMap;
use crate::config::ModelConfig;
use crate::data::rng::Rng;

pub fn upcycle(
    seed: &MergeInput,
    num_experts: usize,
    noise_std: f64,
    options: &MoeOptions,
    directions: RouterDirections,
) -> Result<(ModelConfig, TensorMap)> {
    check_same_architecture(&[seed])?;
    let shared: TensorMap =
        seed.tensors.iter().filter(|(n, _)| ffn_tensor(n).is_none()).map(|(n, t)| (n.clone(), t.clone())).collect();
    let copies: Vec<TensorMap> = (0..num_experts)
        .map(|e| {
            let mut rng = Rng::new(options.seed ^ (0xC0FFEE + e as u64));
            seed.tensors
                .iter()
                .filter(|(n, _)| ffn_tensor(n).is_some())
                .map(|(n, t)| {
                    let mut t = t.clone();
                    if noise_std > 0.0 {
                        t.values.iter_mut().for_each(|v| *v += (rng.normal() * noise_std) as f32);
                    }
                    (n.clone(), t)
                })
                .collect()
        })
        .collect();
    let members: Vec<&TensorMap> = copies.iter().collect();
    assemble_moe(&seed.config, shared, &members, options, directions)
}
