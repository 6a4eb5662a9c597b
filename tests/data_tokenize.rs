//! `shoal data tokenizer train` and `shoal data tokenize` end to end on a slice of the shared
//! corpus: prepare two domains, train a small BPE, tokenize, then load the manifest with
//! `shoal_data::Manifest` and check its counts, the round trip of documents through the
//! tokenizer, and that the validation split holds whole documents that are not in training.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

mod common;

use common::{assert_fails, assert_ok, shoal, stdout};
use shoal_data::tokenize::{document_hash, validation_split};
use shoal_data::{Manifest, TokenDataset, Tokenizer, read_documents};

/// Lines taken from each corpus file.
const LINES: usize = 200;

/// The shared corpus, or `None` (with a message) where it is absent.
fn corpus() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/corpus"
    ));
    if dir.join("en_drama.jsonl").is_file() {
        Some(dir)
    } else {
        eprintln!("skipping: the shared corpus is not at {}", dir.display());
        None
    }
}

/// Writes the first [`LINES`] lines of `corpus/NAME.jsonl` to `dir/NAME.jsonl`.
fn slice(corpus: &Path, name: &str, dir: &Path) -> String {
    let text = std::fs::read_to_string(corpus.join(format!("{name}.jsonl"))).expect("corpus");
    let head: Vec<&str> = text.lines().take(LINES).collect();
    let path = dir.join(format!("{name}.jsonl"));
    std::fs::write(&path, head.join("\n") + "\n").expect("write slice");
    format!("{name}={}", path.display())
}

/// The documents of a shard, split at the separator token (which ends every document).
fn documents(tokens: &TokenDataset, separator: u32, tokenizer: &Tokenizer) -> Vec<String> {
    let tokens = tokens.to_vec();
    assert!(tokens.is_empty() || tokens.last() == Some(&separator));
    tokens
        .split(|&t| t == separator)
        .take(tokens.iter().filter(|&&t| t == separator).count())
        .map(|doc| tokenizer.decode(doc).expect("decode"))
        .collect()
}

#[test]
fn prepare_train_tokenize_and_load() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let s = |p: PathBuf| p.display().to_string();
    let (prepared, tok, shards) = (
        s(root.join("prepared")),
        s(root.join("tok")),
        s(root.join("shards")),
    );
    let drama = slice(&corpus, "en_drama", root);
    let tang = slice(&corpus, "zh_tang", root);
    let args = [
        "data", "prepare", "--domain", &drama, "--domain", &tang, "--out", &prepared,
    ];
    assert_ok(&shoal(&args, root));

    let vocab = ["--vocab-size", "400"];
    let mut args = vec![
        "data",
        "tokenizer",
        "train",
        "--corpus",
        &prepared,
        "--out",
        &tok,
    ];
    args.extend(vocab);
    std::fs::create_dir(&tok).expect("mkdir");
    let o = shoal(&args, root);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("byte-level BPE of 400 tokens"),
        "{}",
        stdout(&o)
    );
    let tokenizer_file = format!("{tok}/tokenizer.json");

    let args = [
        "data",
        "tokenize",
        "--corpus",
        &prepared,
        "--tokenizer",
        &tokenizer_file,
        "--out",
        &shards,
        "--val-fraction",
        "0.05",
        "--seed",
        "3",
    ];
    let o = shoal(&args, root);
    assert_ok(&o);
    let printed = stdout(&o);
    assert!(
        printed.contains("| domain | docs | val docs | bytes |"),
        "{printed}"
    );
    assert!(printed.contains("| total |"), "{printed}");

    let m = Manifest::load(Path::new(&shards)).expect("manifest");
    assert_eq!((m.vocab_size(), m.seed(), m.val_fraction()), (400, 3, 0.05));
    assert_eq!(m.tokenizer_name(), "tokenizer.json");
    let names: Vec<&str> = m.domains().iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["en_drama", "zh_tang"]);
    let tokenizer = m.tokenizer().expect("tokenizer");
    let separator = tokenizer.document_separator().expect("separator");
    assert_eq!(separator.len(), 1);
    let mixture = m.mixture().expect("mixture");
    let weights = m.natural_weights();
    assert!((weights.iter().map(|w| w.1).sum::<f64>() - 1.0).abs() < 1e-12);

    for ((d, domain), (name, share)) in m.domains().iter().zip(&mixture.domains).zip(&weights) {
        assert_eq!(name, &d.name);
        assert!(*share > 0.0 && *share < 1.0, "{name}: {share}");
        let docs = read_documents(&Path::new(&prepared).join(format!("{}.jsonl", d.name)))
            .expect("prepared documents");
        assert_eq!(d.documents, docs.len() as u64, "{}", d.name);
        assert_eq!(d.bytes, docs.iter().map(|t| t.len() as u64).sum::<u64>());
        assert!(d.val_documents >= 1, "{}", d.name);
        assert_eq!(domain.train.len() as u64, d.train_tokens);
        assert_eq!(domain.val.len() as u64, d.val_tokens);

        // Every document round-trips, and the tokens add up.
        let mut total = 0u64;
        for doc in &docs {
            let ids = tokenizer.encode(doc).expect("encode");
            assert_eq!(&tokenizer.decode(&ids).expect("decode"), doc);
            total += ids.len() as u64 + 1;
        }
        assert_eq!(d.train_tokens + d.val_tokens, total, "{}", d.name);

        // The splits hold whole documents, in corpus order, none in both, as documented.
        let train = documents(&domain.train, separator[0], &tokenizer);
        let val = documents(&domain.val, separator[0], &tokenizer);
        assert_eq!(val.len() as u64, d.val_documents);
        assert_eq!(train.len() + val.len(), docs.len());
        let train_set: HashSet<&String> = train.iter().collect();
        assert!(val.iter().all(|v| !train_set.contains(v)), "{}", d.name);
        let hashes: Vec<u64> = docs.iter().map(|t| document_hash(3, t)).collect();
        let to_val = validation_split(&hashes, 0.05);
        let expected_val: Vec<&String> = docs
            .iter()
            .zip(&to_val)
            .filter(|(_, v)| **v)
            .map(|(t, _)| t)
            .collect();
        assert_eq!(val.iter().collect::<Vec<_>>(), expected_val);
        let expected_train: Vec<&String> = docs
            .iter()
            .zip(&to_val)
            .filter(|(_, v)| !**v)
            .map(|(t, _)| t)
            .collect();
        assert_eq!(train.iter().collect::<Vec<_>>(), expected_train);
    }
    let (mut x, mut y) = (vec![0; 32], vec![0; 32]);
    let d = mixture.sample(0, 0, 32, &mut x, &mut y).expect("sample");
    assert!(d < 2 && x.iter().all(|&t| t < 400));

    // The byte-level tokenizer, one domain.
    let bytes_out = s(root.join("bytes"));
    let args = [
        "data",
        "tokenize",
        "--corpus",
        &prepared,
        "--domain",
        "zh_tang",
        "--tokenizer",
        "bytes",
        "--out",
        &bytes_out,
    ];
    assert_ok(&shoal(&args, root));
    let b = Manifest::load(Path::new(&bytes_out)).expect("bytes manifest");
    assert_eq!((b.tokenizer_name(), b.vocab_size()), ("bytes", 256));
    assert_eq!(b.domains().len(), 1);
    let tang = &m.domains()[1];
    assert_eq!(b.domains()[0].bytes, tang.bytes);
    assert_eq!(
        b.domains()[0].train_tokens + b.domains()[0].val_tokens,
        tang.bytes + 2 * tang.documents
    );
}

#[test]
fn bad_inputs_fail_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let input = root.join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"some text to train on\"}\n").expect("write");
    let input = input.display().to_string();
    let out = root.join("t.json").display().to_string();
    let small = [
        "data",
        "tokenizer",
        "train",
        "--input",
        &input,
        "--vocab-size",
        "100",
        "--out",
        &out,
    ];
    assert_fails(
        &shoal(&small, root),
        &["vocabulary size 100 is too small", "at least 257"],
    );

    let empty = root.join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let empty = empty.display().to_string();
    let train = [
        "data",
        "tokenizer",
        "train",
        "--corpus",
        &empty,
        "--vocab-size",
        "300",
        "--out",
        &out,
    ];
    assert_fails(
        &shoal(&train, root),
        &["not a prepared corpus", "shoal data prepare"],
    );
    let tokenize = [
        "data",
        "tokenize",
        "--corpus",
        &empty,
        "--tokenizer",
        "bytes",
        "--out",
        &out,
    ];
    assert_fails(&shoal(&tokenize, root), &["not a prepared corpus"]);

    // --input trains too.
    let ok = [
        "data",
        "tokenizer",
        "train",
        "--input",
        &input,
        "--vocab-size",
        "260",
        "--out",
        &out,
    ];
    assert_ok(&shoal(&ok, root));
    assert!(Tokenizer::from_file(Path::new(&out)).is_ok());
}
