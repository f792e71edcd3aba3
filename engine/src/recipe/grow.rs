//! Growing merged models after the fact (BTM's "grow the forest", Li et al. 2022, §4;
//! FlexOlmo, Shi et al. 2025, §3). A recipe's later experts branch from the average of its
//! experts (the forest), train on their own data like any expert, and then join every
//! finetuned BTX and BAM model (`btx moe add-expert`, router rows from their data, no
//! further training) and every BTM ensemble. Each grown model is evaluated beside the rest.

use std::path::PathBuf;

use anyhow::Result;

use super::plan::{Entry, EntryKind, Plan, StageNode, split_names, strings};
use super::stage::{Stage, model_file};

const FOREST: &str = "forest";

impl Plan<'_> {
    fn later_stage_names(&self) -> Vec<(String, String)> {
        self.recipe.later_experts.iter().map(|e| (e.name.clone(), format!("experts/{}", e.name))).collect()
    }

    /// RUN/forest: the experts' average, which the later experts branch from.
    pub fn forest_stage(&self) -> Option<Stage> {
        if self.recipe.later_experts.is_empty() {
            return None;
        }
        let experts: Vec<PathBuf> = self.recipe.experts.iter().map(|e| self.dir(&format!("experts/{}", e.name))).collect();
        let dir = self.dir(FOREST);
        let mut args = strings(&["merge", "--method", "average", "--out", &dir.display().to_string(), "--experts"]);
        args.extend(experts.iter().map(|p| p.display().to_string()));
        Some(Stage { name: FOREST.into(), dir, args, config: None, inputs: experts.iter().map(|p| model_file(p)).collect() })
    }

    /// The later experts' training stages, each branched from the forest.
    pub fn later_expert_stages(&self) -> Result<Vec<Stage>> {
        let forest = self.dir(FOREST);
        self.recipe
            .later_experts
            .iter()
            .map(|e| {
                let config = self.train_config(self.recipe.model.clone(), Some(&e.data), e.steps, Some(forest.clone()), None);
                self.train_stage(&format!("experts/{}", e.name), &config, Some(&forest))
            })
            .collect()
    }

    /// For each finetuned BTX or BAM model, one stage per later expert, each adding it to the
    /// model the previous one grew: RUN/grow/MERGE/LATER.
    pub fn grow_stages(&self) -> Vec<Stage> {
        let data = self.eval_data_path();
        let mut stages = Vec::new();
        for m in self.recipe.merges.iter().filter(|m| m.method.mixes_experts()) {
            let mut previous = self.dir(&format!("finetune/{}", m.name));
            for (name, expert_stage) in self.later_stage_names() {
                let stage_name = format!("grow/{}/{name}", m.name);
                let (dir, expert) = (self.dir(&stage_name), self.dir(&expert_stage));
                let args = strings(&[
                    "moe", "add-expert", &previous.display().to_string(), "--expert", &expert.display().to_string(), "--name", &name,
                    "--router-data", &expert.join("stage.ron").display().to_string(), "--reference-data", &data.display().to_string(),
                    "--out", &dir.display().to_string(),
                ]);
                let inputs = vec![model_file(&previous), model_file(&expert), data.clone()];
                stages.push(Stage { name: stage_name, dir: dir.clone(), args, config: None, inputs });
                previous = dir;
            }
        }
        stages
    }

    /// The forest, later expert and grow stages with the stages each waits for.
    pub fn grow_nodes(&self) -> Vec<StageNode> {
        let r = self.recipe;
        if r.later_experts.is_empty() {
            return vec![];
        }
        let node = |name: String, after: Vec<String>| StageNode { name, after };
        let mut nodes = vec![node(FOREST.into(), r.experts.iter().map(|e| format!("experts/{}", e.name)).collect())];
        nodes.extend(self.later_stage_names().into_iter().map(|(_, stage)| node(stage, vec![FOREST.into()])));
        for m in r.merges.iter().filter(|m| m.method.mixes_experts()) {
            let mut previous = format!("finetune/{}", m.name);
            for (name, expert_stage) in self.later_stage_names() {
                let stage = format!("grow/{}/{name}", m.name);
                nodes.push(node(stage.clone(), vec![previous, expert_stage]));
                previous = stage;
            }
        }
        nodes
    }

    /// The grown BTX and BAM models to evaluate ("MERGE + LATER"), with their lineage after
    /// `trained` (the seed and experts) and their experts' names.
    pub fn grown_entries(&self, trained: &[String]) -> Vec<(Entry, PathBuf)> {
        let mut out = Vec::new();
        for m in self.recipe.merges.iter().filter(|m| m.method.mixes_experts()) {
            let split = m.moe.as_ref().unwrap_or(&self.recipe.moe).split;
            let mut lineage = trained.to_vec();
            lineage.extend([format!("finetune/{}", m.name), FOREST.to_string()]);
            let (mut label, mut names) = (m.name.clone(), self.expert_names(m));
            for (name, expert_stage) in self.later_stage_names() {
                label = format!("{label} + {name}");
                names.extend(split_names(std::slice::from_ref(&name), split));
                lineage.extend([expert_stage, format!("grow/{}/{name}", m.name)]);
                let entry = Entry::new(label.clone(), EntryKind::Final, lineage.clone()).with_experts(names.clone());
                out.push((entry, self.dir(&format!("grow/{}/{name}", m.name))));
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
