#!/usr/bin/env python3
"""transformers' greedy generate on an exported checkpoint (btx export-hf), timed the way
`btx bench generate` times the engine: the prompt (one forward, KV cache filled) apart from
the new tokens. Prints one JSON object.

    python3 bench/reference/generate_bench.py HF_DIR --prompt-tokens 64 --new-tokens 64 --threads 2
"""
import argparse, json, time
import torch, transformers
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("hf_dir")
p.add_argument("--prompt-tokens", type=int, default=64)
p.add_argument("--new-tokens", type=int, default=64)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
model = AutoModelForCausalLM.from_pretrained(a.hf_dir, dtype=torch.float32).eval()
vocab = model.config.vocab_size
prompt = torch.tensor([[(i * 37 + 11) % vocab for i in range(a.prompt_tokens)]])
kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
with torch.no_grad():
    model.generate(prompt, max_new_tokens=4, **kw)  # warm-up
    t0 = time.perf_counter()
    model(prompt, use_cache=True)
    prompt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, **kw)
    total_s = time.perf_counter() - t0
gen_s = max(total_s - prompt_s, 1e-9)
print(json.dumps({"prompt_tokens_per_s": a.prompt_tokens / prompt_s,
                  "generated_tokens_per_s": (out.shape[1] - a.prompt_tokens) / gen_s,
                  "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "transformers": transformers.__version__}))
