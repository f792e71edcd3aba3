//! Where a BTX merge loses its experts' gains. MiX averages every non-FFN tensor (attention,
//! norms, embeddings) of experts that were trained apart; the further those drifted from the
//! seed and from each other, the less each expert's FFN finds the inputs it was trained on.
//!
//! Two measures: `drift`, the relative distance of each member's shared (non-FFN) weights to
//! the seed's and to their average (formulas at `Drift`); and `transplant`, a dense model made of one expert's FFN
//! inside the averaged shared weights (what the merged MoE computes when every token goes to
//! that expert), to be evaluated beside the expert itself.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::plan::{MergePlan, Source, outputs_like};
use super::{MergeInput, check_same_architecture, ffn_tensor, normalized_weights};

/// How far one member m's shared weights are from the seed s's and from the members'
/// (weighted) average a, over every non-FFN tensor together:
///   from_seed    = ||m - s|| / ||s||   (relative to the seed's norm)
///   from_average = ||m - a|| / ||m||   (relative to the member's own norm)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub member: String,
    pub from_seed: f64,
    pub from_average: f64,
}

/// The drift of each member (weights as in the merge: uniform by default).
pub fn drift(members: &[&MergeInput], seed: &MergeInput, weights: Option<&[f64]>) -> Result<Vec<Drift>> {
    let all: Vec<&MergeInput> = members.iter().copied().chain([seed]).collect();
    check_same_architecture(&all)?;
    let w = normalized_weights(weights, members.len())?;
    let n = members.len();
    let (mut to_seed, mut to_avg, mut seed_norm, mut own_norm) = (vec![0.0; n], vec![0.0; n], 0.0, vec![0.0; n]);
    for name in seed.shapes().keys().filter(|name| ffn_tensor(name).is_none()) {
        let s = seed.read(name)?;
        let tensors = members.iter().map(|m| m.read(name)).collect::<Result<Vec<_>>>()?;
        let len = s.values.len();
        let avg: Vec<f64> = (0..len).map(|i| tensors.iter().zip(&w).map(|(t, w)| w * t.values[i] as f64).sum()).collect();
        seed_norm += s.values.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        for (m, t) in tensors.iter().enumerate() {
            for i in 0..len {
                let v = t.values[i] as f64;
                to_seed[m] += (v - s.values[i] as f64).powi(2);
                to_avg[m] += (v - avg[i]).powi(2);
                own_norm[m] += v * v;
            }
        }
    }
    Ok((0..n)
        .map(|m| Drift {
            member: super::run_name(&members[m].path),
            from_seed: (to_seed[m] / seed_norm.max(1e-30)).sqrt(),
            from_average: (to_avg[m] / own_norm[m].max(1e-30)).sqrt(),
        })
        .collect())
}

/// A dense model: member `member`'s FFN in every layer, every other tensor the weighted
/// average of all members' (as BTX's MiX averages them).
pub fn transplant<'a>(members: &'a [MergeInput], member: usize, weights: Option<&[f64]>) -> Result<MergePlan<'a>> {
    let refs: Vec<&MergeInput> = members.iter().collect();
    check_same_architecture(&refs)?;
    if member >= members.len() {
        bail!("--member {member}: there are {} members (0..{})", members.len(), members.len() - 1);
    }
    let weights = normalized_weights(weights, members.len())?;
    let average = |name: &str| Source::Average { name: name.to_string(), weights: weights.clone() };
    let mut outputs = outputs_like(&members[0], |n| ffn_tensor(n).is_none(), average);
    let own = |name: &str| Source::whole(member, name);
    outputs.extend(outputs_like(&members[member], |n| ffn_tensor(n).is_some(), own));
    Ok(MergePlan::new(members[0].config.clone(), refs, outputs))
}
