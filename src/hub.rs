//! Model resolution: a local directory, else an entry of the Hugging Face cache, else a
//! download with hf-hub. Offline and not cached is a clear error saying what to fetch
//! and where to put it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Files a model directory may hold; `config.json` and the weights are required.
pub const MODEL_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "generation_config.json",
    "spiece.model",
];

fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
            .unwrap_or(false)
    })
}

/// Resolve `spec` (a directory or a hub id like `distilbert-base-cased`) to a local
/// directory holding at least `config.json` and `model.safetensors`.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        if !p.join("config.json").is_file() {
            return Err(Error::msg(format!(
                "{}: not a model directory (no config.json)",
                p.display()
            )));
        }
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        return Err(Error::msg(format!(
            "{spec}: expected a model directory (config.json, model.safetensors, tokenizer files) or a hub id"
        )));
    }
    // The HF cache (HF_HOME / HF_HUB_CACHE / ~/.cache/huggingface/hub).
    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(spec.to_string());
    if let (Some(cfg), Some(_)) = (repo.get("config.json"), repo.get("model.safetensors")) {
        if let Some(dir) = cfg.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    let how = format!(
        "download it where there is network access, e.g. `huggingface-cli download {spec} \
         config.json model.safetensors tokenizer.json tokenizer_config.json vocab.txt \
         --local-dir models/{spec}`, copy that directory here and pass --model models/{spec}"
    );
    if offline() {
        return Err(Error::msg(format!(
            "{spec}: not a local directory and not in the Hugging Face cache ({}), and \
             HF_HUB_OFFLINE is set; {how}",
            cache.path().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| Error::msg(format!("{spec}: cannot start the hub client ({e}); {how}")))?;
    let repo = api.model(spec.to_string());
    let cfg = repo.get("config.json").map_err(|e| {
        Error::msg(format!(
            "{spec}: not a local directory, not in the cache ({}), and the download failed ({e}); {how}",
            cache.path().display()
        ))
    })?;
    repo.get("model.safetensors").map_err(|e| {
        Error::msg(format!(
            "{spec}: config.json downloaded but model.safetensors did not ({e}); fusebox reads \
             safetensors weights only; {how}"
        ))
    })?;
    // Optional files: one the repository does not have is normal (a model has
    // tokenizer.json or vocab.txt), so only the listed ones are fetched, and a failure to
    // fetch one of those is an error: a missing tokenizer_config.json, say, would change
    // the tokenization (do_lower_case) without a word.
    let info = repo.info().map_err(|e| {
        Error::msg(format!(
            "{spec}: config.json and model.safetensors downloaded, but the repository's file \
             list could not be read ({e}), so its tokenizer files were not fetched; {how}"
        ))
    })?;
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    for f in optional_files(&listed) {
        repo.get(f).map_err(|e| {
            Error::msg(format!(
                "{spec}: {f} is in the repository but its download failed ({e}); {how}"
            ))
        })?;
    }
    cfg.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::msg(format!("{spec}: odd cache path {}", cfg.display())))
}

/// The optional files of [`MODEL_FILES`] (all but config.json and the weights) that a
/// repository listing `listed` holds: the ones to fetch. Absent ones are skipped.
fn optional_files<'a>(listed: &[&str]) -> Vec<&'a str> {
    MODEL_FILES[2..]
        .iter()
        .copied()
        .filter(|f| listed.contains(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_optional_files_a_repository_has_are_fetched() {
        // distilbert-base-cased's listing: no special_tokens_map.json, no spiece.model;
        // files fusebox does not read (other weight formats) are not fetched.
        let listed = [
            ".gitattributes",
            "README.md",
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
        ];
        assert_eq!(
            optional_files(&listed),
            ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]
        );
        // config.json and the weights are fetched (and their errors reported) before.
        assert!(optional_files(&["config.json", "model.safetensors"]).is_empty());
        let t5 = [
            "config.json",
            "generation_config.json",
            "spiece.model",
            "tokenizer.json",
        ];
        assert_eq!(
            optional_files(&t5),
            ["tokenizer.json", "generation_config.json", "spiece.model"]
        );
    }

    #[test]
    fn offline_and_uncached_is_a_clear_error() {
        std::env::set_var("HF_HUB_OFFLINE", "1");
        std::env::set_var(
            "HF_HOME",
            std::env::temp_dir().join("fusebox-empty-hf-home"),
        );
        let err = resolve_model("no-such-org/no-such-model")
            .unwrap_err()
            .to_string();
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
        assert!(
            err.contains("huggingface-cli download no-such-org/no-such-model"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_without_config_is_rejected() {
        let d = std::env::temp_dir().join("fusebox-hub-test-empty");
        std::fs::create_dir_all(&d).unwrap();
        let err = resolve_model(d.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("no config.json"), "{err}");
    }
}
