//! Sparse upcycling (Komatsuzaki et al. 2022): the seed's FFN copied into E experts, a new
//! router per layer, every other tensor the seed's own. BTX with no expert training.
//!
//! The copies may be made to differ: a little Gaussian noise, or Drop-Upcycling (Nakamura et
//! al. 2025), which re-initialises a ratio r of each copy's hidden units from the weights' own
//! statistics (`plan::Reinit`); r = 0 is plain upcycling. With a shared expert, the seed's FFN
//! is also kept as the always-active shared expert.

use anyhow::Result;

use super::mix::{MoeOptions, Perturbation, RouterDirections, SharedExpert, assemble_moe, shared_expert_outputs};
use super::plan::{MergePlan, Source, outputs_like};
use super::{MergeInput, check_same_architecture, ffn_tensor};

pub fn upcycle<'a>(
    seed: &'a MergeInput,
    num_experts: usize,
    perturbation: Perturbation,
    options: &MoeOptions,
    directions: RouterDirections,
) -> Result<MergePlan<'a>> {
    check_same_architecture(&[seed])?;
    let copy = |name: &str| Source::whole(0, name);
    let mut outputs = outputs_like(seed, |n| ffn_tensor(n).is_none(), copy);
    if options.shared_expert != SharedExpert::None {
        outputs.extend(shared_expert_outputs(seed, copy));
    }
    assemble_moe(seed.config.clone(), vec![seed], outputs, &vec![0; num_experts], perturbation, options, directions)
}
