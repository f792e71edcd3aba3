//! A recipe's merges as stages: each merge's `MergeRequest` (written into its `stage.ron`
//! and run by `btx merge --config`), the measurements merges read from their members
//! (`btx measure`, on the run's device), and the transplants that diagnose the BTX merge.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::config::{Merge, MergeMethod, Recipe};
use super::plan::{Plan, strings};
use super::stage::{Stage, model_file};
use super::stage_id::StageId;
use crate::config::to_ron;
use crate::merge::MergeRequest;
use crate::merge::router_data::{MEASURED_FILE, Measurement};

impl Plan<'_> {
    /// The merge a recipe's merge asks for (for an ensemble: the request its experts would
    /// make, which only the recipe's checks read).
    pub fn merge_request(&self, m: &Merge, seed: &Path) -> MergeRequest {
        let experts = self.expert_dirs(&self.recipe.experts_of(m));
        let mut request = MergeRequest::new(m.method.clone(), experts);
        request.options = self.recipe.moe_of(m).clone();
        match m.method {
            MergeMethod::Upcycle { .. } => request.experts = vec![seed.to_path_buf()],
            MergeMethod::Btx | MergeMethod::Bam { .. } if self.recipe.keep_seed => request.seed = Some(self.generalist_dir(seed)),
            _ => {}
        }
        // Data-initialised routers come measured by the merge's router-data stage.
        if request.routes_from_data() {
            request.measured = Some(self.dir(&StageId::RouterData(m.name.clone())).join(MEASURED_FILE));
        }
        request
    }

    /// The router-data stages (`btx measure` on the run's device) of the merges whose routers
    /// start from data: each member's mean router input on its own training data (the
    /// experts' own configs, and every domain for the seed).
    pub fn router_data_stages(&self, seed: &Path) -> Result<Vec<Stage>> {
        let mut stages = Vec::new();
        for m in &self.recipe.merges {
            let request = self.merge_request(m, seed);
            if !request.routes_from_data() {
                continue;
            }
            let mut data: Vec<PathBuf> = self.recipe.experts_of(m).iter().map(|e| self.config_path(&StageId::Expert(e.name.clone()))).collect();
            data.extend(request.seed.as_ref().map(|_| self.eval_data_path()));
            let measurement = Measurement::RouterDirections { members: request.members(), data, mode: request.options.router_init };
            stages.push(self.measure_stage(StageId::RouterData(m.name.clone()), &measurement)?);
        }
        Ok(stages)
    }

    /// A stage that measures what a merge reads from its members' outputs (`btx measure`).
    pub(super) fn measure_stage(&self, id: StageId, measurement: &Measurement) -> Result<Stage> {
        let dir = self.dir(&id);
        let mut args = strings(&["measure", "--config", &self.config_path(&id).display().to_string(), "--out", &dir.display().to_string()]);
        args.extend(self.device.to_args());
        let (members, data) = match measurement {
            Measurement::RouterDirections { members, data, .. } => (members.clone(), data.clone()),
            Measurement::Posterior { members, data } => (members.clone(), vec![data.clone()]),
        };
        let mut inputs: Vec<PathBuf> = members.iter().map(|p| model_file(p)).collect();
        inputs.extend(data);
        inputs.extend(self.data_inputs());
        Ok(Stage { id, dir, args, config: Some(to_ron(measurement)?), inputs })
    }

    /// `btx merge --config stage.ron` of each merge that writes a checkpoint.
    pub fn merge_stages(&self, seed: &Path) -> Result<Vec<Stage>> {
        let merges = self.recipe.merges.iter().filter(|m| m.method.writes_checkpoint());
        merges.map(|m| self.merge_stage(StageId::Merge(m.name.clone()), &self.merge_request(m, seed))).collect()
    }

    /// A stage that runs `request` into its folder.
    pub(super) fn merge_stage(&self, id: StageId, request: &MergeRequest) -> Result<Stage> {
        let dir = self.dir(&id);
        let args = strings(&["merge", "--config", &self.config_path(&id).display().to_string(), "--out", &dir.display().to_string()]);
        let mut inputs: Vec<PathBuf> = request.members().iter().map(|p| model_file(p)).collect();
        inputs.extend(request.posterior_data.iter().chain(&request.measured).cloned());
        inputs.extend(request.drift_from.iter().map(|p| model_file(p)));
        Ok(Stage { id, dir, args, config: Some(to_ron(request)?), inputs })
    }

    /// The members of a BTX merge's MiX, in merge order; the kept seed last, as the
    /// generalist (`Recipe::generalist_member`: its name in the merge's variant).
    pub fn btx_members(&self, merge: &Merge, seed: &Path) -> Vec<BtxMember> {
        let r = self.recipe;
        let experts = r.experts_of(merge).into_iter().map(|e| BtxMember { key: e.name.clone(), expert: Some(e.name.clone()), dir: self.dir(&StageId::Expert(e.name)) });
        let generalist = BtxMember { key: Recipe::generalist_member(merge.experts.as_deref()), expert: None, dir: self.generalist_dir(seed) };
        experts.chain(r.keep_seed.then_some(generalist)).collect()
    }

    /// The BTX merges the diagnosis measures: the first of each expert variant (merges of the
    /// same experts share their transplants).
    pub fn diagnosed_merges(&self) -> Vec<&Merge> {
        let mut merges: Vec<&Merge> = Vec::new();
        if self.recipe.diagnose_merge {
            for m in self.recipe.merges.iter().filter(|m| m.method == MergeMethod::Btx) {
                if !merges.iter().any(|d| d.experts == m.experts) {
                    merges.push(m);
                }
            }
        }
        merges
    }

    /// The merge diagnosis stages: for each member of each diagnosed BTX merge, its FFN
    /// inside the averaged shared weights (a `Transplant` merge).
    pub fn diagnosis_stages(&self, seed: &Path) -> Result<Vec<Stage>> {
        let mut stages = Vec::new();
        for merge in self.diagnosed_merges() {
            let experts = self.expert_dirs(&self.recipe.experts_of(merge));
            for (member, m) in self.btx_members(merge, seed).into_iter().enumerate() {
                let mut request = MergeRequest::new(MergeMethod::Transplant { member }, experts.clone());
                request.seed = self.recipe.keep_seed.then(|| self.generalist_dir(seed));
                request.drift_from = Some(seed.to_path_buf());
                stages.push(self.merge_stage(StageId::Diagnosis(m.key), &request)?);
            }
        }
        Ok(stages)
    }

    /// The names of a merge's routed experts, as `btx merge` records them: the recipe's
    /// expert names and "generalist" for the kept seed (BTX, BAM; not when the seed is the
    /// shared expert), "copy N" (upcycling); ".0", ".1"... when split.
    pub fn expert_names(&self, merge: &Merge) -> Vec<String> {
        let r = self.recipe;
        let moe = r.moe_of(merge);
        let routed_seed = r.keep_seed && moe.shared_expert != crate::merge::mix::SharedExpert::Seed;
        crate::merge::routed_expert_names(&merge.method, r.experts_of(merge).into_iter().map(|e| e.name).collect(), routed_seed, moe.split)
    }
}

/// A member of a BTX merge.
pub struct BtxMember {
    /// Its name in the diagnosis (stage `diagnosis/KEY`, the report's transplant row).
    pub key: String,
    /// The expert it is; None for the kept seed.
    pub expert: Option<String>,
    pub dir: PathBuf,
}
