//! Shared fixtures: a tiny model config, a small corpus, and training configs over it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use btx::burn::prelude::*;
use btx::checkpoint::{load_model, write_model_files, write_tensor_checkpoint};
use btx::config::ModelConfig;
use btx::merge::MergeInput;
use btx::model::LanguageModel;
use btx::data::{DataConfig, DomainConfig, Source};
use btx::data::synthetic::ArithmeticConfig;
use btx::train::{OptimizerConfig, TrainConfig};

/// The repository: where the test binary was built, unless BTX_REPO_ROOT says otherwise (a
/// test binary carried to another machine, as bench/device/run.sh does).
pub fn repo_root() -> PathBuf {
    match std::env::var_os("BTX_REPO_ROOT") {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf(),
    }
}

pub fn cpu() -> Device {
    Device::flex()
}

pub fn tiny_model(n_heads: usize, n_kv_heads: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: 4096,
        d_model: 32,
        n_layers: 2,
        n_heads,
        n_kv_heads: Some(n_kv_heads),
        d_ff: 64,
        max_seq_len: 64,
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
    }
}

/// A small slice of a shipped corpus, written into `dir`.
pub fn small_corpus(dir: &Path, name: &str, bytes: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("assets/corpora").join(name)).unwrap();
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let path = dir.join(name);
    std::fs::write(&path, &text[..end]).unwrap();
    path
}

/// A training config over two small real domains and the synthetic one.
pub fn tiny_train_config(dir: &Path, steps: usize) -> TrainConfig {
    TrainConfig {
        model: tiny_model(4, 2),
        data: DataConfig {
            tokenizer: repo_root().join("assets/tokenizer.json"),
            seq_len: 32,
            domains: vec![
                DomainConfig { name: "english".into(), source: Source::File(small_corpus(dir, "english.txt", 40_000)), weight: 1.0 },
                DomainConfig { name: "code".into(), source: Source::File(small_corpus(dir, "code.txt", 40_000)), weight: 1.0 },
                DomainConfig {
                    name: "arithmetic".into(),
                    source: Source::Arithmetic(ArithmeticConfig { max_digits: 2, lines: 3000, seed: 0 }),
                    weight: 1.0,
                },
            ],
            val_every: 10,
            val_fraction: 0.01,
        },
        optimizer: OptimizerConfig {
            lr: 1e-2,
            warmup_steps: 5,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            router_lr_multiplier: 1.0,
            shared_lr_multiplier: 1.0,
        },
        steps,
        batch_size: 8,
        grad_accum: 1,
        seed: 7,
        checkpoint_every: 1000,
        eval_every: 0,
        eval_batches: 2,
        init_from: None,
        trainable: None,
        keep_last: 2,
        keep_every: None,
        spike_guard: Default::default(),
        precision: Default::default(),
        initial_loss_scale: None,
        lora: None,
        activation_checkpointing: false,
        frozen_precision: Default::default(),
    }
}

/// The CPU backend as the trainer takes it.
pub fn cpu_selected() -> btx::device::SelectedDevice {
    btx::device::SelectedDevice { device: cpu(), description: "cpu (test)".into() }
}

/// Random token ids `[batch, seq]` below `vocab`.
pub fn random_tokens(batch: usize, seq: usize, vocab: usize, seed: u64, device: &Device) -> Tensor<2, Int> {
    let mut rng = btx::data::rng::Rng::new(seed);
    let ids: Vec<i64> = (0..batch * seq).map(|_| rng.below(vocab as u64) as i64).collect();
    Tensor::from_data(TensorData::new(ids, [batch, seq]), device)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Runs the `btx` binary; returns (success, stderr).
pub fn run_btx(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_btx"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("btx runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn seed_checkpoint(dir: &std::path::Path, name: &str, seed: u64) -> MergeInput {
    seed_checkpoint_of(dir, name, seed, &tiny_model(4, 2))
}

/// A seeded checkpoint of `config`. Its RMSNorm gains (1 at initialisation) and biases (0)
/// are drawn too, so that a merge that mixes them up cannot go unseen.
pub fn seed_checkpoint_of(dir: &std::path::Path, name: &str, seed: u64, config: &ModelConfig) -> MergeInput {
    let device = cpu();
    let model = LanguageModel::seeded(config, seed, &device);
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    write_model_files(&path, &model, config).unwrap();
    let file = path.join("model.safetensors");
    let mut tensors = btx::checkpoint::tensor_file::read_tensors(&file).unwrap();
    for (i, (name, tensor)) in tensors.iter_mut().enumerate() {
        if tensor.shape.len() == 1 {
            let centre = if name.ends_with("norm.weight") { 1.0 } else { 0.0 };
            for (j, v) in tensor.values.iter_mut().enumerate() {
                *v = centre + 0.3 * (((seed as usize * 7919 + i * 104_729 + j * 31) % 1000) as f32 / 1000.0 - 0.5);
            }
        }
    }
    write_tensor_checkpoint(&path, config, &tensors, &[]).unwrap();
    MergeInput::load(&path).unwrap()
}

/// The attention of each family the engine imports: Llama's, Qwen2's (q/k/v biases),
/// Qwen3's (per-head q/k norms, heads wider than d_model / n_heads) and Gemma's.
pub fn attention_families() -> Vec<(&'static str, ModelConfig)> {
    vec![
        ("Llama", tiny_model(4, 2)),
        ("Qwen2", ModelConfig { attention_bias: true, ..tiny_model(4, 2) }),
        ("Qwen3", ModelConfig { qk_norm: true, head_dim: Some(16), ..tiny_model(4, 2) }),
        ("Gemma3", gemma3_model()),
        ("Gemma2", gemma2_model()),
    ]
}

/// A tiny Gemma 3: q/k norms, wide heads, a local layer whose window (4) is shorter than the
/// tests' sequences with its own RoPE base, a global layer with linear RoPE scaling, a score
/// scale apart from head_dim's, tied embeddings.
pub fn gemma3_model() -> ModelConfig {
    ModelConfig {
        qk_norm: true,
        head_dim: Some(16),
        tie_embeddings: true,
        rope_scaling: Some(btx::model::rope::RopeScaling::Linear { factor: 8.0 }),
        gemma: Some(btx::model::gemma::GemmaOptions {
            query_pre_attn_scalar: 24.0,
            sliding_window: Some(4),
            full_attention_layers: vec![1],
            local_rope_theta: Some(1000.0),
            final_logit_softcap: None,
            attn_logit_softcap: None,
        }),
        ..tiny_model(4, 2)
    }
}

/// A tiny Gemma 2: Gemma 3 without q/k norms and local RoPE base, with soft caps on the
/// scores and the logits.
pub fn gemma2_model() -> ModelConfig {
    let mut config = ModelConfig { qk_norm: false, head_dim: None, rope_scaling: None, ..gemma3_model() };
    let gemma = config.gemma.as_mut().unwrap();
    (gemma.local_rope_theta, gemma.final_logit_softcap, gemma.attn_logit_softcap) = (None, Some(3.0), Some(5.0));
    config
}

/// A seed checkpoint whose tensors `edit` changed (written as they are, unchecked).
pub fn edited_checkpoint(dir: &std::path::Path, name: &str, edit: impl FnOnce(&mut btx::checkpoint::tensor_file::TensorMap)) -> MergeInput {
    let original = seed_checkpoint(dir, name, 2);
    let mut tensors = btx::checkpoint::tensor_file::read_tensors(&original.path.join("model.safetensors")).unwrap();
    edit(&mut tensors);
    let edited = dir.join(format!("{name}-edited"));
    write_tensor_checkpoint(&edited, &original.config, &tensors, &[]).unwrap();
    MergeInput::load(&edited).unwrap()
}

/// Logits of a checkpoint written from `tensors`.
pub fn logits_of(dir: &std::path::Path, config: &btx::config::ModelConfig, tensors: &btx::checkpoint::tensor_file::TensorMap) -> Vec<f32> {
    let path = dir.join(format!("merged-{}", rand_name(tensors.len())));
    write_tensor_checkpoint(&path, config, tensors, &[]).unwrap();
    let device = cpu();
    let (_, model) = load_model(&path, &device).unwrap();
    to_vec(model.forward(random_tokens(2, 16, 4096, 77, &device)))
}

pub fn rand_name(n: usize) -> String {
    format!("{n}-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

pub fn seed_logits(input: &MergeInput) -> Vec<f32> {
    let device = cpu();
    let (_, model) = load_model(&input.path, &device).unwrap();
    to_vec(model.forward(random_tokens(2, 16, 4096, 77, &device)))
}

/// A JSON file's value.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The (tokens, logits) a fixture folder's logits.json records: what the tool that made it
/// (transformers, MixtureKit) computed.
pub fn recorded_logits(fixture: &Path) -> (Vec<i64>, Vec<f32>) {
    let json = read_json(&fixture.join("logits.json"));
    let tokens = json["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    let logits = json["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
    (tokens, logits)
}

/// A checkpoint's logits for one sequence of `tokens`, on the CPU.
pub fn checkpoint_logits(ckpt: &Path, tokens: &[i64]) -> Vec<f32> {
    let device = cpu();
    let (_, model) = load_model(ckpt, &device).unwrap();
    let input = Tensor::<2, Int>::from_data(TensorData::new(tokens.to_vec(), [1, tokens.len()]), &device);
    to_vec(model.forward(input))
}

/// A run folder's last checkpoint and the weights it holds.
pub fn last_checkpoint(run: &Path) -> (PathBuf, btx::checkpoint::tensor_file::TensorMap) {
    let (_, last) = btx::checkpoint::checkpoint_steps(run).into_iter().max().expect("the run wrote a checkpoint");
    let tensors = btx::checkpoint::tensor_file::read_tensors(&last.join(btx::checkpoint::MODEL_FILE)).unwrap();
    (last, tensors)
}

/// `config` trained in `dir/resumed` for `stop_after` steps, then resumed to its end: its last
/// weights must be `want` (an uninterrupted run's), tensor for tensor.
pub fn assert_a_resumed_run_ends_with(config: &TrainConfig, dir: &Path, stop_after: usize, want: &btx::checkpoint::tensor_file::TensorMap) {
    let resumed = dir.join("resumed");
    let options = |resume, stop_after| btx::train::TrainOptions { out: resumed.clone(), resume, progress: false, stop_after };
    btx::train::train(config, "test", &cpu_selected(), &options(false, Some(stop_after))).unwrap();
    btx::train::train(config, "test", &cpu_selected(), &options(true, None)).unwrap();
    let (_, resumed_tensors) = last_checkpoint(&resumed);
    for (name, host) in want {
        assert_eq!(host.values, resumed_tensors[name].values, "`{name}` differs after resuming");
    }
}
