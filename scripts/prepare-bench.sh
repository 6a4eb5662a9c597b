#!/usr/bin/env bash
# Throughput of `shoal data prepare` (MB/s of input text, with exact and MinHash dedup)
# and its peak memory, on the shared corpus and on a larger one made by repeating and
# perturbing it, at 1 and 2 threads; then the datasketch peer on the same inputs.
#
#   scripts/prepare-bench.sh                 # builds release if needed, 200 MB of text in /tmp
#   TARGET_MB=400 PEER_LARGE=0 scripts/prepare-bench.sh
#
# Environment: CORPUS (the shared corpus, default ../shared/data/corpus), WORK (scratch,
# default /tmp/shoal-prepare-bench), TARGET_MB (large corpus: MB of text, default 200),
# BIN (default target/release/shoal), PEER (python with datasketch, default
# /tmp/ds-venv/bin/python; skipped when missing), PEER_LARGE (1: also run the peer on
# the large corpus, default 1).
#
# The large corpus: copy 0 is the shared corpus; every later copy takes each document
# and, with probability 1/3 each, keeps it as it is (an exact duplicate), changes 1% of
# its units (characters for Chinese, words for English: a near duplicate, Jaccard ~0.9),
# or changes 30% of them (a new document, Jaccard ~0.03 with anything). Seeded: the same
# bytes on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${CORPUS:-../shared/data/corpus}
WORK=${WORK:-/tmp/shoal-prepare-bench}
TARGET_MB=${TARGET_MB:-200}
BIN=${BIN:-target/release/shoal}
PEER=${PEER:-/tmp/ds-venv/bin/python}
PEER_LARGE=${PEER_LARGE:-1}
DOMAINS=(en_drama zh_tang zh_songci zh_classics)

[ -x "$BIN" ] || cargo build --release
mkdir -p "$WORK/large"

if [ ! -f "$WORK/large/.done-$TARGET_MB" ]; then
  echo "building the large corpus (${TARGET_MB} MB) in $WORK/large ..." >&2
  python3 - "$CORPUS" "$WORK/large" "$TARGET_MB" "${DOMAINS[@]}" <<'EOF'
import json, math, os, random, sys
src, dst, target_mb, domains = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
corpus = {d: [json.loads(line) for line in open(f"{src}/{d}.jsonl", encoding="utf-8")] for d in domains}
text_bytes = sum(len(r["text"].encode()) for records in corpus.values() for r in records)
copies = math.ceil(target_mb * 1e6 / text_bytes)
rng = random.Random(0)

def is_cjk(c):
    o = ord(c)
    return 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF

def perturb(text, rate):
    chars = [c for c in text if not c.isspace()]
    cjk = sum(map(is_cjk, chars)) > 0.3 * max(1, len(chars))
    units = list(text) if cjk else text.split(" ")
    pool = [u for u in units if u.strip()] or units
    for i in rng.sample(range(len(units)), max(1, round(rate * len(units)))):
        if units[i].strip():
            units[i] = rng.choice(pool)
    return ("" if cjk else " ").join(units)

for d in domains:
    records = corpus[d]
    with open(f"{dst}/{d}.jsonl", "w", encoding="utf-8") as f:
        for k in range(copies):
            for r in records:
                text, roll = r["text"], rng.random()
                if k > 0 and roll >= 1 / 3:
                    text = perturb(text, 0.01 if roll < 2 / 3 else 0.3)
                meta = dict(r.get("meta") or {}, copy=k)
                f.write(json.dumps({"text": text, "meta": meta}, ensure_ascii=False) + "\n")
print(f"{copies} copies", file=sys.stderr)
EOF
  touch "$WORK/large/.done-$TARGET_MB"
fi

domain_args() {
  for d in "${DOMAINS[@]}"; do printf -- '--domain %s=%s/%s.jsonl ' "$d" "$1" "$d"; done
}

# Runs prepare; prints one table row.
run() { # corpus-name dir threads
  local out="$WORK/out-$1-$3" log="$WORK/time-$1-$3.txt"
  # shellcheck disable=SC2046
  /usr/bin/time -v "$BIN" data prepare $(domain_args "$2") --out "$out" --threads "$3" \
    >"$WORK/stdout-$1-$3.txt" 2>"$log"
  python3 - "$1" "$3" "$out/report.json" "$log" <<'EOF'
import json, re, sys
name, threads, report, log = sys.argv[1:]
r = json.load(open(report))
t = {k: sum(d[k] for d in r["domains"]) for k in ("docs_in", "bytes_in", "kept_docs")}
exact = sum(d["exact_dups"]["docs"] for d in r["domains"])
near = sum(d["near_dups"]["docs"] for d in r["domains"])
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(log).read()).group(1))
s = r["timings"]
print(f"| {name} | {t['bytes_in']/1e6:.1f} | {t['docs_in']} | {threads} | {s['total_s']:.2f} "
      f"| {t['bytes_in']/1e6/s['total_s']:.1f} | {s['read_and_sign_s']:.2f} / {s['cluster_s']:.2f} / {s['write_s']:.2f} "
      f"| {rss/1024:.0f} | {r['signature_bytes']/2**20:.0f} | {exact} | {near} | {t['kept_docs']} |")
EOF
}

echo "| corpus | MB text | docs | threads | wall s | MB/s | read+sign / cluster / write s | peak RSS MiB | signatures MiB | exact dups | near dups | kept |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
for threads in 1 2; do run shared "$CORPUS" "$threads"; done
for threads in 1 2; do run large "$WORK/large" "$threads"; done

if [ -x "$PEER" ]; then
  peer() { # corpus-name dir
    # shellcheck disable=SC2046
    /usr/bin/time -v "$PEER" scripts/datasketch_peer.py $(domain_args "$2") \
      --shoal-out "$WORK/out-$1-1" ${3:-} 2>"$WORK/time-peer-$1.txt" | tee "$WORK/peer-$1.txt"
    grep -E "Maximum resident|Elapsed" "$WORK/time-peer-$1.txt"
  }
  echo; echo "datasketch peer, shared corpus:"; peer shared "$CORPUS" --exact
  if [ "$PEER_LARGE" = 1 ]; then echo; echo "datasketch peer, large corpus:"; peer large "$WORK/large"; fi
else
  echo "no datasketch python at $PEER: skipping the peer (python3 -m venv /tmp/ds-venv && /tmp/ds-venv/bin/pip install datasketch)" >&2
fi
