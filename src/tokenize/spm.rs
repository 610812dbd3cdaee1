//! SentencePiece in pure Rust: a `.model` / `.spm` file read with our own protobuf reader
//! ([`proto`]) and turned into a `tokenizers` pipeline that segments text as
//! `SentencePieceProcessor.encode(text, out_type=str)` does, plus SentencePiece's own
//! `decode_pieces`.
//!
//! The pipeline is the one transformers' `SpmConverter.build_tokenizer_from_spm_proto`
//! builds from the model's own settings (convert_slow_tokenizer.py, transformers 5.x):
//! the Precompiled normalizer (the model's `precompiled_charsmap`), then, per the
//! normalizer spec, leading/trailing spaces removed and runs of spaces collapsed, spaces
//! escaped to "▁", a Metaspace pre-tokenizer (`prepend_scheme` always, no split) for the
//! dummy prefix, user-defined pieces isolated; a Unigram model with the piece scores.
//!
//! Where the `tokenizers` Unigram and SentencePiece differ, the vocabulary given to the
//! Unigram makes up for it. tests/tokenizer_parity.rs checks the result against
//! sentencepiece 0.2.3 (through transformers' MarianTokenizer) on small models trained
//! for the purpose: hand-picked edge cases and 290 NusaX-MT sentences in eight languages.
//! - SentencePiece matches only NORMAL, USER_DEFINED and UNUSED pieces in text and skips
//!   UNUSED ones; `tokenizers` matches every vocabulary entry, so `<s>`, `</s>`, `<unk>`
//!   or `<0x41>` written in the text would become those pieces. Control, unknown, unused
//!   and byte pieces get a score no path through them can win with.
//! - The unknown-character score is the lowest NORMAL score minus 10 in SentencePiece;
//!   `tokenizers` takes the minimum over the whole vocabulary, so it is set back.
//! - USER_DEFINED pieces score `length_in_bytes * max_normal_score - 0.1`, SentencePiece's
//!   bonus that makes them win.
//!
//! No special tokens are added: the slow tokenizers built on SentencePiece (Marian's)
//! split special tokens out of the text themselves, before SentencePiece sees it.

pub mod proto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::normalizers::replace::{Replace, ReplacePattern};
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::Tokenizer;
use tokenizers::{DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
pub use proto::{ModelProto, Piece, PieceType};

use super::tok_err;

/// SentencePiece's whitespace symbol, U+2581.
pub const SPIECE_UNDERLINE: char = '\u{2581}';

/// How far below every real path a piece SentencePiece never matches in text scores.
const NEVER: f64 = 1e9;

/// A loaded SentencePiece model: the file's bytes (written back unchanged on save), its
/// pieces, and the `tokenizers` pipeline that segments text with it.
#[derive(Clone)]
pub struct SentencePiece {
    path: PathBuf,
    bytes: Vec<u8>,
    proto: ModelProto,
    ids: HashMap<String, u32>,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for SentencePiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentencePiece")
            .field("path", &self.path)
            .field("pieces", &self.proto.pieces.len())
            .finish()
    }
}

impl SentencePiece {
    pub fn from_file(path: &Path) -> Result<SentencePiece> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        SentencePiece::from_bytes(bytes, path)
    }

    /// From a model file's bytes; `path` names it in errors (and is where it came from).
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<SentencePiece> {
        let proto = ModelProto::parse(&bytes, path)?;
        check_supported(&proto, path)?;
        let mut ids = HashMap::with_capacity(proto.pieces.len());
        for (i, p) in proto.pieces.iter().enumerate() {
            if ids.insert(p.piece.clone(), i as u32).is_some() {
                return Err(Error::msg(format!(
                    "{}: piece {:?} appears twice (SentencePiece refuses such a model)",
                    path.display(),
                    p.piece
                )));
            }
        }
        let tokenizer = build_tokenizer(&proto, path)?;
        Ok(SentencePiece {
            path: path.to_path_buf(),
            bytes,
            proto,
            ids,
            tokenizer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes as read.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.proto.pieces
    }

    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    /// The `tokenizers` pipeline (ids are SentencePiece ids; no special tokens).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `SentencePieceProcessor.encode(text, out_type=str)`: unknown characters come out
    /// as their (normalized) text, or as `<0xXX>` byte pieces with byte fallback.
    pub fn encode_pieces(&self, text: &str) -> Result<Vec<String>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| tok_err(self.path.display(), e))?;
        Ok(enc.get_tokens().to_vec())
    }

    /// `SentencePieceProcessor.decode_pieces`: control pieces vanish, `<unk>` becomes the
    /// model's `unk_surface` (" ⁇ "), a piece the model does not have comes out as is,
    /// runs of byte pieces are decoded as UTF-8 (each invalid byte a U+FFFD), "▁" becomes
    /// a space, and the leading "▁" of the text is dropped.
    pub fn decode_pieces<S: AsRef<str>>(&self, pieces: &[S]) -> String {
        let spec = &self.proto.normalizer;
        let consume_bos_ws = spec.add_dummy_prefix || spec.remove_extra_whitespaces;
        let unk_piece = &self.proto.pieces[self.proto.trainer.unk_id as usize].piece;
        let mut text = String::new();
        let mut bytes = Vec::new();
        let (mut is_bos_ws, mut bos_ws_seen) = (true, false);
        for piece in pieces {
            let piece = piece.as_ref();
            let kind = self
                .piece_to_id(piece)
                .map(|i| self.proto.pieces[i as usize].kind);
            if kind == Some(PieceType::Byte) {
                if let Some(b) = byte_of(piece) {
                    bytes.push(b);
                    continue;
                }
            }
            flush_bytes(&mut bytes, &mut text);
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match kind {
                Some(PieceType::Control) => {}
                None | Some(PieceType::Unknown) if piece == unk_piece => {
                    text.push_str(&self.proto.trainer.unk_surface)
                }
                None | Some(PieceType::Unknown) => text.push_str(piece),
                _ => {
                    let mut p = piece;
                    if is_bos_ws && consume_bos_ws {
                        if let Some(rest) = p.strip_prefix(SPIECE_UNDERLINE) {
                            p = rest;
                            // With extra whitespace removed, every leading "▁" goes.
                            bos_ws_seen = !spec.remove_extra_whitespaces;
                        }
                    }
                    text.push_str(&p.replace(SPIECE_UNDERLINE, " "));
                }
            }
        }
        flush_bytes(&mut bytes, &mut text);
        text
    }
}

/// `<0xAB>` → 0xAB.
fn byte_of(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// SentencePiece's `ProcessBytePieces`: one character at a time, an invalid byte is one
/// U+FFFD (not a maximal invalid run, as `String::from_utf8_lossy` would have it).
fn flush_bytes(bytes: &mut Vec<u8>, text: &mut String) {
    let mut i = 0;
    while i < bytes.len() {
        let len = match bytes[i] {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 0,
        };
        let ch = (len > 0 && i + len <= bytes.len())
            .then(|| std::str::from_utf8(&bytes[i..i + len]).ok())
            .flatten();
        match ch {
            Some(s) => {
                text.push_str(s);
                i += len;
            }
            None => {
                text.push('\u{fffd}');
                i += 1;
            }
        }
    }
    bytes.clear();
}

fn check_supported(m: &ModelProto, path: &Path) -> Result<()> {
    let unsupported = |what: &str| {
        Err(Error::msg(format!(
            "{}: {what} is not supported (fusebox reads Unigram SentencePiece models, as \
             Marian's opus-mt source.spm / target.spm are)",
            path.display()
        )))
    };
    match m.trainer.model_type {
        1 => {}
        2 => return unsupported("a BPE SentencePiece model (trainer_spec.model_type BPE)"),
        3 => return unsupported("a word SentencePiece model (trainer_spec.model_type WORD)"),
        4 => return unsupported("a char SentencePiece model (trainer_spec.model_type CHAR)"),
        t => return unsupported(&format!("trainer_spec.model_type {t}")),
    }
    if m.trainer.treat_whitespace_as_suffix {
        return unsupported("treat_whitespace_as_suffix");
    }
    if !m.normalizer.escape_whitespaces {
        return unsupported("normalizer_spec.escape_whitespaces false");
    }
    if m.denormalizer
        .as_ref()
        .is_some_and(|d| !d.precompiled_charsmap.is_empty())
    {
        return unsupported("a denormalizer (denormalizer_spec.precompiled_charsmap)");
    }
    let unk = m.trainer.unk_id;
    let ok = usize::try_from(unk)
        .ok()
        .and_then(|i| m.pieces.get(i))
        .is_some_and(|p| p.kind == PieceType::Unknown);
    if !ok {
        return Err(Error::msg(format!(
            "{}: trainer_spec.unk_id {unk} is not the id of an UNKNOWN piece ({} pieces)",
            path.display(),
            m.pieces.len()
        )));
    }
    Ok(())
}

/// A regular expression matching `s` literally.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn build_tokenizer(m: &ModelProto, path: &Path) -> Result<Tokenizer> {
    let err = |e| tok_err(path.display(), e);
    let normal: Vec<f32> = m
        .pieces
        .iter()
        .filter(|p| p.kind == PieceType::Normal)
        .map(|p| p.score)
        .collect();
    let min_normal = normal.iter().copied().fold(f32::INFINITY, f32::min);
    let max_normal = normal.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (min_normal, max_normal) = if normal.is_empty() {
        (0.0, 0.0)
    } else {
        (min_normal, max_normal)
    };
    let vocab: Vec<(String, f64)> = m
        .pieces
        .iter()
        .map(|p| {
            let score = match p.kind {
                PieceType::Normal => f64::from(p.score),
                PieceType::UserDefined => f64::from(p.piece.len() as f32 * max_normal - 0.1),
                _ => f64::from(min_normal) - NEVER,
            };
            (p.piece.clone(), score)
        })
        .collect();
    let mut unigram = Unigram::from(
        vocab,
        Some(m.trainer.unk_id as usize),
        m.trainer.byte_fallback,
    )
    .map_err(err)?;
    unigram.min_score = f64::from(min_normal);
    let mut tok = Tokenizer::new(unigram);

    let spec = &m.normalizer;
    let regex = |re: &str, to: &str| -> Result<NormalizerWrapper> {
        Ok(Replace::new(ReplacePattern::Regex(re.into()), to)
            .map_err(err)?
            .into())
    };
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if !spec.precompiled_charsmap.is_empty() {
        let pc = Precompiled::from(&spec.precompiled_charsmap).map_err(|e| {
            Error::msg(format!(
                "{}: normalizer_spec.precompiled_charsmap ({}) is not a valid charsmap: {e}",
                path.display(),
                spec.name
            ))
        })?;
        norm.push(pc.into());
    }
    if spec.remove_extra_whitespaces {
        // Only spaces: SentencePiece leaves other whitespace to the charsmap.
        norm.push(regex(r"\A +| +\z", "")?);
        norm.push(regex(" {2,}", " ")?);
    }
    norm.push(
        Replace::new(" ", SPIECE_UNDERLINE.to_string())
            .map_err(err)?
            .into(),
    );
    if spec.add_dummy_prefix {
        // Metaspace adds no prefix to a text starting with "▁"; SentencePiece does.
        norm.push(regex("\\A\u{2581}", "\u{2581}\u{2581}")?);
    }
    tok.with_normalizer(Some(NormalizerSequence::new(norm)))
        .map_err(err)?;

    let mut pre: Vec<PreTokenizerWrapper> = Vec::new();
    if spec.add_dummy_prefix {
        pre.push(Metaspace::new(SPIECE_UNDERLINE, PrependScheme::Always, false).into());
    }
    let mut user: Vec<&str> = m
        .pieces
        .iter()
        .filter(|p| p.kind == PieceType::UserDefined)
        .map(|p| p.piece.as_str())
        .collect();
    if !user.is_empty() {
        // Longest first, so a user piece that extends another wins.
        user.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let pattern: Vec<String> = user.iter().map(|p| regex_escape(p)).collect();
        let split = Split::new(
            SplitPattern::Regex(pattern.join("|")),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(err)?;
        pre.push(split.into());
    }
    if !pre.is_empty() {
        tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(pre)));
    }

    let mut dec: Vec<DecoderWrapper> = vec![Replace::new(SPIECE_UNDERLINE.to_string(), " ")
        .map_err(err)?
        .into()];
    if m.trainer.byte_fallback {
        dec.push(ByteFallback::new().into());
    }
    if spec.add_dummy_prefix {
        dec.push(Fuse::new().into());
        dec.push(Strip::new(' ', 1, 0).into());
    } else if m.trainer.byte_fallback {
        dec.push(Fuse::new().into());
    }
    tok.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_runs_decode_one_character_at_a_time() {
        let mut t = String::new();
        flush_bytes(&mut vec![0xe2, 0x82, 0xac, b'x'], &mut t);
        assert_eq!(t, "\u{20ac}x");
        let mut t = String::new();
        // A cut 3-byte sequence is two invalid bytes: two U+FFFD, as SentencePiece has it.
        flush_bytes(&mut vec![0xe2, 0x82], &mut t);
        assert_eq!(t, "\u{fffd}\u{fffd}");
        assert_eq!(byte_of("<0x0A>"), Some(10));
        assert_eq!(byte_of("<0x0A"), None);
        assert_eq!(byte_of("<0xZZ>"), None);
    }

    #[test]
    fn regex_escape_is_literal() {
        assert_eq!(regex_escape("[url]"), "\\[url\\]");
        assert_eq!(regex_escape("a.b|c"), "a\\.b\\|c");
    }
}
