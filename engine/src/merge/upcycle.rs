//! Sparse upcycling (Komatsuzaki et al. 2022): the seed's FFN copied into E experts
//! (optionally with a little Gaussian noise so they can diverge), a new router per layer,
//! every other tensor the seed's own. BTX with no expert training.

use anyhow::Result;

use super::mix::{MoeOptions, RouterDirections, assemble_moe};
use super::plan::{Cut, MergePlan, Source, outputs_like};
use super::{MergeInput, check_same_architecture, ffn_tensor};

pub fn upcycle<'a>(
    seed: &'a MergeInput,
    num_experts: usize,
    noise_std: f64,
    options: &MoeOptions,
    directions: RouterDirections,
) -> Result<MergePlan<'a>> {
    check_same_architecture(&[seed])?;
    let copy = |name: &str| Source::Piece { member: 0, name: name.to_string(), cut: Cut::Whole, noise: None };
    let shared = outputs_like(seed, |n| ffn_tensor(n).is_none(), copy);
    let noise = (noise_std > 0.0).then_some((noise_std, options.seed));
    assemble_moe(seed.config.clone(), vec![seed], shared, &vec![0; num_experts], noise, options, directions)
}
