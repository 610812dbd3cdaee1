//! Tokenizers trained from scratch for the built-in datasets, with the `tokenizers`
//! crate, saved in the layout transformers loads (`tokenizer.json`,
//! `tokenizer_config.json`, and `vocab.txt` for WordPiece).
//!
//! - BERT-style WordPiece (`[PAD]` = 0, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`, BERT
//!   normaliser and pre-tokenizer, `[CLS] A [SEP] B [SEP]` with type ids) for QA.
//! - T5-style word-level (`<pad>` = 0, `</s>` = 1, `<unk>` = 2, `</s>` appended) for the
//!   seq2seq tasks, whose closed vocabularies need no sub-words.
//!
//! Both are deterministic: the same texts give the same files in every run, so a seed
//! gives the same model. The `tokenizers` trainers are not (their hash maps are keyed at
//! random per process: the WordPiece trainer's merges break ties in that order, so even
//! the token set varied, and both hand out ids in that order). So the vocabularies are
//! built here: the words of the normalised, pre-tokenized texts by count (ties by text),
//! for WordPiece plus each character alone and as a `##` continuation so unseen words
//! still split into pieces; ids in a canonical order (special tokens first, then every
//! other token sorted; WordPiece and WordLevel look tokens up by text, so the order
//! changes no tokenization).

use std::path::Path;

use serde_json::json;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer, Tokenizer,
};

use crate::error::{Error, Result};

/// `vocab` renumbered: `specials` first, in their order, then the rest sorted.
fn canonical_vocab(
    vocab: std::collections::HashMap<String, u32>,
    specials: &[&str],
) -> ahash::AHashMap<String, u32> {
    let mut rest: Vec<String> = vocab
        .into_keys()
        .filter(|t| !specials.contains(&t.as_str()))
        .collect();
    rest.sort();
    specials
        .iter()
        .map(|s| s.to_string())
        .chain(rest)
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect()
}

fn terr(dir: &Path, e: impl std::fmt::Display) -> Error {
    Error::msg(format!("{}: tokenizer training: {e}", dir.display()))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Train a WordPiece vocabulary of at most `vocab_size` on `texts` and save it to `dir`.
/// Register `specials` as special tokens (already ids 0.. in the model's vocabulary).
fn add_specials(tok: &mut Tokenizer, specials: &[&str], dir: &Path) -> Result<()> {
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(added).map_err(|e| terr(dir, e))?;
    Ok(())
}

/// Words of `texts` after `norm` (if any) and `pre`, with their counts.
fn count_words(
    texts: &[String],
    norm: Option<&dyn Normalizer>,
    pre: &dyn PreTokenizer,
    dir: &Path,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut words: std::collections::BTreeMap<String, u64> = Default::default();
    for t in texts {
        let mut n = NormalizedString::from(t.as_str());
        if let Some(norm) = norm {
            norm.normalize(&mut n).map_err(|e| terr(dir, e))?;
        }
        let mut p = PreTokenizedString::from(n);
        pre.pre_tokenize(&mut p).map_err(|e| terr(dir, e))?;
        for (w, _, _) in p.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *words.entry(w.to_string()).or_default() += 1;
        }
    }
    Ok(words)
}

/// `vocab` followed by the words by count (ties by text), skipping any already in it,
/// while the total stays within `size`; then ids in canonical order.
fn with_ranked_words(
    mut vocab: Vec<String>,
    words: &std::collections::BTreeMap<String, u64>,
    size: usize,
    specials: &[&str],
) -> ahash::AHashMap<String, u32> {
    let mut have: std::collections::HashSet<String> = vocab.iter().cloned().collect();
    let mut ranked: Vec<(&String, &u64)> = words.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    for (w, _) in ranked {
        if vocab.len() >= size {
            break;
        }
        if have.insert(w.clone()) {
            vocab.push(w.clone());
        }
    }
    let ids = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    canonical_vocab(ids, specials)
}

pub fn train_wordpiece(
    texts: &[String],
    vocab_size: usize,
    lowercase: bool,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut tok = Tokenizer::new(WordPiece::default());
    let norm = BertNormalizer::new(true, true, None, lowercase);
    tok.with_normalizer(Some(norm)).map_err(|e| terr(dir, e))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    // Specials, every character alone and as `##c` (so unseen words split into
    // pieces), then whole words.
    let words = count_words(texts, Some(&norm), &BertPreTokenizer, dir)?;
    let chars: std::collections::BTreeSet<char> = words.keys().flat_map(|w| w.chars()).collect();
    let mut base: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    for c in chars {
        base.push(c.to_string());
        base.push(format!("##{c}"));
    }
    let model = WordPiece::builder()
        .vocab(with_ranked_words(base, &words, vocab_size, &specials))
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| terr(dir, e))?;
    tok.with_model(model);
    add_specials(&mut tok, &specials, dir)?;
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
    // What WordLevelTrainer keeps (words by count up to the size), in a fixed order.
    let words = count_words(texts, None, &Whitespace {}, dir)?;
    let base = specials.iter().map(|s| s.to_string()).collect();
    let model = WordLevel::builder()
        .vocab(with_ranked_words(base, &words, vocab_size, &specials))
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| terr(dir, e))?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    add_specials(&mut tok, &specials, dir)?;
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
        let texts: Vec<String> = crate::data::synth::translate_dataset(1, 200)
            .into_iter()
            .flat_map(|(a, b)| [a, b])
            .collect();
        train_wordlevel_t5(&texts, 500, &base.join("wl")).unwrap();
        let t = Tokenizer::from_file(base.join("wl/tokenizer.json")).unwrap();
        let enc = t.encode(texts[0].as_str(), true).unwrap();
        assert_eq!(enc.get_ids().last(), Some(&1), "ends with </s>");
        assert!(!enc.get_ids().contains(&2), "no <unk> on training text");

        let qa = crate::data::synth::qa_dataset(1, 30, 5, 2, "t");
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

    /// The same texts give the same ids in every run (the trainers' own id order is
    /// hash-map order, different each time), and the files match byte for byte.
    #[test]
    fn training_twice_gives_the_same_ids() {
        let base = std::env::temp_dir().join(format!("fusebox-tokdet-{}", std::process::id()));
        let qa = crate::data::synth::qa_dataset(3, 60, 2, 2, "t");
        let mut texts: Vec<String> = Vec::new();
        for p in qa["data"][0]["paragraphs"].as_array().unwrap() {
            texts.push(p["context"].as_str().unwrap().to_string());
            for q in p["qas"].as_array().unwrap() {
                texts.push(q["question"].as_str().unwrap().to_string());
            }
        }
        let read = |d: &str, f: &str| std::fs::read_to_string(base.join(d).join(f)).unwrap();
        for run in ["a", "b", "c"] {
            train_wordpiece(&texts, 5000, false, &base.join(format!("wp{run}"))).unwrap();
            train_wordlevel_t5(&texts, 5000, &base.join(format!("wl{run}"))).unwrap();
        }
        for run in ["b", "c"] {
            for f in ["vocab.txt", "tokenizer.json"] {
                assert_eq!(
                    read("wpa", f),
                    read(&format!("wp{run}"), f),
                    "wordpiece {f}"
                );
            }
            let wl = read(&format!("wl{run}"), "tokenizer.json");
            assert_eq!(read("wla", "tokenizer.json"), wl, "wordlevel");
        }
        let t = Tokenizer::from_file(base.join("wpa/tokenizer.json")).unwrap();
        assert_eq!(t.token_to_id("[PAD]"), Some(0));
        assert!(t
            .encode(texts[0].as_str(), false)
            .unwrap()
            .get_ids()
            .iter()
            .all(|&i| i != 1));
        std::fs::remove_dir_all(&base).ok();
    }
}
