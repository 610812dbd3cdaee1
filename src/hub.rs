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
    for f in &MODEL_FILES[2..] {
        // Optional files: absent ones are normal (a model has tokenizer.json or vocab.txt).
        let _ = repo.get(f);
    }
    cfg.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::msg(format!("{spec}: odd cache path {}", cfg.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

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
