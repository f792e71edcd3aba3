//! The stage graph of a recipe run: every stage with the stages it waits for (what the local
//! runner and Slurm both schedule from), and each stage built by name when its turn comes.

use anyhow::{Context, Result};

use super::config::{MergeMethod, SeedModel};
use super::plan::Plan;
use super::stage::Stage;

/// A stage of the run and the stages it waits for: what both schedulers run from.
#[derive(Debug, Clone, PartialEq)]
pub struct StageNode {
    pub name: String,
    pub after: Vec<String>,
}

/// The last stage of every run: the report, after every evaluation.
pub const REPORT_STAGE: &str = "report";

impl Plan<'_> {
    /// Every stage of the run with its dependencies, each after the stages it waits for.
    /// Needs no stage to have run (the evaluations' dependencies are read from their inputs).
    pub fn graph(&self) -> Result<Vec<StageNode>> {
        let r = self.recipe;
        let node = |name: String, after: Vec<String>| StageNode { name, after };
        // Every domain is tokenized first; what trains waits for the seed, which waits for
        // the data (with a given seed checkpoint, the stages wait for the data directly).
        let data = self.data_stage_names();
        let mut nodes: Vec<StageNode> = data.iter().map(|d| node(d.clone(), vec![])).collect();
        let seed: Vec<String> = match r.seed_model {
            SeedModel::Train { .. } => {
                nodes.push(node("seed".into(), data.clone()));
                vec!["seed".to_string()]
            }
            SeedModel::Checkpoint(_) => data,
        };
        let experts: Vec<String> = r.experts.iter().map(|e| format!("experts/{}", e.name)).collect();
        nodes.extend(experts.iter().map(|e| node(e.clone(), seed.clone())));
        // The first BTX merge sets the FLOPs budget of the compute-matched baselines.
        let budget: Vec<String> = r.merges.iter().find(|m| m.method == MergeMethod::Btx).map(|m| format!("merges/{}", m.name)).into_iter().collect();
        for m in &r.merges {
            let after = match m.method {
                MergeMethod::Btx | MergeMethod::Bam { .. } if r.keep_seed => experts.iter().chain(&seed).cloned().collect(),
                MergeMethod::Btx | MergeMethod::Bam { .. } | MergeMethod::Average => experts.clone(),
                MergeMethod::Upcycle { .. } => seed.clone(),
                MergeMethod::Ensemble { .. } => continue,
            };
            nodes.push(node(format!("merges/{}", m.name), after));
        }
        for m in r.merges.iter().filter(|m| m.method.is_moe()) {
            let mut after = vec![format!("merges/{}", m.name)];
            if matches!(m.method, MergeMethod::Upcycle { .. }) && r.match_flops {
                after.extend(budget.iter().cloned());
            }
            nodes.push(node(format!("finetune/{}", m.name), after));
        }
        nodes.extend(self.grow_nodes());
        if r.dense_baseline {
            nodes.push(node("dense".into(), seed.iter().chain(&budget).cloned().collect()));
        }
        if r.data_matched_baseline {
            nodes.push(node("dense-data".into(), seed.clone()));
        }
        if r.diagnose_merge {
            let (seed_dir, _) = self.seed()?;
            let after: Vec<String> = experts.iter().chain(if r.keep_seed { seed.as_slice() } else { &[] }).cloned().collect();
            nodes.extend(self.diagnosis_stages(&seed_dir).into_iter().map(|s| node(s.name, after.clone())));
        }
        let (seed_dir, _) = self.seed()?;
        let producers: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let mut evals = Vec::new();
        for (_, stage) in self.entries(&seed_dir) {
            // An evaluation waits for the stages whose outputs it reads.
            let mut after: Vec<String> = producers.iter().filter(|p| stage.inputs.iter().any(|i| i.starts_with(self.dir(p)))).cloned().collect();
            after.dedup();
            evals.push(stage.name.clone());
            nodes.push(node(stage.name, after));
        }
        nodes.push(node(REPORT_STAGE.into(), evals));
        Ok(nodes)
    }

    /// The stage called `name`, built now: a finetune or the dense baseline reads the merged
    /// folders, so it can be built only once they exist.
    pub fn stage(&self, name: &str) -> Result<Stage> {
        let (seed, seed_stage) = self.seed()?;
        let find = |stages: Vec<Stage>| stages.into_iter().find(|s| s.name == name);
        let found = match name.split_once('/').map_or(name, |(kind, _)| kind) {
            "data" => find(self.data_stages()?),
            "seed" => seed_stage,
            "experts" => find(self.expert_stages(&seed)?),
            "merges" => find(self.merge_stages(&seed)?),
            "finetune" => match self.recipe.merges.iter().find(|m| m.method.is_moe() && format!("finetune/{}", m.name) == name) {
                Some(m) => Some(self.finetune_stage(m)?),
                None => None,
            },
            "dense" => self.dense_stage(&seed)?,
            "dense-data" => self.dense_data_stage(&seed)?,
            "diagnosis" => find(self.diagnosis_stages(&seed)),
            "forest" => find(self.forest_stages()),
            "grow" => {
                let stages: Vec<Stage> = self.grow_stages()?.into_iter().flat_map(|(added, trained)| std::iter::once(added).chain(trained)).collect();
                if name.ends_with("/trained") && !stages.iter().any(|s| s.name == name) {
                    anyhow::bail!("stage {} must run before {name}", name.replace("/trained", "/added"));
                }
                find(stages)
            }
            "eval" => find(self.entries(&seed).into_iter().map(|(_, s)| s).collect()),
            _ => None,
        };
        found.with_context(|| format!("the recipe has no stage `{name}`"))
    }
}

