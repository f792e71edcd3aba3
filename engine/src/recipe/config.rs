//! A recipe (RON): the whole BTX pipeline in one file. Seed -> branch -> one training stage
//! per expert -> merges -> MoE finetune -> evaluation -> report.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, read_ron};
use crate::data::DomainConfig;
pub use crate::merge::MergeMethod;
use crate::merge::mix::MoeOptions;
use crate::train::trainable::Trainable;
use crate::train::{OptimizerConfig, OptimizerSettings};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The dense architecture of the seed and every expert.
    pub model: ModelConfig,
    pub tokenizer: PathBuf,
    pub seq_len: usize,
    #[serde(default = "default_val_every")]
    pub val_every: usize,
    /// Share of a `Jsonl` or `Parquet` domain's documents held out for validation.
    #[serde(default = "crate::data::corpus::default_val_fraction")]
    pub val_fraction: f64,
    /// Every domain: experts and mixtures name them; evaluation reports each.
    pub domains: Vec<DomainConfig>,
    /// The optimizer of the seed, and every stage's unless it changes it: the experts'
    /// (`expert_optimizer`, an expert's own `optimizer`), the finetune's (`finetune.optimizer`)
    /// and the dense baselines' (`baseline_optimizer`).
    pub optimizer: OptimizerConfig,
    /// Changes to `optimizer` for every expert and later expert: BTX's experts continue the
    /// seed's pretraining, typically at a lower peak learning rate (an expert's own
    /// `optimizer` changes this in turn).
    #[serde(default, skip_serializing_if = "OptimizerSettings::is_default")]
    pub expert_optimizer: OptimizerSettings,
    /// Every expert (and later expert) trains LoRA adapters instead of its weights, merged
    /// into it at its end (an expert's own `lora` changes this); absent: full training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert_lora: Option<crate::model::lora::LoraConfig>,
    /// Changes to `optimizer` for the dense baselines (compute- and data-matched).
    #[serde(default, skip_serializing_if = "OptimizerSettings::is_default")]
    pub baseline_optimizer: OptimizerSettings,
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    /// Run the whole recipe once per seed (each into RUN/seed-N/) and report the spread
    /// across seeds: a difference within it is a tie. Empty: one run with `seed`.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Where the seed model comes from.
    pub seed_model: SeedModel,
    /// The experts, each trained from the seed on its own data, in its own process.
    pub experts: Vec<Expert>,
    /// Experts trained after the merge, from the average of the experts (BTM's "grow the
    /// forest"), then added to every finetuned BTX and BAM model (`btx moe add-expert`, no
    /// further training) and to every BTM ensemble; each grown model is evaluated beside
    /// the rest.
    #[serde(default)]
    pub later_experts: Vec<Expert>,
    /// The experts trained again other ways (each expert `NAME` of variant `V` is `NAME-V`),
    /// for merges that name the variant in `experts`: e.g. FFN-only experts beside full ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expert_variants: Vec<super::variants::ExpertVariant>,
    /// Keep the seed as one more, generalist, expert in BTX merges.
    #[serde(default = "yes")]
    pub keep_seed: bool,
    /// Continue the seed on its own data before it is kept (Nile-Chat's generalist: the base
    /// model instruction-tuned): this model takes the seed's place in the BTX merges and is
    /// where the dense baseline starts; the experts still branch from the seed itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generalist: Option<Phase>,
    /// The merges to build and compare.
    pub merges: Vec<Merge>,
    /// MoE options of the MoE merges (a merge may override them).
    #[serde(default)]
    pub moe: MoeOptions,
    /// The MoE finetune of every MoE merge.
    pub finetune: Finetune,
    /// Also train a dense model: the seed continued on the finetune mixture for as many
    /// training FLOPs as the experts and the BTX finetune together (a compute-matched baseline).
    #[serde(default)]
    pub dense_baseline: bool,
    /// Also train a data-matched dense model: the seed continued on the same tokens per
    /// domain, in total, as the BTX model saw after the seed (every expert's data and the
    /// finetune mixture), for as many steps.
    #[serde(default)]
    pub data_matched_baseline: bool,
    /// Diagnose the BTX merge: each member's FFN inside the averaged shared weights, as a
    /// dense model evaluated beside the expert, and how far the shared weights drifted.
    #[serde(default)]
    pub diagnose_merge: bool,
    /// Give every upcycling finetune as many training FLOPs as the experts and the BTX
    /// finetune together, so BTX and upcycling compare at matched compute.
    #[serde(default)]
    pub match_flops: bool,
    #[serde(default)]
    pub eval: EvalSettings,
    /// The loss spike guard of every training stage (see `train::guard`): a stage whose loss
    /// stays far above its best level stops and the recipe reports it failed.
    #[serde(default, skip_serializing_if = "crate::train::guard::SpikeGuard::is_default")]
    pub spike_guard: crate::train::guard::SpikeGuard,
    /// The precision of every training stage: `F32` (default) or `F16` (mixed precision,
    /// `train::precision`).
    #[serde(default, skip_serializing_if = "crate::train::precision::Precision::is_default")]
    pub precision: crate::train::precision::Precision,
    /// How every training stage that freezes weights (LoRA experts, a router-only finetune)
    /// holds them: `F32` (default), `F16` or `BF16` (`TrainConfig::frozen_precision`).
    #[serde(default, skip_serializing_if = "crate::train::precision::FrozenPrecision::is_default")]
    pub frozen_precision: crate::train::precision::FrozenPrecision,
    /// Activation checkpointing in every training stage (`TrainConfig::activation_checkpointing`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
}

fn default_val_every() -> usize {
    20
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SeedModel {
    /// Train the seed from scratch on a mixture of domains.
    Train { steps: usize, mixture: Vec<(String, f64)> },
    /// An existing dense checkpoint (a run folder or checkpoint folder).
    Checkpoint(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expert {
    pub name: String,
    /// Domains and their weights in this expert's training data.
    pub data: Vec<(String, f64)>,
    pub steps: usize,
    /// Changes to the recipe's `expert_optimizer` for this expert.
    #[serde(default, skip_serializing_if = "OptimizerSettings::is_default")]
    pub optimizer: OptimizerSettings,
    /// This expert's LoRA adapters in place of the recipe's `expert_lora`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::model::lora::LoraConfig>,
    /// What this expert trains (default: every weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<Trainable>,
    /// Further phases, each continuing the last (Nile-Chat's experts: continued pretraining
    /// on their script's text, then instruction tuning on chat in that script).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<Phase>,
}

/// A phase of training with its own data, steps, optimizer changes and trainable weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub data: Vec<(String, f64)>,
    pub steps: usize,
    /// Changes to the optimizer this phase would otherwise use (the expert's, or the
    /// recipe's for the generalist).
    #[serde(default, skip_serializing_if = "OptimizerSettings::is_default")]
    pub optimizer: OptimizerSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<Trainable>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merge {
    pub name: String,
    pub method: MergeMethod,
    /// Overrides the recipe's `moe` options for this merge (routing ablations).
    #[serde(default)]
    pub moe: Option<MoeOptions>,
    /// What this merge's finetune trains, in place of `finetune.trainable` (the same MoE
    /// finetuned two ways: routers only, and every weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<Trainable>,
    /// The expert variant this merge mixes, averages or ensembles (`expert_variants`);
    /// absent: the recipe's experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finetune {
    pub steps: usize,
    /// Domain weights (default: every domain equally).
    #[serde(default)]
    pub mixture: Option<Vec<(String, f64)>>,
    /// Peak learning rate (default: the recipe optimizer's); short for `optimizer: (lr: ...)`.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Changes to the recipe's `optimizer` for every MoE finetune (and for training a later
    /// expert inside an MoE), e.g. `(warmup_steps: 10, router_lr_multiplier: 10.0)`. The
    /// routers learn at `FINETUNE_ROUTER_LR_MULTIPLIER` times the lr unless it says otherwise.
    #[serde(default, skip_serializing_if = "OptimizerSettings::is_default")]
    pub optimizer: OptimizerSettings,
    /// LoRA adapters on the MoE's projections (every expert's too) instead of finetuning
    /// their weights (MixtureKit's `use_lora`); the routers, new, train in full beside them.
    /// Absent: the whole MoE finetunes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::model::lora::LoraConfig>,
    /// What every MoE finetune trains (default: every weight); `Routers` is MixtureKit's
    /// router-only finetune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<Trainable>,
}

/// The routers' learning-rate multiple in an MoE finetune unless the recipe sets one. The
/// routers start from nothing while every other weight starts trained; at the finetune's lr
/// they barely move in a short finetune (the routing stays near uniform and BTX gains nothing
/// over its unfinetuned merge). Measured (README, "Results"): at 30x, compare-regime's
/// routers reach entropies of 0.22-0.45 (ln 5 = 1.61 at the start) and send each domain's
/// tokens to its own expert in most layers; on btx-tiny 10x, 30x and 100x each beat 1x in
/// every one of three seeds.
pub const FINETUNE_ROUTER_LR_MULTIPLIER: f64 = 30.0;

impl Finetune {
    /// The finetune's changes to the recipe's optimizer (`lr` folded in, the routers'
    /// multiple defaulting to `FINETUNE_ROUTER_LR_MULTIPLIER`).
    pub fn optimizer(&self) -> OptimizerSettings {
        OptimizerSettings {
            lr: self.optimizer.lr.or(self.lr),
            router_lr_multiplier: self.optimizer.router_lr_multiplier.or(Some(FINETUNE_ROUTER_LR_MULTIPLIER)),
            ..self.optimizer.clone()
        }
    }
}

/// How every model of a recipe is evaluated; a field left out takes `Default`'s value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// Validation batches per domain.
    pub batches: usize,
    /// Addition problems for the exact-match accuracy.
    pub arithmetic_problems: usize,
    /// Held-out sequences per domain that estimate the BTM ensemble's cached prior.
    pub ensemble_prior_sequences: usize,
    /// Sequences per domain the ensemble is scored on.
    pub ensemble_sequences: usize,
    /// lm-evaluation-harness task files (or folders of them, e.g. "assets/tasks") every
    /// model but the ensembles is scored on, beside perplexity (`btx eval --tasks`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<PathBuf>,
    /// Documents per task: the first N, or this share below 1 (all when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_limit: Option<f64>,
    /// Score the tasks' prompts through the tokenizer's chat template (lm-eval's
    /// `--apply_chat_template`, few-shot examples as turns): for chat-tuned models.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub apply_chat_template: bool,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self { batches: 8, arithmetic_problems: 50, ensemble_prior_sequences: 16, ensemble_sequences: 48, tasks: vec![], task_limit: None, apply_chat_template: false }
    }
}

impl Recipe {
    /// The optimizer changes of an expert or later expert: its own over the recipe's.
    pub fn expert_optimizer_of(&self, expert: &Expert) -> OptimizerSettings {
        expert.optimizer.over(&self.expert_optimizer)
    }

    /// The LoRA adapters `expert` trains, if any: its own, else the recipe's `expert_lora`.
    pub fn expert_lora_of(&self, expert: &Expert) -> Option<crate::model::lora::LoraConfig> {
        expert.lora.clone().or_else(|| self.expert_lora.clone())
    }

    /// The MoE options of `merge`: its own, else the recipe's.
    pub fn moe_of<'a>(&'a self, merge: &'a Merge) -> &'a MoeOptions {
        merge.moe.as_ref().unwrap_or(&self.moe)
    }

    /// The runs a recipe asks for: itself into `out`, or, with `seeds`, one copy per seed
    /// into `out/seed-N`.
    pub fn runs(&self, out: &Path) -> Vec<(Recipe, PathBuf)> {
        if self.seeds.is_empty() {
            return vec![(self.clone(), out.to_path_buf())];
        }
        self.seeds.iter().map(|&seed| (Recipe { seed, seeds: vec![], ..self.clone() }, out.join(format!("seed-{seed}")))).collect()
    }

    pub fn load(path: &Path) -> Result<Self> {
        let recipe: Self = read_ron(path)?;
        recipe.validate(&path.display().to_string())?;
        Ok(recipe)
    }

    /// The task files `eval.tasks` names, resolved (folders listed).
    pub fn task_files(&self) -> Result<Vec<PathBuf>> {
        let resolved: Vec<PathBuf> = self.eval.tasks.iter().map(|p| crate::config::resolve(p)).collect();
        crate::tasks::task_files(&resolved)
    }

    /// The task files and their data files: what an evaluation with tasks depends on.
    pub fn task_inputs(&self) -> Result<Vec<PathBuf>> {
        let mut inputs = Vec::new();
        for file in self.task_files()? {
            let task = crate::tasks::TaskConfig::load(&file)?;
            inputs.push(file);
            inputs.extend(task.data_files.into_values().flatten());
        }
        Ok(inputs)
    }
}
