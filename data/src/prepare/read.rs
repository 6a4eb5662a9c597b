//! Inputs of `prepare`: paths and globs, `.jsonl` / text files (gzip-compressed or not),
//! read as a stream of raw records, and the problems found in them, each with its file and
//! line.
//!
//! A `.jsonl` file (`.jsonl.gz`) holds one JSON object with a string `text` field a line
//! (blank lines are skipped); any other file (`.txt`, `.txt.gz`, ...) is one document.
//! Reading only splits lines; decoding (UTF-8, JSON) happens in `parse_record` on the
//! worker threads.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use super::error::PrepareError;

/// Bytes buffered per open input.
const READ_BUFFER: usize = 1 << 18;

/// How a file's records are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line with a string `text` field (and an optional `meta`).
    Jsonl,
    /// The whole file is one document.
    Text,
}

/// One input file and how to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its layout, from the extension (before a `.gz`).
    pub format: Format,
    /// Whether it is gzip-compressed (extension `.gz`).
    pub gzip: bool,
}

impl InputFile {
    /// Format and compression from the name: `x.jsonl[.gz]` is JSONL, anything else text.
    pub fn new(path: PathBuf) -> Self {
        let has_ext = |p: &Path, e: &str| p.extension().is_some_and(|x| x.eq_ignore_ascii_case(e));
        let gzip = has_ext(&path, "gz");
        let inner = if gzip {
            path.file_stem().map(Path::new).unwrap_or(Path::new(""))
        } else {
            &path
        };
        let format = if has_ext(inner, "jsonl") {
            Format::Jsonl
        } else {
            Format::Text
        };
        InputFile { path, format, gzip }
    }
}

/// Expands one input of a domain: a glob (`*`, `?`, `[...]`) to the files it matches in
/// sorted order, or a plain path to itself. Errors when nothing matches, a plain path
/// does not exist, or names a directory.
pub fn expand_input(domain: &str, pattern: &str) -> Result<Vec<PathBuf>, PrepareError> {
    let err = |reason: String| PrepareError::Input {
        domain: domain.to_string(),
        pattern: pattern.to_string(),
        reason,
    };
    if !pattern.contains(['*', '?', '[']) {
        let path = PathBuf::from(pattern);
        return match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Err(err(
                "is a directory (give a glob such as DIR/*.jsonl)".into()
            )),
            Ok(_) => Ok(vec![path]),
            Err(e) => Err(err(format!("cannot be read: {e}"))),
        };
    }
    let paths = glob::glob(pattern).map_err(|e| err(format!("is not a valid glob: {e}")))?;
    let mut files = Vec::new();
    for entry in paths {
        let path = entry.map_err(|e| err(format!("cannot be listed: {e}")))?;
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(err("matched no file".into()));
    }
    Ok(files)
}

/// What is wrong with a line or a file of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// A JSONL line that is not JSON.
    InvalidJson,
    /// A JSON line that is not an object with a string `text` field.
    MissingText,
    /// A file with no document (zero bytes, or only blank lines).
    EmptyFile,
    /// A gzip stream that cannot be decompressed (bad header, corrupt or truncated data).
    CorruptGzip,
    /// The file could not be opened or read.
    ReadError,
}

impl ProblemKind {
    /// Every kind, in report order.
    pub const ALL: [ProblemKind; 6] = [
        ProblemKind::InvalidUtf8,
        ProblemKind::InvalidJson,
        ProblemKind::MissingText,
        ProblemKind::EmptyFile,
        ProblemKind::CorruptGzip,
        ProblemKind::ReadError,
    ];

    /// The name used in reports (`invalid_utf8`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::InvalidUtf8 => "invalid_utf8",
            ProblemKind::InvalidJson => "invalid_json",
            ProblemKind::MissingText => "missing_text",
            ProblemKind::EmptyFile => "empty_file",
            ProblemKind::CorruptGzip => "corrupt_gzip",
            ProblemKind::ReadError => "read_error",
        }
    }
}

/// One problem of the input, as written to `problems.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// The domain the file belongs to.
    pub domain: String,
    /// The file.
    pub file: PathBuf,
    /// 1-based line (of the decompressed text); `None` for the whole file.
    pub line: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
    /// Details (the decoder's or parser's message).
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: {}", self.kind.name(), self.message)
    }
}

/// A problem before its file's names are attached.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawProblem {
    pub line: Option<u64>,
    pub kind: ProblemKind,
    pub message: String,
}

/// What the reader hands on: a record's undecoded bytes or a problem of the file.
#[derive(Debug)]
pub(crate) enum RawItem {
    /// A JSONL line (without its line ending) or a whole text file.
    Record {
        file: u32,
        line: u64,
        bytes: Vec<u8>,
    },
    /// A problem met while reading (not while decoding).
    Problem { file: u32, problem: RawProblem },
}

impl RawItem {
    /// Bytes it holds (to size batches).
    pub fn len(&self) -> usize {
        match self {
            RawItem::Record { bytes, .. } => bytes.len(),
            RawItem::Problem { .. } => 0,
        }
    }
}

/// Reads one input file as a sequence of [`RawItem`]s; never fails: trouble becomes a
/// problem item, after which the file ends.
pub(crate) struct FileReader {
    index: u32,
    input: InputFile,
    reader: Option<Box<dyn BufRead + Send>>,
    line: u64,
    records: u64,
    done: bool,
}

impl FileReader {
    /// A reader of `input`, the file numbered `index`; opens it on the first item.
    pub fn new(index: u32, input: InputFile) -> Self {
        FileReader {
            index,
            input,
            reader: None,
            line: 0,
            records: 0,
            done: false,
        }
    }

    fn problem(&mut self, line: Option<u64>, kind: ProblemKind, message: String) -> RawItem {
        self.done = true;
        RawItem::Problem {
            file: self.index,
            problem: RawProblem {
                line,
                kind,
                message,
            },
        }
    }

    /// The kind of a read error: a gzip stream's errors are its data's.
    fn read_error_kind(&self) -> ProblemKind {
        if self.input.gzip {
            ProblemKind::CorruptGzip
        } else {
            ProblemKind::ReadError
        }
    }

    fn open(&mut self) -> Result<(), RawItem> {
        let path = &self.input.path;
        let file = File::open(path).map_err(|e| {
            let message = format!("cannot open: {e}");
            self.problem(None, ProblemKind::ReadError, message)
        })?;
        self.reader = Some(if self.input.gzip {
            let decoder = MultiGzDecoder::new(BufReader::with_capacity(READ_BUFFER, file));
            Box::new(BufReader::with_capacity(READ_BUFFER, decoder))
        } else {
            Box::new(BufReader::with_capacity(READ_BUFFER, file))
        });
        Ok(())
    }

    /// The next line holding something but whitespace, or the end, or a problem.
    fn next_jsonl(&mut self) -> Option<RawItem> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let reader = self.reader.as_mut()?;
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => return self.finish(),
                Ok(_) => {}
                Err(e) => {
                    let kind = self.read_error_kind();
                    return Some(self.problem(Some(self.line + 1), kind, e.to_string()));
                }
            }
            self.line += 1;
            while buf.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.records += 1;
            return Some(RawItem::Record {
                file: self.index,
                line: self.line,
                bytes: buf,
            });
        }
    }

    /// The whole file as one record, or a problem.
    fn next_text(&mut self) -> Option<RawItem> {
        let mut buf = Vec::new();
        let result = self.reader.as_mut()?.read_to_end(&mut buf);
        self.done = true;
        if let Err(e) = result {
            // What was read before the error stays in `buf`.
            let line = 1 + buf.iter().filter(|&&b| b == b'\n').count() as u64;
            let kind = self.read_error_kind();
            return Some(self.problem(Some(line), kind, e.to_string()));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            return self.finish();
        }
        self.records += 1;
        Some(RawItem::Record {
            file: self.index,
            line: 1,
            bytes: buf,
        })
    }

    /// End of the file: an empty-file problem if it held no record.
    fn finish(&mut self) -> Option<RawItem> {
        self.done = true;
        self.reader = None;
        (self.records == 0).then(|| {
            self.problem(
                None,
                ProblemKind::EmptyFile,
                "the file holds no document".to_string(),
            )
        })
    }
}

impl Iterator for FileReader {
    type Item = RawItem;

    fn next(&mut self) -> Option<RawItem> {
        if self.done {
            return None;
        }
        if self.reader.is_none()
            && let Err(problem) = self.open()
        {
            return Some(problem);
        }
        match self.input.format {
            Format::Jsonl => self.next_jsonl(),
            Format::Text => self.next_text(),
        }
    }
}

/// A decoded record.
#[derive(Debug, Deserialize)]
pub(crate) struct Parsed {
    /// The document text as given.
    pub text: String,
    /// The record's `meta` value, if any.
    #[serde(default)]
    pub meta: Option<serde_json::Value>,
}

/// Decodes a record's bytes; on failure gives the problem and the number of lines past
/// the record's first line where it is (non-zero only in a text file).
pub(crate) fn parse_record(format: Format, bytes: Vec<u8>) -> Result<Parsed, (u64, RawProblem)> {
    let problem = |offset: u64, kind: ProblemKind, message: String| {
        let line = None;
        (
            offset,
            RawProblem {
                line,
                kind,
                message,
            },
        )
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..valid];
        let newlines = before.iter().filter(|&&b| b == b'\n').count() as u64;
        let column = valid
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
        let message = format!("invalid UTF-8 at byte {} of the line", column + 1);
        problem(newlines, ProblemKind::InvalidUtf8, message)
    })?;
    match format {
        Format::Text => Ok(Parsed { text, meta: None }),
        Format::Jsonl => serde_json::from_str::<Parsed>(&text).map_err(|e| {
            let (kind, message) = match e.classify() {
                serde_json::error::Category::Data => (
                    ProblemKind::MissingText,
                    format!("not an object with a string `text` field: {e}"),
                ),
                _ => (ProblemKind::InvalidJson, format!("not valid JSON: {e}")),
            };
            problem(0, kind, message)
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).expect("gzip");
        enc.finish().expect("gzip")
    }

    fn read_all(path: &Path) -> Vec<RawItem> {
        FileReader::new(0, InputFile::new(path.to_path_buf())).collect()
    }

    fn records(items: &[RawItem]) -> Vec<(u64, String)> {
        items
            .iter()
            .filter_map(|i| match i {
                RawItem::Record { line, bytes, .. } => {
                    Some((*line, String::from_utf8_lossy(bytes).into_owned()))
                }
                RawItem::Problem { .. } => None,
            })
            .collect()
    }

    fn problems(items: &[RawItem]) -> Vec<(Option<u64>, ProblemKind)> {
        items
            .iter()
            .filter_map(|i| match i {
                RawItem::Problem { problem, .. } => Some((problem.line, problem.kind)),
                RawItem::Record { .. } => None,
            })
            .collect()
    }

    #[test]
    fn formats_from_extensions() {
        let f = |p: &str| {
            let i = InputFile::new(PathBuf::from(p));
            (i.format, i.gzip)
        };
        assert_eq!(f("a/b.jsonl"), (Format::Jsonl, false));
        assert_eq!(f("b.JSONL.gz"), (Format::Jsonl, true));
        assert_eq!(f("c.txt.gz"), (Format::Text, true));
        assert_eq!(f("d.txt"), (Format::Text, false));
        assert_eq!(f("e"), (Format::Text, false));
    }

    #[test]
    fn jsonl_lines_with_numbers_skipping_blank_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = b"{\"text\": \"a\"}\r\n\n  \n{\"text\": \"b\"}".to_vec();
        for (name, bytes) in [("p.jsonl", plain.clone()), ("p.jsonl.gz", gzip(&plain))] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            let items = read_all(&path);
            assert_eq!(
                records(&items),
                vec![
                    (1, "{\"text\": \"a\"}".to_string()),
                    (4, "{\"text\": \"b\"}".to_string())
                ],
                "{name}"
            );
            assert!(problems(&items).is_empty());
        }
    }

    #[test]
    fn gzip_text_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("doc.txt.gz");
        std::fs::write(&path, gzip("床前明月光\nline two\n".as_bytes())).expect("write");
        let items = read_all(&path);
        assert_eq!(
            records(&items),
            vec![(1, "床前明月光\nline two\n".to_string())]
        );
        // Concatenated gzip members read as one stream.
        let mut two = gzip(b"{\"text\": \"x\"}\n");
        two.extend(gzip(b"{\"text\": \"y\"}\n"));
        let path = dir.path().join("two.jsonl.gz");
        std::fs::write(&path, two).expect("write");
        assert_eq!(records(&read_all(&path)).len(), 2);
    }

    #[test]
    fn empty_files_are_problems() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, bytes) in [
            ("e.jsonl", Vec::new()),
            ("e2.jsonl", b"\n \n".to_vec()),
            ("e.txt", b"  \n".to_vec()),
            ("e.jsonl.gz", gzip(b"")),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            assert_eq!(
                problems(&read_all(&path)),
                vec![(None, ProblemKind::EmptyFile)],
                "{name}"
            );
        }
    }

    #[test]
    fn corrupt_gzip_is_reported_at_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lines = String::new();
        for i in 0..2000 {
            lines.push_str(&format!(
                "{{\"text\": \"document number {i} {}\"}}\n",
                i * 7919
            ));
        }
        let good = gzip(lines.as_bytes());
        // Truncated: the lines before the cut are read, then a problem.
        let path = dir.path().join("cut.jsonl.gz");
        std::fs::write(&path, &good[..good.len() / 2]).expect("write");
        let items = read_all(&path);
        let read = records(&items).len() as u64;
        assert!(read > 0 && read < 2000, "{read}");
        assert_eq!(
            problems(&items),
            vec![(Some(read + 1), ProblemKind::CorruptGzip)]
        );
        // Not gzip at all.
        let path = dir.path().join("plain.jsonl.gz");
        std::fs::write(&path, lines.as_bytes()).expect("write");
        let items = read_all(&path);
        assert_eq!(problems(&items), vec![(Some(1), ProblemKind::CorruptGzip)]);
        // Flipped bytes in the middle of the deflate data.
        let mut bad = good.clone();
        for b in &mut bad[good.len() / 3..good.len() / 3 + 64] {
            *b ^= 0x5A;
        }
        let path = dir.path().join("flipped.txt.gz");
        std::fs::write(&path, &bad).expect("write");
        let found = problems(&read_all(&path));
        assert!(
            matches!(found.as_slice(), [(Some(_), ProblemKind::CorruptGzip)]),
            "{found:?}"
        );
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let items = read_all(Path::new("/no/such/file.jsonl"));
        assert_eq!(problems(&items), vec![(None, ProblemKind::ReadError)]);
    }

    #[test]
    fn record_decoding_problems() {
        let kind = |format, bytes: &[u8]| {
            parse_record(format, bytes.to_vec()).map_err(|(o, p)| (o, p.kind))
        };
        assert!(kind(Format::Jsonl, b"{\"text\": \"ok\", \"meta\": {\"a\": 1}}").is_ok());
        assert_eq!(
            kind(Format::Jsonl, b"{\"text\": \"\xff\"}").err(),
            Some((0, ProblemKind::InvalidUtf8))
        );
        assert_eq!(
            kind(Format::Jsonl, b"{not json").err(),
            Some((0, ProblemKind::InvalidJson))
        );
        for missing in [
            &b"{\"txt\": \"x\"}"[..],
            b"{\"text\": 7}",
            b"[1, 2]",
            b"\"text\"",
        ] {
            assert_eq!(
                kind(Format::Jsonl, missing).err(),
                Some((0, ProblemKind::MissingText))
            );
        }
        // In a text file, the line of the first bad byte.
        assert_eq!(
            kind(Format::Text, b"ok\nok\nbad \xc3(").err(),
            Some((2, ProblemKind::InvalidUtf8))
        );
        let parsed = parse_record(
            Format::Jsonl,
            b"{\"meta\": {\"k\": 1}, \"text\": \"t\"}".to_vec(),
        )
        .expect("parse");
        assert_eq!(parsed.text, "t");
        assert_eq!(parsed.meta, Some(serde_json::json!({"k": 1})));
    }

    #[test]
    fn globs_expand_sorted_and_must_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.jsonl", "a.jsonl", "c.txt"] {
            std::fs::write(dir.path().join(name), "x").expect("write");
        }
        let pattern = format!("{}/*.jsonl", dir.path().display());
        let files = expand_input("d", &pattern).expect("glob");
        let names: Vec<_> = files.iter().filter_map(|p| p.file_name()).collect();
        assert_eq!(names, ["a.jsonl", "b.jsonl"]);
        let none = format!("{}/*.parquet", dir.path().display());
        let err = expand_input("d", &none).expect_err("no match");
        assert!(err.to_string().contains("matched no file"), "{err}");
        let err = expand_input("d", "/no/such.jsonl").expect_err("missing");
        assert!(err.to_string().contains("cannot be read"), "{err}");
        let dir_str = dir.path().display().to_string();
        let err = expand_input("d", &dir_str).expect_err("dir");
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
}
