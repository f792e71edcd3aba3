//! Benchmarks that print their figures (speed targets are checked here, not in tests).
//!
//! `moe`: forward+backward time of an MoE layer (top-2 of 4 experts) and of the whole MoE LM,
//! against the dense layer/model with the same active parameters (one FFN twice as wide as an
//! expert). Routed-only dispatch makes a ratio near 1 possible; computing every expert and
//! masking would be about 2.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use serde::Serialize;

use crate::config::ModelConfig;
use crate::model::LanguageModel;
use crate::model::ffn::FeedForward;
use crate::model::moe::{MoeLayer, RoutingContext};
use crate::model::moe_config::{MoeConfig, Routing};

#[derive(Debug, Clone, Serialize)]
pub struct MoeBenchRow {
    pub what: String,
    pub dense_ms: f64,
    pub moe_ms: f64,
    pub ratio: f64,
}

pub struct MoeBenchOptions {
    pub d_model: usize,
    /// Hidden width of one expert; the dense comparison has twice this.
    pub expert_d_ff: usize,
    pub n_layers: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub warmup: usize,
    pub iters: usize,
}

/// Median wall time of `f` (synchronised with the device) over `iters` runs after `warmup`.
pub fn median_ms(device: &Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
        device.sync().ok();
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            f();
            device.sync().ok();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

pub fn bench_moe(device: &Device, o: &MoeBenchOptions) -> Vec<MoeBenchRow> {
    let device = device.clone().autodiff();
    let moe = MoeConfig {
        num_experts: 4,
        top_k: 2,
        routing: Routing::TopK,
        layers: None,
        expert_d_ff: Some(o.expert_d_ff),
        load_balance: 0.01,
        router_z_loss: 0.0,
        freeze_experts: false,
    };
    let ctx = RoutingContext { training: true, step: 0 };
    let mut rows = Vec::new();

    // One layer.
    let dense_ffn = FeedForward::new(o.d_model, 2 * o.expert_d_ff, &device);
    let moe_layer = MoeLayer::new(o.d_model, o.expert_d_ff, &moe, false, &device);
    let x = Tensor::<3>::random([o.batch, o.seq_len, o.d_model], Distribution::Normal(0.0, 1.0), &device);
    let dense_ms = median_ms(&device, o.warmup, o.iters, || {
        let _ = dense_ffn.forward(x.clone()).square().mean().backward();
    });
    let moe_ms = median_ms(&device, o.warmup, o.iters, || {
        let (y, aux) = moe_layer.forward(x.clone(), ctx);
        let _ = (y.square().mean() + aux.loss).backward();
    });
    rows.push(MoeBenchRow { what: "layer".into(), dense_ms, moe_ms, ratio: moe_ms / dense_ms });

    // The whole LM.
    let dense_config = ModelConfig {
        vocab_size: 4096,
        d_model: o.d_model,
        n_layers: o.n_layers,
        n_heads: (o.d_model / 64).max(1),
        n_kv_heads: None,
        d_ff: 2 * o.expert_d_ff,
        max_seq_len: o.seq_len,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
        moe: None,
    };
    let moe_config = ModelConfig { moe: Some(moe), ..dense_config.clone() };
    let dense_lm = LanguageModel::new(&dense_config, &device);
    let moe_lm = LanguageModel::new(&moe_config, &device);
    let tokens = Tensor::<2, Int>::random([o.batch, o.seq_len + 1], Distribution::Uniform(0.0, 4096.0), &device);
    let inputs = tokens.clone().narrow(1, 0, o.seq_len);
    let targets = tokens.narrow(1, 1, o.seq_len);
    let step = |lm: &LanguageModel| {
        let loss = lm.training_loss(inputs.clone(), targets.clone(), ctx);
        let _ = loss.total().backward();
    };
    let dense_ms = median_ms(&device, o.warmup, o.iters, || step(&dense_lm));
    let moe_ms = median_ms(&device, o.warmup, o.iters, || step(&moe_lm));
    rows.push(MoeBenchRow { what: "lm".into(), dense_ms, moe_ms, ratio: moe_ms / dense_ms });
    rows
}
