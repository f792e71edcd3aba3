//! Expert variants: the recipe's experts trained again from the same seed on the same data,
//! another way, so that merges of each set can be compared in one run. FlexOlmo (Shi et al.
//! 2025, §3) trains each expert's FFN against frozen shared weights so that the experts can be
//! combined without loss (`trainable: Some(Experts)`); the BTX paper's 7B experts move their
//! shared weights little relative to their norm, which a low learning rate for them imitates
//! (`optimizer: (shared_lr_multiplier: 0.1)`). Expert `NAME` of variant `V` is `NAME-V`; a
//! merge mixes a variant's experts when its `experts` names it.

use serde::{Deserialize, Serialize};

use super::config::{Expert, Merge, Recipe};
use crate::train::OptimizerSettings;
use crate::train::trainable::Trainable;

/// One other way to train every expert of the recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertVariant {
    /// Appended to each expert's name (`code` -> `code-NAME`).
    pub name: String,
    /// What every phase of each expert trains, in place of the expert's own choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<Trainable>,
    /// Changes over each expert's optimizer (e.g. `(shared_lr_multiplier: 0.1)`).
    #[serde(default, skip_serializing_if = "OptimizerSettings::is_default")]
    pub optimizer: OptimizerSettings,
    /// LoRA adapters in place of the expert's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::model::lora::LoraConfig>,
}

impl ExpertVariant {
    /// `expert` trained this way: renamed, its phases' trainable weights and optimizer changed.
    pub fn apply(&self, expert: &Expert) -> Expert {
        let mut e = expert.clone();
        e.name = format!("{}-{}", expert.name, self.name);
        e.optimizer = self.optimizer.over(&expert.optimizer);
        if self.trainable.is_some() {
            e.trainable = self.trainable.clone();
            e.then.iter_mut().for_each(|p| p.trainable = self.trainable.clone());
        }
        if self.lora.is_some() {
            e.lora = self.lora.clone();
        }
        e
    }
}

impl Recipe {
    /// The experts of `variant` (None: the recipe's experts as written).
    pub fn variant_experts(&self, variant: Option<&str>) -> Vec<Expert> {
        match variant.and_then(|name| self.expert_variants.iter().find(|v| v.name == name)) {
            Some(v) => self.experts.iter().map(|e| v.apply(e)).collect(),
            None => self.experts.clone(),
        }
    }

    /// The experts `merge` mixes, averages or ensembles.
    pub fn experts_of(&self, merge: &Merge) -> Vec<Expert> {
        self.variant_experts(merge.experts.as_deref())
    }

    /// Every expert the run trains: the recipe's, then each variant's.
    pub fn all_experts(&self) -> Vec<Expert> {
        let variants = self.expert_variants.iter().flat_map(|v| self.experts.iter().map(|e| v.apply(e)));
        self.experts.iter().cloned().chain(variants).collect()
    }

    /// The expert named `name` among every expert the run trains.
    pub fn find_expert(&self, name: &str) -> Option<Expert> {
        self.all_experts().into_iter().find(|e| e.name == name)
    }

    /// The name the kept seed has as a member of `variant`'s merges: the generalist's
    /// diagnosis differs with the experts it is averaged with.
    pub fn generalist_member(variant: Option<&str>) -> String {
        match variant {
            Some(v) => format!("{}-{v}", crate::merge::GENERALIST),
            None => crate::merge::GENERALIST.to_string(),
        }
    }
}
