//! Named f32 tensors in safetensors files: what checkpoints, optimizer states and merges
//! exchange. Reading accepts f32, f16 and bf16 (Hugging Face checkpoints are often half).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// A tensor held on the host: its shape and row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, values: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        Self { shape, values }
    }

    /// The transpose of a 2-D tensor (PyTorch's `[out, in]` <-> Burn's `[in, out]`).
    pub fn transposed(&self) -> Self {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        let mut out = vec![0.0; self.values.len()];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = self.values[r * cols + c];
            }
        }
        Self::new(vec![cols, rows], out)
    }
}

pub type TensorMap = BTreeMap<String, HostTensor>;

/// Serialises named tensors as f32 safetensors bytes.
pub fn to_safetensors_bytes(tensors: &TensorMap, metadata: BTreeMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<(&String, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| (name, t.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .zip(tensors.values())
        .map(|((name, data), t)| Ok((name.as_str(), TensorView::new(Dtype::F32, t.shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = (!metadata.is_empty()).then(|| metadata.into_iter().collect());
    Ok(safetensors::serialize(views, metadata)?)
}

/// Writes named tensors to a safetensors file, atomically, streamed (no second copy of the
/// tensors as bytes: at 0.5B parameters that copy and the serialised file were 12 GB of a
/// checkpoint's peak).
pub fn write_tensors(path: &Path, tensors: &TensorMap, metadata: BTreeMap<String, String>) -> Result<()> {
    write_tensors_from(path, tensors.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect(), metadata, |name| Ok(std::borrow::Cow::Borrowed(&tensors[name])))
}

/// Writes a safetensors file of the tensors `layout` names, asking `tensor` for each in turn
/// (a tensor can be fetched from a device when written and dropped after).
pub fn write_tensors_from<'a>(
    path: &Path,
    layout: Vec<(String, Vec<usize>)>,
    metadata: BTreeMap<String, String>,
    mut tensor: impl FnMut(&str) -> Result<std::borrow::Cow<'a, HostTensor>>,
) -> Result<()> {
    let names: Vec<String> = layout.iter().map(|(n, _)| n.clone()).collect();
    let mut writer = super::stream::StreamWriter::create_with_metadata(path, layout, metadata)?;
    for name in &names {
        writer.write(name, tensor(name)?.as_ref())?;
    }
    writer.finish().with_context(|| format!("cannot write {}", path.display()))
}

/// Reads every tensor of a safetensors file as f32.
pub fn read_tensors(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_tensors(&bytes).with_context(|| format!("{} is not a valid safetensors file", path.display()))
}

pub fn parse_tensors(bytes: &[u8]) -> Result<TensorMap> {
    let file = SafeTensors::deserialize(bytes)?;
    let mut out = TensorMap::new();
    for (name, view) in file.tensors() {
        let values = decode_f32(&name, &view)?;
        out.insert(name, HostTensor::new(view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Decodes one tensor to f32, whatever float type it is stored in.
pub fn decode_f32(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => bail!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
    })
}
