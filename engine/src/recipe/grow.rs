//! Growing merged models after the fact (BTM's "grow the forest", Li et al. 2022, §4;
//! FlexOlmo, Shi et al. 2025, §3). A recipe's later experts branch from the average of its
//! experts weighted by their domain posterior on the new expert's data (BTM's forest
//! growth, RUN/forest/LATER) and train on their own data like any expert. Each then joins every
//! BTM ensemble as it is, and every finetuned BTX and BAM model as one more expert
//! (`btx moe add-expert`, its router row from its data): RUN/grow/MERGE/LATER/added. As the
//! expert's FFN learned against the forest's shared weights, not the MoE's, it then trains
//! on its own data once more inside the MoE with every other weight frozen (FlexOlmo's
//! protocol: the MoE's shared weights and routers stay as they are, so what the MoE already
//! serves is disturbed only where tokens route to the new expert): RUN/grow/MERGE/LATER/trained.
//! Both are evaluated beside the rest.

use std::path::PathBuf;

use anyhow::Result;

use super::entries::{Entry, EntryKind};
use super::graph::StageNode;
use super::plan::{Plan, strings};
use super::stage::{Stage, model_file};

fn forest(name: &str) -> String {
    format!("forest/{name}")
}

/// A grow stage: `step` is "added" or "trained".
fn grow(merge: &str, later: &str, step: &str) -> String {
    format!("grow/{merge}/{later}/{step}")
}

impl Plan<'_> {
    fn later_stage_names(&self) -> Vec<(String, String)> {
        self.recipe.later_experts.iter().map(|e| (e.name.clone(), format!("experts/{}", e.name))).collect()
    }

    /// The data a later expert trains on, as a training config (written before any stage
    /// runs: its forest is weighted by it).
    pub fn later_data_path(&self, name: &str) -> PathBuf {
        self.out.join(format!("data-{name}.ron"))
    }

    pub(super) fn write_later_data(&self) -> Result<()> {
        for e in &self.recipe.later_experts {
            let config = self.train_config(self.recipe.model.clone(), Some(&e.data), 1, None, None);
            crate::fsutil::write_atomic(&self.later_data_path(&e.name), crate::config::to_ron(&config)?.as_bytes())?;
        }
        Ok(())
    }

    /// RUN/forest/LATER: the experts' average weighted by their domain posterior on the
    /// later expert's data, which it branches from.
    pub fn forest_stages(&self) -> Vec<Stage> {
        let experts: Vec<PathBuf> = self.recipe.experts.iter().map(|e| self.dir(&format!("experts/{}", e.name))).collect();
        self.recipe
            .later_experts
            .iter()
            .map(|later| {
                let (dir, data) = (self.dir(&forest(&later.name)), self.later_data_path(&later.name));
                let mut args = strings(&["merge", "--method", "average", "--posterior-data", &data.display().to_string(), "--out", &dir.display().to_string(), "--experts"]);
                args.extend(experts.iter().map(|p| p.display().to_string()));
                let mut inputs: Vec<PathBuf> = experts.iter().map(|p| model_file(p)).collect();
                inputs.push(data);
                Stage { name: forest(&later.name), dir, args, config: None, inputs }
            })
            .collect()
    }

    /// The later experts' training stages, each branched from its forest.
    pub fn later_expert_stages(&self) -> Result<Vec<Stage>> {
        self.recipe
            .later_experts
            .iter()
            .map(|e| {
                let from = self.dir(&forest(&e.name));
                let config = self.train_config(self.recipe.model.clone(), Some(&e.data), e.steps, Some(from.clone()), None);
                self.train_stage(&format!("experts/{}", e.name), &config, Some(&from))
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
            let mut previous = self.dir(&format!("finetune/{}", m.name));
            let mut routed = self.expert_names(m).len();
            let split = self.recipe.moe_of(m).split.max(1);
            for later in &self.recipe.later_experts {
                let (added, trained) = (grow(&m.name, &later.name, "added"), grow(&m.name, &later.name, "trained"));
                let (dir, expert) = (self.dir(&added), self.dir(&format!("experts/{}", later.name)));
                let args = strings(&[
                    "moe", "add-expert", &previous.display().to_string(), "--expert", &expert.display().to_string(), "--name", &later.name,
                    "--router-data", &expert.join("stage.ron").display().to_string(), "--reference-data", &data.display().to_string(),
                    "--out", &dir.display().to_string(),
                ]);
                let inputs = vec![model_file(&previous), model_file(&expert), data.clone()];
                // The new expert's weights: routed experts routed.., and in BAM the attention
                // expert of its member, which `add-expert` places after the routed members'.
                let mut trainable: Vec<String> = (routed..routed + split).map(|e| format!(".block_sparse_moe.experts.{e}.")).collect();
                if matches!(m.method, super::config::MergeMethod::Bam { .. }) {
                    trainable.push(format!(".attention_experts.experts.{}.", routed / split));
                }
                let train = match crate::checkpoint::read_model_config(&dir) {
                    Ok(model) => {
                        let mut config = self.train_config(model, Some(&later.data), later.steps, Some(dir.clone()), self.recipe.finetune.lr);
                        config.trainable = Some(trainable);
                        Some(self.train_stage(&trained, &config, Some(&dir))?)
                    }
                    Err(_) => None,
                };
                stages.push((Stage { name: added, dir: dir.clone(), args, config: None, inputs }, train));
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
        let node = |name: String, after: Vec<String>| StageNode { name, after };
        let experts: Vec<String> = r.experts.iter().map(|e| format!("experts/{}", e.name)).collect();
        let mut nodes = Vec::new();
        for (name, stage) in self.later_stage_names() {
            nodes.push(node(forest(&name), experts.clone()));
            nodes.push(node(stage, vec![forest(&name)]));
        }
        for m in r.merges.iter().filter(|m| m.method.mixes_experts()) {
            let mut previous = format!("finetune/{}", m.name);
            for (name, expert_stage) in self.later_stage_names() {
                let (added, trained) = (grow(&m.name, &name, "added"), grow(&m.name, &name, "trained"));
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
    pub fn grown_entries(&self, trained: &[String]) -> Vec<(Entry, PathBuf)> {
        let mut out = Vec::new();
        for m in self.recipe.merges.iter().filter(|m| m.method.mixes_experts()) {
            let split = self.recipe.moe_of(m).split;
            let mut lineage = trained.to_vec();
            lineage.push(format!("finetune/{}", m.name));
            let (mut label, mut names) = (m.name.clone(), self.expert_names(m));
            for (name, expert_stage) in self.later_stage_names() {
                lineage.push(forest(&name));
                label = format!("{label} + {name}");
                names.extend(crate::merge::split_expert_names(std::slice::from_ref(&name), split));
                let stage = |step: &str| grow(&m.name, &name, step);
                lineage.extend([expert_stage, stage("added")]);
                let added = Entry::new(format!("{label} (added)"), EntryKind::Merge, lineage.clone()).with_experts(names.clone());
                out.push((added, self.dir(&stage("added"))));
                lineage.push(stage("trained"));
                let entry = Entry::new(label.clone(), EntryKind::Final, lineage.clone()).with_experts(names.clone());
                out.push((entry, self.dir(&stage("trained"))));
            }
        }
        out
    }

    /// A BTM ensemble grown with the later experts: its label and member stages.
    pub fn grown_ensemble(&self, name: &str, experts: &[String]) -> Option<(String, Vec<String>)> {
        let later = self.later_stage_names();
        if later.is_empty() {
            return None;
        }
        let label = later.iter().fold(name.to_string(), |l, (n, _)| format!("{l} + {n}"));
        Some((label, experts.iter().cloned().chain(later.into_iter().map(|(_, s)| s)).collect()))
    }
}
