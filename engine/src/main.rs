//! `btx`: the engine's command line. Every stage of a recipe is a subcommand whose inputs and
//! outputs are paths, so any stage can run as its own job on another machine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use btx::checkpoint::{self, TRAIN_CONFIG_FILE};
use btx::config::resolve;
use btx::device::{DeviceChoice, hardware_adapters, select_device};
use btx::eval::{evaluate, mean_loss};
use btx::train::{TrainConfig, TrainOptions, train, trainer::load_domains};

#[derive(Parser)]
#[command(name = "btx", version, about = "Branch-Train-MiX: Mixture-of-Experts LLMs from independently trained experts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a dense LM from a RON config; writes checkpoints and metrics.jsonl to --out.
    Train {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// Continue from the last checkpoint in --out.
        #[arg(long)]
        resume: bool,
        /// No progress bar (plain log lines only).
        #[arg(long)]
        no_progress: bool,
    },
    /// Validation loss and perplexity per domain of a checkpoint.
    Eval {
        /// A checkpoint folder, or a run folder (its latest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The data to evaluate on (default: the config the checkpoint was trained with).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// Validation batches per domain; 0 = the whole validation split.
        #[arg(long, default_value_t = 0)]
        batches: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Exact-match accuracy on this many addition problems (for arithmetic domains).
        #[arg(long, default_value_t = 0)]
        arithmetic: usize,
    },
    /// Evaluate the BTM ensemble of dense experts (domain posterior with a cached prior).
    Ensemble {
        #[arg(long, num_args = 1.., required = true)]
        experts: Vec<PathBuf>,
        /// The data to evaluate on (a training config).
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// Held-out sequences per domain that estimate the cached prior.
        #[arg(long, default_value_t = 32)]
        prior_sequences: usize,
        /// Sequences per domain scored after them.
        #[arg(long, default_value_t = 64)]
        eval_sequences: usize,
        /// Keep the k most probable experts at each position (default: all).
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Recipes: the whole pipeline from one RON file.
    Recipe {
        #[command(subcommand)]
        command: RecipeCommand,
    },
    /// Merge dense checkpoints: BTX MiX into an MoE, sparse upcycling of one seed, or a BTM
    /// parameter average. Works on checkpoint tensors; needs no device.
    Merge {
        #[arg(long, value_enum)]
        method: MergeMethod,
        /// The expert checkpoints (btx, average), or the one seed (upcycle).
        #[arg(long, num_args = 1.., required = true)]
        experts: Vec<PathBuf>,
        /// btx: keep this seed checkpoint as one more, generalist, expert (last).
        #[arg(long)]
        seed: Option<PathBuf>,
        /// Weights of the members in averaged tensors (default uniform).
        #[arg(long, num_args = 1..)]
        weights: Option<Vec<f64>>,
        /// upcycle: experts to make.
        #[arg(long, default_value_t = 4)]
        num_experts: usize,
        /// upcycle: std of Gaussian noise added to each copy.
        #[arg(long, default_value_t = 0.0)]
        noise: f64,
        /// MoE options as RON, e.g. "(top_k: 2, routing: TopK, load_balance: 0.01, split: 1)".
        #[arg(long, default_value = "()")]
        moe: String,
        /// With router_init Embedding or Hidden: each member's training config (experts in
        /// order, then the seed), whose data describes its domain.
        #[arg(long, num_args = 1..)]
        router_data: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a Hugging Face LlamaForCausalLM / MistralForCausalLM / MixtralForCausalLM folder
    /// (config.json, model.safetensors or a sharded set, tokenizer.json) as a checkpoint.
    ImportHf {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a checkpoint as a Hugging Face folder: LlamaForCausalLM for a dense model,
    /// MixtralForCausalLM for an MoE.
    ExportHf {
        checkpoint: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The tokenizer.json to ship (default: the one the checkpoint was trained with).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Export routing Mixtral cannot express (Switch, soft, sample-top-1) as its closest
        /// top-k equivalent instead of refusing.
        #[arg(long)]
        closest: bool,
    },
    /// Print a checkpoint's logits for a token sequence as JSON (for cross-checks).
    Logits {
        checkpoint: PathBuf,
        /// Token ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<i64>,
    },
    /// The tokenizer.
    Tokenizer {
        #[command(subcommand)]
        command: TokenizerCommand,
    },
    /// The hardware GPU adapters WGPU finds; with --check, also compare a small model's
    /// logits on --device against the CPU backend.
    Devices {
        #[arg(long)]
        check: bool,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training-step throughput (forward, backward, AdamW) of a training config's dense model
    /// and of its MoE counterpart (4 experts of the same FFN, top-2), after warm-up.
    Train {
        /// A training config (its model, batch_size and data.seq_len are used).
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Override the config's batch size.
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Forward+backward time of top-2 of 4 experts against the dense model with the same
    /// active parameters, for one layer and for the whole LM.
    Moe {
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 256)]
        d_model: usize,
        /// Hidden width of one expert (the dense FFN has twice this).
        #[arg(long, default_value_t = 512)]
        expert_d_ff: usize,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Also write the rows as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RecipeCommand {
    /// Run every stage that is not up to date, then write RUN/report.md.
    Run {
        recipe: PathBuf,
        /// Run folder (default: runs/<recipe name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Independent stages (the experts) run this many at a time.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Each stage's state: complete, partial, stale or pending.
    Status {
        recipe: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn recipe_out(recipe: &std::path::Path, out: Option<PathBuf>) -> PathBuf {
    out.unwrap_or_else(|| {
        let name = recipe.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "recipe".into());
        PathBuf::from("runs").join(name)
    })
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MergeMethod {
    /// BTX MiX: expert FFNs become MoE experts, everything else averaged, routers added.
    Btx,
    /// Sparse upcycling: the one checkpoint's FFN copied --num-experts times.
    Upcycle,
    /// BTM parameter average of every tensor.
    Average,
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Train a byte-level BPE on text files and write tokenizer.json.
    Train {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Also learn from this many generated arithmetic lines (the synthetic domain).
        #[arg(long, default_value_t = 20_000)]
        arithmetic_lines: usize,
        /// Text files to learn from.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
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

fn print_evals(evals: &[btx::eval::DomainEval]) {
    println!("{:<16} {:>10} {:>12} {:>10}", "domain", "val loss", "perplexity", "tokens");
    for e in evals {
        println!("{:<16} {:>10.4} {:>12.3} {:>10}", e.domain, e.loss, e.perplexity, e.tokens);
    }
    println!("{:<16} {:>10.4} {:>12.3}", "mean", mean_loss(evals), mean_loss(evals).exp());
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train { config, out, device, resume, no_progress } => {
            let origin = config.display().to_string();
            let train_config = TrainConfig::load(&config)?;
            let selected = select_device(device)?;
            eprintln!("device: {}", selected.description);
            eprintln!(
                "model: {:.2}M parameters, {} layers, d_model {}; {} steps of {} tokens",
                train_config.model.num_params() as f64 / 1e6,
                train_config.model.n_layers,
                train_config.model.d_model,
                train_config.steps,
                train_config.tokens_per_step()
            );
            let options = TrainOptions { out, resume, progress: !no_progress, stop_after: None };
            let summary = train(&train_config, &origin, &selected, &options)?;
            let s = &summary.state;
            eprintln!(
                "done: {} steps, {} tokens in {:.1} s ({:.0} tokens/s, {:.3} TFLOP/s); checkpoint {}",
                s.step,
                s.tokens_seen,
                s.wall_time_s,
                s.tokens_seen as f64 / s.wall_time_s.max(1e-9),
                s.train_flops / s.wall_time_s.max(1e-9) / 1e12,
                summary.checkpoint.display()
            );
            Ok(())
        }
        Command::Eval { checkpoint: path, config, device, batches, json, arithmetic } => {
            let ckpt = checkpoint::resolve_checkpoint(&path)?;
            let config_path = config.unwrap_or_else(|| ckpt.join(TRAIN_CONFIG_FILE));
            let train_config = TrainConfig::load(&resolve(&config_path))
                .with_context(|| format!("the data to evaluate on comes from {}", config_path.display()))?;
            let selected = select_device(device)?;
            eprintln!("device: {}", selected.description);
            let domains = load_domains(&train_config, &config_path.display().to_string())?;
            let (_, model) = checkpoint::load_model(&ckpt, &selected.device)?;
            let evals = evaluate(&model, &domains, train_config.batch_size, batches, &selected.device);
            let mut accuracy = serde_json::Map::new();
            if arithmetic > 0 {
                let tokenizer = btx::data::tokenizer::load_tokenizer(&resolve(&train_config.data.tokenizer))?;
                for d in &train_config.data.domains {
                    if let btx::data::Source::Arithmetic(a) = &d.source {
                        let acc = btx::eval::arithmetic_accuracy(&model, &tokenizer, a, arithmetic, &selected.device)?;
                        accuracy.insert(d.name.clone(), serde_json::json!(acc));
                    }
                }
            }
            println!("checkpoint {}", ckpt.display());
            print_evals(&evals);
            for (domain, acc) in &accuracy {
                println!("{domain}: exact-match accuracy {:.1}% on {arithmetic} problems", acc.as_f64().unwrap_or(0.0) * 100.0);
            }
            if let Some(json) = json {
                let out = serde_json::json!({ "checkpoint": ckpt, "domains": evals, "accuracy": accuracy });
                btx::fsutil::write_atomic(&json, serde_json::to_string_pretty(&out)?.as_bytes())?;
            }
            Ok(())
        }
        Command::Ensemble { experts, config, device, prior_sequences, eval_sequences, top_k, json } => {
            let train_config = TrainConfig::load(&resolve(&config))?;
            let selected = select_device(device)?;
            eprintln!("device: {}", selected.description);
            let domains = load_domains(&train_config, &config.display().to_string())?;
            let models = experts
                .iter()
                .map(|p| Ok(checkpoint::load_model(&checkpoint::resolve_checkpoint(p)?, &selected.device)?.1))
                .collect::<Result<Vec<_>>>()?;
            let k = top_k.unwrap_or(models.len());
            let evals = btx::ensemble::evaluate_ensemble(&models, &domains, train_config.batch_size, prior_sequences, eval_sequences, k, &selected.device);
            println!("BTM ensemble of {} experts, top-{k}", models.len());
            print_evals(&evals);
            for e in &evals {
                let prior: Vec<String> = e.routing[0].iter().map(|p| format!("{p:.2}")).collect();
                println!("  cached prior on {}: [{}]", e.domain, prior.join(", "));
            }
            if let Some(json) = json {
                let out = serde_json::json!({ "experts": experts, "top_k": k, "domains": evals });
                btx::fsutil::write_atomic(&json, serde_json::to_string_pretty(&out)?.as_bytes())?;
            }
            Ok(())
        }
        Command::Recipe { command: RecipeCommand::Run { recipe, out, jobs, device } } => {
            let parsed = btx::recipe::Recipe::load(&recipe)?;
            let out = resolve(&recipe_out(&recipe, out));
            let btx = std::env::current_exe().context("cannot find the btx binary")?;
            btx::recipe::run_recipe(&parsed, &btx::recipe::RunOptions { out, jobs, device, btx })
        }
        Command::Recipe { command: RecipeCommand::Status { recipe, out } } => {
            let parsed = btx::recipe::Recipe::load(&recipe)?;
            btx::recipe::print_status(&parsed, &resolve(&recipe_out(&recipe, out)))
        }
        Command::Merge { method, experts, seed, weights, num_experts, noise, moe, router_data, out } => {
            use btx::merge::{MergeInput, average::average, mix::{MoeOptions, mix}, router_init::RouterInit, upcycle::upcycle};
            let options: MoeOptions = btx::config::parse_ron(&moe, "--moe")?;
            let inputs = experts.iter().map(|p| MergeInput::load(p)).collect::<Result<Vec<_>>>()?;
            let seed = seed.map(|p| MergeInput::load(&p)).transpose()?;
            let directions = match (method, options.router_init) {
                (MergeMethod::Average, _) | (_, RouterInit::Random) => None,
                (_, mode) => {
                    let members: Vec<PathBuf> = match method {
                        MergeMethod::Upcycle => vec![inputs[0].path.clone(); num_experts],
                        _ => inputs.iter().chain(seed.as_ref()).map(|i| i.path.clone()).collect(),
                    };
                    let data = if matches!(method, MergeMethod::Upcycle) && router_data.len() == 1 { vec![router_data[0].clone(); num_experts] } else { router_data.clone() };
                    Some(btx::merge::router_data::router_directions(&members, &data, mode, &btx::burn::prelude::Device::flex())?)
                }
            };
            let (config, tensors) = match method {
                MergeMethod::Btx => mix(&inputs, seed.as_ref(), weights.as_deref(), &options, directions)?,
                MergeMethod::Upcycle => {
                    if inputs.len() != 1 {
                        anyhow::bail!("--method upcycle takes exactly one checkpoint in --experts, found {}", inputs.len());
                    }
                    upcycle(&inputs[0], num_experts, noise, &options, directions)?
                }
                MergeMethod::Average => average(&inputs, weights.as_deref())?,
            };
            let sources: Vec<String> = inputs.iter().chain(seed.as_ref()).map(|i| i.path.display().to_string()).collect();
            let record = serde_json::json!({ "sources": sources, "weights": weights, "moe": moe });
            checkpoint::write_tensor_checkpoint(&out, &config, &tensors, &[("merge.json", record.to_string())])?;
            eprintln!(
                "wrote {} ({:.2}M parameters, {:.2}M active per token)",
                out.display(),
                config.num_params() as f64 / 1e6,
                config.active_params() as f64 / 1e6
            );
            Ok(())
        }
        Command::Logits { checkpoint: ckpt, tokens } => {
            let device = btx::burn::prelude::Device::flex();
            let (_, model) = checkpoint::load_model(&checkpoint::resolve_checkpoint(&ckpt)?, &device)?;
            let n = tokens.len();
            let input = btx::burn::prelude::Tensor::<2, btx::burn::prelude::Int>::from_data(btx::burn::prelude::TensorData::new(tokens, [1, n]), &device);
            let logits: Vec<f32> = model.forward(input).into_data().convert::<f32>().try_to_vec().expect("f32");
            let vocab = logits.len() / n;
            let rows: Vec<&[f32]> = logits.chunks(vocab).collect();
            println!("{}", serde_json::to_string(&rows)?);
            Ok(())
        }
        Command::ImportHf { dir, out } => {
            let config = btx::hf::import_hf(&dir, &out)?;
            eprintln!("imported {} as {} ({:.2}M parameters)", dir.display(), out.display(), config.num_params() as f64 / 1e6);
            Ok(())
        }
        Command::ExportHf { checkpoint: ckpt, out, tokenizer, closest } => {
            let config = btx::hf::export_hf(&ckpt, &out, tokenizer.as_deref(), closest)?;
            let arch = if config.moe.is_some() { "MixtralForCausalLM" } else { "LlamaForCausalLM" };
            eprintln!("exported {} as {arch} to {}", ckpt.display(), out.display());
            Ok(())
        }
        Command::Tokenizer { command: TokenizerCommand::Train { out, vocab_size, arithmetic_lines, files } } => {
            let mut files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            let arithmetic = std::env::temp_dir().join(format!("btx-arithmetic-{}.txt", std::process::id()));
            if arithmetic_lines > 0 {
                let config = btx::data::synthetic::ArithmeticConfig { max_digits: 3, lines: arithmetic_lines, seed: 0 };
                std::fs::write(&arithmetic, btx::data::synthetic::arithmetic_text(&config))?;
                files.push(arithmetic.display().to_string());
            }
            let trained = btx::data::tokenizer::train_tokenizer(&files, vocab_size, &out);
            let _ = std::fs::remove_file(&arithmetic);
            trained?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Bench { command: BenchCommand::Train { config, device, warmup, iters, batch, json } } => {
            let train_config = TrainConfig::load(&config)?;
            let selected = select_device(device)?;
            println!("device: {}", selected.description);
            let dense = train_config.model.clone();
            let dense = btx::config::ModelConfig { moe: None, ..dense };
            let moe = btx::bench::bench_moe_config(&dense);
            let batch = batch.unwrap_or(train_config.batch_size);
            let seq = train_config.data.seq_len;
            let rows: Vec<_> = [("dense", &dense), ("moe", &moe)]
                .into_iter()
                .map(|(label, c)| btx::bench::bench_train(c, label, batch, seq, warmup, iters, &selected.device))
                .collect();
            println!("{batch}x{seq} tokens per step, median of {iters} steps after {warmup} warm-up steps");
            println!("{:<6} {:>9} {:>9} {:>10} {:>12} {:>9} {:>10} {:>11} {:>10}", "model", "params", "active", "step ms", "tokens/s", "TFLOP/s", "warmup s", "peak MB", "matmul TF");
            for r in &rows {
                println!(
                    "{:<6} {:>8.2}M {:>8.2}M {:>10.1} {:>12.0} {:>9.4} {:>10.2} {:>11.0} {:>10.4}",
                    r.model, r.params as f64 / 1e6, r.active_params as f64 / 1e6, r.step_ms, r.tokens_per_s, r.tflops, r.warmup_s, r.peak_memory_mb, r.matmul_tflops
                );
            }
            if let Some(json) = json {
                let out = serde_json::json!({ "device": selected.description, "rows": rows, "dense_config": dense, "moe_config": moe, "batch": batch, "seq_len": seq, "lr": 1e-4 });
                btx::fsutil::write_atomic(&json, serde_json::to_string_pretty(&out)?.as_bytes())?;
            }
            Ok(())
        }
        Command::Bench { command: BenchCommand::Moe { device, d_model, expert_d_ff, layers, batch, seq_len, warmup, iters, json } } => {
            let selected = select_device(device)?;
            println!("device: {}", selected.description);
            println!(
                "MoE top-2 of 4 experts (expert d_ff {expert_d_ff}) vs dense (d_ff {}), d_model {d_model}, \
                 {layers} layers, {batch}x{seq_len} tokens, forward+backward, median of {iters}",
                2 * expert_d_ff
            );
            let options = btx::bench::MoeBenchOptions { d_model, expert_d_ff, n_layers: layers, batch, seq_len, warmup, iters };
            let rows = btx::bench::bench_moe(&selected.device, &options);
            println!("{:<8} {:>12} {:>12} {:>8}", "", "dense ms", "moe ms", "ratio");
            for r in &rows {
                println!("{:<8} {:>12.2} {:>12.2} {:>8.2}", r.what, r.dense_ms, r.moe_ms, r.ratio);
            }
            if let Some(json) = json {
                btx::fsutil::write_atomic(&json, serde_json::to_string_pretty(&rows)?.as_bytes())?;
            }
            Ok(())
        }
        Command::Devices { check, device } => {
            let adapters = hardware_adapters();
            if adapters.is_empty() {
                println!("no hardware GPU adapter found; --device auto uses the CPU");
            }
            for a in adapters {
                println!("{a}");
            }
            if check {
                let selected = select_device(device)?;
                let (diff, scale) = btx::device::compare_logits_with_cpu(&selected.device);
                let ok = diff <= 1e-4 * scale.max(1.0);
                println!("{}: max |logit - cpu logit| = {diff:.3e} at logit scale {scale:.3} -> {}", selected.description, if ok { "OK" } else { "MISMATCH" });
                if !ok {
                    anyhow::bail!("{} disagrees with the CPU backend", selected.description);
                }
            }
            Ok(())
        }
    }
}
