//! The encoder-decoder tokenizers transformers runs through the `tokenizers` library:
//! a `tokenizer.json` (T5, BART as transformers saves it) or BART's bare `vocab.json` +
//! `merges.txt` ([`super::bpe`]). Encoding is `tokenizer(text)["input_ids"]` with the
//! post-processor's special tokens (`X </s>` for T5, `<s> X </s>` for BART);
//! `truncation=True, max_length=N` cuts the text's ids so the result, special tokens
//! included, is N long. Decoding is transformers 5.x's `decode`: ids the tokenizer does
//! not know are dropped, as the `tokenizers` library drops them (a T5 checkpoint's
//! embedding has 28 rows past its 32100 tokens, so generation can produce such ids).

use std::path::{Path, PathBuf};

use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

use crate::error::{Error, Result};

use super::bpe::bart_from_vocab_merges;
use super::config::TokenizerConfig;
use super::{clean_up_tokenization, load_tokenizer_json_untruncated, tok_err};

/// A `tokenizers` pipeline with its post-processor, plus the ids and settings of the
/// tokenizer_config.json beside it.
#[derive(Clone)]
pub struct FastSeq2Seq {
    inner: Tokenizer,
    /// What it was read from (copied on save): tokenizer.json, or vocab.json and
    /// merges.txt.
    files: Vec<PathBuf>,
    pad_id: u32,
    eos_id: u32,
    clean_up_tokenization_spaces: bool,
    config: TokenizerConfig,
}

impl FastSeq2Seq {
    /// A `tokenizer.json` (the truncation and padding it carries are dropped:
    /// transformers sets them per call) with the tokenizer_config.json beside it.
    pub fn from_json(path: &Path) -> Result<FastSeq2Seq> {
        let config = TokenizerConfig::read(parent(path))?;
        let inner = load_tokenizer_json_untruncated(path)?;
        FastSeq2Seq::finish(inner, vec![path.to_path_buf()], config)
    }

    /// BART from `vocab.json` + `merges.txt` (see [`super::bpe`]).
    pub fn bart(vocab: &Path, merges: &Path) -> Result<FastSeq2Seq> {
        let config = TokenizerConfig::read(parent(vocab))?;
        let inner = bart_from_vocab_merges(vocab, merges, &config)?;
        let files = vec![vocab.to_path_buf(), merges.to_path_buf()];
        FastSeq2Seq::finish(inner, files, config)
    }

    fn finish(
        inner: Tokenizer,
        files: Vec<PathBuf>,
        config: TokenizerConfig,
    ) -> Result<FastSeq2Seq> {
        let id = |key: &str, default: &str| -> Result<u32> {
            let t = config.token(key, default);
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
        let bpe_anyway = "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output";
        let clean_up_tokenization_spaces = config.flag("clean_up_tokenization_spaces", false)?
            && (!is_bpe || config.flag(bpe_anyway, false)?);
        Ok(FastSeq2Seq {
            inner,
            files,
            pad_id,
            eos_id,
            clean_up_tokenization_spaces,
            config,
        })
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The first file it was read from, for messages.
    pub(crate) fn where_(&self) -> String {
        self.files[0].display().to_string()
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// `len(tokenizer)`: the vocabulary with the added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// `tokenizer(text)["input_ids"]`, `truncation=True, max_length=n` when given.
    pub fn encode(&self, text: &str, max_len: Option<usize>) -> Result<Vec<u32>> {
        let mut enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(self.where_(), e))?;
        if let Some(n) = max_len {
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

    /// `tokenizer.decode(ids, skip_special_tokens=...)`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
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

    /// Copy the files it was read from, with the tokenizer_config.json and
    /// special_tokens_map.json beside them; a bare vocab.json + merges.txt without a
    /// tokenizer_config.json gets one naming `BartTokenizer`, so `AutoTokenizer` finds
    /// the class.
    pub fn save_to(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let src_dir = parent(&self.files[0]);
        let mut files = self.files.clone();
        for extra in ["tokenizer_config.json", "special_tokens_map.json"] {
            let p = src_dir.join(extra);
            if p.is_file() {
                files.push(p);
            }
        }
        for f in &files {
            let to = dir.join(f.file_name().unwrap_or_default());
            if !super::same_file(f, &to) {
                std::fs::copy(f, &to).map_err(|e| Error::io(f, e))?;
            }
        }
        let bare_bpe = self.files.len() == 2;
        if bare_bpe && !self.config.exists() {
            let p = dir.join("tokenizer_config.json");
            let cfg = serde_json::json!({"tokenizer_class": "BartTokenizer"});
            std::fs::write(&p, format!("{cfg:#}\n")).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}
