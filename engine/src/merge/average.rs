//! BTM parameter averaging (Li et al. 2022): one dense model whose every tensor is
//! sum_j w_j theta_j. Also how a new expert branches from the existing forest.

use anyhow::Result;

use super::{MergeInput, check_same_architecture, normalized_weights, weighted_average};
use crate::checkpoint::tensor_file::TensorMap;
use crate::config::ModelConfig;

pub fn average(inputs: &[MergeInput], weights: Option<&[f64]>) -> Result<(ModelConfig, TensorMap)> {
    check_same_architecture(&inputs.iter().collect::<Vec<_>>())?;
    let w = normalized_weights(weights, inputs.len())?;
    let mut out = TensorMap::new();
    for name in inputs[0].tensors.keys() {
        let members: Vec<_> = inputs.iter().map(|i| &i.tensors[name]).collect();
        out.insert(name.clone(), weighted_average(&members, &w));
    }
    Ok((inputs[0].config.clone(), out))
}
