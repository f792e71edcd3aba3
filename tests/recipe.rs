//! Recipes end to end through the `btx` binary: a rerun skips finished stages (read from the
//! manifests), adding or changing an expert reruns only what depends on it, a run killed
//! during an expert stage finishes with the result of one never stopped, and bad recipes are
//! errors with the field named.

use std::path::Path;
use std::process::Command;

use btx::checkpoint::module_tensors::module_to_tensors;
use btx::checkpoint::{latest_checkpoint, load_model};

use crate::common::*;

pub(crate) fn recipe_text(dir: &Path, experts: &[(&str, &str)], expert_steps: usize) -> String {
    let english = small_corpus(dir, "english.txt", 30_000);
    let code = small_corpus(dir, "code.txt", 30_000);
    let tokenizer = repo_root().join("assets/tokenizer.json");
    let experts: Vec<String> = experts
        .iter()
        .map(|(name, domain)| format!("(name: \"{name}\", data: [(\"{domain}\", 1.0)], steps: {expert_steps})"))
        .collect();
    format!(
        r#"(
    model: (vocab_size: 4096, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ff: 64, max_seq_len: 64),
    tokenizer: "{tokenizer}",
    seq_len: 32,
    val_every: 10,
    domains: [
        (name: "english", source: File("{english}")),
        (name: "code", source: File("{code}")),
        (name: "arithmetic", source: Arithmetic((max_digits: 2, lines: 2000))),
    ],
    optimizer: (lr: 1e-2, warmup_steps: 3),
    batch_size: 4,
    seed: 3,
    seed_model: Train(steps: 12, mixture: [("english", 1.0), ("code", 1.0), ("arithmetic", 1.0)]),
    experts: [{experts}],
    merges: [
        (name: "btx", method: Btx),
        (name: "upcycle", method: Upcycle(experts: 2)),
        (name: "average", method: Average),
        (name: "ensemble", method: Ensemble(top_k: None)),
        (name: "switch", method: Btx, moe: Some((top_k: 1, routing: Switch(capacity_factor: 0.5)))),
    ],
    finetune: (steps: 6),
    dense_baseline: true,
    data_matched_baseline: true,
    diagnose_merge: true,
    eval: (batches: 1, arithmetic_problems: 2, ensemble_prior_sequences: 2, ensemble_sequences: 4),
)"#,
        tokenizer = tokenizer.display(),
        english = english.display(),
        code = code.display(),
        experts = experts.join(", ")
    )
}

pub(crate) fn run_recipe(dir: &Path, text: &str, out: &Path) -> (bool, String) {
    let path = dir.join("recipe.ron");
    std::fs::write(&path, text).unwrap();
    run_btx(&["recipe", "run", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"], dir)
}

pub(crate) fn ran(stderr: &str) -> Vec<String> {
    stderr.lines().filter_map(|l| l.strip_suffix("] running").map(|s| s.trim_start_matches('[').to_string())).collect()
}

fn skipped(stderr: &str) -> Vec<String> {
    stderr.lines().filter_map(|l| l.strip_suffix("] up to date, skipped").map(|s| s.trim_start_matches('[').to_string())).collect()
}

fn weights(run: &Path) -> btx::checkpoint::tensor_file::TensorMap {
    let ckpt = latest_checkpoint(run).unwrap_or_else(|| run.to_path_buf());
    module_to_tensors(&load_model(&ckpt, &cpu()).unwrap().1)
}

/// Every recipe kind's figures exist, decode as PNGs of the size report.json states, and
/// carry their text: the recipe's stage, model, domain and expert names.
fn check_figures(out: &Path) {
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let figures = report["figures"].as_array().unwrap();
    let texts_of = |file: &str| -> Vec<String> {
        let f = figures.iter().find(|f| f["file"] == file).unwrap_or_else(|| panic!("no figure {file}: {figures:?}"));
        let decoded = image::load_from_memory(&std::fs::read(out.join(file)).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!((decoded.width() as u64, decoded.height() as u64), (f["width"].as_u64().unwrap(), f["height"].as_u64().unwrap()), "{file}");
        // Drawn, not blank: many distinct colours.
        let colours: std::collections::HashSet<[u8; 3]> = decoded.to_rgb8().pixels().map(|p| p.0).collect();
        assert!(colours.len() > 20, "{file} has {} colours", colours.len());
        serde_json::from_value(f["texts"].clone()).unwrap()
    };
    let has = |file: &str, wanted: &[&str]| {
        let texts = texts_of(file);
        for w in wanted {
            assert!(texts.iter().any(|t| t == w), "{file} lacks the text {w:?}: {texts:?}");
        }
    };
    has("loss_curves.png", &["seed", "experts/en", "experts/code", "finetune/btx", "finetune/upcycle", "dense"]);
    has("pipeline.png", &["seed", "experts/en", "finetune/btx", "dense", "btx", "upcycle"]);
    has("summary.png", &["btx", "upcycle", "average", "ensemble", "dense", "english", "code", "arithmetic"]);
    has("routing_btx.png", &["en", "code", "generalist", "english", "arithmetic", "layer"]);
    has("routing_upcycle.png", &["copy 0", "copy 1"]);
    has("routing_ensemble.png", &["en", "code", "cached prior"]);
}

#[test]
fn a_rerun_skips_finished_stages_and_a_new_or_changed_expert_reruns_only_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let two = recipe_text(dir.path(), &[("en", "english"), ("code", "code")], 8);
    let (ok, stderr) = run_recipe(dir.path(), &two, &out);
    assert!(ok, "{stderr}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for model in ["seed", "expert en", "btx (before finetune)", "| btx |", "upcycle", "average", "ensemble", "dense"] {
        assert!(report.contains(model), "report lacks {model}:\n{report}");
    }
    check_figures(&out);
    // The data-matched baseline sees what BTX saw after the seed: english 8 + 6/3 steps,
    // code 8 + 2, arithmetic 2, at 4 x 32 tokens a step.
    assert!(report.contains("**dense (data-matched)**: the seed continued on the same tokens per domain as the BTX model saw after the seed (experts and finetune): english 1280 tokens, code 1280 tokens, arithmetic 256 tokens."), "{report}");
    let diagnosis = report.split("## Merge diagnosis").nth(1).unwrap_or_else(|| panic!("no diagnosis:\n{report}"));
    for member in ["| en | english |", "| code | code |", "| generalist | mean |"] {
        assert!(diagnosis.contains(member), "diagnosis lacks {member}:\n{diagnosis}");
    }
    // The accounting: on each expert's domain, BTX - dense = -prize + averaging cost +
    // routing cost - finetune gain (each cell rounded to 3 decimals).
    let accounting = report.split("## Where the gains go").nth(1).unwrap_or_else(|| panic!("no accounting:\n{report}"));
    for expert in ["| en | english |", "| code | code |"] {
        let row = accounting.lines().find(|l| l.starts_with(expert)).unwrap_or_else(|| panic!("no {expert}:\n{accounting}"));
        let t: Vec<f64> = row.split('|').filter_map(|c| c.trim().parse().ok()).collect();
        assert_eq!(t.len(), 5, "{row}");
        assert!((-t[0] + t[1] + t[2] - t[3] - t[4]).abs() < 0.003, "the terms do not add up: {row}");
    }
    // Routing sharpness of the BTX merge (3 experts, top-2): per layer before and after the
    // finetune, own-expert shares in [0, 1] and entropies up to ln 3.
    let sharpness = report.split("## Routing sharpness").nth(1).unwrap_or_else(|| panic!("no sharpness:\n{report}"));
    let btx_table = sharpness.split("`btx` (3 experts, top-2").nth(1).unwrap_or_else(|| panic!("{sharpness}"));
    let rows: Vec<Vec<f64>> = btx_table.lines().skip_while(|l| !l.starts_with("| 0 |")).take_while(|l| l.starts_with('|')).map(|l| l.split('|').filter_map(|c| c.trim().parse().ok()).collect()).collect();
    assert_eq!(rows.len(), 4, "{btx_table}"); // 2 layers x (before, after)
    for r in &rows {
        assert!(r.len() == 4 && r[1..3].iter().all(|s| (0.0..=1.0).contains(s)) && r[3] > 0.0 && r[3] <= 3f64.ln() + 0.01, "{r:?}");
    }
    // Each training stage's peak learning rate (the finetune's routers at the default 30x).
    assert!(report.contains("| experts/en | 1.0e-2 |") && report.contains("| finetune/btx | 1.0e-2 (routers x30) |"), "{report}");
    let dense_data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("dense-data/manifest.json")).unwrap()).unwrap();
    assert_eq!(dense_data["tokens"], 22 * 128);
    // Switch at capacity 0.5 drops half the assignments or more: the report says how many.
    let drops = report.split("Tokens dropped for expert capacity").nth(1).unwrap_or_else(|| panic!("no drop table:\n{report}"));
    let row = drops.lines().find(|l| l.starts_with("| switch |")).unwrap_or_else(|| panic!("no switch row:\n{drops}"));
    let cells: Vec<f64> = row.split('|').filter_map(|c| c.trim().strip_suffix('%')?.parse().ok()).collect();
    assert!(cells.len() == 2 && cells.iter().all(|&d| d >= 40.0), "{row}");

    // Again: every stage is read from its manifest and skipped.
    let (ok, stderr) = run_recipe(dir.path(), &two, &out);
    assert!(ok, "{stderr}");
    assert!(ran(&stderr).is_empty(), "ran again: {:?}", ran(&stderr));
    assert!(skipped(&stderr).contains(&"experts/en".to_string()));

    // A third expert: only it, the merges of the experts, and what follows run.
    let three = recipe_text(dir.path(), &[("en", "english"), ("code", "code"), ("arith", "arithmetic")], 8);
    let (ok, stderr) = run_recipe(dir.path(), &three, &out);
    assert!(ok, "{stderr}");
    let r = ran(&stderr);
    assert!(r.contains(&"experts/arith".to_string()), "{r:?}");
    for kept in ["seed", "experts/en", "experts/code", "merges/upcycle", "finetune/upcycle", "eval/seed"] {
        assert!(!r.contains(&kept.to_string()), "{kept} reran: {r:?}");
    }
    for rerun in ["merges/btx", "merges/average", "finetune/btx", "eval/btx"] {
        assert!(r.contains(&rerun.to_string()), "{rerun} did not rerun: {r:?}");
    }

    // Changing one expert's data retrains that expert (and its dependents), not the others.
    let changed = three.replace(r#"(name: "code", data: [("code", 1.0)]"#, r#"(name: "code", data: [("code", 1.0), ("english", 0.5)]"#);
    assert_ne!(changed, three);
    let (ok, stderr) = run_recipe(dir.path(), &changed, &out);
    assert!(ok, "{stderr}");
    let r = ran(&stderr);
    assert!(r.contains(&"experts/code".to_string()) && r.contains(&"merges/btx".to_string()), "{r:?}");
    assert!(!r.contains(&"experts/en".to_string()) && !r.contains(&"experts/arith".to_string()), "{r:?}");
}

#[test]
fn a_recipe_killed_during_an_expert_stage_finishes_like_one_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // 200 steps: the expert checkpoints every 50, and is killed soon after the first.
    let text = recipe_text(dir.path(), &[("en", "english")], 200);
    let straight = dir.path().join("straight");
    let (ok, stderr) = run_recipe(dir.path(), &text, &straight);
    assert!(ok, "{stderr}");

    let killed = dir.path().join("killed");
    let path = dir.path().join("recipe.ron");
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(env!("CARGO_BIN_EXE_btx"))
            .args(["recipe", "run", path.to_str().unwrap(), "--out", killed.to_str().unwrap(), "--device", "cpu"])
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    // Wait for the expert's first checkpoint, then kill the runner and its stage process.
    let expert = killed.join("experts/en");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while latest_checkpoint(&expert).is_none() {
        assert!(std::time::Instant::now() < deadline, "the expert never checkpointed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The shell's own `kill` signals the whole process group.
    let killed_ok = Command::new("sh").args(["-c", &format!("kill -s KILL -- -{}", child.id())]).status().unwrap();
    assert!(killed_ok.success());
    let _ = child.wait();
    assert!(!expert.join("manifest.json").exists(), "the expert finished before the kill");

    let (ok, stderr) = run_recipe(dir.path(), &text, &killed);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("[experts/en] resuming"), "{stderr}");
    let log = std::fs::read_to_string(expert.join("log.txt")).unwrap();
    assert!(log.contains("resuming"), "the expert started over:\n{log}");
    for stage in ["experts/en", "finetune/btx"] {
        let (a, b) = (weights(&straight.join(stage)), weights(&killed.join(stage)));
        for (name, t) in &a {
            let diff = max_abs_diff(&t.values, &b[name].values);
            assert!(diff <= 1e-6, "{stage}: {name} differs by {diff}");
        }
    }
}

pub(crate) fn recipe_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr) = run_recipe(dir.path(), text, &dir.path().join("run"));
    assert!(!ok, "a bad recipe ran");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn recipe_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = recipe_text(dir.path(), &[("en", "english")], 4);

    let e = recipe_error(&good.replace("keep_seed", "keep_sed").replace("    merges:", "    keep_sed: true,\n    merges:"));
    assert!(e.contains("keep_sed") && e.contains("line "), "{e}");

    let e = recipe_error(&good.replace(r#"data: [("english", 1.0)]"#, r#"data: [("klingon", 1.0)]"#));
    assert!(e.contains("experts[0].data") && e.contains("klingon"), "{e}");

    let e = recipe_error(&good.replace("optimizer: (lr: 1e-2", "moe: (top_k: 3),\n    optimizer: (lr: 1e-2"));
    assert!(e.contains("top_k"), "{e}");

    let e = recipe_error(&good.replace("ensemble_sequences: 4)", "ensemble_sequences: 4, tasks: [\"no/such/task.yaml\"])"));
    assert!(e.contains("eval.tasks") && e.contains("no/such/task.yaml"), "{e}");

    let e = recipe_error(&good.replace("seq_len: 32", "seq_len: 500"));
    assert!(e.contains("seq_len") && e.contains("max_seq_len"), "{e}");

    let e = recipe_error(&good.replace(r#"(name: "en","#, r#"(name: "a/b","#));
    assert!(e.contains("experts[0].name"), "{e}");

    let e = recipe_error(&good.replace("Upcycle(experts: 2)", "Upcycle(experts: 2, drop_ratio: 1.5)"));
    assert!(e.contains("merges[1].method") && e.contains("drop_ratio"), "{e}");

    let later = good.replace("    merges: [", "    later_experts: [(name: \"en\", data: [(\"code\", 1.0)], steps: 2)],\n    merges: [");
    let e = recipe_error(&later);
    assert!(e.contains("later_experts[0].name") && e.contains("unique"), "{e}");

    let e = recipe_error(&good.replace("    merges:", "    expert_optimizer: (lr: 1e-3, router_lr_multiplier: 10.0),\n    merges:"));
    assert!(e.contains("expert_optimizer.router_lr_multiplier"), "{e}");
    assert!(e.contains("no router"), "{e}");

    let e = recipe_error(&good.replace("finetune: (steps: 6)", "finetune: (steps: 6, lr: 1e-3, optimizer: (lr: 2e-3))"));
    assert!(e.contains("finetune.lr") && e.contains("finetune.optimizer.lr"), "{e}");

    let e = recipe_error(&good.replace(r#"steps: 4)"#, r#"steps: 4, optimizer: (min_lr_ratio: 2.0))"#));
    assert!(e.contains("experts[0].optimizer.min_lr_ratio"), "{e}");

    let shared = good.replace("    merges: [", "    keep_seed: false,\n    merges: [").replace("(name: \"btx\", method: Btx)", "(name: \"btx\", method: Btx, moe: (shared_expert: Seed))");
    let e = recipe_error(&shared);
    assert!(e.contains("merges[0].moe.shared_expert") && e.contains("keep_seed"), "{e}");
}

/// Each stage trains with the recipe's optimizer changed by its own settings: the experts by
/// `expert_optimizer` and then their own `optimizer`, the baselines by `baseline_optimizer`,
/// the finetune by `finetune.optimizer` (its `lr` folded in); the seed keeps the recipe's.
#[test]
fn each_stage_takes_its_own_optimizer() {
    use btx::recipe::plan::Plan;
    use btx::recipe::stage_id::StageId;
    let dir = tempfile::tempdir().unwrap();
    let text = recipe_text(dir.path(), &[("en", "english"), ("code", "code")], 4)
        .replace(r#"(name: "code", data: [("code", 1.0)], steps: 4)"#, r#"(name: "code", data: [("code", 1.0)], steps: 4, optimizer: (lr: 5e-4, weight_decay: 0.0))"#)
        .replace("    merges:", "    expert_optimizer: (lr: 1e-3, warmup_steps: 1),\n    baseline_optimizer: (min_lr_ratio: 0.5),\n    merges:")
        .replace("finetune: (steps: 6)", "finetune: (steps: 6, lr: 2e-3, optimizer: (router_lr_multiplier: 8.0))");
    let path = dir.path().join("recipe.ron");
    std::fs::write(&path, text).unwrap();
    let recipe = btx::recipe::Recipe::load(&path).unwrap();
    let plan = Plan { recipe: &recipe, out: dir.path().join("run"), device: btx::device::DeviceArgs::new(btx::device::DeviceChoice::Cpu) };
    let (seed, seed_stage) = plan.seed().unwrap();
    let optimizer = |stage: &btx::recipe::stage::Stage| btx::config::parse_ron::<btx::train::TrainConfig>(stage.config.as_deref().unwrap(), "stage").unwrap().optimizer;
    let o = optimizer(&seed_stage.unwrap());
    assert_eq!((o.lr, o.warmup_steps, o.min_lr_ratio, o.router_lr_multiplier), (1e-2, 3, 0.1, 1.0));
    let experts = plan.expert_stages(&seed).unwrap();
    let of = |id: StageId| optimizer(experts.iter().find(|s| s.id == id).unwrap());
    let (en, code) = (of(StageId::Expert("en".into())), of(StageId::Expert("code".into())));
    assert_eq!((en.lr, en.warmup_steps, en.weight_decay), (1e-3, 1, 0.1));
    assert_eq!((code.lr, code.warmup_steps, code.weight_decay), (5e-4, 1, 0.0));
    let dense = optimizer(&plan.dense_data_stage(&seed).unwrap().unwrap());
    assert_eq!((dense.lr, dense.warmup_steps, dense.min_lr_ratio), (1e-2, 3, 0.5));
    let finetune = recipe.finetune.optimizer().apply(&recipe.optimizer);
    assert_eq!((finetune.lr, finetune.router_lr_multiplier), (2e-3, 8.0));
    // Unless the finetune says otherwise, its routers learn at the default multiple.
    let mut unset = recipe.clone();
    unset.finetune.optimizer.router_lr_multiplier = None;
    let finetune = unset.finetune.optimizer().apply(&unset.optimizer);
    assert_eq!((finetune.lr, finetune.router_lr_multiplier), (2e-3, btx::recipe::config::FINETUNE_ROUTER_LR_MULTIPLIER));
}

#[test]
fn a_recipe_can_start_from_an_existing_seed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // A seed made elsewhere (here: imported from Hugging Face format after a training run).
    let config = tiny_train_config(dir.path(), 3);
    let seed_run = dir.path().join("seed-run");
    let selected = cpu_selected();
    let options = btx::train::TrainOptions { out: seed_run.clone(), resume: false, progress: false, stop_after: None };
    btx::train::train(&config, "test", &selected, &options).unwrap();
    let hf = dir.path().join("hf");
    btx::hf::export_hf(&seed_run, &hf, Some(&repo_root().join("assets/tokenizer.json")), false).unwrap();
    let imported = dir.path().join("imported");
    btx::hf::import_hf(&hf, &imported).unwrap();

    let text = recipe_text(dir.path(), &[("en", "english")], 4)
        .replace(r#"seed_model: Train(steps: 12, mixture: [("english", 1.0), ("code", 1.0), ("arithmetic", 1.0)]),"#, &format!("seed_model: Checkpoint(\"{}\"),", imported.display()));
    assert!(text.contains("Checkpoint("));
    let out = dir.path().join("run");
    let (ok, stderr) = run_recipe(dir.path(), &text, &out);
    assert!(ok, "{stderr}");
    assert!(!ran(&stderr).contains(&"seed".to_string()) && !out.join("seed").exists());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| seed |") && report.contains("expert en"), "{report}");
}

/// With `seeds`, the recipe runs once per seed and the report gives each model's range
/// across them, calling overlapping ranges ties.
#[test]
fn a_recipe_over_seeds_reports_spreads_and_ties() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let text = recipe_text(dir.path(), &[("en", "english")], 4)
        .replace("    seed: 3,\n", "    seed: 3,\n    seeds: [1, 2],\n")
        .replace("    data_matched_baseline: true,\n", "");
    assert!(text.contains("seeds: [1, 2]"));
    let (ok, stderr) = run_recipe(dir.path(), &text, &out);
    assert!(ok, "{stderr}");
    for seed in [1, 2] {
        assert!(out.join(format!("seed-{seed}/report.md")).is_file());
    }
    // Different seeds, different models: the two runs' seeds differ in their weights.
    assert_ne!(weights(&out.join("seed-1/seed")), weights(&out.join("seed-2/seed")));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("across 2 seeds") && report.contains("| btx |"), "{report}");
    let verdicts = report.lines().filter(|l| l.starts_with("- ") && (l.contains(" wins ") || l.contains(" ties with "))).count();
    assert_eq!(verdicts, 4, "one verdict for the mean and each of 3 domains:\n{report}");
    // The accounting across seeds: each term's mean over the seeds' records, with its range.
    let prize = |seed: u64| -> f64 {
        let record = btx::recipe::report_record::ReportRecord::read(&out.join(format!("seed-{seed}"))).unwrap();
        record.accounting.iter().find(|a| a.merge == "btx" && a.expert == "en").unwrap().prize.unwrap()
    };
    let (a, b) = (prize(1), prize(2));
    let row = format!("| en | english | {:+.3} ({:+.3} to {:+.3}) |", (a + b) / 2.0, a.min(b), a.max(b));
    assert!(report.contains("## Where the gains go") && report.contains(&row), "{row} missing:\n{report}");
}

/// The sweep runs the recipe at every (seed steps, expert steps) point and tabulates BTX
/// minus each baseline.
#[test]
fn a_sweep_runs_every_point_and_reports_the_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let text = recipe_text(dir.path(), &[("en", "english")], 4).replace("    data_matched_baseline: true,\n    diagnose_merge: true,\n", "");
    let path = dir.path().join("recipe.ron");
    std::fs::write(&path, text).unwrap();
    let out = dir.path().join("sweep");
    let args = ["recipe", "sweep", path.to_str().unwrap(), "--seed-steps", "6", "--expert-steps", "2,3", "--out", out.to_str().unwrap(), "--device", "cpu"];
    let (ok, stderr) = run_btx(&args, dir.path());
    assert!(ok, "{stderr}");
    let seed = |run: &str| weights(&out.join(run).join("experts/en"));
    assert_ne!(seed("seed-6-experts-2"), seed("seed-6-experts-3"), "the expert steps did not change");
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    for baseline in ["## vs upcycle", "## vs dense"] {
        let table = md.split(baseline).nth(1).unwrap_or_else(|| panic!("no {baseline}:\n{md}"));
        let row = table.lines().find(|l| l.starts_with("| 6 |")).unwrap();
        let gaps: Vec<f64> = row.split('|').filter_map(|c| c.trim().parse().ok()).collect();
        assert_eq!(gaps.len(), 3, "{row}"); // the seed steps and two gaps
        assert!(gaps[1..].iter().all(|g| g.is_finite()), "{row}");
    }
    assert!(image::open(out.join("sweep_vs_dense.png")).is_ok());
    let (ok, stderr) = run_btx(&["recipe", "sweep", path.to_str().unwrap(), "--seed-steps", "6,x", "--expert-steps", "2"], dir.path());
    assert!(!ok && stderr.contains("--seed-steps"), "{stderr}");
    let (ok, stderr) = run_btx(&["recipe", "sweep", path.to_str().unwrap(), "--rows", "expert-speed=1", "--expert-steps", "2"], dir.path());
    assert!(!ok && stderr.contains("--rows") && stderr.contains("router-lr-multiplier"), "{stderr}");
    let (ok, stderr) = run_btx(&["recipe", "sweep", path.to_str().unwrap(), "--rows", "finetune-steps=2.5", "--expert-steps", "2"], dir.path());
    assert!(!ok && stderr.contains("whole numbers"), "{stderr}");

    // Any two quantities: the routers' learning-rate multiple against the finetune's length,
    // over two seeds (each cell: the mean gap and the seeds' range).
    let seeded = dir.path().join("seeded.ron");
    std::fs::write(&seeded, std::fs::read_to_string(&path).unwrap().replace("    seed: 3,\n", "    seed: 3,\n    seeds: [3, 4],\n")).unwrap();
    let out = dir.path().join("router-sweep");
    let args = ["recipe", "sweep", seeded.to_str().unwrap(), "--rows", "router-lr-multiplier=1,10", "--columns", "finetune-steps=2", "--out", out.to_str().unwrap(), "--device", "cpu"];
    let (ok, stderr) = run_btx(&args, dir.path());
    assert!(ok, "{stderr}");
    for m in [1.0, 10.0] {
        let finetune: btx::train::TrainConfig = btx::config::read_ron(&out.join(format!("router-lr-multiplier-{m}-finetune-steps-2/seed-4/finetune/btx/stage.ron"))).unwrap();
        assert_eq!((finetune.optimizer.router_lr_multiplier, finetune.steps), (m, 2));
    }
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(md.contains("| router-lr-multiplier \\\\ finetune-steps | 2 |") && md.contains("2 seeds per point"), "{md}");
    let row = md.lines().find(|l| l.starts_with("| 10 | ")).unwrap_or_else(|| panic!("{md}"));
    assert!(row.contains(" to ") && row.contains('('), "{row}");

    // A seed that neither axis changes is trained once: the second point starts from the
    // first point's seed and trains none of its own.
    let out = dir.path().join("lr-sweep");
    let args = ["recipe", "sweep", path.to_str().unwrap(), "--rows", "expert-lr=1e-3", "--columns", "expert-steps=2,3", "--out", out.to_str().unwrap(), "--device", "cpu"];
    let (ok, stderr) = run_btx(&args, dir.path());
    assert!(ok, "{stderr}");
    let (first, second) = (out.join("expert-lr-0.001-experts-2"), out.join("expert-lr-0.001-experts-3"));
    assert!(first.join("seed/manifest.json").is_file() && !second.join("seed").exists());
    let expert: btx::train::TrainConfig = btx::config::read_ron(&second.join("experts/en/stage.ron")).unwrap();
    assert_eq!(expert.init_from.as_deref(), Some(std::path::absolute(first.join("seed")).unwrap().as_path()));
    // The second point's models count the shared seed's training as the first point's do.
    let seed_flops = |point: &std::path::Path| {
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(point.join("report.json")).unwrap()).unwrap();
        report["models"].as_array().unwrap().iter().find(|m| m["model"] == "seed").unwrap()["train_flops"].as_f64().unwrap()
    };
    assert!(seed_flops(&second) > 0.0 && seed_flops(&second) == seed_flops(&first));
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    let row = md.lines().find(|l| l.starts_with("| 0.001 |")).unwrap_or_else(|| panic!("{md}"));
    assert!(row.split('|').filter_map(|c| c.trim().parse::<f64>().ok()).all(f64::is_finite), "{row}");
}

/// The family of methods runs from a recipe: BAM (shared KV), a shared expert, Drop-Upcycling,
/// and a later expert, trained from the experts' average and added to every finetuned BTX and
/// BAM model and to the ensemble. Each grown model is evaluated and reported.
#[test]
fn a_recipe_runs_the_family_of_methods_and_grows_the_merged_models() {
    let dir = tempfile::tempdir().unwrap();
    let text = recipe_text(dir.path(), &[("en", "english")], 4)
        .replace("    data_matched_baseline: true,\n    diagnose_merge: true,\n", "")
        .replace(
            r#"        (name: "switch", method: Btx, moe: Some((top_k: 1, routing: Switch(capacity_factor: 0.5)))),"#,
            r#"        (name: "bam", method: Bam(shared_kv: true)),
        (name: "shared", method: Btx, moe: (top_k: 1, shared_expert: Seed)),
        (name: "drop", method: Upcycle(experts: 2, drop_ratio: 0.5)),
        (name: "hidden", method: Btx, moe: (top_k: 2, router_init: Hidden)),"#,
        )
        .replace("    merges: [", "    later_experts: [(name: \"code\", data: [(\"code\", 1.0)], steps: 4)],\n    merges: [")
        .replace("ensemble_sequences: 4)", &format!("ensemble_sequences: 4, tasks: [{:?}, {:?}], task_limit: 2)", repo_root().join("assets/tasks/continuation_code.yaml"), repo_root().join("assets/tasks/arithmetic_sums.yaml")));
    assert!(text.contains("later_experts") && text.contains("Bam(shared_kv: true)") && text.contains("task_limit"));
    let out = dir.path().join("run");
    let (ok, stderr) = run_recipe(dir.path(), &text, &out);
    assert!(ok, "{stderr}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for row in ["| bam |", "| shared |", "| drop |", "| btx + code (added) |", "| btx + code |", "| bam + code |", "| shared + code |", "| ensemble + code |"] {
        assert!(report.contains(row), "no row {row}:\n{report}");
    }
    // Every model but the ensembles was scored on the tasks, as the task table and figure show.
    let tasks = &report[report.find("## Tasks").expect("a task section")..];
    assert!(tasks.contains("continuation_code (acc,none)") && tasks.contains("arithmetic_sums (exact_match,leading-int)"), "{tasks}");
    for row in ["| seed |", "| bam + code |", "| dense |"] {
        assert!(tasks.contains(row), "no task row {row}:\n{tasks}");
    }
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let bam = record["models"].as_array().unwrap().iter().find(|m| m["model"] == "bam").unwrap();
    assert!(bam["tasks"]["continuation_code"]["value"].is_number(), "{bam}");
    let figure = record["figures"].as_array().unwrap().iter().find(|f| f["file"] == "tasks.png").expect("tasks.png");
    assert!(figure["texts"].as_array().unwrap().iter().any(|t| t == "continuation_code"), "{figure}");
    // The later expert branched from the forest (the experts' average) and joined the models.
    let later: btx::train::TrainConfig = btx::config::read_ron(&out.join("experts/code/stage.ron")).unwrap();
    assert_eq!(later.init_from.as_deref(), Some(out.join("forest/code").as_path()));
    let forest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("forest/code/merge.json")).unwrap()).unwrap();
    let forest_weights: Vec<f64> = serde_json::from_value(forest["weights"].clone()).unwrap();
    assert!(forest_weights.len() == 1 && (forest_weights[0] - 1.0).abs() < 1e-9, "one expert: all the weight, {forest_weights:?}");
    let names = |ckpt: &Path| btx::merge::expert_names(ckpt).unwrap();
    assert_eq!(names(&out.join("grow/btx/code/trained")), ["en", "generalist", "code"]);
    assert_eq!(names(&out.join("grow/shared/code/added")), ["en", "code"], "the shared seed is not routed");
    let bam = btx::checkpoint::read_model_config(&out.join("grow/bam/code/added")).unwrap();
    assert_eq!((bam.moe.unwrap().num_experts, bam.attention_experts.unwrap().num_experts), (3, 3));
    // Inside the MoE only the new expert trained: its FFNs (and in BAM its attention expert).
    for (merge, new) in [("btx", vec![".block_sparse_moe.experts.2."]), ("bam", vec![".block_sparse_moe.experts.2.", ".attention_experts.experts.2."])] {
        let (added, trained) = (weights(&out.join(format!("grow/{merge}/code/added"))), weights(&out.join(format!("grow/{merge}/code/trained"))));
        let changed: Vec<&String> = added.keys().filter(|k| added[*k] != trained[*k]).collect();
        assert!(!changed.is_empty() && changed.iter().all(|k| new.iter().any(|n| k.contains(n))), "{merge}: {changed:?}");
        assert!(new.iter().all(|n| changed.iter().any(|k| k.contains(n))), "{merge}: {changed:?}");
    }
    // The data-initialised routers were measured in a stage of their own (on the run's
    // device), and the merge that read them is the merge `btx merge` makes by running the
    // members forward itself. The merge replaced its stage's folder but kept the stage's
    // config and log.
    assert!(out.join("merges/hidden/log.txt").is_file() && out.join("merges/hidden/model.safetensors").is_file());
    let request: btx::merge::MergeRequest = btx::config::read_ron(&out.join("merges/hidden/stage.ron")).unwrap();
    assert_eq!(request.measured.as_deref(), Some(out.join("router-data/hidden/measured.json").as_path()));
    assert!(request.router_data.is_empty());
    let (e, seed, data) = (out.join("experts/en"), out.join("seed"), out.join("eval-data.ron"));
    let args = ["merge", "--method", "btx", "--experts", e.to_str().unwrap(), "--seed", seed.to_str().unwrap(), "--moe", "(top_k: 2, router_init: Hidden)"];
    let router_data = [e.join("stage.ron"), data];
    let mut args: Vec<&str> = args.to_vec();
    args.push("--router-data");
    args.extend(router_data.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--out", "by-hand"]);
    let (ok, stderr) = run_btx(&args, dir.path());
    assert!(ok, "{stderr}");
    let (staged, by_hand) = (weights(&out.join("merges/hidden")), weights(&dir.path().join("by-hand")));
    let router = "model.layers.0.block_sparse_moe.gate.weight";
    assert_eq!(staged[router], by_hand[router]);
    assert!(staged[router].values.iter().any(|v| *v != 0.0));
}

/// `expert_lora` gives every expert LoRA adapters (an expert's own `lora` replaces it), and
/// `finetune.lora` the MoE finetune's; bad settings name their field.
#[test]
fn experts_and_the_finetune_take_lora_adapters() {
    use btx::recipe::plan::Plan;
    use btx::recipe::stage_id::StageId;
    let dir = tempfile::tempdir().unwrap();
    let text = recipe_text(dir.path(), &[("en", "english"), ("code", "code")], 4)
        .replace(r#"(name: "code", data: [("code", 1.0)], steps: 4)"#, r#"(name: "code", data: [("code", 1.0)], steps: 4, lora: (rank: 2, targets: ["down_proj"]))"#)
        .replace("    merges:", "    expert_lora: (rank: 4, alpha: 8.0, dropout: 0.05),\n    merges:")
        .replace("finetune: (steps: 6)", "finetune: (steps: 6, lora: (rank: 8))");
    let path = dir.path().join("recipe.ron");
    std::fs::write(&path, &text).unwrap();
    let recipe = btx::recipe::Recipe::load(&path).unwrap();
    let plan = Plan { recipe: &recipe, out: dir.path().join("run"), device: btx::device::DeviceArgs::new(btx::device::DeviceChoice::Cpu) };
    let (seed, _) = plan.seed().unwrap();
    let lora = |stage: &btx::recipe::stage::Stage| btx::config::parse_ron::<btx::train::TrainConfig>(stage.config.as_deref().unwrap(), "stage").unwrap().lora;
    let experts = plan.expert_stages(&seed).unwrap();
    let of = |id: StageId| lora(experts.iter().find(|s| s.id == id).unwrap()).unwrap();
    let (en, code) = (of(StageId::Expert("en".into())), of(StageId::Expert("code".into())));
    assert_eq!((en.rank, en.alpha(), en.dropout, en.targets.len()), (4, 8.0, 0.05, 7));
    assert_eq!((code.rank, code.alpha(), code.targets.clone()), (2, 2.0, vec!["down_proj".to_string()]));
    assert_eq!(recipe.finetune.lora.as_ref().map(|l| l.rank), Some(8));
    let e = recipe_error(&text.replace("rank: 4, alpha: 8.0", "rank: 4, alpha: -1.0"));
    assert!(e.contains("expert_lora") && e.contains("`lora.alpha`"), "{e}");
}

/// Axis ticks are told apart however close the values: models of nearly equal FLOPs
/// (8.2e12 to 8.3e12) get 8.21e12, 8.22e12, ..., not 8.2e12 repeated; a wide range keeps
/// short labels.
#[test]
fn axis_ticks_are_distinct_with_the_digits_they_need() {
    use btx::recipe::plots::tick_labels;
    for (lo, hi, n) in [(8.2e12, 8.3e12, 10), (0.0, 4.0e13, 10), (90.05, 90.9, 10), (1.0, 2.0, 4), (0.001, 0.002, 10)] {
        let label = tick_labels(lo, hi, n);
        let ticks: Vec<String> = (0..=n).map(|i| label(&(lo + (hi - lo) * i as f64 / n as f64))).collect();
        let distinct: std::collections::HashSet<&String> = ticks.iter().collect();
        assert_eq!(distinct.len(), ticks.len(), "{lo}..{hi}: {ticks:?}");
        assert!(ticks.iter().all(|t| t.len() <= 9), "{lo}..{hi}: {ticks:?}");
    }
    assert_eq!(tick_labels(0.0, 4.0e13, 10)(&2.0e13), "2.0e13");
}
