//! The models a recipe's report compares (`Entry`: a label, what kind of model it is, the
//! stages behind it) and the evaluation stage of each.

use std::path::{Path, PathBuf};

use super::config::MergeMethod;
use super::plan::{Plan, slug, strings};
use super::stage::{Stage, TASKS_JSON, model_file};
use super::stage_id::StageId;

/// What a compared model is, for the report's tables and plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Seed,
    Expert,
    /// A merged MoE before its finetune.
    Merge,
    /// A model the comparison is about: a finetuned merge, an average, an ensemble, the
    /// dense baseline.
    Final,
    /// A diagnosis of the BTX merge: one member's FFN in the averaged shared weights.
    Diagnosis,
}

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Expert => "expert",
            Self::Merge => "merge",
            Self::Final => "final",
            Self::Diagnosis => "diagnosis",
        }
    }

    /// MoE merges and ensembles route; their routing is worth a plot.
    pub fn routes(self) -> bool {
        matches!(self, Self::Merge | Self::Final)
    }
}

/// Which model an entry is: the report's label is derived from it, and the report's
/// sections find their rows by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelId {
    Seed,
    Expert(String),
    /// A MoE merge before its finetune.
    Unfinetuned(String),
    /// What a merge of the recipe finally is: the finetuned MoE, the average, the ensemble.
    Merged(String),
    /// A merge joined by the later experts (BTM's grown forest; BTX and BAM models with
    /// `added_only` before the new experts' weights are trained).
    Grown { merge: String, later: Vec<String>, added_only: bool },
    Dense,
    DenseData,
    /// A BTX member's FFN in the averaged shared weights (a diagnosis).
    Transplant(String),
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Seed => f.write_str("seed"),
            Self::Expert(name) => write!(f, "expert {name}"),
            Self::Unfinetuned(merge) => write!(f, "{merge} (before finetune)"),
            Self::Merged(merge) => f.write_str(merge),
            Self::Grown { merge, later, added_only } => {
                write!(f, "{merge}")?;
                later.iter().try_for_each(|l| write!(f, " + {l}"))?;
                if *added_only { f.write_str(" (added)") } else { Ok(()) }
            }
            Self::Dense => f.write_str("dense"),
            Self::DenseData => f.write_str("dense (data-matched)"),
            Self::Transplant(member) => write!(f, "{member} in averaged shared weights"),
        }
    }
}

/// A model the report compares.
#[derive(Debug, Clone)]
pub struct Entry {
    pub model: ModelId,
    pub kind: EntryKind,
    /// Stages whose training it includes (for tokens and FLOPs).
    pub lineage: Vec<StageId>,
    /// MoE models and ensembles: the name of each expert (routing plots).
    pub experts: Vec<String>,
}

impl Entry {
    pub(super) fn new(model: ModelId, kind: EntryKind, lineage: Vec<StageId>) -> Self {
        Self { model, kind, lineage, experts: vec![] }
    }

    pub(super) fn with_experts(self, experts: Vec<String>) -> Self {
        Self { experts, ..self }
    }

    /// The model's label in the report's tables and figures.
    pub fn label(&self) -> String {
        self.model.to_string()
    }

    /// Its evaluation stage.
    pub fn eval_stage(&self) -> StageId {
        StageId::Eval(slug(&self.label()))
    }
}

impl Plan<'_> {
    /// Every model the report compares, with how it is evaluated.
    pub fn entries(&self, seed: &Path) -> Vec<(Entry, Stage)> {
        let r = self.recipe;
        // A given seed is in every lineage too: where it is another run's seed stage (a
        // sweep's shared seed), the report counts that stage's tokens and FLOPs.
        let experts: Vec<StageId> = r.experts.iter().map(|e| StageId::Expert(e.name.clone())).collect();
        let with_seed = |mut v: Vec<StageId>| {
            v.insert(0, StageId::Seed);
            v
        };
        // What the merges' training includes: every phase of every expert, and the generalist.
        let phases = |e: &super::config::Expert| -> Vec<StageId> {
            let earlier = (0..e.then.len()).map(|index| StageId::Phase { expert: e.name.clone(), index });
            earlier.chain([StageId::Expert(e.name.clone())]).collect()
        };
        let trained_experts = |experts: &[super::config::Expert]| -> Vec<StageId> {
            let mut stages: Vec<StageId> = experts.iter().flat_map(phases).collect();
            stages.extend(r.generalist.as_ref().map(|_| StageId::Generalist));
            stages
        };
        let mut list: Vec<(Entry, PathBuf)> = vec![(Entry::new(ModelId::Seed, EntryKind::Seed, with_seed(vec![])), seed.to_path_buf())];
        for e in &r.all_experts() {
            list.push((Entry::new(ModelId::Expert(e.name.clone()), EntryKind::Expert, with_seed(phases(e))), self.dir(&StageId::Expert(e.name.clone()))));
        }
        if r.generalist.is_some() {
            let generalist = ModelId::Expert(crate::merge::GENERALIST.to_string());
            list.push((Entry::new(generalist, EntryKind::Expert, with_seed(vec![StageId::Generalist])), self.dir(&StageId::Generalist)));
        }
        let mut ensembles = Vec::new();
        for m in &r.merges {
            let merged = self.dir(&StageId::Merge(m.name.clone()));
            let members = r.experts_of(m);
            match m.method {
                MergeMethod::Btx | MergeMethod::Bam { .. } | MergeMethod::Upcycle { .. } => {
                    let trained = if m.method.mixes_experts() { with_seed(trained_experts(&members)) } else { with_seed(vec![]) };
                    let names = self.expert_names(m);
                    let unfinetuned = ModelId::Unfinetuned(m.name.clone());
                    list.push((Entry::new(unfinetuned, EntryKind::Merge, trained.clone()).with_experts(names.clone()), merged));
                    let mut ft = trained;
                    let finetune = StageId::Finetune(m.name.clone());
                    ft.push(finetune.clone());
                    list.push((Entry::new(ModelId::Merged(m.name.clone()), EntryKind::Final, ft).with_experts(names), self.dir(&finetune)));
                }
                MergeMethod::Average => list.push((Entry::new(ModelId::Merged(m.name.clone()), EntryKind::Final, with_seed(trained_experts(&members))), merged)),
                MergeMethod::Ensemble { top_k } => {
                    let experts: Vec<StageId> = members.into_iter().map(|e| StageId::Expert(e.name)).collect();
                    ensembles.push((ModelId::Merged(m.name.clone()), top_k, experts.clone()));
                    if let Some((model, members)) = self.grown_ensemble(&m.name, &experts) {
                        ensembles.push((model, top_k, members));
                    }
                }
                // Refused by the recipe's checks (`diagnose_merge` makes the transplants).
                MergeMethod::Transplant { .. } => {}
            }
        }
        list.extend(self.grown_entries(&with_seed(experts.clone())));
        if r.dense_baseline {
            let mut lineage: Vec<StageId> = r.generalist.as_ref().map(|_| StageId::Generalist).into_iter().collect();
            lineage.push(StageId::Dense);
            list.push((Entry::new(ModelId::Dense, EntryKind::Final, with_seed(lineage)), self.dir(&StageId::Dense)));
        }
        if r.data_matched_baseline {
            list.push((Entry::new(ModelId::DenseData, EntryKind::Final, with_seed(vec![StageId::DenseData])), self.dir(&StageId::DenseData)));
        }
        for merge in self.diagnosed_merges() {
            let experts: Vec<StageId> = r.experts_of(merge).into_iter().map(|e| StageId::Expert(e.name)).collect();
            for member in self.btx_members(merge, seed) {
                let dir = self.dir(&StageId::Diagnosis(member.key.clone()));
                list.push((Entry::new(ModelId::Transplant(member.key), EntryKind::Diagnosis, with_seed(experts.clone())), dir));
            }
        }
        let mut out: Vec<(Entry, Stage)> = list.into_iter().map(|(entry, checkpoint)| self.eval_stage(entry, &checkpoint)).collect();
        out.extend(ensembles.into_iter().map(|(model, top_k, members)| self.ensemble_stage(model, top_k, members, &with_seed)));
        out
    }

    /// `btx eval` of one checkpoint on every domain.
    fn eval_stage(&self, entry: Entry, checkpoint: &Path) -> (Entry, Stage) {
        let (data, e) = (self.eval_data_path(), &self.recipe.eval);
        let id = entry.eval_stage();
        let dir = self.dir(&id);
        let mut args = strings(&[
            "eval", "--checkpoint", &checkpoint.display().to_string(), "--config", &data.display().to_string(),
            "--batches", &e.batches.to_string(),
            "--arithmetic", &e.arithmetic_problems.to_string(), "--json", &dir.join("eval.json").display().to_string(),
        ]);
        args.extend(self.device.to_args());
        let mut inputs: Vec<PathBuf> = [model_file(checkpoint), data.clone()].into_iter().chain(self.data_inputs()).collect();
        self.add_tasks(&dir, &mut args, &mut inputs);
        (entry, Stage { id, dir, args, config: None, inputs })
    }

    /// The recipe's `eval.tasks` on an evaluation stage: its arguments, and the task files and
    /// their data as the stage's inputs.
    fn add_tasks(&self, dir: &Path, args: &mut Vec<String>, inputs: &mut Vec<PathBuf>) {
        let e = &self.recipe.eval;
        if e.tasks.is_empty() {
            return;
        }
        args.push("--tasks".into());
        args.extend(self.recipe.task_files().unwrap_or_default().iter().map(|f| f.display().to_string()));
        args.extend(strings(&["--tasks-json", &dir.join(TASKS_JSON).display().to_string()]));
        if let Some(limit) = e.task_limit {
            args.extend(strings(&["--limit", &limit.to_string()]));
        }
        if e.apply_chat_template {
            args.push("--apply-chat-template".into());
        }
        inputs.extend(self.recipe.task_inputs().unwrap_or_default());
    }

    /// `btx ensemble` of the member stages' checkpoints (BTM's ensemble, Li et al. 2022, §3).
    fn ensemble_stage(&self, model: ModelId, top_k: Option<usize>, members: Vec<StageId>, with_seed: &dyn Fn(Vec<StageId>) -> Vec<StageId>) -> (Entry, Stage) {
        let (data, e) = (self.eval_data_path(), &self.recipe.eval);
        let names = members
            .iter()
            .map(|m| match m {
                StageId::Expert(name) => name.clone(),
                other => other.to_string(),
            })
            .collect();
        let entry = Entry::new(model, EntryKind::Final, with_seed(members.clone())).with_experts(names);
        let id = entry.eval_stage();
        let dir = self.dir(&id);
        let mut args = strings(&["ensemble", "--config", &data.display().to_string(),
            "--prior-sequences", &e.ensemble_prior_sequences.to_string(), "--eval-sequences", &e.ensemble_sequences.to_string(),
            "--json", &dir.join("eval.json").display().to_string()]);
        args.extend(self.device.to_args());
        if let Some(k) = top_k {
            args.extend(strings(&["--top-k", &k.to_string()]));
        }
        args.push("--experts".into());
        args.extend(members.iter().map(|x| self.dir(x).display().to_string()));
        let mut inputs: Vec<PathBuf> = members.iter().map(|x| model_file(&self.dir(x))).collect();
        inputs.push(data);
        inputs.extend(self.data_inputs());
        self.add_tasks(&dir, &mut args, &mut inputs);
        (entry, Stage { id, dir, args, config: None, inputs })
    }
}
