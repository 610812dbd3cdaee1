//! Reading the inputs of the SQuAD evaluation: the dataset (official nested or HF flat
//! JSON), the predictions `{id: text}` and the na-prob file `{id: prob}`.
//!
//! The na-prob file gets its own tiny reader: key order decides ties in the official
//! `find_best_thresh`, a chosen threshold is printed back verbatim (int or float, as
//! Python's json loaded it), and floats must parse correctly rounded — serde_json's
//! default map sorts keys and its default float parser is only best-effort.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::{GoldQuestion, PyNum, SquadGold, SquadVersion};
use crate::error::{Error, Result};

fn err(source: &str, field: &str, expected: &str) -> Error {
    Error::msg(format!("{source}: {field}: expected {expected}"))
}

fn read(path: &Path) -> Result<String> {
    crate::text::read_text(path)
}

fn answers_nested(qa: &Value, source: &str, field: &str) -> Result<Vec<String>> {
    let arr = qa
        .get("answers")
        .and_then(Value::as_array)
        .ok_or_else(|| err(source, &format!("{field}.answers"), "an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, a)| {
            a.get("text")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| err(source, &format!("{field}.answers[{i}].text"), "a string"))
        })
        .collect()
}

impl SquadGold {
    /// Reads the questions and answer texts the official scripts look at. The version is
    /// v2 when `version` says 2.x, or any question carries `is_impossible`, or (flat
    /// format) any question has no answer; otherwise v1.1.
    pub fn from_json(v: &Value, source: &str) -> Result<SquadGold> {
        let data = v.get("data").and_then(Value::as_array).ok_or_else(|| {
            let found = match v {
                Value::Array(a) => format!("a top-level array of {} items", a.len()),
                Value::Object(_) => "an object without a \"data\" array".to_string(),
                other => format!("{other}"),
            };
            Error::msg(format!(
                "{source}: expected SQuAD's layout, an object {{\"version\": ..., \"data\": \
                 [articles]}}; found {found}"
            ))
        })?;
        let mut questions = Vec::new();
        let mut saw_impossible = false;
        let mut flat_empty = false;
        for (ai, art) in data.iter().enumerate() {
            let id_of = |qa: &Value, f: &str| -> Result<String> {
                qa.get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| err(source, &format!("{f}.id"), "a string"))
            };
            if let Some(paras) = art.get("paragraphs") {
                let paras = paras
                    .as_array()
                    .ok_or_else(|| err(source, &format!("data[{ai}].paragraphs"), "an array"))?;
                for (pi, p) in paras.iter().enumerate() {
                    let f = format!("data[{ai}].paragraphs[{pi}].qas");
                    let qas = p
                        .get("qas")
                        .and_then(Value::as_array)
                        .ok_or_else(|| err(source, &f, "an array"))?;
                    for (qi, qa) in qas.iter().enumerate() {
                        let f = format!("{f}[{qi}]");
                        saw_impossible |= qa.get("is_impossible").is_some();
                        questions.push(GoldQuestion {
                            id: id_of(qa, &f)?,
                            answers: answers_nested(qa, source, &f)?,
                        });
                    }
                }
            } else {
                let f = format!("data[{ai}]");
                let texts = art
                    .get("answers")
                    .and_then(|a| a.get("text"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        err(
                            source,
                            &format!("{f}.answers.text"),
                            "an array (or use `paragraphs`)",
                        )
                    })?;
                let answers = texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        t.as_str().map(str::to_string).ok_or_else(|| {
                            err(source, &format!("{f}.answers.text[{i}]"), "a string")
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                saw_impossible |= art.get("is_impossible").is_some();
                flat_empty |= answers.is_empty();
                questions.push(GoldQuestion {
                    id: id_of(art, &f)?,
                    answers,
                });
            }
        }
        let declared_v2 = match v.get("version") {
            Some(Value::String(s)) => s.trim_start_matches(['v', 'V']).starts_with('2'),
            Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x >= 2.0),
            _ => false,
        };
        let version = if declared_v2 || saw_impossible || flat_empty {
            SquadVersion::V2
        } else {
            SquadVersion::V1
        };
        Ok(SquadGold { version, questions })
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<SquadGold> {
        let path = path.as_ref();
        let src = path.display().to_string();
        let v: Value = serde_json::from_str(&read(path)?)
            .map_err(|e| Error::msg(format!("{src}: not valid JSON: {e}")))?;
        SquadGold::from_json(&v, &src)
    }
}

/// Predictions `{question id: answer text}`; a repeated id keeps the last text.
pub fn parse_predictions(text: &str, source: &str) -> Result<HashMap<String, String>> {
    let raw: HashMap<String, Value> = serde_json::from_str(text).map_err(|e| {
        Error::msg(format!(
            "{source}: expected a JSON object {{id: answer text}}: {e}"
        ))
    })?;
    raw.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(err(source, &k, &format!("a string answer, got {other}"))),
        })
        .collect()
}

/// Reads the predictions file.
pub fn read_predictions(path: impl AsRef<Path>) -> Result<HashMap<String, String>> {
    let path = path.as_ref();
    parse_predictions(&read(path)?, &path.display().to_string())
}

/// Reads the na-prob file.
pub fn read_na_probs(path: impl AsRef<Path>) -> Result<Vec<(String, PyNum)>> {
    let path = path.as_ref();
    parse_na_probs(&read(path)?, &path.display().to_string())
}

struct Cursor<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    source: &'a str,
}

impl Cursor<'_> {
    fn fail(&self, expected: &str) -> Error {
        Error::msg(format!(
            "{}: na-prob JSON at byte {}: expected {expected}",
            self.source, self.pos
        ))
    }
    fn ws(&mut self) {
        while self.pos < self.s.len() && matches!(self.s[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }
    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn string(&mut self) -> Result<String> {
        self.ws();
        let start = self.pos;
        if self.s.get(self.pos) != Some(&b'"') {
            return Err(self.fail("a string key"));
        }
        self.pos += 1;
        while self.pos < self.s.len() {
            match self.s[self.pos] {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    // Escapes are decoded by serde_json on just this token.
                    return serde_json::from_str(&self.text[start..self.pos])
                        .map_err(|_| self.fail("a valid JSON string"));
                }
                _ => self.pos += 1,
            }
        }
        Err(self.fail("a closing quote"))
    }
    fn number(&mut self) -> Result<PyNum> {
        self.ws();
        let rest = &self.text[self.pos..];
        for (word, v) in [
            ("NaN", f64::NAN),
            ("Infinity", f64::INFINITY),
            ("-Infinity", f64::NEG_INFINITY),
        ] {
            if rest.starts_with(word) {
                self.pos += word.len();
                return Ok(PyNum::Float(v));
            }
        }
        let len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
            .count();
        let lex = &rest[..len];
        self.pos += len;
        let is_float = lex.contains(['.', 'e', 'E']);
        let parsed = if is_float {
            lex.parse::<f64>().ok().map(PyNum::Float)
        } else {
            lex.parse::<i64>().ok().map(PyNum::Int)
        };
        parsed.ok_or_else(|| self.fail("a number (the no-answer probability)"))
    }
}

/// The na-prob file `{id: probability}` in file order (a repeated id keeps its first
/// position and its last value, like a Python dict).
pub fn parse_na_probs(text: &str, source: &str) -> Result<Vec<(String, PyNum)>> {
    let mut c = Cursor {
        s: text.as_bytes(),
        text,
        pos: 0,
        source,
    };
    if !c.eat(b'{') {
        return Err(c.fail("`{` (a JSON object {id: probability})"));
    }
    let mut out: Vec<(String, PyNum)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    if !c.eat(b'}') {
        loop {
            let k = c.string()?;
            if !c.eat(b':') {
                return Err(c.fail("`:`"));
            }
            let v = c.number()?;
            if v.value().is_nan() {
                // The official script's sort has no defined order with NaN keys.
                return Err(Error::msg(format!(
                    "{source}: question {k:?}: the no-answer probability is NaN; expected a number"
                )));
            }
            match index.get(&k) {
                Some(&i) => out[i].1 = v,
                None => {
                    index.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
            if c.eat(b',') {
                continue;
            }
            if c.eat(b'}') {
                break;
            }
            return Err(c.fail("`,` or `}`"));
        }
    }
    c.ws();
    if c.pos != c.s.len() {
        return Err(c.fail("end of file after the object"));
    }
    Ok(out)
}
