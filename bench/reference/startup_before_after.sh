#!/bin/bash
# A one-step training run on a 100 MB `File` domain: its time and peak memory with an OLD and
# a NEW btx binary, and with NEW on the same text prepared beforehand (`Prepared`), 3
# alternating rounds. TEXT: a text file of about 100 MB (bench/RESULTS.md used the first
# 100 MB of the data benchmark's corpus). Needs GNU time (/usr/bin/time).
#   bench/reference/startup_before_after.sh OLD_BTX NEW_BTX TEXT
set -euo pipefail
old=$1 new=$2 text=$(realpath "$3")
tok=$(realpath assets/tokenizer.json)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
config() {
    cat > "$work/$1.ron" <<R
(
    model: (vocab_size: 4096, d_model: 128, n_layers: 4, n_heads: 4, n_kv_heads: 2, d_ff: 384, max_seq_len: 256),
    data: (tokenizer: "$tok", seq_len: 128, domains: [(name: "d", source: $2)]),
    optimizer: (lr: 3e-3, warmup_steps: 1),
    steps: 1, batch_size: 16, checkpoint_every: 1, eval_batches: 1,
)
R
}
config file "File(\"$text\")"
config prepared "Prepared(\"$work/prepared\")"
"$new" data prepare "$text" --doc-per-line --tokenizer "$tok" --out "$work/prepared"
for round in 1 2 3; do
    for run in old:file new:file new:prepared; do
        bin=$old; [ "${run%%:*}" = new ] && bin=$new
        rm -rf "$work/run"
        /usr/bin/time -f "%e s %M KB" -o "$work/time" "$bin" train --config "$work/${run##*:}.ron" --out "$work/run" --device cpu --no-progress > "$work/log" 2>&1
        echo "$round $run $(cat "$work/time") $(grep -h 'ready after\|first step' "$work/log" | tr '\n' ' ')"
    done
done
