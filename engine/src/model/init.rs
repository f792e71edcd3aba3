//! Parameter initialisation shared by the model's modules: N(0, 0.02), as GPT-2 and Llama.

use burn::nn::Initializer;

pub const INIT_STD: f64 = 0.02;

pub fn linear_init() -> Initializer {
    Initializer::Normal { mean: 0.0, std: INIT_STD }
}
