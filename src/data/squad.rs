//! SQuAD v1.1 / v2.0 (official nested JSON) and Hugging Face "flat" JSON
//! (`{"data": [{id, title?, question, context, answers: {text: [...], answer_start: [...]}}]}`)
//! read into one flat list of examples.
//!
//! SQuAD offsets are Python `str` indices, i.e. Unicode code points, so every answer is
//! checked as `context.chars()[start..start + text.chars().count()] == text`, and both the
//! char and the byte start are kept (tokenizer offsets in Rust are bytes). A mismatch is
//! an error naming the file, the question id and both strings, unless `skip_bad` is set:
//! then the question is dropped and reported in `SquadLoad::skipped` (with `keep_questions`,
//! for prediction, only the answer is dropped and the question kept). Malformed JSON is an
//! error naming the file, the JSON path of the field and what was expected there.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// One gold answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QaAnswer {
    pub text: String,
    /// Start in Unicode code points (the number in the file).
    pub answer_start: usize,
    /// Start in bytes of the UTF-8 context.
    pub byte_start: usize,
}

impl QaAnswer {
    /// Byte range of the answer inside its context.
    pub fn byte_range(&self) -> std::ops::Range<usize> {
        self.byte_start..self.byte_start + self.text.len()
    }
}

/// One question with its context.
#[derive(Debug, Clone, PartialEq)]
pub struct QaExample {
    pub id: String,
    pub title: String,
    pub question: String,
    pub context: String,
    pub answers: Vec<QaAnswer>,
    /// The file's `is_impossible`, or (when absent) "has no answers".
    pub is_impossible: bool,
}

/// Which layout the file used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquadLayout {
    Nested,
    Flat,
}

/// A question left out because `skip_bad` was set.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRow {
    pub id: String,
    pub reason: String,
}

/// Everything a load produced.
#[derive(Debug, Clone)]
pub struct SquadLoad {
    pub examples: Vec<QaExample>,
    pub skipped: Vec<SkippedRow>,
    pub layout: SquadLayout,
    /// The file's `version` field as text, if any.
    pub version: Option<String>,
}

/// Loader options.
#[derive(Debug, Clone, Copy, Default)]
pub struct SquadOptions {
    /// Drop (and count) questions whose answer text does not match the context.
    pub skip_bad: bool,
    /// Keep such a question, without the answers that do not match (still reported in
    /// `skipped`): for prediction, which never reads the gold answers.
    pub keep_questions: bool,
}

struct Ctx<'a> {
    source: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: &str, expected: &str) -> Error {
        Error::msg(format!("{}: {field}: expected {expected}", self.source))
    }
    fn str_at<'v>(&self, v: &'v Value, key: &str, field: &str) -> Result<&'v str> {
        v.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.err(&format!("{field}.{key}"), "a string"))
    }
    fn array_at<'v>(&self, v: &'v Value, key: &str, field: &str) -> Result<&'v Vec<Value>> {
        v.get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| self.err(&format!("{field}.{key}"), "an array"))
    }
    fn opt_str(&self, v: &Value, key: &str, field: &str) -> Result<String> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.err(&format!("{field}.{key}"), "a string")),
        }
    }
    fn start(&self, v: Option<&Value>, field: &str) -> Result<usize> {
        v.and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| self.err(field, "a non-negative integer answer_start"))
    }
}

/// Char index -> byte index table for a context (one extra entry for the end).
fn char_starts(context: &str) -> Vec<usize> {
    let mut v: Vec<usize> = context.char_indices().map(|(b, _)| b).collect();
    v.push(context.len());
    v
}

/// Checks one answer; `Err(reason)` describes the mismatch.
fn locate(context: &str, starts: &[usize], text: &str, start: usize) -> Result<usize, String> {
    let n = text.chars().count();
    let end = start.saturating_add(n);
    let (Some(&b0), Some(&b1)) = (starts.get(start), starts.get(end)) else {
        return Err(format!(
            "answer {text:?} at char {start} runs past the end of the context ({} chars)",
            starts.len() - 1
        ));
    };
    let found = &context[b0..b1];
    if found == text {
        Ok(b0)
    } else {
        Err(format!(
            "answer_start {start} should point at {text:?} but the context has {found:?} there"
        ))
    }
}

struct Builder<'a> {
    ctx: Ctx<'a>,
    opts: SquadOptions,
    out: Vec<QaExample>,
    skipped: Vec<SkippedRow>,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        id: String,
        title: String,
        question: String,
        context: &str,
        starts: &[usize],
        raw: Vec<(String, usize)>,
        impossible: Option<bool>,
    ) -> Result<()> {
        let given = raw.len();
        let mut answers = Vec::with_capacity(raw.len());
        for (i, (text, start)) in raw.into_iter().enumerate() {
            match locate(context, starts, &text, start) {
                Ok(byte_start) => answers.push(QaAnswer {
                    text,
                    answer_start: start,
                    byte_start,
                }),
                Err(reason) => {
                    let reason = format!("answer {i}: {reason}");
                    if self.opts.keep_questions {
                        self.skipped.push(SkippedRow {
                            id: id.clone(),
                            reason,
                        });
                        continue;
                    }
                    if self.opts.skip_bad {
                        self.skipped.push(SkippedRow { id, reason });
                        return Ok(());
                    }
                    return Err(Error::msg(format!(
                        "{}: question {id}: {reason}",
                        self.ctx.source
                    )));
                }
            }
        }
        // From the file's answers, not the ones kept: a question whose only answer was
        // dropped (keep_questions) is still an answerable one.
        let is_impossible = impossible.unwrap_or(given == 0);
        self.out.push(QaExample {
            id,
            title,
            question,
            context: context.to_string(),
            answers,
            is_impossible,
        });
        Ok(())
    }
}

fn impossible_flag(ctx: &Ctx, v: &Value, field: &str) -> Result<Option<bool>> {
    match v.get("is_impossible") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ctx.err(&format!("{field}.is_impossible"), "true or false")),
    }
}

fn nested_article(b: &mut Builder, art: &Value, ai: usize) -> Result<()> {
    let f = format!("data[{ai}]");
    let title = b.ctx.opt_str(art, "title", &f)?;
    let paras = b.ctx.array_at(art, "paragraphs", &f)?;
    for (pi, p) in paras.iter().enumerate() {
        let pf = format!("{f}.paragraphs[{pi}]");
        let context = b.ctx.str_at(p, "context", &pf)?.to_string();
        let starts = char_starts(&context);
        let qas = b.ctx.array_at(p, "qas", &pf)?;
        for (qi, qa) in qas.iter().enumerate() {
            let qf = format!("{pf}.qas[{qi}]");
            let id = b.ctx.str_at(qa, "id", &qf)?.to_string();
            let question = b.ctx.str_at(qa, "question", &qf)?.to_string();
            let arr = b.ctx.array_at(qa, "answers", &qf)?;
            let mut raw = Vec::with_capacity(arr.len());
            for (i, a) in arr.iter().enumerate() {
                let af = format!("{qf}.answers[{i}]");
                let text = b.ctx.str_at(a, "text", &af)?.to_string();
                let start = b
                    .ctx
                    .start(a.get("answer_start"), &format!("{af}.answer_start"))?;
                raw.push((text, start));
            }
            let imp = impossible_flag(&b.ctx, qa, &qf)?;
            b.push(id, title.clone(), question, &context, &starts, raw, imp)?;
        }
    }
    Ok(())
}

fn flat_row(b: &mut Builder, row: &Value, i: usize) -> Result<()> {
    let f = format!("data[{i}]");
    let id = b.ctx.str_at(row, "id", &f)?.to_string();
    let title = b.ctx.opt_str(row, "title", &f)?;
    let question = b.ctx.str_at(row, "question", &f)?.to_string();
    let context = b.ctx.str_at(row, "context", &f)?.to_string();
    let ans = row
        .get("answers")
        .filter(|a| a.is_object())
        .ok_or_else(|| {
            b.ctx.err(
                &format!("{f}.answers"),
                "an object {text: [...], answer_start: [...]}",
            )
        })?;
    let af = format!("{f}.answers");
    let texts = b.ctx.array_at(ans, "text", &af)?;
    let starts_v = b.ctx.array_at(ans, "answer_start", &af)?;
    if texts.len() != starts_v.len() {
        return Err(b.ctx.err(
            &format!("{f}.answers"),
            &format!(
                "as many answer_start values as texts (got {} and {})",
                starts_v.len(),
                texts.len()
            ),
        ));
    }
    let mut raw = Vec::with_capacity(texts.len());
    for (k, (t, s)) in texts.iter().zip(starts_v).enumerate() {
        let text = t
            .as_str()
            .ok_or_else(|| b.ctx.err(&format!("{f}.answers.text[{k}]"), "a string"))?;
        let start = b
            .ctx
            .start(Some(s), &format!("{f}.answers.answer_start[{k}]"))?;
        raw.push((text.to_string(), start));
    }
    let imp = impossible_flag(&b.ctx, row, &f)?;
    let starts = char_starts(&context);
    b.push(id, title, question, &context, &starts, raw, imp)
}

/// "a string", "a number", ...: what a JSON value is, for errors.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses SQuAD JSON text; `source` names the file in errors.
pub fn parse_squad(text: &str, source: &str, opts: SquadOptions) -> Result<SquadLoad> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::msg(format!("{source}: not valid JSON: {e}")))?;
    let ctx = Ctx { source };
    let data = v.get("data").and_then(Value::as_array).ok_or_else(|| {
        let found = match &v {
            Value::Array(a) => format!("a top-level array of {} items", a.len()),
            Value::Object(o) if o.contains_key("data") => "`data` that is not an array".into(),
            Value::Object(o) => format!(
                "an object with the keys {:?}",
                o.keys().map(String::as_str).collect::<Vec<_>>()
            ),
            other => json_kind(other).to_string(),
        };
        ctx.err(
            "data",
            &format!(
                "a top-level array of SQuAD articles ({{\"title\", \"paragraphs\"}}) or \
                 flat rows ({{\"id\", \"question\", \"context\", \"answers\"}}) under the \
                 key \"data\" of a JSON object ({{\"data\": [...]}}); found {found}"
            ),
        )
    })?;
    let layout = match data.first() {
        Some(first) if first.get("paragraphs").is_none() => SquadLayout::Flat,
        _ => SquadLayout::Nested,
    };
    let version = match v.get("version") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let mut b = Builder {
        ctx,
        opts,
        out: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, item) in data.iter().enumerate() {
        match layout {
            SquadLayout::Nested => nested_article(&mut b, item, i)?,
            SquadLayout::Flat => flat_row(&mut b, item, i)?,
        }
    }
    Ok(SquadLoad {
        examples: b.out,
        skipped: b.skipped,
        layout,
        version,
    })
}

/// Reads a SQuAD file (either layout).
pub fn load_squad(path: impl AsRef<Path>, opts: SquadOptions) -> Result<SquadLoad> {
    let path = path.as_ref();
    let text = crate::text::read_text(path)?;
    parse_squad(&text, &path.display().to_string(), opts)
}
