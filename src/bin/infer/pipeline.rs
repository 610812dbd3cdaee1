//! `infer summarize` and `infer translate`: transformers' `pipeline("summarization")` and
//! `pipeline("translation...")` (4.x, the last versions that have them) on an
//! encoder-decoder LM. The input prefix and generation settings are the pipeline's
//! (`fusebox::tasks::pipeline`: its defaults, 4 beams and 256 new tokens, the model's
//! generation configuration, then config.json's `task_specific_params` entry for the
//! task, whose `prefix` is prepended to every input); each generate() flag given
//! overrides one of those settings, as a keyword argument to the pipeline call does.
//! Outputs are decoded with skip_special_tokens. As the pipeline does not cut its inputs,
//! neither do these unless --max-source-length is given.
//!
//! `translate --task translation_XX_to_YY` (transformers' task name, e.g.
//! `translation_en_to_fr` for T5) applies the `task_specific_params` entry of that name;
//! without --task, "translation" takes the first `translation*` entry, as `pipeline()`
//! does. One refusal transformers does not make: a model whose config.json has
//! translation entries but none of the name asked for (a typo would otherwise translate
//! without its prefix); a model with no translation entries (Marian) takes any pair.
//!
//! Output: one line per input line; with `--json` the pipeline's result for that input,
//! `[{"summary_text": ...}]` / `[{"translation_text": ...}]` (one record per returned
//! sequence, best first), else the text.

use anyhow::{anyhow, bail, Result};
use clap::Args as ClapArgs;
use serde_json::{json, Value};

use fusebox::tasks::generate::GenerateConfig;
use fusebox::tasks::pipeline::{
    fill_pad, model_generation, setup_named, task_param_names, PipelineTask,
};

use crate::text2text::{Text2Text, Text2TextArgs};

#[derive(ClapArgs, Debug)]
pub(crate) struct SummarizeArgs {
    #[command(flatten)]
    common: Text2TextArgs,
}

#[derive(ClapArgs, Debug)]
pub(crate) struct TranslateArgs {
    #[command(flatten)]
    common: Text2TextArgs,
    /// transformers' task name: translation_XX_to_YY applies config.json's
    /// task_specific_params entry of that name (T5: translation_en_to_de, _en_to_fr,
    /// _en_to_ro); "translation" the first translation_* entry.
    #[arg(long, default_value = "translation")]
    task: String,
    /// A multilingual Marian model's target language: its `>>xx<<` code (`ind` or
    /// `>>ind<<`) goes in front of every input; a code the vocabulary lacks is refused.
    #[arg(long)]
    target_language: Option<String>,
}

pub(crate) fn summarize(a: SummarizeArgs) -> Result<()> {
    run(&a.common, "summarization", "summarize", None)
}

pub(crate) fn translate(a: TranslateArgs) -> Result<()> {
    let task = PipelineTask::from_name(&a.task).map_err(|e| anyhow!("--task {}: {e}", a.task))?;
    if task != PipelineTask::Translation {
        bail!(
            "--task {}: infer translate runs a translation task (translation or \
             translation_XX_to_YY); summarization is `infer summarize`",
            a.task
        );
    }
    run(
        &a.common,
        &a.task,
        "translate",
        a.target_language.as_deref(),
    )
}

fn run(
    a: &Text2TextArgs,
    task_name: &str,
    cmd: &'static str,
    target_language: Option<&str>,
) -> Result<()> {
    let task = PipelineTask::from_name(task_name)?;
    let mut t = Text2Text::load(a, cmd)?;
    if let Some(code) = target_language {
        t.tok = t
            .tok
            .clone()
            .with_target_language(code)
            .map_err(|e| anyhow!("--target-language: {e}"))?;
    }
    let cfg_path = a.model.join("config.json");
    let entries = task_param_names(&t.config);
    let translations: Vec<&str> = entries
        .iter()
        .map(String::as_str)
        .filter(|k| k.starts_with("translation"))
        .collect();
    if task_name.starts_with("translation_")
        && !translations.is_empty()
        && !translations.contains(&task_name)
    {
        bail!(
            "--task {task_name}: {}'s task_specific_params has no entry {task_name:?}; its \
             translation entries: {}",
            cfg_path.display(),
            translations.join(", ")
        );
    }
    let model_gen = model_generation(&a.model, &t.config)?;
    let mut s = setup_named(&t.config, &model_gen, task_name)
        .map_err(|e| anyhow!("{}: {e}", a.model.display()))?;
    fill_pad(&mut s, Some(t.tok.pad_id()));
    let gen_file = a.model.join("generation_config.json");
    let source = match gen_file.is_file() {
        true => gen_file.display().to_string(),
        false => cfg_path.display().to_string(),
    };
    let params = match &s.task_params {
        Some(k) => format!(" and task_specific_params.{k}"),
        None => String::new(),
    };
    let origin = format!(
        "the {} pipeline's settings from {source}{params}",
        task.name()
    );
    // The special ids come from the model; the pipeline's settings overlay them.
    let base = GenerateConfig {
        origin: String::new(),
        ..GenerateConfig::for_model(t.model.as_ref())
    }
    .from_model_config(&Value::Object(s.generation.clone()), &origin)?;
    let cfg = t.finish(a.gen.overlay(&base, "the pipeline's", cmd)?)?;
    let key = task.output_key();
    t.run_inputs(a, &s.prefix, a.max_source_length, &cfg, |hyps| {
        hyps.into_iter().map(|h| json!({ key: h.text })).collect()
    })
}
