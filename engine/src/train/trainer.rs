//! The training loop: mixture batches, gradient accumulation, global-norm clipping, AdamW
//! with warmup + cosine, periodic evaluation per domain and atomic checkpoints; `resume`
//! continues from the last checkpoint exactly as if the run had never stopped. Each update
//! is first judged by the spike guard (`guard`), and one process at a time writes a run
//! folder (`run_lock`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};

use super::adamw::{AdamW, global_grad_norm};
use super::config::{TrainConfig, learning_rate};
use super::guard::{SpikeGuard, Verdict};
use super::metrics::{EvalRecord, MetricsLog, MetricsRecord, StepRecord};
use super::start::{checkpoint_to_resume, freeze_untrainable, start_or_resume, training_device};
use crate::checkpoint::{self, TrainState, TrainingParts, latest_checkpoint};
use crate::config::to_ron;
use crate::data::sampler::{Batch, MixtureSampler};
use crate::data::{Domain, load_domains};
use crate::device::SelectedDevice;
use crate::eval::{DomainEval, evaluate, mean_loss};
use crate::model::LanguageModel;
use crate::model::autocast::autocast;
use crate::model::moe::RoutingContext;
use crate::model::routing_stats::RoutingStats;
use crate::run_lock::{FolderLock, TRAIN_LOCK};

/// The folder of a run (beside its checkpoints) where a dense LoRA run writes its adapters
/// in PEFT's format.
pub const ADAPTER_DIR: &str = "adapter";

pub struct TrainOptions {
    /// The run folder: checkpoints, metrics.jsonl.
    pub out: PathBuf,
    /// Continue from the run folder's last checkpoint (start afresh if it has none).
    pub resume: bool,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Stop after this many steps of this session, as if interrupted (for tests).
    pub stop_after: Option<usize>,
}

pub struct TrainSummary {
    pub checkpoint: PathBuf,
    pub state: TrainState,
    pub final_eval: Vec<DomainEval>,
}

pub fn train(config: &TrainConfig, origin: &str, selected: &SelectedDevice, options: &TrainOptions) -> Result<TrainSummary> {
    let started_at = Instant::now();
    let out = &options.out;
    // Held to the end: a second process on this folder is refused before it touches a file.
    let (domains, config_ron, _lock) = open_run(config, origin, selected, out, started_at)?;

    let device = training_device(&selected.device, config);
    let resume_from = checkpoint_to_resume(out, options.resume)?;
    let mut optimizer = AdamW::new(config.optimizer.clone());
    let mut sampler = MixtureSampler::new(&domains, config.seed);
    let (mut model, mut state) = start_or_resume(config, origin, resume_from, &mut optimizer, &mut sampler, selected, &device)?;
    state.device = selected.description.clone();
    model = freeze_untrainable(model, config, origin)?;

    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"), state.step)?;
    let flops_per_token = config.train_flops_per_token();
    let tokens_per_step = config.tokens_per_step();
    let progress = progress_bar(options.progress, config.steps, state.step);
    let session_start_step = state.step;
    let mut final_eval = Vec::new();

    while state.step < config.steps {
        if options.stop_after.is_some_and(|n| state.step - session_start_step >= n) {
            break;
        }
        let started = Instant::now();
        let lr = learning_rate(&config.optimizer, state.step, config.steps);
        let loss_scale = state.loss_scale.map(|s| s.scale);
        let (grads, step) = forward_backward(&model, &mut sampler, &domains, config, state.step, loss_scale, &device);
        let StepOutcome { loss_sum, aux_sum, grad_norm, routing } = step;
        let loss = loss_sum / config.grad_accum as f64;
        let aux_loss = aux_sum / config.grad_accum as f64;
        let (skipped, stop) = match judge_update(&mut state, config, loss, grad_norm) {
            Verdict::Apply => {
                let unscale = 1.0 / loss_scale.unwrap_or(1.0);
                model = apply_update(model, &mut optimizer, grads, config.optimizer.grad_clip, lr, grad_norm, unscale, &device);
                (None, false)
            }
            Verdict::Skip(reason) => {
                say(&progress, &format!("step {:>6} | update skipped: {reason}", state.step + 1));
                (Some(reason), false)
            }
            Verdict::Stop(reason) => (Some(reason), true),
        };
        let seconds = started.elapsed().as_secs_f64();
        state.advance(tokens_per_step as u64, flops_per_token * tokens_per_step as f64, seconds, optimizer.updates, sampler.state());
        let tokens_per_s = tokens_per_step as f64 / seconds;
        metrics.write(&MetricsRecord::Step(StepRecord {
            step: state.step,
            loss,
            aux_loss,
            lr,
            grad_norm,
            loss_scale,
            tokens: state.tokens_seen,
            tokens_per_s,
            seconds,
            routing: (!routing.is_empty()).then(|| routing.shares()),
            dropped: (!routing.is_empty()).then(|| routing.dropped_fraction()),
            skipped: skipped.clone(),
            stopped: stop,
            peak_rss_mb: crate::memory::peak_resident_bytes().map(|b| b as f64 / 1e6),
        }))?;
        if stop {
            progress.finish_and_clear();
            bail!("{}", stopped_message(out, origin, &state, &skipped.unwrap_or_default(), &config.spike_guard));
        }
        say_first_step(&progress, state.step - session_start_step, started_at);
        progress.set_position(state.step as u64);
        progress.set_message(format!("loss {loss:.3} | {:.0} tok/s", tokens_per_s));

        let last = state.step == config.steps;
        if last || (config.eval_every > 0 && state.step % config.eval_every == 0) {
            final_eval = evaluate(&model.valid(), &domains, config.batch_size, config.eval_batches, &device.clone().without_autodiff());
            log_eval(&mut metrics, state.step, &final_eval)?;
            say(&progress, &format!("step {:>6} | {}", state.step, format_eval(&final_eval)));
        }
        // Not while updates are being skipped: a checkpoint then would hold the weights that
        // spiked and rotate a good one out.
        if last || (state.step % config.checkpoint_every == 0 && state.guard.skipped_in_a_row == 0) {
            model = save_step(model, &optimizer, &state, config, &config_ron, out)?;
        }
    }
    progress.finish_and_clear();
    let checkpoint = latest_checkpoint(out).context("the run wrote no checkpoint")?;
    Ok(TrainSummary { checkpoint, state, final_eval })
}

/// What a run checks and reads before its model exists: the config, the device's support
/// for its precision and the data, all before any file is written (a refused run leaves no
/// folder behind); then the run folder and its writer's lock. Returns the domains, the
/// config as checkpoints record it, and the lock.
fn open_run(config: &TrainConfig, origin: &str, selected: &SelectedDevice, out: &Path, started_at: Instant) -> Result<(Vec<Domain>, String, FolderLock)> {
    config.validate(origin)?;
    config.precision.check_device(&selected.device, &selected.description)?;
    config.frozen_precision.check_device(&selected.device, &selected.description)?;
    let domains = load_domains(&config.data, config.model.vocab_size, origin)?;
    eprintln!("data: {} domains ready after {:.2} s", domains.len(), started_at.elapsed().as_secs_f64());
    let config_ron = to_ron(config)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create run folder {}", out.display()))?;
    let lock = FolderLock::acquire(out, TRAIN_LOCK)?;
    Ok((domains, config_ron, lock))
}

/// Whether this step's update is applied, judged before it is: an f16 overflow skips it
/// before the spike guard sees it (it says nothing about the weights, only that the loss
/// scale was too large), and the guard never lets a spike's update through.
fn judge_update(state: &mut TrainState, config: &TrainConfig, loss: f64, grad_norm: f64) -> Verdict {
    match state.loss_scale.as_mut().and_then(|s| s.update(grad_norm).err()) {
        Some(reason) => Verdict::Skip(reason),
        None => state.guard.judge(&config.spike_guard, loss, grad_norm),
    }
}

/// After this session's first step, how long the start took (data, model, resume): what
/// `cargo xtask bench data` compares across data sizes.
fn say_first_step(progress: &ProgressBar, steps_this_session: usize, started_at: Instant) {
    if steps_this_session == 1 {
        say(progress, &format!("first step done after {:.2} s", started_at.elapsed().as_secs_f64()));
    }
}

/// One metrics record per evaluated domain.
fn log_eval(metrics: &mut MetricsLog, step: usize, evals: &[DomainEval]) -> Result<()> {
    for e in evals {
        let record = EvalRecord { step, eval: e.domain.clone(), val_loss: e.loss, val_ppl: e.perplexity, routing: e.routing.as_ref().map(crate::eval::DomainRouting::panels).unwrap_or_default() };
        metrics.write(&MetricsRecord::Eval(record))?;
    }
    Ok(())
}

/// What one optimizer step measured.
struct StepOutcome {
    /// LM and auxiliary losses summed over the micro-batches.
    loss_sum: f64,
    aux_sum: f64,
    grad_norm: f64,
    routing: RoutingStats,
}

/// The gradients of one optimizer step: `grad_accum` micro-batches forward and backward
/// (the update itself is applied by the caller, once the spike guard has judged the loss).
/// With a `loss_scale` (f16), the gradients come back multiplied by it, and the outcome's
/// norm is that of the true gradients.
fn forward_backward(
    model: &LanguageModel,
    sampler: &mut MixtureSampler,
    domains: &[Domain],
    config: &TrainConfig,
    step: usize,
    loss_scale: Option<f64>,
    device: &Device,
) -> (GradientsParams, StepOutcome) {
    let mut accumulator = GradientsAccumulator::new();
    let (mut loss_sum, mut aux_sum) = (0.0, 0.0);
    let mut routing = RoutingStats::default();
    // Random routing (Gumbel noise) is seeded per step, so a resumed run draws the same.
    device.seed(config.seed.wrapping_mul(0x9E37_79B9).wrapping_add(step as u64));
    let ctx = RoutingContext { training: true, step };
    let batches: Vec<Batch> = (0..config.grad_accum).map(|_| sampler.next_batch(domains, config.batch_size, device)).collect();
    // Chat data: the loss is the mean over the step's counted targets (the replies), however
    // they fall among the micro-batches; a step with none counts nothing and learns nothing.
    let counted: f64 = batches.iter().map(Batch::counted).sum();
    for batch in batches {
        let weights = batch.target_mask.map(|mask| {
            let scale = (config.grad_accum as f64 / counted.max(1.0)) as f32;
            let n = mask.len();
            Tensor::<1>::from_data(TensorData::new(mask.into_iter().map(|m| m * scale).collect::<Vec<f32>>(), [n]), device)
        });
        let loss = autocast(config.precision.compute_dtype(), || match weights {
            Some(weights) => model.weighted_training_loss(batch.inputs, batch.targets, weights, ctx),
            None => model.training_loss(batch.inputs, batch.targets, ctx),
        });
        routing.add(&loss.layers);
        loss_sum += loss.lm.clone().into_scalar::<f32>() as f64;
        if let Some(aux) = &loss.aux {
            aux_sum += aux.clone().into_scalar::<f32>() as f64;
        }
        let total = loss.total() * (loss_scale.unwrap_or(1.0) / config.grad_accum as f64);
        // With some weights frozen (`trainable`), a batch may not reach any trainable one
        // (no token routed to the one expert that trains): nothing to learn from it.
        if total.is_tracked() {
            accumulator.accumulate(model, GradientsParams::from_grads(total.backward(), model));
        }
    }
    let grads = accumulator.grads();
    let grad_norm = global_grad_norm(model, &grads) / loss_scale.unwrap_or(1.0);
    (grads, StepOutcome { loss_sum, aux_sum, grad_norm, routing })
}

/// Why a run stopped at `state.step`, and where its last good weights are: the newest
/// checkpoint written before the update that preceded the first spike (update
/// `first_spike - 1` made the weights whose loss spiked).
fn stopped_message(out: &Path, origin: &str, state: &TrainState, reason: &str, guard: &SpikeGuard) -> String {
    let step = state.step;
    let first_spike = step + 1 - state.guard.skipped_in_a_row;
    let what = if guard.factor == 0.0 {
        format!("training diverged at step {step}: {reason}")
    } else {
        format!(
            "training stopped at step {step}: {reason}. The updates of steps {first_spike}-{step} were all skipped \
             (spike_guard.patience: {}), so the run is diverging",
            guard.patience
        )
    };
    let mut good: Vec<(usize, PathBuf)> = checkpoint::checkpoint_steps(out).into_iter().filter(|(s, _)| s + 1 < first_spike).collect();
    good.sort_unstable_by(|a, b| b.cmp(a));
    let good = match good.as_slice() {
        [] => "No checkpoint of this run predates the spike".to_string(),
        [(s, dir), older @ ..] => {
            let older: Vec<String> = older.iter().map(|(s, _)| s.to_string()).collect();
            let also = if older.is_empty() { String::new() } else { format!("; older ones kept: steps {}", older.join(", ")) };
            format!("The last good checkpoint is {} (step {s}){also}", dir.display())
        }
    };
    format!(
        "{what}. {good}. Lower `optimizer.lr` (or raise `optimizer.warmup_steps`) in {origin} and train \
         again; a new run can start from that checkpoint with `init_from`"
    )
}

/// One AdamW update, the gradients first multiplied by `unscale` (1 / the loss scale) and
/// scaled down to a global norm of `clip` (0: none); `grad_norm` is the unscaled norm.
#[allow(clippy::too_many_arguments)]
fn apply_update(model: LanguageModel, optimizer: &mut AdamW, grads: GradientsParams, clip: f64, lr: f64, grad_norm: f64, unscale: f64, device: &Device) -> LanguageModel {
    let clip_scale = if clip > 0.0 && grad_norm > clip { clip / grad_norm } else { 1.0 };
    let model = optimizer.step(model, grads, lr, clip_scale * unscale);
    device.sync().ok();
    model
}

/// Writes the step's checkpoint (the last one: the LoRA run's result, its adapters merged):
/// the weights, the optimizer's moments, the state and the config; returns the model.
fn save_step(model: LanguageModel, optimizer: &AdamW, state: &TrainState, config: &TrainConfig, config_ron: &str, out: &Path) -> Result<LanguageModel> {
    let write_optimizer = |path: &Path| optimizer.write_state(path);
    let training = TrainingParts { optimizer: &write_optimizer, state, train_config_ron: config_ron };
    let model = if state.step == config.steps { finish_lora(model, config, out)? } else { model };
    checkpoint::save_checkpoint(out, state.step, &model, &config.model, Some(training), config.retention())?;
    Ok(model)
}

/// The result of a LoRA run: its adapters merged into the weights, a plain model (and, for a
/// dense model, the adapters written in PEFT's format too, for its base: `init_from`). Any
/// other run's model is returned as it is.
fn finish_lora(model: LanguageModel, config: &TrainConfig, out: &Path) -> Result<LanguageModel> {
    let Some(lora) = &config.lora else { return Ok(model) };
    if config.model.moe.is_none() && crate::model::lora::has_adapters(&model) {
        crate::hf::peft::write_peft_adapter(&model, lora, &out.join(ADAPTER_DIR))?;
    }
    Ok(crate::model::lora::merge(model))
}

fn progress_bar(enabled: bool, total: usize, position: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} | {elapsed_precise} ETA {eta_precise}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(position as u64);
    bar
}

/// Prints a line above the progress bar (or plainly when there is none).
fn say(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) }
}

pub fn format_eval(evals: &[DomainEval]) -> String {
    let parts: Vec<String> = evals.iter().map(|e| format!("{} ppl {:.2}", e.domain, e.perplexity)).collect();
    format!("{} | mean loss {:.3}", parts.join(" | "), mean_loss(evals))
}
