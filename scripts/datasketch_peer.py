#!/usr/bin/env python3
"""The peer of `shoal data prepare`'s near-duplicate step: datasketch MinHash + MinHashLSH
with the same inputs, normalization, filters, exact dedup, shingles, permutations, banding
and threshold; prints its time and compares its near-duplicate set with shoal's
dropped.jsonl.

    python -m venv /tmp/ds-venv && /tmp/ds-venv/bin/pip install datasketch
    /tmp/ds-venv/bin/python scripts/datasketch_peer.py \
        --domain zh_tang=../shared/data/corpus/zh_tang.jsonl ... \
        --shoal-out /tmp/prep [--exact] [--bands 16]

As shoal does: NFKC, whitespace folded (lines kept), documents under --min-chars or above
--max-non-text dropped, exact copies of the normalized text dropped (first kept), then
shingles of the text lower-cased with whitespace runs folded to one space: character
n-grams when more than 30% of the non-space characters are CJK, word n-grams otherwise.
In input order each document queries the LSH index, its candidates are verified by
estimated Jaccard >= threshold, then it is inserted; union-find keeps the first document
of each cluster. With --exact, the exact Jaccard of each dropped document with its kept
one is computed for both tools.
"""

import argparse
import gzip
import json
import re
import sys
import time
import unicodedata

from datasketch import MinHash, MinHashLSH


def is_cjk(c):
    o = ord(c)
    return (0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0x3400 <= o <= 0x4DBF
            or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2EBEF
            or 0x2F800 <= o <= 0x2FA1F or 0x30000 <= o <= 0x323AF)


LINE_BREAKS = "\n\r\x0b\x0c\x85\u2028\u2029"


def normalize(text):
    """shoal's NormalizeConfig::default(): NFKC, then whitespace folded."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\u200b", "").replace("\ufeff", "")
    text = "".join(c for c in text if c in LINE_BREAKS or c == "\t" or unicodedata.category(c) != "Cc")
    lines = [" ".join(line.split()) for line in re.split("[" + LINE_BREAKS + "]", text)]
    out, blank = [], 0
    for line in lines:
        if not line:
            blank += 1
            continue
        if out:
            out.append("\n\n" if blank > 1 else "\n")
        out.append(line)
        blank = 0
    return "".join(out)


def non_text_ratio(text):
    chars = [c for c in text if not c.isspace()]
    return 1.0 if not chars else sum(not c.isalnum() for c in chars) / len(chars)


def shingles(text, n, cjk_share=0.3):
    chars = [c for c in text if not c.isspace()]
    folded = " ".join(w.lower() for w in text.split())
    if chars and sum(map(is_cjk, chars)) > cjk_share * len(chars):
        units = list(folded)
        join = ""
    else:
        units = folded.split(" ") if folded else []
        join = " "
    if len(units) <= n:
        return {folded.encode()}
    return {join.join(units[i:i + n]).encode() for i in range(len(units) - n + 1)}


def read(domains):
    """Yields (domain, file, line, text) in input order."""
    for name, paths in domains:
        for path in paths:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8", errors="strict") as f:
                if ".jsonl" not in path:
                    yield name, path, 1, f.read()
                    continue
                for i, line in enumerate(f, 1):
                    if line.strip():
                        yield name, path, i, json.loads(line)["text"]


class UnionFind:
    def __init__(self):
        self.parent = []

    def add(self):
        self.parent.append(len(self.parent))

    def find(self, x):
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x, y):
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            lo, hi = min(rx, ry), max(rx, ry)
            self.parent[hi] = lo


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domain", action="append", required=True, help="NAME=PATH[,PATH...]")
    ap.add_argument("--shoal-out", help="shoal's output directory, to compare with")
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--permutations", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--bands", type=int, default=16, help="0: datasketch's own optimum")
    ap.add_argument("--min-chars", type=int, default=20)
    ap.add_argument("--max-non-text", type=float, default=0.5)
    ap.add_argument("--exact", action="store_true", help="exact Jaccard of each dropped pair")
    ap.add_argument("--seed", type=int, default=1, help="datasketch's permutation seed")
    ap.add_argument("--save", help="write datasketch's near duplicates here (JSONL, shoal's layout)")
    ap.add_argument("--compare", help="a --save file of another run, to compare with instead of shoal")
    a = ap.parse_args()
    domains = [(d.split("=", 1)[0], d.split("=", 1)[1].split(",")) for d in a.domain]
    params = (a.bands, a.permutations // a.bands) if a.bands else None
    lsh = MinHashLSH(threshold=a.threshold, num_perm=a.permutations, params=params)
    print(f"datasketch banding: {lsh.b} bands x {lsh.r} rows")

    t0 = time.perf_counter()
    docs, texts, seen, n_bytes = [], [], set(), 0
    for name, path, line, text in read(domains):
        n_bytes += len(text.encode())
        norm = normalize(text)
        if len(norm) < a.min_chars or non_text_ratio(norm) > a.max_non_text or norm in seen:
            continue
        seen.add(norm)
        docs.append((name, path, line))
        texts.append(norm)
    t1 = time.perf_counter()
    sets = [shingles(t, a.ngram) for t in texts]
    t2 = time.perf_counter()
    sketches = list(MinHash.generator(sets, num_perm=a.permutations, seed=a.seed))
    t3 = time.perf_counter()
    uf = UnionFind()
    needed = a.threshold
    for i, m in enumerate(sketches):
        uf.add()
        for j in lsh.query(m):
            if sketches[j].jaccard(m) >= needed:
                uf.union(i, j)
        lsh.insert(i, m, check_duplication=False)
    t4 = time.perf_counter()
    dropped = {docs[i]: docs[uf.find(i)] for i in range(len(docs)) if uf.find(i) != i}
    total = t4 - t0
    print(f"{len(docs)} unique documents after filters and exact dedup, {n_bytes / 1e6:.1f} MB of text")
    print(f"datasketch: {len(dropped)} near duplicates")
    print(f"time: read+normalize+filter+exact {t1 - t0:.2f} s, shingles {t2 - t1:.2f} s, "
          f"MinHash {t3 - t2:.2f} s, LSH query+verify+insert {t4 - t3:.2f} s; "
          f"total {total:.2f} s ({n_bytes / 1e6 / total:.2f} MB/s)")
    if a.save:
        with open(a.save, "w", encoding="utf-8") as f:
            for (d, p, n), (kd, kp, kn) in dropped.items():
                kept = {"domain": kd, "file": kp, "line": kn}
                f.write(json.dumps({"domain": d, "file": p, "line": n, "reason": "near", "kept": kept}) + "\n")
    other = a.compare or (a.shoal_out and f"{a.shoal_out}/dropped.jsonl")
    if not other:
        return
    label = "other run" if a.compare else "shoal"
    shoal = {}
    with open(other, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["reason"] == "near":
                k = r["kept"]
                shoal[(r["domain"], r["file"], r["line"])] = (k["domain"], k["file"], k["line"])
    both = set(shoal) & set(dropped)
    union = set(shoal) | set(dropped)
    print(f"{label}: {len(shoal)} near duplicates; both {len(both)}, only {label} {len(set(shoal) - both)}, "
          f"only datasketch {len(set(dropped) - both)}; overlap (Jaccard of the sets) "
          f"{len(both) / max(1, len(union)):.3f}")
    same_kept = sum(shoal[k] == dropped[k] for k in both)
    print(f"same kept document for {same_kept} of the {len(both)} in both")
    if a.exact:
        index = {d: i for i, d in enumerate(docs)}
        for tool, found in ((label, shoal), ("datasketch", dropped)):
            js = []
            for d, k in found.items():
                x, y = sets[index[d]], sets[index[k]]
                js.append(len(x & y) / len(x | y))
            above = sum(j >= a.threshold for j in js)
            print(f"{tool}: exact Jaccard with the kept document >= {a.threshold}: {above} of {len(js)}"
                  f" (min {min(js, default=0):.3f})")
        for tool, only in ((label, set(shoal) - both), ("datasketch", set(dropped) - both)):
            src = shoal if tool == label else dropped
            js = sorted(round(len(sets[index[d]] & sets[index[src[d]]]) / len(sets[index[d]] | sets[index[src[d]]]), 3)
                        for d in only)
            print(f"only {tool}: exact Jaccard with its kept document {js}")


if __name__ == "__main__":
    sys.exit(main())
