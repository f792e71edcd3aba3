//! A recipe (RON): the whole BTX pipeline in one file. Seed -> branch -> one training stage
//! per expert -> merges -> MoE finetune -> evaluation -> report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, read_ron};
use crate::data::DomainConfig;
use crate::merge::mix::MoeOptions;
use crate::train::OptimizerConfig;

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
    pub optimizer: OptimizerConfig,
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
    /// Keep the seed as one more, generalist, expert in BTX merges.
    #[serde(default = "yes")]
    pub keep_seed: bool,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MergeMethod {
    /// BTX MiX: expert FFNs -> MoE experts, the rest averaged, routers added; finetuned.
    Btx,
    /// BAM: BTX that also keeps each member's attention as a softly routed attention expert;
    /// with `shared_kv`, one averaged key/value projection for all of them; finetuned.
    Bam {
        #[serde(default)]
        shared_kv: bool,
    },
    /// Sparse upcycling of the seed into `experts` copies; with `drop_ratio` r > 0,
    /// Drop-Upcycling (r of each copy's FFN hidden units re-initialised); finetuned.
    Upcycle {
        experts: usize,
        #[serde(default)]
        drop_ratio: f64,
    },
    /// BTM parameter average of the experts.
    Average,
    /// BTM ensemble of the experts (evaluation only), keeping the `top_k` most probable.
    Ensemble { top_k: Option<usize> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merge {
    pub name: String,
    pub method: MergeMethod,
    /// Overrides the recipe's `moe` options for this merge (routing ablations).
    #[serde(default)]
    pub moe: Option<MoeOptions>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finetune {
    pub steps: usize,
    /// Domain weights (default: every domain equally).
    #[serde(default)]
    pub mixture: Option<Vec<(String, f64)>>,
    /// Peak learning rate (default: the recipe optimizer's).
    #[serde(default)]
    pub lr: Option<f64>,
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
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self { batches: 8, arithmetic_problems: 50, ensemble_prior_sequences: 16, ensemble_sequences: 48 }
    }
}

impl MergeMethod {
    /// Merges that build an MoE, which is then finetuned.
    pub fn is_moe(&self) -> bool {
        matches!(self, Self::Btx | Self::Bam { .. } | Self::Upcycle { .. })
    }

    /// MoE merges whose experts are the recipe's experts (BTX and BAM; not upcycling).
    pub fn mixes_experts(&self) -> bool {
        matches!(self, Self::Btx | Self::Bam { .. })
    }

    /// The `btx merge` method that builds it (None for the ensemble, which is evaluated, not
    /// merged).
    pub fn merge_method(&self) -> Option<crate::merge::MergeMethod> {
        match self {
            Self::Btx => Some(crate::merge::MergeMethod::Btx),
            Self::Bam { .. } => Some(crate::merge::MergeMethod::Bam),
            Self::Upcycle { .. } => Some(crate::merge::MergeMethod::Upcycle),
            Self::Average => Some(crate::merge::MergeMethod::Average),
            Self::Ensemble { .. } => None,
        }
    }
}

impl Recipe {
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

    /// Errors unless every `Prepared` domain was made with the recipe's tokenizer (whose
    /// vocabulary must fit the model's), and its inputs did not change since.
    pub fn check_prepared_domains(&self, origin: &str) -> Result<()> {
        use crate::data::prepared::{PreparedMeta, TokenizerFingerprint};
        let prepared: Vec<(&str, PathBuf)> = self
            .domains
            .iter()
            .filter_map(|d| match &d.source {
                crate::data::Source::Prepared(dir) => Some((d.name.as_str(), crate::config::resolve(dir))),
                _ => None,
            })
            .collect();
        if prepared.is_empty() {
            return Ok(());
        }
        let path = crate::config::resolve(&self.tokenizer);
        let fingerprint = TokenizerFingerprint::of(&crate::data::tokenizer::load_tokenizer(&path)?, &path)?;
        if fingerprint.vocab_size > self.model.vocab_size {
            bail!("{origin}: field `model.vocab_size` ({}) is smaller than the vocabulary of tokenizer {} ({} tokens)", self.model.vocab_size, path.display(), fingerprint.vocab_size);
        }
        for (name, dir) in prepared {
            let meta = PreparedMeta::read(&dir).with_context(|| format!("{origin}: domain `{name}`"))?;
            meta.check(&dir, &fingerprint, true).with_context(|| format!("{origin}: domain `{name}`"))?;
        }
        Ok(())
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        self.model.validate(origin)?;
        if self.model.moe.is_some() {
            bail!("{origin}: field `model`: the seed and experts are dense; put MoE options in `moe`");
        }
        let known = |name: &str| self.domains.iter().any(|d| d.name == name);
        let check_mixture = |field: &str, mixture: &[(String, f64)]| -> Result<()> {
            if mixture.is_empty() {
                bail!("{origin}: field `{field}` is empty; name at least one domain");
            }
            for (name, w) in mixture {
                if !known(name) {
                    let names: Vec<&str> = self.domains.iter().map(|d| d.name.as_str()).collect();
                    bail!("{origin}: field `{field}` names domain `{name}`, which `domains` does not define (it has {names:?})");
                }
                if !(*w >= 0.0 && w.is_finite()) {
                    bail!("{origin}: field `{field}`: weight of `{name}` must be >= 0, found {w}");
                }
            }
            if mixture.iter().all(|(_, w)| *w == 0.0) {
                bail!("{origin}: field `{field}`: every weight is 0");
            }
            Ok(())
        };
        if let SeedModel::Train { steps, mixture } = &self.seed_model {
            check_mixture("seed_model.mixture", mixture)?;
            if *steps == 0 {
                bail!("{origin}: field `seed_model.steps` must be at least 1");
            }
        }
        if self.experts.is_empty() {
            bail!("{origin}: field `experts` is empty; a recipe needs at least one expert");
        }
        let mut names = std::collections::HashSet::new();
        let all_experts = self.experts.iter().map(|e| ("experts", e)).chain(self.later_experts.iter().map(|e| ("later_experts", e)));
        for (i, (field, e)) in all_experts.enumerate() {
            let i = if field == "experts" { i } else { i - self.experts.len() };
            if !names.insert(&e.name) || e.name.is_empty() || e.name.contains('/') || e.name == "generalist" {
                bail!("{origin}: field `{field}[{i}].name`: `{}` must be unique among all experts, not `generalist`, and a valid folder name", e.name);
            }
            check_mixture(&format!("{field}[{i}].data"), &e.data)?;
            if e.steps == 0 {
                bail!("{origin}: field `{field}[{i}].steps` must be at least 1");
            }
        }
        self.validate_merges(origin)?;
        self.spike_guard.validate(origin)?;
        if let Some(mixture) = &self.finetune.mixture {
            check_mixture("finetune.mixture", mixture)?;
        }
        if self.seq_len > self.model.max_seq_len || self.seq_len < 2 {
            bail!("{origin}: field `seq_len` ({}) must be between 2 and `model.max_seq_len` ({})", self.seq_len, self.model.max_seq_len);
        }
        // Each domain is prepared into RUN/data/NAME.
        let mut domain_names = std::collections::HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            if !domain_names.insert(&d.name) || d.name.is_empty() || d.name.contains(['/', '\\']) || d.name.starts_with('.') {
                bail!("{origin}: field `domains[{i}].name`: `{}` must be unique and a valid folder name", d.name);
            }
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            bail!("{origin}: field `val_fraction` must be between 0 and 1, found {}", self.val_fraction);
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.seeds.iter().find(|s| !seen.insert(**s)) {
            bail!("{origin}: field `seeds` lists {dup} twice");
        }
        if self.batch_size == 0 {
            bail!("{origin}: field `batch_size` must be at least 1");
        }
        Ok(())
    }

    /// Each merge's name, method and MoE options.
    fn validate_merges(&self, origin: &str) -> Result<()> {
        let mut merge_names = std::collections::HashSet::new();
        for (i, m) in self.merges.iter().enumerate() {
            if !merge_names.insert(&m.name) || m.name.is_empty() || m.name.contains('/') {
                bail!("{origin}: field `merges[{i}].name`: `{}` must be unique and a valid folder name", m.name);
            }
            let moe = self.moe_of(m);
            if let Some(method) = m.method.merge_method() {
                crate::merge::check_router_init(method, moe.router_init).map_err(|e| anyhow::anyhow!("{origin}: field `merges[{i}]`: {e}"))?;
            }
            let shared_seed = moe.shared_expert == crate::merge::mix::SharedExpert::Seed;
            let members = match m.method {
                MergeMethod::Btx | MergeMethod::Bam { .. } if shared_seed && !self.keep_seed => {
                    bail!("{origin}: field `merges[{i}].moe.shared_expert`: Seed makes the seed the shared expert, but `keep_seed` is false")
                }
                MergeMethod::Btx | MergeMethod::Bam { .. } => self.experts.len() + (self.keep_seed && !shared_seed) as usize,
                MergeMethod::Upcycle { experts, drop_ratio } => {
                    if !(0.0..=1.0).contains(&drop_ratio) {
                        bail!("{origin}: field `merges[{i}].method`: drop_ratio must be between 0 and 1, found {drop_ratio}");
                    }
                    experts
                }
                _ if moe.shared_expert != crate::merge::mix::SharedExpert::None => {
                    bail!("{origin}: field `merges[{i}].moe.shared_expert`: a shared expert is part of an MoE; {:?} builds none", m.method)
                }
                _ => continue,
            };
            if members == 0 || moe.top_k == 0 || moe.top_k > members {
                bail!("{origin}: field `merges[{i}]`: top_k ({}) must be between 1 and the number of experts ({members})", moe.top_k);
            }
        }
        Ok(())
    }
}
