//! Integration tests, one binary (Burn links once). All run on the CPU backend (Flex);
//! the WGPU comparison runs where a hardware GPU adapter exists and reports itself skipped
//! elsewhere.

mod common;

mod bad_input;
mod chat;
mod chat_training;
mod checkpointing;
mod data;
mod docs;
mod family;
mod frozen_precision;
mod gemma;
mod generate;
mod hf;
mod kernels;
mod lora;
mod memory_plan;
mod merge;
mod mixturekit;
mod model;
mod recipe;
mod recipe_variants;
mod slurm;
mod tasks;
mod tasks_ensemble;
mod moe;
mod moe_lm;
mod precision;
mod protection;
mod training;
mod wgpu;
