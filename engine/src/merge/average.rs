//! BTM parameter averaging (Li et al. 2022, "Branch-Train-Merge"): one dense model whose every tensor is
//! sum_j w_j theta_j. Also how a new expert branches from the existing forest.

use anyhow::Result;

use super::plan::{MergePlan, Source, outputs_like};
use super::{MergeInput, check_same_architecture, normalized_weights};

pub fn average<'a>(inputs: &'a [MergeInput], weights: Option<&[f64]>) -> Result<MergePlan<'a>> {
    let members: Vec<&MergeInput> = inputs.iter().collect();
    check_same_architecture(&members)?;
    let weights = normalized_weights(weights, inputs.len())?;
    let average = |name: &str| Source::Average { name: name.to_string(), weights: weights.clone() };
    let outputs = outputs_like(&inputs[0], |_| true, average);
    Ok(MergePlan::new(inputs[0].config.clone(), members, outputs))
}
