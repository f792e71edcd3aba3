//! Safetensors read and written one tensor at a time, so a checkpoint larger than memory can
//! be converted: reading seeks to each tensor's bytes (a single file or a sharded set with
//! `model.safetensors.index.json`); writing lays out the header from the shapes first, then
//! appends each tensor as it comes.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use safetensors::Dtype;

use crate::checkpoint::tensor_file::{HostTensor, decode_f32};

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorLocation {
    pub file: PathBuf,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// The tensors of a checkpoint or Hugging Face model folder, by name, read on demand.
pub struct TensorIndex {
    pub tensors: BTreeMap<String, TensorLocation>,
}

/// Reads a safetensors header: where each tensor lives.
fn read_header(path: &Path) -> Result<Vec<(String, TensorLocation)>> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        bail!("{} is not a safetensors file (header of {n} bytes)", path.display());
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).with_context(|| format!("{} is truncated", path.display()))?;
    // Parsed here rather than by the safetensors crate, whose reader wants the whole file.
    #[derive(serde::Deserialize)]
    struct Info {
        dtype: Dtype,
        shape: Vec<usize>,
        data_offsets: (u64, u64),
    }
    let invalid = || format!("{} has an invalid safetensors header", path.display());
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).with_context(invalid)?;
    let base = 8 + n;
    let size = file.metadata()?.len();
    let mut out = Vec::new();
    for (name, value) in json {
        if name == "__metadata__" {
            continue;
        }
        let info: Info = serde_json::from_value(value).with_context(|| format!("{}: tensor `{name}`", invalid()))?;
        let (start, end) = (base + info.data_offsets.0, base + info.data_offsets.1);
        if start > end || end > size {
            bail!("{}: tensor `{name}` lies outside the file", invalid());
        }
        out.push((name, TensorLocation { file: path.to_path_buf(), dtype: info.dtype, shape: info.shape, start, end }));
    }
    Ok(out)
}

impl TensorIndex {
    /// `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.is_file() {
            let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)
                .with_context(|| format!("{} is not valid JSON", index.display()))?;
            let map = json["weight_map"].as_object().with_context(|| format!("{}: no `weight_map`", index.display()))?;
            let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            files
        } else if single.is_file() {
            vec![single]
        } else {
            bail!("{} has neither model.safetensors nor model.safetensors.index.json", dir.display());
        };
        let mut tensors = BTreeMap::new();
        for f in files {
            tensors.extend(read_header(&f)?);
        }
        Ok(Self { tensors })
    }

    /// Reads one tensor as f32.
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        let loc = self.tensors.get(name).with_context(|| format!("missing tensor `{name}`"))?;
        let mut file = std::fs::File::open(&loc.file)?;
        file.seek(SeekFrom::Start(loc.start))?;
        let mut bytes = vec![0u8; (loc.end - loc.start) as usize];
        file.read_exact(&mut bytes).with_context(|| format!("{}: tensor `{name}` is truncated", loc.file.display()))?;
        let view = safetensors::tensor::TensorView::new(loc.dtype, loc.shape.clone(), &bytes)
            .with_context(|| format!("tensor `{name}`: size does not match its shape"))?;
        Ok(HostTensor::new(loc.shape.clone(), decode_f32(name, &view)?))
    }
}

/// Writes an f32 safetensors file tensor by tensor, in the order of `layout`.
pub struct StreamWriter {
    file: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    layout: Vec<(String, Vec<usize>)>,
    next: usize,
}

impl StreamWriter {
    pub fn create(path: &Path, layout: Vec<(String, Vec<usize>)>) -> Result<Self> {
        Self::create_with_metadata(path, layout, BTreeMap::from([("format".to_string(), "pt".to_string())]))
    }

    /// `create`, with this `__metadata__` (none when empty).
    pub fn create_with_metadata(path: &Path, layout: Vec<(String, Vec<usize>)>, metadata: BTreeMap<String, String>) -> Result<Self> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::json!(metadata));
        }
        let mut offset = 0usize;
        for (name, shape) in &layout {
            let bytes = 4 * shape.iter().product::<usize>();
            header.insert(name.clone(), serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes] }));
            offset += bytes;
        }
        let mut json = serde_json::to_vec(&header)?;
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        let tmp = crate::fsutil::temp_sibling(path);
        let file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        file.write_all(&(json.len() as u64).to_le_bytes())?;
        file.write_all(&json)?;
        Ok(Self { file, tmp, path: path.to_path_buf(), layout, next: 0 })
    }

    /// Appends the next tensor of the layout.
    pub fn write(&mut self, name: &str, tensor: &HostTensor) -> Result<()> {
        let (expected, shape) = &self.layout[self.next];
        if expected != name || *shape != tensor.shape {
            bail!("internal: tensor `{name}` {:?} written where `{expected}` {shape:?} was laid out", tensor.shape);
        }
        // A chunk at a time: a large tensor is never copied whole as bytes.
        let mut bytes = Vec::with_capacity(4 * 16384);
        for chunk in tensor.values.chunks(16384) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            self.file.write_all(&bytes)?;
        }
        self.next += 1;
        Ok(())
    }

    /// Checks every tensor was written, then renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.layout.len() {
            bail!("internal: {} of {} tensors written", self.next, self.layout.len());
        }
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.next = usize::MAX; // renamed: nothing for drop to clean
        Ok(())
    }
}

impl Drop for StreamWriter {
    /// An unfinished file is removed, never left half-written.
    fn drop(&mut self) {
        if self.next != usize::MAX {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
