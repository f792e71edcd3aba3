//! Parameter initialisation: N(0, 0.02) for every matrix (as GPT-2 and Llama), ones for the
//! RMSNorm gains. `seeded_init` draws the values on the host from the seed and each
//! parameter's path, so a seed gives the same initial model on every backend and whatever
//! else the process does with the device's random generator (tests run in parallel).

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::Initializer;

use super::linear::Linear;
use burn::prelude::*;

use crate::data::rng::Rng;

pub const INIT_STD: f64 = 0.02;

pub fn linear_init() -> Initializer {
    Initializer::Normal { mean: 0.0, std: INIT_STD }
}

/// A bias-free linear layer with the model's initialisation.
pub fn linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    Linear::new(d_in, d_out, false, INIT_STD, device)
}

/// Re-draws every float parameter but the norm gains from N(0, INIT_STD), deterministically.
pub fn seeded_init<M: Module>(module: M, seed: u64) -> M {
    struct Draw {
        path: Vec<String>,
        seed: u64,
    }
    impl ModuleMapper for Draw {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if self.path.last().is_some_and(|n| n == "gamma") {
                return param;
            }
            let (id, tensor, mapper) = param.consume();
            let shape = tensor.dims();
            let mut rng = Rng::new(self.seed ^ fnv1a(&self.path.join(".")));
            let values: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| (rng.normal() * INIT_STD) as f32)
                .collect();
            let mut drawn = Tensor::<D>::from_data(TensorData::new(values, shape), &tensor.device());
            if tensor.is_require_grad() {
                drawn = drawn.require_grad();
            }
            Param::from_mapped_value(id, drawn, mapper)
        }
    }
    module.map(&mut Draw { path: Vec::new(), seed })
}

/// FNV-1a: a stable 64-bit hash of a parameter path.
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
