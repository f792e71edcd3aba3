//! A recipe's checks: every field a parser cannot check, each error naming the file and
//! the field (`experts[1].then[0].steps`, `merges[0].method`, ...), before anything runs.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::config::{MergeMethod, Recipe, SeedModel};
use crate::train::OptimizerSettings;

impl Recipe {
    /// Errors unless every `Prepared` domain was made with the recipe's tokenizer (whose
    /// vocabulary must fit the model's), and its inputs did not change since.
    pub fn check_prepared_domains(&self, origin: &str) -> Result<()> {
        use crate::data::prepared::{PreparedMeta, TokenizerFingerprint};
        let prepared: Vec<(&str, PathBuf)> = self
            .domains
            .iter()
            .filter_map(|d| match &d.source {
                crate::data::Source::Prepared(dir) => Some((d.name.as_str(), crate::config::resolve(dir))),
                _ => None,
            })
            .collect();
        if prepared.is_empty() {
            return Ok(());
        }
        let path = crate::config::resolve(&self.tokenizer);
        let fingerprint = TokenizerFingerprint::of(&crate::data::tokenizer::load_tokenizer(&path)?, &path)?;
        if fingerprint.vocab_size > self.model.vocab_size {
            bail!("{origin}: field `model.vocab_size` ({}) is smaller than the vocabulary of tokenizer {} ({} tokens)", self.model.vocab_size, path.display(), fingerprint.vocab_size);
        }
        for (name, dir) in prepared {
            let meta = PreparedMeta::read(&dir).with_context(|| format!("{origin}: domain `{name}`"))?;
            meta.check(&dir, &fingerprint, true).with_context(|| format!("{origin}: domain `{name}`"))?;
        }
        Ok(())
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        self.model.validate(origin)?;
        let lora_fields = self.experts.iter().chain(&self.later_experts).map(|e| (format!("experts `{}`", e.name), &e.lora));
        for (what, lora) in [("expert_lora".to_string(), &self.expert_lora), ("finetune".to_string(), &self.finetune.lora)].into_iter().chain(lora_fields) {
            if let Some(lora) = lora {
                lora.validate(&format!("{origin}: {what}"))?;
            }
        }
        if self.model.moe.is_some() {
            bail!("{origin}: field `model`: the seed and experts are dense; put MoE options in `moe`");
        }
        let known = |name: &str| self.domains.iter().any(|d| d.name == name);
        let check_mixture = |field: &str, mixture: &[(String, f64)]| -> Result<()> {
            if mixture.is_empty() {
                bail!("{origin}: field `{field}` is empty; name at least one domain");
            }
            for (name, w) in mixture {
                if !known(name) {
                    let names: Vec<&str> = self.domains.iter().map(|d| d.name.as_str()).collect();
                    bail!("{origin}: field `{field}` names domain `{name}`, which `domains` does not define (it has {names:?})");
                }
                if !(*w >= 0.0 && w.is_finite()) {
                    bail!("{origin}: field `{field}`: weight of `{name}` must be >= 0, found {w}");
                }
            }
            if mixture.iter().all(|(_, w)| *w == 0.0) {
                bail!("{origin}: field `{field}`: every weight is 0");
            }
            Ok(())
        };
        if let SeedModel::Train { steps, mixture } = &self.seed_model {
            check_mixture("seed_model.mixture", mixture)?;
            if *steps == 0 {
                bail!("{origin}: field `seed_model.steps` must be at least 1");
            }
        }
        if self.experts.is_empty() {
            bail!("{origin}: field `experts` is empty; a recipe needs at least one expert");
        }
        self.validate_experts(origin, &check_mixture)?;
        self.validate_variants(origin)?;
        self.validate_merges(origin)?;
        self.spike_guard.validate(origin)?;
        self.optimizer.validate(origin, "optimizer")?;
        self.check_optimizer(origin, "baseline_optimizer", &self.baseline_optimizer, false)?;
        if self.finetune.lr.is_some() && self.finetune.optimizer.lr.is_some() {
            bail!("{origin}: fields `finetune.lr` and `finetune.optimizer.lr` both set the finetune's learning rate; keep one");
        }
        self.check_optimizer(origin, "finetune.optimizer", &self.finetune.optimizer(), true)?;
        if let Some(mixture) = &self.finetune.mixture {
            check_mixture("finetune.mixture", mixture)?;
        }
        if let Some(g) = &self.generalist {
            check_mixture("generalist.data", &g.data)?;
            self.check_optimizer(origin, "generalist.optimizer", &g.optimizer, false)?;
            if g.steps == 0 || !self.keep_seed {
                bail!("{origin}: field `generalist`: needs `steps` of at least 1 and `keep_seed: true` (it is the seed's place in the MoE)");
            }
        }
        if self.seq_len > self.model.max_seq_len || self.seq_len < 2 {
            bail!("{origin}: field `seq_len` ({}) must be between 2 and `model.max_seq_len` ({})", self.seq_len, self.model.max_seq_len);
        }
        // Each domain is prepared into RUN/data/NAME.
        let mut domain_names = std::collections::HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            if !domain_names.insert(&d.name) || d.name.is_empty() || d.name.contains(['/', '\\']) || d.name.starts_with('.') {
                bail!("{origin}: field `domains[{i}].name`: `{}` must be unique and a valid folder name", d.name);
            }
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            bail!("{origin}: field `val_fraction` must be between 0 and 1, found {}", self.val_fraction);
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.seeds.iter().find(|s| !seen.insert(**s)) {
            bail!("{origin}: field `seeds` lists {dup} twice");
        }
        if self.batch_size == 0 {
            bail!("{origin}: field `batch_size` must be at least 1");
        }
        if let Some(limit) = self.eval.task_limit
            && !(limit > 0.0 && limit.is_finite())
        {
            bail!("{origin}: field `eval.task_limit` must be a positive number of documents (or a share below 1), found {limit}");
        }
        Ok(())
    }

    /// Each expert's and later expert's name, data, optimizer, steps and phases.
    fn validate_experts(&self, origin: &str, check_mixture: &dyn Fn(&str, &[(String, f64)]) -> Result<()>) -> Result<()> {
        self.check_optimizer(origin, "expert_optimizer", &self.expert_optimizer, false)?;
        let mut names = std::collections::HashSet::new();
        let all_experts = self.experts.iter().map(|e| ("experts", e)).chain(self.later_experts.iter().map(|e| ("later_experts", e)));
        for (i, (field, e)) in all_experts.enumerate() {
            let i = if field == "experts" { i } else { i - self.experts.len() };
            if !names.insert(&e.name) || e.name.is_empty() || e.name.contains('/') || e.name == crate::merge::GENERALIST {
                bail!("{origin}: field `{field}[{i}].name`: `{}` must be unique among all experts, not `generalist`, and a valid folder name", e.name);
            }
            check_mixture(&format!("{field}[{i}].data"), &e.data)?;
            self.check_optimizer(origin, &format!("{field}[{i}].optimizer"), &self.expert_optimizer_of(e), false)?;
            if e.steps == 0 {
                bail!("{origin}: field `{field}[{i}].steps` must be at least 1");
            }
            for (p, phase) in e.then.iter().enumerate() {
                check_mixture(&format!("{field}[{i}].then[{p}].data"), &phase.data)?;
                self.check_optimizer(origin, &format!("{field}[{i}].then[{p}].optimizer"), &phase.optimizer.over(&self.expert_optimizer_of(e)), false)?;
                if phase.steps == 0 {
                    bail!("{origin}: field `{field}[{i}].then[{p}].steps` must be at least 1");
                }
            }
            if field == "later_experts" && !e.then.is_empty() {
                bail!("{origin}: field `later_experts[{i}].then`: a later expert trains in one phase");
            }
        }
        Ok(())
    }

    /// Each expert variant's name and changes, and the names of the experts it makes (unique
    /// among every expert and the generalist's diagnosis names).
    fn validate_variants(&self, origin: &str) -> Result<()> {
        let mut taken: std::collections::HashSet<String> = self.experts.iter().chain(&self.later_experts).map(|e| e.name.clone()).collect();
        for (i, v) in self.expert_variants.iter().enumerate() {
            let field = format!("expert_variants[{i}]");
            if v.name.is_empty() || v.name.contains(['/', '\\']) || self.expert_variants[..i].iter().any(|w| w.name == v.name) {
                bail!("{origin}: field `{field}.name`: `{}` must be unique among the variants and a valid folder name", v.name);
            }
            if let Some(lora) = &v.lora {
                lora.validate(&format!("{origin}: {field}.lora"))?;
            }
            taken.insert(Recipe::generalist_member(Some(&v.name)));
            for e in &self.experts {
                let expert = v.apply(e);
                self.check_optimizer(origin, &format!("{field}.optimizer"), &self.expert_optimizer_of(&expert), false)?;
                if !taken.insert(expert.name.clone()) {
                    bail!("{origin}: field `{field}.name`: expert `{}` of this variant is named `{}`, which another expert (or variant) already is", e.name, expert.name);
                }
            }
        }
        for (i, m) in self.merges.iter().enumerate() {
            let Some(variant) = &m.experts else { continue };
            if !self.expert_variants.iter().any(|v| &v.name == variant) {
                let names: Vec<&str> = self.expert_variants.iter().map(|v| v.name.as_str()).collect();
                bail!("{origin}: field `merges[{i}].experts` names variant `{variant}`, which `expert_variants` does not define (it has {names:?})");
            }
            if matches!(m.method, MergeMethod::Upcycle { .. }) {
                bail!("{origin}: field `merges[{i}].experts`: sparse upcycling copies the seed and mixes no experts");
            }
        }
        Ok(())
    }

    /// A stage's optimizer changes, checked as the optimizer they make; only MoE finetunes
    /// have routers to give a learning-rate multiplier.
    fn check_optimizer(&self, origin: &str, field: &str, settings: &OptimizerSettings, routers: bool) -> Result<()> {
        if !routers && settings.router_lr_multiplier.is_some() {
            bail!("{origin}: field `{field}.router_lr_multiplier`: this stage trains a dense model, which has no router (set it in `finetune.optimizer`)");
        }
        settings.apply(&self.optimizer).validate(origin, field)
    }

    /// Each merge's name, and its request checked by the rules of `btx merge` (one rule set).
    fn validate_merges(&self, origin: &str) -> Result<()> {
        let plan = super::plan::Plan { recipe: self, out: PathBuf::from("RUN"), device: crate::device::DeviceArgs::new(crate::device::DeviceChoice::Auto) };
        let (seed, _) = plan.seed()?;
        let mut merge_names = std::collections::HashSet::new();
        for (i, m) in self.merges.iter().enumerate() {
            if !merge_names.insert(&m.name) || m.name.is_empty() || m.name.contains('/') {
                bail!("{origin}: field `merges[{i}].name`: `{}` must be unique and a valid folder name", m.name);
            }
            if let MergeMethod::Transplant { .. } = m.method {
                bail!("{origin}: field `merges[{i}].method`: a transplant diagnoses the BTX merge; set `diagnose_merge: true` instead");
            }
            plan.merge_request(m, &seed).check().map_err(|e| anyhow::anyhow!("{origin}: field `merges[{i}].{}`: {e}", e.field))?;
        }
        Ok(())
    }
}
