//! Tokenizers trained from scratch for the built-in datasets, with the `tokenizers`
//! crate, saved in the layout transformers loads (`tokenizer.json`,
//! `tokenizer_config.json`, and `vocab.txt` for WordPiece).
//!
//! - BERT-style WordPiece (`[PAD]` = 0, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`, BERT
//!   normaliser and pre-tokenizer, `[CLS] A [SEP] B [SEP]` with type ids) for QA.
//! - T5-style word-level (`<pad>` = 0, `</s>` = 1, `<unk>` = 2, `</s>` appended) for the
//!   seq2seq tasks, whose closed vocabularies need no sub-words.

use std::path::Path;

use serde_json::json;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

fn terr(dir: &Path, e: impl std::fmt::Display) -> Error {
    Error::msg(format!("{}: tokenizer training: {e}", dir.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Train a WordPiece vocabulary of at most `vocab_size` on `texts` and save it to `dir`.
pub fn train_wordpiece(
    texts: &[String],
    vocab_size: usize,
    lowercase: bool,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut tok = Tokenizer::new(WordPiece::default());
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .map_err(|e| terr(dir, e))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let mut trainer: TrainerWrapper = WordPieceTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(1)
        .show_progress(false)
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build()
        .into();
    tok.train(&mut trainer, texts.iter())
        .map_err(|e| terr(dir, e))?;
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| terr(dir, format!("{t} missing after training")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    if id("[PAD]")? != 0 {
        return Err(terr(dir, "[PAD] must be id 0"));
    }
    let post = TemplateProcessing::builder()
        .try_single("[CLS]:0 $A:0 [SEP]:0")
        .and_then(|b| b.try_pair("[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1"))
        .map_err(|e| terr(dir, e))?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(|e| terr(dir, e))?;
    tok.with_post_processor(Some(post));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    tok.save(dir.join("tokenizer.json"), false)
        .map_err(|e| terr(dir, e))?;
    // vocab.txt: one token per line, by id.
    let mut vocab: Vec<(String, u32)> = tok.get_vocab(true).into_iter().collect();
    vocab.sort_by_key(|(_, i)| *i);
    let lines: Vec<&str> = vocab.iter().map(|(t, _)| t.as_str()).collect();
    write(&dir.join("vocab.txt"), &(lines.join("\n") + "\n"))?;
    let cfg = json!({
        "tokenizer_class": "BertTokenizerFast",
        "do_lower_case": lowercase,
        "model_max_length": 512,
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
        "sep_token": "[SEP]", "mask_token": "[MASK]",
    });
    write(
        &dir.join("tokenizer_config.json"),
        &serde_json::to_string_pretty(&cfg).unwrap_or_default(),
    )
}

/// Train a word-level vocabulary for a T5-style model and save it to `dir`.
pub fn train_wordlevel_t5(texts: &[String], vocab_size: usize, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let specials = ["<pad>", "</s>", "<unk>"];
    let model = WordLevel::builder()
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| terr(dir, e))?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    let mut trainer: TrainerWrapper = WordLevelTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(1)
        .show_progress(false)
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build()
        .map_err(|e| terr(dir, e))?
        .into();
    tok.train(&mut trainer, texts.iter())
        .map_err(|e| terr(dir, e))?;
    for (i, s) in specials.iter().enumerate() {
        if tok.token_to_id(s) != Some(i as u32) {
            return Err(terr(dir, format!("{s} must be id {i}")));
        }
    }
    let post = TemplateProcessing::builder()
        .try_single("$A:0 </s>:0")
        .and_then(|b| b.try_pair("$A:0 </s>:0 $B:1 </s>:1"))
        .map_err(|e| terr(dir, e))?
        .special_tokens(vec![("</s>", 1)])
        .build()
        .map_err(|e| terr(dir, e))?;
    tok.with_post_processor(Some(post));
    tok.save(dir.join("tokenizer.json"), false)
        .map_err(|e| terr(dir, e))?;
    let cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 512,
        "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
    });
    write(
        &dir.join("tokenizer_config.json"),
        &serde_json::to_string_pretty(&cfg).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizers_round_trip() {
        let base = std::env::temp_dir().join(format!("fusebox-tok-{}", std::process::id()));
        let texts: Vec<String> = crate::synth::translate_dataset(1, 200)
            .into_iter()
            .flat_map(|(a, b)| [a, b])
            .collect();
        train_wordlevel_t5(&texts, 500, &base.join("wl")).unwrap();
        let t = Tokenizer::from_file(base.join("wl/tokenizer.json")).unwrap();
        let enc = t.encode(texts[0].as_str(), true).unwrap();
        assert_eq!(enc.get_ids().last(), Some(&1), "ends with </s>");
        assert!(!enc.get_ids().contains(&2), "no <unk> on training text");

        let qa = crate::synth::qa_dataset(1, 30, 5, 2, "t");
        let ctx: Vec<String> = qa["data"][0]["paragraphs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["context"].as_str().unwrap().to_string())
            .collect();
        train_wordpiece(&ctx, 400, false, &base.join("wp")).unwrap();
        let t = Tokenizer::from_file(base.join("wp/tokenizer.json")).unwrap();
        let enc = t
            .encode(("Where was Alice born?", ctx[0].as_str()), true)
            .unwrap();
        assert_eq!(enc.get_ids()[0], t.token_to_id("[CLS]").unwrap());
        assert!(enc.get_type_ids().contains(&1));
        let vocab = std::fs::read_to_string(base.join("wp/vocab.txt")).unwrap();
        assert_eq!(vocab.lines().next(), Some("[PAD]"));
        std::fs::remove_dir_all(&base).ok();
    }
}
