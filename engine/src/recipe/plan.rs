//! The plan of a recipe run: the run's layout and each stage's arguments, inputs, folder and
//! training config. The stage graph is in `graph`, the models the report compares in
//! `entries`; the runner executes the plan and the report reads it.
//!
//! ```text
//! RUN/data/NAME/            btx data prepare-domain: each domain tokenized once, into
//!                           data/NAME/tokens (a `Prepared` domain is read where it is)
//! RUN/seed/                 btx train (or an existing checkpoint)
//! RUN/experts/NAME/         btx train, branched from the seed, on the expert's data
//! RUN/merges/NAME/          btx merge (btx, bam, upcycle, average)
//! RUN/finetune/NAME/        btx train of each MoE merge on the finetune mixture
//! RUN/forest/LATER/         btx merge --method average of the experts, weighted by their
//!                           domain posterior on a later expert's data
//! RUN/experts/LATER/        btx train of each later expert, branched from its forest
//! RUN/grow/MERGE/LATER/     added: btx moe add-expert to a finetuned BTX/BAM model;
//!                           trained: btx train of the new expert's weights alone
//! RUN/dense/                btx train: the seed continued at matched FLOPs (optional)
//! RUN/eval/MODEL/           btx eval / btx ensemble
//! RUN/report.md, report.json, *.png
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::config::{MergeMethod, Recipe, SeedModel};
use super::stage::{Stage, model_file};
use crate::checkpoint::read_model_config;
use crate::config::{ModelConfig, resolve, to_ron};
use crate::data::prepare::DomainPreparation;
use crate::data::{DataConfig, DomainConfig, Source};
use crate::device::DeviceArgs;
use crate::train::{OptimizerConfig, TrainConfig};

pub struct Plan<'a> {
    pub recipe: &'a Recipe,
    pub out: PathBuf,
    pub device: DeviceArgs,
}

impl Plan<'_> {
    pub(super) fn dir(&self, stage: &str) -> PathBuf {
        self.out.join(stage)
    }

    /// Domain config with training weights from `mixture` (0 for the others).
    fn domains(&self, mixture: Option<&[(String, f64)]>) -> Vec<DomainConfig> {
        self.recipe
            .domains
            .iter()
            .map(|d| DomainConfig {
                name: d.name.clone(),
                source: Source::Prepared(self.prepared_dir(d)),
                weight: match mixture {
                    Some(m) => m.iter().find(|(n, _)| *n == d.name).map_or(0.0, |(_, w)| *w),
                    None => 1.0,
                },
            })
            .collect()
    }

    pub(super) fn train_config(&self, model: ModelConfig, mixture: Option<&[(String, f64)]>, steps: usize, init_from: Option<PathBuf>, lr: Option<f64>) -> TrainConfig {
        let r = self.recipe;
        let optimizer = OptimizerConfig { lr: lr.unwrap_or(r.optimizer.lr), ..r.optimizer.clone() };
        TrainConfig {
            model,
            data: DataConfig {
                tokenizer: resolve(&r.tokenizer),
                seq_len: r.seq_len,
                domains: self.domains(mixture),
                val_every: r.val_every,
                val_fraction: r.val_fraction,
            },
            optimizer,
            steps,
            batch_size: r.batch_size,
            grad_accum: 1,
            seed: r.seed,
            checkpoint_every: (steps / 4).max(10),
            eval_every: 0,
            eval_batches: r.eval.batches,
            init_from,
            trainable: None,
            keep_last: 2,
            keep_every: None,
            spike_guard: r.spike_guard.clone(),
        }
    }

    /// Where a domain's tokens are: its data stage's output, or a folder prepared beforehand.
    pub(super) fn prepared_dir(&self, domain: &DomainConfig) -> PathBuf {
        match &domain.source {
            Source::Prepared(dir) => resolve(dir),
            _ => self.dir(&Self::data_stage_name(domain)).join("tokens"),
        }
    }

    fn data_stage_name(domain: &DomainConfig) -> String {
        format!("data/{}", domain.name)
    }

    /// The names of the data stages (every domain not prepared beforehand).
    pub(super) fn data_stage_names(&self) -> Vec<String> {
        self.recipe.domains.iter().filter(|d| !matches!(d.source, Source::Prepared(_))).map(Self::data_stage_name).collect()
    }

    /// Each domain's tokens, prepared once: `btx data prepare-domain` of its source.
    pub fn data_stages(&self) -> Result<Vec<Stage>> {
        let r = self.recipe;
        let tokenizer = resolve(&r.tokenizer);
        let mut stages = Vec::new();
        for d in r.domains.iter().filter(|d| !matches!(d.source, Source::Prepared(_))) {
            let name = Self::data_stage_name(d);
            let dir = self.dir(&name);
            let source = absolute(&d.source);
            let mut inputs = vec![tokenizer.clone()];
            inputs.extend(source_files(&source).with_context(|| format!("recipe domain `{}`", d.name))?);
            let preparation = DomainPreparation { domain: d.name.clone(), tokenizer: tokenizer.clone(), source, val_fraction: r.val_fraction };
            let args = strings(&["data", "prepare-domain", "--config", &dir.join("stage.ron").display().to_string(), "--out", &dir.join("tokens").display().to_string()]);
            stages.push(Stage { name, dir, args, config: Some(to_ron(&preparation)?), inputs });
        }
        Ok(stages)
    }

    /// The tokenizer and every domain's prepared meta.json (which holds the hashes of its
    /// token files): inputs of every training and evaluation stage.
    pub(super) fn data_inputs(&self) -> Vec<PathBuf> {
        let mut files = vec![resolve(&self.recipe.tokenizer)];
        files.extend(self.recipe.domains.iter().map(|d| self.prepared_dir(d).join(crate::data::prepared::META_FILE)));
        files
    }

    pub(super) fn train_stage(&self, name: &str, config: &TrainConfig, init: Option<&Path>) -> Result<Stage> {
        let dir = self.dir(name);
        let mut inputs = self.data_inputs();
        inputs.extend(init.map(model_file));
        let mut args = strings(&["train", "--config", &dir.join("stage.ron").display().to_string(), "--out", &dir.display().to_string(), "--resume", "--no-progress"]);
        args.extend(self.device.to_args());
        Ok(Stage {
            name: name.to_string(),
            args,
            dir,
            config: Some(to_ron(config)?),
            inputs,
        })
    }

    /// The seed checkpoint (a run folder or checkpoint folder), and its stage if trained here.
    pub fn seed(&self) -> Result<(PathBuf, Option<Stage>)> {
        match &self.recipe.seed_model {
            SeedModel::Checkpoint(path) => Ok((resolve(path), None)),
            SeedModel::Train { steps, mixture } => {
                let config = self.train_config(self.recipe.model.clone(), Some(mixture), *steps, None, None);
                Ok((self.dir("seed"), Some(self.train_stage("seed", &config, None)?)))
            }
        }
    }

    /// The experts' training stages (the later experts' too, branched from the forest).
    pub fn expert_stages(&self, seed: &Path) -> Result<Vec<Stage>> {
        let mut stages: Vec<Stage> = self
            .recipe
            .experts
            .iter()
            .map(|e| {
                let config = self.train_config(self.recipe.model.clone(), Some(&e.data), e.steps, Some(seed.to_path_buf()), None);
                self.train_stage(&format!("experts/{}", e.name), &config, Some(seed))
            })
            .collect::<Result<_>>()?;
        stages.extend(self.later_expert_stages()?);
        Ok(stages)
    }

    pub fn merge_stages(&self, seed: &Path) -> Result<Vec<Stage>> {
        let experts: Vec<PathBuf> = self.recipe.experts.iter().map(|e| self.dir(&format!("experts/{}", e.name))).collect();
        let mut stages = Vec::new();
        for m in &self.recipe.merges {
            let options = self.recipe.moe_of(m);
            let moe = to_ron(options)?.replace('\n', " ");
            // Data-initialised routers read each member's training data: the experts' own
            // configs, and every domain for the seed.
            let expert_data: Vec<PathBuf> = experts.iter().map(|e| e.join("stage.ron")).collect();
            let router_data = |with_seed: bool| -> Vec<String> {
                if options.router_init == crate::merge::router_init::RouterInit::Random {
                    return vec![];
                }
                let mut v = vec!["--router-data".to_string()];
                v.extend(expert_data.iter().map(|p| p.display().to_string()));
                if with_seed {
                    v.push(self.eval_data_path().display().to_string());
                }
                v
            };
            let dir = self.dir(&format!("merges/{}", m.name));
            let mut args = strings(&["merge", "--out", &dir.display().to_string(), "--moe", &moe]);
            let mut inputs: Vec<PathBuf> = Vec::new();
            match m.method {
                MergeMethod::Btx | MergeMethod::Bam { .. } => {
                    let method = if m.method == MergeMethod::Btx { "btx" } else { "bam" };
                    args.extend(strings(&["--method", method]));
                    if m.method == (MergeMethod::Bam { shared_kv: true }) {
                        args.push("--shared-kv".into());
                    }
                    args.push("--experts".into());
                    args.extend(experts.iter().map(|p| p.display().to_string()));
                    inputs.extend(experts.iter().map(|p| model_file(p)));
                    if self.recipe.keep_seed {
                        args.extend(strings(&["--seed", &seed.display().to_string()]));
                        inputs.push(model_file(seed));
                    }
                    args.extend(router_data(self.recipe.keep_seed));
                }
                MergeMethod::Upcycle { experts: n, drop_ratio } => {
                    args.extend(strings(&["--method", "upcycle", "--num-experts", &n.to_string(), "--experts", &seed.display().to_string()]));
                    if drop_ratio > 0.0 {
                        args.extend(strings(&["--drop-ratio", &drop_ratio.to_string()]));
                    }
                    inputs.push(model_file(seed));
                }
                MergeMethod::Average => {
                    args.extend(strings(&["--method", "average", "--experts"]));
                    args.extend(experts.iter().map(|p| p.display().to_string()));
                    inputs.extend(experts.iter().map(|p| model_file(p)));
                }
                MergeMethod::Ensemble { .. } => continue,
            }
            stages.push(Stage { name: format!("merges/{}", m.name), dir, args, config: None, inputs });
        }
        Ok(stages)
    }

    /// The members of BTX's MiX, in merge order: (name, checkpoint folder); the seed last when
    /// it is kept as the generalist.
    pub fn btx_members(&self, seed: &Path) -> Vec<(String, PathBuf)> {
        let r = self.recipe;
        let experts = r.experts.iter().map(|e| (e.name.clone(), self.dir(&format!("experts/{}", e.name))));
        experts.chain(r.keep_seed.then(|| ("generalist".to_string(), seed.to_path_buf()))).collect()
    }

    /// The merge diagnosis stages: for each BTX member, its FFN inside the averaged shared
    /// weights (`btx merge --method transplant`).
    pub fn diagnosis_stages(&self, seed: &Path) -> Vec<Stage> {
        if !self.recipe.diagnose_merge {
            return vec![];
        }
        let members = self.btx_members(seed);
        let experts: Vec<String> = self.recipe.experts.iter().map(|e| self.dir(&format!("experts/{}", e.name)).display().to_string()).collect();
        members
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let dir = self.dir(&format!("diagnosis/{name}"));
                let mut args = strings(&["merge", "--method", "transplant", "--member", &i.to_string(), "--out", &dir.display().to_string(), "--experts"]);
                args.extend(experts.iter().cloned());
                if self.recipe.keep_seed {
                    args.extend(strings(&["--seed", &seed.display().to_string()]));
                }
                let inputs = members.iter().map(|(_, p)| model_file(p)).collect();
                Stage { name: format!("diagnosis/{name}"), dir, args, config: None, inputs }
            })
            .collect()
    }

    /// Finetune stages of the MoE merges (their model configs come from the merged folders).
    pub fn finetune_stages(&self) -> Result<Vec<Stage>> {
        self.recipe.merges.iter().filter(|m| m.method.is_moe()).map(|m| self.finetune_stage(m)).collect()
    }

    /// The finetune of one MoE merge (it reads the merged folder: the merge must have run).
    pub fn finetune_stage(&self, m: &super::config::Merge) -> Result<Stage> {
        let ft = &self.recipe.finetune;
        let merged = self.dir(&format!("merges/{}", m.name));
        let model = read_model_config(&merged).with_context(|| format!("merge {} must run before its finetune", m.name))?;
        let steps = match m.method {
            MergeMethod::Upcycle { .. } if self.recipe.match_flops => {
                let per_step = model.train_flops_per_token(self.recipe.seq_len) * self.tokens_per_step();
                (self.btx_budget()? / per_step).round().max(1.0) as usize
            }
            _ => ft.steps,
        };
        let config = self.train_config(model, ft.mixture.as_deref(), steps, Some(merged.clone()), ft.lr);
        self.train_stage(&format!("finetune/{}", m.name), &config, Some(&merged))
    }

    /// The dense baseline: the seed continued on the finetune mixture for the training FLOPs
    /// of all experts plus the first BTX finetune.
    pub fn dense_stage(&self, seed: &Path) -> Result<Option<Stage>> {
        if !self.recipe.dense_baseline {
            return Ok(None);
        }
        let r = self.recipe;
        let dense_per_step = r.model.train_flops_per_token(r.seq_len) * self.tokens_per_step();
        let steps = (self.btx_budget()? / dense_per_step).round().max(1.0) as usize;
        let config = self.train_config(r.model.clone(), r.finetune.mixture.as_deref(), steps, Some(seed.to_path_buf()), None);
        Ok(Some(self.train_stage("dense", &config, Some(seed))?))
    }

    /// The data-matched dense baseline: the seed continued for the experts' and the
    /// finetune's steps together, on the mixture that gives each domain the share of tokens
    /// those steps gave it (`data_matched_mixture`).
    pub fn dense_data_stage(&self, seed: &Path) -> Result<Option<Stage>> {
        let r = self.recipe;
        if !r.data_matched_baseline {
            return Ok(None);
        }
        let steps = r.experts.iter().map(|e| e.steps).sum::<usize>() + r.finetune.steps;
        let mixture = self.data_matched_mixture();
        let config = self.train_config(r.model.clone(), Some(&mixture), steps, Some(seed.to_path_buf()), None);
        Ok(Some(self.train_stage("dense-data", &config, Some(seed))?))
    }

    /// Tokens per domain after the seed, as steps: each expert's steps split by its data
    /// weights, plus the finetune's steps split by its mixture (every domain alike if none).
    pub fn data_matched_mixture(&self) -> Vec<(String, f64)> {
        let r = self.recipe;
        let everything: Vec<(String, f64)> = r.domains.iter().map(|d| (d.name.clone(), 1.0)).collect();
        let finetune = r.finetune.mixture.as_deref().unwrap_or(&everything);
        let parts = r.experts.iter().map(|e| (e.steps, e.data.as_slice())).chain([(r.finetune.steps, finetune)]);
        let mut steps: Vec<(String, f64)> = r.domains.iter().map(|d| (d.name.clone(), 0.0)).collect();
        for (n, mixture) in parts {
            let total: f64 = mixture.iter().map(|(_, w)| w).sum();
            for (name, w) in mixture {
                if let Some(slot) = steps.iter_mut().find(|(d, _)| d == name) {
                    slot.1 += n as f64 * w / total;
                }
            }
        }
        steps.retain(|(_, s)| *s > 0.0);
        steps
    }

    fn tokens_per_step(&self) -> f64 {
        (self.recipe.batch_size * self.recipe.seq_len) as f64
    }

    /// Training FLOPs of BTX beyond the seed: every expert plus the first BTX finetune.
    fn btx_budget(&self) -> Result<f64> {
        let r = self.recipe;
        let dense_per_step = r.model.train_flops_per_token(r.seq_len) * self.tokens_per_step();
        let mut budget: f64 = r.experts.iter().map(|e| e.steps as f64 * dense_per_step).sum();
        if let Some(m) = r.merges.iter().find(|m| m.method == MergeMethod::Btx) {
            let moe = read_model_config(&self.dir(&format!("merges/{}", m.name)))?;
            budget += r.finetune.steps as f64 * moe.train_flops_per_token(r.seq_len) * self.tokens_per_step();
        }
        Ok(budget)
    }

    /// The data every model is evaluated on: all domains.
    pub fn eval_data_path(&self) -> PathBuf {
        self.out.join("eval-data.ron")
    }

    /// Writes the data configs stages read: every domain (evaluation) and each later
    /// expert's data.
    pub fn write_eval_data(&self) -> Result<()> {
        let config = self.train_config(self.recipe.model.clone(), None, 1, None, None);
        crate::fsutil::write_atomic(&self.eval_data_path(), to_ron(&config)?.as_bytes())?;
        self.write_later_data()
    }

    /// The names of a merge's routed experts, as `btx merge` records them: the recipe's
    /// expert names and "generalist" for the kept seed (BTX, BAM; not when the seed is the
    /// shared expert), "copy N" (upcycling); ".0", ".1"... when split.
    pub fn expert_names(&self, merge: &super::config::Merge) -> Vec<String> {
        let r = self.recipe;
        let moe = r.moe_of(merge);
        let routed_seed = r.keep_seed && moe.shared_expert != crate::merge::mix::SharedExpert::Seed;
        let whole: Vec<String> = match merge.method {
            MergeMethod::Upcycle { experts, .. } => (0..experts).map(|e| format!("copy {e}")).collect(),
            _ => r.experts.iter().map(|e| e.name.clone()).chain(routed_seed.then(|| "generalist".to_string())).collect(),
        };
        crate::merge::split_expert_names(&whole, moe.split)
    }
}

pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn slug(label: &str) -> String {
    let dashed: String = label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    dashed.split('-').filter(|part| !part.is_empty()).collect::<Vec<_>>().join("-")
}

/// The source with its paths made absolute (stages run in their own folders).
fn absolute(source: &Source) -> Source {
    let all = |files: &[PathBuf]| files.iter().map(|p| resolve(p)).collect();
    match source {
        Source::File(p) => Source::File(resolve(p)),
        Source::Script { files, script } => Source::Script { files: all(files), script: *script },
        Source::Jsonl { files, field } => Source::Jsonl { files: all(files), field: field.clone() },
        Source::Parquet { files, column } => Source::Parquet { files: all(files), column: column.clone() },
        Source::Prepared(p) => Source::Prepared(resolve(p)),
        Source::Arithmetic(a) => Source::Arithmetic(a.clone()),
    }
}

/// The files a source reads (its folders and patterns expanded): a data stage's inputs.
fn source_files(source: &Source) -> Result<Vec<PathBuf>> {
    Ok(match source {
        Source::File(p) => vec![p.clone()],
        Source::Script { files, .. } => files.clone(),
        Source::Jsonl { files, .. } | Source::Parquet { files, .. } => crate::data::documents::expand_inputs(files)?,
        Source::Prepared(_) | Source::Arithmetic(_) => vec![],
    })
}

