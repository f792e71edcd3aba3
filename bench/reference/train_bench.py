#!/usr/bin/env python3
"""PyTorch reference of the engine's benchmark models: the same Llama-style LM (RMSNorm,
RoPE rotate-half, grouped-query attention, SwiGLU), the same MoE (top-2 of 4 SwiGLU experts,
softmax over the top-k logits, tokens gathered per expert as Mixtral does in transformers,
BTX load balancing), the same AdamW, batch and sequence length. Times the median training
step after warm-up and prints JSON rows like `btx bench train --json`.

    python3 bench/reference/train_bench.py --engine-json ENGINE.json [--device cpu|cuda] [--dtype float32|bfloat16]
"""
import argparse, json, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.h = c["d_model"], c["n_heads"]
        self.kv = c["n_kv_heads"] or self.h
        self.hd = d // self.h
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, self.kv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.kv * self.hd, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin):
        b, s, d = x.shape
        q = self.q_proj(x).view(b, s, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k = k.repeat_interleave(self.h // self.kv, dim=1)
        v = v.repeat_interleave(self.h // self.kv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, d))


class FFN(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    def __init__(self, d, f, moe):
        super().__init__()
        self.e, self.k, self.alpha = moe["num_experts"], moe["top_k"], moe["load_balance"]
        self.gate = nn.Linear(d, self.e, bias=False)
        self.experts = nn.ModuleList(FFN(d, moe.get("expert_d_ff") or f) for _ in range(self.e))

    def forward(self, x):
        b, s, d = x.shape
        x = x.reshape(-1, d)
        logits = self.gate(x)
        top, idx = logits.topk(self.k, dim=-1)
        gates = top.softmax(-1)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(idx == e)
            if token.numel():
                y.index_add_(0, token, expert(x[token]) * gates[token, slot, None])
        dense = torch.zeros_like(logits).scatter_add(1, idx, gates)
        aux = self.alpha * self.e * (dense.mean(0) * logits.softmax(-1).mean(0)).sum()
        return y.view(b, s, d), aux


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["d_model"], c["norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["d_model"], c["norm_eps"])
        self.moe = c.get("moe") is not None
        self.mlp = MoE(c["d_model"], c["d_ff"], c["moe"]) if self.moe else FFN(c["d_model"], c["d_ff"])

    def forward(self, x, cos, sin):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        if self.moe:
            y, aux = self.mlp(self.post_attention_layernorm(h))
            return h + y, aux
        return h + self.mlp(self.post_attention_layernorm(h)), 0.0


class LM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["d_model"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["n_layers"]))
        self.norm = RMSNorm(c["d_model"], c["norm_eps"])
        self.lm_head = nn.Linear(c["d_model"], c["vocab_size"], bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens, targets):
        s = tokens.shape[1]
        hd = self.c["d_model"] // self.c["n_heads"]
        inv = self.c["rope_theta"] ** (-torch.arange(0, hd, 2, device=tokens.device).float() / hd)
        ang = torch.arange(s, device=tokens.device).float()[:, None] * inv[None]
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos().to(self.embed_tokens.weight.dtype), ang.sin().to(self.embed_tokens.weight.dtype)
        x, aux = self.embed_tokens(tokens), 0.0
        for block in self.layers:
            x, a = block(x, cos, sin)
            aux = aux + a
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1)) + aux


def bench(config, label, batch, seq, warmup, iters, device, dtype):
    torch.manual_seed(0)
    model = LM(config).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    tokens = torch.randint(0, config["vocab_size"], (batch, seq + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    step_s = sorted(times)[len(times) // 2]
    return {"model": label, "step_ms": step_s * 1e3, "tokens_per_s": batch * seq / step_s, "warmup_s": warmup_s,
            "peak_memory_mb": torch.cuda.max_memory_allocated() / 1e6 if device == "cuda" else None}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--engine-json", required=True, help="the output of btx bench train --json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    engine = json.load(open(a.engine_json))
    dtype = getattr(torch, a.dtype)
    rows = [bench(engine[key], label, engine["batch"], engine["seq_len"], a.warmup, a.iters, a.device, dtype)
            for key, label in [("dense_config", "dense"), ("moe_config", "moe")]]
    print(json.dumps({"torch": torch.__version__, "device": a.device, "dtype": a.dtype, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
