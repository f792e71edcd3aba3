//! A merge as the command line and the recipes ask for it: the method, the member
//! checkpoints and the MoE options, checked by one set of rules whatever the caller, then
//! planned and streamed to disk.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::average::average;
use super::mix::{MoeOptions, Perturbation, SharedExpert, bam, mix};
use super::router_init::RouterInit;
use super::upcycle::upcycle;
use super::{MergeInput, router_data, run_name};
use crate::config::ModelConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MergeMethod {
    /// BTX MiX: expert FFNs become MoE experts, everything else averaged, routers added.
    Btx,
    /// BAM: BTX whose members' attentions become softly routed attention experts
    /// (--shared-kv: one averaged key/value projection for all of them).
    Bam,
    /// Sparse upcycling: the one checkpoint's FFN copied --num-experts times
    /// (--drop-ratio: Drop-Upcycling).
    Upcycle,
    /// BTM parameter average of every tensor.
    Average,
    /// A diagnosis: one member's FFN (--member) inside the members' averaged other weights,
    /// as a dense model (what the BTX MoE computes when every token goes to that expert).
    Transplant,
}

/// Data-initialised router rows describe each expert's domain; upcycled copies are
/// identical and have none, so their rows would be identical too.
pub fn check_router_init(method: MergeMethod, init: RouterInit) -> Result<()> {
    if method == MergeMethod::Upcycle && init != RouterInit::Random {
        bail!("upcycled experts are identical copies, so router_init {init:?} cannot tell them apart; use Random");
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct MergeRequest {
    pub method: MergeMethod,
    /// The expert checkpoints (btx, average), or the one seed (upcycle).
    pub experts: Vec<PathBuf>,
    /// btx: the seed, kept as one more (generalist) expert, last.
    pub seed: Option<PathBuf>,
    /// Weights of the members in averaged tensors (default uniform).
    pub weights: Option<Vec<f64>>,
    /// upcycle: experts to make.
    pub num_experts: usize,
    /// upcycle: std of the Gaussian noise added to each copy.
    pub noise: f64,
    /// upcycle: Drop-Upcycling's ratio of each copy's hidden units re-initialised.
    pub drop_ratio: f64,
    /// bam: share one (averaged) key/value projection across the attention experts.
    pub shared_kv: bool,
    pub options: MoeOptions,
    /// With data-initialised routers: each member's training config (experts in order, then
    /// the seed), whose data describes its domain.
    pub router_data: Vec<PathBuf>,
    /// transplant: the member whose FFN is kept (0-based, the seed last).
    pub member: usize,
    /// average: weight each member by its domain posterior on this config's training data
    /// (BTM's branching of a new expert) instead of `weights`.
    pub posterior_data: Option<PathBuf>,
}

impl MergeRequest {
    /// The checkpoints whose tensors form the result, in order (the seed last).
    pub fn members(&self) -> Vec<PathBuf> {
        self.experts.iter().chain(&self.seed).cloned().collect()
    }

    /// Every rule on the request's shape, before any checkpoint is read.
    pub fn check(&self) -> Result<()> {
        if self.experts.is_empty() {
            bail!("--experts names no checkpoint");
        }
        match self.method {
            MergeMethod::Upcycle => {
                if self.experts.len() != 1 || self.seed.is_some() {
                    bail!("--method upcycle takes exactly one checkpoint (in --experts) and no --seed, found {}", self.members().len());
                }
                if self.num_experts == 0 {
                    bail!("--num-experts must be at least 1");
                }
            }
            MergeMethod::Transplant if self.member >= self.members().len() => {
                bail!("--member {}: there are {} members (0-based, the seed last)", self.member, self.members().len())
            }
            MergeMethod::Average if self.seed.is_some() => {
                bail!("--seed keeps a generalist expert in a btx merge; to average the seed too, list it in --experts")
            }
            _ => {}
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            bail!("--noise must be a finite number >= 0, found {}", self.noise);
        }
        if !(0.0..=1.0).contains(&self.drop_ratio) {
            bail!("--drop-ratio must be between 0 and 1, found {}", self.drop_ratio);
        }
        if self.drop_ratio > 0.0 && self.method != MergeMethod::Upcycle {
            bail!("--drop-ratio re-initialises upcycled copies; it applies to --method upcycle only");
        }
        if self.shared_kv && self.method != MergeMethod::Bam {
            bail!("--shared-kv shares the attention experts' keys and values; it applies to --method bam only");
        }
        if self.options.shared_expert == SharedExpert::Seed && matches!(self.method, MergeMethod::Btx | MergeMethod::Bam) && self.seed.is_none() {
            bail!("shared_expert Seed makes the seed the shared expert: give it with --seed");
        }
        if self.options.shared_expert != SharedExpert::None && !self.builds_moe() {
            bail!("a shared expert is part of an MoE; --method {:?} builds a dense model", self.method);
        }
        if self.posterior_data.is_some() && (self.method != MergeMethod::Average || self.weights.is_some()) {
            bail!("--posterior-data weights a BTM average (--method average) and replaces --weights");
        }
        check_router_init(self.method, self.options.router_init)?;
        let uses_router_data = self.builds_moe() && self.options.router_init != RouterInit::Random;
        if uses_router_data && self.router_data.len() != self.members().len() {
            bail!(
                "router_init {:?} needs one training config per member in --router-data (experts in order, then the seed): {} members, {} configs",
                self.options.router_init,
                self.members().len(),
                self.router_data.len()
            );
        }
        if !uses_router_data && !self.router_data.is_empty() {
            bail!("--router-data is read only with router_init Embedding or Hidden in --moe");
        }
        Ok(())
    }

    fn builds_moe(&self) -> bool {
        matches!(self.method, MergeMethod::Btx | MergeMethod::Bam | MergeMethod::Upcycle)
    }

    /// Checks, plans and writes the merged checkpoint to `out` (atomically, streamed).
    pub fn run(&self, out: &Path) -> Result<ModelConfig> {
        self.check()?;
        let inputs = self.experts.iter().map(|p| MergeInput::load(p)).collect::<Result<Vec<_>>>()?;
        let seed = self.seed.as_ref().map(|p| MergeInput::load(p)).transpose()?;
        let directions = match self.options.router_init {
            _ if !self.builds_moe() => None,
            RouterInit::Random => None,
            mode => Some(router_data::router_directions(&self.members(), &self.router_data, mode, &burn::prelude::Device::flex())?),
        };
        let posterior = self.posterior_data.as_ref().map(|data| router_data::posterior_weights(&self.experts, data, &burn::prelude::Device::flex())).transpose()?;
        let weights = posterior.as_deref().or(self.weights.as_deref());
        let plan = match self.method {
            MergeMethod::Btx => mix(&inputs, seed.as_ref(), weights, &self.options, directions)?,
            MergeMethod::Bam => bam(&inputs, seed.as_ref(), weights, &self.options, directions, self.shared_kv)?,
            MergeMethod::Upcycle => {
                let perturbation = Perturbation { noise_std: self.noise, drop_ratio: self.drop_ratio };
                upcycle(&inputs[0], self.num_experts, perturbation, &self.options, directions)?
            }
            MergeMethod::Average => average(&inputs, weights)?,
            MergeMethod::Transplant => {
                let members: Vec<MergeInput> = inputs.into_iter().chain(seed).collect();
                let plan = super::diagnosis::transplant(&members, self.member, weights)?;
                plan.write(out, &[])?;
                return Ok(plan.config.clone());
            }
        };
        let sources: Vec<String> = self.members().iter().map(|p| p.display().to_string()).collect();
        let record = serde_json::json!({
            "method": format!("{:?}", self.method),
            "sources": sources,
            "weights": weights,
            "moe": crate::config::to_ron(&self.options)?,
            "expert_names": self.expert_names(&inputs, seed.as_ref()),
        });
        let mut extra = vec![("merge.json", serde_json::to_string_pretty(&record)?)];
        let members: Vec<&MergeInput> = inputs.iter().chain(&seed).collect();
        if let Some(tokenizer) = shared_tokenizer(&members) {
            extra.push(("tokenizer.json", tokenizer));
        }
        plan.write(out, &extra)?;
        Ok(plan.config)
    }

    /// The name of each routed expert of the merged MoE (index = expert id): the run folder
    /// each member came from, "generalist" for the kept seed (unless it is the shared
    /// expert), "copy N" for upcycling; split experts get ".0", ".1", ... Empty for an
    /// average (no experts).
    fn expert_names(&self, inputs: &[MergeInput], seed: Option<&MergeInput>) -> Vec<String> {
        let routed_seed = seed.filter(|_| self.options.shared_expert != SharedExpert::Seed);
        let whole: Vec<String> = match self.method {
            MergeMethod::Average | MergeMethod::Transplant => return vec![],
            MergeMethod::Upcycle => (0..self.num_experts).map(|e| format!("copy {e}")).collect(),
            MergeMethod::Btx | MergeMethod::Bam => {
                inputs.iter().map(|i| run_name(&i.path)).chain(routed_seed.map(|_| "generalist".to_string())).collect()
            }
        };
        super::split_expert_names(&whole, self.options.split)
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
        if let Ok(text) = std::fs::read_to_string(dir.join("merge.json")) {
            let record: serde_json::Value = serde_json::from_str(&text).ok()?;
            let names: Vec<String> = serde_json::from_value(record.get("expert_names")?.clone()).ok()?;
            return (!names.is_empty()).then_some(names);
        }
        let train = std::fs::read_to_string(dir.join(crate::checkpoint::TRAIN_CONFIG_FILE)).ok()?;
        let config: crate::train::TrainConfig = crate::config::parse_ron(&train, "train.ron").ok()?;
        dir = crate::checkpoint::resolve_checkpoint(&config.init_from?).ok()?;
    }
    None
}
