//! A recipe's merges as stages: each merge's `MergeRequest` (written into its `stage.ron`
//! and run by `btx merge --config`), the measurements merges read from their members
//! (`btx measure`, on the run's device), and the transplants that diagnose the BTX merge.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::config::{Merge, MergeMethod};
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
        let experts = self.expert_dirs();
        let mut request = MergeRequest::new(m.method.clone(), experts.clone());
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
            let mut data: Vec<PathBuf> = self.recipe.experts.iter().map(|e| self.config_path(&StageId::Expert(e.name.clone()))).collect();
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

    /// The members of BTX's MiX, in merge order: (name, checkpoint folder); the seed last when
    /// it is kept as the generalist.
    pub fn btx_members(&self, seed: &Path) -> Vec<(String, PathBuf)> {
        let r = self.recipe;
        let experts = r.experts.iter().map(|e| (e.name.clone(), self.dir(&StageId::Expert(e.name.clone()))));
        experts.chain(r.keep_seed.then(|| (crate::merge::GENERALIST.to_string(), self.generalist_dir(seed)))).collect()
    }

    /// The merge diagnosis stages: for each BTX member, its FFN inside the averaged shared
    /// weights (a `Transplant` merge).
    pub fn diagnosis_stages(&self, seed: &Path) -> Result<Vec<Stage>> {
        if !self.recipe.diagnose_merge {
            return Ok(vec![]);
        }
        let members = self.btx_members(seed);
        (0..members.len())
            .map(|member| {
                let mut request = MergeRequest::new(MergeMethod::Transplant { member }, self.expert_dirs());
                request.seed = self.recipe.keep_seed.then(|| self.generalist_dir(seed));
                request.drift_from = Some(seed.to_path_buf());
                self.merge_stage(StageId::Diagnosis(members[member].0.clone()), &request)
            })
            .collect()
    }

    /// The names of a merge's routed experts, as `btx merge` records them: the recipe's
    /// expert names and "generalist" for the kept seed (BTX, BAM; not when the seed is the
    /// shared expert), "copy N" (upcycling); ".0", ".1"... when split.
    pub fn expert_names(&self, merge: &Merge) -> Vec<String> {
        let r = self.recipe;
        let moe = r.moe_of(merge);
        let routed_seed = r.keep_seed && moe.shared_expert != crate::merge::mix::SharedExpert::Seed;
        crate::merge::routed_expert_names(&merge.method, r.experts.iter().map(|e| e.name.clone()).collect(), routed_seed, moe.split)
    }
}
