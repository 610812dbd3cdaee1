//! The tokenizer `infer generate`, `summarize` and `translate` encode inputs and decode
//! outputs with: today the model directory's tokenizer.json (T5 checkpoints).
//!
//! This is the one place a seq2seq tokenizer plugs in: `tokenize::Seq2SeqTokenizer`
//! (T5, BART and Marian files; `from_dir`, `encode_source`, `decode`, `vocab_size`,
//! `pad_id`) has the methods below under the same names, so adopting it means making
//! `from_dir` load it and these methods forward to it; nothing else in infer changes.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use tokenizers::Tokenizer;

use fusebox::tasks::seq2seq_train::encode;
use fusebox::tokenize::load_tokenizer_json;

pub(crate) struct SourceTokenizer {
    tok: Tokenizer,
    dir: PathBuf,
    path: PathBuf,
    /// The model's eos, kept last when an input is cut.
    eos: i32,
}

impl SourceTokenizer {
    /// The tokenizer of the model directory `dir`; `eos` is the model's.
    pub(crate) fn from_dir(dir: &Path, eos: i32) -> Result<SourceTokenizer> {
        let path = dir.join("tokenizer.json");
        Ok(SourceTokenizer {
            tok: load_tokenizer_json(&path)?,
            dir: dir.to_path_buf(),
            path,
            eos,
        })
    }

    /// The file(s) it was read from, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `tokenizer(text)["input_ids"]` (with `</s>`), cut to `max_len` tokens keeping eos.
    pub(crate) fn encode_source(&self, text: &str, max_len: Option<usize>) -> Result<Vec<i32>> {
        Ok(encode(
            &self.tok,
            &self.dir,
            text,
            max_len.unwrap_or(usize::MAX),
            self.eos,
        )?)
    }

    /// `tokenizer.decode(ids, skip_special_tokens=...)`.
    pub(crate) fn decode(&self, ids: &[i32], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().filter(|&&t| t >= 0).map(|&t| t as u32).collect();
        self.tok
            .decode(&ids, skip_special_tokens)
            .map_err(|e| anyhow!("{}: {e}", self.path.display()))
    }

    /// Tokens, added ones included (they must fit the model's embedding).
    pub(crate) fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// The pad token's id, if the tokenizer has `<pad>` (the pipeline's fallback pad).
    pub(crate) fn pad_id(&self) -> Option<i32> {
        self.tok.token_to_id("<pad>").map(|t| t as i32)
    }
}
