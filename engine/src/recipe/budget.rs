//! The stages whose length is matched to BTX's: each MoE finetune (upcycling's at matched
//! FLOPs with `match_flops`), the compute-matched dense baseline and the data-matched one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::config::{Merge, MergeMethod};
use super::plan::Plan;
use super::stage::Stage;
use super::stage_id::StageId;
use crate::checkpoint::read_model_config;

impl Plan<'_> {
    /// Finetune stages of the MoE merges (their model configs come from the merged folders).
    pub fn finetune_stages(&self) -> Result<Vec<Stage>> {
        self.recipe.merges.iter().filter(|m| m.method.is_moe()).map(|m| self.finetune_stage(m)).collect()
    }

    /// The finetune of one MoE merge (it reads the merged folder: the merge must have run).
    pub fn finetune_stage(&self, m: &Merge) -> Result<Stage> {
        let config = self.finetune_config(m)?;
        let merged = self.dir(&StageId::Merge(m.name.clone()));
        self.train_stage(StageId::Finetune(m.name.clone()), &config, Some(&merged))
    }

    fn finetune_config(&self, m: &Merge) -> Result<crate::train::TrainConfig> {
        let ft = &self.recipe.finetune;
        let merged = self.dir(&StageId::Merge(m.name.clone()));
        let model = read_model_config(&merged).with_context(|| format!("merge {} must run before its finetune", m.name))?;
        let steps = match m.method {
            MergeMethod::Upcycle { .. } if self.recipe.match_flops => {
                let per_step = model.train_flops_per_token(self.recipe.seq_len) * self.tokens_per_step();
                (self.btx_budget()? / per_step).round().max(1.0) as usize
            }
            _ => ft.steps,
        };
        let mut config = self.train_config(model, ft.mixture.as_deref(), steps, Some(merged.clone()), &ft.optimizer());
        config.lora = ft.lora.clone();
        config.trainable = m.trainable.clone().or_else(|| ft.trainable.clone());
        Ok(config)
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
        // From the generalist when there is one: the dense model BTX's MoE is set against.
        let start = self.generalist_dir(seed);
        let config = self.train_config(r.model.clone(), r.finetune.mixture.as_deref(), steps, Some(start.clone()), &r.baseline_optimizer);
        Ok(Some(self.train_stage(StageId::Dense, &config, Some(&start))?))
    }

    /// The data-matched dense baseline: the seed continued for the experts' and the
    /// finetune's steps together, on the mixture that gives each domain the share of tokens
    /// those steps gave it (`data_matched_mixture`).
    pub fn dense_data_stage(&self, seed: &Path) -> Result<Option<Stage>> {
        let r = self.recipe;
        if !r.data_matched_baseline {
            return Ok(None);
        }
        let steps = r.experts.iter().map(|e| e.steps + e.then.iter().map(|p| p.steps).sum::<usize>()).sum::<usize>() + r.finetune.steps;
        let mixture = self.data_matched_mixture();
        let config = self.train_config(r.model.clone(), Some(&mixture), steps, Some(seed.to_path_buf()), &r.baseline_optimizer);
        Ok(Some(self.train_stage(StageId::DenseData, &config, Some(seed))?))
    }

    /// Tokens per domain after the seed, as steps: each expert's steps split by its data
    /// weights, plus the finetune's steps split by its mixture (every domain alike if none).
    pub fn data_matched_mixture(&self) -> Vec<(String, f64)> {
        let r = self.recipe;
        let everything: Vec<(String, f64)> = r.domains.iter().map(|d| (d.name.clone(), 1.0)).collect();
        let finetune = r.finetune.mixture.as_deref().unwrap_or(&everything);
        let phases = r.experts.iter().flat_map(|e| std::iter::once((e.steps, e.data.as_slice())).chain(e.then.iter().map(|p| (p.steps, p.data.as_slice()))));
        let parts = phases.chain([(r.finetune.steps, finetune)]);
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

    /// Training FLOPs of BTX beyond the seed (and the generalist, which the dense baseline
    /// starts from too): every phase of every expert the first BTX merge mixes (its
    /// variant's) plus its finetune, each at
    /// its config's FLOPs a token (a LoRA or partly frozen stage computes fewer gradients).
    fn btx_budget(&self) -> Result<f64> {
        let r = self.recipe;
        let seed = PathBuf::from("SEED");
        let btx = r.merges.iter().find(|m| m.method == MergeMethod::Btx);
        let experts = btx.map_or_else(|| r.experts.clone(), |m| r.experts_of(m));
        let phases = experts.iter().flat_map(|e| self.expert_phases(e, &seed));
        let mut budget: f64 = phases.map(|(_, config, _)| config.steps as f64 * config.train_flops_per_token() * self.tokens_per_step()).sum();
        if let Some(m) = btx {
            let finetune = self.finetune_config(m)?;
            budget += r.finetune.steps as f64 * finetune.train_flops_per_token() * self.tokens_per_step();
        }
        Ok(budget)
    }

}
