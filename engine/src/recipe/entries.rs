//! The models a recipe's report compares (`Entry`: a label, what kind of model it is, the
//! stages behind it) and the evaluation stage of each.

use std::path::{Path, PathBuf};

use super::config::{MergeMethod, SeedModel};
use super::plan::{Plan, slug, strings};
use super::stage::{Stage, model_file};

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

/// A model the report compares.
#[derive(Debug, Clone)]
pub struct Entry {
    pub label: String,
    pub kind: EntryKind,
    /// Stages whose training it includes (for tokens and FLOPs).
    pub lineage: Vec<String>,
    /// MoE models and ensembles: the name of each expert (routing plots).
    pub experts: Vec<String>,
}

impl Entry {
    pub(super) fn new(label: impl Into<String>, kind: EntryKind, lineage: Vec<String>) -> Self {
        Self { label: label.into(), kind, lineage, experts: vec![] }
    }

    pub(super) fn with_experts(self, experts: Vec<String>) -> Self {
        Self { experts, ..self }
    }
}

impl Plan<'_> {
    /// Every model the report compares, with how it is evaluated.
    pub fn entries(&self, seed: &Path) -> Vec<(Entry, Stage)> {
        let r = self.recipe;
        let seed_stage = matches!(r.seed_model, SeedModel::Train { .. }).then(|| "seed".to_string());
        let experts: Vec<String> = r.experts.iter().map(|e| format!("experts/{}", e.name)).collect();
        let with_seed = |mut v: Vec<String>| {
            v.splice(0..0, seed_stage.clone());
            v
        };
        let mut list: Vec<(Entry, PathBuf)> = vec![(Entry::new("seed", EntryKind::Seed, with_seed(vec![])), seed.to_path_buf())];
        for e in &experts {
            let label = e.trim_start_matches("experts/").to_string();
            list.push((Entry::new(format!("expert {label}"), EntryKind::Expert, with_seed(vec![e.clone()])), self.dir(e)));
        }
        let mut ensembles = Vec::new();
        for m in &r.merges {
            let merged = self.dir(&format!("merges/{}", m.name));
            match m.method {
                MergeMethod::Btx | MergeMethod::Bam { .. } | MergeMethod::Upcycle { .. } => {
                    let trained = if m.method.mixes_experts() { with_seed(experts.clone()) } else { with_seed(vec![]) };
                    let names = self.expert_names(m);
                    list.push((Entry::new(format!("{} (before finetune)", m.name), EntryKind::Merge, trained.clone()).with_experts(names.clone()), merged));
                    let mut ft = trained;
                    ft.push(format!("finetune/{}", m.name));
                    list.push((Entry::new(m.name.clone(), EntryKind::Final, ft).with_experts(names), self.dir(&format!("finetune/{}", m.name))));
                }
                MergeMethod::Average => list.push((Entry::new(m.name.clone(), EntryKind::Final, with_seed(experts.clone())), merged)),
                MergeMethod::Ensemble { top_k } => {
                    ensembles.push((m.name.clone(), top_k, experts.clone()));
                    if let Some((label, members)) = self.grown_ensemble(&m.name, &experts) {
                        ensembles.push((label, top_k, members));
                    }
                }
            }
        }
        list.extend(self.grown_entries(&with_seed(experts.clone())));
        if r.dense_baseline {
            list.push((Entry::new("dense", EntryKind::Final, with_seed(vec!["dense".into()])), self.dir("dense")));
        }
        if r.data_matched_baseline {
            list.push((Entry::new("dense (data-matched)", EntryKind::Final, with_seed(vec!["dense-data".into()])), self.dir("dense-data")));
        }
        for (name, _) in if r.diagnose_merge { self.btx_members(seed) } else { vec![] } {
            let label = format!("{name} in averaged shared weights");
            list.push((Entry::new(label, EntryKind::Diagnosis, with_seed(experts.clone())), self.dir(&format!("diagnosis/{name}"))));
        }
        let data = self.eval_data_path();
        let e = &r.eval;
        let mut out: Vec<(Entry, Stage)> = list
            .into_iter()
            .map(|(entry, ckpt)| {
                let dir = self.dir(&format!("eval/{}", slug(&entry.label)));
                let mut args = strings(&[
                    "eval", "--checkpoint", &ckpt.display().to_string(), "--config", &data.display().to_string(),
                    "--batches", &e.batches.to_string(),
                    "--arithmetic", &e.arithmetic_problems.to_string(), "--json", &dir.join("eval.json").display().to_string(),
                ]);
                args.extend(self.device.to_args());
                let inputs = [model_file(&ckpt), data.clone()].into_iter().chain(self.data_inputs()).collect();
                let stage = Stage { name: format!("eval/{}", slug(&entry.label)), dir, args, config: None, inputs };
                (entry, stage)
            })
            .collect();
        for (name, top_k, members) in ensembles {
            let dir = self.dir(&format!("eval/{}", slug(&name)));
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
            inputs.push(data.clone());
            inputs.extend(self.data_inputs());
            let names = members.iter().map(|x| x.trim_start_matches("experts/").to_string()).collect();
            let entry = Entry::new(name.clone(), EntryKind::Final, with_seed(members.clone())).with_experts(names);
            out.push((entry, Stage { name: format!("eval/{}", slug(&name)), dir, args, config: None, inputs }));
        }
        out
    }
}
