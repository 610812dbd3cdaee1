//! `tokenizer_config.json`, the settings transformers saves beside a tokenizer's files:
//! special-token names (`"</s>"` or `{"content": "</s>", ...}`) and flags such as
//! `separate_vocabs`, `add_prefix_space` or `clean_up_tokenization_spaces`. One reader
//! for every tokenizer family; a directory without the file reads as an empty config.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

pub type ConfigMap = serde_json::Map<String, Value>;

/// A special-token entry: a string or `{"content": ...}`.
pub(crate) fn token_name(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A directory's tokenizer_config.json as a JSON object.
#[derive(Clone, Debug)]
pub struct TokenizerConfig {
    path: PathBuf,
    exists: bool,
    map: ConfigMap,
}

impl TokenizerConfig {
    /// `dir/tokenizer_config.json`; empty when the file is not there.
    pub fn read(dir: &Path) -> Result<TokenizerConfig> {
        let path = dir.join("tokenizer_config.json");
        if !path.is_file() {
            return Ok(TokenizerConfig {
                path,
                exists: false,
                map: ConfigMap::new(),
            });
        }
        let text = crate::text::read_text(&path)?;
        let map = serde_json::from_str(&text).map_err(|e| {
            Error::msg(format!(
                "{}: expected a JSON object of tokenizer settings: {e}",
                path.display()
            ))
        })?;
        Ok(TokenizerConfig {
            path,
            exists: true,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory has the file.
    pub fn exists(&self) -> bool {
        self.exists
    }

    pub fn map(&self) -> &ConfigMap {
        &self.map
    }

    /// A true/false setting: absent or null is `default`; another value is an error
    /// naming the file and the key.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::msg(format!(
                    "{}: {key} is {v}, expected true or false",
                    self.path.display()
                ))
            }),
        }
    }

    /// The special token `key` names (`eos_token`, `pad_token`, ...), else `default`.
    pub fn token(&self, key: &str, default: &str) -> String {
        token_name(self.map.get(key)).unwrap_or_else(|| default.to_string())
    }

    /// The tokens of a list setting (`additional_special_tokens`); none when absent.
    pub fn token_list(&self, key: &str) -> Vec<String> {
        self.map
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| token_name(Some(v))).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flags_tokens_and_says_which_file_is_wrong() {
        let dir = std::env::temp_dir().join(format!("fusebox-tokcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let absent = TokenizerConfig::read(&dir).unwrap();
        assert!(!absent.exists() && absent.flag("separate_vocabs", true).unwrap());
        let p = dir.join("tokenizer_config.json");
        std::fs::write(
            &p,
            r#"{"separate_vocabs": true, "add_prefix_space": "yes", "pad_token": {"content": "<pad>"},
                "eos_token": "</s>", "additional_special_tokens": ["<a>", {"content": "<b>"}, 3]}"#,
        )
        .unwrap();
        let c = TokenizerConfig::read(&dir).unwrap();
        assert!(c.exists() && c.flag("separate_vocabs", false).unwrap());
        let e = c.flag("add_prefix_space", false).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains("add_prefix_space"),
            "{e}"
        );
        assert_eq!(c.token("pad_token", "x"), "<pad>");
        assert_eq!(c.token("eos_token", "x"), "</s>");
        assert_eq!(c.token("unk_token", "<unk>"), "<unk>");
        assert_eq!(c.token_list("additional_special_tokens"), ["<a>", "<b>"]);
        std::fs::write(&p, "[1, 2]").unwrap();
        let e = TokenizerConfig::read(&dir).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer_config.json") && e.contains("JSON object"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
