//! Expert variants: the recipe's experts trained again another way in the same run, and
//! merges of each set. FFN-only experts (FlexOlmo's) keep the seed's shared weights bit for
//! bit, so the merge diagnosis measures no drift and no averaging cost for them.

use std::path::Path;

use btx::checkpoint::module_tensors::module_to_tensors;
use btx::checkpoint::{latest_checkpoint, load_model};
use btx::checkpoint::tensor_names::is_ffn;

use crate::common::*;
use crate::recipe::{ran, recipe_error, recipe_text, run_recipe};

fn variant_recipe(dir: &Path) -> String {
    recipe_text(dir, &[("en", "english"), ("code", "code")], 6)
        .replace(
            "    merges: [",
            "    expert_variants: [(name: \"ffn\", trainable: Experts), (name: \"slow\", optimizer: (shared_lr_multiplier: 0.1))],\n    merges: [\n        (name: \"btx-ffn\", method: Btx, experts: \"ffn\"),\n        (name: \"ensemble-ffn\", method: Ensemble(top_k: None), experts: \"ffn\"),",
        )
}

fn eval_loss(out: &Path, model: &str, domain: &str) -> f64 {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval").join(model).join("eval.json")).unwrap()).unwrap();
    json["domains"].as_array().unwrap().iter().find(|d| d["domain"] == domain).unwrap()["loss"].as_f64().unwrap()
}

#[test]
fn ffn_only_expert_variants_keep_the_shared_weights_and_their_merge_loses_nothing_to_averaging() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, stderr) = run_recipe(dir.path(), &variant_recipe(dir.path()), &out);
    assert!(ok, "{stderr}");
    let stages = ran(&stderr);
    for stage in ["experts/en", "experts/en-ffn", "experts/code-slow", "merges/btx-ffn", "diagnosis/en-ffn", "diagnosis/generalist-ffn", "diagnosis/generalist"] {
        assert!(stages.iter().any(|s| s == stage), "{stage} did not run: {stages:?}");
    }
    let weights = |run: &Path| module_to_tensors(&load_model(&latest_checkpoint(run).unwrap_or_else(|| run.to_path_buf()), &cpu()).unwrap().1);
    let seed = weights(&out.join("seed"));
    for name in ["en", "code"] {
        let (ffn_only, full, slow) = (weights(&out.join(format!("experts/{name}-ffn"))), weights(&out.join(format!("experts/{name}"))), weights(&out.join(format!("experts/{name}-slow"))));
        for (tensor, value) in &seed {
            if is_ffn(tensor) {
                assert_ne!(ffn_only[tensor].values, value.values, "{name}-ffn did not train {tensor}");
            } else {
                assert_eq!(ffn_only[tensor].values, value.values, "{name}-ffn moved shared tensor {tensor}");
            }
        }
        // A tenth of the learning rate moves the shared weights less than the full expert's.
        let moved = |m: &btx::checkpoint::tensor_file::TensorMap| -> f64 {
            seed.iter().filter(|(t, _)| !is_ffn(t)).map(|(t, v)| m[t].values.iter().zip(&v.values).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()).sum::<f64>()
        };
        assert!(moved(&slow) > 0.0 && moved(&slow) < 0.2 * moved(&full), "{name}: slow {} vs full {}", moved(&slow), moved(&full));
    }
    // The FFN-only expert's FFN in the averaged shared weights is the expert itself.
    for (member, domain) in [("en-ffn", "english"), ("code-ffn", "code")] {
        let transplant = eval_loss(&out, &format!("{member}-in-averaged-shared-weights"), domain);
        assert_eq!(transplant, eval_loss(&out, &format!("expert-{member}"), domain), "{member}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for row in ["| en-ffn | english | 0.000 | 0.000 |", "| generalist-ffn | mean | 0.000 | 0.000 |", "| ensemble-ffn |", "`btx-ffn`:"] {
        assert!(report.contains(row), "report lacks {row}:\n{report}");
    }
    // The accounting of the FFN-only merge: an averaging cost of exactly zero.
    let accounting = &report[report.find("## Where the gains go").unwrap()..];
    let btx_ffn = &accounting[accounting.find("`btx-ffn`:").unwrap()..];
    for line in btx_ffn.lines().filter(|l| l.starts_with("| en-ffn") || l.starts_with("| code-ffn")).take(2) {
        assert_eq!(line.split('|').nth(4).unwrap().trim(), "+0.000", "{line}");
    }
}

#[test]
fn expert_variant_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = variant_recipe(dir.path());
    let e = recipe_error(&text.replace("experts: \"ffn\"),\n        (name: \"ensemble", "experts: \"frozen\"),\n        (name: \"ensemble"));
    assert!(e.contains("merges[0].experts") && e.contains("`frozen`") && e.contains("ffn"), "{e}");
    let e = recipe_error(&text.replace("(name: \"slow\"", "(name: \"ffn\""));
    assert!(e.contains("expert_variants[1].name"), "{e}");
    let e = recipe_error(&text.replace("(name: \"slow\", optimizer: (shared_lr_multiplier: 0.1))", "(name: \"slow\", optimizer: (shared_lr_multiplier: -1.0))"));
    assert!(e.contains("expert_variants[1].optimizer"), "{e}");
    let e = recipe_error(&text.replace("(name: \"upcycle\", method: Upcycle(experts: 2))", "(name: \"upcycle\", method: Upcycle(experts: 2), experts: \"ffn\")"));
    assert!(e.contains("experts") && e.contains("upcycling"), "{e}");
}
