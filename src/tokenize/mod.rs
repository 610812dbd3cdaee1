//! Tokenizers for the BERT family, built on the `tokenizers` crate (the same Rust code
//! that backs transformers' fast tokenizers, so ids and character offsets match HF).
//!
//! Two sources: a `tokenizer.json` (loaded as is, minus any truncation/padding it
//! carries: transformers resets those on every call too) or a bare WordPiece
//! `vocab.txt`, from which we build what `BertTokenizerFast` builds: BertNormalizer
//! (lower-casing per `do_lower_case`), BertPreTokenizer, WordPiece with `[UNK]` and `##`,
//! and `[CLS] A [SEP] B [SEP]` with token type ids 0/1. Offsets are in characters
//! (Unicode scalar values), as Python's `encode` returns them, because SQuAD's
//! `answer_start` counts characters too.
//!
//! [`train`] builds tokenizers from text, deterministically, for the built-in datasets.

use std::path::{Path, PathBuf};

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, EncodeInput, Encoding, Tokenizer};

use crate::error::{Error, Result};

pub mod bpe;
pub mod config;
pub mod fast_seq2seq;
pub mod marian;
pub mod seq2seq;
pub mod spm;
pub mod train;

use config::{token_name, TokenizerConfig};

fn tok_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::msg(format!("{what}: {e}"))
}

/// A `tokenizer.json` as the `tokenizers` library (transformers' fast tokenizers) saves
/// it. A file that does not parse is said to be no such file, with the parser's reason:
/// its own messages ("untagged enum ModelUntagged") do not say what was expected.
pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    Tokenizer::from_bytes(bytes).map_err(|e| {
        Error::msg(format!(
            "{}: not a tokenizers JSON file (expected the tokenizer.json a Hugging Face fast \
             tokenizer saves, with `model`, `normalizer`, `pre_tokenizer`, ... sections): {e}",
            path.display()
        ))
    })
}

/// [`load_tokenizer_json`] without the truncation and padding the file may carry:
/// transformers sets both per call.
pub fn load_tokenizer_json_untruncated(path: &Path) -> Result<Tokenizer> {
    let mut inner = load_tokenizer_json(path)?;
    inner
        .with_truncation(None)
        .map_err(|e| tok_err(path.display(), e))?;
    inner.with_padding(None);
    Ok(inner)
}

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

/// Whether two paths name one existing file (saving into the directory read from).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A loaded tokenizer plus the special ids QA feature building needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pub pad_id: u32,
    pub cls_id: Option<u32>,
    pub sep_id: Option<u32>,
    source: PathBuf,
    /// Set when built from a vocab.txt (written back on save when no config says it).
    lowercase: Option<bool>,
}

/// The parts of tokenizer_config.json we read.
#[derive(Default, serde::Deserialize)]
struct TokConfig {
    do_lower_case: Option<bool>,
    pad_token: Option<serde_json::Value>,
    cls_token: Option<serde_json::Value>,
    sep_token: Option<serde_json::Value>,
}

fn read_tok_config(dir: &Path) -> Result<TokConfig> {
    let cfg = TokenizerConfig::read(dir)?;
    serde_json::from_value(serde_json::Value::Object(cfg.map().clone()))
        .map_err(|e| tok_err(cfg.path().display(), e))
}

impl TextTokenizer {
    /// From a model or tokenizer directory: `tokenizer.json` if present, else `vocab.txt`.
    pub fn from_dir(dir: &Path) -> Result<TextTokenizer> {
        let json = dir.join("tokenizer.json");
        if json.exists() {
            return TextTokenizer::from_json(&json);
        }
        let vocab = dir.join("vocab.txt");
        if vocab.exists() {
            let cfg = read_tok_config(dir)?;
            let lower = match cfg.do_lower_case {
                Some(l) => l,
                None => vocab_is_uncased(&vocab)?,
            };
            return TextTokenizer::bert_wordpiece(&vocab, lower);
        }
        Err(Error::msg(format!(
            "{}: no tokenizer.json or vocab.txt",
            dir.display()
        )))
    }

    /// Load a `tokenizer.json`; special tokens come from a `tokenizer_config.json` beside
    /// it, else the BERT names (`[PAD]`, `[CLS]`, `[SEP]`).
    pub fn from_json(path: &Path) -> Result<TextTokenizer> {
        let inner = load_tokenizer_json_untruncated(path)?;
        let cfg = read_tok_config(path.parent().unwrap_or(Path::new(".")))?;
        TextTokenizer::finish(inner, path, &cfg)
    }

    /// `BertTokenizerFast` from a WordPiece vocab: one token per line, id = line number.
    pub fn bert_wordpiece(vocab: &Path, lowercase: bool) -> Result<TextTokenizer> {
        let vocab_s = vocab
            .to_str()
            .ok_or_else(|| Error::msg(format!("{}: path is not UTF-8", vocab.display())))?;
        let wp = WordPiece::from_file(vocab_s)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| tok_err(vocab.display(), e))?;
        let mut inner = Tokenizer::new(wp);
        // strip_accents None follows `lowercase`, as in BertTokenizerFast.
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .map_err(|e| tok_err(vocab.display(), e))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_decoder(Some(WordPieceDecoder::default()));
        let id = |t: &str| -> Result<u32> {
            inner.token_to_id(t).ok_or_else(|| {
                Error::msg(format!(
                    "{}: special token {t} is not in the vocab",
                    vocab.display()
                ))
            })
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let post = TemplateProcessing::builder()
            .try_single("[CLS]:0 $A:0 [SEP]:0")
            .and_then(|b| b.try_pair("[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1"))
            .map_err(|e| tok_err(vocab.display(), e))?
            .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
            .build()
            .map_err(|e| tok_err(vocab.display(), e))?;
        inner.with_post_processor(Some(post));
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| tok_err(vocab.display(), e))?;
        let mut t = TextTokenizer::finish(inner, vocab, &TokConfig::default())?;
        t.lowercase = Some(lowercase);
        Ok(t)
    }

    fn finish(inner: Tokenizer, path: &Path, cfg: &TokConfig) -> Result<TextTokenizer> {
        let find = |name: Option<String>, fallback: &str| {
            inner.token_to_id(name.as_deref().unwrap_or(fallback))
        };
        let pad_id = find(token_name(cfg.pad_token.as_ref()), "[PAD]")
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        Ok(TextTokenizer {
            pad_id,
            cls_id: find(token_name(cfg.cls_token.as_ref()), "[CLS]"),
            sep_id: find(token_name(cfg.sep_token.as_ref()), "[SEP]"),
            inner,
            source: path.to_path_buf(),
            lowercase: None,
        })
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Vocabulary size including added tokens (must not exceed the model's table).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encode one text or a (first, second) pair, character offsets.
    pub fn encode<'s>(
        &self,
        input: impl Into<EncodeInput<'s>>,
        add_special_tokens: bool,
    ) -> Result<Encoding> {
        self.inner
            .encode_char_offsets(input, add_special_tokens)
            .map_err(|e| tok_err(self.source.display(), e))
    }

    /// Token ids of one text with the special tokens (`[CLS] ... [SEP]`).
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(text, true)?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err(self.source.display(), e))
    }

    /// How many special tokens the post-processor adds to a pair (3 for BERT).
    pub fn added_tokens_pair(&self) -> usize {
        use tokenizers::PostProcessor;
        self.inner
            .get_post_processor()
            .map(|p| p.added_tokens(true))
            .unwrap_or(0)
    }

    /// Copy the tokenizer's files (tokenizer.json or vocab.txt, plus the
    /// tokenizer_config.json and special_tokens_map.json beside them) into `dir`, so a
    /// saved checkpoint carries its tokenizer as transformers expects.
    pub fn save_to(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let src_dir = self.source.parent().unwrap_or(Path::new("."));
        let mut files = vec![self.source.clone()];
        for extra in ["tokenizer_config.json", "special_tokens_map.json"] {
            let p = src_dir.join(extra);
            if p.exists() {
                files.push(p);
            }
        }
        if let (Some(lower), false) = (
            self.lowercase,
            src_dir.join("tokenizer_config.json").exists(),
        ) {
            // transformers' BertTokenizer lower-cases unless told otherwise.
            let cfg =
                serde_json::json!({"tokenizer_class": "BertTokenizer", "do_lower_case": lower});
            let p = dir.join("tokenizer_config.json");
            std::fs::write(&p, cfg.to_string()).map_err(|e| Error::io(&p, e))?;
        }
        for f in files {
            let name = f.file_name().unwrap_or_default();
            let to = dir.join(name);
            if to != f {
                std::fs::copy(&f, &to).map_err(|e| Error::io(&f, e))?;
            }
        }
        Ok(())
    }
}

/// Without a tokenizer_config.json we cannot read `do_lower_case`; a vocab with no
/// upper-case letters outside `[special]` tokens is an uncased one.
fn vocab_is_uncased(vocab: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(vocab).map_err(|e| Error::io(vocab, e))?;
    Ok(!text
        .lines()
        .filter(|l| !l.starts_with('['))
        .any(|l| l.chars().any(|c| c.is_uppercase())))
}
