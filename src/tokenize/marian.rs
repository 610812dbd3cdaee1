//! Marian's tokenizer (Helsinki-NLP opus-mt checkpoints), as transformers'
//! `MarianTokenizer` (tokenization_marian.py) has it. transformers has no fast Marian
//! tokenizer: its slow one calls the SentencePiece library; here [`SentencePiece`] stands
//! in for that library, and this file holds Marian's rules around it:
//!
//! - `source.spm` segments inputs, `target.spm` labels (`text_target=`); pieces become
//!   ids through `vocab.json` (labels through `target_vocab.json` when
//!   tokenizer_config.json says `separate_vocabs`), a piece the vocabulary lacks becomes
//!   `<unk>`'s id; `</s>` is appended, there is no BOS, `<pad>` is the last id.
//! - The special tokens (`</s>`, `<unk>`, `<pad>`) written in the text are split out
//!   first and kept whole (their ids from `vocab.json`, as transformers' added-token table
//!   has them, on either side); each remaining chunk that starts with `>>xx<<` keeps that
//!   language code as one token, and SentencePiece segments the rest.
//! - `truncation=True, max_length=N` keeps the first N - 1 ids and the `</s>`.
//! - Decoding: ids to tokens (special ids skipped on request), runs of pieces decoded by
//!   SentencePiece (special tokens written between them followed by a space), "▁" to
//!   spaces, Python's `strip()`. transformers 5.x decodes with the *source* model unless
//!   the vocabularies are separate (`use_source_tokenizer` defaults to
//!   `not separate_vocabs`); 4.x, and so `pipeline("translation")` in 4.57, decodes with
//!   the target model. [`MarianTokenizer::decode`] follows 5.x, [`MarianTokenizer::decode_with`]
//!   picks the model.
//!
//! Where fusebox is stricter than transformers, on purpose: a leading `>>xx<<` code that
//! is not in the vocabulary is an error listing valid ones (transformers encodes it as
//! `<unk>` and the model then translates into no particular language; text that merely
//! starts with `>>` and has a `<<` later, spaces between, still becomes `<unk>`), and a
//! `vocab.json` that lacks more than a tenth of a SentencePiece model's pieces is refused
//! as another model's vocabulary (a real opus-mt vocabulary misses at most a few rare
//! pieces; those still become `<unk>`, as in transformers).

mod vocab;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::metrics::py_isspace;

use super::config::TokenizerConfig;
use super::spm::{SentencePiece, SPIECE_UNDERLINE};
use vocab::{covered, is_language_code};
pub use vocab::{Coverage, Vocab};

/// Which model and vocabulary a text goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

/// A piece of text after the special tokens are split out.
enum Chunk<'a> {
    Special(&'a str),
    Text(&'a str),
}

#[derive(Clone, Debug)]
pub struct MarianTokenizer {
    dir: PathBuf,
    source: SentencePiece,
    target: SentencePiece,
    vocab: Vocab,
    target_vocab: Option<Vocab>,
    /// eos, unk, pad, then any additional special tokens: (text, id in vocab.json).
    specials: Vec<(String, u32)>,
    clean_up_tokenization_spaces: bool,
    config: TokenizerConfig,
    coverage: Vec<Coverage>,
}

/// `>>xx<<`, `>>zho_Hans<<`: a language code as opus-mt writes them, no spaces.
fn looks_like_code(t: &str) -> bool {
    is_language_code(t) && !t.chars().any(char::is_whitespace)
}

fn need(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::msg(format!(
            "{}: no {name} (a Marian tokenizer directory holds source.spm, target.spm and \
             vocab.json, as Helsinki-NLP/opus-mt checkpoints do)",
            dir.display()
        )))
    }
}

impl MarianTokenizer {
    pub fn from_dir(dir: &Path) -> Result<MarianTokenizer> {
        let source = SentencePiece::from_file(&need(dir, "source.spm")?)?;
        let target = SentencePiece::from_file(&need(dir, "target.spm")?)?;
        let vocab = Vocab::load(&need(dir, "vocab.json")?)?;
        let config = TokenizerConfig::read(dir)?;
        let separate = config.flag("separate_vocabs", false)?;
        let clean_up_tokenization_spaces = config.flag("clean_up_tokenization_spaces", false)?;
        let target_vocab = if separate {
            Some(Vocab::load(&need(dir, "target_vocab.json")?)?)
        } else {
            None
        };
        let mut wanted = vec![
            config.token("eos_token", "</s>"),
            config.token("unk_token", "<unk>"),
            config.token("pad_token", "<pad>"),
        ];
        wanted.extend(config.token_list("additional_special_tokens"));
        let mut specials: Vec<(String, u32)> = Vec::new();
        for (i, t) in wanted.into_iter().enumerate() {
            let id = vocab.id(&t).ok_or_else(|| {
                Error::msg(format!(
                    "{}: lacks the special token {t:?} (named by {}, or transformers' default)",
                    vocab.path().display(),
                    config.path().display()
                ))
            })?;
            // eos, unk and pad keep their places (indices 0, 1, 2); extras once each.
            if i < 3 || !specials.iter().any(|(s, _)| *s == t) {
                specials.push((t, id));
            }
        }
        let unk = specials[1].0.clone();
        if let Some(tv) = &target_vocab {
            if tv.id(&unk).is_none() {
                return Err(Error::msg(format!("{}: lacks {unk}", tv.path().display())));
            }
        }
        let mut tok = MarianTokenizer {
            dir: dir.to_path_buf(),
            source,
            target,
            vocab,
            target_vocab,
            specials,
            clean_up_tokenization_spaces,
            config,
            coverage: Vec::new(),
        };
        tok.coverage = vec![
            covered(&tok.source, &tok.vocab)?,
            covered(&tok.target, tok.target_vocab.as_ref().unwrap_or(&tok.vocab))?,
        ];
        Ok(tok)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn separate_vocabs(&self) -> bool {
        self.target_vocab.is_some()
    }

    pub fn source_spm(&self) -> &SentencePiece {
        &self.source
    }

    pub fn target_spm(&self) -> &SentencePiece {
        &self.target
    }

    /// `vocab.json`.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The vocabulary labels go through: `target_vocab.json` or `vocab.json`.
    pub fn target_vocab(&self) -> &Vocab {
        self.target_vocab.as_ref().unwrap_or(&self.vocab)
    }

    /// Pieces of source.spm / target.spm the vocabularies lack (they encode as `<unk>`).
    pub fn coverage(&self) -> &[Coverage] {
        &self.coverage
    }

    /// `len(vocab.json)`, transformers' `vocab_size`.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn eos_id(&self) -> u32 {
        self.specials[0].1
    }

    pub fn unk_id(&self) -> u32 {
        self.specials[1].1
    }

    pub fn pad_id(&self) -> u32 {
        self.specials[2].1
    }

    /// A token's id: the special tokens, then vocab.json.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|(s, _)| s == token)
            .map(|&(_, i)| i)
            .or_else(|| self.vocab.id(token))
    }

    /// The `>>xx<<` codes vocab.json holds, in id order.
    pub fn language_codes(&self) -> Vec<&str> {
        self.vocab.language_codes()
    }

    /// `tokenizer(text)["input_ids"]` (`truncation=True, max_length=max_len` when given).
    pub fn encode_source(&self, text: &str, max_len: Option<usize>) -> Result<Vec<u32>> {
        self.encode(text, Side::Source, max_len)
    }

    /// `tokenizer(text_target=text)["input_ids"]`: target.spm and the target vocabulary.
    pub fn encode_target(&self, text: &str, max_len: Option<usize>) -> Result<Vec<u32>> {
        self.encode(text, Side::Target, max_len)
    }

    /// `code` (`>>ind<<` or `ind`) as a `>>xx<<` token this model knows, else an error
    /// listing the codes it has.
    pub fn language_code(&self, code: &str) -> Result<String> {
        let code = if is_language_code(code) {
            code.to_string()
        } else {
            format!(">>{code}<<")
        };
        self.check_code(&code, &self.vocab)?;
        Ok(code)
    }

    fn check_code(&self, code: &str, vocab: &Vocab) -> Result<u32> {
        if let Some(id) = vocab.id(code) {
            return Ok(id);
        }
        let codes = vocab.language_codes();
        let known = if codes.is_empty() {
            "it has no >>xx<< codes: this model translates into one language".to_string()
        } else {
            let shown: Vec<&str> = codes.iter().take(12).copied().collect();
            let more = codes.len().saturating_sub(shown.len());
            format!(
                "it knows {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        };
        Err(Error::msg(format!(
            "language code {code} is not in {} ({known})",
            vocab.path().display()
        )))
    }

    fn spm(&self, side: Side) -> &SentencePiece {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    fn encoder(&self, side: Side) -> &Vocab {
        match side {
            Side::Source => &self.vocab,
            Side::Target => self.target_vocab(),
        }
    }

    /// The text split around the special tokens written in it (earliest first, the
    /// longest of those starting at one place), as transformers' added-token trie does.
    fn split_specials<'a>(&'a self, text: &'a str) -> Vec<Chunk<'a>> {
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            let hit = self
                .specials
                .iter()
                .filter_map(|(s, _)| rest.find(s.as_str()).map(|i| (i, s.as_str())))
                .min_by_key(|&(i, s)| (i, std::cmp::Reverse(s.len())));
            match hit {
                Some((i, s)) => {
                    out.push(Chunk::Text(&rest[..i]));
                    out.push(Chunk::Special(s));
                    rest = &rest[i + s.len()..];
                }
                None => {
                    out.push(Chunk::Text(rest));
                    return out;
                }
            }
        }
    }

    /// Ids without the `</s>`.
    pub fn encode_no_eos(&self, text: &str, side: Side) -> Result<Vec<u32>> {
        let encoder = self.encoder(side);
        let unk = encoder.id(&self.specials[1].0).unwrap_or(self.unk_id());
        let mut ids = Vec::new();
        for chunk in self.split_specials(text) {
            let mut text = match chunk {
                Chunk::Special(s) => {
                    ids.push(self.token_to_id(s).unwrap_or(unk));
                    continue;
                }
                Chunk::Text(t) => t,
            };
            // transformers' remove_language_code: `>>` ... the first `<<` is one token.
            if text.starts_with(">>") {
                if let Some(end) = text.find("<<") {
                    let code = &text[..end + 2];
                    ids.push(if looks_like_code(code) {
                        self.check_code(code, encoder)?
                    } else {
                        encoder.id(code).unwrap_or(unk)
                    });
                    text = &text[end + 2..];
                }
            }
            for piece in self.spm(side).encode_pieces(text)? {
                ids.push(encoder.id(&piece).unwrap_or(unk));
            }
        }
        Ok(ids)
    }

    pub fn encode(&self, text: &str, side: Side, max_len: Option<usize>) -> Result<Vec<u32>> {
        let mut ids = self.encode_no_eos(text, side)?;
        if let Some(n) = max_len {
            if n == 0 {
                return Err(Error::msg(
                    "max_length 0: a Marian sequence needs at least one id, its </s>",
                ));
            }
            ids.truncate(n - 1);
        }
        ids.push(self.eos_id());
        Ok(ids)
    }

    /// `tokenizer.decode(ids, skip_special_tokens=...)` as transformers 5.x: the source
    /// model decodes unless the vocabularies are separate.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.decode_with(ids, skip_special_tokens, !self.separate_vocabs())
    }

    /// `tokenizer.decode(ids, skip_special_tokens=..., use_source_tokenizer=...)`;
    /// `use_source_tokenizer: false` is transformers 4.x's default decode.
    pub fn decode_with(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
        use_source_tokenizer: bool,
    ) -> Result<String> {
        let decoder = self.target_vocab();
        let mut tokens: Vec<&str> = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some((s, _)) = self.specials.iter().find(|&&(_, i)| i == id) {
                if !skip_special_tokens {
                    tokens.push(s);
                }
                continue;
            }
            tokens.push(decoder.token(id).ok_or_else(|| {
                Error::msg(format!(
                    "id {id} is not in {} ({} tokens)",
                    decoder.path().display(),
                    decoder.len()
                ))
            })?);
        }
        let sp = if use_source_tokenizer {
            &self.source
        } else {
            &self.target
        };
        let specials: HashSet<&str> = self.specials.iter().map(|(s, _)| s.as_str()).collect();
        let mut out = String::new();
        let mut run: Vec<&str> = Vec::new();
        for t in tokens {
            if specials.contains(t) {
                out.push_str(&sp.decode_pieces(&run));
                out.push_str(t);
                out.push(' ');
                run.clear();
            } else {
                run.push(t);
            }
        }
        out.push_str(&sp.decode_pieces(&run));
        let out = out.replace(SPIECE_UNDERLINE, " ");
        let out = out.trim_matches(py_isspace);
        Ok(if self.clean_up_tokenization_spaces {
            super::clean_up_tokenization(out)
        } else {
            out.to_string()
        })
    }

    /// Write what transformers' `MarianTokenizer.from_pretrained` reads: source.spm and
    /// target.spm as read, vocab.json (and target_vocab.json), and tokenizer_config.json
    /// with `tokenizer_class` and `separate_vocabs` set.
    pub fn save_to(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, sp) in [("source.spm", &self.source), ("target.spm", &self.target)] {
            let p = dir.join(name);
            std::fs::write(&p, sp.bytes()).map_err(|e| Error::io(&p, e))?;
        }
        let mut vocabs = vec![("vocab.json", &self.vocab)];
        if let Some(tv) = &self.target_vocab {
            vocabs.push(("target_vocab.json", tv));
        }
        for (name, v) in vocabs {
            let to = dir.join(name);
            if !super::same_file(v.path(), &to) {
                std::fs::copy(v.path(), &to).map_err(|e| Error::io(v.path(), e))?;
            }
        }
        let mut cfg = self.config.map().clone();
        cfg.entry("tokenizer_class")
            .or_insert_with(|| "MarianTokenizer".into());
        cfg.insert("separate_vocabs".into(), self.separate_vocabs().into());
        let p = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::msg(e.to_string()))?;
        std::fs::write(&p, text + "\n").map_err(|e| Error::io(&p, e))
    }
}
