//! Growing merged models after the fact (BTM's "grow the forest", Li et al. 2022, §4;
//! FlexOlmo, Shi et al. 2025, §3). A recipe's later experts branch from the average of its
//! experts weighted by their domain posterior on the new expert's data (BTM's forest
//! growth, RUN/posterior/LATER then RUN/forest/LATER) and train on their own data like any expert. Each then joins every
//! BTM ensemble as it is, and every finetuned BTX and BAM model as one more expert
//! (`btx moe add-expert`, its router row from its data): RUN/grow/MERGE/LATER/added. As the
//! expert's FFN learned against the forest's shared weights, not the MoE's, it then trains
//! on its own data once more inside the MoE with every other weight frozen (FlexOlmo's
//! protocol: the MoE's shared weights and routers stay as they are, so what the MoE already
//! serves is disturbed only where tokens route to the new expert): RUN/grow/MERGE/LATER/trained.
//! Both are evaluated beside the rest.

use std::path::PathBuf;

use anyhow::Result;

use super::config::MergeMethod;
use super::entries::{Entry, EntryKind, ModelId};
use crate::merge::MergeRequest;
use crate::merge::router_data::{MEASURED_FILE, Measurement};
use super::graph::StageNode;
use super::plan::{Plan, strings};
use super::stage::{Stage, model_file};
use super::stage_id::{GrowStep, StageId};

fn forest(name: &str) -> StageId {
    StageId::Forest(name.to_string())
}

fn grow(merge: &str, later: &str, step: GrowStep) -> StageId {
    StageId::Grow { merge: merge.to_string(), later: later.to_string(), step }
}

impl Plan<'_> {
    /// Each later expert's name and training stage.
    fn later_stages(&self) -> Vec<(String, StageId)> {
        self.recipe.later_experts.iter().map(|e| (e.name.clone(), StageId::Expert(e.name.clone()))).collect()
    }

    /// The data a later expert trains on, as a training config (written before any stage
    /// runs: its forest is weighted by it).
    pub fn later_data_path(&self, name: &str) -> PathBuf {
        self.out.join(format!("data-{name}.ron"))
    }

    pub(super) fn write_later_data(&self) -> Result<()> {
        for e in &self.recipe.later_experts {
            let config = self.train_config(self.recipe.model.clone(), Some(&e.data), 1, None, &Default::default());
            crate::fsutil::write_atomic(&self.later_data_path(&e.name), crate::config::to_ron(&config)?.as_bytes())?;
        }
        Ok(())
    }

    /// RUN/forest/LATER: the experts' average weighted by their domain posterior on the
    /// later expert's data, which it branches from.
    pub fn forest_stages(&self) -> Result<Vec<Stage>> {
        let experts = self.expert_dirs(&self.recipe.experts);
        self.recipe
            .later_experts
            .iter()
            .map(|later| {
                let mut request = MergeRequest::new(MergeMethod::Average, experts.clone());
                request.measured = Some(self.dir(&StageId::Posterior(later.name.clone())).join(MEASURED_FILE));
                self.merge_stage(forest(&later.name), &request)
            })
            .collect()
    }

    /// RUN/posterior/LATER: the experts' domain posterior on the later expert's data, which
    /// weights its forest (measured on the run's device).
    pub fn posterior_stages(&self) -> Result<Vec<Stage>> {
        let experts = self.expert_dirs(&self.recipe.experts);
        let measure = |later: &super::config::Expert| {
            let measurement = Measurement::Posterior { members: experts.clone(), data: self.later_data_path(&later.name) };
            self.measure_stage(StageId::Posterior(later.name.clone()), &measurement)
        };
        self.recipe.later_experts.iter().map(measure).collect()
    }

    /// The later experts' training stages, each branched from its forest.
    pub fn later_expert_stages(&self) -> Result<Vec<Stage>> {
        self.recipe
            .later_experts
            .iter()
            .map(|e| {
                let from = self.dir(&forest(&e.name));
                let mut config = self.train_config(self.recipe.model.clone(), Some(&e.data), e.steps, Some(from.clone()), &self.recipe.expert_optimizer_of(e));
                config.lora = self.recipe.expert_lora_of(e);
                self.train_stage(StageId::Expert(e.name.clone()), &config, Some(&from))
            })
            .collect()
    }

    /// For each finetuned BTX or BAM model, two stages per later expert: adding it to the
    /// model the previous one grew (RUN/grow/MERGE/LATER/added), then training its new
    /// weights alone (RUN/grow/MERGE/LATER/trained). The training stage reads the added
    /// model's config, so it is built only once that exists (None before).
    pub fn grow_stages(&self) -> Result<Vec<(Stage, Option<Stage>)>> {
        let data = self.eval_data_path();
        let mut stages = Vec::new();
        for m in self.recipe.merges.iter().filter(|m| m.method.mixes_experts()) {
            let mut previous = self.dir(&StageId::Finetune(m.name.clone()));
            let mut routed = self.expert_names(m).len();
            let split = self.recipe.moe_of(m).split.max(1);
            for later in &self.recipe.later_experts {
                let (added, trained) = (grow(&m.name, &later.name, GrowStep::Added), grow(&m.name, &later.name, GrowStep::Trained));
                let (dir, expert) = (self.dir(&added), self.dir(&StageId::Expert(later.name.clone())));
                let args = strings(&[
                    "moe", "add-expert", &previous.display().to_string(), "--expert", &expert.display().to_string(), "--name", &later.name,
                    "--router-data", &self.config_path(&StageId::Expert(later.name.clone())).display().to_string(), "--reference-data", &data.display().to_string(),
                    "--out", &dir.display().to_string(),
                ]);
                let inputs = vec![model_file(&previous), model_file(&expert), data.clone()];
                // The new expert's weights: routed experts routed.., and in BAM the attention
                // expert of its member, which `add-expert` places after the routed members'.
                use crate::checkpoint::tensor_names::{attention_expert_part, routed_expert_part};
                let mut trainable: Vec<String> = (routed..routed + split).map(routed_expert_part).collect();
                if matches!(m.method, MergeMethod::Bam { .. }) {
                    trainable.push(attention_expert_part(routed / split));
                }
                let train = match crate::checkpoint::read_model_config(&dir) {
                    Ok(model) => {
                        let mut config = self.train_config(model, Some(&later.data), later.steps, Some(dir.clone()), &self.recipe.finetune.optimizer());
                        config.trainable = Some(crate::train::trainable::Trainable::Patterns(trainable));
                        Some(self.train_stage(trained.clone(), &config, Some(&dir))?)
                    }
                    Err(_) => None,
                };
                stages.push((Stage { id: added, dir: dir.clone(), args, config: None, inputs }, train));
                previous = self.dir(&trained);
                routed += split;
            }
        }
        Ok(stages)
    }

    /// The forest, later expert and grow stages with the stages each waits for.
    pub fn grow_nodes(&self) -> Vec<StageNode> {
        let r = self.recipe;
        if r.later_experts.is_empty() {
            return vec![];
        }
        let node = |id: StageId, after: Vec<StageId>| StageNode { id, after };
        let experts: Vec<StageId> = r.experts.iter().map(|e| StageId::Expert(e.name.clone())).collect();
        let mut nodes = Vec::new();
        for (name, stage) in self.later_stages() {
            nodes.push(node(StageId::Posterior(name.clone()), experts.clone()));
            nodes.push(node(forest(&name), vec![StageId::Posterior(name.clone())]));
            nodes.push(node(stage, vec![forest(&name)]));
        }
        for m in r.merges.iter().filter(|m| m.method.mixes_experts()) {
            let mut previous = StageId::Finetune(m.name.clone());
            for (name, expert_stage) in self.later_stages() {
                let (added, trained) = (grow(&m.name, &name, GrowStep::Added), grow(&m.name, &name, GrowStep::Trained));
                nodes.push(node(added.clone(), vec![previous, expert_stage]));
                nodes.push(node(trained.clone(), vec![added]));
                previous = trained;
            }
        }
        nodes
    }

    /// The grown BTX and BAM models to evaluate ("MERGE + LATER (added)", and trained:
    /// "MERGE + LATER"), with their lineage after `trained` (the seed and experts) and their
    /// experts' names.
    pub fn grown_entries(&self, trained: &[StageId]) -> Vec<(Entry, PathBuf)> {
        let mut out = Vec::new();
        for m in self.recipe.merges.iter().filter(|m| m.method.mixes_experts()) {
            let split = self.recipe.moe_of(m).split;
            let mut lineage = trained.to_vec();
            lineage.push(StageId::Finetune(m.name.clone()));
            let (mut later, mut names) = (Vec::new(), self.expert_names(m));
            for (name, expert_stage) in self.later_stages() {
                lineage.push(forest(&name));
                later.push(name.clone());
                let grown = |added_only| ModelId::Grown { merge: m.name.clone(), later: later.clone(), added_only };
                names.extend(crate::merge::split_expert_names(std::slice::from_ref(&name), split));
                let stage = |step| grow(&m.name, &name, step);
                lineage.extend([expert_stage, stage(GrowStep::Added)]);
                let added = Entry::new(grown(true), EntryKind::Merge, lineage.clone()).with_experts(names.clone());
                out.push((added, self.dir(&stage(GrowStep::Added))));
                lineage.push(stage(GrowStep::Trained));
                let entry = Entry::new(grown(false), EntryKind::Final, lineage.clone()).with_experts(names.clone());
                out.push((entry, self.dir(&stage(GrowStep::Trained))));
            }
        }
        out
    }

    /// A BTM ensemble grown with the later experts: its model and member stages.
    pub fn grown_ensemble(&self, name: &str, experts: &[StageId]) -> Option<(ModelId, Vec<StageId>)> {
        let later = self.later_stages();
        if later.is_empty() {
            return None;
        }
        let model = ModelId::Grown { merge: name.to_string(), later: later.iter().map(|(n, _)| n.clone()).collect(), added_only: false };
        Some((model, experts.iter().cloned().chain(later.into_iter().map(|(_, s)| s)).collect()))
    }
}
