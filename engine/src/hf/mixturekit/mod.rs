//! MixtureKit's checkpoints (the format Nile-Chat's MoE is published in), read and written.
//!
//! A MixtureKit model is its base model (`base_model_class`: LlamaForCausalLM,
//! Qwen3ForCausalLM, Gemma3ForCausalLM, ...) with routed modules, described by config.json
//! keys beside the base's: `moe_method` ("traditional": one router per layer's MLP, experts
//! `mlp.experts.J.{gate,up,down}_proj`, router `mlp.gate`; "btx": a router per listed FFN
//! projection, experts `mlp.P.experts.expert_J`, router `mlp.P.gate`, in the layers of
//! `router_layers_index`; "bts": stitch layers, which the engine lacks), `num_experts`,
//! `num_experts_per_tok`, `alpha` (load balancing). Both route top-k over the raw router
//! logits with a softmax over the k selected: the engine's `TopK`.
//!
//! Writing uses MixtureKit's names and config keys with the engine's own modeling code
//! (`modeling_btx_moe.py`, `auto_map`), so transformers loads it with trust_remote_code and
//! MixtureKit's trainer and visualiser read it.

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};

use crate::checkpoint::tensor_names::{PROJECTION_MOE, Projection};
use crate::config::ModelConfig;
use crate::model::moe_config::{Balance, MoeConfig, RoutedProjection, Routing};

const MODELING: &str = include_str!("modeling_btx_moe.py");
const CONFIGURATION: &str = include_str!("configuration_btx_moe.py");

/// Whether a config.json describes a MixtureKit model.
pub fn is_mixturekit(hf: &Value) -> bool {
    hf.get("moe_method").is_some() || hf["architectures"].get(0).and_then(Value::as_str) == Some("MixtureKitForCausalLM")
}

/// The engine's config of a MixtureKit config.json: its base model's, with an MoE of
/// `num_experts` top-`num_experts_per_tok` experts routed per FFN (traditional) or per
/// projection (BTX). Stitch layers (BTS) and routed attention projections are refused by name.
pub fn from_mixturekit_config(hf: &Value, origin: &str) -> Result<ModelConfig> {
    let method = hf.get("moe_method").and_then(Value::as_str).unwrap_or("btx");
    let base_class = hf.get("base_model_class").and_then(Value::as_str).ok_or_else(|| anyhow!("{origin}: field `base_model_class` is missing (MixtureKit names the base architecture there)"))?;
    let int = |key: &str| hf.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| anyhow!("{origin}: field `{key}` is missing or not a positive integer"));
    let mut base = hf.clone();
    base["architectures"] = json!([base_class]);
    base.as_object_mut().map(|o| o.remove("moe_method"));
    let mut config = super::config::from_hf_config(&base, origin)?;
    let routed_projections = match method {
        "traditional" => Vec::new(),
        "btx" => btx_projections(hf, origin)?,
        "bts" => bail!("{origin}: field `moe_method` is \"bts\": Branch-Train-Stitch's stitch layers are not an MoE the engine computes (\"btx\" and \"traditional\" are)"),
        other => bail!("{origin}: field `moe_method` is {other:?}; MixtureKit's are btx, traditional and bts"),
    };
    let all_layers: Vec<usize> = (0..config.n_layers).collect();
    let layers = match (method, hf.get("router_layers_index").and_then(Value::as_array)) {
        ("btx", Some(index)) => {
            let index: Vec<usize> = index.iter().map(|v| v.as_u64().map(|l| l as usize).ok_or_else(|| anyhow!("{origin}: field `router_layers_index` has {v}; expected layer numbers"))).collect::<Result<_>>()?;
            if index.is_empty() {
                bail!("{origin}: field `router_layers_index` routes no layer");
            }
            (index != all_layers).then_some(index)
        }
        _ => None,
    };
    let num_experts = int("num_experts")?;
    config.moe = Some(MoeConfig {
        num_experts,
        top_k: int("num_experts_per_tok")?,
        routing: Routing::TopK,
        layers,
        load_balance: hf.get("alpha").and_then(Value::as_f64).unwrap_or(0.0),
        balance: Balance::PerLayer,
        routed_projections,
        ..MoeConfig::new(num_experts, 1, Routing::TopK)
    });
    config.validate(origin)?;
    Ok(config)
}

/// The FFN projections a BTX config routes (`router_layers`: "mlp.gate_proj", ...).
fn btx_projections(hf: &Value, origin: &str) -> Result<Vec<RoutedProjection>> {
    let names = hf.get("router_layers").and_then(Value::as_array).ok_or_else(|| anyhow!("{origin}: field `router_layers` is missing (the projections a BTX model routes)"))?;
    let mut routed = Vec::new();
    for name in names {
        let name = name.as_str().unwrap_or_default();
        match RoutedProjection::ALL.into_iter().find(|p| name == format!("mlp.{}", p.name())) {
            Some(p) => routed.push(p),
            None => bail!("{origin}: field `router_layers` routes {name:?}; the engine routes the FFN's projections (mlp.gate_proj, mlp.up_proj, mlp.down_proj), not attention's"),
        }
    }
    if routed.is_empty() {
        bail!("{origin}: field `router_layers` is empty: a BTX model with no routed projection");
    }
    Ok(routed)
}

/// MixtureKit's name of an engine tensor (the base model's name where they agree).
pub fn mixturekit_name(engine: &str) -> String {
    let Some((prefix, rest)) = engine.split_once(PROJECTION_MOE) else {
        // Traditional: the engine's Mixtral names.
        return match engine.split_once(".block_sparse_moe.") {
            Some((layer, "gate.weight")) => format!("{layer}.mlp.gate.weight"),
            Some((layer, rest)) => {
                let rest = rest.strip_prefix("experts.").unwrap_or(rest);
                let (expert, proj) = rest.split_once('.').unwrap_or((rest, ""));
                let proj = Projection::ALL.iter().find(|p| proj == format!("{}.weight", p.mixtral())).map_or(proj.to_string(), |p| format!("{}.weight", p.llama()));
                format!("{layer}.mlp.experts.{expert}.{proj}")
            }
            None => engine.to_string(),
        };
    };
    // BTX: projection_moe.P.{gate, experts.J, plain}.weight -> mlp.P.{gate, experts.expert_J, }.weight
    let (proj, part) = rest.split_once('.').unwrap_or((rest, ""));
    let part = match part.strip_prefix("experts.") {
        Some(expert) => format!("experts.expert_{expert}"),
        None if part == "plain.weight" => "weight".to_string(),
        None => part.to_string(),
    };
    format!("{prefix}.mlp.{proj}.{part}")
}

/// Whether a MixtureKit tensor may be absent: a fresh `build_moe` writes no routers
/// (MixtureKit's loader draws them at random).
pub fn may_be_missing(mixturekit: &str) -> bool {
    mixturekit.ends_with(".gate.weight") && mixturekit.contains(".mlp.")
}

/// The config.json of a MixtureKit checkpoint of the engine's MoE `config`, with the engine's
/// modeling code (`auto_map`), and the name of its base architecture's config class. The
/// experts are named `expert_J`.
pub fn to_mixturekit_config(config: &ModelConfig) -> Result<(Value, String)> {
    let moe = config.moe.as_ref().ok_or_else(|| anyhow!("MixtureKit's format is for an MoE; this model is dense (export it as its own architecture)"))?;
    let method = if moe.routed_projections.is_empty() { "traditional" } else { "btx" };
    let unsupported = match moe.routing {
        Routing::TopK => None,
        ref other => Some(format!("{other:?} routing")),
    }
    .or_else(|| moe.shared_expert.then(|| "a shared expert".into()))
    .or_else(|| moe.expert_d_ff.is_some().then(|| "experts narrower than the FFN (expert_d_ff)".into()))
    .or_else(|| config.attention_experts.is_some().then(|| "attention experts (BAM)".into()))
    .or_else(|| (method == "traditional" && moe.layers.is_some()).then(|| "MoE layers in some layers only (MixtureKit's traditional MoE has one in every layer)".into()));
    if let Some(what) = unsupported {
        bail!("MixtureKit routes top-k over every layer's experts of the FFN's width; this MoE has {what}");
    }
    let dense = ModelConfig { moe: None, ..config.clone() };
    let mut hf = super::config::to_hf_config(&dense, false)?;
    let base_class = hf["architectures"][0].as_str().unwrap_or_default().to_string();
    let base_config = match base_class.as_str() {
        "Gemma3ForCausalLM" => "Gemma3TextConfig".to_string(),
        other => other.replace("ForCausalLM", "Config"),
    };
    let layers: Vec<usize> = (0..config.n_layers).filter(|&l| moe.is_moe_layer(l)).collect();
    let names: Vec<String> = (0..moe.num_experts).map(|e| format!("expert_{e}")).collect();
    for (key, value) in [
        ("architectures", json!(["MixtureKitForCausalLM"])),
        ("model_type", json!("btx_moe")),
        ("auto_map", json!({"AutoConfig": "configuration_btx_moe.BtxMoeConfig", "AutoModelForCausalLM": "modeling_btx_moe.MixtureKitForCausalLM"})),
        ("base_model_class", json!(base_class)),
        ("moe_method", json!(method)),
        ("num_experts", json!(moe.num_experts)),
        ("num_experts_per_tok", json!(moe.top_k)),
        ("alpha", json!(moe.load_balance)),
        ("router_layers", json!(moe.routed_projections.iter().map(|p| format!("mlp.{}", p.name())).collect::<Vec<_>>())),
        ("router_layers_index", json!(layers)),
        ("expert_names", json!(names)),
        ("expert_model_ids", json!(names)),
        ("expert_is_local", json!(vec![true; moe.num_experts])),
    ] {
        hf[key] = value;
    }
    Ok((hf, base_config))
}

/// The modeling and configuration files a MixtureKit checkpoint of `base_class` (with its
/// config class `base_config`) loads with.
pub fn modeling_files(base_class: &str, base_config: &str) -> [(&'static str, String); 2] {
    [
        ("modeling_btx_moe.py", MODELING.replace("__BASE_MODEL_CLASS__", base_class)),
        ("configuration_btx_moe.py", CONFIGURATION.replace("__BASE_CONFIG_CLASS__", base_config)),
    ]
}
