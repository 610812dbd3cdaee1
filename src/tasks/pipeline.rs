//! What transformers' `pipeline("summarization")` and `pipeline("translation")` (4.x, the
//! last versions that have them: transformers 5 removed both) do around `generate()`:
//! the input prefix and the generation settings they pass.
//!
//! From `Pipeline.__init__` and `Text2TextGenerationPipeline` (4.57):
//! 1. The pipeline's own defaults, `max_new_tokens 256` and `num_beams 4`, take every
//!    value of the model's generation configuration that differs from `GenerationConfig()`'s
//!    default and whose pipeline value is still that default (`_prepare_generation_config`
//!    with `use_model_defaults=True`). So a model's `num_beams` never replaces the
//!    pipeline's 4, and its `max_length` does apply.
//! 2. If `max_new_tokens` is still the pipeline's 256 and `max_length` is set to anything
//!    but 20, `max_new_tokens` is dropped so that `max_length` holds.
//! 3. `task_specific_params[task]` (for `"translation"`, the first key that starts with
//!    `translation`, as `pipeline()` picks it) updates the settings; its `prefix` replaces
//!    `config.json`'s `prefix`.
//! 4. Without a `pad_token_id`, the tokenizer's pad id is used.
//!
//! The model's generation configuration is `generation_config.json` when the directory has
//! one, else the generation fields of `config.json` (`GenerationConfig.from_model_config`).
//! Outputs are decoded with `skip_special_tokens=True` and no clean-up of spaces.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The two text-to-text pipelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineTask {
    Summarization,
    Translation,
}

impl PipelineTask {
    /// The pipeline's task name (`pipeline("summarization")`).
    pub fn name(self) -> &'static str {
        match self {
            PipelineTask::Summarization => "summarization",
            PipelineTask::Translation => "translation",
        }
    }

    /// The key of each output record: `[{"summary_text": ...}]`.
    pub fn output_key(self) -> &'static str {
        match self {
            PipelineTask::Summarization => "summary_text",
            PipelineTask::Translation => "translation_text",
        }
    }
}

/// What the pipeline adds around `generate()` for one model.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineSetup {
    /// Prepended to every input text.
    pub prefix: String,
    /// The generation settings, as `generation_config.json` would spell them.
    pub generation: Map<String, Value>,
    /// The `task_specific_params` entry applied, if any.
    pub task_params: Option<String>,
}

/// `GenerationConfig()`'s default for `key` (None: a field without one, or not ours).
fn global_default(key: &str) -> Value {
    match key {
        "max_length" => 20.into(),
        "min_length" | "no_repeat_ngram_size" | "encoder_no_repeat_ngram_size" => 0.into(),
        "num_beams" | "num_return_sequences" | "num_beam_groups" => 1.into(),
        "early_stopping" | "do_sample" | "renormalize_logits" | "remove_invalid_values" => {
            false.into()
        }
        "length_penalty" | "temperature" | "top_p" | "typical_p" | "repetition_penalty" => {
            1.0.into()
        }
        "top_k" => 50.into(),
        "use_cache" => true.into(),
        _ => Value::Null,
    }
}

/// Python's `==` on JSON values: `1 == 1.0`.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

/// Fields of a configuration that are metadata, not settings.
fn is_metadata(key: &str) -> bool {
    key.starts_with('_') || key == "transformers_version"
}

/// Steps 1 to 3 of the module doc, on the parsed files: `config` is config.json,
/// `model_generation` the model's generation configuration.
pub fn setup(
    config: &Value,
    model_generation: &Map<String, Value>,
    task: PipelineTask,
) -> Result<PipelineSetup> {
    let mut gen = Map::new();
    gen.insert("max_new_tokens".into(), 256.into());
    gen.insert("num_beams".into(), 4.into());
    for (key, value) in model_generation {
        if is_metadata(key) {
            continue;
        }
        let default = global_default(key);
        // Absent: still at GenerationConfig()'s default, as Python's getattr reads it.
        let ours = gen.get(key).cloned().unwrap_or_else(|| default.clone());
        if same(&ours, &default) && !same(value, &default) {
            gen.insert(key.clone(), value.clone());
        }
    }
    let max_length = gen.get("max_length").filter(|v| !v.is_null());
    if gen.get("max_new_tokens").and_then(Value::as_u64) == Some(256)
        && max_length.is_some_and(|m| !same(m, &20.into()))
    {
        gen.insert("max_new_tokens".into(), Value::Null);
    }
    let mut prefix = match config.get("prefix") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(Error::msg("config.json: field `prefix`: expected a string")),
    };
    let params = config.get("task_specific_params").filter(|v| !v.is_null());
    let mut task_params = None;
    if let Some(params) = params {
        let params = params.as_object().ok_or_else(|| {
            Error::msg("config.json: field `task_specific_params`: expected an object")
        })?;
        let key = match task {
            PipelineTask::Summarization => params
                .contains_key("summarization")
                .then_some("summarization".to_string()),
            PipelineTask::Translation => params
                .keys()
                .find(|k| k.starts_with("translation"))
                .cloned(),
        };
        if let Some(key) = key {
            let entry = params[&key].as_object().ok_or_else(|| {
                Error::msg(format!(
                    "config.json: field `task_specific_params.{key}`: expected an object"
                ))
            })?;
            for (k, v) in entry {
                if k == "prefix" {
                    prefix = v.as_str().map(str::to_string).ok_or_else(|| {
                        Error::msg(format!(
                            "config.json: field `task_specific_params.{key}.prefix`: expected \
                             a string"
                        ))
                    })?;
                } else {
                    gen.insert(k.clone(), v.clone());
                }
            }
            task_params = Some(key);
        }
    }
    Ok(PipelineSetup {
        prefix,
        generation: gen,
        task_params,
    })
}

/// The model's generation configuration as `from_pretrained` reads it: the whole of
/// `generation_config.json` when present, else config.json's fields that are not null.
pub fn model_generation(dir: &Path, config: &Value) -> Result<Map<String, Value>> {
    let path = dir.join("generation_config.json");
    if path.exists() {
        let text = crate::text::read_text(&path)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{}: invalid JSON: {e}", path.display())))?;
        if !v.is_object() {
            return Err(Error::msg(format!(
                "{}: expected a JSON object of generation settings",
                path.display()
            )));
        }
        return Ok(generation_fields(Some(&v), config));
    }
    Ok(generation_fields(None, config))
}

/// [`model_generation`] on parsed files: `file` is generation_config.json when present.
pub fn generation_fields(file: Option<&Value>, config: &Value) -> Map<String, Value> {
    if let Some(Value::Object(m)) = file {
        return m.clone();
    }
    config
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// With no `pad_token_id`, the tokenizer's (step 4).
pub fn fill_pad(setup: &mut PipelineSetup, tokenizer_pad: Option<i32>) {
    let missing = setup
        .generation
        .get("pad_token_id")
        .is_none_or(Value::is_null);
    if let (true, Some(pad)) = (missing, tokenizer_pad) {
        setup.generation.insert("pad_token_id".into(), pad.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn pipeline_defaults_yield_to_model_values_but_keep_their_own() {
        // bart-large-cnn's shape: max_length set, num_beams 4, summarization params.
        let config = json!({
            "prefix": " ",
            "task_specific_params": {"summarization": {
                "early_stopping": true, "length_penalty": 2.0, "max_length": 142,
                "min_length": 56, "no_repeat_ngram_size": 3, "num_beams": 4}}
        });
        let model = obj(
            json!({"max_length": 142, "num_beams": 6, "length_penalty": 2.0,
            "forced_bos_token_id": 0, "transformers_version": "4.27.0"}),
        );
        let s = setup(&config, &model, PipelineTask::Summarization).unwrap();
        assert_eq!(s.prefix, " ");
        assert_eq!(s.task_params.as_deref(), Some("summarization"));
        let g = &s.generation;
        // num_beams: the pipeline's 4 is not a default, so the model's 6 never applied;
        // then task_specific_params set 4.
        assert_eq!(g["num_beams"], json!(4));
        assert_eq!(g["max_new_tokens"], Value::Null);
        assert_eq!(g["max_length"], json!(142));
        assert_eq!(g["min_length"], json!(56));
        assert_eq!(g["forced_bos_token_id"], json!(0));
        assert!(!g.contains_key("transformers_version"));
    }

    #[test]
    fn translation_picks_the_first_translation_params_and_their_prefix() {
        let config = json!({
            "prefix": "ignored: ",
            "task_specific_params": {
                "summarization": {"prefix": "summarize: "},
                "translation_en_to_de": {"prefix": "translate English to German: ",
                    "max_length": 300, "num_beams": 4},
                "translation_en_to_fr": {"prefix": "translate English to French: "}
            }
        });
        let model = obj(json!({"decoder_start_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 0}));
        let s = setup(&config, &model, PipelineTask::Translation).unwrap();
        assert_eq!(s.prefix, "translate English to German: ");
        assert_eq!(s.task_params.as_deref(), Some("translation_en_to_de"));
        // max_new_tokens stays 256: max_length came from the task parameters, after the
        // check that drops it.
        assert_eq!(s.generation["max_new_tokens"], json!(256));
        assert_eq!(s.generation["max_length"], json!(300));
        assert_eq!(s.generation["eos_token_id"], json!(1));
    }

    #[test]
    fn a_default_valued_model_setting_changes_nothing_and_pad_comes_last() {
        let model = obj(json!({"max_length": 20, "length_penalty": 1, "num_beams": 1}));
        let mut s = setup(&json!({}), &model, PipelineTask::Translation).unwrap();
        assert_eq!(s.prefix, "");
        assert_eq!(s.generation["max_new_tokens"], json!(256));
        assert_eq!(s.generation["num_beams"], json!(4));
        assert!(!s.generation.contains_key("max_length"));
        fill_pad(&mut s, Some(7));
        assert_eq!(s.generation["pad_token_id"], json!(7));
        let mut s2 = setup(
            &json!({}),
            &obj(json!({"pad_token_id": 3})),
            PipelineTask::Translation,
        )
        .unwrap();
        fill_pad(&mut s2, Some(7));
        assert_eq!(s2.generation["pad_token_id"], json!(3));
    }

    /// transformers 4.57's pipelines on the cases of tools/fixtures/make_pipeline_gen_refs.py.
    #[test]
    fn matches_transformers_pipelines() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/pipeline_generation_hf.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let refs: Value = serde_json::from_str(&text).unwrap();
        let fields: Vec<&str> = refs["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let cases = refs["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 7);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let task = match case["task"].as_str().unwrap() {
                "summarization" => PipelineTask::Summarization,
                _ => PipelineTask::Translation,
            };
            let gen_file = Some(&case["generation_config"]).filter(|v| !v.is_null());
            let model = generation_fields(gen_file, &case["config"]);
            let mut s = setup(&case["config"], &model, task).unwrap();
            fill_pad(
                &mut s,
                case["tokenizer_pad_token_id"].as_i64().map(|p| p as i32),
            );
            assert_eq!(s.prefix, case["prefix"].as_str().unwrap(), "{name}: prefix");
            for f in &fields {
                let ours = s
                    .generation
                    .get(*f)
                    .filter(|v| !v.is_null())
                    .cloned()
                    .unwrap_or_else(|| global_default(f));
                let want = &case["expected"][*f];
                assert!(
                    same(&ours, want),
                    "{name}: {f}: ours {ours}, transformers {want}"
                );
            }
        }
    }

    #[test]
    fn malformed_task_params_are_named() {
        let config = json!({"task_specific_params": {"summarization": 3}});
        let e = setup(&config, &Map::new(), PipelineTask::Summarization).unwrap_err();
        assert!(
            e.to_string().contains("task_specific_params.summarization"),
            "{e}"
        );
        let e = setup(
            &json!({"prefix": 1}),
            &Map::new(),
            PipelineTask::Summarization,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`prefix`"), "{e}");
    }
}
