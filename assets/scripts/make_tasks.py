#!/usr/bin/env python3
"""Make the shipped evaluation tasks in assets/tasks/: lm-evaluation-harness task YAML files
and their JSONL data, every item held out from what the shipped recipes train on.

Run from the repository root, after cut_corpora.py (it reads assets/corpora/ and recipes/).
Needs the same sources as cut_corpora.py: Debian's `diatheke` and `sword-text-web` (World
English Bible), the npm package `quran-json@3.1.2` unpacked at /tmp/qj/package, and CPython
3.11's standard library. Output is deterministic: the same sources give byte-identical files.

Held out from training, and so used here:
  English  WEB books that english.txt does not contain (HELD_OUT_BOOKS)
  code     CPython 3.11 stdlib modules that code.txt does not contain (HELD_OUT_MODULES)
  Arabic   Quran verses 5095..6236 (arabic.txt stops at 5094)
  Latin    Quran verses 6001..6236 (cut_corpora.py keeps verses 1..6000 in arabic_latin.txt)
  sums     3-digit + 3-digit problems from a seeded generator, minus any whose "a+b=" occurs in
           assets/corpora or in the recipes' generated arithmetic lines (reproduced below)

The script checks the rule itself before writing anything: no document's source line or verse
is a line of any corpus file (English: not even a substring of english.txt, which holds a
chapter per line), no sum's "a+b=" occurs in assets/corpora or in the generated lines.

To swap sums out (say an engine test finds one in a training stream this script does not
reproduce), add their prompts to EXCLUDE_SUMS or pass them as `--exclude-sums 123+456= ...`:
each excluded item is replaced by the next candidate of the same seeded stream, and every other
item stays.
"""
import argparse, ast, glob, json, os, random, re, subprocess, sys, sysconfig

TASKS = "assets/tasks"
DATA = "assets/tasks/data"
CORPORA = ["english.txt", "code.txt", "arabic.txt", "arabic_latin.txt"]
QURAN = "/tmp/qj/package/dist/quran_transliteration.json"

# Prompts ("a+b=") never to use in arithmetic_sums.
EXCLUDE_SUMS = []

HELD_OUT_BOOKS = ["Joshua", "Judges", "I Samuel", "I Corinthians", "Hebrews"]
HELD_OUT_MODULES = ["base64", "colorsys", "copy", "fnmatch", "glob", "graphlib", "numbers",
                    "operator", "plistlib", "queue", "sched", "secrets", "shutil", "tempfile",
                    "zipapp"]
TRAINED_MODULES = ["textwrap", "string", "shlex", "fractions", "heapq", "bisect", "calendar",
                   "difflib", "csv", "argparse", "json/decoder", "json/encoder", "statistics",
                   "dataclasses", "functools", "enum", "pathlib", "ipaddress", "tokenize",
                   "configparser", "gettext", "pprint", "random", "inspect", "typing"]
ARABIC_FIRST_HELD_OUT = 5095  # 1-based verse numbers
LATIN_FIRST_HELD_OUT = 6001

# ------------------------------------------------------------------------------------------
# What the recipes train on

def load_corpora():
    texts, lines = {}, {}
    for name in CORPORA:
        with open(os.path.join("assets/corpora", name), encoding="utf-8") as f:
            texts[name] = f.read()
        lines[name] = {l.strip() for l in texts[name].splitlines()}
    return texts, lines

M64 = (1 << 64) - 1

class SplitMix64:
    """engine/src/data/rng.rs, bit for bit."""
    def __init__(self, seed):
        self.state = seed & M64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return (self.next_u64() * n) >> 64

assert SplitMix64(0).next_u64() == 0xE220A8397B1DCDAF  # the published SplitMix64 value

def arithmetic_prompts(max_digits, lines, seed):
    """The "a+b=" prompts of engine/src/data/synthetic.rs's arithmetic_text."""
    rng = SplitMix64(seed ^ 0xA11CE)
    out = set()
    for _ in range(lines):
        ab = []
        for _ in range(2):
            digits = 1 + rng.below(max_digits)
            ab.append(rng.below(10 ** digits))
        out.add(f"{ab[0]}+{ab[1]}=")
    return out

def recipe_arithmetic_configs():
    """Every Arithmetic((...)) domain in recipes/ (defaults: 3 digits, 40000 lines, seed 0),
    plus the tokenizer's 20,000 lines (a prefix of the default stream)."""
    configs = {(3, 20000, 0)}
    for path in sorted(glob.glob("recipes/**/*.ron", recursive=True)):
        with open(path, encoding="utf-8") as f:
            for body in re.findall(r"Arithmetic\(\((.*?)\)\)", f.read()):
                def get(key, default):
                    m = re.search(key + r":\s*(\d+)", body)
                    return int(m.group(1)) if m else default
                configs.add((get("max_digits", 3), get("lines", 40000), get("seed", 0)))
    return sorted(configs)

# ------------------------------------------------------------------------------------------
# Held-out sources

def web_verses(book):
    """(reference, text) per verse, parsed as cut_corpora.py does (first line of each verse,
    footnotes removed, whitespace collapsed)."""
    raw = subprocess.run(["diatheke", "-b", "engWEB2015eb", "-f", "plain", "-o", "f", "-k", book],
                         capture_output=True, text=True, check=True).stdout
    out = []
    for line in raw.splitlines():
        m = re.match(r"^(.+?) (\d+):(\d+): (.*)$", line)
        if not m:
            continue
        text = re.sub(r"\s*\[[^\]]*\]", "", m.group(4)).strip()
        text = re.sub(r"\s+", " ", text)
        if text:
            out.append((f"{m.group(1).strip()} {m.group(2)}:{m.group(3)}", text))
    return out

def quran_verses():
    """(index 1..6236, "surah:ayah", Arabic text, Latin transliteration), stripped as in
    cut_corpora.py."""
    with open(QURAN, encoding="utf-8") as f:
        chapters = json.load(f)
    out = []
    for c in chapters:
        for v in c["verses"]:
            out.append((len(out) + 1, f"{c['id']}:{v['id']}", v["text"].strip(),
                        v["transliteration"].strip()))
    assert len(out) == 6236
    return out

def module_lines(name):
    lib = sysconfig.get_paths()["stdlib"]
    with open(os.path.join(lib, name + ".py"), encoding="utf-8") as f:
        return f.read().splitlines()

# ------------------------------------------------------------------------------------------
# Task builders

def sums(excluded, trained_prompts, corpus_text, n_test=150, n_train=20):
    """3-digit + 3-digit sums: test and few-shot streams from their own seeds, disjoint."""
    dropped = {"excluded": 0, "in corpora": 0, "in generated lines": 0}
    seen = set()

    def stream(seed, n):
        rng, docs = random.Random(seed), []
        while len(docs) < n:
            a, b = rng.randint(100, 999), rng.randint(100, 999)
            q = f"{a}+{b}="
            if q in seen:
                continue
            seen.add(q)
            if q in excluded:
                dropped["excluded"] += 1
            elif q in corpus_text:
                dropped["in corpora"] += 1
            elif q in trained_prompts:
                dropped["in generated lines"] += 1
            else:
                docs.append({"question": q, "answer": str(a + b)})
        return docs

    test = stream(1001, n_test)
    train = stream(1002, n_train)
    return test, train, dropped

NAMES = [("Amina", "she"), ("Omar", "he"), ("Lena", "she"), ("Yusuf", "he"), ("Mei", "she"),
         ("Carlos", "he"), ("Fatima", "she"), ("Jonas", "he"), ("Priya", "she"), ("Tariq", "he"),
         ("Sofia", "she"), ("Kwame", "he")]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cards", "eggs", "coins", "books",
         "stamps", "shells", "oranges", "buttons"]

# (question, worked answer); {n}/{p}: a name and its pronoun, {m}: another name, {x}: an item,
# {a} {b}: the numbers, {c}: the result. "+" templates add, "-" templates subtract (b < a).
WORD_TEMPLATES = [
    ("+", "{n} has {a} {x}. {P} gets {b} more {x}. How many {x} does {n} have now?",
     "{n} has {a} + {b} = {c} {x} now."),
    ("+", "There are {a} {x} in a box. {n} puts {b} more {x} in the box. How many {x} are in the box now?",
     "The box has {a} + {b} = {c} {x} now."),
    ("+", "{n} read {a} pages on Monday and {b} pages on Tuesday. How many pages did {p} read in the two days?",
     "{n} read {a} + {b} = {c} pages."),
    ("+", "{n} is {a} years old. How old will {p} be in {b} years?",
     "{n} will be {a} + {b} = {c} years old."),
    ("+", "A class has {a} girls and {b} boys. How many children are in the class?",
     "The class has {a} + {b} = {c} children."),
    ("-", "{n} had {a} {x} and gave {b} of them to {m}. How many {x} does {n} have left?",
     "{n} has {a} - {b} = {c} {x} left."),
    ("-", "A bus had {a} passengers. At the next stop {b} passengers got off and nobody got on. How many passengers are on the bus now?",
     "The bus has {a} - {b} = {c} passengers now."),
    ("-", "A shelf holds {a} {x}. {n} takes {b} {x} off the shelf. How many {x} are left on the shelf?",
     "The shelf has {a} - {b} = {c} {x} left."),
    ("-", "{n} has {a} dollars and spends {b} dollars on a book. How many dollars does {n} have left?",
     "{n} has {a} - {b} = {c} dollars left."),
    ("-", "{n} has {a} {x} and {m} has {b} {x}. How many more {x} does {n} have than {m}?",
     "{n} has {a} - {b} = {c} more {x} than {m}."),
]

def word_problems(n_test=150, n_train=10):
    rng, seen = random.Random(2001), set()

    def one():
        while True:
            op, q, ans = rng.choice(WORD_TEMPLATES)
            (n, p), (m, _) = rng.sample(NAMES, 2)
            x = rng.choice(ITEMS)
            if op == "+":
                a, b = rng.randint(2, 60), rng.randint(2, 40)
                c = a + b
            else:
                a = rng.randint(5, 80)
                b = rng.randint(1, a - 1)
                c = a - b
            f = dict(n=n, p=p, P=p.capitalize(), m=m, x=x, a=a, b=b, c=c)
            question = q.format(**f)
            if question in seen:
                continue
            seen.add(question)
            return {"question": question, "answer": ans.format(**f) + f"\n#### {c}"}

    return [one() for _ in range(n_test)], [one() for _ in range(n_train)]

def translit(verses, corpus_lines, n_train=30, n_test=200):
    """Held-out verses with their Arabic and Latin text; duplicates kept once."""
    all_lines = set().union(*corpus_lines.values())
    docs, seen, dropped = [], set(), {"duplicate": 0, "corpus line": 0, "too long": 0}
    for idx, ref, ar, lat in verses:
        if idx < LATIN_FIRST_HELD_OUT:
            continue
        if len(ar) > 120:  # so the Arabic fits in max_gen_toks (96) tokens of the shipped tokenizer
            dropped["too long"] += 1
            continue
        if ar in seen or lat in seen:
            dropped["duplicate"] += 1
            continue
        seen.update([ar, lat])
        if ar in all_lines or lat in all_lines:
            dropped["corpus line"] += 1
            continue
        docs.append({"verse": ref, "arabic": ar, "latin": lat})
    random.Random(3001).shuffle(docs)
    return docs[n_train:n_train + n_test], docs[:n_train], dropped

def cut_middle(line):
    """(context, continuation) cut at the word boundary (a single space between two non-spaces,
    after any indentation) nearest the middle of the words; None if there is none."""
    indent = line[: len(line) - len(line.lstrip())]
    body = line.strip()
    cuts = [i for i in range(1, len(body) - 1)
            if body[i] == " " and body[i - 1] != " " and body[i + 1] != " "]
    if not cuts:
        return None
    i = cuts[len(cuts) // 2]
    return indent + body[:i], body[i + 1:]

def continuation(candidates, n, seed, gold_checked):
    """HellaSwag-like docs from (source, line) candidates: the line's first half, its true
    second half and the second halves of 3 other docs. Candidates are shuffled with `seed`;
    a line is taken once; a second half of >= 4 words that occurs verbatim in `gold_checked`
    (the training text) is left out."""
    rng = random.Random(seed)
    candidates = list(candidates)
    rng.shuffle(candidates)
    docs, seen_lines, seen_golds, dropped = [], set(), set(), {"duplicate": 0, "gold in corpus": 0}
    for source, line in candidates:
        if len(docs) == n:
            break
        cut = cut_middle(line)
        if cut is None:
            continue
        ctx, gold = cut
        if line.strip() in seen_lines or gold in seen_golds:
            dropped["duplicate"] += 1
            continue
        seen_lines.add(line.strip())
        if len(gold.split()) >= 4 and gold in gold_checked:
            dropped["gold in corpus"] += 1
            continue
        seen_golds.add(gold)
        docs.append({"source": source, "line": line, "text": ctx, "gold": gold})
    golds = [d["gold"] for d in docs]
    out = []
    for k, d in enumerate(docs):
        others = rng.sample([g for j, g in enumerate(golds) if j != k], 3)
        label = rng.randrange(4)
        choices = others[:label] + [d["gold"]] + others[label:]
        out.append({"source": d["source"], "text": d["text"], "choices": choices, "label": label})
    return out, dropped

def code_next_line():
    """(source, def line, next non-empty line) of held-out modules, shuffled: single-line `def`
    statements whose next line is not a comment and has at most 60 characters, 12 of them
    punctuation (so it fits in max_gen_toks, 32, tokens of the shipped tokenizer)."""
    cands = []
    for mod in HELD_OUT_MODULES:
        lines = module_lines(mod)
        for i, line in enumerate(lines):
            if not re.match(r"^\s*(async\s+)?def \w+\(.*\)\s*(->.*)?:$", line.rstrip()):
                continue
            nxt = next((l for l in lines[i + 1:] if l.strip()), None)
            if nxt is None or nxt.strip().startswith("#") or len(nxt.strip()) > 60 \
                    or sum(not (ch.isalnum() or ch.isspace()) for ch in nxt) > 12:
                continue
            cands.append((f"{mod}.py:{i + 1}", line.rstrip(), nxt))
    random.Random(5001).shuffle(cands)
    return cands

# ------------------------------------------------------------------------------------------
# Output

HEADER = "# Generated by assets/scripts/make_tasks.py; do not edit. Run lm_eval from the repository root.\n"

def dataset_block(test, train=None):
    files = f"    test: {DATA}/{test}\n"
    if train:
        files += f"    train: {DATA}/{train}\n"
    split = "test_split: test\n"
    if train:
        split = "training_split: train\nfewshot_split: train\ntest_split: test\n"
    return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n{files}{split}"

def yaml_sums():
    return HEADER + f"""tag:
  - btx
task: arithmetic_sums
{dataset_block("arithmetic_sums_test.jsonl", "arithmetic_sums_train.jsonl")}output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
fewshot_delimiter: "\\n"
num_fewshot: 3
generation_kwargs:
  until:
    - "\\n"
  max_gen_toks: 8
  do_sample: false
filter_list:
  - name: "leading-int"
    filter:
      - function: "regex"
        regex_pattern: "^\\\\s*(-?[0-9]+)"
      - function: "take_first"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

def yaml_word():
    return HEADER + f"""tag:
  - btx
task: arithmetic_word
{dataset_block("arithmetic_word_test.jsonl", "arithmetic_word_train.jsonl")}output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
num_fewshot: 3
generation_kwargs:
  until:
    - "Question:"
    - "\\n\\n"
  max_gen_toks: 32
  do_sample: false
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore:
      - ","
      - "\\\\$"
      - "(?s).*#### "
      - "\\\\.$"
metadata:
  version: 1.0
"""

def yaml_translit(task, src, src_name, tgt, tgt_name):
    return HEADER + f"""tag:
  - btx
task: {task}
{dataset_block("translit_test.jsonl", "translit_train.jsonl")}output_type: generate_until
doc_to_text: "{src_name}: {{{{{src}}}}}\\n{tgt_name}:"
doc_to_target: "{{{{{tgt}}}}}"
target_delimiter: " "
num_fewshot: 2
generation_kwargs:
  until:
    - "\\n"
  max_gen_toks: 96
  do_sample: false
metric_list:
  - metric: chrf
    aggregation: chrf
    higher_is_better: true
  - metric: bleu
    aggregation: bleu
    higher_is_better: true
metadata:
  version: 1.0
"""

def yaml_continuation(domain):
    return HEADER + f"""tag:
  - btx
task: continuation_{domain}
{dataset_block(f"continuation_{domain}.jsonl")}output_type: multiple_choice
doc_to_text: "{{{{text}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
num_fewshot: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

def yaml_code_next_line():
    return HEADER + f"""tag:
  - btx
task: code_next_line
{dataset_block("code_next_line.jsonl")}output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
num_fewshot: 0
generation_kwargs:
  until:
    - "\\n"
  max_gen_toks: 32
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore:
      - "^\\\\s+"
      - "\\\\s+$"
metadata:
  version: 1.0
"""

def write_jsonl(name, docs):
    with open(os.path.join(DATA, name), "w", encoding="utf-8", newline="\n") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")

def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)

# ------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exclude-sums", nargs="*", default=[],
                    help='extra "a+b=" prompts to leave out of arithmetic_sums')
    args = ap.parse_args()
    excluded = set(EXCLUDE_SUMS) | {s if s.endswith("=") else s + "=" for s in args.exclude_sums}
    assert not set(HELD_OUT_MODULES) & set(TRAINED_MODULES)

    texts, lines = load_corpora()
    all_text = "".join(texts.values())
    all_lines = set().union(*lines.values())
    configs = recipe_arithmetic_configs()
    trained_prompts = set().union(*(arithmetic_prompts(*c) for c in configs))
    print("generated arithmetic streams checked (max_digits, lines, seed):", configs,
          f"-> {len(trained_prompts)} distinct prompts")

    tasks = {}  # file name -> docs

    # 1. sums
    test, train, dropped = sums(excluded, trained_prompts, all_text)
    tasks["arithmetic_sums_test.jsonl"], tasks["arithmetic_sums_train.jsonl"] = test, train
    print("arithmetic_sums: dropped", dropped)

    # 2. word problems
    tasks["arithmetic_word_test.jsonl"], tasks["arithmetic_word_train.jsonl"] = word_problems()

    # 3. transliteration (one pair of files for both directions)
    verses = quran_verses()
    test, train, dropped = translit(verses, lines)
    tasks["translit_test.jsonl"], tasks["translit_train.jsonl"] = test, train
    print("translit: dropped", dropped)

    # 4. continuations
    eng = [(ref, t) for book in HELD_OUT_BOOKS for ref, t in web_verses(book)
           if 12 <= len(t.split()) <= 30 and t not in texts["english.txt"]]
    code = []
    for mod in HELD_OUT_MODULES:
        for i, l in enumerate(module_lines(mod)):
            if len(l.split()) >= 6 and len(l) <= 100 and l.strip() not in all_lines:
                code.append((f"{mod}.py:{i + 1}", l.rstrip()))
    arabic = [(f"{ref} (verse {idx})", ar) for idx, ref, ar, _ in verses
              if idx >= ARABIC_FIRST_HELD_OUT and 6 <= len(ar.split()) <= 20 and ar not in all_lines]
    latin = [(f"{ref} (verse {idx})", lat) for idx, ref, _, lat in verses
             if idx >= LATIN_FIRST_HELD_OUT and len(lat.split()) >= 4 and lat not in all_lines]
    for domain, cands, n, seed, corpus in [("english", eng, 120, 4001, "english.txt"),
                                           ("code", code, 120, 4002, "code.txt"),
                                           ("arabic", arabic, 120, 4003, "arabic.txt"),
                                           ("arabic_latin", latin, 120, 4004, "arabic_latin.txt")]:
        docs, dropped = continuation(cands, n, seed, texts[corpus])
        tasks[f"continuation_{domain}.jsonl"] = docs
        print(f"continuation_{domain}: {len(cands)} candidate lines, dropped", dropped)

    # 5. code: next line after a def
    docs, seen = [], set()
    for source, defline, nxt in code_next_line():
        if len(docs) == 150:
            break
        if defline.strip() in seen or defline.strip() in all_lines or nxt.strip() in all_lines:
            continue
        seen.add(defline.strip())
        docs.append({"source": source, "prompt": defline + "\n", "target": nxt.strip()})
    tasks["code_next_line.jsonl"] = docs

    # ---- the hard rule, checked on every document -----------------------------------------
    def source_texts(name, d):
        if name.startswith("arithmetic_sums"):
            return []
        if name.startswith("arithmetic_word"):
            return [d["question"], d["answer"]]
        if name.startswith("translit"):
            return [d["arabic"], d["latin"]]
        if name.startswith("continuation"):
            return [d["text"] + " " + d["choices"][d["label"]]]
        if name == "code_next_line.jsonl":
            return [d["prompt"], d["target"]]
        raise KeyError(name)

    for name, docs in tasks.items():
        checked = 0
        for d in docs:
            if name.startswith("arithmetic_sums"):
                q = d["question"]
                assert q not in all_text, f"{name}: {q} occurs in assets/corpora"
                assert q not in trained_prompts, f"{name}: {q} is a generated training line"
                assert q not in excluded, q
                assert int(d["answer"]) == eval(q[:-1])
            for t in source_texts(name, d):
                assert t.strip() not in all_lines, f"{name}: {t!r} is a corpus line"
            if name == "continuation_english.jsonl":
                assert source_texts(name, d)[0] not in texts["english.txt"], d
            if name.startswith("continuation"):
                # lm-eval renders "{{choices}}" with Jinja (str of the list), then literal_eval
                assert ast.literal_eval(str(d["choices"])) == d["choices"]
                assert len(set(d["choices"])) == 4
            checked += 1
        print(f"  {name}: {checked} docs checked: no source text is a corpus line")
    for a, b in [("arithmetic_sums_test.jsonl", "arithmetic_sums_train.jsonl"),
                 ("arithmetic_word_test.jsonl", "arithmetic_word_train.jsonl"),
                 ("translit_test.jsonl", "translit_train.jsonl")]:
        key = "question" if "arith" in a else "latin"
        assert not {d[key] for d in tasks[a]} & {d[key] for d in tasks[b]}, (a, b)

    # ---- write ------------------------------------------------------------------------------
    os.makedirs(DATA, exist_ok=True)
    for name, docs in tasks.items():
        write_jsonl(name, docs)
    yamls = {
        "arithmetic_sums.yaml": yaml_sums(),
        "arithmetic_word.yaml": yaml_word(),
        "translit_ar2lat.yaml": yaml_translit("translit_ar2lat", "arabic", "Arabic", "latin", "Latin"),
        "translit_lat2ar.yaml": yaml_translit("translit_lat2ar", "latin", "Latin", "arabic", "Arabic"),
        "code_next_line.yaml": yaml_code_next_line(),
    }
    for domain in ["english", "code", "arabic", "arabic_latin"]:
        yamls[f"continuation_{domain}.yaml"] = yaml_continuation(domain)
    for name, text in yamls.items():
        write_text(os.path.join(TASKS, name), text)
    for name, docs in tasks.items():
        print(f"{DATA}/{name}: {len(docs)} docs, {os.path.getsize(os.path.join(DATA, name))} bytes")

if __name__ == "__main__":
    main()
