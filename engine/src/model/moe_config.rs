//! Configuration of the Mixture-of-Experts layers: the routing variants of the BTX paper
//! (Sukhbaatar et al. 2024, "Branch-Train-MiX", §2), load balancing, z-loss, frozen experts;
//! and of BAM's attention experts (`AttentionExpertsConfig`). Here, not beside the layers,
//! so that `config::ModelConfig` names them without the layers naming it back.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::checkpoint::tensor_names::Projection;

/// How the router turns its logits into gates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Routing {
    /// g = softmax over the `top_k` largest router logits (Mixtral's and BTX's default).
    #[default]
    TopK,
    /// Switch Transformer: top-1 with capacity `capacity_factor * tokens / experts` per
    /// expert; tokens over capacity are dropped (the residual carries them on).
    Switch { capacity_factor: f64 },
    /// Every expert on every token, weighted by softmax over all router logits.
    Soft,
    /// One expert sampled by Gumbel-softmax in training (temperature
    /// tau = max(tau_min, exp(-tau_decay * step))), argmax at inference.
    SampleTop1 {
        #[serde(default = "default_tau_min")]
        tau_min: f64,
        #[serde(default = "default_tau_decay")]
        tau_decay: f64,
        /// Route the first MoE layer softly instead.
        #[serde(default)]
        first_layer_soft: bool,
    },
}

fn default_tau_min() -> f64 {
    0.5
}
fn default_tau_decay() -> f64 {
    1e-3
}

/// How the load-balancing weight `load_balance` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Balance {
    /// BTX's: alpha * E * sum_i u_i p_i in every MoE layer, with u_i the mean routed gate
    /// value, summed over layers.
    #[default]
    PerLayer,
    /// transformers' Mixtral (`load_balancing_loss_func`): one loss over every layer's
    /// tokens pooled, alpha * E * sum_i f_i P_i, with f_i the share of top-k assignments to
    /// expert i (hard counts) and P_i the mean router probability. What an imported Mixtral
    /// was trained with (`router_aux_loss_coef` = alpha).
    Mixtral,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts per token for `TopK` routing.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub routing: Routing,
    /// Which layers are MoE layers (default: all).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Hidden width of each expert (default: the model's `d_ff`; split experts are narrower).
    #[serde(default)]
    pub expert_d_ff: Option<usize>,
    /// Load-balancing weight alpha (0 turns it off).
    #[serde(default = "default_load_balance")]
    pub load_balance: f64,
    /// How alpha is applied: per layer (BTX) or pooled over layers (Mixtral).
    #[serde(default)]
    pub balance: Balance,
    /// Router z-loss weight (0 turns it off).
    #[serde(default)]
    pub router_z_loss: f64,
    /// Keep the experts' FFNs fixed; routers and all non-FFN weights still train.
    #[serde(default)]
    pub freeze_experts: bool,
    /// One more FFN (of the model's `d_ff`) that every token goes through beside the routed
    /// experts, ungated (DeepSeekMoE's shared expert, Dai et al. 2024, §3.2):
    /// y = FFN_shared(x) + sum_i g_i(x) FFN_i(x).
    #[serde(default)]
    pub shared_expert: bool,
    /// MixtureKit's BTX granularity: a router per listed FFN projection, each projection's
    /// experts mixed on its own input (`model::projection_moe`). Empty: one router per FFN
    /// (today's MoE layer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routed_projections: Vec<RoutedProjection>,
}

/// An FFN projection that MixtureKit's BTX may route (`MoeConfig::routed_projections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoutedProjection {
    GateProj,
    UpProj,
    DownProj,
}

impl RoutedProjection {
    pub const ALL: [RoutedProjection; 3] = [Self::GateProj, Self::UpProj, Self::DownProj];

    /// The projection it names (the checkpoint's `Projection`).
    pub fn projection(self) -> Projection {
        match self {
            Self::GateProj => Projection::Gate,
            Self::UpProj => Projection::Up,
            Self::DownProj => Projection::Down,
        }
    }

    /// transformers' name of the projection (`gate_proj`, ...).
    pub fn name(self) -> &'static str {
        self.projection().llama()
    }
}

/// BTX's defaults, shared with the merge options (`merge::mix::MoeOptions`).
pub(crate) fn default_top_k() -> usize {
    2
}
pub(crate) fn default_load_balance() -> f64 {
    0.01
}

impl MoeConfig {
    /// `num_experts` experts in every layer, of the model's FFN width, with BTX's load
    /// balancing (alpha 0.01) and nothing else: no z-loss, no frozen experts.
    pub fn new(num_experts: usize, top_k: usize, routing: Routing) -> Self {
        Self {
            num_experts,
            top_k,
            routing,
            layers: None,
            expert_d_ff: None,
            load_balance: default_load_balance(),
            balance: Balance::PerLayer,
            router_z_loss: 0.0,
            freeze_experts: false,
            shared_expert: false,
            routed_projections: Vec::new(),
        }
    }

    /// Experts each token uses (what counts as active parameters).
    pub fn active_experts(&self) -> usize {
        match self.routing {
            Routing::TopK => self.top_k,
            Routing::Switch { .. } | Routing::SampleTop1 { .. } => 1,
            Routing::Soft => self.num_experts,
        }
    }

    /// Whether projection `proj` has its own router (`routed_projections`).
    pub fn routes(&self, proj: Projection) -> bool {
        self.routed_projections.iter().any(|r| r.projection() == proj)
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer))
    }

    pub fn validate(&self, origin: &str, n_layers: usize) -> Result<()> {
        if self.num_experts == 0 {
            bail!("{origin}: field `model.moe.num_experts` must be at least 1, found 0");
        }
        if self.top_k == 0 || self.top_k > self.num_experts {
            bail!(
                "{origin}: field `model.moe.top_k` must be between 1 and num_experts ({}), found {}",
                self.num_experts,
                self.top_k
            );
        }
        if let Routing::Switch { capacity_factor } = self.routing
            && !(capacity_factor > 0.0 && capacity_factor.is_finite())
        {
            bail!("{origin}: field `model.moe.routing`: Switch capacity_factor must be positive, found {capacity_factor}");
        }
        if let Routing::SampleTop1 { tau_min, tau_decay, .. } = self.routing
            && !(tau_min > 0.0 && tau_decay >= 0.0)
        {
            bail!("{origin}: field `model.moe.routing`: SampleTop1 needs tau_min > 0 and tau_decay >= 0");
        }
        if let Some(layers) = &self.layers {
            if let Some(bad) = layers.iter().find(|&&l| l >= n_layers) {
                bail!("{origin}: field `model.moe.layers` names layer {bad}, but the model has {n_layers} layers (0..{})", n_layers - 1);
            }
        }
        if !self.routed_projections.is_empty() {
            let unsupported = match self.routing {
                Routing::TopK => None,
                ref other => Some(format!("{other:?} routing")),
            }
            .or_else(|| self.shared_expert.then(|| "a shared expert".to_string()))
            .or_else(|| self.expert_d_ff.is_some().then(|| "expert_d_ff".to_string()))
            .or_else(|| self.freeze_experts.then(|| "freeze_experts".to_string()));
            if let Some(what) = unsupported {
                bail!("{origin}: field `model.moe.routed_projections`: a router per projection (MixtureKit's BTX) routes top-k experts of the FFN's width; {what} is not supported with it");
            }
        }
        if self.expert_d_ff == Some(0) {
            bail!("{origin}: field `model.moe.expert_d_ff` must be at least 1");
        }
        for (field, v) in [("load_balance", self.load_balance), ("router_z_loss", self.router_z_loss)] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("{origin}: field `model.moe.{field}` must be a finite number >= 0, found {v}");
            }
        }
        Ok(())
    }
}

/// BAM's attention experts (Zhang et al. 2024): one attention per member in every layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionExpertsConfig {
    pub num_experts: usize,
    /// One key and value projection shared by every attention expert.
    #[serde(default)]
    pub shared_kv: bool,
}
