//! `btx`: the engine's command line. Every stage of a recipe is a subcommand whose inputs and
//! outputs are paths, so any stage can run as its own job on another machine. Each
//! subcommand lives in its own file: it parses its arguments and calls the library.

mod bench;
mod data;
mod devices;
mod eval;
mod generate;
mod hf;
mod measure;
mod merge;
mod moe;
mod recipe;
mod tokenizer;
mod train;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "btx", version, about = "Branch-Train-MiX: Mixture-of-Experts LLMs from independently trained experts")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a dense or MoE LM from a RON config; writes checkpoints and metrics.jsonl to --out.
    Train(train::TrainArgs),
    /// Validation loss and perplexity per domain of a checkpoint.
    Eval(eval::EvalArgs),
    /// Evaluate the BTM ensemble of dense experts (domain posterior with a cached prior).
    Ensemble(eval::EnsembleArgs),
    /// Generate text from a checkpoint (or a BTM ensemble), streamed, with the experts each
    /// token was routed to.
    Generate(generate::GenerateArgs),
    /// Training data: tokenize once (`prepare`), look inside (`inspect`).
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// Recipes: the whole pipeline from one RON file.
    Recipe {
        #[command(subcommand)]
        command: recipe::RecipeCommand,
    },
    /// Merge dense checkpoints: BTX MiX into an MoE, sparse upcycling of one seed, or a BTM
    /// parameter average. Works on checkpoint tensors, streamed one tensor at a time; needs
    /// no device (data-initialised routers and posterior weights run the members forward on
    /// the CPU, or come measured beforehand by `btx measure`).
    Merge(merge::MergeArgs),
    /// Run merge members forward on data, on a device: router rows from data, or BTM's
    /// posterior weights, for a merge to read (`measured` in its request).
    Measure(measure::MeasureArgs),
    /// Edit a merged MoE: remove an expert, or add one trained later.
    Moe {
        #[command(subcommand)]
        command: moe::MoeCommand,
    },
    /// Import a Hugging Face LlamaForCausalLM (Llama 2 and 3) / MistralForCausalLM /
    /// Qwen2ForCausalLM / Qwen3ForCausalLM / MixtralForCausalLM folder (config.json,
    /// model.safetensors or a sharded set, tokenizer.json) as a checkpoint.
    ImportHf(hf::ImportArgs),
    /// Merge a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors) into a
    /// checkpoint: W + (lora_alpha / r) B A for every adapted module.
    ImportPeft(hf::ImportPeftArgs),
    /// Export a checkpoint as a Hugging Face folder: a dense model as its family's
    /// (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM), an MoE as MixtralForCausalLM
    /// (Llama family), Qwen2MoeForCausalLM (Qwen2 experts, or a shared expert) or
    /// Qwen3MoeForCausalLM (Qwen3 experts).
    ExportHf(hf::ExportArgs),
    /// Print a checkpoint's logits for a token sequence as JSON (for cross-checks).
    Logits(hf::LogitsArgs),
    /// The tokenizer.
    Tokenizer {
        #[command(subcommand)]
        command: tokenizer::TokenizerCommand,
    },
    /// The GPU adapters WGPU finds; with --check, also compare a small model's logits on
    /// --device against the CPU backend.
    Devices(devices::DevicesArgs),
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

/// Parses the command line, runs it, and prints an error with its causes (no backtrace).
pub fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe would panic; a CLI should just stop.
    #[cfg(unix)]
    // SAFETY: called before any thread starts; restores the default disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    exit_on_any_panic();
    let cli = Cli::parse();
    // Tensor work reuses its freed buffers; tokenizing allocates on every core in small,
    // short-lived pieces, whose memory should go back to the system (its peak stays bounded).
    if !matches!(cli.command, Command::Data { .. }) {
        crate::memory::keep_freed_memory();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A panic on any thread (a GPU driver's polling thread, a worker) ends the whole process
/// with one clear line and exit status 101. By default only that thread would end, and the
/// main thread, waiting on its work, could hang forever: a hung training job holds its GPU
/// node for nothing. Checkpoints are written atomically, so every finished one survives.
/// `RUST_BACKTRACE=1` adds the usual report with its backtrace.
fn exit_on_any_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            report(info);
        }
        eprintln!(
            "error: thread `{}` panicked{location}: {message}\n  the process stops here (exit status 101); finished checkpoints are kept, and `--resume` or a recipe's rerun continues from the last one{}",
            thread.name().unwrap_or("unnamed"),
            known_panic_hint(&message),
        );
        std::process::exit(101);
    }));
    // A thread that panics (with the variable's value) while the main one waits: how a test
    // sees that this ends the process.
    if let Some(message) = std::env::var_os("BTX_TEST_PANIC_IN_THREAD") {
        let message = format!("BTX_TEST_PANIC_IN_THREAD is set: {}", message.to_string_lossy());
        let waiting = std::thread::Builder::new().name("test-panic".into()).spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            panic!("{message}");
        });
        if waiting.is_ok() {
            std::thread::park();
        }
    }
}

/// What a panic that the engine's dependencies are known to raise means, for the user.
fn known_panic_hint(message: &str) -> &'static str {
    if message.contains("Could not lock adapter context") {
        // wgpu-hal's OpenGL backend waits at most 6 s (CONTEXT_LOCK_TIMEOUT_SECS) for its one
        // context; on Mesa's llvmpipe a large compute shader compiles, or a long dispatch runs,
        // for longer while cubecl's polling thread waits on a fence.
        "\n  hint: WGPU's OpenGL backend waited more than 6 s for its GL context, held by a shader compiling or a dispatch running that long (a software adapter such as llvmpipe, or a busy machine); a hardware adapter, Vulkan, or the CPU (`--device cpu`) avoid it"
    } else {
        ""
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Ensemble(args) => eval::run_ensemble(args),
        Command::Generate(args) => generate::run(args),
        Command::Data { command } => data::run(command),
        Command::Recipe { command } => recipe::run(command),
        Command::Merge(args) => merge::run(args),
        Command::Measure(args) => measure::run(args),
        Command::Moe { command } => moe::run(command),
        Command::ImportHf(args) => hf::import(args),
        Command::ImportPeft(args) => hf::import_peft(args),
        Command::ExportHf(args) => hf::export(args),
        Command::Logits(args) => hf::logits(args),
        Command::Tokenizer { command } => tokenizer::run(command),
        Command::Devices(args) => devices::run(args),
        Command::Bench { command } => bench::run(command),
    }
}

/// Writes `value` as pretty JSON to `path`, atomically.
fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<()> {
    crate::fsutil::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
