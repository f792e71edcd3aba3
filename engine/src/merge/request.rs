//! A merge as the command line and the recipes ask for it: the method, the member
//! checkpoints and the MoE options, checked by one set of rules whatever the caller, then
//! planned and streamed to disk.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::average::average;
use super::method::MergeMethod;
use super::record::{MERGE_RECORD_FILE, MergeRecord};
use super::mix::{MoeOptions, Perturbation, SharedExpert, bam, mix};
use super::router_init::RouterInit;
use super::upcycle::upcycle;
use super::router_data::{Measured, Measurement};
use super::{MergeInput, run_name};
use crate::config::ModelConfig;

/// Data-initialised router rows describe each expert's domain; upcycled copies are
/// identical and have none, so their rows would be identical too.
pub fn check_router_init(method: &MergeMethod, init: RouterInit) -> Result<()> {
    if matches!(method, MergeMethod::Upcycle { .. }) && init != RouterInit::Random {
        bail!("upcycled experts are identical copies, so router_init {init:?} cannot tell them apart; use Random");
    }
    Ok(())
}

/// A broken rule of a merge request: what is wrong, and the field it is about, as a recipe's
/// merge names it (`method`, `moe.top_k`, ...; a recipe reports `merges[i].FIELD`).
#[derive(Debug)]
pub struct RuleError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RuleError {}

/// A merge, whoever asks for it: `btx merge` builds one from its flags, a recipe's merge
/// stage writes one into its `stage.ron` and `btx merge --config` reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    pub method: MergeMethod,
    /// The expert checkpoints (btx, bam, average, transplant), or the one seed (upcycle).
    pub experts: Vec<PathBuf>,
    /// btx, bam, transplant: the seed, kept as one more (generalist) member, last.
    #[serde(default)]
    pub seed: Option<PathBuf>,
    /// Weights of the members in averaged tensors (default uniform).
    #[serde(default)]
    pub weights: Option<Vec<f64>>,
    /// upcycle: std of the Gaussian noise added to each copy.
    #[serde(default)]
    pub noise: f64,
    #[serde(default)]
    pub options: MoeOptions,
    /// With data-initialised routers: each member's training config (experts in order, then
    /// the seed), whose data describes its domain.
    #[serde(default)]
    pub router_data: Vec<PathBuf>,
    /// average: weight each member by its domain posterior on this config's training data
    /// (BTM's branching of a new expert) instead of `weights`.
    #[serde(default)]
    pub posterior_data: Option<PathBuf>,
    /// Router directions (MoE merges with data-initialised routers) or posterior weights
    /// (average) measured beforehand by `btx measure` (a recipe's stage, on its device): the
    /// `measured.json` read instead of running the members forward here.
    #[serde(default)]
    pub measured: Option<PathBuf>,
    /// transplant: also measure how far each member's shared weights drifted from this seed
    /// (recorded in merge.json: the report's merge diagnosis).
    #[serde(default)]
    pub drift_from: Option<PathBuf>,
}

impl MergeRequest {
    /// A request of `method` over `experts` with everything else at its default.
    pub fn new(method: MergeMethod, experts: Vec<PathBuf>) -> Self {
        Self { method, experts, seed: None, weights: None, noise: 0.0, options: MoeOptions::default(), router_data: vec![], posterior_data: None, measured: None, drift_from: None }
    }

    /// The checkpoints whose tensors form the result, in order (the seed last).
    pub fn members(&self) -> Vec<PathBuf> {
        self.experts.iter().chain(&self.seed).cloned().collect()
    }

    /// The routed experts of the MoE it builds (0 for a dense result).
    fn routed_experts(&self) -> usize {
        match self.method {
            MergeMethod::Upcycle { experts, .. } => experts,
            MergeMethod::Btx | MergeMethod::Bam { .. } => self.members().len() - (self.options.shared_expert == SharedExpert::Seed && self.seed.is_some()) as usize,
            _ => 0,
        }
    }

    /// Every rule on the request's shape, before any checkpoint is read: the one rule set of
    /// `btx merge` and of recipes.
    pub fn check(&self) -> std::result::Result<(), RuleError> {
        let rule = |field: &'static str, message: String| Err(RuleError { field, message });
        if self.experts.is_empty() {
            return rule("experts", "--experts names no checkpoint".into());
        }
        match self.method {
            MergeMethod::Upcycle { experts, drop_ratio } => {
                if self.experts.len() != 1 || self.seed.is_some() {
                    return rule("experts", format!("upcycling takes exactly one checkpoint (in --experts) and no --seed, found {}", self.members().len()));
                }
                if experts == 0 {
                    return rule("method", "upcycling needs at least 1 expert (--num-experts)".into());
                }
                if !(0.0..=1.0).contains(&drop_ratio) {
                    return rule("method", format!("drop_ratio (--drop-ratio) must be between 0 and 1, found {drop_ratio}"));
                }
            }
            MergeMethod::Transplant { member } if member >= self.members().len() => {
                return rule("method", format!("member {member}: there are {} members (0-based, the seed last)", self.members().len()));
            }
            MergeMethod::Average if self.seed.is_some() => {
                return rule("experts", "--seed keeps a generalist expert in a btx merge; to average the seed too, list it in --experts".into());
            }
            _ => {}
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return rule("noise", format!("--noise must be a finite number >= 0, found {}", self.noise));
        }
        let shared = self.options.shared_expert;
        if shared == SharedExpert::Seed && self.method.mixes_experts() && self.seed.is_none() {
            return rule("moe.shared_expert", "shared_expert Seed makes the seed the shared expert, but there is no seed (--seed; in a recipe, `keep_seed`)".into());
        }
        if shared != SharedExpert::None && !self.method.is_moe() {
            return rule("moe.shared_expert", format!("a shared expert is part of an MoE; {:?} builds a dense model", self.method));
        }
        if self.posterior_data.is_some() && (self.method != MergeMethod::Average || self.weights.is_some()) {
            return rule("posterior_data", "--posterior-data weights a BTM average (--method average) and replaces --weights".into());
        }
        let reads_measured = self.routes_from_data() || (self.method == MergeMethod::Average && self.weights.is_none());
        if self.measured.is_some() && (!reads_measured || !self.router_data.is_empty() || self.posterior_data.is_some()) {
            return rule("measured", "a measurement replaces --router-data (data-initialised routers) or --posterior-data (an average without --weights); it goes with neither".into());
        }
        if self.drift_from.is_some() && !matches!(self.method, MergeMethod::Transplant { .. }) {
            return rule("drift_from", "--drift-from measures a transplant's members (--method transplant)".into());
        }
        if let Err(e) = check_router_init(&self.method, self.options.router_init) {
            return rule("moe.router_init", e.to_string());
        }
        let routed = self.routed_experts();
        if self.method.is_moe() && (self.options.top_k == 0 || self.options.top_k > routed) {
            return rule("moe.top_k", format!("top_k ({}) must be between 1 and the number of experts ({routed})", self.options.top_k));
        }
        let uses_router_data = self.routes_from_data();
        if uses_router_data && self.measured.is_none() && self.router_data.len() != self.members().len() {
            let (init, members, configs) = (self.options.router_init, self.members().len(), self.router_data.len());
            return rule("router_data", format!("router_init {init:?} needs one training config per member in --router-data (experts in order, then the seed): {members} members, {configs} configs"));
        }
        if !uses_router_data && !self.router_data.is_empty() {
            return rule("router_data", "--router-data is read only with router_init Embedding or Hidden in --moe".into());
        }
        Ok(())
    }

    /// Checks, plans and writes the merged checkpoint to `out` (atomically, streamed).
    pub fn run(&self, out: &Path) -> Result<ModelConfig> {
        self.check()?;
        if !self.method.writes_checkpoint() {
            bail!("an ensemble is not merged into one checkpoint; evaluate its experts with `btx ensemble`");
        }
        let inputs = self.experts.iter().map(|p| MergeInput::load(p)).collect::<Result<Vec<_>>>()?;
        let seed = self.seed.as_ref().map(|p| MergeInput::load(p)).transpose()?;
        let (directions, posterior) = self.measurements()?;
        let weights = posterior.as_deref().or(self.weights.as_deref());
        let plan = match self.method {
            MergeMethod::Btx => mix(&inputs, seed.as_ref(), weights, &self.options, directions)?,
            MergeMethod::Bam { shared_kv } => bam(&inputs, seed.as_ref(), weights, &self.options, directions, shared_kv)?,
            MergeMethod::Upcycle { experts, drop_ratio } => {
                let perturbation = Perturbation { noise_std: self.noise, drop_ratio };
                upcycle(&inputs[0], experts, perturbation, &self.options, directions)?
            }
            MergeMethod::Average => average(&inputs, weights)?,
            MergeMethod::Ensemble { .. } => unreachable!("refused above"),
            MergeMethod::Transplant { member } => return self.transplant(inputs.into_iter().chain(seed).collect(), member, weights, out),
        };
        let sources: Vec<String> = self.members().iter().map(|p| p.display().to_string()).collect();
        let record = MergeRecord {
            method: crate::config::to_ron(&self.method)?,
            sources,
            weights: weights.map(<[f64]>::to_vec),
            moe: self.method.is_moe().then(|| self.options.clone()),
            expert: None,
            expert_names: self.expert_names(&inputs, seed.as_ref()),
            drift: None,
        };
        let mut extra = vec![(MERGE_RECORD_FILE, record.to_json()?)];
        let members: Vec<&MergeInput> = inputs.iter().chain(&seed).collect();
        if let Some(tokenizer) = shared_tokenizer(&members) {
            extra.push(("tokenizer.json", tokenizer));
        }
        plan.write(out, &extra)?;
        Ok(plan.config)
    }

    /// Router directions and posterior weights: read from `measured`, or measured here, on
    /// the CPU (a merge has no device of its own).
    #[allow(clippy::type_complexity)]
    fn measurements(&self) -> Result<(Option<Vec<Vec<Vec<f32>>>>, Option<Vec<f64>>)> {
        let routers_from_data = self.routes_from_data();
        let measured = match &self.measured {
            Some(path) => Some(Measured::read(path)?),
            None if routers_from_data => {
                Some(Measurement::RouterDirections { members: self.members(), data: self.router_data.clone(), mode: self.options.router_init }.run(&burn::prelude::Device::flex())?)
            }
            None => match &self.posterior_data {
                Some(data) => Some(Measurement::Posterior { members: self.experts.clone(), data: data.clone() }.run(&burn::prelude::Device::flex())?),
                None => None,
            },
        };
        Ok(match measured {
            None => (None, None),
            Some(Measured::RouterDirections(d)) if routers_from_data => (Some(d), None),
            Some(Measured::Posterior(w)) if !routers_from_data => (None, Some(w)),
            Some(_) => bail!("{}: measures something else than this merge reads", self.measured.as_deref().unwrap_or(Path::new("measured")).display()),
        })
    }

    /// A transplant of `member` (a dense model), with its drift from `drift_from` if asked.
    fn transplant(&self, members: Vec<MergeInput>, member: usize, weights: Option<&[f64]>, out: &Path) -> Result<ModelConfig> {
        let drift = match &self.drift_from {
            Some(seed) => {
                let refs: Vec<&MergeInput> = members.iter().collect();
                super::diagnosis::drift(&refs, &MergeInput::load(seed)?, weights)?.into_iter().nth(member)
            }
            None => None,
        };
        let plan = super::diagnosis::transplant(&members, member, weights)?;
        let sources = self.members().iter().map(|p| p.display().to_string()).collect();
        let record = MergeRecord { method: crate::config::to_ron(&self.method)?, sources, weights: weights.map(<[f64]>::to_vec), moe: None, expert: None, expert_names: vec![], drift };
        plan.write(out, &[(MERGE_RECORD_FILE, record.to_json()?)])?;
        Ok(plan.config.clone())
    }

    /// The name of each routed expert of the merged MoE (`routed_expert_names`): each member
    /// named by the run folder it came from.
    fn expert_names(&self, inputs: &[MergeInput], seed: Option<&MergeInput>) -> Vec<String> {
        let routed_seed = seed.is_some() && self.options.shared_expert != SharedExpert::Seed;
        super::routed_expert_names(&self.method, inputs.iter().map(|i| run_name(&i.path)).collect(), routed_seed, self.options.split)
    }

    /// Whether the MoE it builds starts its routers from data (read from `measured`, or
    /// measured from `router_data`).
    pub fn routes_from_data(&self) -> bool {
        self.method.is_moe() && self.options.router_init != RouterInit::Random
    }
}

/// The tokenizer every member was trained with, when they share one (same contents).
pub(crate) fn shared_tokenizer(members: &[&MergeInput]) -> Option<String> {
    let texts: Vec<String> = members
        .iter()
        .map(|m| crate::hf::checkpoint_tokenizer(&m.path).and_then(|p| std::fs::read_to_string(p).ok()))
        .collect::<Option<_>>()?;
    texts.iter().all(|t| *t == texts[0]).then(|| texts[0].clone())
}

/// The names of a merged checkpoint's experts, from its `merge.json`, or, for a run trained
/// from a merge (a finetune), from the checkpoint its training started from.
pub fn expert_names(checkpoint: &Path) -> Option<Vec<String>> {
    let mut dir = crate::checkpoint::resolve_checkpoint(checkpoint).unwrap_or_else(|_| checkpoint.to_path_buf());
    for _ in 0..8 {
        if let Some(record) = MergeRecord::read(&dir).ok()? {
            return (!record.expert_names.is_empty()).then_some(record.expert_names);
        }
        let train = std::fs::read_to_string(dir.join(crate::checkpoint::TRAIN_CONFIG_FILE)).ok()?;
        let config: crate::train::TrainConfig = crate::config::parse_ron(&train, "train.ron").ok()?;
        dir = crate::checkpoint::resolve_checkpoint(&config.init_from?).ok()?;
    }
    None
}
