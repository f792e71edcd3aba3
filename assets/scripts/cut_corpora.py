#!/usr/bin/env python3
"""Cut the shipped corpora in assets/corpora/ from sources available offline.

Run from the repository root. Needs: Debian's `diatheke` and `sword-text-web`
(World English Bible), the npm package `quran-json@3.1.2` unpacked at
/tmp/qj/package (`npm pack quran-json@3.1.2 && tar xzf quran-json-3.1.2.tgz`),
and CPython 3.11's standard library. Output is deterministic: the same sources
give byte-identical files. See assets/SOURCES.md for licences.
"""
import json, os, re, subprocess, sys, sysconfig

OUT = "assets/corpora"
LIMIT = 1_200_000  # bytes per domain: keeps assets/ well under 10 MB
LATIN_VERSES = 6000  # arabic_latin.txt keeps verses 1..6000; 6001..6236 are held out for
                     # the evaluation tasks (assets/scripts/make_tasks.py)

def write(name, text):
    os.makedirs(OUT, exist_ok=True)
    data = text.encode("utf-8")
    if len(data) > LIMIT:  # cut at the last line break before the limit
        data = data[: data.rfind(b"\n", 0, LIMIT) + 1]
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    print(name, len(data), "bytes", data.count(b"\n"), "lines")

def english():
    """World English Bible (public domain): one paragraph per chapter, footnotes removed."""
    books = ["Genesis", "Exodus", "Ruth", "Job", "Proverbs", "Ecclesiastes", "Matthew", "Luke",
             "John", "Acts", "Romans", "James"]
    chapters = {}
    for book in books:
        raw = subprocess.run(["diatheke", "-b", "engWEB2015eb", "-f", "plain", "-o", "f",
                              "-k", book], capture_output=True, text=True, check=True).stdout
        for line in raw.splitlines():
            m = re.match(r"^(.+?) (\d+):(\d+): (.*)$", line)
            if not m:
                continue
            text = re.sub(r"\s*\[[^\]]*\]", "", m.group(4)).strip()  # footnotes
            text = re.sub(r"\s+", " ", text)
            if text:
                chapters.setdefault((book, int(m.group(2))), []).append(text)
    return "\n".join(" ".join(v) for v in chapters.values()) + "\n"

def code():
    """CPython 3.11 standard library modules (PSF licence), whole files in a fixed order."""
    lib = sysconfig.get_paths()["stdlib"]
    names = ["textwrap", "string", "shlex", "fractions", "heapq", "bisect", "calendar",
             "difflib", "csv", "argparse", "json/decoder", "json/encoder", "statistics",
             "dataclasses", "functools", "enum", "pathlib", "ipaddress", "tokenize",
             "configparser", "gettext", "pprint", "random", "inspect", "typing"]
    parts = []
    for n in names:
        with open(os.path.join(lib, n + ".py"), encoding="utf-8") as f:
            parts.append(f.read())
    return "\n".join(parts)

def quran(field, verses=None):
    """Quran, Uthmani Arabic text or Tanzil's Latin transliteration: one verse per line,
    the first `verses` verses in canonical order (all 6236 when None)."""
    with open("/tmp/qj/package/dist/quran_transliteration.json", encoding="utf-8") as f:
        chapters = json.load(f)
    lines = [v[field].strip() + "\n" for c in chapters for v in c["verses"]]
    return "".join(lines[:verses])

write("english.txt", english())
write("code.txt", code())
write("arabic.txt", quran("text"))
write("arabic_latin.txt", quran("transliteration", LATIN_VERSES))
