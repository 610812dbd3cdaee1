//! One face for the encoder-decoder families' tokenizers: Marian's SentencePiece pair
//! (`source.spm` present), a `tokenizer.json` (T5, BART as transformers saves it), or
//! BART's bare `vocab.json` + `merges.txt`. Each encodes as `tokenizer(text)` /
//! `tokenizer(text_target=text)` (`truncation=True, max_length=N` when a length is
//! given) and decodes as `tokenizer.decode(ids, skip_special_tokens=...)` do in
//! transformers 5.x.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationDirection};

use crate::error::{Error, Result};

use super::bpe::{bart_from_vocab_merges, config_token, TokConfigMap};
use super::marian::MarianTokenizer;
use super::{load_tokenizer_json, tok_err};

/// transformers' `clean_up_tokenization`: the spaces a word-level join leaves before
/// punctuation and English contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

fn read_config(dir: &Path) -> Result<TokConfigMap> {
    let p = dir.join("tokenizer_config.json");
    if !p.is_file() {
        return Ok(TokConfigMap::new());
    }
    let text = crate::text::read_text(&p)?;
    serde_json::from_str(&text)
        .map_err(|e| Error::msg(format!("{}: expected a JSON object: {e}", p.display())))
}

/// A `tokenizers` pipeline with its post-processor (`<s> X </s>`, `X </s>`), as
/// transformers' tokenizers-backed classes run it.
#[derive(Clone)]
pub struct FastSeq2Seq {
    inner: Tokenizer,
    /// What it was read from (copied on save).
    files: Vec<PathBuf>,
    dir: PathBuf,
    pad_id: u32,
    eos_id: u32,
    clean_up_tokenization_spaces: bool,
    config: TokConfigMap,
}

impl FastSeq2Seq {
    /// A `tokenizer.json` (truncation and padding it carries are dropped: transformers
    /// sets them per call) with the tokenizer_config.json beside it.
    pub fn from_json(path: &Path) -> Result<FastSeq2Seq> {
        let mut inner = load_tokenizer_json(path)?;
        inner
            .with_truncation(None)
            .map_err(|e| tok_err(path.display(), e))?;
        inner.with_padding(None);
        FastSeq2Seq::finish(inner, vec![path.to_path_buf()])
    }

    /// BART from `vocab.json` + `merges.txt` (see [`super::bpe`]).
    pub fn bart(vocab: &Path, merges: &Path) -> Result<FastSeq2Seq> {
        let dir = vocab.parent().unwrap_or(Path::new("."));
        let inner = bart_from_vocab_merges(vocab, merges, &read_config(dir)?)?;
        FastSeq2Seq::finish(inner, vec![vocab.to_path_buf(), merges.to_path_buf()])
    }

    fn finish(inner: Tokenizer, files: Vec<PathBuf>) -> Result<FastSeq2Seq> {
        let dir = files[0].parent().unwrap_or(Path::new(".")).to_path_buf();
        let config = read_config(&dir)?;
        let id = |key: &str, default: &str| -> Result<u32> {
            let t = config_token(&config, key, default);
            inner.token_to_id(&t).ok_or_else(|| {
                Error::msg(format!(
                    "{}: no {key} {t:?} in the vocabulary (a sequence-to-sequence tokenizer \
                     needs one; name it in tokenizer_config.json)",
                    files[0].display()
                ))
            })
        };
        let (pad_id, eos_id) = (id("pad_token", "<pad>")?, id("eos_token", "</s>")?);
        // transformers 5.x never cleans up after a BPE model (it would eat real spaces).
        let is_bpe = matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_));
        let flag = |k: &str| config.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let clean_up_tokenization_spaces = flag("clean_up_tokenization_spaces")
            && (!is_bpe
                || flag("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"));
        Ok(FastSeq2Seq {
            inner,
            files,
            dir,
            pad_id,
            eos_id,
            clean_up_tokenization_spaces,
            config,
        })
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    fn where_(&self) -> String {
        self.files[0].display().to_string()
    }

    pub fn encode(&self, text: &str, max_len: Option<usize>) -> Result<Vec<u32>> {
        let mut enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(self.where_(), e))?;
        if let Some(n) = max_len {
            use tokenizers::PostProcessor;
            let added = self
                .inner
                .get_post_processor()
                .map_or(0, |p| p.added_tokens(false));
            if n < added.max(1) {
                return Err(Error::msg(format!(
                    "max_length {n} leaves no room for the text: the tokenizer adds {added} \
                     special tokens"
                )));
            }
            enc.truncate(n - added, 0, TruncationDirection::Right);
        }
        let enc = self
            .inner
            .post_process(enc, None, true)
            .map_err(|e| tok_err(self.where_(), e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let n = self.inner.get_vocab_size(true);
        if let Some(bad) = ids
            .iter()
            .find(|&&i| i as usize >= n && self.inner.id_to_token(i).is_none())
        {
            return Err(Error::msg(format!(
                "id {bad} is not in {} ({n} tokens)",
                self.where_()
            )));
        }
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err(self.where_(), e))?;
        Ok(if self.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Copy the files it was read from, and tokenizer_config.json (written with the
    /// BART class when a bare vocab.json + merges.txt had none).
    pub fn save_to(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut files = self.files.clone();
        for extra in ["tokenizer_config.json", "special_tokens_map.json"] {
            let p = self.dir.join(extra);
            if p.is_file() {
                files.push(p);
            }
        }
        for f in &files {
            let to = dir.join(f.file_name().unwrap_or_default());
            let same = matches!((f.canonicalize(), to.canonicalize()), (Ok(a), Ok(b)) if a == b);
            if !same {
                std::fs::copy(f, &to).map_err(|e| Error::io(f, e))?;
            }
        }
        if self.config.is_empty() && !self.dir.join("tokenizer_config.json").is_file() {
            let p = dir.join("tokenizer_config.json");
            let cfg = serde_json::json!({"tokenizer_class": "BartTokenizer"});
            std::fs::write(&p, format!("{cfg:#}\n")).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }
}

#[derive(Clone)]
enum Kind {
    Marian(Box<MarianTokenizer>),
    Fast(Box<FastSeq2Seq>),
}

/// The tokenizer of a T5, BART or Marian checkpoint directory.
#[derive(Clone)]
pub struct Seq2SeqTokenizer {
    kind: Kind,
    /// Marian `>>xx<<` code put before every source text.
    target_language: Option<String>,
}

/// A Marian directory even without its source.spm, so the error can say what is missing.
fn looks_like_marian(dir: &Path) -> bool {
    let named = |file: &str, key: &str, value: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get(key).and_then(|s| s.as_str()).map(|s| s == value))
            .unwrap_or(false)
    };
    dir.join("target.spm").exists()
        || named(
            "tokenizer_config.json",
            "tokenizer_class",
            "MarianTokenizer",
        )
        || named("config.json", "model_type", "marian")
}

fn to_i32(ids: Vec<u32>) -> Vec<i32> {
    ids.into_iter().map(|i| i as i32).collect()
}

impl Seq2SeqTokenizer {
    /// Marian when `source.spm` is there (or the directory is otherwise Marian's), else
    /// `tokenizer.json`, else BART's `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Seq2SeqTokenizer> {
        let kind = if dir.join("source.spm").exists() || looks_like_marian(dir) {
            Kind::Marian(Box::new(MarianTokenizer::from_dir(dir)?))
        } else if dir.join("tokenizer.json").is_file() {
            Kind::Fast(Box::new(FastSeq2Seq::from_json(
                &dir.join("tokenizer.json"),
            )?))
        } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            Kind::Fast(Box::new(FastSeq2Seq::bart(
                &dir.join("vocab.json"),
                &dir.join("merges.txt"),
            )?))
        } else {
            return Err(Error::msg(format!(
                "{}: no tokenizer: expected source.spm + target.spm + vocab.json (Marian), \
                 tokenizer.json (T5, BART), or vocab.json + merges.txt (BART)",
                dir.display()
            )));
        };
        Ok(Seq2SeqTokenizer {
            kind,
            target_language: None,
        })
    }

    pub fn as_marian(&self) -> Option<&MarianTokenizer> {
        match &self.kind {
            Kind::Marian(m) => Some(m),
            Kind::Fast(_) => None,
        }
    }

    pub fn as_fast(&self) -> Option<&FastSeq2Seq> {
        match &self.kind {
            Kind::Fast(f) => Some(f),
            Kind::Marian(_) => None,
        }
    }

    /// Every source text gets this Marian `>>xx<<` code (`ind` or `>>ind<<`) in front, as
    /// a user writing `">>ind<< " + text` would; a code the vocabulary lacks is an error
    /// listing the ones it has. Not for T5 or BART.
    pub fn with_target_language(mut self, code: &str) -> Result<Seq2SeqTokenizer> {
        match &self.kind {
            Kind::Marian(m) => self.target_language = Some(m.language_code(code)?),
            Kind::Fast(f) => {
                return Err(Error::msg(format!(
                    "target language {code:?}: language codes (>>xx<<) are for multilingual \
                     Marian models; {} is not a Marian tokenizer",
                    f.where_()
                )))
            }
        }
        Ok(self)
    }

    pub fn target_language(&self) -> Option<&str> {
        self.target_language.as_deref()
    }

    /// The `>>xx<<` codes a multilingual Marian vocabulary holds (none otherwise).
    pub fn language_codes(&self) -> Vec<String> {
        match &self.kind {
            Kind::Marian(m) => m.language_codes().into_iter().map(String::from).collect(),
            Kind::Fast(_) => Vec::new(),
        }
    }

    /// `tokenizer(text)["input_ids"]`, with the `</s>` (and BART's `<s>`).
    pub fn encode_source(&self, text: &str, max_len: Option<usize>) -> Result<Vec<i32>> {
        Ok(to_i32(match &self.kind {
            Kind::Marian(m) => match &self.target_language {
                Some(code) => m.encode_source(&format!("{code} {text}"), max_len)?,
                None => m.encode_source(text, max_len)?,
            },
            Kind::Fast(f) => f.encode(text, max_len)?,
        }))
    }

    /// `tokenizer(text_target=text)["input_ids"]`: Marian's target model and vocabulary,
    /// the one tokenizer otherwise.
    pub fn encode_target(&self, text: &str, max_len: Option<usize>) -> Result<Vec<i32>> {
        Ok(to_i32(match &self.kind {
            Kind::Marian(m) => m.encode_target(text, max_len)?,
            Kind::Fast(f) => f.encode(text, max_len)?,
        }))
    }

    /// `tokenizer.decode(ids, skip_special_tokens=...)` (transformers 5.x).
    pub fn decode(&self, ids: &[i32], skip_special_tokens: bool) -> Result<String> {
        let ids = ids
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| {
                    Error::msg(format!(
                        "decode: {i} is not a token id (labels' -100 must be replaced first)"
                    ))
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        match &self.kind {
            Kind::Marian(m) => m.decode(&ids, skip_special_tokens),
            Kind::Fast(f) => f.decode(&ids, skip_special_tokens),
        }
    }

    /// transformers' `vocab_size` (Marian: `len(vocab.json)`; otherwise with the added
    /// tokens, which must fit the model's embedding).
    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Marian(m) => m.vocab_size(),
            Kind::Fast(f) => f.inner.get_vocab_size(true),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<i32> {
        match &self.kind {
            Kind::Marian(m) => m.token_to_id(token),
            Kind::Fast(f) => f.inner.token_to_id(token),
        }
        .map(|i| i as i32)
    }

    pub fn pad_id(&self) -> i32 {
        (match &self.kind {
            Kind::Marian(m) => m.pad_id(),
            Kind::Fast(f) => f.pad_id,
        }) as i32
    }

    pub fn eos_id(&self) -> i32 {
        (match &self.kind {
            Kind::Marian(m) => m.eos_id(),
            Kind::Fast(f) => f.eos_id,
        }) as i32
    }

    /// Write the files transformers' `AutoTokenizer.from_pretrained(dir)` loads back as
    /// this same tokenizer.
    pub fn save_to(&self, dir: &Path) -> Result<()> {
        match &self.kind {
            Kind::Marian(m) => m.save_to(dir),
            Kind::Fast(f) => f.save_to(dir),
        }
    }
}
