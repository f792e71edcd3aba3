//! The plan of a recipe run: the run's layout and each stage's command, inputs, folder and
//! config. The merges' stages are in `merges`, the stages whose length is matched to BTX's
//! in `budget`, the stage graph in `graph`, the models the report compares in `entries`; the
//! runner executes the plan and the report reads it.
//!
//! ```text
//! RUN/data/NAME/            btx data prepare-domain: each domain tokenized once, into
//!                           data/NAME/tokens (a `Prepared` domain is read where it is)
//! RUN/seed/                 btx train (or an existing checkpoint)
//! RUN/experts/NAME/         btx train, branched from the seed, on the expert's data
//! RUN/router-data/NAME/     btx measure: each member's router input on its own data (a
//!                           merge whose routers start from data)
//! RUN/merges/NAME/          btx merge (btx, bam, upcycle, average)
//! RUN/finetune/NAME/        btx train of each MoE merge on the finetune mixture
//! RUN/posterior/LATER/      btx measure: the experts' domain posterior on a later expert's
//!                           data
//! RUN/forest/LATER/         btx merge: the experts' average weighted by that posterior
//! RUN/experts/LATER/        btx train of each later expert, branched from its forest
//! RUN/grow/MERGE/LATER/     added: btx moe add-expert to a finetuned BTX/BAM model;
//!                           trained: btx train of the new expert's weights alone
//! RUN/dense/                btx train: the seed continued at matched FLOPs (optional)
//! RUN/diagnosis/MEMBER/     btx merge: a BTX member's FFN in the averaged shared weights
//! RUN/eval/MODEL/           btx eval / btx ensemble
//! RUN/report.md, report.json, *.png
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::config::{Expert, Phase, Recipe, SeedModel};
use super::stage::{Stage, model_file};
use super::stage_id::StageId;
use crate::config::{ModelConfig, resolve, to_ron};
use crate::data::prepare::DomainPreparation;
use crate::data::{DataConfig, DomainConfig, Source};
use crate::device::DeviceArgs;
use crate::train::{OptimizerSettings, TrainConfig};

pub struct Plan<'a> {
    pub recipe: &'a Recipe,
    pub out: PathBuf,
    pub device: DeviceArgs,
}

impl Plan<'_> {
    pub fn dir(&self, stage: &StageId) -> PathBuf {
        self.out.join(stage.folder())
    }

    /// The config file a stage writes before its command runs (`Stage::config_path`).
    pub fn config_path(&self, stage: &StageId) -> PathBuf {
        self.dir(stage).join(super::stage::CONFIG_FILE)
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

    /// A stage's training config: the recipe's settings, with the stage's `optimizer` changes.
    pub(super) fn train_config(&self, model: ModelConfig, mixture: Option<&[(String, f64)]>, steps: usize, init_from: Option<PathBuf>, optimizer: &OptimizerSettings) -> TrainConfig {
        let r = self.recipe;
        let optimizer = optimizer.apply(&r.optimizer);
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
            precision: r.precision,
            frozen_precision: Default::default(),
            initial_loss_scale: None,
            lora: None,
            activation_checkpointing: r.activation_checkpointing,
        }
    }

    /// Where a domain's tokens are: its data stage's output, or a folder prepared beforehand.
    pub(super) fn prepared_dir(&self, domain: &DomainConfig) -> PathBuf {
        match &domain.source {
            Source::Prepared(dir) => resolve(dir),
            _ => self.dir(&StageId::Data(domain.name.clone())).join("tokens"),
        }
    }

    /// The data stages (every domain not prepared beforehand).
    pub(super) fn data_stage_ids(&self) -> Vec<StageId> {
        self.recipe.domains.iter().filter(|d| !matches!(d.source, Source::Prepared(_))).map(|d| StageId::Data(d.name.clone())).collect()
    }

    /// Each domain's tokens, prepared once: `btx data prepare-domain` of its source.
    pub fn data_stages(&self) -> Result<Vec<Stage>> {
        let r = self.recipe;
        let tokenizer = resolve(&r.tokenizer);
        let mut stages = Vec::new();
        for d in r.domains.iter().filter(|d| !matches!(d.source, Source::Prepared(_))) {
            let id = StageId::Data(d.name.clone());
            let dir = self.dir(&id);
            let source = absolute(&d.source);
            let mut inputs = vec![tokenizer.clone()];
            inputs.extend(source_files(&source).with_context(|| format!("recipe domain `{}`", d.name))?);
            let preparation = DomainPreparation { domain: d.name.clone(), tokenizer: tokenizer.clone(), source, val_fraction: r.val_fraction };
            let args = strings(&["data", "prepare-domain", "--config", &self.config_path(&id).display().to_string(), "--out", &dir.join("tokens").display().to_string()]);
            stages.push(Stage { id, dir, args, config: Some(to_ron(&preparation)?), inputs });
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

    pub(super) fn train_stage(&self, id: StageId, config: &TrainConfig, init: Option<&Path>) -> Result<Stage> {
        let dir = self.dir(&id);
        let mut inputs = self.data_inputs();
        inputs.extend(init.map(model_file));
        // The recipe's `frozen_precision` reaches the stages that freeze weights.
        let mut config = config.clone();
        if config.freezes_weights() {
            config.frozen_precision = self.recipe.frozen_precision;
        }
        let mut args = strings(&["train", "--config", &self.config_path(&id).display().to_string(), "--out", &dir.display().to_string(), "--resume", "--no-progress"]);
        args.extend(self.device.to_args());
        Ok(Stage {
            id,
            args,
            dir,
            config: Some(to_ron(&config)?),
            inputs,
        })
    }

    /// The seed checkpoint (a run folder or checkpoint folder), and its stage if trained here.
    pub fn seed(&self) -> Result<(PathBuf, Option<Stage>)> {
        match &self.recipe.seed_model {
            SeedModel::Checkpoint(path) => Ok((resolve(path), None)),
            SeedModel::Train { steps, mixture } => {
                let config = self.train_config(self.recipe.model.clone(), Some(mixture), *steps, None, &Default::default());
                Ok((self.dir(&StageId::Seed), Some(self.train_stage(StageId::Seed, &config, None)?)))
            }
        }
    }

    /// The experts' training stages, each expert's phases in order (the later experts' too,
    /// branched from the forest), and the generalist's.
    pub fn expert_stages(&self, seed: &Path) -> Result<Vec<Stage>> {
        let mut stages = Vec::new();
        for e in &self.recipe.all_experts() {
            for (id, config, init) in self.expert_phases(e, seed) {
                stages.push(self.train_stage(id, &config, Some(&init))?);
            }
        }
        stages.extend(self.later_expert_stages()?);
        if let Some(g) = &self.recipe.generalist {
            let mut config = self.train_config(self.recipe.model.clone(), Some(&g.data), g.steps, Some(seed.to_path_buf()), &g.optimizer);
            config.trainable = g.trainable.clone();
            stages.push(self.train_stage(StageId::Generalist, &config, Some(seed))?);
        }
        Ok(stages)
    }

    /// An expert's phases: (stage, training config, the folder it starts from). The first
    /// branches from the seed, each later one continues the one before; the last is the
    /// expert (`experts/NAME`), the others `phases/NAME/N`.
    pub(super) fn expert_phases(&self, e: &Expert, seed: &Path) -> Vec<(StageId, TrainConfig, PathBuf)> {
        let r = self.recipe;
        let optimizer = r.expert_optimizer_of(e);
        let first = Phase { data: e.data.clone(), steps: e.steps, optimizer: Default::default(), trainable: e.trainable.clone() };
        let phases: Vec<&Phase> = std::iter::once(&first).chain(&e.then).collect();
        let mut from = seed.to_path_buf();
        let mut out = Vec::new();
        for (index, phase) in phases.iter().enumerate() {
            let id = if index + 1 == phases.len() { StageId::Expert(e.name.clone()) } else { StageId::Phase { expert: e.name.clone(), index } };
            let mut config = self.train_config(r.model.clone(), Some(&phase.data), phase.steps, Some(from.clone()), &phase.optimizer.over(&optimizer));
            config.lora = r.expert_lora_of(e);
            config.trainable = phase.trainable.clone();
            let dir = self.dir(&id);
            out.push((id, config, from));
            from = dir;
        }
        out
    }

    /// The model kept as the MoE's generalist expert: the generalist stage's, else the seed.
    pub fn generalist_dir(&self, seed: &Path) -> PathBuf {
        if self.recipe.generalist.is_some() { self.dir(&StageId::Generalist) } else { seed.to_path_buf() }
    }

    /// The run folders of `experts`, in their order.
    pub(super) fn expert_dirs(&self, experts: &[Expert]) -> Vec<PathBuf> {
        experts.iter().map(|e| self.dir(&StageId::Expert(e.name.clone()))).collect()
    }

    /// The data every model is evaluated on: all domains.
    pub fn eval_data_path(&self) -> PathBuf {
        self.out.join("eval-data.ron")
    }

    /// Writes the data configs stages read: every domain (evaluation) and each later
    /// expert's data.
    pub fn write_eval_data(&self) -> Result<()> {
        let config = self.train_config(self.recipe.model.clone(), None, 1, None, &Default::default());
        crate::fsutil::write_atomic(&self.eval_data_path(), to_ron(&config)?.as_bytes())?;
        self.write_later_data()
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
        Source::Chat { files, field, template, loss_on } => {
            Source::Chat { files: all(files), field: field.clone(), template: template.as_ref().map(|t| resolve(t)), loss_on: *loss_on }
        }
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
        Source::Chat { files, template, .. } => {
            let mut inputs = crate::data::documents::expand_inputs(files)?;
            inputs.extend(template.clone());
            inputs
        }
        Source::Prepared(_) | Source::Arithmetic(_) => vec![],
    })
}

