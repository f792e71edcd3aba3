//! BTX: build Mixture-of-Experts language models from independently trained dense experts
//! (Branch-Train-MiX, Sukhbaatar et al. 2024), on any GPU through WGPU or on the CPU.

pub mod bench;
pub mod chat;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod ensemble;
pub mod ensemble_decoding;
pub mod eval;
pub mod fsutil;
pub mod generate;
pub mod hf;
pub mod kernels;
pub mod memory;
pub mod merge;
pub mod model;
pub mod recipe;
pub mod run_lock;
pub mod tasks;
pub mod train;

pub use burn;
