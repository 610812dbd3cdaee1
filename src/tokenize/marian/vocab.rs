//! Marian's `vocab.json` / `target_vocab.json` (token → id, as marian-vocab and
//! convert_marian_to_pytorch.py write them) and how well one covers a SentencePiece
//! model's pieces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tokenize::spm::{PieceType, SentencePiece};

/// Above this share of missing pieces a vocab.json is not the SentencePiece model's.
const MAX_MISSING_SHARE: f64 = 0.10;

/// A vocab.json: token → id and back.
#[derive(Clone, Debug)]
pub struct Vocab {
    path: PathBuf,
    ids: HashMap<String, u32>,
    tokens: HashMap<u32, String>,
}

impl Vocab {
    pub fn load(path: &Path) -> Result<Vocab> {
        let text = crate::text::read_text(path)?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| {
                Error::msg(format!(
                    "{}: expected a JSON object of token → id: {e}",
                    path.display()
                ))
            })?;
        let mut ids = HashMap::with_capacity(map.len());
        let mut tokens = HashMap::with_capacity(map.len());
        for (tok, v) in map {
            let id = v
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    Error::msg(format!(
                        "{}: the id of {tok:?} is {v}, expected a non-negative integer",
                        path.display()
                    ))
                })?;
            if let Some(other) = tokens.insert(id, tok.clone()) {
                return Err(Error::msg(format!(
                    "{}: id {id} is given to both {other:?} and {tok:?}",
                    path.display()
                )));
            }
            ids.insert(tok, id);
        }
        Ok(Vocab {
            path: path.to_path_buf(),
            ids,
            tokens,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(&id).map(String::as_str)
    }

    /// The `>>xx<<` entries, by id.
    pub(super) fn language_codes(&self) -> Vec<&str> {
        let mut codes: Vec<(&str, u32)> = self
            .ids
            .iter()
            .filter(|(t, _)| is_language_code(t))
            .map(|(t, &i)| (t.as_str(), i))
            .collect();
        codes.sort_by_key(|&(_, i)| i);
        codes.into_iter().map(|(t, _)| t).collect()
    }
}

pub(super) fn is_language_code(t: &str) -> bool {
    t.len() > 4 && t.starts_with(">>") && t.ends_with("<<")
}

/// Pieces of a SentencePiece model that a vocabulary lacks.
#[derive(Clone, Debug)]
pub struct Coverage {
    pub spm: PathBuf,
    pub vocab: PathBuf,
    /// The model's NORMAL and USER_DEFINED pieces.
    pub total: usize,
    pub missing: Vec<String>,
}

/// Which of `sp`'s pieces `vocab` lacks; too many is an error naming both files.
pub(super) fn covered(sp: &SentencePiece, vocab: &Vocab) -> Result<Coverage> {
    let pieces: Vec<&str> = sp
        .pieces()
        .iter()
        .filter(|p| matches!(p.kind, PieceType::Normal | PieceType::UserDefined))
        .map(|p| p.piece.as_str())
        .collect();
    let missing: Vec<String> = pieces
        .iter()
        .filter(|p| vocab.id(p).is_none())
        .map(|p| p.to_string())
        .collect();
    if missing.len() as f64 > MAX_MISSING_SHARE * pieces.len() as f64 {
        let first: Vec<String> = missing.iter().take(8).map(|p| format!("{p:?}")).collect();
        return Err(Error::msg(format!(
            "{}: does not cover the pieces of {}: {} of its {} pieces are missing (first: \
             {}); this is not that SentencePiece model's vocabulary",
            vocab.path().display(),
            sp.path().display(),
            missing.len(),
            pieces.len(),
            first.join(", ")
        )));
    }
    Ok(Coverage {
        spm: sp.path().to_path_buf(),
        vocab: vocab.path().to_path_buf(),
        total: pieces.len(),
        missing,
    })
}
