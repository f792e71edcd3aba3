//! Generation: the KV-cached forward equals the full forward at every position (dense, and
//! MoE under every routing mode at inference); greedy decoding of the imported fixtures
//! equals transformers' `generate`; a seed reproduces the text; the BTM ensemble of
//! identical experts keeps its prior and generates what one of them does; bad input is a
//! clear error.

use btx::config::ModelConfig;
use btx::generate::{SamplingOptions, TokenEvent, generate, generate_ensemble};
use btx::model::LanguageModel;
use btx::model::lm::KvCache;
use btx::model::moe_config::{MoeConfig, Routing};

use crate::common::*;

fn greedy(max_tokens: usize) -> SamplingOptions {
    SamplingOptions { max_tokens, temperature: 0.0, top_k: None, top_p: None, seed: 0, stop: None }
}

fn generated_ids(model: &LanguageModel, prompt: &[u32], options: &SamplingOptions) -> Vec<u32> {
    let mut ids = vec![];
    generate(model, prompt, options, &cpu(), |e: &TokenEvent| {
        if !e.prompt {
            ids.push(e.id);
        }
        Ok(())
    })
    .unwrap();
    ids
}

#[test]
fn cached_logits_equal_the_full_forward_dense_and_every_routing() {
    let device = cpu();
    let routings = [
        None,
        Some(MoeConfig::new(4, 2, Routing::TopK)),
        Some(MoeConfig::new(4, 1, Routing::Switch { capacity_factor: 4.0 })),
        Some(MoeConfig::new(4, 1, Routing::Soft)),
        Some(MoeConfig::new(4, 1, Routing::SampleTop1 { tau_min: 0.5, tau_decay: 1e-3, first_layer_soft: true })),
    ];
    // The attention options of Qwen2 (q/k/v biases), Qwen3 (q/k norms, wide heads) and
    // Llama 3 (RoPE scaling), Gemma 3 and Gemma 2 (a window shorter than the sequence, soft
    // caps), dense and under top-2 routing.
    let families = [
        gemma3_model(),
        gemma2_model(),
        ModelConfig { attention_bias: true, ..tiny_model(4, 2) },
        ModelConfig { qk_norm: true, head_dim: Some(16), ..tiny_model(4, 2) },
        ModelConfig { rope_scaling: Some(btx::model::rope::RopeScaling::Llama3 { factor: 4.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8 }), ..tiny_model(4, 2) },
    ];
    let configs = routings
        .into_iter()
        .map(|moe| ModelConfig { moe, ..tiny_model(4, 2) })
        .chain(families.iter().flat_map(|f| [f.clone(), ModelConfig { moe: Some(MoeConfig::new(4, 2, Routing::TopK)), ..f.clone() }]))
        // MixtureKit's BTX: a router per FFN projection.
        .chain([ModelConfig {
            moe: Some(MoeConfig { routed_projections: btx::model::moe_config::RoutedProjection::ALL.to_vec(), ..MoeConfig::new(4, 2, Routing::TopK) }),
            ..gemma3_model()
        }]);
    for config in configs {
        let moe = config.moe.clone();
        let model = LanguageModel::seeded(&config, 4, &device);
        let tokens = random_tokens(1, 12, 4096, 9, &device);
        let full = to_vec(model.forward(tokens.clone()));
        // The first 5 positions at once (the prompt), then one at a time.
        let mut cache = KvCache::default();
        let mut cached = to_vec(model.forward_cached(tokens.clone().narrow(1, 0, 5), &mut cache).0);
        for t in 5..12 {
            cached.extend(to_vec(model.forward_cached(tokens.clone().narrow(1, t, 1), &mut cache).0));
        }
        assert_eq!(cache.len, 12);
        let diff = max_abs_diff(&full, &cached);
        assert!(diff < 1e-4, "{:?}: cached logits differ by {diff}", moe.map(|m| m.routing));
    }
}

#[test]
fn greedy_generation_of_imported_fixtures_equals_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["llama", "mixtral"] {
        let fixture = repo_root().join("tests/fixtures/hf").join(name);
        let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("greedy.json")).unwrap()).unwrap();
        let prompt: Vec<u32> = serde_json::from_value(reference["prompt"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(reference["generated"].clone()).unwrap();
        let ckpt = dir.path().join(name);
        btx::hf::import_hf(&fixture, &ckpt).unwrap();
        let (_, model) = btx::checkpoint::load_model(&ckpt, &cpu()).unwrap();
        assert_eq!(generated_ids(&model, &prompt, &greedy(want.len())), want, "{name}");
    }
}

#[test]
fn a_seed_reproduces_the_sampled_text() {
    let model = LanguageModel::seeded(&tiny_model(4, 2), 8, &cpu());
    let sample = |seed| SamplingOptions { max_tokens: 20, temperature: 1.0, top_k: Some(50), top_p: Some(0.9), seed, stop: None };
    let a = generated_ids(&model, &[1, 2, 3], &sample(1));
    assert_eq!(a, generated_ids(&model, &[1, 2, 3], &sample(1)));
    assert_ne!(a, generated_ids(&model, &[1, 2, 3], &sample(2)), "two seeds gave the same 20 tokens");
    assert!(a.iter().all(|&t| t < 4096));
}

#[test]
fn an_ensemble_of_identical_experts_keeps_its_prior_and_generates_as_one() {
    let model = LanguageModel::seeded(&tiny_model(4, 2), 8, &cpu());
    let want = generated_ids(&model, &[4, 5, 6], &greedy(10));
    let experts = vec![model.clone(), model.clone(), model];
    let (mut ids, mut posteriors) = (vec![], vec![]);
    generate_ensemble(&experts, &[0.5, 0.3, 0.2], &[4, 5, 6], &greedy(10), &cpu(), |e| {
        if !e.prompt {
            ids.push(e.id);
        }
        posteriors.push(e.posterior.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(ids, want);
    for p in posteriors {
        assert!(max_abs_diff(&p.iter().map(|&x| x as f32).collect::<Vec<_>>(), &[0.5, 0.3, 0.2]) < 1e-5, "{p:?}");
    }
}

#[test]
fn bad_generation_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_model(4, 2);
    let path = dir.path().join("ckpt");
    std::fs::create_dir_all(&path).unwrap();
    btx::checkpoint::write_model_files(&path, &LanguageModel::seeded(&config, 1, &cpu()), &config).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--prompt", "hello"], "records no tokenizer"),
        (&["--prompt-ids", "1,99999"], "not in the vocabulary"),
        (&["--prompt-ids", "1,2", "--max-tokens", "100"], "max_seq_len"),
        (&["--prompt-ids", "1", "--max-tokens", "5", "--top-p", "1.5"], "--top-p"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["generate", "ckpt", "--device", "cpu"];
        all.extend_from_slice(args);
        let (ok, stderr) = run_btx(&all, dir.path());
        assert!(!ok && stderr.contains(expected) && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let (ok, stderr) = run_btx(&["generate", "ckpt", "--prompt-ids", "1,2,3", "--max-tokens", "5", "--temperature", "0", "--device", "cpu"], dir.path());
    assert!(ok, "{stderr}");
    assert!(stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn an_empty_prompt_is_refused() {
    let e = btx::generate::check_prompt(&[], &greedy(4), 4096, 64).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}
