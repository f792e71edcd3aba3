//! The model's linear layer: Burn's `nn::Linear` (weight [d_in, d_out], optional bias, the
//! same field names, so checkpoint names are unchanged) with an optional LoRA adapter (Hu et
//! al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", §4.1):
//!   y = x W + b + (alpha / r) (x A) B,   A [d_in, r], B [r, d_out],
//! A drawn as PEFT draws it (Kaiming-uniform, bound 1 / sqrt(d_in)) and B zero, so an adapter
//! starts as the identity change. Training the adapter alone leaves W frozen; `merged` folds
//! the update into W (W + (alpha / r) A B), after which the layer is a plain linear layer.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;

#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_in, d_out]` (the transpose of PyTorch's layout).
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    /// LoRA's A, `[d_in, rank]`.
    pub lora_a: Option<Param<Tensor<2>>>,
    /// LoRA's B, `[rank, d_out]`.
    pub lora_b: Option<Param<Tensor<2>>>,
    /// alpha / rank (0 without an adapter).
    pub lora_scale: f64,
    /// Dropout on the adapter's input while it trains.
    pub lora_dropout: f64,
}

impl Linear {
    /// A layer with weights drawn from N(0, `std`) (biases too); no adapter.
    pub fn new(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Self {
        let normal = Distribution::Normal(0.0, std);
        Self {
            weight: Param::from_tensor(Tensor::random([d_in, d_out], normal, device)),
            bias: bias.then(|| Param::from_tensor(Tensor::random([d_out], normal, device))),
            lora_a: None,
            lora_b: None,
            lora_scale: 0.0,
            lora_dropout: 0.0,
        }
    }

    /// `[d_in, d_out]`.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// x W + b, and the adapter's (alpha / r) (x A) B where there is one.
    ///
    /// # Shapes
    /// - x: `[..., d_in]` -> `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = crate::kernels::linear(x.clone(), self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        self.with_adapter(x, y)
    }

    /// `y` plus the adapter's update of input `x` (y unchanged without an adapter).
    pub fn with_adapter<const D: usize>(&self, x: Tensor<D>, y: Tensor<D>) -> Tensor<D> {
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(b)) => {
                let mut x = x.cast(a.val().dtype());
                // Dropout only while the adapter trains (an evaluated model is not tracked).
                if self.lora_dropout > 0.0 && a.val().is_require_grad() {
                    let keep = 1.0 - self.lora_dropout;
                    let mask = Tensor::<D>::random(x.dims(), Distribution::Bernoulli(keep), &x.device());
                    x = x * mask / keep;
                }
                let low_rank = crate::kernels::linear(crate::kernels::linear(x, a.val(), None), b.val(), None);
                let dtype = y.dtype();
                y + (low_rank * self.lora_scale).cast(dtype)
            }
            _ => y,
        }
    }

    /// This layer with a fresh adapter of `rank` (A drawn from `seed`, B zero), scale
    /// `alpha / rank` and input dropout `dropout`. (Freezing the base weights is the
    /// trainer's: `lora::trainable_names`.)
    pub fn with_adapter_of_rank(self, rank: usize, alpha: f64, dropout: f64, seed: u64) -> Self {
        let [d_in, d_out] = self.dims();
        let device = self.weight.device();
        let bound = 1.0 / (d_in as f64).sqrt();
        let mut rng = crate::data::rng::Rng::new(seed);
        let values: Vec<f32> = (0..d_in * rank).map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32).collect();
        let a = Tensor::<2>::from_data(TensorData::new(values, [d_in, rank]), &device);
        let b = Tensor::<2>::zeros([rank, d_out], &device);
        Self {
            weight: self.weight,
            bias: self.bias,
            lora_a: Some(Param::from_tensor(a)),
            lora_b: Some(Param::from_tensor(b)),
            lora_scale: alpha / rank as f64,
            lora_dropout: dropout,
        }
    }

    /// The adapter folded into the weight, W + (alpha / r) A B; no adapter left.
    pub fn merged(self) -> Self {
        let (Some(a), Some(b)) = (&self.lora_a, &self.lora_b) else {
            return Self { lora_a: None, lora_b: None, lora_scale: 0.0, lora_dropout: 0.0, ..self };
        };
        // Computed off the autodiff graph: the merged weight is a fresh leaf.
        let strategy = self.weight.val().gradient_checkpointing_strategy();
        let update = a.val().inner().matmul(b.val().inner()) * self.lora_scale;
        // A base held in half precision (`FrozenPrecision`) merges into an f32 weight.
        let weight = self.weight.val().inner().cast(burn::tensor::DType::F32) + update;
        let weight = super::onto_autodiff(weight, strategy);
        Self { weight: Param::from_tensor(weight), bias: self.bias, lora_a: None, lora_b: None, lora_scale: 0.0, lora_dropout: 0.0 }
    }
}
