//! Prepared data: a domain tokenized once into flat token files that every stage memory-maps.
//!
//! ```text
//! DIR/train.bin   the training stream: token ids, little-endian u16 (vocabulary <= 65536) or u32
//! DIR/train.idx   where each of its documents starts, in tokens (little-endian u64)
//! DIR/val.bin     the validation stream (whole held-out documents), and val.idx
//! DIR/meta.json   what made them: tokenizer fingerprint, inputs (path, size, hash), counts
//! ```
//!
//! Documents follow each other in a stream, each ended by the tokenizer's end-of-text token.
//! Training and evaluation read windows of `seq_len + 1` tokens at multiples of `seq_len`
//! (consecutive windows share one token, so every token is a target once); a window may
//! cross a document boundary, as in GPT-2's and Megatron's packing: nothing is padded or
//! thrown away, and the end-of-text token tells the model that what follows is new.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::corpus::Source;
use crate::fsutil::sha256_file;

pub const META_FILE: &str = "meta.json";
pub const TRAIN_TOKENS: &str = "train.bin";
pub const VAL_TOKENS: &str = "val.bin";
pub const TRAIN_INDEX: &str = "train.idx";
pub const VAL_INDEX: &str = "val.idx";
const FORMAT_VERSION: u32 = 1;

/// How token ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 { TokenDtype::U16 } else { TokenDtype::U32 }
    }

    pub fn bytes(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }
}

/// Which tokenizer made the ids: a hash of its canonical JSON, so the same tokenizer saved
/// with other whitespace is the same tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerFingerprint {
    pub path: PathBuf,
    pub sha256: String,
    pub vocab_size: usize,
}

impl TokenizerFingerprint {
    pub fn of(tokenizer: &tokenizers::Tokenizer, path: &Path) -> Result<Self> {
        use sha2::{Digest, Sha256};
        let json = tokenizer.to_string(false).map_err(|e| anyhow::anyhow!("tokenizer {}: {e}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), sha256: format!("{:x}", Sha256::digest(json.as_bytes())), vocab_size: tokenizer.get_vocab_size(true) })
    }

    fn describe(&self) -> String {
        format!("{} (sha256 {}, {} tokens)", self.path.display(), &self.sha256[..12], self.vocab_size)
    }
}

/// How the validation stream was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SplitRule {
    /// Whole documents, each held out when a seeded hash of its text falls under
    /// `val_fraction` (or among the `val_docs` smallest hashes).
    Documents { val_fraction: Option<f64>, val_docs: Option<u64>, seed: u64 },
    /// One continuous stream (a recipe's `File`, `Script` or `Arithmetic` domain: a single
    /// document); every `val_every`-th window (the data config's) is held out when read.
    Interleaved,
}

/// An input file as it was when the data was prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRecord {
    pub path: PathBuf,
    pub bytes: u64,
    /// Modification time, seconds since the Unix epoch.
    pub modified: u64,
    pub sha256: String,
}

impl InputRecord {
    pub fn stat(path: &Path) -> Result<(u64, u64)> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        Ok((meta.len(), modified))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub tokens: u64,
    pub documents: u64,
    pub sha256: String,
    /// Chat data with a loss mask: the tokens the loss counts (mask byte 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted: Option<u64>,
}

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedMeta {
    pub format_version: u32,
    pub tokenizer: TokenizerFingerprint,
    pub dtype: TokenDtype,
    /// The token that ends each document (none in an interleaved stream).
    pub eos: Option<(String, u32)>,
    pub split: SplitRule,
    /// What the documents were read as, e.g. "jsonl field `text`".
    pub reader: String,
    /// The recipe source this was prepared from, if any (evaluation reads an arithmetic
    /// domain's settings from it).
    #[serde(default)]
    pub source: Option<Source>,
    pub inputs: Vec<InputRecord>,
    pub train: StreamRecord,
    pub val: StreamRecord,
    /// Documents left out for having no text (after the script filter, if any).
    pub empty_documents: u64,
    /// Chat data: how the conversations were rendered and masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<super::prepare_chat::ChatRecord>,
}

impl PreparedMeta {
    pub fn new(tokenizer: TokenizerFingerprint, eos: Option<(String, u32)>, split: SplitRule, reader: String) -> Self {
        let dtype = TokenDtype::for_vocab(tokenizer.vocab_size);
        Self {
            format_version: FORMAT_VERSION,
            tokenizer,
            dtype,
            eos,
            split,
            reader,
            source: None,
            inputs: vec![],
            train: StreamRecord::default(),
            val: StreamRecord::default(),
            empty_documents: 0,
            chat: None,
        }
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{} is not prepared data: cannot read {} (make it with `btx data prepare`)", dir.display(), path.display())
        })?;
        let meta: Self = serde_json::from_str(&text).with_context(|| format!("{}: not a prepared-data meta.json", path.display()))?;
        if meta.format_version != FORMAT_VERSION {
            bail!("{}: format version {} (this btx reads {FORMAT_VERSION}); prepare the data again", path.display(), meta.format_version);
        }
        Ok(meta)
    }

    /// Errors when an input differs from what was prepared: its size, or (when only its
    /// modification time moved) its contents. A missing input is only a warning: the prepared
    /// files stand on their own.
    pub fn check_inputs(&self, dir: &Path) -> Result<()> {
        for input in &self.inputs {
            let Ok((bytes, modified)) = InputRecord::stat(&input.path) else {
                eprintln!("warning: {}: input {} is gone; using the tokens prepared from it", dir.display(), input.path.display());
                continue;
            };
            let changed = bytes != input.bytes || (modified != input.modified && sha256_file(&input.path)? != input.sha256);
            if changed {
                bail!(
                    "prepared data {} is out of date: input {} changed since it was prepared ({} bytes then, {} now); run `btx data prepare` again",
                    dir.display(),
                    input.path.display(),
                    input.bytes,
                    bytes
                );
            }
        }
        Ok(())
    }

    /// Errors unless the data was made by the tokenizer `expected` describes and (with
    /// `inputs`) its inputs are as they were.
    pub fn check(&self, dir: &Path, expected: &TokenizerFingerprint, inputs: bool) -> Result<()> {
        self.check_tokenizer(dir, expected)?;
        if inputs {
            self.check_inputs(dir)?;
        }
        Ok(())
    }

    /// Errors unless the data was made by the tokenizer `expected` describes.
    pub fn check_tokenizer(&self, dir: &Path, expected: &TokenizerFingerprint) -> Result<()> {
        if self.tokenizer.sha256 != expected.sha256 {
            bail!(
                "prepared data {} was tokenized with {}, but the config's tokenizer is {}; prepare it again with --tokenizer {}",
                dir.display(),
                self.tokenizer.describe(),
                expected.describe(),
                expected.path.display()
            );
        }
        Ok(())
    }
}

/// A memory-mapped token file.
pub struct TokenStream {
    map: Option<memmap2::Mmap>,
    dtype: TokenDtype,
    len: usize,
    /// A temporary folder the file lives in, removed when the last reader is done.
    _owner: Option<Arc<tempfile::TempDir>>,
}

impl TokenStream {
    pub fn open(path: &Path, dtype: TokenDtype, owner: Option<Arc<tempfile::TempDir>>) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let bytes = file.metadata()?.len() as usize;
        if bytes % dtype.bytes() != 0 {
            bail!("{}: {bytes} bytes is not a whole number of {:?} tokens; prepare the data again", path.display(), dtype);
        }
        // SAFETY: the prepared files are written once, under a temporary name, and renamed
        // into place; nothing writes them after. (A user editing one under a running stage
        // is what the checksums in meta.json are for.)
        let map = if bytes == 0 { None } else { Some(unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?) };
        Ok(Self { map, dtype, len: bytes / dtype.bytes(), _owner: owner })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens `start..start + n`.
    pub fn read(&self, start: usize, n: usize) -> Vec<u32> {
        let Some(map) = &self.map else { return vec![] };
        let width = self.dtype.bytes();
        let bytes = &map[start * width..(start + n) * width];
        match self.dtype {
            TokenDtype::U16 => bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect(),
            TokenDtype::U32 => bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        }
    }
}

/// A memory-mapped loss mask: a byte per token of its stream, 1 where the loss counts it.
pub struct MaskStream {
    map: Option<memmap2::Mmap>,
    _owner: Option<Arc<tempfile::TempDir>>,
}

impl MaskStream {
    /// Opens `path`, which must hold exactly `tokens` bytes.
    pub fn open(path: &Path, tokens: usize, owner: Option<Arc<tempfile::TempDir>>) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open the loss mask {}", path.display()))?;
        let bytes = file.metadata()?.len() as usize;
        if bytes != tokens {
            bail!("{}: {bytes} mask bytes for {tokens} tokens (one byte per token expected): the folder is damaged; prepare the data again", path.display());
        }
        // SAFETY: as for TokenStream: written once under a temporary name, then renamed.
        let map = if bytes == 0 { None } else { Some(unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?) };
        Ok(Self { map, _owner: owner })
    }

    pub fn read(&self, start: usize, n: usize) -> Vec<u8> {
        self.map.as_ref().map_or_else(Vec::new, |m| m[start..start + n].to_vec())
    }
}

/// Which windows of a stream a split uses.
#[derive(Clone, Copy, Debug)]
enum Pick {
    All,
    /// Every `every`-th window (validation) or all the others (training).
    Interleaved { every: usize, val: bool },
}

/// The windows of `seq_len + 1` tokens of one split, read from a memory-mapped stream on
/// demand: a domain's memory does not grow with its size.
#[derive(Clone)]
pub struct Windows {
    stream: Arc<TokenStream>,
    /// Chat data's loss mask, beside the stream.
    mask: Option<Arc<MaskStream>>,
    seq_len: usize,
    pick: Pick,
    len: usize,
}

impl Windows {
    fn new(stream: Arc<TokenStream>, mask: Option<Arc<MaskStream>>, seq_len: usize, pick: Pick) -> Self {
        let total = stream.len().saturating_sub(1) / seq_len;
        let len = match pick {
            Pick::All => total,
            Pick::Interleaved { every, val: true } => total / every,
            Pick::Interleaved { every, val: false } => total - total / every,
        };
        Self { stream, mask, seq_len, pick, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Window `i` of this split (inputs and the targets shifted by one).
    pub fn get(&self, i: usize) -> Vec<u32> {
        self.stream.read(self.start(i), self.seq_len + 1)
    }

    /// Whether the loss counts each of window `i`'s tokens (`None`: every token counts).
    pub fn mask(&self, i: usize) -> Option<Vec<u8>> {
        self.mask.as_ref().map(|m| m.read(self.start(i), self.seq_len + 1))
    }

    pub fn is_masked(&self) -> bool {
        self.mask.is_some()
    }

    /// Where window `i` starts in the stream.
    fn start(&self, i: usize) -> usize {
        assert!(i < self.len, "window {i} of {}", self.len);
        let w = match self.pick {
            Pick::All => i,
            Pick::Interleaved { every, val: true } => i * every + every - 1,
            Pick::Interleaved { every, val: false } => i + i / (every - 1),
        };
        w * self.seq_len
    }

    /// Windows `range` (clipped to the split).
    pub fn range(&self, range: std::ops::Range<usize>) -> Vec<Vec<u32>> {
        (range.start.min(self.len)..range.end.min(self.len)).map(|i| self.get(i)).collect()
    }
}

/// A domain's prepared data, opened: its training and validation windows.
pub struct PreparedDomain {
    pub meta: PreparedMeta,
    pub train: Windows,
    pub val: Windows,
}

impl PreparedDomain {
    /// Opens `dir` for windows of `seq_len + 1` tokens; an interleaved stream holds out every
    /// `val_every`-th window. `owner` keeps a temporary folder alive while the data is read.
    pub fn open(dir: &Path, seq_len: usize, val_every: usize, owner: Option<Arc<tempfile::TempDir>>) -> Result<Self> {
        let meta = PreparedMeta::read(dir)?;
        let train_stream = Arc::new(TokenStream::open(&dir.join(TRAIN_TOKENS), meta.dtype, owner.clone())?);
        check_length(dir, TRAIN_TOKENS, &train_stream, meta.train.tokens)?;
        let mask = |name: &str, record: &StreamRecord| -> Result<Option<Arc<MaskStream>>> {
            record.counted.map(|_| Ok(Arc::new(MaskStream::open(&dir.join(name), record.tokens as usize, owner.clone())?))).transpose()
        };
        let train_mask = mask(super::prepare_chat::TRAIN_MASK, &meta.train)?;
        let (train, val) = match meta.split {
            SplitRule::Interleaved => (
                Windows::new(train_stream.clone(), train_mask.clone(), seq_len, Pick::Interleaved { every: val_every, val: false }),
                Windows::new(train_stream, train_mask, seq_len, Pick::Interleaved { every: val_every, val: true }),
            ),
            SplitRule::Documents { .. } => {
                let val_stream = Arc::new(TokenStream::open(&dir.join(VAL_TOKENS), meta.dtype, owner.clone())?);
                check_length(dir, VAL_TOKENS, &val_stream, meta.val.tokens)?;
                let val_mask = mask(super::prepare_chat::VAL_MASK, &meta.val)?;
                (Windows::new(train_stream, train_mask, seq_len, Pick::All), Windows::new(val_stream, val_mask, seq_len, Pick::All))
            }
        };
        Ok(Self { meta, train, val })
    }
}

fn check_length(dir: &Path, file: &str, stream: &TokenStream, expected: u64) -> Result<()> {
    if stream.len() as u64 != expected {
        bail!("{}: {file} holds {} tokens but meta.json says {expected}: the folder is damaged; prepare the data again", dir.display(), stream.len());
    }
    Ok(())
}
