"""The reference for `cargo xtask bench data`: Hugging Face's `tokenizers` (Python package)
tokenizing a JSONL corpus the way its documentation shows: documents read in batches,
`encode_batch_fast` over each batch (parallel on every core, in Rust), the end-of-text token
appended, the ids written as flat uint16. Prints one JSON line: seconds, input bytes, tokens.

    python3 bench/reference/prepare_bench.py CORPUS.jsonl --tokenizer assets/tokenizer.json --out /tmp/ids.bin
"""
import argparse
import array
import json
import os
import time

from tokenizers import Tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-docs", type=int, default=1000)
    parser.add_argument("--eos", default="<|endoftext|>")
    args = parser.parse_args()
    started = time.perf_counter()
    tokenizer = Tokenizer.from_file(args.tokenizer)
    eos = tokenizer.token_to_id(args.eos)
    tokens = 0
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    def flush(batch, out):
        nonlocal tokens
        ids = array.array("H")
        for encoding in encode(batch, add_special_tokens=False):
            ids.extend(encoding.ids)
            ids.append(eos)
        tokens += len(ids)
        ids.tofile(out)

    with open(args.corpus, encoding="utf-8") as lines, open(args.out, "wb") as out:
        batch = []
        for line in lines:
            batch.append(json.loads(line)["text"])
            if len(batch) == args.batch_docs:
                flush(batch, out)
                batch = []
        if batch:
            flush(batch, out)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "bytes": os.path.getsize(args.corpus), "tokens": tokens}))


if __name__ == "__main__":
    main()
