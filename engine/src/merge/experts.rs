//! Removing or adding an expert of a merged MoE after the fact. Experts trained apart can be
//! opted out of, or into, a model without retraining the rest (FlexOlmo, Shi et al. 2025, §3;
//! BTM's "grow the forest", Li et al. 2022, §4).
//!
//! Removing expert e drops its FFNs and its router row in every layer: routing continues over
//! the rest, so a token that never chose e is computed exactly as before. Adding a dense
//! expert appends its FFNs (and, in a BAM model, its attention) as one more expert, with a new
//! router row per layer: random, or from its data (`AddedRouterRows`). The dense expert's
//! other weights are not used: the MoE's shared weights stay.

use std::path::Path;

use anyhow::{Result, bail};

use super::mix::{ffn_expert_outputs, member_attention_outputs};
use super::plan::{MergePlan, Output, Source};
use super::record::{MERGE_RECORD_FILE, MergeRecord};
use super::router_init::random_router;
use super::{MergeInput, check_same_architecture};
use crate::checkpoint::tensor_names;
use crate::checkpoint::tensor_file::HostTensor;
use crate::config::ModelConfig;

use tensor_names::{ATTENTION_EXPERTS as ATTENTION, ROUTED_EXPERTS as ROUTED};

/// The routed experts of an MoE, and their names (from the merge record, else their numbers).
pub struct MoeExperts {
    pub names: Vec<String>,
    /// Routed experts per member (split experts).
    pub split: usize,
}

impl MoeExperts {
    pub fn of(moe: &MergeInput) -> Result<Self> {
        let Some(m) = &moe.config.moe else { bail!("{} is a dense checkpoint; expert edits take an MoE", moe.path.display()) };
        let split = m.expert_d_ff.map_or(1, |f| (moe.config.d_ff / f).max(1));
        let names = super::expert_names(&moe.path)
            .filter(|n| n.len() == m.num_experts)
            .unwrap_or_else(|| (0..m.num_experts).map(|e| e.to_string()).collect());
        Ok(Self { names, split })
    }

    /// The routed experts `name` picks: the expert of that name (or number), or the split
    /// pieces `name.0`, `name.1`, ...
    pub fn named(&self, name: &str) -> Result<Vec<usize>> {
        let picked: Vec<usize> = (0..self.names.len())
            .filter(|&e| self.names[e] == name || self.names[e].strip_prefix(name).is_some_and(|rest| rest.starts_with('.')))
            .collect();
        if !picked.is_empty() {
            return Ok(picked);
        }
        match name.parse::<usize>() {
            Ok(e) if e < self.names.len() => Ok(vec![e]),
            _ => bail!("no expert named `{name}`: the experts are {:?} (or give a number 0..{})", self.names, self.names.len() - 1),
        }
    }
}

/// The tensor `name` with its expert number after `marker` mapped by `map` (None: dropped);
/// `None` when `name` is not an expert tensor of that kind.
fn renumbered(name: &str, marker: &str, map: &[Option<usize>]) -> Option<Option<String>> {
    let at = name.find(marker)? + marker.len();
    let (number, rest) = name[at..].split_once('.')?;
    let old: usize = number.parse().ok()?;
    Some(map.get(old).copied().flatten().map(|new| format!("{}{new}.{rest}", &name[..at])))
}

/// New numbers for `count` experts once `dropped` are gone: the rest keep their order.
fn renumber_without(count: usize, dropped: &[usize]) -> Vec<Option<usize>> {
    let mut next = 0..;
    (0..count).map(|e| (!dropped.contains(&e)).then(|| next.next().expect("unbounded"))).collect()
}

/// The router of the edited experts: row j is the old row that `map` sends to j, or, where
/// none does (an added expert), the next of `extra`.
fn router_rows(router: &HostTensor, map: &[Option<usize>], extra: &[Vec<f32>]) -> HostTensor {
    let d = router.shape[1];
    let rows = map.iter().flatten().count() + extra.len();
    let mut extra = extra.iter();
    let mut values = Vec::with_capacity(rows * d);
    for j in 0..rows {
        match map.iter().position(|&new| new == Some(j)) {
            Some(old) => values.extend_from_slice(&router.values[old * d..(old + 1) * d]),
            None => values.extend(extra.next().expect("one extra row per added expert")),
        }
    }
    HostTensor::new(vec![rows, d], values)
}

/// Every tensor of `moe` with routed and attention experts renumbered (dropped where the maps
/// say None) and routers keeping the rows of the experts kept, with `extra_rows` per layer
/// where new experts go.
fn edited_outputs(moe: &MergeInput, routed: &[Option<usize>], attention: &[Option<usize>], extra_rows: &ExtraRows) -> Result<Vec<Output>> {
    let mut outputs = Vec::new();
    for (name, shape) in moe.shapes() {
        let layer_of = |n: &str| n.strip_prefix("model.layers.").and_then(|r| r.split_once('.')).and_then(|(l, _)| l.parse::<usize>().ok());
        let output = |n: String, source| Output { name: n, shape: shape.to_vec(), source };
        if let Some(renamed) = renumbered(name, ROUTED, routed).or_else(|| renumbered(name, ATTENTION, attention)) {
            outputs.extend(renamed.map(|n| output(n, Source::whole(0, name))));
        } else if tensor_names::is_router(name) {
            let layer = layer_of(name).unwrap_or(0);
            let (map, extra) = if name.contains("attention") { (attention, &extra_rows.attention) } else { (routed, &extra_rows.routed) };
            let router = router_rows(&moe.read(name)?, map, extra.get(layer).map_or(&[][..], |r| r.as_slice()));
            outputs.push(Output { name: name.to_string(), shape: router.shape.clone(), source: Source::Given(router) });
        } else {
            outputs.push(output(name.to_string(), Source::whole(0, name)));
        }
    }
    Ok(outputs)
}

/// New router rows per layer: `[layer][row][d_model]`.
#[derive(Default)]
struct ExtraRows {
    routed: Vec<Vec<Vec<f32>>>,
    attention: Vec<Vec<Vec<f32>>>,
}

/// `moe` without the expert `name` (its split pieces too, and in a BAM model its attention
/// expert), and the names of the experts that remain.
pub fn remove_expert<'a>(moe: &'a MergeInput, name: &str) -> Result<(MergePlan<'a>, Vec<String>)> {
    let experts = MoeExperts::of(moe)?;
    let dropped = experts.named(name)?;
    let num = experts.names.len();
    if dropped.len() == num {
        bail!("`{name}` is every expert of {}; an MoE needs at least one", moe.path.display());
    }
    let routed = renumber_without(num, &dropped);
    // Attention expert m is member m, whose routed experts are m * split .. (m + 1) * split.
    let attention_count = moe.config.attention_experts.as_ref().map_or(0, |a| a.num_experts);
    let dropped_members: Vec<usize> = dropped.iter().map(|e| e / experts.split).collect();
    let attention = renumber_without(attention_count, &dropped_members);
    let outputs = edited_outputs(moe, &routed, &attention, &ExtraRows::default())?;
    let mut config = moe.config.clone();
    let m = config.moe.as_mut().expect("checked an MoE");
    m.num_experts = num - dropped.len();
    m.top_k = m.top_k.min(m.num_experts);
    if let Some(a) = config.attention_experts.as_mut() {
        a.num_experts = attention.iter().flatten().count();
    }
    let names = (0..num).filter(|e| !dropped.contains(e)).map(|e| experts.names[e].clone()).collect();
    Ok((MergePlan::new(config, vec![moe], outputs), names))
}

/// Where an added expert's router rows come from.
pub enum AddedRouterRows {
    /// N(0, 0.02) rows, as BTX's routers start.
    Random { seed: u64 },
    /// Per layer: the mean router row of the existing experts r, tilted along u, the unit
    /// vector from the reference data's mean FFN input towards the new data's:
    /// w = r + alpha u, with alpha such that on the new data's mean the new expert's logit
    /// ties the best existing expert's. Tokens like the new domain then rank it near the top,
    /// tokens like the reference data lower (by alpha times the distance between the means).
    Toward { new_mean: Vec<Vec<f32>>, reference_mean: Vec<Vec<f32>> },
}

/// `moe` with the dense checkpoint `expert` added as routed expert(s) (and attention expert in
/// a BAM model), and the names of all experts.
pub fn add_expert<'a>(moe: &'a MergeInput, expert: &'a MergeInput, name: &str, rows: &AddedRouterRows) -> Result<(MergePlan<'a>, Vec<String>)> {
    let experts = MoeExperts::of(moe)?;
    let dense = ModelConfig { moe: None, attention_experts: None, ..moe.config.clone() };
    if expert.config != dense {
        bail!("{} does not share the MoE's architecture: its config is {:?}, the MoE's dense part {:?}", expert.path.display(), expert.config, dense);
    }
    check_same_architecture(&[expert])?;
    if experts.names.iter().any(|n| n == name) {
        bail!("{} already has an expert named `{name}`", moe.path.display());
    }
    let (num, split) = (experts.names.len(), experts.split);
    let routed: Vec<Option<usize>> = (0..num).map(Some).collect();
    // The new attention expert goes after the routed members' (before a shared seed's), so
    // attention expert m stays member m.
    let attention_count = moe.config.attention_experts.as_ref().map_or(0, |a| a.num_experts);
    let insert_at = num / split;
    let attention: Vec<Option<usize>> = (0..attention_count).map(|m| Some(if m < insert_at { m } else { m + 1 })).collect();
    let mut extra = ExtraRows::default();
    for layer in 0..dense.n_layers {
        let router = moe.read(&tensor_names::router(layer))?;
        extra.routed.push(vec![new_row(&router, rows, layer); split]);
        if attention_count > 0 {
            let attention_router = moe.read(&format!("model.layers.{layer}{}", tensor_names::ATTENTION_ROUTER_END))?;
            extra.attention.push(vec![new_row(&attention_router, rows, layer)]);
        }
    }
    let mut outputs = edited_outputs(moe, &routed, &attention, &extra)?;
    let shapes = expert.shapes();
    for layer in 0..dense.n_layers {
        outputs.extend(ffn_expert_outputs(layer, 1, num, split, &shapes, |_| (None, None))?);
        if let Some(a) = &moe.config.attention_experts {
            outputs.extend(member_attention_outputs(&dense, layer, 1, insert_at, a.shared_kv));
        }
    }
    let mut config = moe.config.clone();
    config.moe.as_mut().expect("checked an MoE").num_experts += split;
    if let Some(a) = config.attention_experts.as_mut() {
        a.num_experts += 1;
    }
    let mut names = experts.names;
    names.extend(super::split_expert_names(&[name.to_string()], split));
    Ok((MergePlan::new(config, vec![moe, expert], outputs), names))
}

/// The new router row of one layer (see `AddedRouterRows`).
fn new_row(router: &HostTensor, rows: &AddedRouterRows, layer: usize) -> Vec<f32> {
    let (e, d) = (router.shape[0], router.shape[1]);
    match rows {
        AddedRouterRows::Random { seed } => random_router(1, d, layer, *seed ^ 0xADD0_0000 ^ e as u64).values,
        AddedRouterRows::Toward { new_mean, reference_mean } => {
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            let rows: Vec<&[f32]> = (0..e).map(|r| &router.values[r * d..(r + 1) * d]).collect();
            let mean_row: Vec<f32> = (0..d).map(|i| rows.iter().map(|r| r[i]).sum::<f32>() / e as f32).collect();
            let h = &new_mean[layer];
            let toward: Vec<f32> = h.iter().zip(&reference_mean[layer]).map(|(a, b)| a - b).collect();
            let norm = dot(&toward, &toward).sqrt().max(1e-12);
            let unit: Vec<f32> = toward.iter().map(|x| x / norm).collect();
            let best = rows.iter().map(|r| dot(r, h)).fold(f32::NEG_INFINITY, f32::max);
            // When the tilt does not raise the new mean's logit, fall back to the rows' norm.
            let alpha = match dot(&unit, h) {
                along if along > 1e-6 => ((best - dot(&mean_row, h)) / along).max(0.0),
                _ => rows.iter().map(|r| dot(r, r).sqrt()).sum::<f32>() / e as f32,
            };
            mean_row.iter().zip(&unit).map(|(m, u)| m + alpha * u).collect()
        }
    }
}

/// Writes an edited MoE to `out` (atomically, streamed) with a merge.json that names its
/// experts and the edit, and the MoE's tokenizer.
pub fn write_edited(plan: &MergePlan, moe: &MergeInput, out: &Path, edit: &str, expert: &str, names: &[String]) -> Result<()> {
    let record = MergeRecord {
        method: edit.to_string(),
        sources: vec![moe.path.display().to_string()],
        weights: None,
        moe: None,
        expert: Some(expert.to_string()),
        expert_names: names.to_vec(),
        drift: None,
    };
    let mut extra = vec![(MERGE_RECORD_FILE, record.to_json()?)];
    extra.extend(super::request::shared_tokenizer(&[moe]).map(|t| ("tokenizer.json", t)));
    plan.write(out, &extra)?;
    eprintln!("wrote {} ({} experts: {})", out.display(), names.len(), names.join(", "));
    Ok(())
}
