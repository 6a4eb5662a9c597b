//! The inputs of tokenizer training and tokenization: a prepared corpus (the output of
//! `shoal data prepare`: `DOMAIN.jsonl` per domain and `report.json`, written last) or plain
//! input files (`.jsonl`, `.txt`, either gzip-compressed).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::Deserialize;

use crate::error::DataError;
use crate::prepare::REPORT_FILE;
use crate::prepare::read::{Format, InputFile};
use crate::text::read_documents_streaming;

/// Bytes buffered when reading a compressed input.
const READ_BUFFER: usize = 1 << 18;

/// The part of `report.json` read here: the domains, in order.
#[derive(Deserialize)]
struct Report {
    domains: Vec<ReportDomain>,
}

/// One domain of `report.json`.
#[derive(Deserialize)]
struct ReportDomain {
    domain: String,
}

/// A prepared corpus and the domains chosen from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedCorpus {
    /// The directory `shoal data prepare` wrote.
    pub dir: PathBuf,
    /// The chosen domains, in order; each has `dir/NAME.jsonl`.
    pub domains: Vec<String>,
}

impl PreparedCorpus {
    /// Opens the prepared corpus in `dir` with the domains in `only` (in that order, repeats
    /// ignored), or all of its domains in the order of `report.json` when `only` is empty.
    /// Fails when `dir` has no `report.json` (not prepared, or preparation did not finish),
    /// when a name in `only` is not one of its domains, or a domain's file is missing.
    pub fn open(dir: &Path, only: &[String]) -> Result<Self, DataError> {
        let not_prepared = |reason: String| DataError::NotPreparedCorpus {
            dir: dir.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(not_prepared("no such directory".to_string()));
        }
        let report_path = dir.join(REPORT_FILE);
        let bytes = std::fs::read(&report_path).map_err(|e| {
            not_prepared(format!(
                "cannot read {REPORT_FILE} ({e}); run `shoal data prepare` first"
            ))
        })?;
        let report: Report = serde_json::from_slice(&bytes)
            .map_err(|e| not_prepared(format!("{REPORT_FILE} has no domain list: {e}")))?;
        let all: Vec<String> = report.domains.into_iter().map(|d| d.domain).collect();
        let domains = if only.is_empty() {
            all.clone()
        } else {
            let mut chosen: Vec<String> = Vec::new();
            for name in only {
                if !all.contains(name) {
                    return Err(DataError::CorpusDomain {
                        dir: dir.to_path_buf(),
                        name: name.clone(),
                        known: all.join(", "),
                    });
                }
                if !chosen.contains(name) {
                    chosen.push(name.clone());
                }
            }
            chosen
        };
        if domains.is_empty() {
            return Err(not_prepared(format!("{REPORT_FILE} lists no domain")));
        }
        let corpus = PreparedCorpus {
            dir: dir.to_path_buf(),
            domains,
        };
        for name in &corpus.domains {
            let path = corpus.domain_file(name);
            if !path.is_file() {
                return Err(not_prepared(format!(
                    "{REPORT_FILE} lists domain {name:?} but {} is missing",
                    path.display()
                )));
            }
        }
        Ok(corpus)
    }

    /// `dir/NAME.jsonl`, the kept documents of domain `name`.
    pub fn domain_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.jsonl"))
    }

    /// The chosen domains' files, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.domains.iter().map(|d| self.domain_file(d)).collect()
    }
}

/// Hands each document of `path` to `f`, in order: the `text` of every non-blank line of a
/// `.jsonl` file, or the whole of any other file, either gzip-compressed (`.gz`).
pub fn for_each_document(
    path: &Path,
    mut f: impl FnMut(String) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let input = InputFile::new(path.to_path_buf());
    if !input.gzip {
        return read_documents_streaming(path, f);
    }
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::with_capacity(
        READ_BUFFER,
        MultiGzDecoder::new(BufReader::with_capacity(READ_BUFFER, file)),
    );
    match input.format {
        Format::Text => {
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .map_err(|e| DataError::io(path, e))?;
            let text = String::from_utf8(bytes).map_err(|_| DataError::NotUtf8 {
                path: path.to_path_buf(),
                line: 1,
            })?;
            f(text)
        }
        Format::Jsonl => {
            let mut line = 0usize;
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = reader
                    .read_until(b'\n', &mut buf)
                    .map_err(|e| DataError::io(path, e))?;
                if n == 0 {
                    return Ok(());
                }
                line += 1;
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                f(jsonl_text(path, line, &buf)?)?;
            }
        }
    }
}

/// The `text` field of one JSONL line.
fn jsonl_text(path: &Path, line: usize, bytes: &[u8]) -> Result<String, DataError> {
    /// The one field read; others are ignored.
    #[derive(Deserialize)]
    struct Record {
        text: String,
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DataError::NotUtf8 {
        path: path.to_path_buf(),
        line,
    })?;
    serde_json::from_str::<Record>(text)
        .map(|r| r.text)
        .map_err(|e| DataError::Record {
            path: path.to_path_buf(),
            line,
            reason: format!("not an object with a string `text` field: {e}"),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    /// A prepared corpus with domains `a` (2 documents) and `b` (1).
    pub(crate) fn fake_corpus(dir: &Path) {
        std::fs::write(
            dir.join("a.jsonl"),
            "{\"text\": \"alpha one\", \"meta\": {}}\n{\"text\": \"alpha two\"}\n",
        )
        .expect("write");
        std::fs::write(dir.join("b.jsonl"), "{\"text\": \"beta\"}\n").expect("write");
        std::fs::write(
            dir.join(REPORT_FILE),
            r#"{"domains": [{"domain": "a", "kept_docs": 2}, {"domain": "b"}], "files": []}"#,
        )
        .expect("write");
    }

    #[test]
    fn opens_all_or_chosen_domains() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_corpus(dir.path());
        let all = PreparedCorpus::open(dir.path(), &[]).expect("open");
        assert_eq!(all.domains, vec!["a", "b"]);
        assert_eq!(all.files()[1], dir.path().join("b.jsonl"));
        let chosen = ["b".to_string(), "a".to_string(), "b".to_string()];
        let some = PreparedCorpus::open(dir.path(), &chosen).expect("open");
        assert_eq!(some.domains, vec!["b", "a"]);

        let err = PreparedCorpus::open(dir.path(), &["c".to_string()]).expect_err("unknown");
        assert!(
            matches!(&err, DataError::CorpusDomain { name, known, .. } if name == "c" && known == "a, b"),
            "{err}"
        );
    }

    #[test]
    fn missing_corpus_report_or_domain_file_is_clear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = PreparedCorpus::open(&missing, &[]).expect_err("missing dir");
        assert!(matches!(&err, DataError::NotPreparedCorpus { dir, .. } if dir == &missing));
        assert!(err.to_string().contains("no such directory"), "{err}");

        let err = PreparedCorpus::open(dir.path(), &[]).expect_err("no report");
        assert!(err.to_string().contains("shoal data prepare"), "{err}");

        fake_corpus(dir.path());
        std::fs::remove_file(dir.path().join("b.jsonl")).expect("remove");
        let err = PreparedCorpus::open(dir.path(), &[]).expect_err("no b.jsonl");
        assert!(err.to_string().contains("b.jsonl is missing"), "{err}");
        PreparedCorpus::open(dir.path(), &["a".to_string()]).expect("a alone is fine");
    }

    #[test]
    fn reads_plain_and_gzip_inputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gz = |name: &str, body: &[u8]| {
            let path = dir.path().join(name);
            let mut e = GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(body).expect("gzip");
            std::fs::write(&path, e.finish().expect("gzip")).expect("write");
            path
        };
        let read = |path: &Path| {
            let mut docs = Vec::new();
            for_each_document(path, |d| {
                docs.push(d);
                Ok(())
            })
            .map(|()| docs)
        };
        let jsonl = gz(
            "a.jsonl.gz",
            b"{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n",
        );
        assert_eq!(read(&jsonl).expect("read"), vec!["one", "two"]);
        let txt = gz("b.txt.gz", "whole\nfile 文".as_bytes());
        assert_eq!(read(&txt).expect("read"), vec!["whole\nfile 文"]);
        let plain = dir.path().join("c.jsonl");
        std::fs::write(&plain, "{\"text\": \"three\"}\n").expect("write");
        assert_eq!(read(&plain).expect("read"), vec!["three"]);

        let bad = gz("d.jsonl.gz", b"{\"text\": \"ok\"}\n{\"txt\": 1}\n");
        let err = read(&bad).expect_err("bad record");
        assert!(matches!(&err, DataError::Record { line: 2, .. }), "{err}");
        let not_utf8 = gz("e.jsonl.gz", b"{\"text\": \"\xff\"}\n");
        let err = read(&not_utf8).expect_err("not utf8");
        assert!(matches!(&err, DataError::NotUtf8 { line: 1, .. }), "{err}");
    }
}
