//! Bad input: each case is an error that names the file, field or tensor and what was
//! expected, and nothing already written is damaged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use btx::config::to_ron;
use btx::data::Source;
use btx::train::{TrainConfig, TrainOptions, train};

use crate::common::*;


fn opts(out: &Path, resume: bool) -> TrainOptions {
    TrainOptions { out: out.to_path_buf(), resume, progress: false, stop_after: None }
}

/// Every file under `dir` with its bytes.
/// Every file of a run folder and its bytes, but the lock file (which records the last
/// process that opened the folder, the refused one included).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p)
            } else if !p.ends_with(btx::run_lock::TRAIN_LOCK) {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn error_of(config: &TrainConfig, dir: &Path) -> String {
    let err = train(config, "bad.ron", &cpu_selected(), &opts(&dir.join("run"), false)).err().expect("an error");
    format!("{err:#}")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("bad.ron");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn unknown_field_is_an_error_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = to_ron(&tiny_train_config(dir.path(), 5)).unwrap().replace("batch_size:", "batch_sise:");
    let path = write_config(dir.path(), &text);
    let err = format!("{:#}", TrainConfig::load(&path).unwrap_err());
    let line = text.lines().position(|l| l.contains("batch_sise")).unwrap() + 1;
    assert!(err.contains("bad.ron") && err.contains("batch_sise"), "{err}");
    assert!(err.contains(&format!("line {line}")), "expected line {line}: {err}");
}

#[test]
fn d_model_not_divisible_by_heads_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 5);
    config.model.n_heads = 5;
    config.model.n_kv_heads = Some(5);
    let err = error_of(&config, dir.path());
    assert!(err.contains("model.n_heads") && err.contains("divisible"), "{err}");
}

#[test]
fn kv_heads_must_divide_heads() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 5);
    config.model.n_kv_heads = Some(3);
    let err = error_of(&config, dir.path());
    assert!(err.contains("model.n_kv_heads"), "{err}");
}

#[test]
fn vocab_smaller_than_tokenizer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 5);
    config.model.vocab_size = 1000;
    let err = error_of(&config, dir.path());
    assert!(err.contains("model.vocab_size") && err.contains("tokenizer") && err.contains("4096"), "{err}");
}

#[test]
fn seq_len_longer_than_the_corpus_allows_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 5);
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Only a few words here.\n").unwrap();
    config.data.domains[0].source = Source::File(short);
    let err = error_of(&config, dir.path());
    assert!(err.contains("`english`") && err.contains("data.seq_len") && err.contains("tokens"), "{err}");
}

#[test]
fn seq_len_longer_than_max_seq_len_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 5);
    config.data.seq_len = 128;
    let err = error_of(&config, dir.path());
    assert!(err.contains("data.seq_len") && err.contains("model.max_seq_len"), "{err}");
}

#[test]
fn missing_data_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 5);
    config.data.domains[1].source = Source::File(dir.path().join("no-such-file.txt"));
    let err = error_of(&config, dir.path());
    assert!(err.contains("no-such-file.txt") && err.contains("`code`"), "{err}");
}

#[test]
fn corrupt_checkpoint_on_resume_is_an_error_and_damages_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_train_config(dir.path(), 2);
    let out = dir.path().join("run");
    train(&config, "test", &cpu_selected(), &opts(&out, false)).unwrap();
    let ckpt = btx::checkpoint::latest_checkpoint(&out).unwrap();
    std::fs::write(ckpt.join("model.safetensors"), b"not a safetensors file").unwrap();
    let before = snapshot(&out);

    let mut longer = config.clone();
    longer.steps = 2; // same run
    let err = format!("{:#}", train(&longer, "test", &cpu_selected(), &opts(&out, true)).err().expect("an error"));
    assert!(err.contains("model.safetensors"), "{err}");
    assert_eq!(snapshot(&out), before, "a failed resume changed the run folder");
}

#[test]
fn checkpoint_with_missing_tensor_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_train_config(dir.path(), 1);
    let out = dir.path().join("run");
    train(&config, "test", &cpu_selected(), &opts(&out, false)).unwrap();
    let ckpt = btx::checkpoint::latest_checkpoint(&out).unwrap();
    let path = ckpt.join("model.safetensors");
    let mut tensors = btx::checkpoint::tensor_file::read_tensors(&path).unwrap();
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    btx::checkpoint::tensor_file::write_tensors(&path, &tensors, Default::default()).unwrap();
    // Sealed again, so this reaches the tensor check rather than the hash check.
    btx::checkpoint::integrity::seal(&ckpt).unwrap();
    let err = format!("{:#}", btx::checkpoint::load_model(&ckpt, &cpu()).err().expect("an error"));
    assert!(err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("missing"), "{err}");
}

#[test]
fn resume_with_a_different_config_is_refused_and_damages_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_train_config(dir.path(), 2);
    let out = dir.path().join("run");
    train(&config, "test", &cpu_selected(), &opts(&out, false)).unwrap();
    let before = snapshot(&out);
    let mut other = config.clone();
    other.model.d_ff = 96;
    let err = format!("{:#}", train(&other, "test", &cpu_selected(), &opts(&out, true)).err().expect("an error"));
    assert!(err.contains("different config") && err.contains("`model`"), "{err}");
    assert_eq!(snapshot(&out), before);
}

#[test]
fn existing_run_without_resume_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_train_config(dir.path(), 1);
    let out = dir.path().join("run");
    train(&config, "test", &cpu_selected(), &opts(&out, false)).unwrap();
    let before = snapshot(&out);
    let err = format!("{:#}", train(&config, "test", &cpu_selected(), &opts(&out, false)).err().expect("an error"));
    assert!(err.contains("--resume"), "{err}");
    assert_eq!(snapshot(&out), before);
}

#[test]
fn command_line_errors_exit_non_zero_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr) = run_btx(&["train", "--config", "missing.ron", "--out", "run", "--device", "cpu"], dir.path());
    assert!(!ok);
    assert!(stderr.contains("missing.ron") && stderr.starts_with("error:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (ok, stderr) = run_btx(&["eval", "--checkpoint", "nowhere", "--device", "cpu"], dir.path());
    assert!(!ok);
    assert!(stderr.contains("nowhere") && stderr.contains("does not exist"), "{stderr}");

    // Expert edits of a dense model, and merge options that do not fit the method.
    let dense = seed_checkpoint(dir.path(), "dense", 1);
    let dense = dense.path.to_str().unwrap();
    let (ok, stderr) = run_btx(&["moe", "remove-expert", dense, "--expert", "code", "--out", "edited"], dir.path());
    assert!(!ok && stderr.contains("dense checkpoint") && !stderr.contains("panicked"), "{stderr}");
    assert!(!dir.path().join("edited").exists(), "nothing is written");
    let (ok, stderr) = run_btx(&["merge", "--method", "btx", "--experts", dense, dense, "--drop-ratio", "0.5", "--out", "m"], dir.path());
    assert!(!ok && stderr.contains("--drop-ratio") && stderr.contains("upcycle"), "{stderr}");
    let (ok, stderr) = run_btx(&["merge", "--method", "btx", "--experts", dense, "--moe", "(shared_expert: Seed)", "--out", "m"], dir.path());
    assert!(!ok && stderr.contains("shared_expert Seed") && stderr.contains("--seed"), "{stderr}");
}
