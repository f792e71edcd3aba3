#!/usr/bin/env python3
"""PyTorch reference for `cargo xtask bench real`: one training step of transformers' own
model class (Qwen2ForCausalLM or LlamaForCausalLM) at the shape of an engine config, random
weights made locally (nothing downloaded), torch's AdamW with the engine benchmark's
settings, global-norm clipping at 1.0. Prints one JSON line: the median step time after the
warm-up and the process's peak resident memory (the same measure xtask takes of the engine).

    python3 bench/reference/real_bench.py --engine-json ENGINE.json [--warmup 1] [--iters 2]

With `lora_rank` in the engine's JSON (`btx bench train --lora R`), PEFT's LoRA of that rank
on the same seven projections (alpha = 2 x rank, no dropout) on a frozen base, as the engine;
with its `frozen_precision` (BF16/F16), the base model in that dtype.
"""
import argparse, json, resource, time

import torch


def hf_model(c):
    """transformers' model for the engine's dense config `c` (its ModelConfig as JSON)."""
    common = dict(
        vocab_size=c["vocab_size"], hidden_size=c["d_model"], intermediate_size=c["d_ff"],
        num_hidden_layers=c["n_layers"], num_attention_heads=c["n_heads"],
        num_key_value_heads=c.get("n_kv_heads") or c["n_heads"], max_position_embeddings=c["max_seq_len"],
        rms_norm_eps=c["norm_eps"], rope_theta=c["rope_theta"], tie_word_embeddings=c["tie_embeddings"],
    )
    if c.get("attention_bias"):
        from transformers import Qwen2Config, Qwen2ForCausalLM
        config, cls, family = Qwen2Config(**common), Qwen2ForCausalLM, "Qwen2ForCausalLM"
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        config, cls, family = LlamaConfig(**common), LlamaForCausalLM, "LlamaForCausalLM"
    config._attn_implementation = "sdpa"
    return cls(config), family


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--engine-json", required=True, help="the output of btx bench train --json")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    a = p.parse_args()
    engine = json.load(open(a.engine_json))
    c, batch, seq = engine["dense_config"], engine["batch"], engine["seq_len"]
    torch.manual_seed(0)
    model, family = hf_model(c)
    frozen = {"BF16": torch.bfloat16, "F16": torch.float16}.get(engine.get("frozen_precision") or "F32")
    if engine.get("lora_rank") and frozen is not None:
        # The base model in half precision, as a user loads it (torch_dtype); PEFT keeps the
        # adapters in f32 (autocast_adapter_dtype).
        model = model.to(frozen)
    if engine.get("lora_rank"):
        from peft import LoraConfig, get_peft_model
        rank = engine["lora_rank"]
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    tokens = torch.randint(0, c["vocab_size"], (batch, seq + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()

    start = time.perf_counter()
    for _ in range(a.warmup):
        step()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    step_s = sorted(times)[len(times) // 2]
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"torch": torch.__version__, "model": family, "params": params, "trainable": sum(p.numel() for p in trainable), "threads": torch.get_num_threads(),
                      "step_s": step_s, "warmup_s": warmup_s, "peak_memory_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
