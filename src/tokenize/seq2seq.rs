//! One face for the encoder-decoder families' tokenizers, so a caller loads any of them
//! with one call, [`Seq2SeqTokenizer::from_dir`]:
//!
//! - Marian's SentencePiece pair (`source.spm`, `target.spm`, `vocab.json`:
//!   Helsinki-NLP/opus-mt checkpoints), [`super::marian`];
//! - a `tokenizer.json` (T5, BART as transformers saves it), [`super::fast_seq2seq`];
//! - BART's bare `vocab.json` + `merges.txt`, [`super::bpe`].
//!
//! [`Seq2SeqTokenizerKind::detect`] says which a directory holds without loading it.
//! Each encodes as `tokenizer(text)` / `tokenizer(text_target=text)`
//! (`truncation=True, max_length=N` when a length is given) and decodes as
//! `tokenizer.decode(ids, skip_special_tokens=...)` do in transformers 5.x. Ids are
//! `i32`, as the models' id tensors hold them.

use std::path::Path;

use crate::error::{Error, Result};

use super::config::TokenizerConfig;
use super::fast_seq2seq::FastSeq2Seq;
use super::marian::MarianTokenizer;

/// Which tokenizer files a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seq2SeqTokenizerKind {
    /// `source.spm` + `target.spm` + `vocab.json` (+ `target_vocab.json`).
    Marian,
    /// `tokenizer.json`: T5, or BART as transformers saves it.
    TokenizerJson,
    /// BART's `vocab.json` + `merges.txt`.
    BartVocabMerges,
}

impl Seq2SeqTokenizerKind {
    /// Marian when `source.spm` or `target.spm` is there, or tokenizer_config.json names
    /// `MarianTokenizer`, or config.json's `model_type` is `marian` and there is no
    /// `tokenizer.json` (so a Marian directory missing a file is said to miss it, while a
    /// Marian trained from scratch on a word-level tokenizer.json reads that); else `tokenizer.json`; else
    /// `vocab.json` + `merges.txt`; else an error saying what was looked for.
    pub fn detect(dir: &Path) -> Result<Seq2SeqTokenizerKind> {
        if !dir.is_dir() {
            return Err(Error::msg(format!(
                "{}: not a directory (expected a tokenizer or checkpoint directory)",
                dir.display()
            )));
        }
        let class = TokenizerConfig::read(dir)?.token("tokenizer_class", "");
        let model_type = std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("model_type")?.as_str().map(str::to_string));
        let has = |f: &str| dir.join(f).is_file();
        Ok(
            if has("source.spm")
                || has("target.spm")
                || class == "MarianTokenizer"
                || (model_type.as_deref() == Some("marian") && !has("tokenizer.json"))
            {
                Seq2SeqTokenizerKind::Marian
            } else if has("tokenizer.json") {
                Seq2SeqTokenizerKind::TokenizerJson
            } else if has("vocab.json") && has("merges.txt") {
                Seq2SeqTokenizerKind::BartVocabMerges
            } else {
                return Err(Error::msg(format!(
                    "{}: no tokenizer: expected source.spm + target.spm + vocab.json \
                     (Marian), tokenizer.json (T5, BART), or vocab.json + merges.txt (BART)",
                    dir.display()
                )));
            },
        )
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
    files: Seq2SeqTokenizerKind,
    /// Marian `>>xx<<` code put before every source text.
    target_language: Option<String>,
}

fn to_i32(ids: Vec<u32>) -> Vec<i32> {
    ids.into_iter().map(|i| i as i32).collect()
}

impl Seq2SeqTokenizer {
    /// Load whichever tokenizer `dir` holds ([`Seq2SeqTokenizerKind::detect`]).
    pub fn from_dir(dir: &Path) -> Result<Seq2SeqTokenizer> {
        let files = Seq2SeqTokenizerKind::detect(dir)?;
        let kind = match files {
            Seq2SeqTokenizerKind::Marian => Kind::Marian(Box::new(MarianTokenizer::from_dir(dir)?)),
            Seq2SeqTokenizerKind::TokenizerJson => Kind::Fast(Box::new(FastSeq2Seq::from_json(
                &dir.join("tokenizer.json"),
            )?)),
            Seq2SeqTokenizerKind::BartVocabMerges => Kind::Fast(Box::new(FastSeq2Seq::bart(
                &dir.join("vocab.json"),
                &dir.join("merges.txt"),
            )?)),
        };
        Ok(Seq2SeqTokenizer {
            kind,
            files,
            target_language: None,
        })
    }

    /// Which files it was loaded from.
    pub fn kind(&self) -> Seq2SeqTokenizerKind {
        self.files
    }

    /// The Marian tokenizer, for what only Marian has (`decode_with`, coverage).
    pub fn as_marian(&self) -> Option<&MarianTokenizer> {
        match &self.kind {
            Kind::Marian(m) => Some(m),
            Kind::Fast(_) => None,
        }
    }

    /// The tokenizers-backed one (T5, BART), for its `tokenizers::Tokenizer`.
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

    /// `tokenizer(text)["input_ids"]`, with the `</s>` (and BART's `<s>`). `max_len`:
    /// `truncation=True, max_length=max_len`, the text's ids cut so the whole row,
    /// special tokens included, is at most `max_len` long (the `</s>` stays last); 0, or
    /// less than the special tokens, is an error. A target language set by
    /// [`Seq2SeqTokenizer::with_target_language`] comes first.
    pub fn encode_source(&self, text: &str, max_len: Option<usize>) -> Result<Vec<i32>> {
        Ok(to_i32(match &self.kind {
            Kind::Marian(m) => match &self.target_language {
                Some(code) => m.encode_source(&format!("{code} {text}"), max_len)?,
                None => m.encode_source(text, max_len)?,
            },
            Kind::Fast(f) => f.encode(text, max_len)?,
        }))
    }

    /// `tokenizer(text_target=text)["input_ids"]` (labels): Marian's target.spm and
    /// target vocabulary, the one tokenizer otherwise; `max_len` as for
    /// [`Seq2SeqTokenizer::encode_source`].
    pub fn encode_target(&self, text: &str, max_len: Option<usize>) -> Result<Vec<i32>> {
        Ok(to_i32(match &self.kind {
            Kind::Marian(m) => m.encode_target(text, max_len)?,
            Kind::Fast(f) => f.encode(text, max_len)?,
        }))
    }

    /// `tokenizer.decode(ids, skip_special_tokens=...)` (transformers 5.x). A negative id
    /// is an error; an id past a tokenizer.json / vocab.json + merges.txt vocabulary is
    /// dropped, as transformers drops it; one past a Marian vocab.json is an error naming
    /// it (MarianTokenizer fails on it too).
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
            Kind::Fast(f) => f.vocab_size(),
        }
    }

    /// A token's id (special tokens included; Marian: vocab.json's).
    pub fn token_to_id(&self, token: &str) -> Option<i32> {
        match &self.kind {
            Kind::Marian(m) => m.token_to_id(token),
            Kind::Fast(f) => f.token_to_id(token),
        }
        .map(|i| i as i32)
    }

    /// The padding id (`pad_token_id`): Marian's last id, BART's 1, T5's 0. Marian and T5
    /// also start decoding from it (`decoder_start_token_id`).
    pub fn pad_id(&self) -> i32 {
        (match &self.kind {
            Kind::Marian(m) => m.pad_id(),
            Kind::Fast(f) => f.pad_id(),
        }) as i32
    }

    /// `eos_token_id`, the `</s>` every encoding ends with.
    pub fn eos_id(&self) -> i32 {
        (match &self.kind {
            Kind::Marian(m) => m.eos_id(),
            Kind::Fast(f) => f.eos_id(),
        }) as i32
    }

    /// Write the files transformers' `AutoTokenizer.from_pretrained(dir)` loads back as
    /// this same tokenizer (checked once by hand with transformers 5.25 on every fixture
    /// directory: same ids and decodes as refs.json). Marian: source.spm, target.spm,
    /// vocab.json (+ target_vocab.json), tokenizer_config.json with `tokenizer_class`
    /// and `separate_vocabs`; otherwise the files read, tokenizer_config.json and
    /// special_tokens_map.json beside them. The target language is not saved.
    pub fn save_to(&self, dir: &Path) -> Result<()> {
        match &self.kind {
            Kind::Marian(m) => m.save_to(dir),
            Kind::Fast(f) => f.save_to(dir),
        }
    }
}
