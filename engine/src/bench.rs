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
use crate::kernels;
use crate::model::autocast::autocast;
use crate::train::precision::Precision;
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
    let moe = MoeConfig { expert_d_ff: Some(o.expert_d_ff), ..MoeConfig::new(4, 2, Routing::TopK) };
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
        rope_scaling: None,
        head_dim: None,
        attention_bias: false,
        qk_norm: false,
        norm_eps: 1e-5,
        tie_embeddings: false,
        attention_experts: None,
        moe: None,
        gemma: None,
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

/// One model's training-step throughput.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchRow {
    pub model: String,
    pub params: usize,
    pub active_params: usize,
    pub batch: usize,
    pub seq_len: usize,
    /// Time of the first (warm-up) steps: compilation and autotuning on GPUs.
    pub warmup_s: f64,
    pub step_ms: f64,
    pub tokens_per_s: f64,
    /// Achieved training FLOP/s: (6 x active params + attention) x tokens / time.
    pub tflops: f64,
    /// Peak memory: the device pool where the backend reports it, else the process's peak RSS.
    pub peak_memory_mb: f64,
    /// Forward matmul throughput at the model's FFN shape ([tokens, d_model] x [d_model, d_ff]).
    pub matmul_tflops: f64,
}

/// Peak resident memory of this process (Linux's VmHWM), in MB; None where /proc has none.
pub fn peak_resident_mb() -> Option<f64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
}

/// The MoE counterpart of a dense config in the benchmarks: 4 experts of the dense FFN's
/// size, top-2 (what BTX builds from 3 experts and the seed).
pub fn bench_moe_config(dense: &ModelConfig) -> ModelConfig {
    ModelConfig {
        moe: Some(MoeConfig::new(4, 2, Routing::TopK)),
        ..dense.clone()
    }
}

/// How `bench_train` runs: `batch` x `seq_len` tokens per step, the median of `iters` steps
/// after `warmup`, in `precision` (f16: the training's autocast, `model::autocast`).
#[derive(Debug, Clone)]
pub struct TrainBenchRun {
    pub batch: usize,
    pub seq_len: usize,
    pub warmup: usize,
    pub iters: usize,
    pub precision: Precision,
    /// Train LoRA adapters of this rank on all seven projections (alpha = 2 x rank) instead
    /// of the weights, the base frozen.
    pub lora_rank: Option<usize>,
    /// What the MoE trains (`--trainable`, e.g. its routers only); the dense model trains
    /// every weight.
    pub trainable: Option<crate::train::trainable::Trainable>,
    /// Burn's balanced gradient checkpointing (`TrainConfig::activation_checkpointing`).
    pub activation_checkpointing: bool,
    /// How the frozen weights (LoRA's base, an MoE's frozen experts) are held
    /// (`TrainConfig::frozen_precision`).
    pub frozen_precision: crate::train::precision::FrozenPrecision,
}

/// Median training-step time (forward, backward, AdamW) of `config` after the warm-up steps.
pub fn bench_train(config: &ModelConfig, label: &str, run: &TrainBenchRun, device: &Device) -> TrainBenchRow {
    let TrainBenchRun { batch, seq_len, warmup, iters, precision, lora_rank, ref trainable, activation_checkpointing, frozen_precision } = *run;
    let trainable = trainable.as_ref().filter(|_| config.moe.is_some());
    use crate::train::adamw::AdamW;
    use crate::train::OptimizerConfig;
    use burn::optim::GradientsParams;
    let ad = if activation_checkpointing { device.clone().autodiff().gradient_checkpointing() } else { device.clone().autodiff() };
    let mut model = LanguageModel::seeded(config, 0, &ad);
    if let Some(rank) = lora_rank {
        use crate::model::lora::{self, LoraConfig, PROJECTIONS};
        let targets = PROJECTIONS.iter().map(|p| p.to_string()).collect();
        let lora = LoraConfig { rank, alpha: Some(2.0 * rank as f64), dropout: 0.0, targets };
        model = lora::attach(model, &lora).expect("a dense model takes adapters on every projection");
        model = crate::checkpoint::module_tensors::freeze_all_but(model, &lora::trainable_names()).0;
    }
    if let Some(trainable) = trainable {
        model = crate::checkpoint::module_tensors::freeze_where(model, &|name| trainable.trains(name)).0;
    }
    model = crate::train::start::hold_frozen_in(model, frozen_precision);
    let mut optimizer = AdamW::new(OptimizerConfig {
        lr: 1e-4, warmup_steps: 0, min_lr_ratio: 0.1, weight_decay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, grad_clip: 1.0, router_lr_multiplier: 1.0, shared_lr_multiplier: 1.0,
    });
    let tokens = Tensor::<2, Int>::random([batch, seq_len + 1], Distribution::Uniform(0.0, config.vocab_size as f64), &ad);
    let inputs = tokens.clone().narrow(1, 0, seq_len);
    let targets = tokens.narrow(1, 1, seq_len);
    let ctx = RoutingContext { training: true, step: 0 };
    let mut step = |model: LanguageModel| -> LanguageModel {
        let loss = autocast(precision.compute_dtype(), || model.training_loss(inputs.clone(), targets.clone(), ctx)).total();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optimizer.step(model, grads, 1e-4, 1.0)
    };
    let start = Instant::now();
    for _ in 0..warmup {
        model = step(model);
        ad.sync().ok();
    }
    let warmup_s = start.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        model = step(model);
        ad.sync().ok();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let step_s = times[times.len() / 2];
    let tokens = (batch * seq_len) as f64;
    let frozen = trainable.map_or(0.0, |t| 2.0 * t.frozen_matmul_params(config));
    let flops = (config.train_flops_per_token(seq_len) - frozen) * tokens;
    let peak_memory_mb = device.memory_pool_usage().map_or_else(|| peak_resident_mb().unwrap_or(f64::NAN), |u| u.bytes_reserved as f64 / 1e6);

    // The device's matmul rate at the FFN's shape, through the same backend.
    let a = Tensor::<2>::random([batch * seq_len, config.d_model], Distribution::Normal(0.0, 1.0), device);
    let b = Tensor::<2>::random([config.d_model, config.d_ff], Distribution::Normal(0.0, 1.0), device);
    let matmul_ms = median_ms(device, 2, 5, || {
        let _ = a.clone().matmul(b.clone());
    });
    let matmul_tflops = 2.0 * tokens * (config.d_model * config.d_ff) as f64 / (matmul_ms / 1e3) / 1e12;

    TrainBenchRow {
        model: label.to_string(),
        params: config.num_params(),
        active_params: config.active_params(),
        batch,
        seq_len,
        warmup_s,
        step_ms: step_s * 1e3,
        tokens_per_s: tokens / step_s,
        tflops: flops / step_s / 1e12,
        peak_memory_mb,
        matmul_tflops,
    }
}

/// One primitive operation's rate at a model's shapes.
#[derive(Debug, Clone, Serialize)]
pub struct OpRow {
    pub op: String,
    pub ms: f64,
    /// Elements per second (elementwise ops) or FLOP/s (matmul).
    pub rate: f64,
    pub unit: &'static str,
}

/// The primitives a training step spends its time in, alone: `exp` over the vocabulary-sized
/// logits (cross-entropy), SwiGLU's gated product over the FFN activations (Burn's
/// silu(gate) * up and the engine's kernel, engine/src/kernels, with and without the backward
/// pass), and the FFN matmul. Where the engine trails PyTorch, this says which primitive does
/// (bench/reference/ops_bench.py times the same in PyTorch).
pub fn bench_ops(device: &Device, tokens: usize, d_model: usize, d_ff: usize, vocab: usize, iters: usize) -> Vec<OpRow> {
    use burn::tensor::activation::silu;
    let logits = Tensor::<2>::random([tokens, vocab], Distribution::Normal(0.0, 1.0), device);
    let hidden = Tensor::<2>::random([tokens, d_ff], Distribution::Normal(0.0, 1.0), device);
    let up = Tensor::<2>::random([tokens, d_ff], Distribution::Normal(0.0, 1.0), device);
    let x = Tensor::<2>::random([tokens, d_model], Distribution::Normal(0.0, 1.0), device);
    let w = Tensor::<2>::random([d_model, d_ff], Distribution::Normal(0.0, 0.02), device);
    let elementwise = |op: &str, n: usize, ms: f64| OpRow { op: op.into(), ms, rate: n as f64 / (ms / 1e3), unit: "elements/s" };
    let time = |f: &dyn Fn()| median_ms(device, 2, iters, f);
    let exp_ms = time(&|| drop(logits.clone().exp()));
    let exp_kernel_ms = time(&|| drop(kernels::exp(logits.clone())));
    let swiglu_ms = time(&|| drop(silu(hidden.clone()) * up.clone()));
    let swiglu_kernel_ms = time(&|| drop(kernels::swiglu(hidden.clone(), up.clone())));
    // Forward and backward: the gradients of sum(swiglu(gate, up)) with respect to both.
    let (gate_t, up_t) = (hidden.clone().autodiff().require_grad(), up.clone().autodiff().require_grad());
    let backward = |f: &dyn Fn(Tensor<2>, Tensor<2>) -> Tensor<2>| drop(f(gate_t.clone(), up_t.clone()).sum().backward());
    let swiglu_both_ms = time(&|| backward(&|g, u| silu(g) * u));
    let swiglu_kernel_both_ms = time(&|| backward(&kernels::swiglu));
    let matmul_ms = time(&|| drop(x.clone().matmul(w.clone())));
    let gated = tokens * d_ff;
    // The LM head (tied: the embedding read transposed) and its cross-entropy, forward and
    // backward: fused (kernels::linear_cross_entropy) against logits -> log-softmax.
    let ad = device.clone().autodiff();
    let hidden = Tensor::<2>::random([tokens, d_model], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let embedding = Tensor::<2>::random([vocab, d_model], Distribution::Normal(0.0, 0.02), &ad).require_grad();
    let ids: Vec<i64> = (0..tokens as i64).map(|t| (t * 7919) % vocab as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(ids, [tokens]), &ad);
    let token_weights = Tensor::<1>::full([tokens], 1.0 / tokens as f64, &ad);
    let head_backward = |loss: Tensor<1>| drop(embedding.grad(&loss.backward()));
    let fused_head_ms = time(&|| head_backward(kernels::linear_cross_entropy(hidden.clone() * 1.0, embedding.clone().transpose(), targets.clone(), token_weights.clone(), true)));
    let unfused_head_ms = time(&|| {
        let logits = kernels::matmul(hidden.clone() * 1.0, embedding.clone().transpose());
        head_backward(crate::model::lm::weighted_nll(logits, targets.clone(), token_weights.clone()))
    });
    let head = |what: &str, ms: f64| OpRow { op: format!("LM head + cross-entropy fwd+bwd, {what}"), ms, rate: 6.0 * (tokens * d_model * vocab) as f64 / (ms / 1e3), unit: "FLOP/s" };
    vec![
        elementwise(&format!("exp [{tokens}, {vocab}] (Burn)"), tokens * vocab, exp_ms),
        elementwise(&format!("exp [{tokens}, {vocab}] (engine kernel)"), tokens * vocab, exp_kernel_ms),
        elementwise(&format!("silu(g) * u [{tokens}, {d_ff}] (Burn)"), gated, swiglu_ms),
        elementwise(&format!("silu(g) * u [{tokens}, {d_ff}] (engine kernel)"), gated, swiglu_kernel_ms),
        elementwise(&format!("silu(g) * u forward+backward (Burn)"), gated, swiglu_both_ms),
        elementwise(&format!("silu(g) * u forward+backward (engine kernel)"), gated, swiglu_kernel_both_ms),
        head(&format!("fused [{tokens}, {d_model}] x [{d_model}, {vocab}]"), fused_head_ms),
        head("logits then log-softmax", unfused_head_ms),
        OpRow {
            op: format!("matmul [{tokens}, {d_model}] x [{d_model}, {d_ff}]"),
            ms: matmul_ms,
            rate: 2.0 * (tokens * d_model * d_ff) as f64 / (matmul_ms / 1e3),
            unit: "FLOP/s",
        },
    ]
}
