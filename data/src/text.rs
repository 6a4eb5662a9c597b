//! Reading documents from text files: `.jsonl` (one `{"text": ...}` a line) or plain text.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use crate::error::DataError;

/// The one field of a JSONL record that we read; other fields (`meta`, ...) are ignored.
#[derive(Deserialize)]
struct Record {
    text: String,
}

/// Whether a path names a JSONL file (extension `jsonl`, any case).
fn is_jsonl(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("jsonl"))
}

/// Reads all documents of a file: one per non-empty line of a `.jsonl` file (its `text`
/// field), or the whole file as one document for any other extension.
pub fn read_documents(path: &Path) -> Result<Vec<String>, DataError> {
    let mut documents = Vec::new();
    read_documents_streaming(path, |doc| {
        documents.push(doc);
        Ok(())
    })?;
    Ok(documents)
}

/// Like [`read_documents`], but hands each document to `f` as it is read (line by line for
/// JSONL), so a large corpus need not be held in memory. Stops at the first error.
pub fn read_documents_streaming(
    path: &Path,
    mut f: impl FnMut(String) -> Result<(), DataError>,
) -> Result<(), DataError> {
    if is_jsonl(path) {
        read_jsonl(path, f)
    } else {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        f(utf8(path, bytes, 1)?)
    }
}

/// Reads a JSONL file line by line and calls `f` with each record's text.
fn read_jsonl(
    path: &Path,
    mut f: impl FnMut(String) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let text = utf8(path, std::mem::take(&mut buf), line)?;
        if text.trim().is_empty() {
            continue;
        }
        f(parse_record(path, line, &text)?)?;
    }
}

/// Parses one JSONL line into its `text` field.
fn parse_record(path: &Path, line: usize, text: &str) -> Result<String, DataError> {
    serde_json::from_str::<Record>(text)
        .map(|record| record.text)
        .map_err(|e| {
            let reason = match e.classify() {
                serde_json::error::Category::Data => {
                    format!("not an object with a string `text` field: {e}")
                }
                _ => format!("not valid JSON: {e}"),
            };
            DataError::Record {
                path: path.to_path_buf(),
                line,
                reason,
            }
        })
}

/// Converts bytes to a string; on failure names the line of the first bad byte, counting from
/// `first_line` (the line the bytes start on).
fn utf8(path: &Path, bytes: Vec<u8>, first_line: usize) -> Result<String, DataError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let newlines = valid.iter().filter(|&&b| b == b'\n').count();
        DataError::NotUtf8 {
            path: path.to_path_buf(),
            line: first_line + newlines,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn jsonl_one_document_per_non_empty_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "a.jsonl",
            b"{\"text\": \"first\", \"meta\": {\"x\": 1}}\n\n  \r\n{\"text\": \"se\\ncond\"}\r\n{\"text\":\"\"}",
        );
        let docs = read_documents(&path).expect("read");
        assert_eq!(docs, vec!["first", "se\ncond", ""]);
    }

    #[test]
    fn jsonl_bad_line_names_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "b.jsonl", b"{\"text\": \"ok\"}\n\n{not json\n");
        let err = read_documents(&path).expect_err("bad json");
        match &err {
            DataError::Record { path: p, line, .. } => {
                assert_eq!(p, &path);
                assert_eq!(*line, 3);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("b.jsonl: line 3: not valid JSON"));
    }

    #[test]
    fn jsonl_missing_or_non_string_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, body) in ["{\"txt\": \"x\"}", "{\"text\": 7}", "[1, 2]", "\"text\""]
            .iter()
            .enumerate()
        {
            let path = write(dir.path(), &format!("m{i}.jsonl"), body.as_bytes());
            let err = read_documents(&path).expect_err("missing text");
            assert!(
                matches!(&err, DataError::Record { line: 1, reason, .. } if reason.contains("`text`")),
                "{err}"
            );
        }
    }

    #[test]
    fn text_file_is_one_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "c.txt", "line one\nline two\n".as_bytes());
        assert_eq!(
            read_documents(&path).expect("read"),
            vec!["line one\nline two\n"]
        );
    }

    #[test]
    fn non_utf8_names_path_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let txt = write(dir.path(), "d.txt", b"ok\nok\nbad \xff\n");
        let err = read_documents(&txt).expect_err("not utf8");
        assert!(matches!(&err, DataError::NotUtf8 { path, line: 3 } if path == &txt));
        let jsonl = write(
            dir.path(),
            "d.jsonl",
            b"{\"text\": \"a\"}\n{\"text\": \"\xc3\"}\n",
        );
        let err = read_documents(&jsonl).expect_err("not utf8");
        assert!(matches!(&err, DataError::NotUtf8 { path, line: 2 } if path == &jsonl));
        assert!(err.to_string().contains("d.jsonl"));
    }

    #[test]
    fn missing_file_names_path() {
        let err = read_documents(Path::new("/no/such/file.jsonl")).expect_err("missing");
        assert!(err.to_string().contains("/no/such/file.jsonl"));
    }

    #[test]
    fn streaming_stops_at_callback_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "e.jsonl",
            b"{\"text\": \"a\"}\n{\"text\": \"b\"}\n",
        );
        let mut seen = Vec::new();
        let err = read_documents_streaming(&path, |doc| {
            seen.push(doc);
            Err(DataError::InvalidMixture {
                reason: "stop".to_string(),
            })
        })
        .expect_err("callback error");
        assert!(matches!(err, DataError::InvalidMixture { .. }));
        assert_eq!(seen, vec!["a"]);
    }
}
