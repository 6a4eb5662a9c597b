//! `shoal data prepare` end to end: on the shared corpus (its known duplicates are found,
//! nothing is removed from the domains without any), identical outputs on 1 and 2 threads,
//! and bad input counted (or, with `--strict`, fatal) without a panic.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

mod common;

use common::{assert_fails, assert_ok, shoal, stdout};
use serde_json::Value;

/// The shared corpus, or `None` (with a message) where it is absent.
fn corpus() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/corpus"
    ));
    if dir.join("zh_tang.jsonl").is_file() {
        Some(dir)
    } else {
        eprintln!("skipping: the shared corpus is not at {}", dir.display());
        None
    }
}

/// The shingle set of line `line` of the corpus file of `domain`, as shoal makes it.
fn shingle_set(corpus: &Path, domain: &str, line: u64) -> HashSet<String> {
    use shoal_data::prepare::minhash::{ShingleKind, fold_for_shingles, for_each_shingle};
    use shoal_data::prepare::normalize::{NormalizeConfig, normalize};
    let path = corpus.join(format!("{domain}.jsonl"));
    let file = std::fs::read_to_string(path).expect("corpus file");
    let record: Value = file
        .lines()
        .nth(line as usize - 1)
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("corpus line");
    let text = normalize(
        record["text"].as_str().expect("text"),
        NormalizeConfig::default(),
    );
    let mut folded = String::new();
    fold_for_shingles(&text, &mut folded);
    let mut set = HashSet::new();
    let kind = ShingleKind::of(&text, 0.3);
    for_each_shingle(&folded, kind, 5, &mut Vec::new(), |s| {
        set.insert(s.to_string());
    });
    set
}

/// Exact Jaccard similarity of the shingle sets of two documents named as in
/// `dropped.jsonl` (`{"domain", "line", ...}`).
fn exact_jaccard(corpus: &Path, a: &Value, b: &Value) -> f64 {
    let set = |v: &Value| {
        let domain = v["domain"].as_str().expect("domain");
        shingle_set(corpus, domain, v["line"].as_u64().expect("line"))
    };
    let (x, y) = (set(a), set(b));
    x.intersection(&y).count() as f64 / x.union(&y).count() as f64
}

fn report(out: &Path) -> Value {
    let bytes = std::fs::read(out.join("report.json")).expect("report.json");
    serde_json::from_slice(&bytes).expect("report is JSON")
}

fn prepare(corpus: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let c = corpus.display();
    let domains = [
        format!("en_drama={c}/en_drama.jsonl"),
        // A glob, to go through the expansion.
        format!("zh_tang={c}/zh_t*.jsonl"),
        format!("zh_songci={c}/zh_songci.jsonl"),
        format!("zh_classics={c}/zh_classics.jsonl"),
    ];
    let out = out.display().to_string();
    let mut args = vec!["data", "prepare", "--out", out.as_str()];
    for d in &domains {
        args.extend(["--domain", d.as_str()]);
    }
    args.extend(extra);
    shoal(&args, Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// The README's exact-Jaccard table (character 5-grams for Chinese, whole text) says a
/// dedup at 0.8 drops 99 zh_tang and 6 zh_songci documents, 4 and 2 of them exact copies.
/// MinHash with 128 permutations estimates J with a standard deviation of ~0.035 near 0.8,
/// so pairs within ~0.05 of the threshold can land on either side. zh_tang has 54 pairs in
/// [0.75, 0.8) and 32 in [0.8, 0.85): about 11 of the first come in and 8 of the second
/// drop out on average, with a spread of about 4 documents; 90..=110 is 99 ± 2.5 of
/// those. zh_songci's pairs near 0.8 are at 0.756, 0.78, 0.781 (below) and 0.814, 0.868
/// (above): 6 plus up to three below gives 5..=9. Every near duplicate's exact Jaccard with
/// the document it was matched to is checked to be at least 0.7 (3 deviations below).
#[test]
fn shared_corpus_known_duplicates() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut runs = Vec::new();
    for threads in ["1", "2"] {
        let out = tmp.path().join(format!("out{threads}"));
        let o = prepare(&corpus, &out, &["--threads", threads]);
        assert_ok(&o);
        let printed = stdout(&o);
        assert!(
            printed.contains("| domain | docs in | bytes in |"),
            "{printed}"
        );
        assert!(printed.contains("MB/s"), "{printed}");
        runs.push(out);
    }
    let r = report(&runs[0]);
    let domain = |name: &str| -> Value {
        r["domains"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["domain"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no domain {name} in {r}"))
    };
    let docs = |d: &Value, step: &str| d[step]["docs"].as_u64().expect("count");
    for name in ["en_drama", "zh_classics"] {
        let d = domain(name);
        for step in ["too_short", "non_text", "exact_dups", "near_dups"] {
            assert_eq!(docs(&d, step), 0, "{name} lost documents to {step}");
        }
        assert_eq!(d["kept_docs"], d["docs_in"], "{name}");
    }
    let (tang, songci) = (domain("zh_tang"), domain("zh_songci"));
    assert_eq!(tang["docs_in"], 6003);
    assert_eq!(songci["docs_in"], 2003);
    assert_eq!(docs(&tang, "exact_dups"), 4);
    assert_eq!(docs(&songci, "exact_dups"), 2);
    let tang_dups = docs(&tang, "exact_dups") + docs(&tang, "near_dups");
    let songci_dups = docs(&songci, "exact_dups") + docs(&songci, "near_dups");
    assert!(
        (90..=110).contains(&tang_dups),
        "zh_tang duplicates: {tang_dups}"
    );
    assert!(
        (5..=9).contains(&songci_dups),
        "zh_songci duplicates: {songci_dups}"
    );
    // Chinese is shingled by characters, English by words.
    assert_eq!(domain("en_drama")["char_shingled"], 0);
    assert!(tang["char_shingled"].as_u64() > Some(5800));

    // Every near duplicate names a kept document of the same corpus and its similarity.
    let dropped = std::fs::read_to_string(runs[0].join("dropped.jsonl")).expect("dropped");
    let near: Vec<Value> = dropped
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter(|v| v["reason"] == "near")
        .collect();
    assert_eq!(
        near.len() as u64,
        docs(&tang, "near_dups") + docs(&songci, "near_dups")
    );
    for v in &near {
        assert!(v["kept"]["line"].as_u64() < v["line"].as_u64(), "{v}");
        assert!(v["jaccard"].as_f64().is_some_and(|j| j > 0.5), "{v}");
        let other = if v["matched"].is_object() {
            &v["matched"]
        } else {
            &v["kept"]
        };
        let exact = exact_jaccard(&corpus, v, other);
        assert!(exact >= 0.7, "exact Jaccard {exact} for {v}");
    }
    let kept = std::fs::read_to_string(runs[0].join("zh_tang.jsonl")).expect("kept");
    assert_eq!(
        kept.lines().count() as u64,
        tang["kept_docs"].as_u64().expect("kept")
    );

    // Same outputs on one thread and on two.
    for name in ["zh_tang.jsonl", "en_drama.jsonl", "dropped.jsonl"] {
        let a = std::fs::read(runs[0].join(name)).expect("read");
        let b = std::fs::read(runs[1].join(name)).expect("read");
        assert!(a == b, "{name} differs between 1 and 2 threads");
    }
}

#[test]
fn bad_input_is_counted_or_fatal_with_strict() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        b"{\"text\": \"a document that is long enough to keep\"}\n{\"text\": \"\xff\"}\n{broken\n",
    )
    .expect("write");
    let corrupt = tmp.path().join("in.txt.gz");
    std::fs::write(&corrupt, b"\x1f\x8b\x08\x00 not really gzip").expect("write");
    let spec = format!("d={},{}", input.display(), corrupt.display());
    let out = tmp.path().join("out").display().to_string();
    let args = [
        "data",
        "prepare",
        "--domain",
        spec.as_str(),
        "--out",
        out.as_str(),
    ];
    let o = shoal(&args, tmp.path());
    assert_ok(&o);
    let printed = stdout(&o);
    assert!(
        printed.contains("1 invalid_utf8, 1 invalid_json (lines 2, 3)"),
        "{printed}"
    );
    assert!(printed.contains("1 corrupt_gzip (lines 1)"), "{printed}");
    let problems = std::fs::read_to_string(tmp.path().join("out/problems.jsonl")).expect("read");
    assert_eq!(problems.lines().count(), 3);

    let mut strict = args.to_vec();
    strict.push("--strict");
    let o = shoal(&strict, tmp.path());
    assert_fails(&o, &["strict mode", "in.jsonl:2: invalid_utf8"]);

    let missing = [
        "data",
        "prepare",
        "--domain",
        "d=/no/such/*.jsonl",
        "--out",
        out.as_str(),
    ];
    assert_fails(&shoal(&missing, tmp.path()), &["matched no file"]);
}
