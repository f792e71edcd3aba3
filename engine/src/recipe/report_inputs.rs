//! Every record the report reads, read in one place: each compared model's evaluation (its
//! eval.json and tasks.json) with the tokens and FLOPs of its lineage, every stage's manifest,
//! each training stage's logged steps, each diagnosis stage's measured drift and each merge's
//! model config. The report's sections lay these out; none of them opens a file or asks the
//! plan where a stage lives.

use std::collections::HashMap;

use anyhow::Result;

use super::entries::Entry;
use super::plan::Plan;
use super::report::Row;
use super::stage::{MANIFEST_FILE, Manifest, Stage, TASKS_JSON};
use super::stage_id::StageId;
use crate::config::ModelConfig;
use crate::eval::EvalReport;
use crate::merge::diagnosis::Drift;
use crate::train::metrics::StepRecord;

pub(super) struct ReportInputs {
    /// Each compared model, in the plan's order.
    pub rows: Vec<Row>,
    /// The manifests of the stages behind the models (a seed from another run included).
    manifests: HashMap<StageId, Manifest>,
    /// Every stage manifest under the run folder, by stage name.
    pub stages: Vec<Manifest>,
    /// Each training stage's logged steps.
    steps: HashMap<StageId, Vec<StepRecord>>,
    /// Each diagnosis stage's measured drift (or why there is none), by member key.
    drifts: HashMap<String, std::result::Result<Drift, String>>,
    /// Each merge's model config, by merge name.
    merge_configs: HashMap<String, ModelConfig>,
}

impl ReportInputs {
    pub(super) fn load(plan: &Plan<'_>, entries: &[(Entry, Stage)]) -> Result<Self> {
        let r = plan.recipe;
        let mut stage_ids: Vec<StageId> = entries.iter().flat_map(|(e, _)| e.lineage.clone()).collect();
        stage_ids.push(StageId::Seed);
        stage_ids.extend(r.all_experts().into_iter().map(|e| StageId::Expert(e.name)));
        stage_ids.extend(r.merges.iter().map(|m| StageId::Finetune(m.name.clone())));
        stage_ids.extend([StageId::Dense, StageId::DenseData]);
        let (mut manifests, mut steps) = (HashMap::new(), HashMap::new());
        for s in stage_ids {
            if manifests.contains_key(&s) || steps.contains_key(&s) {
                continue;
            }
            if let Ok(logged) = crate::train::metrics::read_steps(&plan.dir(&s).join("metrics.jsonl")) {
                steps.insert(s.clone(), logged);
            }
            if let Some(m) = read_manifest(plan, &s) {
                manifests.insert(s, m);
            }
        }
        let mut rows = Vec::new();
        for (entry, stage) in entries {
            let eval = EvalReport::read(&stage.dir.join("eval.json"))?;
            let lineage: Vec<&Manifest> = entry.lineage.iter().filter_map(|s: &StageId| manifests.get(s)).collect();
            let tasks_file = stage.dir.join(TASKS_JSON);
            let tasks = if tasks_file.is_file() { super::report_tasks::read_task_scores(&tasks_file)? } else { Default::default() };
            rows.push(Row { entry: entry.clone(), eval, tasks, tokens: lineage.iter().map(|m| m.tokens).sum(), flops: lineage.iter().map(|m| m.train_flops).sum() });
        }
        let mut stages = Vec::new();
        for entry in std::fs::read_dir(&plan.out)?.flatten() {
            collect_manifests(&entry.path(), &mut stages);
        }
        stages.sort_by(|a, b| a.stage.cmp(&b.stage));
        let mut drifts = HashMap::new();
        if let (false, Ok((seed, _))) = (plan.diagnosed_merges().is_empty(), plan.seed()) {
            for merge in plan.diagnosed_merges() {
                for member in plan.btx_members(merge, &seed) {
                    let dir = plan.dir(&StageId::Diagnosis(member.key.clone()));
                    let drift = crate::merge::record::MergeRecord::read(&dir)
                        .map_err(|e| format!("{e:#}"))
                        .and_then(|record| record.and_then(|r| r.drift).ok_or_else(|| format!("{} records no drift (run its stage again)", dir.display())));
                    drifts.insert(member.key, drift);
                }
            }
        }
        let merge_configs = r
            .merges
            .iter()
            .filter_map(|m| Some((m.name.clone(), crate::checkpoint::read_model_config(&plan.dir(&StageId::Merge(m.name.clone()))).ok()?)))
            .collect();
        Ok(Self { rows, manifests, stages, steps, drifts, merge_configs })
    }

    pub(super) fn manifest(&self, stage: &StageId) -> Option<&Manifest> {
        self.manifests.get(stage)
    }

    pub(super) fn steps(&self, stage: &StageId) -> Option<&[StepRecord]> {
        self.steps.get(stage).map(Vec::as_slice)
    }

    /// The drift a diagnosis stage measured for member `key`.
    pub(super) fn drift(&self, key: &str) -> Result<&Drift> {
        match self.drifts.get(key) {
            Some(Ok(drift)) => Ok(drift),
            Some(Err(e)) => anyhow::bail!("{e}"),
            None => anyhow::bail!("no diagnosis of merge member {key}"),
        }
    }

    pub(super) fn merge_config(&self, merge: &str) -> Option<&ModelConfig> {
        self.merge_configs.get(merge)
    }
}

fn read_manifest(plan: &Plan<'_>, stage: &StageId) -> Option<Manifest> {
    let dir = match (stage, &plan.recipe.seed_model) {
        // A seed given as another run's seed stage (a sweep's shared seed) brings its
        // manifest, so the models built on it count its tokens and FLOPs.
        (StageId::Seed, super::config::SeedModel::Checkpoint(_)) => plan.seed().ok()?.0,
        _ => plan.dir(stage),
    };
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn collect_manifests(dir: &std::path::Path, out: &mut Vec<Manifest>) {
    if !dir.is_dir() {
        return;
    }
    if let Some(m) = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok().and_then(|t| serde_json::from_str(&t).ok()) {
        out.push(m);
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() && !e.file_name().to_string_lossy().starts_with("checkpoints") {
            collect_manifests(&e.path(), out);
        }
    }
}
