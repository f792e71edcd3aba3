//! Documents from users' files: plain text, JSON lines (optionally gzip- or zstd-compressed)
//! and Parquet, named as files, folders or glob patterns. Every error names the file and the
//! line, row or byte where the input stops being what was expected.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use sha2::{Digest, Sha256};

/// The kinds of input file, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Jsonl(Compression),
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub const SUPPORTED: &str = ".txt, .jsonl, .jsonl.gz, .jsonl.zst (also .ndjson) and .parquet";

impl Format {
    pub fn of(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        let jsonl = |rest: &str| name.ends_with(&format!(".jsonl{rest}")) || name.ends_with(&format!(".ndjson{rest}"));
        Some(if name.ends_with(".txt") {
            Format::Text
        } else if jsonl("") {
            Format::Jsonl(Compression::None)
        } else if jsonl(".gz") {
            Format::Jsonl(Compression::Gzip)
        } else if jsonl(".zst") || jsonl(".zstd") {
            Format::Jsonl(Compression::Zstd)
        } else if name.ends_with(".parquet") {
            Format::Parquet
        } else {
            return None;
        })
    }
}

/// How documents are found in the files.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// The JSON field, or Parquet column, holding a document's text.
    pub text_field: String,
    /// A text file holds one document per line (otherwise the whole file is one).
    pub doc_per_line: bool,
}

impl ReadOptions {
    pub fn describe(&self, files: &[PathBuf]) -> String {
        let mut kinds: Vec<String> = files
            .iter()
            .filter_map(|f| Format::of(f))
            .map(|f| match f {
                Format::Text if self.doc_per_line => "text, a document per line".to_string(),
                Format::Text => "text, a document per file".to_string(),
                Format::Jsonl(_) => format!("JSON lines, field `{}`", self.text_field),
                Format::Parquet => format!("Parquet, column `{}`", self.text_field),
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds.join("; ")
    }
}

/// The files that `patterns` name, each pattern in sorted order: a file as it is, a folder's
/// supported files (recursively), a glob pattern's matches.
pub fn expand_inputs(patterns: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in patterns {
        let text = pattern.to_string_lossy();
        let mut found: Vec<PathBuf> = if text.contains(['*', '?', '[']) {
            let matches = glob::glob(&text).map_err(|e| anyhow!("input pattern {text}: {e}"))?;
            matches.filter_map(|m| m.ok()).filter(|p| p.is_file()).collect()
        } else if pattern.is_dir() {
            let mut in_dir = Vec::new();
            walk(pattern, &mut in_dir)?;
            in_dir
        } else if pattern.is_file() {
            vec![pattern.clone()]
        } else {
            bail!("input {} does not exist", pattern.display());
        };
        found.sort();
        if !pattern.is_file() {
            found.retain(|f| Format::of(f).is_some());
        }
        if found.is_empty() {
            bail!("input {text} names no file of a supported kind ({SUPPORTED})");
        }
        for f in &found {
            if Format::of(f).is_none() {
                bail!("input {}: unsupported kind of file; supported: {SUPPORTED}", f.display());
            }
        }
        files.extend(found);
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() { walk(&path, out)? } else { out.push(path) }
    }
    Ok(())
}

/// A reader that hashes and counts what passes through it (the input file's SHA-256 for
/// meta.json and the progress bar's bytes, in the one read).
struct Tap<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
    read: &'a AtomicU64,
}

impl<R: Read> Read for Tap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads every document of `path` into `emit`, in file order; returns the file's SHA-256.
/// `read` counts the file's bytes as they are read.
pub fn read_documents(path: &Path, options: &ReadOptions, read: &AtomicU64, emit: &mut dyn FnMut(String) -> Result<()>) -> Result<String> {
    let format = Format::of(path).with_context(|| format!("input {}: unsupported kind of file; supported: {SUPPORTED}", path.display()))?;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    match format {
        Format::Parquet => {
            drop(file);
            read_parquet(path, &options.text_field, emit)?;
            let sha = crate::fsutil::sha256_file(path)?;
            read.fetch_add(std::fs::metadata(path)?.len(), Ordering::Relaxed);
            return Ok(sha);
        }
        Format::Text => {
            let mut tap = BufReader::with_capacity(1 << 20, Tap { inner: file, hasher: &mut hasher, read });
            read_text(path, &mut tap, options.doc_per_line, emit)?;
            drain(&mut tap)?;
        }
        Format::Jsonl(compression) => {
            let mut lines = jsonl_reader(path, Tap { inner: file, hasher: &mut hasher, read }, compression)?;
            read_jsonl(path, &mut lines, &options.text_field, emit)?;
            drain(&mut lines)?;
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The lines of a JSON lines file, decompressed.
fn jsonl_reader<'a>(path: &Path, tap: Tap<'a, std::fs::File>, compression: Compression) -> Result<Box<dyn BufRead + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(BufReader::with_capacity(1 << 20, tap)),
        Compression::Gzip => Box::new(BufReader::with_capacity(1 << 20, flate2::read::MultiGzDecoder::new(BufReader::new(tap)))),
        Compression::Zstd => Box::new(BufReader::with_capacity(1 << 20, zstd::stream::read::Decoder::new(tap).with_context(|| format!("{}: not zstd data", path.display()))?)),
    })
}

/// Reads every record of `path` (a JSON lines file's objects, a Parquet file's rows as JSON)
/// into `emit` with its place ("FILE line N", "FILE row N"); returns the file's SHA-256.
pub fn read_records(path: &Path, read: &AtomicU64, emit: &mut dyn FnMut(serde_json::Value, &str) -> Result<()>) -> Result<String> {
    let format = Format::of(path).with_context(|| format!("input {}: unsupported kind of file; supported: {SUPPORTED}", path.display()))?;
    match format {
        Format::Text => bail!("{}: a text file holds no conversations; chat data is JSON lines or Parquet", path.display()),
        Format::Parquet => {
            use parquet::file::reader::{FileReader, SerializedFileReader};
            let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            let reader = SerializedFileReader::new(file).with_context(|| format!("{}: not a Parquet file", path.display()))?;
            for (i, row) in reader.get_row_iter(None)?.enumerate() {
                let row = row.with_context(|| format!("{} row {i}", path.display()))?;
                emit(row.to_json_value(), &format!("{} row {i}", path.display()))?;
            }
            read.fetch_add(std::fs::metadata(path)?.len(), Ordering::Relaxed);
            crate::fsutil::sha256_file(path)
        }
        Format::Jsonl(compression) => {
            let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut hasher = Sha256::new();
            let mut lines = jsonl_reader(path, Tap { inner: file, hasher: &mut hasher, read }, compression)?;
            each_line(path, &mut lines, &mut |text, number| {
                if text.trim().is_empty() {
                    return Ok(());
                }
                let at = format!("{} line {number}", path.display());
                let value = serde_json::from_str(text).map_err(|e| anyhow!("{at}: not valid JSON ({e})"))?;
                emit(value, &at)
            })?;
            drain(&mut lines)?;
            drop(lines);
            Ok(format!("{:x}", hasher.finalize()))
        }
    }
}

/// Every line of the text file `path` with its line ending, as in the file (a last line
/// without one stays so); returns the file's SHA-256.
pub fn read_raw_lines(path: &Path, read: &AtomicU64, emit: &mut dyn FnMut(String) -> Result<()>) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read data file {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut reader = BufReader::with_capacity(1 << 20, Tap { inner: file, hasher: &mut hasher, read });
    each_line(path, &mut reader, &mut |line, _| emit(line.to_string()))?;
    drop(reader);
    Ok(format!("{:x}", hasher.finalize()))
}

/// Reads what is left (a compressed stream's trailer), so the hash covers the whole file.
fn drain(reader: &mut dyn BufRead) -> Result<()> {
    std::io::copy(reader, &mut std::io::sink())?;
    Ok(())
}

fn utf8<'a>(path: &Path, bytes: &'a [u8], offset: u64, line: Option<u64>) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = offset + e.valid_up_to() as u64;
        let line = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        anyhow!("{}: not UTF-8 text at byte {at}{line}; convert the file to UTF-8", path.display())
    })
}

fn read_text(path: &Path, reader: &mut dyn BufRead, doc_per_line: bool, emit: &mut dyn FnMut(String) -> Result<()>) -> Result<()> {
    if !doc_per_line {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
        return emit(utf8(path, &bytes, 0, None)?.to_string());
    }
    each_line(path, reader, &mut |line, _| emit(line.trim_end_matches(['\n', '\r']).to_string()))
}

/// Calls `f` with every line of `reader` (with its line ending) and its 1-based number;
/// bytes that are not UTF-8 are an error naming the file, byte offset and line.
fn each_line(path: &Path, reader: &mut dyn BufRead, f: &mut dyn FnMut(&str, u64) -> Result<()>) -> Result<()> {
    let (mut line, mut offset, mut number) = (Vec::new(), 0u64, 0u64);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).with_context(|| format!("cannot read {} (after line {number})", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        f(utf8(path, &line, offset, Some(number))?, number)?;
        offset += n as u64;
    }
}

fn read_jsonl(path: &Path, reader: &mut dyn BufRead, field: &str, emit: &mut dyn FnMut(String) -> Result<()>) -> Result<()> {
    each_line(path, reader, &mut |text, number| {
        if text.trim().is_empty() {
            return Ok(());
        }
        let at = || format!("{} line {number}", path.display());
        let mut de = serde_json::Deserializer::from_str(text);
        let value = FieldOf(field).deserialize(&mut de).map_err(|e| anyhow!("{}: not a JSON object ({e})", at()))?;
        de.end().map_err(|e| anyhow!("{}: more than one JSON value on the line ({e})", at()))?;
        match value {
            Found::Text(t) => emit(t)?,
            Found::Null => emit(String::new())?,
            Found::Other(kind) => bail!("{}: field `{field}` is {kind}, expected a string", at()),
            Found::Missing => {
                let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).map(|m| m.keys().cloned().collect()).unwrap_or_default();
                let chat = if keys.iter().any(|k| k == "messages" || k == "conversations") { "; it holds a conversation: prepare chat data with --chat (a recipe's `Chat` source)" } else { " (choose one with --text-field)" };
                bail!("{}: no field `{field}`; the line has fields {}{chat}", at(), keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "));
            }
        }
        Ok(())
    })
}

/// What a JSON object holds under one key.
enum Found {
    Text(String),
    Null,
    Other(&'static str),
    Missing,
}

/// Deserializes one JSON object, keeping only `field` (the others are skipped unparsed).
struct FieldOf<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for FieldOf<'_> {
    type Value = Found;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldOf<'_> {
    type Value = Found;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut found = Found::Missing;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.0 {
                found = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => Found::Text(s),
                    serde_json::Value::Null => Found::Null,
                    serde_json::Value::Bool(_) => Found::Other("a boolean"),
                    serde_json::Value::Number(_) => Found::Other("a number"),
                    serde_json::Value::Array(_) => Found::Other("an array"),
                    serde_json::Value::Object(_) => Found::Other("an object"),
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

fn read_parquet(path: &Path, column: &str, emit: &mut dyn FnMut(String) -> Result<()>) -> Result<()> {
    use parquet::basic::Type as Physical;
    use parquet::column::reader::get_typed_column_reader;
    use parquet::data_type::ByteArrayType;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let reader = SerializedFileReader::new(file).with_context(|| format!("{}: not a Parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let Some(index) = schema.columns().iter().position(|c| c.path().string() == column) else {
        let names: Vec<String> = schema.columns().iter().map(|c| format!("`{}`", c.path().string())).collect();
        bail!("{}: no column `{column}`; its columns are {} (choose one with --text-field)", path.display(), names.join(", "));
    };
    let descr = schema.column(index);
    if descr.physical_type() != Physical::BYTE_ARRAY || descr.max_rep_level() > 0 {
        bail!("{}: column `{column}` is not a column of strings (it is {:?}{})", path.display(), descr.physical_type(), if descr.max_rep_level() > 0 { ", repeated" } else { "" });
    }
    let mut row = 0u64;
    for group in 0..reader.num_row_groups() {
        let column_reader = reader.get_row_group(group)?.get_column_reader(index).with_context(|| format!("{}: row group {group}", path.display()))?;
        let mut typed = get_typed_column_reader::<ByteArrayType>(column_reader);
        let (mut defs, mut values) = (Vec::new(), Vec::new());
        loop {
            defs.clear();
            values.clear();
            let (records, _, _) = typed.read_records(4096, Some(&mut defs), None, &mut values).with_context(|| format!("{}: row group {group}", path.display()))?;
            if records == 0 {
                break;
            }
            // A nullable column gives a definition level per row: below the maximum is a
            // null (an empty document); the values are the non-null rows in order.
            let mut non_null = values.iter();
            for r in 0..records {
                let present = defs.is_empty() || defs[r] == descr.max_def_level();
                let text = match present.then(|| non_null.next()).flatten() {
                    Some(value) => value.as_utf8().map_err(|_| anyhow!("{}: row {row} of column `{column}` is not UTF-8 text", path.display()))?.to_string(),
                    None => String::new(),
                };
                emit(text)?;
                row += 1;
            }
        }
    }
    Ok(())
}
