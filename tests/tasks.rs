//! Task evaluation against lm-evaluation-harness: the prompts it builds for the shipped tasks
//! (few-shot examples from its seeded sampler), sacreBLEU's BLEU and chrF, CPython's random
//! draws (fixtures made by tests/fixtures/tasks/make_fixtures.py with the tools themselves),
//! each metric on hand-computed examples, and bad task files refused with their place.

use std::path::{Path, PathBuf};

use btx::tasks::config::{ExactMatchOptions, FilterStep, TaskConfig};
use btx::tasks::evaluate::{DocWork, TaskModel, TaskOptions, task_prompts};
use btx::tasks::metrics::{CorpusItems, CorpusMetric, apply_filter, choice_predictions, exact_match, mean_stderr};
use btx::tasks::python_random::PythonRandom;
use btx::tasks::sacrebleu::{corpus_bleu, corpus_chrf};
use serde_json::Value;

use crate::common::repo_root;

fn fixture(name: &str) -> Value {
    let path = repo_root().join("tests/fixtures/tasks").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn options(limit: Option<f64>) -> TaskOptions {
    TaskOptions { limit, num_fewshot: None, batch_tokens: btx::tasks::evaluate::BATCH_TOKENS, progress: false, chat: None, system_instruction: None }
}

#[test]
fn python_random_draws_as_cpython() {
    let expected = fixture("python_random.json");
    let mut rng = PythonRandom::new(1234);
    for want in expected["seed_1234_random"].as_array().unwrap() {
        assert_eq!(rng.random(), want.as_f64().unwrap());
    }
    let samples = expected["seed_1234_samples_after"].as_array().unwrap();
    for (want, (n, k)) in samples.iter().zip([(100, 5), (10, 7), (1000, 40)]) {
        let want: Vec<usize> = want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(rng.sample(n, k), want, "sample({n}, {k})");
    }
    let want: Vec<usize> = expected["seed_0_choices_1000"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(PythonRandom::new(0).choices(1000, 20), want);
    let want: Vec<usize> = expected["seed_2_40_plus_5_sample_50_3"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(PythonRandom::new((1 << 40) + 5).sample(50, 3), want);
}

#[test]
fn bleu_and_chrf_equal_sacrebleu() {
    for case in fixture("sacrebleu.json").as_array().unwrap() {
        let strings = |key: &str| case[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>();
        let (hyps, refs) = (strings("hypotheses"), strings("references"));
        let (bleu, chrf) = (corpus_bleu(&hyps, &refs), corpus_chrf(&hyps, &refs));
        assert!((bleu - case["bleu"].as_f64().unwrap()).abs() < 1e-9, "BLEU of {hyps:?} vs {refs:?}: {bleu} != {}", case["bleu"]);
        assert!((chrf - case["chrf"].as_f64().unwrap()).abs() < 1e-9, "chrF of {hyps:?} vs {refs:?}: {chrf} != {}", case["chrf"]);
    }
}

/// Every shipped task's first documents: the same prompt (description, few-shot examples drawn
/// by lm-eval's sampler, delimiters) and the same continuations as lm-eval builds.
#[test]
fn shipped_task_prompts_equal_lm_eval_requests() {
    let expected = fixture("requests.json");
    let expected = expected.as_object().unwrap();
    let files = btx::tasks::task_files(&[repo_root().join("assets/tasks")]).unwrap();
    assert_eq!(files.len(), expected.len(), "a task of assets/tasks without a fixture, or the reverse: rerun make_fixtures.py");
    for file in files {
        let config = TaskConfig::load(&file).unwrap();
        let want = expected[&config.name].as_array().unwrap();
        let prompts = task_prompts(&config, &options(Some(want.len() as f64))).unwrap();
        for (i, doc) in want.iter().enumerate() {
            assert_eq!(prompts.contexts[i], doc["context"].as_str().unwrap(), "{} document {i}: context", config.name);
            match &prompts.work[i] {
                DocWork::Choices { choices, .. } => {
                    let continuations: Vec<String> = choices.iter().map(|c| format!("{}{c}", config.target_delimiter)).collect();
                    let want: Vec<&str> = doc["continuations"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                    assert_eq!(continuations, want, "{} document {i}: continuations", config.name);
                }
                DocWork::Generate { .. } => {
                    let until: Vec<&str> = doc["until"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                    assert_eq!(config.generation.until, until, "{}: stop strings", config.name);
                    assert_eq!(Some(config.generation.max_gen_toks as u64), doc["max_gen_toks"].as_u64(), "{}: max_gen_toks", config.name);
                }
                DocWork::Continuation { .. } => unreachable!("no shipped loglikelihood task"),
            }
        }
    }
}

/// `--apply_chat_template`, few-shot examples in one user turn and as turns of their own
/// (`--fewshot_as_multiturn`), and `--system_instruction` with and without it: every shipped
/// task's first documents rendered by the shipped chat tokenizer's template (Gemma 3's) as
/// lm-eval renders them through transformers, each choice following the opened assistant
/// turn with no delimiter.
#[test]
fn chat_template_prompts_equal_lm_eval_requests() {
    let expected = fixture("requests_chat.json");
    let template = std::sync::Arc::new(btx::chat::ChatTemplate::for_tokenizer(&repo_root().join("assets/chat/tokenizer.json"), None).unwrap());
    let system = Some("You answer in one line.".to_string());
    for (mode, chat, multiturn, system_instruction) in
        [("single_turn", true, false, None), ("multiturn", true, true, None), ("plain_system", false, false, system.clone()), ("multiturn_system", true, true, system)]
    {
        let expected = expected[mode].as_object().unwrap();
        for file in btx::tasks::task_files(&[repo_root().join("assets/tasks")]).unwrap() {
            let config = TaskConfig::load(&file).unwrap();
            let want = expected[&config.name].as_array().unwrap();
            let chat = chat.then(|| btx::tasks::prompt::ChatPrompt { template: template.clone(), fewshot_as_multiturn: multiturn });
            let options = TaskOptions { chat, system_instruction: system_instruction.clone(), ..options(Some(want.len() as f64)) };
            let prompts = task_prompts(&config, &options).unwrap();
            for (i, doc) in want.iter().enumerate() {
                assert_eq!(prompts.contexts[i], doc["context"].as_str().unwrap(), "{mode} {} document {i}: context", config.name);
                if let DocWork::Choices { choices, .. } = &prompts.work[i] {
                    let continuations: Vec<String> = choices.iter().map(|c| format!("{}{c}", options.choice_delimiter(&config))).collect();
                    let want: Vec<&str> = doc["continuations"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
                    assert_eq!(continuations, want, "{mode} {} document {i}: continuations", config.name);
                }
            }
        }
    }
}

#[test]
fn choice_predictions_normalise_by_characters() {
    // Log-likelihoods -3 (1 char), -4 (8 chars), -3.5 (2 chars): acc picks the first, acc_norm
    // divides by length in characters: -3, -0.5, -1.75 -> the second. Ties go to the first.
    let choices = ["a".to_string(), "abcdefgh".to_string(), "ßé".to_string()];
    assert_eq!(choice_predictions(&[-3.0, -4.0, -3.5], &choices), (0, 1));
    assert_eq!(choice_predictions(&[-2.0, -2.0, -2.0], &["x".into(), "y".into(), "z".into()]), (0, 0));
    // The standard error of the mean with n - 1: values 1, 0, 1, 1 -> sd 0.5, / 2.
    assert_eq!(mean_stderr(&[1.0, 0.0, 1.0, 1.0]), Some(0.25));
    assert_eq!(mean_stderr(&[1.0]), None);
}

#[test]
fn exact_match_options_and_filters_as_lm_eval() {
    let plain = ExactMatchOptions::default();
    assert!(exact_match("42", "42", &plain).unwrap());
    assert!(!exact_match("42 ", "42", &plain).unwrap());
    // GSM8K's options: case, then the ignored patterns first of all.
    let gsm = ExactMatchOptions { regexes_to_ignore: vec![",".into(), "\\$".into(), "(?s).*#### ".into(), "\\.$".into()], ignore_case: true, ..Default::default() };
    assert!(exact_match("$1,000.", "He pays 1000 in all. #### 1000", &gsm).unwrap());
    let punct = ExactMatchOptions { ignore_punctuation: true, ignore_case: true, ..Default::default() };
    assert!(exact_match("Hello, World!", "hello world", &punct).unwrap());
    let numbers = ExactMatchOptions { ignore_numbers: true, ..Default::default() };
    assert!(exact_match("abc123", "a1b2c", &numbers).unwrap());

    let strict = [FilterStep::Regex { pattern: r"#### (\-?[0-9\.\,]+)".into(), group_select: 0, fallback: "[invalid]".into() }, FilterStep::TakeFirst];
    assert_eq!(apply_filter(&strict, vec!["so 3 + 4 = 7 #### 7\n".into()]).unwrap(), "7");
    assert_eq!(apply_filter(&strict, vec!["no answer".into()]).unwrap(), "[invalid]");
    // Two groups: the last match, its first non-empty group.
    let flexible = [FilterStep::Regex { pattern: r"(-?[$0-9.,]{2,})|(-?[0-9]+)".into(), group_select: -1, fallback: "[invalid]".into() }, FilterStep::TakeFirst];
    assert_eq!(apply_filter(&flexible, vec!["3 apples and 12 pears make 15".into()]).unwrap(), "15");
    assert_eq!(apply_filter(&flexible, vec!["first 5 then 7".into()]).unwrap(), "7");
}

#[test]
fn bootstrap_stderr_of_a_corpus_metric_is_seeded() {
    let pairs: Vec<(String, String)> = (0..20).map(|i| (format!("word{} w{} x", i % 3, i), format!("word{} w{} y", i % 4, i))).collect();
    let items = CorpusItems::Pairs(&pairs);
    let a = CorpusMetric::Chrf.bootstrap_stderr(&items).unwrap();
    assert_eq!(a, CorpusMetric::Chrf.bootstrap_stderr(&items).unwrap());
    assert!(a > 0.0 && a.is_finite());
    assert_eq!(CorpusMetric::Chrf.bootstrap_stderr(&CorpusItems::Pairs(&pairs[..1])), None);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn task_error(dir: &Path, yaml: &str) -> String {
    let file = write(dir, "task.yaml", yaml);
    match TaskConfig::load(&file).and_then(|c| task_prompts(&c, &options(None)).map(|_| ())) {
        Ok(()) => panic!("accepted:\n{yaml}"),
        Err(e) => format!("{e:#}"),
    }
}

const MC: &str = "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: docs.jsonl\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{q}}\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n";

#[test]
fn bad_task_files_are_refused_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "docs.jsonl", "{\"q\": \"2+2=\", \"choices\": [\"4\", \"5\"], \"label\": 0}\n");
    let e = task_error(dir.path(), "task: t\n  bad: : [\n");
    assert!(e.contains("task.yaml") && e.contains("line 2"), "{e}");
    let e = task_error(dir.path(), &format!("{MC}process_docs: !function utils.process_docs\n"));
    assert!(e.contains("process_docs") && e.contains("!function") && e.contains("task.yaml"), "{e}");
    let e = task_error(dir.path(), &format!("{MC}metric_list:\n  - metric: !function utils.f1\n"));
    assert!(e.contains("metric_list[0].metric") && e.contains("Python hook"), "{e}");
    let e = task_error(dir.path(), &format!("{MC}metric_list:\n  - metric: mcc\n"));
    assert!(e.contains("metric `mcc` is not supported"), "{e}");
    let e = task_error(dir.path(), &format!("{MC}shuffle_choices: true\n"));
    assert!(e.contains("`shuffle_choices`"), "{e}");
    let e = task_error(dir.path(), &MC.replace("docs.jsonl", "missing.jsonl"));
    assert!(e.contains("missing.jsonl") && e.contains("not found"), "{e}");
    let e = task_error(dir.path(), &MC.replace("{{q}}", "{{question}}"));
    assert!(e.contains("document 0") && e.contains("question") && e.contains("undefined"), "{e}");
    write(dir.path(), "out_of_range.jsonl", "{\"q\": \"2+2=\", \"choices\": [\"4\", \"5\"], \"label\": 2}\n");
    let e = task_error(dir.path(), &MC.replace("docs.jsonl", "out_of_range.jsonl"));
    assert!(e.contains("document 0") && e.contains("index 2") && e.contains("2 choices"), "{e}");
    write(dir.path(), "empty.jsonl", "\n");
    let e = task_error(dir.path(), &MC.replace("docs.jsonl", "empty.jsonl"));
    assert!(e.contains("split `test` is empty"), "{e}");
    write(dir.path(), "broken.jsonl", "{\"q\": \"1\"}\n{\"q\": \n");
    let e = task_error(dir.path(), &MC.replace("docs.jsonl", "broken.jsonl"));
    assert!(e.contains("broken.jsonl line 2"), "{e}");
    let e = task_error(dir.path(), &MC.replace("dataset_path: json", "dataset_path: cais/mmlu"));
    assert!(e.contains("cais/mmlu") && e.contains("local files"), "{e}");
}

/// `include:` merges the included file's keys under the including file's.
#[test]
fn include_merges_top_level_keys() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "docs.jsonl", "{\"q\": \"2+2=\", \"choices\": [\"4\", \"5\"], \"label\": 0}\n");
    write(dir.path(), "base.yaml", &format!("{MC}target_delimiter: \"|\"\nnum_fewshot: 0\n"));
    let file = write(dir.path(), "child.yaml", "include: base.yaml\ntask: child\ntarget_delimiter: \" \"\n");
    let config = TaskConfig::load(&file).unwrap();
    assert_eq!((config.name.as_str(), config.target_delimiter.as_str()), ("child", " "));
    assert_eq!(config.doc_to_target, btx::tasks::config::DocField::Text("label".into()));
}

fn tiny_scorer(seed: u64) -> btx::tasks::model::CheckpointModel {
    let config = crate::common::tiny_model(4, 2);
    let model = btx::model::LanguageModel::seeded(&config, seed, &crate::common::cpu());
    btx::tasks::model::CheckpointModel { model, device: crate::common::cpu(), max_length: config.max_seq_len }
}

/// Batching (right padding, lengths mixed) changes no log-likelihood, and each equals the sum of
/// the model's own next-token log-probabilities over the continuation.
#[test]
fn batched_loglikelihoods_equal_one_sequence_at_a_time() {
    let scorer = tiny_scorer(3);
    let sequences: Vec<Vec<u32>> = vec![(1..40).collect(), vec![5, 9, 700, 3], (100..117).map(|t| t * 7).collect()];
    let lens = [5usize, 2, 16];
    let batched = scorer.loglikelihoods(&sequences, &lens).unwrap();
    for (i, (seq, &len)) in sequences.iter().zip(&lens).enumerate() {
        let alone = scorer.loglikelihoods(std::slice::from_ref(seq), &[len]).unwrap()[0];
        assert!((batched[i].0 - alone.0).abs() < 1e-4, "sequence {i}: batched {} alone {}", batched[i].0, alone.0);
        assert_eq!(batched[i].1, alone.1);
        let inputs = btx::generate::tokens_tensor(&seq[..seq.len() - 1], &crate::common::cpu());
        let targets = btx::generate::tokens_tensor(&seq[1..], &crate::common::cpu());
        let lp = crate::common::to_vec(scorer.model.token_log_probs(inputs, targets));
        let direct: f64 = lp[lp.len() - len..].iter().map(|&v| v as f64).sum();
        assert!((alone.0 - direct).abs() < 1e-4, "sequence {i}: {} vs {direct}", alone.0);
    }
    // A continuation made of the greedy tokens is greedy.
    let mut greedy_seq = vec![11u32, 12, 13];
    let generated = scorer.greedy(&greedy_seq, 3, None, &mut |_| false).unwrap();
    greedy_seq.extend(&generated);
    assert!(scorer.loglikelihoods(&[greedy_seq], &[3]).unwrap()[0].1);
}

/// A shared context computed once (its keys and values reused by every continuation, the
/// continuations batched over them) gives the log-likelihoods and greediness of each whole
/// sequence scored alone, for continuations of different lengths, a greedy one included.
#[test]
fn shared_context_loglikelihoods_equal_whole_sequences() {
    let scorer = tiny_scorer(4);
    let context: Vec<u32> = (200..270).collect();
    let greedy = scorer.greedy(&context, 4, None, &mut |_| false).unwrap();
    let continuations = vec![vec![7u32], vec![9, 3000, 12], greedy.clone(), (40..47).collect()];
    let shared = scorer.shared_context_loglikelihoods(&context, &continuations).unwrap();
    for (i, c) in continuations.iter().enumerate() {
        let whole = [context.as_slice(), c.as_slice()].concat();
        let alone = scorer.loglikelihoods(&[whole], &[c.len()]).unwrap()[0];
        assert!((shared[i].0 - alone.0).abs() < 1e-4, "continuation {i}: shared {} whole {}", shared[i].0, alone.0);
        assert_eq!(shared[i].1, alone.1, "continuation {i}");
    }
    assert!(shared[2].1, "the greedy continuation is not greedy");
}

/// `btx eval --tasks` from another folder: the shipped tasks' data found from the task files,
/// a context longer than the model's 64 positions truncated on the left, lm-eval's results shape.
#[test]
fn btx_eval_tasks_writes_lm_eval_results() {
    let dir = tempfile::tempdir().unwrap();
    crate::common::seed_checkpoint(dir.path(), "seed", 5);
    let root = repo_root();
    let (sums, code) = (root.join("assets/tasks/arithmetic_sums.yaml"), root.join("assets/tasks/continuation_code.yaml"));
    let tokenizer = root.join("assets/tokenizer.json");
    let (ok, stderr) = crate::common::run_btx(
        &["eval", "--checkpoint", "seed", "--device", "cpu", "--tasks", sums.to_str().unwrap(), code.to_str().unwrap(), "--limit", "3", "--tokenizer", tokenizer.to_str().unwrap(), "--json", "out.json", "--log-samples"],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("out.json")).unwrap()).unwrap();
    let code = &results["results"]["continuation_code"];
    for key in ["acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"] {
        assert!(code[key].is_number(), "{key} in {code}");
    }
    assert!(results["results"]["arithmetic_sums"]["exact_match,leading-int"].is_number(), "{results}");
    assert_eq!(results["n-shot"]["arithmetic_sums"], 3);
    assert_eq!(results["n-samples"]["continuation_code"]["effective"], 3);
    assert_eq!(results["samples"]["continuation_code"].as_array().unwrap().len(), 3);
}

fn jsonl(path: &str) -> Vec<Value> {
    std::fs::read_to_string(repo_root().join(path)).unwrap().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn corpus(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("assets/corpora").join(name)).unwrap()
}

/// No shipped task's item comes from text a shipped recipe or training config trains on: no
/// held-out line or verse is a line of its corpus (an English verse not even part of one of
/// its chapter lines), no held-out function's first two lines follow each other in the code
/// corpus, and no sum's `a+b=` is in any recipe's generated arithmetic.
#[test]
fn shipped_tasks_hold_out_their_items() {
    let lines = |text: &str| text.lines().map(|l| l.trim().to_string()).collect::<std::collections::HashSet<_>>();
    let (english, code, arabic, latin) = (corpus("english.txt"), corpus("code.txt"), corpus("arabic.txt"), corpus("arabic_latin.txt"));
    let (code_lines, arabic_lines, latin_lines) = (lines(&code), lines(&arabic), lines(&latin));
    for file in ["translit_test", "translit_train"] {
        for doc in jsonl(&format!("assets/tasks/data/{file}.jsonl")) {
            assert!(!arabic_lines.contains(doc["arabic"].as_str().unwrap().trim()), "{file}: {doc}");
            assert!(!latin_lines.contains(doc["latin"].as_str().unwrap().trim()), "{file}: {doc}");
        }
    }
    for (task, corpus_lines) in [("continuation_code", &code_lines), ("continuation_arabic", &arabic_lines), ("continuation_arabic_latin", &latin_lines), ("continuation_english", &lines(&english))] {
        let docs = jsonl(&format!("assets/tasks/data/{task}.jsonl"));
        assert!(docs.len() >= 100, "{task}: {} documents", docs.len());
        for doc in docs {
            let line = format!("{} {}", doc["text"].as_str().unwrap(), doc["choices"][doc["label"].as_u64().unwrap() as usize].as_str().unwrap());
            assert!(!corpus_lines.contains(line.trim()), "{task}: {line:?} is a training line");
            if task == "continuation_english" {
                assert!(!english.contains(line.trim()), "{task}: {line:?} is in english.txt");
            }
        }
    }
    let code_rows: Vec<&str> = code.lines().map(str::trim).collect();
    for doc in jsonl("assets/tasks/data/code_next_line.jsonl") {
        let (def, next) = (doc["prompt"].as_str().unwrap().trim(), doc["target"].as_str().unwrap().trim());
        assert!(!code_rows.windows(2).any(|w| w[0] == def && w[1] == next), "code_next_line: {def:?} then {next:?} is in code.txt");
    }
    // Every arithmetic stream a shipped recipe or training config generates.
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("recipes")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "ron") {
            sources.extend(btx::recipe::Recipe::load(&entry.path()).unwrap().domains.into_iter().map(|d| d.source));
        }
    }
    for entry in std::fs::read_dir(repo_root().join("recipes/train")).unwrap().flatten() {
        sources.extend(btx::train::TrainConfig::load(&entry.path()).unwrap().data.domains.into_iter().map(|d| d.source));
    }
    let mut generated = std::collections::HashSet::new();
    for source in sources {
        if let btx::data::Source::Arithmetic(config) = source {
            for line in btx::data::synthetic::arithmetic_text(&config).lines() {
                generated.insert(line.split_inclusive('=').next().unwrap().to_string());
            }
        }
    }
    assert!(generated.len() > 10_000, "found {} generated sums", generated.len());
    let all_corpora = [english, code, arabic, latin].concat();
    for file in ["arithmetic_sums_test", "arithmetic_sums_train"] {
        for doc in jsonl(&format!("assets/tasks/data/{file}.jsonl")) {
            let question = doc["question"].as_str().unwrap();
            assert!(!generated.contains(question) && !all_corpora.contains(question), "{file}: {question} is trained on");
        }
    }
}

/// A task on Parquet data reads the same documents as on JSON Lines: the same prompts and
/// choices (the fixture is continuation_code's first documents, written by pyarrow).
#[test]
fn parquet_task_data_reads_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let json = TaskConfig::load(&repo_root().join("assets/tasks/continuation_code.yaml")).unwrap();
    let yaml = std::fs::read_to_string(repo_root().join("assets/tasks/continuation_code.yaml"))
        .unwrap()
        .replace("dataset_path: json", "dataset_path: parquet")
        .replace("assets/tasks/data/continuation_code.jsonl", repo_root().join("tests/fixtures/tasks/continuation_code_head.parquet").to_str().unwrap());
    let parquet = TaskConfig::load(&write(dir.path(), "parquet.yaml", &yaml)).unwrap();
    let (a, b) = (task_prompts(&json, &options(Some(6.0))).unwrap(), task_prompts(&parquet, &options(None)).unwrap());
    assert_eq!(b.contexts.len(), 6);
    assert_eq!(a.contexts, b.contexts);
    assert_eq!(a.work, b.work);
}

/// CSV task data reads as Hugging Face `datasets` reads it (typed.csv's rows equal those
/// `load_dataset("csv")` gave: quoting, missing values, integer, float and boolean columns),
/// and a CSV copy of continuation_code's first documents gives the JSON Lines task's prompts
/// and choices.
#[test]
fn csv_task_data_reads_as_datasets_reads_it() {
    let fixtures = repo_root().join("tests/fixtures/tasks");
    let rows = btx::tasks::csv_data::csv_rows(&fixtures.join("typed.csv")).unwrap();
    let expected: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&std::fs::read_to_string(fixtures.join("typed_csv.json")).unwrap()).unwrap();
    assert_eq!(rows, expected);
    let dir = tempfile::tempdir().unwrap();
    let json = TaskConfig::load(&repo_root().join("assets/tasks/continuation_code.yaml")).unwrap();
    let yaml = std::fs::read_to_string(repo_root().join("assets/tasks/continuation_code.yaml"))
        .unwrap()
        .replace("dataset_path: json", "dataset_path: csv")
        .replace("\"{{choices}}\"", "\"{{[choice0, choice1, choice2, choice3]}}\"")
        .replace("assets/tasks/data/continuation_code.jsonl", fixtures.join("continuation_code_head.csv").to_str().unwrap());
    let csv = TaskConfig::load(&write(dir.path(), "csv.yaml", &yaml)).unwrap();
    let (a, b) = (task_prompts(&json, &options(Some(6.0))).unwrap(), task_prompts(&csv, &options(None)).unwrap());
    assert_eq!(b.contexts.len(), 6);
    assert_eq!(a.contexts, b.contexts);
    assert_eq!(a.work, b.work);
    // A row with a field too many is an error naming its line.
    let bad = write(dir.path(), "bad.csv", "a,b\n1,2\n3,4,5\n");
    let e = format!("{:#}", btx::tasks::csv_data::csv_rows(&bad).unwrap_err());
    assert!(e.contains("line 3") || e.contains("record 2"), "{e}");
}
