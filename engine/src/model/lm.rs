//! The decoder-only language model (Llama style): dense, or MoE when its config has `moe`
//! (the FFN of its MoE layers then a `model::moe` layer, see `block`) and/or attention
//! experts (BAM). Field names follow Hugging Face's `LlamaForCausalLM` /
//! `MixtralForCausalLM`, so a checkpoint's tensor names are its module paths.

use burn::nn::{Embedding, EmbeddingConfig};

use super::linear::Linear;
use burn::prelude::*;

use super::autocast::project;
use super::block::Block;
use super::moe::{MoeAux, RoutingContext};
use super::init::{linear, linear_init, seeded_init};
use super::norm::RmsNorm;
use super::rope::rope_tables_from;
use crate::config::ModelConfig;

#[derive(Module, Debug)]
pub struct LanguageModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// `None` when the head is tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    pub rope_theta: f64,
    #[module(skip)]
    pub rope_scaling: Option<super::rope::RopeScaling>,
    pub head_dim: usize,
    /// Gemma: the embedding is multiplied by sqrt(d_model); the local layers' RoPE base; the
    /// final logits' soft cap.
    #[module(skip)]
    pub embed_scale: Option<f64>,
    #[module(skip)]
    pub local_rope_theta: Option<f64>,
    #[module(skip)]
    pub final_logit_softcap: Option<f64>,
}

/// Cosine and sine tables of the positions a forward covers: the global layers' and, in a
/// model with local (sliding-window) layers, theirs.
struct RopeTables {
    global: (Tensor<2>, Tensor<2>),
    local: Option<(Tensor<2>, Tensor<2>)>,
}

impl RopeTables {
    fn of(&self, block: &Block) -> (&Tensor<2>, &Tensor<2>) {
        let (cos, sin) = match (&self.local, block.local) {
            (Some(local), true) => local,
            _ => &self.global,
        };
        (cos, sin)
    }
}

impl LanguageModel {
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        Self {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, config.d_model)
                .with_initializer(linear_init())
                .init(device),
            layers: (0..config.n_layers).map(|l| Block::new(config, l, device)).collect(),
            norm: RmsNorm::new(config.d_model, config.norm_eps, config.gemma.is_some(), device),
            lm_head: (!config.tie_embeddings).then(|| linear(config.d_model, config.vocab_size, device)),
            rope_theta: config.rope_theta,
            rope_scaling: config.rope_scaling.clone(),
            head_dim: config.head_dim(),
            embed_scale: config.gemma.as_ref().map(|_| (config.d_model as f32).sqrt() as f64),
            local_rope_theta: config.gemma.as_ref().map(|g| g.local_rope_theta.unwrap_or(config.rope_theta)),
            final_logit_softcap: config.gemma.as_ref().and_then(|g| g.final_logit_softcap),
        }
    }

    /// RoPE tables for positions `start..start + seq`: the global layers' (with the model's
    /// scaling) and the local layers' (their own base, no scaling) where the model has them.
    fn rope(&self, start: usize, seq: usize, device: &Device) -> RopeTables {
        let global = rope_tables_from(start, seq, self.head_dim, self.rope_theta, self.rope_scaling.as_ref(), device);
        let local = match self.local_rope_theta {
            Some(theta) if self.layers.iter().any(|b| b.local) => Some(rope_tables_from(start, seq, self.head_dim, theta, None, device)),
            _ => None,
        };
        RopeTables { global, local }
    }

    /// The input embeddings of `tokens` (Gemma's scaled by sqrt(d_model), in f32 as
    /// transformers computes them for f32 weights).
    ///
    /// # Shapes
    /// - tokens: `[batch, seq]` -> `[batch, seq, d_model]`
    pub fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let x = self.embed_tokens.forward(tokens);
        match self.embed_scale {
            Some(scale) => x * scale,
            None => x,
        }
    }

    /// A model initialised from `seed` alone (the same on every backend).
    pub fn seeded(config: &ModelConfig, seed: u64, device: &Device) -> Self {
        seeded_init(Self::new(config, device), seed)
    }

    /// Final hidden states (after the last norm), and the MoE layers' auxiliary outputs.
    ///
    /// # Shapes
    /// - tokens: `[batch, seq]` -> `[batch, seq, d_model]`
    pub fn hidden(&self, tokens: Tensor<2, Int>, ctx: RoutingContext) -> (Tensor<3>, Vec<MoeAux>) {
        let [_, seq] = tokens.dims();
        let device = tokens.device();
        let mut x = self.embed(tokens);
        let rope = self.rope(0, seq, &device);
        let mut aux = Vec::new();
        for block in &self.layers {
            let (cos, sin) = rope.of(block);
            let (y, layer_aux) = block.forward(x, cos, sin, ctx);
            x = y;
            aux.extend(layer_aux);
        }
        (self.norm.forward(x), aux)
    }

    /// The input of each layer's FFN (after its norm): what a router sees.
    ///
    /// # Shapes
    /// - tokens: `[batch, seq]` -> one `[batch, seq, d_model]` per layer
    pub fn ffn_inputs(&self, tokens: Tensor<2, Int>) -> Vec<Tensor<3>> {
        let [_, seq] = tokens.dims();
        let device = tokens.device();
        let mut x = self.embed(tokens);
        let rope = self.rope(0, seq, &device);
        let mut inputs = Vec::with_capacity(self.layers.len());
        for block in &self.layers {
            let (cos, sin) = rope.of(block);
            let h = block.attend(x, cos, sin);
            inputs.push(block.ffn_input_norm().forward(h.clone()));
            x = block.feed_forward(h, RoutingContext::default()).0;
        }
        inputs
    }

    /// Next-token logits and the MoE layers' auxiliary outputs.
    ///
    /// # Shapes
    /// - tokens: `[batch, seq]` -> `[batch, seq, vocab]`
    pub fn forward_with_aux(&self, tokens: Tensor<2, Int>, ctx: RoutingContext) -> (Tensor<3>, Vec<MoeAux>) {
        let (h, aux) = self.hidden(tokens, ctx);
        let [batch, seq, d_model] = h.dims();
        let logits = self.head(h.reshape([batch * seq, d_model]));
        let [_, vocab] = logits.dims();
        (logits.reshape([batch, seq, vocab]), aux)
    }

    /// Next-token logits of new positions at inference, with the keys and values of earlier
    /// positions read from `cache` and the new ones added to it: each decoding step costs one
    /// position. The first call (empty cache) takes the whole prompt; later calls one token.
    ///
    /// # Shapes
    /// - tokens: `[batch, seq]` -> `[batch, seq, vocab]`
    pub fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> (Tensor<3>, Vec<MoeAux>) {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        if cache.layers.len() != self.layers.len() {
            *cache = KvCache { layers: vec![None; self.layers.len()], len: 0 };
        }
        let rope = self.rope(cache.len, seq, &device);
        let mut x = self.embed(tokens);
        let mut aux = Vec::new();
        for (block, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let (cos, sin) = rope.of(block);
            let h = block.attend_cached(x, cos, sin, layer_cache);
            let (y, layer_aux) = block.feed_forward(h, RoutingContext::default());
            x = y;
            aux.extend(layer_aux);
        }
        cache.len += seq;
        let [_, _, d_model] = x.dims();
        let logits = self.head(self.norm.forward(x).reshape([batch * seq, d_model]));
        let [_, vocab] = logits.dims();
        (logits.reshape([batch, seq, vocab]), aux)
    }

    /// The LM head: `[tokens, d_model]` -> `[tokens, vocab]` (soft-capped in Gemma 2).
    fn head(&self, h: Tensor<2>) -> Tensor<2> {
        let logits = match &self.lm_head {
            Some(head) => project(head, h),
            None => crate::kernels::matmul(h, self.embed_tokens.weight.val().transpose()),
        };
        match self.final_logit_softcap {
            Some(cap) => super::gemma::soft_cap(logits, cap),
            None => logits,
        }
    }

    /// The LM head's cross-entropy, sum_t w_t * -log p(y_t | h_t), from the final hidden states
    /// [tokens, d_model], targets [tokens] and per-token weights [tokens]: fused with the head
    /// (no [tokens, vocab] logits held, `kernels::linear_cross_entropy`) unless the autocast
    /// scope computes the head in another dtype, or the logits are soft-capped.
    fn head_loss(&self, hidden: Tensor<2>, targets: Tensor<1, Int>, token_weights: Tensor<1>) -> Tensor<1> {
        if super::autocast::casts(hidden.dtype()) || self.final_logit_softcap.is_some() {
            return weighted_nll(self.head(hidden), targets, token_weights);
        }
        let (weight, trains) = match &self.lm_head {
            Some(head) => (head.weight.val(), head.weight.val().is_require_grad()),
            None => (self.embed_tokens.weight.val().transpose(), self.embed_tokens.weight.val().is_require_grad()),
        };
        crate::kernels::linear_cross_entropy(hidden, weight, targets, token_weights, trains)
    }

    /// Next-token logits at inference.
    ///
    /// # Shapes
    /// - tokens: `[batch, seq]` -> `[batch, seq, vocab]`
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.forward_with_aux(tokens, RoutingContext::default()).0
    }

    /// Log-probability of each target token at inference.
    ///
    /// # Shapes
    /// - inputs, targets: `[batch, seq]` -> `[batch, seq]`
    pub fn token_log_probs(&self, inputs: Tensor<2, Int>, targets: Tensor<2, Int>) -> Tensor<2> {
        token_log_probs(self.forward(inputs), targets)
    }

    /// The training objective: mean next-token cross-entropy, and the MoE layers' summed
    /// auxiliary losses (load balancing, z-loss), returned apart so they can be logged apart.
    pub fn training_loss(&self, inputs: Tensor<2, Int>, targets: Tensor<2, Int>, ctx: RoutingContext) -> TrainingLoss {
        let [batch, seq] = inputs.dims();
        let tokens = batch * seq;
        let token_weights = Tensor::<1>::full([tokens], 1.0 / tokens as f64, &inputs.device());
        self.weighted_training_loss(inputs, targets, token_weights, ctx)
    }

    /// The training objective with the LM loss sum_t w_t * -log p(y_t) under per-target
    /// weights `token_weights` (`[batch * seq]`, row-major; 0 for a target the loss does not
    /// count: a prompt's token in chat data), and the auxiliary losses as `training_loss`.
    pub fn weighted_training_loss(&self, inputs: Tensor<2, Int>, targets: Tensor<2, Int>, token_weights: Tensor<1>, ctx: RoutingContext) -> TrainingLoss {
        let (hidden, aux) = self.hidden(inputs, ctx);
        let [batch, seq, d_model] = hidden.dims();
        let tokens = batch * seq;
        let lm = self.head_loss(hidden.reshape([tokens, d_model]), targets.reshape([tokens]), token_weights);
        let mut aux_loss = aux.iter().map(|a| a.loss.clone()).reduce(|a, b| a + b);
        if let Some(pooled) = self.pooled_balancing_loss(&aux) {
            aux_loss = aux_loss.map(|a| a + pooled);
        }
        TrainingLoss { lm, aux: aux_loss, layers: aux }
    }
}

/// Keys and values of the positions a model has seen, per layer, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// `[batch, kv_heads, len, head_dim]` keys and values per layer (after RoPE).
    pub layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Positions cached.
    pub len: usize,
}

impl KvCache {
    /// The cache of one sequence repeated for `batch` sequences that continue it (a task's
    /// choices after their shared context).
    pub fn repeated(&self, batch: usize) -> KvCache {
        let layers = self.layers.iter().map(|l| l.as_ref().map(|(k, v)| (k.clone().repeat_dim(0, batch), v.clone().repeat_dim(0, batch)))).collect();
        KvCache { layers, len: self.len }
    }
}

impl LanguageModel {
    /// transformers' Mixtral load balancing over every MoE layer's tokens pooled:
    /// alpha * E * sum_i f_i P_i, f_i = assignments to expert i / (layers * tokens) (all k
    /// slots), P_i = mean router probability of expert i. None unless the config asks for it.
    pub fn pooled_balancing_loss(&self, aux: &[MoeAux]) -> Option<Tensor<1>> {
        let config = self.layers.iter().find_map(|b| b.block_sparse_moe.as_ref()).map(|m| &m.config)?;
        if config.balance != super::moe_config::Balance::Mixtral || config.load_balance == 0.0 || aux.is_empty() {
            return None;
        }
        let rows: usize = aux.iter().map(|a| a.tokens).sum();
        let experts = aux[0].requested.len();
        let counts: Vec<f32> = (0..experts).map(|e| aux.iter().map(|a| a.requested[e]).sum::<usize>() as f32 / rows as f32).collect();
        let p = aux.iter().map(|a| a.router_prob_sum.clone()).reduce(|a, b| Some(a? + b?))?? / rows as f64;
        let f = Tensor::<1>::from_data(TensorData::new(counts, [experts]), &p.device());
        Some((f * p).sum() * (config.load_balance * experts as f64))
    }
}

pub struct TrainingLoss {
    pub lm: Tensor<1>,
    /// `None` for a dense model.
    pub aux: Option<Tensor<1>>,
    pub layers: Vec<MoeAux>,
}

impl TrainingLoss {
    pub fn total(&self) -> Tensor<1> {
        match &self.aux {
            Some(aux) => self.lm.clone() + aux.clone(),
            None => self.lm.clone(),
        }
    }
}

/// sum_t w_t * -log softmax(logits_t)[y_t], the cross-entropy with per-token weights (constants:
/// 1/tokens for the mean, 0 for a token the loss does not count), from whole logits.
///
/// # Shapes
/// - logits: `[tokens, vocab]`, targets and weights: `[tokens]` -> `[1]`
pub fn weighted_nll(logits: Tensor<2>, targets: Tensor<1, Int>, token_weights: Tensor<1>) -> Tensor<1> {
    let log_probs = token_log_probs(logits.unsqueeze_dim(0), targets.unsqueeze_dim(0)).squeeze_dim(0);
    (log_probs * token_weights.detach()).sum().neg()
}

/// log softmax(logits)[target] for every position, as logit[target] - logsumexp(logits):
/// one exponential per logit (the backward pass reuses it), and no `[batch, seq, vocab]`
/// tensor of log-probabilities to gather from. Equal to gathering from `log_softmax`.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`, targets: `[batch, seq]` -> `[batch, seq]`
pub fn token_log_probs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    // Shifting by the (constant) maximum keeps exp in range; it cancels in the difference.
    let shifted = logits.clone() - logits.max_dim(2).detach();
    let log_sum_exp = crate::kernels::exp(shifted.clone()).sum_dim(2).log();
    let target = shifted.gather(2, targets.unsqueeze_dim(2));
    (target - log_sum_exp).squeeze_dim(2)
}
