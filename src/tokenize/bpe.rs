//! BART's byte-level BPE from a bare `vocab.json` + `merges.txt`, for checkpoints that
//! carry no tokenizer.json: what transformers 5.x's `BartTokenizer` (an alias of
//! `RobertaTokenizer`, tokenization_roberta.py) builds from them. A BPE model with no
//! unknown token, no subword prefix or suffix; the ByteLevel pre-tokenizer
//! (`add_prefix_space` from tokenizer_config.json, default false) and decoder;
//! `<s> X </s>` by RobertaProcessing (`trim_offsets` default true); the special tokens
//! (`<s>`, `<pad>`, `</s>`, `<unk>`, `<mask>` unless tokenizer_config.json names others)
//! added whole, none stripping the spaces beside it (5.x's default; 4.x gave `<mask>`
//! lstrip).

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

use super::config::TokenizerConfig;
use super::tok_err;

/// `BartTokenizer(vocab=..., merges=...)` with the settings of `config`.
pub fn bart_from_vocab_merges(
    vocab: &Path,
    merges: &Path,
    config: &TokenizerConfig,
) -> Result<Tokenizer> {
    let utf8 = |p: &Path| {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| Error::msg(format!("{}: path is not UTF-8", p.display())))
    };
    let where_ = format!("{} + {}", vocab.display(), merges.display());
    let bpe = BPE::from_file(&utf8(vocab)?, &utf8(merges)?)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| {
            Error::msg(format!(
                "{where_}: not a byte-level BPE vocabulary and merges list (expected vocab.json \
                 as token → id and merges.txt with one \"a b\" pair per line): {e}"
            ))
        })?;
    let mut tok = Tokenizer::new(bpe);
    let add_prefix_space = config.flag("add_prefix_space", false)?;
    let trim_offsets = config.flag("trim_offsets", true)?;
    tok.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, trim_offsets, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let names = [
        ("bos_token", "<s>"),
        ("pad_token", "<pad>"),
        ("eos_token", "</s>"),
        ("unk_token", "<unk>"),
        ("mask_token", "<mask>"),
        ("sep_token", "</s>"),
        ("cls_token", "<s>"),
    ];
    let mut specials: Vec<(String, u32)> = Vec::new();
    for (key, default) in names {
        let t = config.token(key, default);
        let id = tok.token_to_id(&t).ok_or_else(|| {
            Error::msg(format!(
                "{}: lacks the special token {t:?} ({key})",
                vocab.display()
            ))
        })?;
        if !specials.iter().any(|(s, _)| *s == t) {
            specials.push((t, id));
        }
    }
    specials.sort_by_key(|&(_, id)| id);
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|(t, _)| AddedToken::from(t.clone(), true))
        .collect();
    tok.add_special_tokens(added)
        .map_err(|e| tok_err(&where_, e))?;
    let id_of = |key: &str, default: &str| {
        let t = config.token(key, default);
        let id = tok.token_to_id(&t).unwrap_or_default();
        (t, id)
    };
    let post = RobertaProcessing::new(id_of("sep_token", "</s>"), id_of("cls_token", "<s>"))
        .trim_offsets(trim_offsets)
        .add_prefix_space(add_prefix_space);
    tok.with_post_processor(Some(post));
    Ok(tok)
}
