//! Moving a model's parameters to and from named host tensors in Hugging Face's layout.
//!
//! A Burn module path such as `layers.0.self_attn.q_proj.weight` becomes the checkpoint name
//! `model.layers.0.self_attn.q_proj.weight`; RMSNorm's `gamma` is stored as `weight`; Linear
//! weights, which Burn keeps as `[in, out]`, are stored as PyTorch's `[out, in]`. So an engine
//! checkpoint of a dense model is already a `LlamaForCausalLM` state dict.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use super::tensor_file::{HostTensor, TensorMap};

/// The module path stack, with the container type of each entry.
#[derive(Default)]
struct PathStack(Vec<(String, String)>);

impl PathStack {
    fn push(&mut self, name: &str, container: &str) {
        self.0.push((name.to_string(), container.to_string()));
    }
    fn pop(&mut self) {
        self.0.pop();
    }
    /// The Burn path, dot-joined.
    fn module_path(&self) -> String {
        self.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(".")
    }
    /// Whether the current parameter is a `Linear`'s weight (stored transposed).
    fn is_linear_weight(&self) -> bool {
        matches!(self.0.last(), Some((n, c)) if n == "weight" && c == "Struct:Linear")
    }
    /// The current parameter's value as a checkpoint stores it: its host copy, transposed to
    /// PyTorch's `[out, in]` for a `Linear`'s weight.
    fn stored<const D: usize>(&self, param: &Param<Tensor<D>>) -> HostTensor {
        let host = to_host(param.val());
        if self.is_linear_weight() { host.transposed() } else { host }
    }
}

/// Checkpoint name of a Burn module path. MoE experts take Mixtral's names
/// (`experts.N.w1` = gate_proj, `w2` = down_proj, `w3` = up_proj).
pub fn checkpoint_name(module_path: &str) -> String {
    let mut name = match module_path.strip_suffix(".gamma") {
        Some(stem) => format!("{stem}.weight"),
        None => module_path.to_string(),
    };
    name = super::tensor_names::mixtral_expert_path(&name);
    if name.starts_with("lm_head.") { name } else { format!("model.{name}") }
}

/// Host copy of a device tensor as f32.
pub fn to_host<const D: usize>(tensor: Tensor<D>) -> HostTensor {
    let shape = tensor.dims().to_vec();
    let values = tensor.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
    HostTensor::new(shape, values)
}

/// Device tensor from a host copy (the caller checked the rank).
pub fn to_device<const D: usize>(host: HostTensor, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = host.shape.clone().try_into().expect("rank checked by caller");
    Tensor::from_data(TensorData::new(host.values, shape), device)
}

/// Every float parameter of `module`, by checkpoint name, in Hugging Face layout.
pub fn module_to_tensors<M: Module>(module: &M) -> TensorMap {
    struct Collect {
        path: PathStack,
        out: TensorMap,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.push(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.insert(checkpoint_name(&self.path.module_path()), self.path.stored(param));
        }
    }
    let mut visitor = Collect { path: PathStack::default(), out: TensorMap::new() };
    module.visit(&mut visitor);
    visitor.out
}

/// Writes every float parameter of `module` (by checkpoint name, in Hugging Face layout) to
/// the safetensors file `path`, one tensor on the host at a time: a checkpoint of a model never
/// holds a second copy of it (`module_to_tensors` would, 4.5 GB at 1.1B parameters).
pub fn write_module<M: Module>(module: &M, path: &std::path::Path, metadata: std::collections::BTreeMap<String, String>) -> Result<()> {
    struct Layout {
        path: PathStack,
        out: Vec<(String, Vec<usize>)>,
    }
    impl ModuleVisitor for Layout {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.push(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let mut shape = param.val().dims().to_vec();
            if self.path.is_linear_weight() {
                shape.reverse();
            }
            self.out.push((checkpoint_name(&self.path.module_path()), shape));
        }
    }
    struct Write {
        path: PathStack,
        writer: super::stream::StreamWriter,
        error: Option<anyhow::Error>,
    }
    impl ModuleVisitor for Write {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.push(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.error.is_some() {
                return;
            }
            if let Err(e) = self.writer.write(&checkpoint_name(&self.path.module_path()), &self.path.stored(param)) {
                self.error = Some(e);
            }
        }
    }
    let mut layout = Layout { path: PathStack::default(), out: Vec::new() };
    module.visit(&mut layout);
    let writer = super::stream::StreamWriter::create_with_metadata(path, layout.out, metadata)?;
    let mut write = Write { path: PathStack::default(), writer, error: None };
    module.visit(&mut write);
    if let Some(e) = write.error {
        return Err(e);
    }
    write.writer.finish().with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces every float parameter of `module` by the tensor of the same checkpoint name.
/// Missing tensors, wrong shapes and tensors the module does not have are errors naming the
/// tensor; `origin` names the file.
pub fn module_from_tensors<M: Module>(module: M, tensors: &TensorMap, origin: &str) -> Result<M> {
    struct Load<'a> {
        path: PathStack,
        tensors: &'a TensorMap,
        used: BTreeSet<String>,
        errors: Vec<String>,
    }
    impl ModuleMapper for Load<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.push(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let name = checkpoint_name(&self.path.module_path());
            let Some(host) = self.tensors.get(&name) else {
                self.errors.push(format!("missing tensor `{name}`"));
                return Param::from_mapped_value(id, tensor, mapper);
            };
            self.used.insert(name.clone());
            // Linear weights are stored [out, in]; Burn holds them [in, out].
            let linear = self.path.is_linear_weight();
            let mut expected = tensor.dims().to_vec();
            if linear {
                expected.reverse();
            }
            if host.shape != expected {
                self.errors.push(format!("tensor `{name}` has shape {:?}, expected {expected:?}", host.shape));
                return Param::from_mapped_value(id, tensor, mapper);
            }
            let host = if linear { host.transposed() } else { host.clone() };
            let mut loaded = to_device::<D>(host, &tensor.device());
            if tensor.is_require_grad() {
                loaded = loaded.require_grad();
            }
            Param::from_mapped_value(id, loaded, mapper)
        }
    }
    let mut loader = Load { path: PathStack::default(), tensors, used: BTreeSet::new(), errors: vec![] };
    let module = module.map(&mut loader);
    let mut errors = loader.errors;
    for name in tensors.keys().filter(|n| !loader.used.contains(*n)) {
        errors.push(format!("unexpected tensor `{name}` (the model config has no such parameter)"));
    }
    if !errors.is_empty() {
        let shown: Vec<_> = errors.iter().take(8).cloned().collect();
        let more = if errors.len() > 8 { format!("\n  ... and {} more", errors.len() - 8) } else { String::new() };
        bail!("{origin} does not match the model config:\n  {}{more}", shown.join("\n  "));
    }
    Ok(module)
}

/// `module` with every float parameter frozen (no gradient) unless its checkpoint name
/// contains one of `trainable`; also returns how many parameters stay trainable.
pub fn freeze_all_but<M: Module>(module: M, trainable: &[String]) -> (M, usize) {
    let (module, _, kept) = freeze_where(module, &|name| trainable.iter().any(|t| name.contains(t.as_str())));
    (module, kept)
}

/// `module` with every frozen `Linear` weight that `holds` names (by checkpoint name) cast to
/// `dtype` (`train::precision::FrozenPrecision`).
pub fn cast_frozen_linear_weights<M: Module>(module: M, dtype: burn::tensor::DType, holds: &dyn Fn(&str) -> bool) -> M {
    struct Cast<'a> {
        path: PathStack,
        dtype: burn::tensor::DType,
        holds: &'a dyn Fn(&str) -> bool,
    }
    impl ModuleMapper for Cast<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.push(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let frozen = !param.val().is_require_grad();
            if !(frozen && self.path.is_linear_weight() && (self.holds)(&checkpoint_name(&self.path.module_path()))) {
                return param;
            }
            let dtype = self.dtype;
            param.map(|t| t.cast(dtype)).set_require_grad(false)
        }
    }
    module.map(&mut Cast { path: PathStack::default(), dtype, holds })
}

/// `module` with every float parameter frozen unless `trains` says so of its checkpoint
/// name; also returns every parameter's name and how many stay trainable.
pub fn freeze_where<M: Module>(module: M, trains: &dyn Fn(&str) -> bool) -> (M, Vec<String>, usize) {
    struct Freeze<'a> {
        path: PathStack,
        trains: &'a dyn Fn(&str) -> bool,
        names: Vec<String>,
        kept: usize,
    }
    impl ModuleMapper for Freeze<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.push(name, container);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let name = checkpoint_name(&self.path.module_path());
            let trains = (self.trains)(&name);
            self.names.push(name);
            if trains {
                self.kept += 1;
                param
            } else {
                param.set_require_grad(false)
            }
        }
    }
    let mut freeze = Freeze { path: PathStack::default(), trains, names: Vec::new(), kept: 0 };
    let module = module.map(&mut freeze);
    (module, freeze.names, freeze.kept)
}
