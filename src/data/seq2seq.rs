//! Source/target pairs for seq2seq training and evaluation from JSONL (or a JSON array /
//! `{"data": [...]}`), CSV, TSV and CNN/DailyMail `.story` files.
//!
//! Fields are named by the caller as dotted paths (`translation.en`, `document`); CSV/TSV
//! columns by header name. A task prefix ("summarize: ") is prepended to every source.
//! CSV is read by a small RFC 4180 reader (quoted fields with commas, doubled quotes and
//! newlines, as in NusaX) rather than a new dependency.
//!
//! `.story` files follow Hugging Face `cnn_dailymail` 3.0.0 (itself from See et al.'s
//! preprocessing minus lowercasing): lines are stripped, a line not ending in
//! `. ! ? ' \` " ’ ” )` gets " ." appended, empty lines are dropped, lines before the first
//! `@highlight` form the article (joined with " "), the non-empty lines after it are the
//! highlights, joined with "\n" — one summary sentence per line, which is what rougeLsum
//! expects. `Seq2SeqOptions::highlight_sep` changes the joiner (" " gives HF < 2.0.0).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// One training/eval pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seq2SeqExample {
    pub source: String,
    pub target: String,
}

/// What to read and how to shape it.
#[derive(Debug, Clone)]
pub struct Seq2SeqOptions {
    /// Dotted JSON path or CSV/TSV column of the input text (ignored for `.story`).
    pub source_field: String,
    /// Dotted JSON path or CSV/TSV column of the output text (ignored for `.story`).
    pub target_field: String,
    /// Prepended to every source, e.g. "summarize: " or "translate English to Romanian: ".
    pub prefix: String,
    /// Joiner of `.story` highlights (HF 3.0.0: "\n").
    pub highlight_sep: String,
}

impl Seq2SeqOptions {
    pub fn new(source_field: &str, target_field: &str) -> Seq2SeqOptions {
        Seq2SeqOptions {
            source_field: source_field.to_string(),
            target_field: target_field.to_string(),
            prefix: String::new(),
            highlight_sep: "\n".to_string(),
        }
    }
    pub fn with_prefix(mut self, prefix: &str) -> Seq2SeqOptions {
        self.prefix = prefix.to_string();
        self
    }
}

fn read(path: &Path) -> Result<String> {
    crate::text::read_text(path)
}

/// Follows a dotted path (`translation.en`) through nested objects.
fn at_path<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |cur, key| cur.get(key))
}

fn field_text(row: &Value, path: &str, whr: &str) -> Result<String> {
    match at_path(row, path) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Error::msg(format!(
            "{whr}: field `{path}`: expected a string, got {}",
            short(other)
        ))),
        None => {
            let keys = row
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            Err(Error::msg(format!(
                "{whr}: field `{path}` not found (top-level keys: {keys})"
            )))
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn pair(row: &Value, opts: &Seq2SeqOptions, whr: &str) -> Result<Seq2SeqExample> {
    Ok(Seq2SeqExample {
        source: format!(
            "{}{}",
            opts.prefix,
            field_text(row, &opts.source_field, whr)?
        ),
        target: field_text(row, &opts.target_field, whr)?,
    })
}

/// JSON Lines (one object per non-empty line), or a whole-file JSON array / `{"data": [...]}`.
pub fn parse_json_rows(
    text: &str,
    source: &str,
    opts: &Seq2SeqOptions,
) -> Result<Vec<Seq2SeqExample>> {
    // A whole-file array or {"data": [...]} parses in one go; JSON Lines with more than
    // one row does not (trailing characters), and a single-row file is one object.
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let rows = match &v {
            Value::Array(a) => Some(a),
            Value::Object(o) => o.get("data").and_then(Value::as_array),
            _ => None,
        };
        if let Some(rows) = rows {
            return rows
                .iter()
                .enumerate()
                .map(|(i, r)| pair(r, opts, &format!("{source}: row {i}")))
                .collect();
        }
        // One object over several lines is neither JSON Lines nor a dataset.
        if let Value::Object(o) = &v {
            if text.lines().filter(|l| !l.trim().is_empty()).count() > 1 {
                let keys: Vec<&str> = o.keys().map(String::as_str).collect();
                return Err(Error::msg(format!(
                    "{source}: expected a JSON array of rows, {{\"data\": [...]}} or JSON Lines \
                     (one object per line); found one object with the keys {keys:?}"
                )));
            }
        }
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let whr = format!("{source}:{}", i + 1);
        let v: Value = serde_json::from_str(line)
            .map_err(|e| Error::msg(format!("{whr}: not valid JSON: {e}")))?;
        out.push(pair(&v, opts, &whr)?);
    }
    Ok(out)
}

/// Splits CSV/TSV text into records (RFC 4180 quoting, like Python's csv module).
pub fn split_delimited(text: &str, delim: char, source: &str) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut quote_line) = (1usize, 0usize);
    let mut in_quotes = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                _ => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if at_field_start => {
                in_quotes = true;
                quote_line = line;
                at_field_start = false;
            }
            c if c == delim => {
                row.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                line += 1;
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                at_field_start = true;
            }
            _ => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if in_quotes {
        return Err(Error::msg(format!(
            "{source}:{quote_line}: quoted field never closed"
        )));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows.retain(|r| !(r.len() == 1 && r[0].is_empty()));
    Ok(rows)
}

/// CSV (`delim` ',') or TSV ('\t') with a header row naming the columns.
pub fn parse_delimited(
    text: &str,
    delim: char,
    source: &str,
    opts: &Seq2SeqOptions,
) -> Result<Vec<Seq2SeqExample>> {
    let rows = split_delimited(text, delim, source)?;
    let Some((header, body)) = rows.split_first() else {
        return Err(Error::msg(format!(
            "{source}: empty file (expected a header row)"
        )));
    };
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            Error::msg(format!(
                "{source}: column `{name}` not in header (columns: {})",
                header.join(", ")
            ))
        })
    };
    let (si, ti) = (col(&opts.source_field)?, col(&opts.target_field)?);
    body.iter()
        .enumerate()
        .map(|(i, r)| {
            if r.len() != header.len() {
                return Err(Error::msg(format!(
                    "{source}: record {}: expected {} fields like the header, got {}",
                    i + 1,
                    header.len(),
                    r.len()
                )));
            }
            Ok(Seq2SeqExample {
                source: format!("{}{}", opts.prefix, r[si]),
                target: r[ti].clone(),
            })
        })
        .collect()
}

const END_TOKENS: [char; 9] = ['.', '!', '?', '\'', '`', '"', '\u{2019}', '\u{201d}', ')'];

/// A parsed `.story`: article text and highlight lines (periods fixed as HF does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Story {
    pub article: String,
    pub highlights: Vec<String>,
}

/// HF `cnn_dailymail` `_get_art_abs` (3.0.0) without the final join of highlights.
pub fn parse_story(text: &str) -> Story {
    let mut article = Vec::new();
    let mut highlights = Vec::new();
    let mut next_is_highlight = false;
    for raw in text.split(['\n', '\r']) {
        let line = raw.trim_matches(crate::metrics::py_isspace);
        if line.is_empty() {
            continue;
        }
        if line.starts_with("@highlight") {
            next_is_highlight = true;
            continue;
        }
        let fixed = if line.contains("@highlight") || line.ends_with(END_TOKENS) {
            line.to_string()
        } else {
            format!("{line} .")
        };
        if next_is_highlight {
            highlights.push(fixed);
        } else {
            article.push(fixed);
        }
    }
    Story {
        article: article.join(" "),
        highlights,
    }
}

/// `.story` files: a single file, or every `*.story` in a directory (sorted by name).
pub fn load_stories(path: impl AsRef<Path>, opts: &Seq2SeqOptions) -> Result<Vec<Seq2SeqExample>> {
    let path = path.as_ref();
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "story"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        return Err(Error::msg(format!("{}: no .story files", path.display())));
    }
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let s = parse_story(&read(&f)?);
        if s.highlights.is_empty() {
            return Err(Error::msg(format!(
                "{}: no @highlight lines (expected a CNN/DailyMail story)",
                f.display()
            )));
        }
        out.push(Seq2SeqExample {
            source: format!("{}{}", opts.prefix, s.article),
            target: s.highlights.join(&opts.highlight_sep),
        });
    }
    Ok(out)
}

/// Reads by extension: `.jsonl`/`.json`, `.csv`, `.tsv`, `.story` or a directory of stories.
pub fn load_seq2seq(path: impl AsRef<Path>, opts: &Seq2SeqOptions) -> Result<Vec<Seq2SeqExample>> {
    let path = path.as_ref();
    if path.is_dir() {
        return load_stories(path, opts);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let src = path.display().to_string();
    match ext.as_str() {
        "jsonl" | "json" | "ndjson" => parse_json_rows(&read(path)?, &src, opts),
        "csv" => parse_delimited(&read(path)?, ',', &src, opts),
        "tsv" => parse_delimited(&read(path)?, '\t', &src, opts),
        "story" => load_stories(path, opts),
        _ => Err(Error::msg(format!(
            "{src}: unknown seq2seq format `.{ext}` (expected .jsonl, .json, .csv, .tsv, .story or a directory of .story files)"
        ))),
    }
}
