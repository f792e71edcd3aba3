"""Builds the data benchmark's corpus: real documents found on this machine, one per JSON
line ({"text": ...}), until the file reaches --mb megabytes.

The documents are the text files under --roots (default: this Python's standard library,
/usr/share/doc, Cargo's registry sources and /usr/share/common-licenses): source code,
documentation, changelogs and licences, each file one document, in sorted path order, so
the same machine gives the same corpus. Nothing is downloaded.

    python3 bench/reference/make_corpus.py --out /tmp/btx-bench-corpus.jsonl --mb 600
"""
import argparse
import json
import os
import pathlib
import sysconfig

TEXT_SUFFIXES = {".py", ".rs", ".md", ".txt", ".rst", ".c", ".h", ".toml", ".html", ".json", ".sh", ".js", ".ts", ".go", ".java", ".cfg", ".ini", ".yml", ".yaml", ""}


def roots():
    home = pathlib.Path.home()
    return [sysconfig.get_paths()["stdlib"], "/usr/share/doc", str(home / ".cargo/registry/src"), "/usr/share/common-licenses"]


def documents(paths):
    for root in paths:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = pathlib.Path(folder) / name
                if path.suffix not in TEXT_SUFFIXES or path.is_symlink():
                    continue
                try:
                    data = path.read_bytes()
                    if len(data) > 4_000_000 or b"\0" in data[:4096]:
                        continue
                    yield data.decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    continue


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--mb", type=float, default=600)
    parser.add_argument("--roots", nargs="*", default=None)
    args = parser.parse_args()
    limit = int(args.mb * 1e6)
    written, docs = 0, 0
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        while written < limit:
            before = written
            for text in documents(args.roots or roots()):
                line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                out.write(line)
                written += len(line.encode("utf-8"))
                docs += 1
                if written >= limit:
                    break
            if written == before:
                raise SystemExit("no text files found under the roots")
            # Fewer real files than asked for: the corpus repeats them (said below).
            if written < limit:
                print(f"note: the roots hold {written / 1e6:.0f} MB of text; repeating them")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {docs} documents, {written / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
