//! Task evaluation of the BTM ensemble (`btx ensemble --tasks`): the mixture under the domain
//! posterior (Li et al. 2022, §3) scored request by request, checked against the perplexity
//! ensemble's own per-token formula, against one model when the experts are identical, and
//! between its two paths (the batched log-likelihood's argmax and greedy decoding).

use btx::model::LanguageModel;
use btx::tasks::TaskModel;
use btx::tasks::model::{CheckpointModel, EnsembleModel};
use serde_json::Value;

use crate::common::{cpu, repo_root, tiny_model};

fn ensemble(seeds: &[u64], prior: &[f64], top_k: usize) -> EnsembleModel {
    let config = tiny_model(4, 2);
    let experts = seeds.iter().map(|&s| LanguageModel::seeded(&config, s, &cpu())).collect();
    EnsembleModel { experts, log_prior: prior.iter().map(|p| p.ln()).collect(), top_k, device: cpu(), max_length: config.max_seq_len }
}

fn sequences() -> (Vec<Vec<u32>>, Vec<usize>) {
    (vec![(1..30).collect(), vec![5, 9, 700, 3], (100..117).map(|t| t * 7).collect()], vec![5, 2, 16])
}

/// An ensemble whose experts are one model scores as that model, whatever its prior.
#[test]
fn an_ensemble_of_identical_experts_scores_tasks_as_one_model() {
    let single = CheckpointModel { model: LanguageModel::seeded(&tiny_model(4, 2), 7, &cpu()), device: cpu(), max_length: 64 };
    let same = ensemble(&[7, 7, 7], &[0.6, 0.3, 0.1], 3);
    let (seqs, lens) = sequences();
    for (a, b) in single.loglikelihoods(&seqs, &lens).unwrap().into_iter().zip(same.loglikelihoods(&seqs, &lens).unwrap()) {
        assert!((a.0 - b.0).abs() < 1e-4, "{} vs {}", a.0, b.0);
        assert_eq!(a.1, b.1);
    }
    let want = single.greedy(&[11, 12, 13], 8, None, &mut |_| false).unwrap();
    assert_eq!(same.greedy(&[11, 12, 13], 8, None, &mut |_| false).unwrap(), want);
}

/// Different experts: each request's log-likelihood is the perplexity ensemble's per-token
/// mixture (`ensemble_sequence` over each expert's own log-probabilities, one sequence at a
/// time) summed over the continuation, batched or not, with top-k too; and a greedy
/// generation's tokens are the argmax of the batched mixture at every position.
#[test]
fn ensemble_loglikelihoods_follow_the_posterior_mixture() {
    let (seqs, lens) = sequences();
    for top_k in [2, 1] {
        let model = ensemble(&[1, 2], &[0.7, 0.3], top_k);
        let scored = model.loglikelihoods(&seqs, &lens).unwrap();
        for (i, (seq, &len)) in seqs.iter().zip(&lens).enumerate() {
            let inputs = btx::generate::tokens_tensor(&seq[..seq.len() - 1], &cpu());
            let targets = btx::generate::tokens_tensor(&seq[1..], &cpu());
            let lp: Vec<Vec<f64>> = model
                .experts
                .iter()
                .map(|e| crate::common::to_vec(e.token_log_probs(inputs.clone(), targets.clone())).into_iter().map(f64::from).collect())
                .collect();
            let rows: Vec<&[f64]> = lp.iter().map(|r| r.as_slice()).collect();
            let per_token = btx::ensemble::ensemble_sequence(&rows, &model.log_prior, top_k);
            let want: f64 = per_token[per_token.len() - len..].iter().sum();
            assert!((scored[i].0 - want).abs() < 1e-4, "top-{top_k} sequence {i}: {} vs {want}", scored[i].0);
            // Top-2 mixes both experts (top-1 may follow one expert throughout).
            let single_expert: f64 = lp[0][lp[0].len() - len..].iter().sum();
            assert!(top_k == 1 || (scored[i].0 - single_expert).abs() > 1e-3, "the mixture equals expert 0 alone");
        }
        let mut greedy_seq = vec![21u32, 22, 23, 24];
        let generated = model.greedy(&greedy_seq, 6, None, &mut |_| false).unwrap();
        greedy_seq.extend(&generated);
        assert!(model.loglikelihoods(&[greedy_seq.clone()], &[6]).unwrap()[0].1, "top-{top_k}: {greedy_seq:?}");
        // One token changed in the continuation: no longer the greedy one.
        *greedy_seq.last_mut().unwrap() = (generated[5] + 1) % 4096;
        assert!(!model.loglikelihoods(&[greedy_seq], &[6]).unwrap()[0].1);
    }
}

/// `btx ensemble --tasks` writes lm-eval's results shape; a prior of the wrong length is
/// refused naming its file.
#[test]
fn btx_ensemble_tasks_writes_lm_eval_results() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::seed_checkpoint(dir.path(), "a", 5);
    crate::common::seed_checkpoint(dir.path(), "b", 6);
    let root = repo_root();
    let code = root.join("assets/tasks/continuation_code.yaml");
    let tokenizer = root.join("assets/tokenizer.json");
    let args = |extra: &[&'static str]| {
        let mut a = vec!["ensemble", "--experts", "a", "b", "--device", "cpu", "--tasks", code.to_str().unwrap(), "--limit", "4", "--tokenizer", tokenizer.to_str().unwrap(), "--tasks-json", "out.json"];
        a.extend(extra);
        a
    };
    let (ok, stderr) = crate::common::run_btx(&args(&["--top-k", "1"]), dir.path());
    assert!(ok, "{stderr}");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("out.json")).unwrap()).unwrap();
    assert!(results["results"]["continuation_code"]["acc,none"].is_number(), "{results}");
    assert_eq!(results["config"]["model_args"]["top_k"], 1, "{}", results["config"]);
    std::fs::write(dir.path().join("prior.json"), "[0.5, 0.3, 0.2]").unwrap();
    let (ok, stderr) = crate::common::run_btx(&args(&["--prior", "prior.json"]), dir.path());
    assert!(!ok && stderr.contains("prior.json") && stderr.contains("one positive weight per expert (2 experts)"), "{stderr}");
}
