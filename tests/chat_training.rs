//! Instruction tuning: chat data prepared with its loss mask (and refused with the file and
//! line when it is wrong), the mask honoured by the gradient, frozen weights left
//! bit-identical, and Nile-Chat's recipe shape (recipes/nile-tiny.ron) run end to end.

use std::path::Path;

use btx::checkpoint::module_tensors::module_to_tensors;
use btx::checkpoint::{latest_checkpoint, load_model};
use btx::model::LanguageModel;
use btx::model::moe::RoutingContext;
use burn::prelude::*;

use crate::common::{cpu, repo_root, run_btx, tiny_model};

fn prepare_chat(dir: &Path, lines: &[&str], extra: &[&str]) -> (bool, String, std::path::PathBuf) {
    let input = dir.join("chat.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = dir.join("prepared");
    let tokenizer = repo_root().join("assets/chat/tokenizer.json");
    let mut args = vec!["data", "prepare", input.to_str().unwrap(), "--chat", "--out", out.to_str().unwrap(), "--val-docs", "1"];
    if !extra.contains(&"--tokenizer") {
        args.extend(["--tokenizer", tokenizer.to_str().unwrap()]);
    }
    args.extend(extra);
    let (ok, stderr) = run_btx(&args, dir);
    (ok, stderr, out)
}

const GOOD: &str = r#"{"messages": [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "1 + 2 = 3."}]}"#;
const SHAREGPT: &str = r#"{"conversations": [{"from": "human", "value": "Continue: bismi"}, {"from": "gpt", "value": "allahi"}]}"#;

#[test]
fn chat_data_is_prepared_with_a_mask_of_the_replies() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr, out) = prepare_chat(dir.path(), &[GOOD, SHAREGPT, GOOD], &[]);
    assert!(ok, "{stderr}");
    let meta = btx::data::prepared::PreparedMeta::read(&out).unwrap();
    let tokens = meta.train.tokens + meta.val.tokens;
    let mask: Vec<u8> = [std::fs::read(out.join("train.mask")).unwrap(), std::fs::read(out.join("val.mask")).unwrap()].concat();
    assert_eq!(mask.len() as u64, tokens);
    assert_eq!(mask.iter().map(|&m| m as u64).sum::<u64>(), meta.train.counted.unwrap() + meta.val.counted.unwrap());
    // The counted tokens decode to the replies and their end of turn, nothing else.
    let tokenizer = btx::data::tokenizer::load_tokenizer(&repo_root().join("assets/chat/tokenizer.json")).unwrap();
    let ids: Vec<u32> = [out.join("train.bin"), out.join("val.bin")].iter().flat_map(|f| std::fs::read(f).unwrap().chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect::<Vec<_>>()).collect();
    let counted: Vec<u32> = ids.iter().zip(&mask).filter(|(_, m)| **m == 1).map(|(i, _)| *i).collect();
    let text = btx::data::tokenizer::decode(&tokenizer, &counted).unwrap();
    let replies = ["1 + 2 = 3.<end_of_turn>\n", "allahi<end_of_turn>\n"];
    assert!(replies.iter().all(|r| text.contains(r)), "counted text {text:?}");
    assert_eq!(text.len(), 2 * replies[0].len() + replies[1].len(), "counted text {text:?}");
    assert!(!text.contains("What is") && !text.contains("<start_of_turn>"), "{text:?}");
    // inspect marks them.
    let shown = btx::data::inspect::inspect(&out, 200).unwrap();
    assert!(shown.contains("\u{27e6}1 + 2 = 3.<end_of_turn>\n\u{27e7}") && shown.contains("loss mask"), "{shown}");
    // --loss-on all: the same tokens, no mask.
    let all = dir.path().join("all");
    std::fs::create_dir(&all).unwrap();
    let (ok, stderr, out_all) = prepare_chat(&all, &[GOOD, SHAREGPT, GOOD], &["--loss-on", "all"]);
    assert!(ok, "{stderr}");
    assert!(!out_all.join("train.mask").exists());
    assert_eq!(std::fs::read(out_all.join("train.bin")).unwrap(), std::fs::read(out.join("train.bin")).unwrap());
}

#[test]
fn bad_chat_data_is_refused_with_its_file_and_line() {
    let cases: [(&[&str], &[&str], &str); 5] = [
        (&[GOOD, r#"{"messages": [{"role": "user", "content": "hi"}]}"#], &[], "chat.jsonl line 2: field `messages`: the conversation has no assistant turn"),
        (&[GOOD, r#"{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}"#], &[], "line 2: field `messages`, message 0: unknown role `wizard`"),
        (&[GOOD, r#"{"text": "plain prose"}"#], &[], "line 2: no field `messages` or `conversations`"),
        (&[r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}"#], &["--chat-template", "tests/fixtures/chat/templates/mistral.jinja"], "mistral.jinja: Conversation roles must alternate"),
        (&[GOOD], &["--tokenizer", "assets/tokenizer.json"], "tokenizer.json has no chat template"),
    ];
    for (lines, extra, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|a| if a.ends_with(".jinja") || a.ends_with(".json") || a.ends_with(".jsonl") { repo_root().join(a).display().to_string() } else { a.to_string() }).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (ok, stderr, out) = prepare_chat(dir.path(), lines, &extra);
        assert!(!ok && stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "a refused preparation left {}", out.display());
    }
    // A conversation given as plain text is named as one.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("chat.jsonl");
    std::fs::write(&input, format!("{GOOD}\n")).unwrap();
    let tokenizer = repo_root().join("assets/tokenizer.json");
    let (ok, stderr) = run_btx(&["data", "prepare", input.to_str().unwrap(), "--tokenizer", tokenizer.to_str().unwrap(), "--out", dir.path().join("o").to_str().unwrap()], dir.path());
    assert!(!ok && stderr.contains("it holds a conversation: prepare chat data with --chat"), "{stderr}");
    // A mask whose length differs from the tokens' is a damaged folder.
    let (ok, _, out) = prepare_chat(dir.path(), &[GOOD, SHAREGPT, GOOD], &[]);
    assert!(ok);
    let mask = out.join("train.mask");
    let mut bytes = std::fs::read(&mask).unwrap();
    bytes.pop();
    std::fs::write(&mask, bytes).unwrap();
    let err = btx::data::prepared::PreparedDomain::open(&out, 8, 20, None).err().unwrap().to_string();
    assert!(err.contains("train.mask") && err.contains("one byte per token"), "{err}");
}

/// The gradient of every parameter, by name.
fn gradients(model: &LanguageModel, inputs: &Tensor<2, Int>, targets: Vec<i64>, weights: &[f32]) -> Vec<(String, Vec<f32>)> {
    let device = inputs.device();
    let [b, s] = inputs.dims();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [b, s]), &device);
    let weights = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [b * s]), &device);
    let loss = model.weighted_training_loss(inputs.clone(), targets, weights, RoutingContext::default());
    let grads = burn::optim::GradientsParams::from_grads(loss.total().backward(), model);
    let tensors = module_to_tensors(model);
    let mut out = Vec::new();
    let mut visitor = GradVisitor { grads: &grads, out: &mut out };
    model.visit(&mut visitor);
    assert_eq!(out.len(), tensors.len());
    out
}

struct GradVisitor<'a> {
    grads: &'a burn::optim::GradientsParams,
    out: &'a mut Vec<(String, Vec<f32>)>,
}

impl burn::module::ModuleVisitor for GradVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let grad = self.grads.get::<D>(param.id).map(|g| g.into_data().try_to_vec::<f32>().unwrap()).unwrap_or_default();
        self.out.push((format!("{:?}", param.id), grad));
    }
}

#[test]
fn a_masked_target_gets_no_gradient() {
    let device = cpu().autodiff();
    let config = tiny_model(4, 2);
    let model = LanguageModel::seeded(&config, 3, &device);
    let (b, s) = (2, 8);
    let inputs = crate::common::random_tokens(b, s, config.vocab_size, 5, &device);
    let targets: Vec<i64> = (0..b * s).map(|i| ((i * 7 + 1) % config.vocab_size) as i64).collect();
    // Tokens 0..3 of each row are the prompt: weight 0; the rest counted.
    let weights: Vec<f32> = (0..b * s).map(|i| if i % s < 3 { 0.0 } else { 0.1 }).collect();
    let base = gradients(&model, &inputs, targets.clone(), &weights);
    let mut masked = targets.clone();
    masked[1] = (masked[1] + 5) % config.vocab_size as i64;
    masked[s + 2] = (masked[s + 2] + 9) % config.vocab_size as i64;
    assert_eq!(gradients(&model, &inputs, masked, &weights), base, "changing a masked target changed a gradient");
    let mut counted = targets;
    counted[5] = (counted[5] + 5) % config.vocab_size as i64;
    assert_ne!(gradients(&model, &inputs, counted, &weights), base, "changing a counted target left the gradients as they were");
}

/// recipes/nile-tiny.ron with every stage a few steps long.
fn nile_tiny_shrunk() -> String {
    let text = std::fs::read_to_string(repo_root().join("recipes/nile-tiny.ron")).unwrap();
    let re = regex::Regex::new(r"steps: \d+").unwrap();
    re.replace_all(&text, "steps: 3").replace("batch_size: 16", "batch_size: 4").replace("eval: (batches: 6, arithmetic_problems: 30)", "eval: (batches: 1, arithmetic_problems: 2)")
}

#[test]
fn nile_tiny_runs_and_a_router_only_finetune_keeps_every_other_weight() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("nile.ron");
    std::fs::write(&recipe, nile_tiny_shrunk()).unwrap();
    let out = dir.path().join("run");
    let (ok, stderr) = run_btx(&["recipe", "run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"], &repo_root());
    assert!(ok, "{stderr}");
    for stage in ["phases/arabic/0", "experts/arabic", "phases/latin/0", "experts/latin", "generalist", "finetune/btx", "finetune/btx-all", "dense"] {
        assert!(stderr.contains(&format!("[{stage}] done")), "{stage} did not run:\n{stderr}");
    }
    let weights = |run: &Path| {
        let ckpt = latest_checkpoint(run).unwrap_or_else(|| run.to_path_buf());
        module_to_tensors(&load_model(&ckpt, &cpu()).unwrap().1)
    };
    let merged = weights(&out.join("merges/btx"));
    let routers_only = weights(&out.join("finetune/btx"));
    let full = weights(&out.join("finetune/btx-all"));
    let mut routers_moved = 0;
    for (name, before) in &merged {
        let is_router = btx::checkpoint::tensor_names::is_router(name);
        if is_router {
            routers_moved += usize::from(routers_only[name].values != before.values);
        } else {
            assert!(routers_only[name].values == before.values, "{name} moved in a router-only finetune");
        }
    }
    assert!(routers_moved > 0, "no router trained");
    assert!(merged.iter().any(|(name, t)| !btx::checkpoint::tensor_names::is_router(name) && full[name].values != t.values), "the full finetune froze everything");
    // Chat generation renders the template with the assistant's turn opened, and stops at
    // its end of turn.
    let model = out.join("finetune/btx");
    let stdout = std::process::Command::new(env!("CARGO_BIN_EXE_btx"))
        .args(["generate", model.to_str().unwrap(), "--chat", "What is 1 + 2?", "--system", "Be brief.", "--temperature", "0", "--max-tokens", "12", "--json"])
        .current_dir(repo_root())
        .output()
        .unwrap()
        .stdout;
    let events: Vec<serde_json::Value> = String::from_utf8(stdout).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).filter(|v: &serde_json::Value| v.get("prompt").is_some()).collect();
    let prompt: String = events.iter().filter(|e| e["prompt"] == true).map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(prompt, "<bos><start_of_turn>user\nBe brief.\n\nWhat is 1 + 2?<end_of_turn>\n<start_of_turn>model\n");
    let generated: Vec<&str> = events.iter().filter(|e| e["prompt"] == false).map(|e| e["text"].as_str().unwrap()).collect();
    if let Some(end) = generated.iter().position(|t| *t == "<end_of_turn>") {
        assert_eq!(end + 1, generated.len(), "tokens generated after the end of turn: {generated:?}");
    }
    // The MoE's generalist expert (the last) is the generalist stage's FFN, not the seed's.
    let generalist = weights(&out.join("generalist"));
    let ffn = &generalist["model.layers.0.mlp.gate_proj.weight"].values;
    assert!(&merged["model.layers.0.block_sparse_moe.experts.2.w1.weight"].values == ffn);
    assert!(&weights(&out.join("seed"))["model.layers.0.mlp.gate_proj.weight"].values != ffn);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("expert generalist") && report.contains("btx-all") && report.contains("dense"), "{report}");
}
