#!/usr/bin/env python3
"""Make the shipped chat data and chat tokenizer in assets/chat/ (recipes/nile-tiny.ron), from
the shipped corpora only. Run from the repository root with Python 3 and the `tokenizers`
package (pip install tokenizers); output is deterministic.

- tokenizer.json: assets/tokenizer.json with Gemma's turn tokens added (<bos>, <eos>,
  <start_of_turn>, <end_of_turn>) as special tokens: every other id is unchanged.
- tokenizer_config.json and chat_template.jinja: those tokens, and Gemma 3's chat template
  (as google/gemma-3 checkpoints ship it; tests/fixtures/chat/templates/gemma3.jinja).
- chat_arabic.jsonl.gz: conversations whose replies are in Arabic script: a verse to write in
  Arabic script from its Latin transliteration, and a verse to continue.
- chat_latin.jsonl.gz: the same with Latin-script replies.
- chat_mixed.jsonl.gz: the generalist's set: conversations of both scripts (other verses),
  additions to answer and Python code to complete.

Nothing comes from a held-out or task line: verses 1..5094 only (the tasks hold out Arabic
verses from 5095 and Latin ones from 6001), code lines of code.txt (the tasks use other
modules), and no sum that the arithmetic tasks ask.
"""
import gzip, json, os, random

from tokenizers import AddedToken, Tokenizer

OUT = "assets/chat"
VERSES = 5094
SPECIAL = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]


def write(name, conversations):
    path = os.path.join(OUT, name)
    # mtime=0: the same bytes on every run.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        for messages in conversations:
            f.write((json.dumps({"messages": messages}, ensure_ascii=False) + "\n").encode())


def chat(user, reply):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def verse_chats(arabic, latin, script, indices):
    """Transliteration into `script` and continuation in `script`, alternately."""
    out = []
    for n, i in enumerate(indices):
        source, target = (latin[i], arabic[i]) if script == "arabic" else (arabic[i], latin[i])
        words = target.split()
        if n % 2 == 0 or len(words) < 4:
            name = "Arabic" if script == "arabic" else "Latin"
            out.append(chat(f"Write this verse in {name} script:\n{source}", target))
        else:
            cut = len(words) // 2
            out.append(chat(f"Continue this verse:\n{' '.join(words[:cut])}", " ".join(words[cut:])))
    return out


def sums(rng, n):
    asked = set()
    for name in ["arithmetic_sums_test.jsonl", "arithmetic_sums_train.jsonl"]:
        for line in open(f"assets/tasks/data/{name}"):
            asked.add(json.loads(line)["question"])
    out = []
    while len(out) < n:
        a, b = rng.randrange(1000), rng.randrange(1000)
        if f"{a}+{b}=" in asked:
            continue
        out.append(chat(f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
    return out


def code(rng, n):
    lines = [l.rstrip() for l in open("assets/corpora/code.txt", encoding="utf-8")]
    out = []
    while len(out) < n:
        i = rng.randrange(len(lines) - 5)
        context, reply = lines[i:i + 4], lines[i + 4]
        if not reply.strip() or not any(l.strip() for l in context):
            continue
        out.append(chat("Complete this Python code:\n" + "\n".join(context), reply))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer.from_file("assets/tokenizer.json")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<eos>"}, f, indent=2)
        f.write("\n")
    with open("tests/fixtures/chat/templates/gemma3.jinja") as src, open(os.path.join(OUT, "chat_template.jinja"), "w") as dst:
        dst.write(src.read())

    arabic = [l.strip() for l in open("assets/corpora/arabic.txt", encoding="utf-8")][:VERSES]
    latin = [l.strip() for l in open("assets/corpora/arabic_latin.txt", encoding="utf-8")][:VERSES]
    rng = random.Random(34)
    order = list(range(VERSES))
    rng.shuffle(order)
    # The script experts' verses, and others for the generalist's mixed set.
    write("chat_arabic.jsonl.gz", verse_chats(arabic, latin, "arabic", order[:2000]))
    write("chat_latin.jsonl.gz", verse_chats(arabic, latin, "latin", order[2000:4000]))
    mixed = verse_chats(arabic, latin, "arabic", order[4000:4547]) + verse_chats(arabic, latin, "latin", order[4547:])
    mixed += sums(rng, 1000) + code(rng, 1000)
    rng.shuffle(mixed)
    write("chat_mixed.jsonl.gz", mixed)


if __name__ == "__main__":
    main()
