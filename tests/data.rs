//! Prepared data (`btx data prepare`): every input format gives each document's tokens, whole,
//! on one side of the split; domains read from the memory-mapped files train and resume
//! exactly; a recipe's `File` domains read the same windows as before preparation existed;
//! bad inputs are errors that say where, and leave nothing half-written.

use std::io::Write;
use std::path::{Path, PathBuf};

use btx::checkpoint::{self, module_tensors::module_to_tensors};
use btx::data::prepared::{PreparedDomain, PreparedMeta, TRAIN_INDEX, TRAIN_TOKENS, TokenStream, VAL_INDEX, VAL_TOKENS};
use btx::data::tokenizer::{encode, load_tokenizer};
use btx::data::{DomainConfig, Source, load_domains};
use btx::train::{TrainOptions, train};

use crate::common::*;

fn tokenizer_path() -> PathBuf {
    repo_root().join("assets/tokenizer.json")
}

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/data").join(name)
}

/// `n` distinct documents of a few lines each.
fn documents(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Document {i} begins here.\nIt has a second line about topic {}.\nAnd ends.", i * 7 % 13)).collect()
}

fn write_jsonl(path: &Path, docs: &[String]) {
    let lines: Vec<String> = docs.iter().enumerate().map(|(i, d)| serde_json::json!({"id": i, "text": d, "lang": "en"}).to_string()).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Runs `btx data prepare ARGS... --tokenizer T --out OUT`; returns (success, stderr).
fn prepare(dir: &Path, out: &Path, args: &[&str]) -> (bool, String) {
    let mut all: Vec<String> = vec!["data".into(), "prepare".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(["--tokenizer".into(), tokenizer_path().display().to_string(), "--out".into(), out.display().to_string()]);
    run_btx(&all.iter().map(String::as_str).collect::<Vec<_>>(), dir)
}

/// The documents of one prepared stream, as token-id lists (cut at the index's offsets).
fn stream_documents(dir: &Path, tokens: &str, index: &str) -> Vec<Vec<u32>> {
    let meta = PreparedMeta::read(dir).unwrap();
    let stream = TokenStream::open(&dir.join(tokens), meta.dtype, None).unwrap();
    let lengths = btx::data::inspect::document_lengths(&dir.join(index), stream.len() as u64).unwrap();
    let mut start = 0;
    lengths
        .iter()
        .map(|&n| {
            let doc = stream.read(start, n as usize);
            start += n as usize;
            doc
        })
        .collect()
}

/// Every document of `docs` appears exactly once, whole and ended by the end-of-text token,
/// in the training or the validation stream; returns how many were held out.
fn assert_documents_split(dir: &Path, docs: &[String]) -> usize {
    let tokenizer = load_tokenizer(&tokenizer_path()).unwrap();
    let eos = tokenizer.token_to_id("<|endoftext|>").unwrap();
    let (train, val) = (stream_documents(dir, TRAIN_TOKENS, TRAIN_INDEX), stream_documents(dir, VAL_TOKENS, VAL_INDEX));
    let mut expected: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| {
            let mut ids = tokenizer.encode_fast(d.as_str(), false).unwrap().get_ids().to_vec();
            ids.push(eos);
            ids
        })
        .collect();
    let mut found: Vec<Vec<u32>> = train.iter().chain(&val).cloned().collect();
    expected.sort();
    found.sort();
    assert_eq!(found, expected, "the streams hold exactly the documents, each whole");
    val.len()
}

#[test]
fn every_input_format_gives_each_document_whole_on_one_side() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents(200);
    // JSON lines, plain and compressed, must give the same streams.
    let jsonl = dir.path().join("docs.jsonl");
    write_jsonl(&jsonl, &docs);
    let text = std::fs::read(&jsonl).unwrap();
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(dir.path().join("docs.jsonl.gz")).unwrap(), flate2::Compression::default());
    gz.write_all(&text).unwrap();
    gz.finish().unwrap();
    std::fs::write(dir.path().join("docs.jsonl.zst"), zstd::encode_all(&text[..], 3).unwrap()).unwrap();
    let mut streams = Vec::new();
    for name in ["docs.jsonl", "docs.jsonl.gz", "docs.jsonl.zst"] {
        let out = dir.path().join(format!("prepared-{name}"));
        let (ok, err) = prepare(dir.path(), &out, &[name, "--val-fraction", "0.1"]);
        assert!(ok, "{name}: {err}");
        let held_out = assert_documents_split(&out, &docs);
        assert!((5..=40).contains(&held_out), "{name}: {held_out} of 200 documents held out at 10%");
        streams.push((std::fs::read(out.join(TRAIN_TOKENS)).unwrap(), std::fs::read(out.join(VAL_TOKENS)).unwrap()));
        let meta = PreparedMeta::read(&out).unwrap();
        assert_eq!(meta.inputs.len(), 1);
        assert_eq!(meta.inputs[0].sha256, btx::fsutil::sha256_file(&dir.path().join(name)).unwrap());
        assert_eq!((meta.train.documents + meta.val.documents) as usize, 200);
    }
    assert!(streams.windows(2).all(|w| w[0] == w[1]), "plain, gzip and zstd JSON lines give the same tokens");

    // Text: a file per document, or a document per line.
    let texts = dir.path().join("texts");
    std::fs::create_dir(&texts).unwrap();
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(texts.join(format!("{i:03}.txt")), d).unwrap();
    }
    let out = dir.path().join("prepared-txt");
    let (ok, err) = prepare(dir.path(), &out, &["texts", "--val-fraction", "0.1"]);
    assert!(ok, "{err}");
    assert_documents_split(&out, &docs);
    assert_eq!(std::fs::read(out.join(TRAIN_TOKENS)).unwrap(), streams[0].0, "a folder of .txt files splits like the JSON lines");
    let lines: Vec<String> = docs.iter().map(|d| d.replace('\n', " ")).collect();
    std::fs::write(dir.path().join("lines.txt"), lines.join("\n")).unwrap();
    let out = dir.path().join("prepared-lines");
    let (ok, err) = prepare(dir.path(), &out, &["lines.txt", "--doc-per-line", "--val-docs", "17"]);
    assert!(ok, "{err}");
    assert_eq!(assert_documents_split(&out, &lines), 17, "--val-docs holds out exactly that many");

    // Parquet written by pyarrow, snappy and zstd: 39 documents (one row is null).
    let parquet_docs: Vec<String> =
        (0..40).filter(|&i| i != 7).map(|i| format!("Document {i}: the quick brown fox jumps over the lazy dog, {i} times.\nSecond line {i}.")).collect();
    for name in ["documents.parquet", "documents-zstd.parquet"] {
        let out = dir.path().join(format!("prepared-{name}"));
        let (ok, err) = prepare(dir.path(), &out, &[fixture(name).to_str().unwrap(), "--val-fraction", "0.2"]);
        assert!(ok, "{name}: {err}");
        assert_documents_split(&out, &parquet_docs);
        assert_eq!(PreparedMeta::read(&out).unwrap().empty_documents, 1);
    }
}

#[test]
fn a_vocabulary_over_65536_tokens_is_stored_as_u32() {
    // The shipped tokenizer with its vocabulary padded to 70,000 entries (merges unchanged, so
    // the ids of any text are the same): its tokens need 32 bits.
    let dir = tempfile::tempdir().unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tokenizer_path()).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    for id in vocab.len()..70_000 {
        vocab.insert(format!("zzfill{id}"), serde_json::json!(id));
    }
    let big = dir.path().join("big-tokenizer.json");
    std::fs::write(&big, json.to_string()).unwrap();
    let docs = documents(60);
    write_jsonl(&dir.path().join("docs.jsonl"), &docs);
    let out = dir.path().join("prepared");
    let mut args: Vec<String> = ["data", "prepare", "docs.jsonl", "--val-docs", "6", "--out"].iter().map(|s| s.to_string()).collect();
    args.extend([out.display().to_string(), "--tokenizer".into(), big.display().to_string()]);
    let (ok, err) = run_btx(&args.iter().map(String::as_str).collect::<Vec<_>>(), dir.path());
    assert!(ok, "{err}");
    let meta = PreparedMeta::read(&out).unwrap();
    assert_eq!(meta.dtype, btx::data::prepared::TokenDtype::U32);
    assert_eq!(std::fs::metadata(out.join(TRAIN_TOKENS)).unwrap().len(), meta.train.tokens * 4);
    assert_eq!(assert_documents_split(&out, &docs), 6);
}

#[test]
fn the_split_is_by_document_hash_and_a_glob_reads_many_files() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents(300);
    // The same documents in three files, and a duplicate: duplicates land on one side.
    let mut with_copy = docs.clone();
    with_copy.push(docs[5].clone());
    for (i, part) in with_copy.chunks(101).enumerate() {
        write_jsonl(&dir.path().join(format!("part-{i}.jsonl")), part);
    }
    let out = dir.path().join("prepared");
    let (ok, err) = prepare(dir.path(), &out, &["part-*.jsonl", "--val-fraction", "0.2"]);
    assert!(ok, "{err}");
    let meta = PreparedMeta::read(&out).unwrap();
    assert_eq!(meta.inputs.len(), 3);
    let val = stream_documents(&out, VAL_TOKENS, VAL_INDEX);
    let train = stream_documents(&out, TRAIN_TOKENS, TRAIN_INDEX);
    assert!(!val.iter().any(|v| train.contains(v)), "no document is on both sides");
    // Which documents are held out depends on their text and the seed, not on the files.
    let again = dir.path().join("again");
    write_jsonl(&dir.path().join("all.jsonl"), &with_copy);
    assert!(prepare(dir.path(), &again, &["all.jsonl", "--val-fraction", "0.2"]).0);
    assert_eq!(std::fs::read(again.join(VAL_TOKENS)).unwrap(), std::fs::read(out.join(VAL_TOKENS)).unwrap());
    let other_seed = dir.path().join("other-seed");
    assert!(prepare(dir.path(), &other_seed, &["all.jsonl", "--val-fraction", "0.2", "--split-seed", "1"]).0);
    assert_ne!(std::fs::read(other_seed.join(VAL_TOKENS)).unwrap(), std::fs::read(out.join(VAL_TOKENS)).unwrap());
    // `btx data inspect` reads the counts back from the files.
    let (ok, report) = run_btx_stdout(&["data", "inspect", out.to_str().unwrap()], dir.path());
    assert!(ok, "{report}");
    assert!(report.contains(&format!("{:>12} {:>10}", meta.train.tokens, meta.train.documents)), "{report}");
    assert!(report.contains("Document"), "a decoded sample: {report}");
}

/// Runs `btx`; returns (success, stdout + stderr).
fn run_btx_stdout(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_btx")).args(args).current_dir(cwd).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_script_filter_keeps_one_writing_system() {
    // One language in two scripts, a document per line, mixed in one file.
    let dir = tempfile::tempdir().unwrap();
    let arabic: Vec<String> = std::fs::read_to_string(repo_root().join("assets/corpora/arabic.txt")).unwrap().lines().take(60).map(String::from).collect();
    let latin: Vec<String> = std::fs::read_to_string(repo_root().join("assets/corpora/arabic_latin.txt")).unwrap().lines().take(60).map(String::from).collect();
    let mixed: Vec<String> = arabic.iter().zip(&latin).flat_map(|(a, l)| [a.clone(), l.clone()]).collect();
    std::fs::write(dir.path().join("mixed.txt"), mixed.join("\n")).unwrap();
    for (script, kept) in [("Latin", &latin), ("Arabic", &arabic)] {
        let out = dir.path().join(script);
        let (ok, err) = prepare(dir.path(), &out, &["mixed.txt", "--doc-per-line", "--script", script, "--val-docs", "6"]);
        assert!(ok, "{err}");
        assert_documents_split(&out, kept);
        assert_eq!(PreparedMeta::read(&out).unwrap().empty_documents, 60, "{script}: the other script's lines are left out");
    }
}

#[test]
fn a_file_domain_reads_the_windows_it_read_before_preparation() {
    // Before prepared data, a `File` domain was the file's text encoded line by line, cut into
    // windows of seq_len + 1 at multiples of seq_len, every val_every-th held out: the shipped
    // recipes' figures stay what they were only if this stays so.
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_train_config(dir.path(), 1);
    let tokenizer = load_tokenizer(&tokenizer_path()).unwrap();
    let domains = load_domains(&config.data, config.model.vocab_size, "test").unwrap();
    for (domain, source) in domains.iter().zip(&config.data.domains) {
        let text = match &source.source {
            Source::File(path) => std::fs::read_to_string(path).unwrap(),
            Source::Arithmetic(a) => btx::data::synthetic::arithmetic_text(a),
            other => panic!("unexpected source {other:?}"),
        };
        let ids = encode(&tokenizer, &text).unwrap();
        let (seq, every) = (config.data.seq_len, config.data.val_every);
        let windows: Vec<Vec<u32>> = (0..(ids.len() - 1) / seq).map(|i| ids[i * seq..i * seq + seq + 1].to_vec()).collect();
        let val: Vec<Vec<u32>> = windows.iter().enumerate().filter(|(i, _)| i % every == every - 1).map(|(_, w)| w.clone()).collect();
        let train: Vec<Vec<u32>> = windows.iter().enumerate().filter(|(i, _)| i % every != every - 1).map(|(_, w)| w.clone()).collect();
        assert_eq!(domain.train.range(0..usize::MAX), train, "domain {}", domain.name);
        assert_eq!(domain.val.range(0..usize::MAX), val, "domain {}", domain.name);
    }
}

#[test]
fn training_on_prepared_data_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_jsonl(&dir.path().join("docs.jsonl"), &documents(400));
    let prepared = dir.path().join("prepared");
    let (ok, err) = prepare(dir.path(), &prepared, &["docs.jsonl", "--val-fraction", "0.1"]);
    assert!(ok, "{err}");
    let mut config = tiny_train_config(dir.path(), 8);
    config.data.domains.push(DomainConfig { name: "docs".into(), source: Source::Prepared(prepared.clone()), weight: 2.0 });
    config.checkpoint_every = 3;
    let options = |out: &Path, resume, stop_after| TrainOptions { out: out.to_path_buf(), resume, progress: false, stop_after };
    let straight = dir.path().join("straight");
    let summary = train(&config, "test", &cpu_selected(), &options(&straight, false, None)).unwrap();
    assert!(summary.final_eval.iter().any(|e| e.domain == "docs" && e.loss.is_finite()));
    let interrupted = dir.path().join("interrupted");
    train(&config, "test", &cpu_selected(), &options(&interrupted, false, Some(5))).unwrap();
    let resumed = train(&config, "test", &cpu_selected(), &options(&interrupted, true, None)).unwrap();
    let device = cpu();
    let (_, a) = checkpoint::load_model(&summary.checkpoint, &device).unwrap();
    let (_, b) = checkpoint::load_model(&resumed.checkpoint, &device).unwrap();
    let (a, b) = (module_to_tensors(&a), module_to_tensors(&b));
    for (name, ta) in &a {
        assert!(max_abs_diff(&ta.values, &b[name].values) <= 1e-6, "tensor {name}");
    }
    // The validation stream is read as it was written: windows of whole held-out documents.
    let opened = PreparedDomain::open(&prepared, config.data.seq_len, config.data.val_every, None).unwrap();
    assert_eq!(opened.val.len(), (opened.meta.val.tokens as usize - 1) / config.data.seq_len);
}

/// `btx data prepare` fails with `expected` in its message and leaves no output folder.
fn assert_refused(dir: &Path, args: &[&str], expected: &[&str]) {
    let out = dir.join("refused");
    let (ok, err) = prepare(dir, &out, args);
    assert!(!ok, "{args:?} should fail");
    for e in expected {
        assert!(err.contains(e), "{args:?}: expected `{e}` in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{args:?} left {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "temporary folders left: {leftovers:?}");
}

#[test]
fn bad_inputs_are_refused_naming_the_file_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = documents(50);
    write_jsonl(&d.join("good.jsonl"), &good);
    let mut text = std::fs::read_to_string(d.join("good.jsonl")).unwrap();
    text.push_str("{\"text\": \"unterminated\n");
    std::fs::write(d.join("malformed.jsonl"), &text).unwrap();
    assert_refused(d, &["malformed.jsonl"], &["malformed.jsonl line 51", "not a JSON object"]);

    std::fs::write(d.join("no-field.jsonl"), "{\"text\": \"a\"}\n{\"content\": \"b\", \"id\": 2}\n").unwrap();
    assert_refused(d, &["no-field.jsonl"], &["no-field.jsonl line 2", "no field `text`", "`content`, `id`", "--text-field"]);

    let mut bytes = b"{\"text\": \"fine\"}\n{\"text\": \"caf".to_vec();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b"\"}\n");
    std::fs::write(d.join("latin1.jsonl"), &bytes).unwrap();
    assert_refused(d, &["latin1.jsonl"], &["latin1.jsonl", "not UTF-8 text at byte 30", "line 2"]);
    let mut text_bytes = b"plain text ".to_vec();
    text_bytes.push(0xe9);
    std::fs::write(d.join("latin1.txt"), &text_bytes).unwrap();
    assert_refused(d, &["latin1.txt"], &["latin1.txt", "not UTF-8 text at byte 11"]);

    assert_refused(d, &[fixture("documents.parquet").to_str().unwrap(), "--text-field", "body"], &["documents.parquet", "no column `body`", "`id`, `text`, `meta`"]);
    assert_refused(d, &[fixture("documents.parquet").to_str().unwrap(), "--text-field", "id"], &["column `id` is not a column of strings"]);

    std::fs::write(d.join("empty.jsonl"), "{\"text\": \"\"}\n\n{\"text\": null}\n").unwrap();
    assert_refused(d, &["empty.jsonl"], &["empty.jsonl", "the domain is empty"]);
    assert_refused(d, &["no-such-*.jsonl"], &["no-such-*.jsonl names no file"]);
    assert_refused(d, &["good.jsonl", "--val-fraction", "0.0001"], &["no document of", "was held out for validation", "50 documents"]);

    // Prepared data used with another tokenizer, or after its inputs changed.
    let prepared = d.join("prepared");
    assert!(prepare(d, &prepared, &["good.jsonl", "--val-fraction", "0.2"]).0);
    let mut config = tiny_train_config(d, 1);
    config.data.domains = vec![DomainConfig { name: "docs".into(), source: Source::Prepared(prepared.clone()), weight: 1.0 }];
    config.data.seq_len = 8;
    assert!(load_domains(&config.data, config.model.vocab_size, "cfg.ron").is_ok());
    let other = d.join("other-tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tokenizer_path()).unwrap()).unwrap();
    json["model"]["vocab"].as_object_mut().unwrap().insert("zzzz-new".into(), serde_json::json!(4096));
    std::fs::write(&other, json.to_string()).unwrap();
    let mut with_other = config.clone();
    with_other.data.tokenizer = other.clone();
    let err = format!("{:#}", load_domains(&with_other.data, 8192, "cfg.ron").err().expect("another tokenizer is refused"));
    assert!(err.contains("cfg.ron: domain `docs`") && err.contains("tokenized with") && err.contains("tokenizer.json (sha256") && err.contains("other-tokenizer.json (sha256"), "{err}");
    write_jsonl(&d.join("good.jsonl"), &documents(51));
    let err = format!("{:#}", load_domains(&config.data, config.model.vocab_size, "cfg.ron").err().expect("changed inputs are refused"));
    assert!(err.contains("out of date") && err.contains("good.jsonl changed since it was prepared"), "{err}");
}

#[test]
fn a_recipe_prepares_each_domain_once_and_its_stages_read_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_jsonl(&d.join("docs.jsonl"), &documents(300));
    let recipe = format!(
        r#"(
    model: (vocab_size: 4096, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ff: 64, max_seq_len: 64),
    tokenizer: "{tokenizer}",
    seq_len: 32,
    val_every: 10,
    val_fraction: 0.1,
    domains: [
        (name: "english", source: File("{english}")),
        (name: "docs", source: Jsonl(files: ["docs.jsonl"], field: "text")),
    ],
    optimizer: (lr: 1e-2, warmup_steps: 2),
    batch_size: 4,
    seed_model: Train(steps: 4, mixture: [("english", 1.0), ("docs", 1.0)]),
    experts: [(name: "docs", data: [("docs", 1.0)], steps: 3)],
    keep_seed: true,
    merges: [(name: "btx", method: Btx)],
    finetune: (steps: 2),
    eval: (batches: 1, arithmetic_problems: 0),
)"#,
        tokenizer = tokenizer_path().display(),
        english = small_corpus(d, "english.txt", 20_000).display(),
    );
    std::fs::write(d.join("r.ron"), recipe).unwrap();
    let run = d.join("run");
    let (ok, err) = run_btx(&["recipe", "run", "r.ron", "--out", run.to_str().unwrap(), "--device", "cpu"], d);
    assert!(ok, "{err}");
    for domain in ["english", "docs"] {
        assert!(run.join("data").join(domain).join("tokens/meta.json").is_file());
    }
    // Every training stage reads prepared tokens: no stage config names a raw source.
    for stage in ["seed", "experts/docs", "finetune/btx"] {
        let config = std::fs::read_to_string(run.join(stage).join("stage.ron")).unwrap();
        assert!(config.contains("Prepared(") && !config.contains("Jsonl(") && !config.contains("File("), "{stage}: {config}");
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("docs"), "{report}");
    // Prepared data made with another tokenizer stops a recipe before any stage runs.
    let other = d.join("other-tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tokenizer_path()).unwrap()).unwrap();
    json["model"]["vocab"].as_object_mut().unwrap().insert("zzzz-new".into(), serde_json::json!(4096));
    std::fs::write(&other, json.to_string()).unwrap();
    let prepared_elsewhere = d.join("prepared-other");
    let (ok, err) = run_btx(&["data", "prepare", "docs.jsonl", "--tokenizer", other.to_str().unwrap(), "--out", prepared_elsewhere.to_str().unwrap(), "--val-fraction", "0.1"], d);
    assert!(ok, "{err}");
    let with_prepared = std::fs::read_to_string(d.join("r.ron")).unwrap().replace(r#"Jsonl(files: ["docs.jsonl"], field: "text")"#, r#"Prepared("prepared-other")"#);
    std::fs::write(d.join("r2.ron"), with_prepared).unwrap();
    let (ok, err) = run_btx(&["recipe", "run", "r2.ron", "--out", d.join("run2").to_str().unwrap(), "--device", "cpu"], d);
    assert!(!ok && err.contains("r2.ron: domain `docs`") && err.contains("other-tokenizer.json (sha256") && !d.join("run2/seed").exists(), "{err}");
    // A second run finds everything up to date, the data stages included.
    let (ok, err) = run_btx(&["recipe", "run", "r.ron", "--out", run.to_str().unwrap(), "--device", "cpu"], d);
    assert!(ok && err.contains("[data/docs] up to date") && !err.contains("running"), "{err}");
}
