#!/usr/bin/env python3
"""Compares `btx eval --tasks ... --json E --log-samples` with lm-evaluation-harness's
`--output_path D --log_samples` on the same model (exported with `btx export-hf`):
per document, the same choice under acc and acc_norm, the largest log-likelihood difference,
the same generation character for character; per task, the metrics side by side.

    python3 bench/reference/lm_eval_parity.py ENGINE.json LM_EVAL_OUTPUT_DIR
Exits 1 if a choice, a generation or a metric differs.
"""
import glob
import json
import sys

import numpy as np


def lm_eval_files(folder):
    results = sorted(glob.glob(f"{folder}/**/results_*.json", recursive=True))[-1]
    stamp = results.rsplit("results_", 1)[1][:-len(".json")]
    samples = {}
    for path in glob.glob(f"{folder}/**/samples_*_{stamp}.jsonl", recursive=True):
        task = path.rsplit("/samples_", 1)[1][: -len(f"_{stamp}.jsonl")]
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        by_doc = {}
        for row in rows:  # one row per document and filter
            by_doc.setdefault(row["doc_id"], row)
        samples[task] = by_doc
    with open(results, encoding="utf-8") as f:
        return json.load(f), samples


def main(engine_path, folder):
    with open(engine_path, encoding="utf-8") as f:
        engine = json.load(f)
    reference, reference_samples = lm_eval_files(folder)
    failures = 0
    print(f"| task | docs | same choice (acc / acc_norm) | max abs log-lik diff | same generation | metric | lm-eval | engine |")
    print(f"|---|---:|---:|---:|---:|---|---:|---:|")
    for task, ours in engine["results"].items():
        theirs = reference["results"].get(task)
        if theirs is None:
            print(f"{task}: not in lm-eval's results")
            failures += 1
            continue
        docs = engine["samples"][task]
        same_acc = same_norm = same_gen = n_gen = 0
        max_diff = 0.0
        for doc in docs:
            ref = reference_samples[task][doc["doc_id"]]
            if "loglikelihoods" in doc:
                ref_lls = np.array([r[0] for r in ref["filtered_resps"]], dtype=np.float64)
                lls = np.array(doc["loglikelihoods"], dtype=np.float64)
                max_diff = max(max_diff, float(np.abs(lls - ref_lls).max()))
                same_acc += int(np.argmax(lls) == np.argmax(ref_lls))
                choices = ref["doc"].get("choices")
                if choices is not None and len(choices) == len(lls):
                    norm = np.array([float(len(c)) for c in choices])
                    same_norm += int(np.argmax(lls / norm) == np.argmax(ref_lls / norm))
                else:
                    same_norm += int(np.argmax(lls) == np.argmax(ref_lls))
            else:
                n_gen += 1
                same_gen += int(doc.get("generation") == ref["resps"][0][0])
        n = len(docs)
        mc = n - n_gen
        for key, value in ours.items():
            if "," not in key:
                continue
            ref_value = theirs.get(key)
            tolerance = 0.01 if key.startswith(("bleu", "chrf")) else 1e-9
            if isinstance(value, str) or isinstance(ref_value, str):  # "N/A"
                ok = value == ref_value
            else:
                ok = ref_value is not None and abs(value - ref_value) <= tolerance
            failures += not ok
            choice = f"{same_acc}/{mc} / {same_norm}/{mc}" if mc else "-"
            generation = f"{same_gen}/{n_gen}" if n_gen else "-"
            diff = f"{max_diff:.2e}" if mc else "-"
            print(f"| {task} | {n} | {choice} | {diff} | {generation} | {key} | {ref_value} | {value}{'' if ok else ' DIFFERS'} |")
        failures += (mc - same_acc) + (mc - same_norm) + (n_gen - same_gen)
    print("all equal" if failures == 0 else f"{failures} differences")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
