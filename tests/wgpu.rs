//! WGPU against the CPU backend, with the same weights and data: logits of the dense model
//! and of the MoE under every routing mode, training steps (dense and MoE), a resume on
//! WGPU, and a BTX merge of WGPU-trained experts.
//!
//! Runs on any WGPU adapter, software ones included: in CI, Mesa's llvmpipe through OpenGL
//! (see README, "Devices"). Skipped, saying why, only where WGPU finds no adapter at all;
//! with BTX_REQUIRE_WGPU=1 (as `.ci/run` sets) that is a failure instead. The tests share
//! one device and take turns on it: shader compilation is the cost, and one GL context is
//! not shared between threads.

use std::sync::{Mutex, MutexGuard, OnceLock};

use btx::burn::prelude::*;
use btx::checkpoint::module_tensors::{module_from_tensors, module_to_tensors};
use btx::checkpoint::{self, tensor_file::TensorMap};
use btx::device::{DeviceArgs, DeviceChoice, SelectedDevice, select_device};
use btx::eval::evaluate;
use btx::model::LanguageModel;
use btx::model::moe::RoutingContext;
use btx::model::moe_config::{MoeConfig, Routing};
use btx::train::{TrainConfig, TrainOptions, train};
use btx::data::load_domains;

use crate::common::*;

static DEVICE: OnceLock<Result<(Device, String), String>> = OnceLock::new();
static TURN: Mutex<()> = Mutex::new(());

/// The shared WGPU device (and this test's turn on it), or None where there is none.
fn gpu(test: &str) -> Option<(MutexGuard<'static, ()>, SelectedDevice)> {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let found = DEVICE.get_or_init(|| {
        let args = DeviceArgs { device: DeviceChoice::Wgpu, allow_software_gpu: true };
        select_device(args).map(|s| (s.device, s.description)).map_err(|e| format!("{e:#}"))
    });
    match found {
        Ok((device, description)) => {
            eprintln!("{test}: on {description}");
            Some((turn, SelectedDevice { device: device.clone(), description: description.clone() }))
        }
        Err(why) if std::env::var("BTX_REQUIRE_WGPU").is_ok_and(|v| v == "1") => panic!("{test}: BTX_REQUIRE_WGPU=1 but {why}"),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// `model`'s weights on `device`.
fn moved(model: &LanguageModel, config: &btx::config::ModelConfig, device: &Device) -> LanguageModel {
    module_from_tensors(LanguageModel::new(config, device), &module_to_tensors(model), "test").unwrap()
}

fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    max_abs_diff(a, b) / a.iter().fold(1e-6f32, |m, x| m.max(x.abs()))
}

#[test]
fn wgpu_logits_match_cpu_dense_and_every_routing() {
    let Some((_turn, gpu)) = gpu("wgpu_logits_match_cpu_dense_and_every_routing") else { return };
    use btx::model::attention_experts::AttentionExpertsConfig;
    let attention = |shared_kv| Some(AttentionExpertsConfig { num_experts: 3, shared_kv });
    let routings = [
        ("dense", None, None),
        ("top-2", Some(MoeConfig::new(4, 2, Routing::TopK)), None),
        // Capacity 0.5 x tokens / experts: some assignments are dropped.
        ("switch", Some(MoeConfig::new(4, 1, Routing::Switch { capacity_factor: 0.5 })), None),
        ("soft", Some(MoeConfig::new(4, 1, Routing::Soft)), None),
        ("sample-top-1 (eval)", Some(MoeConfig::new(4, 1, Routing::SampleTop1 { tau_min: 0.5, tau_decay: 1e-3, first_layer_soft: true })), None),
        ("BAM attention experts", Some(MoeConfig::new(4, 2, Routing::TopK)), attention(false)),
        ("BAM shared KV, shared expert", Some(MoeConfig { shared_expert: true, ..MoeConfig::new(4, 2, Routing::TopK) }), attention(true)),
    ];
    let plain = |moe, attention_experts| btx::config::ModelConfig { moe, attention_experts, ..tiny_model(4, 2) };
    let configs = routings.into_iter().map(|(label, moe, attention)| (label, plain(moe, attention))).chain([
        // The seeds users have: Qwen2's q/k/v biases under top-2 routing; Qwen3's q/k norms
        // with heads wider than d_model / n_heads, and Llama 3's RoPE scaling.
        ("Qwen2 biases, top-2", btx::config::ModelConfig { attention_bias: true, ..plain(Some(MoeConfig::new(4, 2, Routing::TopK)), None) }),
        (
            "Qwen3 q/k norms and wide heads, Llama 3 RoPE",
            btx::config::ModelConfig {
                qk_norm: true,
                head_dim: Some(16),
                rope_scaling: Some(btx::model::rope::RopeScaling::Llama3 { factor: 4.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8 }),
                ..plain(None, None)
            },
        ),
        ("BAM of Qwen3 attention", btx::config::ModelConfig { qk_norm: true, head_dim: Some(16), ..plain(Some(MoeConfig::new(4, 2, Routing::TopK)), attention(false)) }),
        ("BAM of Qwen2 attention, shared KV", btx::config::ModelConfig { attention_bias: true, ..plain(Some(MoeConfig::new(4, 2, Routing::TopK)), attention(true)) }),
        // Gemma 3's options (a window shorter than the sequence, local and global RoPE,
        // sandwich and unit-offset norms, GeGLU), dense and top-2.
        ("Gemma 3", gemma3_model()),
        ("Gemma 3 top-2", btx::config::ModelConfig { moe: Some(MoeConfig::new(4, 2, Routing::TopK)), ..gemma3_model() }),
        // Gemma 2's soft cap on the attention scores. Its final-logit cap is checked on the CPU
        // only: any elementwise operation Burn fuses onto the tied head's product stalls the
        // GL adapter ("Could not lock adapter context"; Gemma 3 has no such cap).
        ("Gemma 2 attention soft cap", {
            let mut config = gemma2_model();
            config.gemma.as_mut().unwrap().final_logit_softcap = None;
            config
        }),
        (
            "MixtureKit BTX (a router per projection)",
            btx::config::ModelConfig {
                moe: Some(MoeConfig { routed_projections: btx::model::moe_config::RoutedProjection::ALL.to_vec(), ..MoeConfig::new(4, 2, Routing::TopK) }),
                ..tiny_model(4, 2)
            },
        ),
    ]);
    for (label, config) in configs {
        let reference = LanguageModel::seeded(&config, 11, &cpu());
        let model = moved(&reference, &config, &gpu.device);
        let run = |m: &LanguageModel, d: &Device| {
            let (logits, aux) = m.forward_with_aux(random_tokens(2, 16, 4096, 5, d), RoutingContext::default());
            (to_vec(logits), aux.iter().map(|a| a.expert_tokens.clone()).collect::<Vec<_>>())
        };
        let (want, want_routes) = run(&reference, &cpu());
        let (got, got_routes) = run(&model, &gpu.device);
        let diff = relative_diff(&want, &got);
        eprintln!("  {label}: max |logit difference| / max |logit| = {diff:.2e}");
        assert!(diff < 1e-4, "{label}: logits differ by {diff} (relative)");
        assert_eq!(want_routes, got_routes, "{label}: tokens per expert differ");
    }
}

fn train_on(config: &TrainConfig, device: &SelectedDevice, out: &std::path::Path, resume: bool, stop_after: Option<usize>) -> btx::train::trainer::TrainSummary {
    train(config, "test", device, &TrainOptions { out: out.to_path_buf(), resume, progress: false, stop_after }).unwrap()
}

/// The tiny config for four steps of batch 2 with one evaluation batch: cheap on a software
/// adapter, whose cost is compiling shaders.
fn four_small_steps(dir: &std::path::Path) -> TrainConfig {
    TrainConfig { batch_size: 2, eval_batches: 1, ..tiny_train_config(dir, 4) }
}

fn weights(run: &std::path::Path) -> TensorMap {
    let (_, model) = checkpoint::load_model(&checkpoint::latest_checkpoint(run).unwrap(), &cpu()).unwrap();
    module_to_tensors(&model)
}

fn max_weight_diff(a: &TensorMap, b: &TensorMap) -> f32 {
    a.iter().map(|(n, t)| max_abs_diff(&t.values, &b[n].values)).fold(0.0, f32::max)
}

/// Four steps of AdamW on CPU and on WGPU (dense, then top-2 MoE), then a WGPU run stopped
/// after step 3 and resumed, then a BTX merge of WGPU-trained experts evaluated on both.
#[test]
fn wgpu_training_matches_cpu_resumes_and_merges() {
    let Some((_turn, gpu)) = gpu("wgpu_training_matches_cpu_resumes_and_merges") else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut dense = four_small_steps(dir.path());
    dense.checkpoint_every = 2;
    let moe = TrainConfig { model: btx::config::ModelConfig { moe: Some(MoeConfig::new(4, 2, Routing::TopK)), ..dense.model.clone() }, ..dense.clone() };
    for (label, config) in [("dense", &dense), ("moe top-2", &moe)] {
        let slug = label.replace(' ', "-");
        let on_cpu = train_on(config, &cpu_selected(), &dir.path().join(format!("{slug}-cpu")), false, None);
        let on_gpu = train_on(config, &gpu, &dir.path().join(format!("{slug}-gpu")), false, None);
        let loss_diff = on_cpu.final_eval.iter().zip(&on_gpu.final_eval).map(|(a, b)| (a.loss - b.loss).abs()).fold(0.0, f64::max);
        let weight_diff = max_weight_diff(&weights(&dir.path().join(format!("{slug}-cpu"))), &weights(&dir.path().join(format!("{slug}-gpu"))));
        eprintln!("  {label}: after 4 steps, max |val loss difference| {loss_diff:.2e}, max |weight difference| {weight_diff:.2e}");
        assert!(loss_diff < 1e-3, "{label}: validation losses differ by {loss_diff}");
        assert!(weight_diff < 1e-3, "{label}: weights differ by {weight_diff}");
    }

    // Stopped after step 3: the step-2 checkpoint survives; resumed, it ends where the
    // uninterrupted WGPU run did.
    let interrupted = dir.path().join("dense-gpu-interrupted");
    train_on(&dense, &gpu, &interrupted, false, Some(3));
    train_on(&dense, &gpu, &interrupted, true, None);
    let resume_diff = max_weight_diff(&weights(&dir.path().join("dense-gpu")), &weights(&interrupted));
    eprintln!("  resume on WGPU: max |weight difference| to the uninterrupted run {resume_diff:.2e}");
    assert!(resume_diff < 1e-5, "resumed run differs by {resume_diff}");

    // A second expert on other data, then BTX MiX of both (plus nothing else) on the host.
    let mut code_expert = dense.clone();
    code_expert.init_from = Some(dir.path().join("dense-gpu"));
    code_expert.data.domains[0].weight = 0.0;
    train_on(&code_expert, &gpu, &dir.path().join("code-gpu"), false, None);
    let experts: Vec<btx::merge::MergeInput> = ["dense-gpu", "code-gpu"].iter().map(|n| btx::merge::MergeInput::load(&dir.path().join(n)).unwrap()).collect();
    let merged = dir.path().join("merged");
    let options = btx::merge::mix::MoeOptions { top_k: 1, ..Default::default() };
    btx::merge::mix::mix(&experts, None, None, &options, None).unwrap().write(&merged, &[]).unwrap();
    let domains = load_domains(&dense.data, dense.model.vocab_size, "test").unwrap();
    let eval_on = |device: &Device| {
        let (_, model) = checkpoint::load_model(&merged, device).unwrap();
        evaluate(&model, &domains, 2, 1, device)
    };
    let (a, b) = (eval_on(&cpu()), eval_on(&gpu.device));
    let eval_diff = a.iter().zip(&b).map(|(x, y)| (x.loss - y.loss).abs()).fold(0.0, f64::max);
    eprintln!("  BTX merge of WGPU-trained experts: max |val loss difference| CPU vs WGPU {eval_diff:.2e}");
    assert!(eval_diff < 1e-4, "merged model evaluates differently: {eval_diff}");
    let shares = |e: &btx::eval::DomainEval| e.routing.as_ref().map(|r| r.panels()).unwrap_or_default();
    assert!(a.iter().zip(&b).all(|(x, y)| shares(x).len() == shares(y).len() && shares(x).iter().flatten().zip(shares(y).iter().flatten()).all(|(p, q)| (p - q).abs() < 1e-3)));
}

/// One expert per GPU, on the one adapter here: `--devices 0` gives each GPU stage adapter 0
/// (llvmpipe, which `--allow-software-gpu` admits), its manifest records the adapter and the
/// device the stage ran on, and the report's stage table says so; host stages (data, merges)
/// take none. A selector the stage's process cannot honour fails it: the assignment reaches
/// the process, it is not ignored. (A given seed and one expert of one step: every GPU
/// stage on llvmpipe spends about a minute compiling its shaders.)
#[test]
fn wgpu_recipe_stages_run_on_the_adapter_they_are_given() {
    let Some((_turn, gpu)) = gpu("wgpu_recipe_stages_run_on_the_adapter_they_are_given") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    seed_checkpoint(d, "seed", 3);
    let recipe = format!(
        r#"(
    model: (vocab_size: 4096, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ff: 64, max_seq_len: 64),
    tokenizer: "{tokenizer}",
    seq_len: 32,
    val_every: 10,
    domains: [(name: "english", source: File("{english}")), (name: "code", source: File("{code}"))],
    optimizer: (lr: 1e-2, warmup_steps: 1),
    batch_size: 2,
    seed_model: Checkpoint("seed"),
    experts: [(name: "code", data: [("code", 1.0)], steps: 1)],
    merges: [(name: "avg", method: Average)],
    finetune: (steps: 1),
    eval: (batches: 1, arithmetic_problems: 0),
)"#,
        tokenizer = repo_root().join("assets/tokenizer.json").display(),
        english = small_corpus(d, "english.txt", 20_000).display(),
        code = small_corpus(d, "code.txt", 20_000).display(),
    );
    std::fs::write(d.join("r.ron"), recipe).unwrap();
    let run = d.join("run");
    let args = ["recipe", "run", "r.ron", "--out", run.to_str().unwrap(), "--device", "gl", "--allow-software-gpu", "--devices", "0", "--jobs", "2"];
    let (ok, err) = run_btx(&args, d);
    assert!(ok, "{err}");
    let adapter = gpu.description.trim_start_matches("wgpu: ");
    for stage in ["experts/code", "eval/expert-code"] {
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join(stage).join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["adapter"], 0, "{stage}: {manifest}");
        assert!(manifest["device"].as_str().unwrap().contains(adapter), "{stage} ran on {} (adapter 0 is {adapter})", manifest["device"]);
    }
    for stage in ["data/code", "merges/avg"] {
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join(stage).join("manifest.json")).unwrap()).unwrap();
        assert!(manifest.get("adapter").is_none(), "{stage} runs on the host: {manifest}");
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.lines().any(|l| l.starts_with("| experts/code ") && l.contains("(adapter 0)")), "{report}");
    // The process of a stage honours its selector: one naming an adapter that is not here fails.
    let config = run.join("experts/code/stage.ron");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_btx"))
        .args(["train", "--config", config.to_str().unwrap(), "--out", d.join("elsewhere").to_str().unwrap(), "--device", "gl", "--allow-software-gpu"])
        .env("CUBECL_WGPU_DEFAULT_DEVICE", "DiscreteGpu(7)")
        .current_dir(d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("adapter"), "{stderr}");
}

/// `low` (a run computing in, or holding weights in, `dtype`) on the adapter: where the
/// adapter has `dtype` arithmetic, its validation losses stay within 2% of the f32 run's
/// (`f32_config`); where it has none, the run is refused before it starts, with a message that
/// names the adapter and `way_out`, leaving no folder.
fn tracks_f32_or_is_refused_by_name(gpu: &SelectedDevice, dir: &std::path::Path, label: &str, low: &TrainConfig, f32_config: &TrainConfig, dtype: btx::burn::tensor::DType, way_out: &str) {
    let options = TrainOptions { out: dir.join(label), resume: false, progress: false, stop_after: None };
    match train(low, "test", gpu, &options) {
        Ok(low_run) => {
            let f32_run = train_on(f32_config, gpu, &dir.join(format!("f32-{label}")), false, None);
            let gap = f32_run.final_eval.iter().zip(&low_run.final_eval).map(|(a, b)| (a.loss - b.loss).abs() / a.loss).fold(0.0, f64::max);
            eprintln!("  {label} on {}: validation losses within {:.2}% of f32's", gpu.description, 100.0 * gap);
            assert!(gap < 0.02, "{label} leaves f32 by {:.2}%", 100.0 * gap);
        }
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("  refused: {message}");
            assert!(!gpu.device.supports_dtype(dtype), "refused on an adapter with {dtype:?}: {message}");
            assert!(message.contains(&gpu.description) && message.contains(way_out), "{message}");
            assert!(!options.out.exists(), "a refused run left its folder");
        }
    }
}

/// Precision F16 on the adapter: where it offers f16 arithmetic, four steps track the f32
/// run's losses; where it does not (llvmpipe through OpenGL has no SHADER_F16), training is
/// refused before it starts, with a message that names the adapter and the way out.
#[test]
fn wgpu_f16_trains_where_the_adapter_offers_it_and_is_refused_by_name_elsewhere() {
    let Some((_turn, gpu)) = gpu("wgpu_f16_trains_where_the_adapter_offers_it_and_is_refused_by_name_elsewhere") else { return };
    let dir = tempfile::tempdir().unwrap();
    let f32_config = four_small_steps(dir.path());
    let f16_config = TrainConfig { precision: btx::train::precision::Precision::F16, ..f32_config.clone() };
    tracks_f32_or_is_refused_by_name(&gpu, dir.path(), "f16", &f16_config, &f32_config, btx::burn::tensor::DType::F16, "precision F32");
}

/// Frozen weights in half precision on the adapter: a LoRA run with its base in f16 tracks the
/// f32 run where the adapter has f16 arithmetic (the frozen products run in f16, the loss
/// scaled); where it has none (llvmpipe), it is refused before it starts, naming the field and
/// the adapter; bf16, which WGPU does not compute in, is refused by name too.
#[test]
fn wgpu_frozen_weights_in_f16_train_where_the_adapter_offers_it_and_are_refused_by_name_elsewhere() {
    let Some((_turn, gpu)) = gpu("wgpu_frozen_weights_in_f16_train_where_the_adapter_offers_it_and_are_refused_by_name_elsewhere") else { return };
    use btx::train::precision::FrozenPrecision;
    let dir = tempfile::tempdir().unwrap();
    let targets = ["q_proj", "v_proj", "up_proj"].iter().map(|t| t.to_string()).collect();
    let lora = btx::model::lora::LoraConfig { rank: 2, alpha: Some(4.0), dropout: 0.0, targets };
    let f32_config = TrainConfig { lora: Some(lora), ..four_small_steps(dir.path()) };
    for precision in [FrozenPrecision::F16, FrozenPrecision::BF16] {
        let held = TrainConfig { frozen_precision: precision, ..f32_config.clone() };
        let label = format!("frozen {precision:?}");
        tracks_f32_or_is_refused_by_name(&gpu, dir.path(), &label, &held, &f32_config, precision.dtype().unwrap(), "frozen_precision");
    }
}

/// Task evaluation on WGPU scores as on the CPU: the same log-likelihoods (to float
/// rounding), so the same choices, and the same greedy generations, on a shipped
/// multiple-choice task and a shipped generation task.
#[test]
fn wgpu_task_evaluation_matches_cpu() {
    let Some((_turn, gpu)) = gpu("wgpu_task_evaluation_matches_cpu") else { return };
    use btx::tasks::{TaskConfig, TaskModel, TaskOptions, evaluate_task, model::CheckpointModel, task_tokenizer};
    let config = tiny_model(4, 2);
    let cpu_model = LanguageModel::seeded(&config, 9, &cpu());
    let gpu_model = moved(&cpu_model, &config, &gpu.device);
    let tokenizer = task_tokenizer(&repo_root().join("assets/tokenizer.json")).unwrap();
    // Small batches: larger dispatches can stall Mesa's llvmpipe through OpenGL (README,
    // "Devices"); the batch changes no score (tests/tasks.rs).
    let options = TaskOptions { limit: Some(6.0), num_fewshot: None, batch_tokens: 128, progress: false, chat: None, system_instruction: None };
    for task in ["continuation_code", "arithmetic_sums"] {
        let task = TaskConfig::load(&repo_root().join(format!("assets/tasks/{task}.yaml"))).unwrap();
        let on = |model: &LanguageModel, device: &Device| {
            let scorer = CheckpointModel { model: model.clone(), device: device.clone(), max_length: config.max_seq_len };
            evaluate_task(&task, &scorer, &tokenizer, &options).unwrap()
        };
        let (a, b) = (on(&cpu_model, &cpu()), on(&gpu_model, &gpu.device));
        for (x, y) in a.samples.iter().zip(&b.samples) {
            assert_eq!(x.generation, y.generation, "{}: document {}", task.name, x.doc_id);
            let diff = x.loglikelihoods.iter().zip(&y.loglikelihoods).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
            assert!(diff < 1e-3, "{}: document {}: log-likelihoods differ by {diff}", task.name, x.doc_id);
        }
        assert_eq!(a.scores, b.scores, "{}", task.name);
    }
    // A shared context's keys and values reused by a block of continuations: causal
    // attention offset by the cached positions (an explicit mask off the CPU kernel).
    let scorer = |model: &LanguageModel, device: &Device| CheckpointModel { model: model.clone(), device: device.clone(), max_length: config.max_seq_len };
    let (context, continuations): (Vec<u32>, Vec<Vec<u32>>) = ((300..340).collect(), vec![vec![5, 6, 7], vec![8], vec![9, 10, 11, 12, 13]]);
    let on_cpu = scorer(&cpu_model, &cpu()).shared_context_loglikelihoods(&context, &continuations).unwrap();
    let on_gpu = scorer(&gpu_model, &gpu.device).shared_context_loglikelihoods(&context, &continuations).unwrap();
    for (x, y) in on_cpu.iter().zip(&on_gpu) {
        assert!((x.0 - y.0).abs() < 1e-3 && x.1 == y.1, "shared context: CPU {x:?}, GPU {y:?}");
    }
}


/// Activation checkpointing on WGPU: the same losses and weights as without (a dense model
/// and a top-2 MoE, four steps each).
#[test]
fn wgpu_activation_checkpointing_changes_no_loss() {
    let Some((_turn, gpu)) = gpu("wgpu_activation_checkpointing_changes_no_loss") else { return };
    let dir = tempfile::tempdir().unwrap();
    let dense = four_small_steps(dir.path());
    let moe = TrainConfig { model: btx::config::ModelConfig { moe: Some(MoeConfig::new(4, 2, Routing::TopK)), ..dense.model.clone() }, ..dense.clone() };
    for (name, config) in [("dense", dense), ("moe", moe)] {
        let (plain, plain_weights) = crate::checkpointing::losses_and_weights(&config, &gpu, &dir.path().join(format!("{name}-plain")));
        let checkpointed = TrainConfig { activation_checkpointing: true, ..config };
        let (recomputed, recomputed_weights) = crate::checkpointing::losses_and_weights(&checkpointed, &gpu, &dir.path().join(format!("{name}-checkpointed")));
        let loss_diff = plain.iter().zip(&recomputed).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let weight_diff = max_weight_diff(&plain_weights, &recomputed_weights);
        eprintln!("  {name}: max |loss difference| {loss_diff:.2e}, max |weight difference| {weight_diff:.2e}");
        assert!(loss_diff < 1e-5 && weight_diff < 1e-5, "{name}: checkpointing changed losses by {loss_diff}, weights by {weight_diff}");
    }
}

/// Memory that stays flat on the GL adapter, whose buffers live in host memory, so the
/// process's resident memory shows them: a `btx train` run's peak after 200 steps (its own
/// per-step record, `peak_rss_mb`) is within 5% of its peak after 20.
#[test]
fn wgpu_peak_memory_after_200_steps_is_within_5_percent_of_the_peak_after_20() {
    let Some((_turn, _gpu)) = gpu("wgpu_peak_memory_after_200_steps_is_within_5_percent_of_the_peak_after_20") else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig { batch_size: 4, eval_batches: 1, checkpoint_every: 1000, ..tiny_train_config(dir.path(), 200) };
    let path = dir.path().join("train.ron");
    std::fs::write(&path, btx::config::to_ron(&config).unwrap()).unwrap();
    let out = dir.path().join("run");
    let (ok, stderr) = run_btx(&["train", "--config", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "wgpu", "--allow-software-gpu", "--no-progress"], dir.path());
    assert!(ok, "{stderr}");
    let steps = btx::train::metrics::read_steps(&out.join("metrics.jsonl")).unwrap();
    let peak_at = |step: usize| steps.iter().find(|s| s.step == step).and_then(|s| s.peak_rss_mb).unwrap();
    let (short, long) = (peak_at(20), peak_at(200));
    eprintln!("  peak resident memory after 20 steps {short:.0} MB, after 200 {long:.0} MB");
    assert!(long <= short * 1.05, "peak memory grew from {short} MB after 20 steps to {long} MB after 200");
}
