//! Tokenizing once: documents in, the token files of `prepared` out.
//!
//! One thread reads (decompresses, parses, filters, hashes) and hands batches of documents
//! over a bounded channel; the tokenizer encodes each batch on all cores (its batch encoding
//! runs on rayon); the main thread appends the ids to the train or validation stream. Memory
//! stays at a few batches whatever the input's size, and the output folder appears whole or
//! not at all.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::corpus::{Script, Source};
use super::documents::{ReadOptions, read_documents};
use super::stream_writer::StreamWriter;
use super::prepare_chat::{ChatOptions, ChatRecord, LossOn, RenderedRecord, TRAIN_MASK, VAL_MASK, each_conversation, template_for};
use super::prepared::{InputRecord, META_FILE, PreparedMeta, SplitRule, TRAIN_INDEX, TRAIN_TOKENS, TokenizerFingerprint, VAL_INDEX, VAL_TOKENS};

/// Text handed to the tokenizer per batch (and at most this many pieces). The tokenizer's
/// working memory is many times its input's size (about 100 bytes per token): on the data
/// benchmark's corpus 2 MB batches kept the peak near 270 MB, 8 MB ones reached 750 MB.
const BATCH_BYTES: usize = 2 << 20;
const BATCH_PIECES: usize = 4096;
/// A longer document is encoded in pieces cut at line ends (as the line-by-line encoding of
/// `File` domains always was): the tokenizer's time and memory grow faster than linearly
/// with one input's length (1 MB pieces: 27 s and 420 MB for the 100 MB corpus, 256 KB:
/// 22 s and 270 MB). Only whitespace just before a cut can tokenize differently.
const PIECE_BYTES: usize = 256 << 10;

/// A piece of a document's text, and where its ids go.
struct Piece {
    text: String,
    val: bool,
    /// The document's last piece (its end-of-text token follows).
    last: bool,
    /// A conversation's replies (byte ranges of `text`): its tokens get a loss mask.
    replies: Option<Vec<std::ops::Range<usize>>>,
}

/// Where the documents come from.
pub enum Documents {
    /// Users' files: every document held out or not by its hash.
    Files { files: Vec<PathBuf>, options: ReadOptions, script: Option<Script> },
    /// One continuous text (a recipe's `File`, `Script` or `Arithmetic` domain), given as its
    /// lines; no end-of-text tokens, and the split is made when read (`SplitRule::Interleaved`).
    Stream(Box<dyn FnOnce(&AtomicU64, &mut dyn FnMut(String) -> Result<()>) -> Result<Vec<InputRecord>> + Send>),
}

/// What `prepare` is asked to make.
pub struct Preparation {
    pub documents: Documents,
    pub tokenizer_path: PathBuf,
    /// Held-out share of documents (Files only), or an exact number of documents.
    pub val_fraction: f64,
    pub val_docs: Option<u64>,
    pub split_seed: u64,
    /// The end-of-text token; found from the tokenizer when not given.
    pub eos: Option<String>,
    /// Recorded in meta.json.
    pub source: Option<Source>,
    pub progress: bool,
    /// The files hold conversations, rendered with a chat template (Files only).
    pub chat: Option<ChatOptions>,
}

/// A seeded 64-bit hash of a document's text (FNV-1a, then SplitMix64's finaliser to spread
/// the bits): the same document is held out on every machine and in every run.
pub fn document_hash(text: &str, seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// The lines of `text` mostly written in `script` (a document with none is empty).
fn keep_script(text: &str, script: Script) -> String {
    text.split_inclusive('\n').filter(|l| script.matches_line(l)).collect()
}

/// The end-of-text token: `explicit`, else the `eos_token` of a tokenizer_config.json beside
/// the tokenizer, else the first of the usual names the vocabulary has.
pub fn eos_token(tokenizer: &Tokenizer, path: &Path, explicit: Option<&str>) -> Result<(String, u32)> {
    let id = |t: &str| tokenizer.token_to_id(t).map(|id| (t.to_string(), id));
    if let Some(t) = explicit {
        return id(t).with_context(|| format!("tokenizer {} has no token `{t}` (--eos)", path.display()));
    }
    let config = path.with_file_name("tokenizer_config.json");
    let from_config = std::fs::read_to_string(&config).ok().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()).and_then(|v| match &v["eos_token"] {
        serde_json::Value::String(s) => Some(s.clone()),
        other => other["content"].as_str().map(str::to_string),
    });
    from_config
        .iter()
        .map(String::as_str)
        .chain([super::tokenizer::END_OF_TEXT, "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>"])
        .find_map(id)
        .with_context(|| format!("tokenizer {} has none of the usual end-of-text tokens; name its token with --eos", path.display()))
}

/// Tokenizes `prep`'s documents into the folder `out` (replacing prepared data there).
pub fn prepare(prep: Preparation, out: &Path) -> Result<PreparedMeta> {
    if out.exists() && !out.join(META_FILE).is_file() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not prepared data; choose another --out or remove it", out.display());
    }
    let tokenizer = super::tokenizer::load_tokenizer(&prep.tokenizer_path)?;
    let fingerprint = TokenizerFingerprint::of(&tokenizer, &crate::config::resolve(&prep.tokenizer_path))?;
    let interleaved = matches!(prep.documents, Documents::Stream(_));
    if interleaved && prep.chat.is_some() {
        bail!("chat data comes from JSON lines or Parquet files, not a continuous text");
    }
    let template = prep.chat.as_ref().map(|options| template_for(&prep.tokenizer_path, options)).transpose()?;
    // A chat template writes its own turn and sequence markers: no end-of-text is added.
    let eos = if interleaved || template.is_some() { None } else { Some(eos_token(&tokenizer, &prep.tokenizer_path, prep.eos.as_deref())?) };
    let split = if interleaved {
        SplitRule::Interleaved
    } else {
        SplitRule::Documents { val_fraction: prep.val_docs.is_none().then_some(prep.val_fraction), val_docs: prep.val_docs, seed: prep.split_seed }
    };
    let reader = match &prep.documents {
        Documents::Files { files, .. } if prep.chat.is_some() => {
            let field = prep.chat.as_ref().and_then(|c| c.field.clone()).map_or("`messages` or `conversations`".to_string(), |f| format!("`{f}`"));
            format!("conversations ({} files, field {field}) rendered with a chat template", files.len())
        }
        Documents::Files { files, options, script } => {
            let filter = script.map(|s| format!(", lines in {s:?} script")).unwrap_or_default();
            format!("{}{filter}", options.describe(files))
        }
        Documents::Stream(_) => "one continuous text, encoded line by line".to_string(),
    };
    let mut meta = PreparedMeta::new(fingerprint, eos.clone(), split, reader);
    meta.source = prep.source.clone();
    meta.chat = match (&template, &prep.chat) {
        (Some(t), Some(options)) => Some(ChatRecord { template: t.origin.clone(), options: options.clone(), end_of_turn: t.end_of_turn.clone() }),
        _ => None,
    };
    let mut result = None;
    crate::fsutil::write_dir_atomic(out, |tmp| {
        result = Some(write_streams(prep, &tokenizer, template.as_ref(), meta, tmp)?);
        Ok(())
    })?;
    result.ok_or_else(|| anyhow!("no data written"))
}

/// Reads, encodes and writes; returns the finished meta.json (also written to `dir`).
fn write_streams(prep: Preparation, tokenizer: &Tokenizer, template: Option<&crate::chat::ChatTemplate>, mut meta: PreparedMeta, dir: &Path) -> Result<PreparedMeta> {
    let started = Instant::now();
    let read = AtomicU64::new(0);
    let total_bytes: u64 = match &prep.documents {
        Documents::Files { files, .. } => files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum(),
        Documents::Stream(_) => 0,
    };
    let chat = prep.chat.clone().zip(template);
    let threshold = val_docs_threshold_of(&prep, chat.as_ref())?;
    let (val_fraction, seed) = (prep.val_fraction, prep.split_seed);
    let holds_out = move |text: &str| match threshold {
        Some(t) => document_hash(text, seed) <= t,
        None => ((document_hash(text, seed) >> 11) as f64 / (1u64 << 53) as f64) < val_fraction,
    };
    let (sender, receiver) = sync_channel::<Vec<Piece>>(2);
    let empty = AtomicU64::new(0);
    let bar = progress_bar(prep.progress, total_bytes);
    let masked = chat.as_ref().is_some_and(|(options, _)| options.loss_on == LossOn::Replies);
    let mask = |name| masked.then_some(name);
    let mut train = StreamWriter::create(dir, TRAIN_TOKENS, TRAIN_INDEX, mask(TRAIN_MASK), meta.dtype)?;
    let mut val = StreamWriter::create(dir, VAL_TOKENS, VAL_INDEX, mask(VAL_MASK), meta.dtype)?;
    let raw_offsets = crate::chat::with_raw_offsets(tokenizer);
    let eos_id = meta.eos.as_ref().map(|(_, id)| *id);
    let inputs = std::thread::scope(|scope| -> Result<Vec<InputRecord>> {
        let reader = scope.spawn(|| -> Result<Vec<InputRecord>> {
            let mut batch = Batcher { sender, pieces: Vec::new(), bytes: 0 };
            let inputs = read_pieces(prep.documents, chat.as_ref(), &holds_out, &read, &empty, &mut batch)?;
            batch.flush()?;
            Ok(inputs)
        });
        // Owned here: an encoding error drops it, which stops the reader's next send.
        for pieces in receiver {
            let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
            // Offsets (slower) only where a mask needs them, and as in the text itself.
            let encodings = if masked { raw_offsets.encode_batch(texts, false) } else { tokenizer.encode_batch_fast(texts, false) };
            let encodings = encodings.map_err(|e| anyhow!("tokenizer: {e}"))?;
            for (piece, encoding) in pieces.iter().zip(&encodings) {
                let stream = if piece.val { &mut val } else { &mut train };
                stream.push(encoding.get_ids())?;
                if let Some(replies) = &piece.replies {
                    stream.push_mask(&crate::chat::mask::mask_from_offsets(encoding.get_offsets(), replies))?;
                }
                if piece.last {
                    if let Some(eos) = eos_id {
                        stream.push(&[eos])?;
                    }
                    stream.end_document();
                }
            }
            bar.set_position(read.load(Ordering::Relaxed));
            let tokens = train.tokens + val.tokens;
            bar.set_message(format!("{} tokens, {:.0} tokens/s", tokens, tokens as f64 / started.elapsed().as_secs_f64()));
        }
        // A reader error ends the channel early: report it rather than a short output.
        reader.join().map_err(|_| anyhow!("the reading thread panicked"))?
    })?;
    bar.finish_and_clear();
    meta.inputs = inputs;
    meta.empty_documents = empty.into_inner();
    meta.train = train.finish()?;
    meta.val = val.finish()?;
    check_not_empty(&meta)?;
    crate::fsutil::write_atomic(&dir.join(META_FILE), serde_json::to_string_pretty(&meta)?.as_bytes())?;
    if prep.progress {
        say_rate(&meta, read.load(Ordering::Relaxed), started.elapsed().as_secs_f64());
    }
    Ok(meta)
}

/// The reading side of `write_streams`: every document (or conversation, rendered; or line
/// of a continuous text) as pieces for the tokenizer, each marked held out or not by
/// `holds_out`; documents left empty by the script filter are counted in `empty`.
fn read_pieces(
    documents: Documents,
    chat: Option<&(ChatOptions, &crate::chat::ChatTemplate)>,
    holds_out: &dyn Fn(&str) -> bool,
    read: &AtomicU64,
    empty: &AtomicU64,
    batch: &mut Batcher,
) -> Result<Vec<InputRecord>> {
    Ok(match documents {
        Documents::Stream(produce) => produce(read, &mut |line| batch.push(Piece { text: line, val: false, last: false, replies: None }))?,
        Documents::Files { files, .. } if chat.is_some() => {
            let (options, template) = chat.expect("chat data");
            each_conversation(&files, options, template, read, &mut |RenderedRecord { text, replies }| {
                let val = holds_out(&text);
                batch.push(Piece { text, val, last: true, replies })
            })?
        }
        Documents::Files { files, options, script } => each_document(&files, &options, read, &mut |text| {
            let text = match script {
                Some(s) => keep_script(&text, s),
                None => text,
            };
            if text.is_empty() {
                empty.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            let val = holds_out(&text);
            let pieces = split_long(text);
            let n = pieces.len();
            for (i, text) in pieces.into_iter().enumerate() {
                batch.push(Piece { text, val, last: i + 1 == n, replies: None })?;
            }
            Ok(())
        })?,
    })
}

/// What was prepared, and how fast.
fn say_rate(meta: &PreparedMeta, bytes_read: u64, seconds: f64) {
    let mb = bytes_read as f64 / 1e6;
    eprintln!(
        "prepared {} + {} documents ({} train + {} validation tokens) from {mb:.1} MB in {seconds:.1} s: {:.1} MB/s, {:.0} tokens/s",
        meta.train.documents,
        meta.val.documents,
        meta.train.tokens,
        meta.val.tokens,
        mb / seconds,
        (meta.train.tokens + meta.val.tokens) as f64 / seconds
    );
}

fn check_not_empty(meta: &PreparedMeta) -> Result<()> {
    let inputs = || meta.inputs.iter().map(|i| i.path.display().to_string()).collect::<Vec<_>>().join(", ");
    if meta.train.tokens + meta.val.tokens == 0 {
        bail!("no text in {} ({}; {} empty documents): the domain is empty", inputs(), meta.reader, meta.empty_documents);
    }
    if let SplitRule::Documents { val_fraction, val_docs, .. } = &meta.split {
        let asked = val_docs.map_or_else(|| format!("--val-fraction {}", val_fraction.unwrap_or(0.0)), |n| format!("--val-docs {n}"));
        if meta.val.documents == 0 {
            bail!("no document of {} was held out for validation ({} documents, {asked}); raise --val-fraction or set --val-docs", inputs(), meta.train.documents);
        }
        if meta.train.documents == 0 {
            bail!("every document of {} was held out for validation ({asked}); nothing is left to train on", inputs());
        }
    }
    Ok(())
}

/// Reads every document of `files`; returns what each input was.
fn each_document(files: &[PathBuf], options: &ReadOptions, read: &AtomicU64, emit: &mut dyn FnMut(String) -> Result<()>) -> Result<Vec<InputRecord>> {
    files
        .iter()
        .map(|path| {
            let path = crate::config::resolve(path);
            let (bytes, modified) = InputRecord::stat(&path)?;
            let sha256 = read_documents(&path, options, read, emit)?;
            Ok(InputRecord { path, bytes, modified, sha256 })
        })
        .collect()
}

/// With `--val-docs N`, the hash under which exactly N documents (or conversations, as
/// rendered) fall.
fn val_docs_threshold_of(prep: &Preparation, chat: Option<&(ChatOptions, &crate::chat::ChatTemplate)>) -> Result<Option<u64>> {
    let (Documents::Files { files, options, script }, Some(n)) = (&prep.documents, prep.val_docs) else { return Ok(None) };
    let threshold = val_docs_threshold(prep.split_seed, n, &mut |each| match chat {
        Some((chat_options, template)) => each_conversation(files, chat_options, template, &AtomicU64::new(0), &mut |r| each(r.text)).map(drop),
        None => each_text(files, options, *script, each),
    })?;
    Ok(Some(threshold))
}

/// The documents' texts as prepared (after the script filter), read but not tokenized.
fn each_text(files: &[PathBuf], options: &ReadOptions, script: Option<Script>, each: &mut dyn FnMut(String) -> Result<()>) -> Result<()> {
    each_document(files, options, &AtomicU64::new(0), &mut |text| {
        each(match script {
            Some(s) => keep_script(&text, s),
            None => text,
        })
    })
    .map(drop)
}

/// The hash under which exactly `n` documents fall (the `n` smallest; a first pass over the
/// texts `read` gives).
fn val_docs_threshold(seed: u64, n: u64, read: &mut dyn FnMut(&mut dyn FnMut(String) -> Result<()>) -> Result<()>) -> Result<u64> {
    let mut smallest = std::collections::BinaryHeap::new();
    read(&mut |text| {
        if !text.is_empty() {
            smallest.push(document_hash(&text, seed));
            if smallest.len() as u64 > n {
                smallest.pop();
            }
        }
        Ok(())
    })?;
    Ok(if n == 0 { 0 } else { smallest.peek().copied().unwrap_or(0) })
}

/// A document cut at line ends into pieces of about `PIECE_BYTES`.
fn split_long(text: String) -> Vec<String> {
    if text.len() <= PIECE_BYTES {
        return vec![text];
    }
    let mut pieces = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let last = pieces.last_mut().expect("one piece");
        if !last.is_empty() && last.len() + line.len() > PIECE_BYTES {
            pieces.push(String::new());
        }
        pieces.last_mut().expect("one piece").push_str(line);
    }
    pieces
}

/// Groups pieces into batches for the tokenizer.
struct Batcher {
    sender: std::sync::mpsc::SyncSender<Vec<Piece>>,
    pieces: Vec<Piece>,
    bytes: usize,
}

impl Batcher {
    fn push(&mut self, piece: Piece) -> Result<()> {
        self.bytes += piece.text.len();
        self.pieces.push(piece);
        if self.bytes >= BATCH_BYTES || self.pieces.len() >= BATCH_PIECES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.bytes = 0;
        let batch = std::mem::take(&mut self.pieces);
        if batch.is_empty() {
            return Ok(());
        }
        // The receiver is gone only when encoding failed; that error is the one reported.
        self.sender.send(batch).map_err(|_| anyhow!("tokenizing stopped"))
    }
}

fn progress_bar(show: bool, total: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("[{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// What a recipe's data stage (`btx data prepare-domain`) prepares: one domain's source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainPreparation {
    pub domain: String,
    pub tokenizer: PathBuf,
    pub source: Source,
    pub val_fraction: f64,
}
