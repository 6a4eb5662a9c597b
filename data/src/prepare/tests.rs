//! `prepare` end to end on small files written here.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;

use super::*;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn line(text: &str) -> String {
    serde_json::json!({"text": text, "meta": {"source": "test"}}).to_string() + "\n"
}

/// A paragraph of `words` distinct words, different for each `seed`.
fn paragraph(seed: usize, words: usize) -> String {
    (0..words)
        .map(|i| format!("w{}", (seed * 1_000_003 + i * 7919) % 1_000_000))
        .collect::<Vec<_>>()
        .join(" ")
}

fn config(dir: &Path, domains: Vec<(&str, Vec<PathBuf>)>) -> PrepareConfig {
    let domains = domains
        .into_iter()
        .map(|(name, files)| DomainInput {
            name: name.to_string(),
            files,
        })
        .collect();
    let mut config = PrepareConfig::new(domains, dir.join("out"));
    config.threads = 2;
    config
}

#[test]
fn every_bad_input_kind_is_reported_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut bad = line(&paragraph(1, 50)).into_bytes();
    bad.extend(b"{\"text\": \"bad \xff byte\"}\n"); // line 2
    bad.extend(b"\n"); // line 3: blank, skipped
    bad.extend(b"{\"text\": \"unterminated\n"); // line 4
    bad.extend(b"{\"body\": \"no text field\"}\n"); // line 5
    bad.extend(line(&paragraph(2, 50)).as_bytes()); // line 6
    let bad = write(d, "bad.jsonl", &bad);
    let empty = write(d, "empty.jsonl", b"");
    let mut many = String::new();
    for i in 0..3000 {
        many.push_str(&line(&paragraph(100 + i, 30)));
    }
    let good_gz = gzip(many.as_bytes());
    let cut = write(d, "cut.jsonl.gz", &good_gz[..good_gz.len() / 2]);
    let text = write(
        d,
        "notes.txt",
        b"a fine text document\nwith two lines and \xc3\x28 a bad byte\n",
    );
    let config = config(
        d,
        vec![(
            "a",
            vec![bad.clone(), empty.clone(), cut.clone(), text.clone()],
        )],
    );
    let report = prepare(&config).expect("prepare");

    let problems = jsonl(&config.out_dir.join(PROBLEMS_FILE));
    let found: Vec<(String, Value, String)> = problems
        .iter()
        .map(|p| {
            (
                p["file"].as_str().unwrap_or("").to_string(),
                p["line"].clone(),
                p["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let s = |p: &Path| p.display().to_string();
    assert_eq!(found[0], (s(&bad), 2.into(), "invalid_utf8".to_string()));
    assert_eq!(found[1], (s(&bad), 4.into(), "invalid_json".to_string()));
    assert_eq!(found[2], (s(&bad), 5.into(), "missing_text".to_string()));
    assert_eq!(found[3], (s(&empty), Value::Null, "empty_file".to_string()));
    assert_eq!(found[4].0, s(&cut));
    assert_eq!(found[4].2, "corrupt_gzip");
    assert_eq!(found[5], (s(&text), 2.into(), "invalid_utf8".to_string()));
    assert_eq!(found.len(), 6);

    // The corrupt stream's problem line is right after its last document read.
    let cut_report = &report.files[2];
    assert_eq!(found[4].1, Value::from(cut_report.docs + 1));
    assert!(cut_report.docs > 100 && cut_report.docs < 3000);
    assert_eq!(report.files[0].problem_lines, vec![2, 4, 5]);
    assert_eq!(report.files[0].docs, 2);
    assert_eq!(report.domains[0].problems, 6);
    assert_eq!(report.domains[0].docs_in, 2 + cut_report.docs);
}

#[test]
fn strict_stops_at_the_first_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let good = write(d, "good.jsonl", line(&paragraph(1, 40)).as_bytes());
    let mut bad = line(&paragraph(2, 40));
    bad.push_str(&line(&paragraph(3, 40)));
    bad.push_str("{\"text\": 5}\n{oops\n");
    let bad = write(d, "bad.jsonl", bad.as_bytes());
    let mut config = config(d, vec![("a", vec![good]), ("b", vec![bad.clone()])]);
    config.strict = true;
    let err = prepare(&config).expect_err("strict");
    match &err {
        PrepareError::Strict { problem } => {
            assert_eq!(problem.file, bad);
            assert_eq!(problem.line, Some(3));
            assert_eq!(problem.kind, ProblemKind::MissingText);
            assert_eq!(problem.domain, "b");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string().contains("bad.jsonl:3: missing_text"),
        "{err}"
    );
    // No report, no temporaries left behind.
    let out = &config.out_dir;
    assert!(!out.join(REPORT_FILE).exists());
    let leftovers = std::fs::read_dir(out)
        .expect("out")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0);
    // An empty file stops a strict run too.
    let empty = write(d, "empty.txt", b"");
    config.domains = vec![DomainInput {
        name: "e".into(),
        files: vec![empty],
    }];
    let err = prepare(&config).expect_err("strict empty");
    assert!(
        matches!(&err, PrepareError::Strict { problem } if problem.kind == ProblemKind::EmptyFile)
    );
}

#[test]
fn dedup_is_global_keeps_the_first_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let original = paragraph(7, 200);
    // Near copy: 2 of 200 words changed (word 5-gram Jaccard 186/206 = 0.90).
    let mut words: Vec<String> = original.split(' ').map(String::from).collect();
    for k in [50, 150] {
        words[k] = "changed".to_string();
    }
    let near = words.join(" ");
    let poem = "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。";
    let poem_near = "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多多。";
    let mut a = line(&original);
    a.push_str(&line(&paragraph(8, 200)));
    a.push_str(&line("too short"));
    a.push_str(&line("!!!! ???? .... ,,,, ;;;; ---- 1"));
    a.push_str(&line(poem));
    let a = write(d, "a.jsonl", a.as_bytes());
    let mut b = line(&format!("  {}  ", original.replace(' ', "  "))); // exact after normalization
    b.push_str(&line(&near));
    b.push_str(&line(poem_near));
    b.push_str(&line(&paragraph(9, 200)));
    let b = write(d, "b.jsonl.gz", &gzip(b.as_bytes()));
    let c = write(d, "c.txt", paragraph(10, 100).as_bytes());
    let config = config(d, vec![("a", vec![a.clone()]), ("b", vec![b.clone(), c])]);
    let report = prepare(&config).expect("prepare");
    let (ra, rb) = (&report.domains[0], &report.domains[1]);
    assert_eq!((ra.docs_in, ra.too_short.docs, ra.non_text.docs), (5, 1, 1));
    assert_eq!(
        (ra.exact_dups.docs, ra.near_dups.docs, ra.kept_docs),
        (0, 0, 3)
    );
    assert_eq!(
        (
            rb.docs_in,
            rb.exact_dups.docs,
            rb.near_dups.docs,
            rb.kept_docs
        ),
        (5, 1, 2, 2)
    );
    assert_eq!(ra.char_shingled, 1);

    let kept_a = jsonl(&config.out_dir.join("a.jsonl"));
    assert_eq!(kept_a.len(), 3);
    assert_eq!(kept_a[0]["text"], original.as_str());
    assert_eq!(kept_a[0]["meta"]["source"], "test");
    assert_eq!(kept_a[0]["meta"]["line"], 1);
    assert_eq!(kept_a[0]["meta"]["source_file"], a.display().to_string());
    // NFKC: the full-width comma became ','.
    assert!(
        kept_a[2]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("床前明月光,"))
    );
    let kept_b = jsonl(&config.out_dir.join("b.jsonl"));
    assert_eq!(kept_b.len(), 2);
    assert_eq!(kept_b[1]["meta"]["line"], 1);

    let dropped = jsonl(&config.out_dir.join(DROPPED_FILE));
    let reason = |r: &str| {
        dropped
            .iter()
            .filter(|x| x["reason"] == r)
            .collect::<Vec<_>>()
    };
    assert_eq!(reason("too_short")[0]["line"], 3);
    assert_eq!(reason("non_text")[0]["line"], 4);
    let exact = reason("exact");
    assert_eq!(exact[0]["file"], b.display().to_string());
    assert_eq!(exact[0]["kept"]["line"], 1);
    assert_eq!(exact[0]["kept"]["domain"], "a");
    let near = reason("near");
    assert_eq!(near.len(), 2);
    assert_eq!(near[0]["line"], 2);
    assert_eq!(near[0]["kept"]["line"], 1);
    assert_eq!(near[1]["kept"]["line"], 5);
    assert!(
        near.iter()
            .all(|n| n["jaccard"].as_f64().is_some_and(|j| j >= 0.8))
    );
    let json: Value =
        serde_json::from_slice(&std::fs::read(config.out_dir.join(REPORT_FILE)).expect("report"))
            .expect("json");
    assert_eq!(json["domains"][1]["near_dups"]["docs"], 2);
}

#[test]
fn one_thread_and_two_give_the_same_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut text = String::new();
    for i in 0..600 {
        // Every tenth document repeats an earlier one with a word changed.
        let mut p = paragraph(i - i % 10 * usize::from(i % 10 == 9), 60);
        if i % 10 == 9 {
            p.push_str(" tail");
        }
        text.push_str(&line(&p));
    }
    let input = write(d, "x.jsonl", text.as_bytes());
    let mut outputs = Vec::new();
    for threads in [1, 2] {
        let mut config = config(d, vec![("x", vec![input.clone()])]);
        config.threads = threads;
        config.out_dir = d.join(format!("out{threads}"));
        let report = prepare(&config).expect("prepare");
        let read = |name: &str| std::fs::read(config.out_dir.join(name)).expect("read");
        outputs.push((report.domains.clone(), read("x.jsonl"), read(DROPPED_FILE)));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(outputs[0].0[0].near_dups.docs > 0);
}

#[test]
fn bad_configurations_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = write(dir.path(), "x.txt", b"some text");
    let base = config(dir.path(), vec![("x", vec![f.clone()])]);
    let mut cases: Vec<PrepareConfig> = Vec::new();
    for name in ["", "a/b", ".hidden", "dropped"] {
        let mut c = base.clone();
        c.domains[0].name = name.to_string();
        cases.push(c);
    }
    let mut c = base.clone();
    c.domains.push(c.domains[0].clone());
    cases.push(c);
    let mut c = base.clone();
    c.dedup.threshold = 0.0;
    cases.push(c);
    let mut c = base.clone();
    c.dedup.bands = Some(129);
    cases.push(c);
    let mut c = base.clone();
    c.dedup.ngram = 0;
    cases.push(c);
    for c in cases {
        assert!(
            matches!(prepare(&c), Err(PrepareError::Config { .. })),
            "{c:?}"
        );
    }
}

#[test]
fn random_bytes_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut state = 17u64;
    let mut next = || super::minhash::splitmix64(&mut state);
    let mut files = Vec::new();
    for i in 0..24 {
        let len = (next() % 4000) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Some lines that look like records, some newlines, some quotes.
        for _ in 0..len / 50 {
            let at = (next() as usize) % bytes.len().max(1);
            if at < bytes.len() {
                bytes[at] = [b'\n', b'"', b'{', b'}'][(next() % 4) as usize];
            }
        }
        bytes.push(b'\n');
        bytes.extend(line(&paragraph(i, 30)).as_bytes());
        let (name, bytes) = match i % 4 {
            0 => (format!("r{i}.jsonl"), bytes),
            1 => (format!("r{i}.txt"), bytes),
            2 => (format!("r{i}.jsonl.gz"), gzip(&bytes)),
            _ => {
                let mut z = gzip(&bytes);
                let at = (next() as usize) % z.len();
                z[at] ^= 0xFF;
                z.truncate(z.len() - (next() as usize % 8));
                (format!("r{i}.txt.gz"), z)
            }
        };
        files.push(write(d, &name, &bytes));
    }
    let config = config(d, vec![("r", files)]);
    let report = prepare(&config).expect("prepare");
    assert!(report.domains[0].problems > 0);
    assert!(report.domains[0].docs_in > 0);
}
