//! The stage graph of a recipe run: every stage with the stages it waits for (what the local
//! runner and Slurm both schedule from), and each stage built by name when its turn comes.

use anyhow::{Context, Result};

use super::config::{MergeMethod, SeedModel};
use super::plan::Plan;
use super::stage::Stage;
use super::stage_id::{GrowStep, StageId};

/// A stage of the run and the stages it waits for: what both schedulers run from.
#[derive(Debug, Clone, PartialEq)]
pub struct StageNode {
    pub id: StageId,
    pub after: Vec<StageId>,
}

impl Plan<'_> {
    /// Every stage of the run with its dependencies, each after the stages it waits for.
    /// Needs no stage to have run (the evaluations' dependencies are read from their inputs).
    pub fn graph(&self) -> Result<Vec<StageNode>> {
        let r = self.recipe;
        let node = |id: StageId, after: Vec<StageId>| StageNode { id, after };
        // Every domain is tokenized first; what trains waits for the seed, which waits for
        // the data (with a given seed checkpoint, the stages wait for the data directly).
        let data = self.data_stage_ids();
        let mut nodes: Vec<StageNode> = data.iter().map(|d| node(d.clone(), vec![])).collect();
        let seed: Vec<StageId> = match r.seed_model {
            SeedModel::Train { .. } => {
                nodes.push(node(StageId::Seed, data.clone()));
                vec![StageId::Seed]
            }
            SeedModel::Checkpoint(_) => data,
        };
        let expert_ids = |experts: Vec<super::config::Expert>| -> Vec<StageId> { experts.into_iter().map(|e| StageId::Expert(e.name)).collect() };
        // An expert trained in phases: each phase after the one before.
        for e in &r.all_experts() {
            let mut after = seed.clone();
            for index in 0..e.then.len() {
                let phase = StageId::Phase { expert: e.name.clone(), index };
                nodes.push(node(phase.clone(), after));
                after = vec![phase];
            }
            nodes.push(node(StageId::Expert(e.name.clone()), after));
        }
        // The generalist (the seed continued) takes the seed's place in the merges.
        let generalist: Vec<StageId> = match &r.generalist {
            Some(_) => {
                nodes.push(node(StageId::Generalist, seed.clone()));
                vec![StageId::Generalist]
            }
            None => seed.clone(),
        };
        // The first BTX merge sets the FLOPs budget of the compute-matched baselines.
        let budget: Vec<StageId> = r.merges.iter().find(|m| m.method == MergeMethod::Btx).map(|m| StageId::Merge(m.name.clone())).into_iter().collect();
        let (seed_dir, _) = self.seed()?;
        let measured: Vec<StageId> = self.router_data_stages(&seed_dir)?.into_iter().map(|s| s.id).collect();
        for m in &r.merges {
            let experts = expert_ids(r.experts_of(m));
            let mut after: Vec<StageId> = match m.method {
                MergeMethod::Btx | MergeMethod::Bam { .. } if r.keep_seed => experts.iter().chain(&generalist).cloned().collect(),
                MergeMethod::Btx | MergeMethod::Bam { .. } | MergeMethod::Average => experts.clone(),
                MergeMethod::Upcycle { .. } => seed.clone(),
                MergeMethod::Ensemble { .. } | MergeMethod::Transplant { .. } => continue,
            };
            // A merge whose routers start from data waits for their measurement, which
            // waits for what the merge would have.
            let router_data = StageId::RouterData(m.name.clone());
            if measured.contains(&router_data) {
                nodes.push(node(router_data.clone(), after));
                after = vec![router_data];
            }
            nodes.push(node(StageId::Merge(m.name.clone()), after));
        }
        for m in r.merges.iter().filter(|m| m.method.is_moe()) {
            let mut after = vec![StageId::Merge(m.name.clone())];
            if matches!(m.method, MergeMethod::Upcycle { .. }) && r.match_flops {
                after.extend(budget.iter().cloned());
            }
            nodes.push(node(StageId::Finetune(m.name.clone()), after));
        }
        nodes.extend(self.grow_nodes());
        if r.dense_baseline {
            nodes.push(node(StageId::Dense, generalist.iter().chain(&budget).cloned().collect()));
        }
        if r.data_matched_baseline {
            nodes.push(node(StageId::DenseData, seed.clone()));
        }
        // A diagnosis waits for its merge's members.
        for merge in self.diagnosed_merges() {
            let members: Vec<StageId> = expert_ids(r.experts_of(merge)).into_iter().chain(if r.keep_seed { generalist.clone() } else { vec![] }).collect();
            for member in self.btx_members(merge, &seed_dir) {
                nodes.push(node(StageId::Diagnosis(member.key), members.clone()));
            }
        }
        let producers: Vec<StageId> = nodes.iter().map(|n| n.id.clone()).collect();
        let mut evals = Vec::new();
        for (_, stage) in self.entries(&seed_dir) {
            // An evaluation waits for the stages whose outputs it reads.
            let mut after: Vec<StageId> = producers.iter().filter(|p| stage.inputs.iter().any(|i| i.starts_with(self.dir(p)))).cloned().collect();
            after.dedup();
            evals.push(stage.id.clone());
            nodes.push(node(stage.id, after));
        }
        nodes.push(node(StageId::Report, evals));
        Ok(nodes)
    }

    /// The stage `id`, built now: a finetune or the dense baseline reads the merged folders,
    /// so it can be built only once they exist. The report is no stage of its own (it is
    /// written by `runner::write_report`).
    pub fn stage(&self, id: &StageId) -> Result<Stage> {
        let (seed, seed_stage) = self.seed()?;
        let find = |stages: Vec<Stage>| stages.into_iter().find(|s| s.id == *id);
        let found = match id {
            StageId::Data(_) => find(self.data_stages()?),
            StageId::Seed => seed_stage,
            StageId::Expert(_) | StageId::Phase { .. } | StageId::Generalist => find(self.expert_stages(&seed)?),
            StageId::RouterData(_) => find(self.router_data_stages(&seed)?),
            StageId::Merge(_) => find(self.merge_stages(&seed)?),
            StageId::Posterior(_) => find(self.posterior_stages()?),
            StageId::Finetune(name) => match self.recipe.merges.iter().find(|m| m.method.is_moe() && m.name == *name) {
                Some(m) => Some(self.finetune_stage(m)?),
                None => None,
            },
            StageId::Dense => self.dense_stage(&seed)?,
            StageId::DenseData => self.dense_data_stage(&seed)?,
            StageId::Diagnosis(_) => find(self.diagnosis_stages(&seed)?),
            StageId::Forest(_) => find(self.forest_stages()?),
            StageId::Grow { merge, later, step } => {
                let stages: Vec<Stage> = self.grow_stages()?.into_iter().flat_map(|(added, trained)| std::iter::once(added).chain(trained)).collect();
                if *step == GrowStep::Trained && !stages.iter().any(|s| s.id == *id) {
                    let added = StageId::Grow { merge: merge.clone(), later: later.clone(), step: GrowStep::Added };
                    anyhow::bail!("stage {added} must run before {id}");
                }
                find(stages)
            }
            StageId::Eval(_) => find(self.entries(&seed).into_iter().map(|(_, s)| s).collect()),
            StageId::Report => None,
        };
        found.with_context(|| format!("the recipe has no stage `{id}`"))
    }
}
