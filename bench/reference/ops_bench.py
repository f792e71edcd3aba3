#!/usr/bin/env python3
"""The primitives of `btx bench ops` in PyTorch on the CPU, same shapes, median of ITERS:
exp over [tokens, vocab], SwiGLU's silu(g) * u over [tokens, d_ff] (forward, and forward
with backward), the FFN matmul. Prints a table.

    python3 bench/reference/ops_bench.py --tokens 2048 --d-model 128 --d-ff 384 --vocab 4096 --threads 2
"""
import argparse, statistics, time
import torch

p = argparse.ArgumentParser()
for name, default in [("tokens", 2048), ("d-model", 128), ("d-ff", 384), ("vocab", 4096), ("iters", 20), ("threads", 2)]:
    p.add_argument("--" + name, type=int, default=default)
a = p.parse_args()
torch.set_num_threads(a.threads)
logits, hidden, up = torch.randn(a.tokens, a.vocab), torch.randn(a.tokens, a.d_ff), torch.randn(a.tokens, a.d_ff)
gate_t, up_t = hidden.clone().requires_grad_(), up.clone().requires_grad_()
x, w = torch.randn(a.tokens, a.d_model), torch.randn(a.d_model, a.d_ff) * 0.02

def median_ms(f):
    for _ in range(2):
        f()
    times = []
    for _ in range(a.iters):
        t = time.perf_counter(); f(); times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)

rows = [(f"exp [{a.tokens}, {a.vocab}]", median_ms(lambda: torch.exp(logits)), a.tokens * a.vocab, "elements/s"),
        (f"silu(g) * u [{a.tokens}, {a.d_ff}]", median_ms(lambda: torch.nn.functional.silu(hidden) * up), a.tokens * a.d_ff, "elements/s"),
        ("silu(g) * u forward+backward", median_ms(lambda: (torch.nn.functional.silu(gate_t) * up_t).sum().backward()), a.tokens * a.d_ff, "elements/s"),
        (f"matmul [{a.tokens}, {a.d_model}] x [{a.d_model}, {a.d_ff}]", median_ms(lambda: x @ w), 2 * a.tokens * a.d_model * a.d_ff, "FLOP/s")]
print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
for op, ms, n, unit in rows:
    print(f"{op:<34} {ms:>9.3f} ms {n / (ms / 1e3):>12.3e} {unit}")
