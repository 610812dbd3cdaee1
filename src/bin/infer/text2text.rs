//! What `infer generate`, `summarize` and `translate` share (transformers'
//! `Text2TextGenerationPipeline` around `generate()`): the model directory, the inputs
//! (`--input`, or `--file` with one input per line), generate()'s flags, loading an
//! encoder-decoder LM through [`load_seq2seq_lm`] with its tokenizer, keeping generation
//! within the model's length limit, and the loop that generates one output per input
//! and prints it: a JSON value per line with `--json`, else the text (one line per
//! returned sequence).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args as ClapArgs};
use serde_json::Value;

use fusebox::models::auto::load_seq2seq_lm;
use fusebox::models::hf::config_text;
use fusebox::models::seq2seq::Seq2SeqLm;
use fusebox::tasks::generate::{generate, GenerateConfig};
use fusebox::tensor::Tensor;
use fusebox::tokenize::seq2seq::Seq2SeqTokenizer;
use fusebox::{DType, Device};

use crate::gen_flags::GenFlags;

#[derive(ClapArgs, Debug)]
#[command(group(ArgGroup::new("inputs").required(true).args(["input", "file"])))]
pub(crate) struct Text2TextArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// One input text.
    #[arg(long, conflicts_with = "file")]
    input: Option<String>,
    /// One input per line (a blank line gives a blank output, so outputs pair up with
    /// the lines).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Inputs longer than this many tokens are cut, eos kept (generate: 512 when not
    /// given; summarize and translate: not cut, as the pipelines do not).
    #[arg(long)]
    pub(crate) max_source_length: Option<usize>,
    /// One JSON value per input line.
    #[arg(long)]
    pub(crate) json: bool,
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    pub(crate) gen: GenFlags,
}

/// One generated sequence.
pub(crate) struct Hypothesis {
    /// Decoded with skip_special_tokens, trimmed.
    pub(crate) text: String,
    /// The new tokens, up to and including the first eos.
    pub(crate) tokens: Vec<i32>,
    /// HF's `sequences_scores` (beam search only).
    pub(crate) score: Option<f32>,
}

/// A loaded model and tokenizer, for one command.
pub(crate) struct Text2Text {
    pub(crate) model: Box<dyn Seq2SeqLm>,
    pub(crate) tok: Seq2SeqTokenizer,
    /// config.json, as read.
    pub(crate) config: Value,
    device: Device,
    dir: PathBuf,
    /// The command, for messages on stderr ("generate").
    cmd: &'static str,
}

impl Text2Text {
    /// Load `a.model` and check the flags against it.
    pub(crate) fn load(a: &Text2TextArgs, cmd: &'static str) -> Result<Text2Text> {
        let device = Device::parse(&a.device)?.resolve();
        let (cfg_path, text) = config_text(&a.model)?;
        let config: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", cfg_path.display()))?;
        let model = load_seq2seq_lm(&a.model, device, DType::F32)?;
        let tok = Seq2SeqTokenizer::from_dir(&a.model)?;
        let (vocab, model_vocab) = (tok.vocab_size(), model.vocab_size());
        if vocab > model_vocab {
            bail!(
                "{}: the tokenizer has {vocab} tokens but {} says vocab_size {model_vocab}: the tokenizer does not belong to this model",
                a.model.display(),
                cfg_path.display(),
            );
        }
        a.gen.check(model_vocab, &cfg_path)?;
        if a.max_source_length == Some(0) {
            bail!("--max-source-length must be at least 1 (input tokens kept, eos included)");
        }
        Ok(Text2Text {
            model,
            tok,
            config,
            device,
            dir: a.model.clone(),
            cmd,
        })
    }

    /// `cfg` kept within the model's length limit, then checked as generate() would.
    pub(crate) fn finish(&self, mut cfg: GenerateConfig) -> Result<GenerateConfig> {
        self.cap_length(&mut cfg)?;
        cfg.validate(self.model.vocab_size())?;
        Ok(cfg)
    }

    /// Generate for every input of `a` (`prefix` prepended to each) and print each
    /// input's sequences: `to_json(sequences)` with `--json`, else their texts. A blank
    /// input gives blank sequences without running the model.
    pub(crate) fn run_inputs(
        &self,
        a: &Text2TextArgs,
        prefix: &str,
        max_source_length: Option<usize>,
        cfg: &GenerateConfig,
        to_json: impl Fn(Vec<Hypothesis>) -> Value,
    ) -> Result<()> {
        let inputs: Vec<String> = match (&a.input, &a.file) {
            (Some(t), _) => vec![t.clone()],
            (None, Some(f)) => {
                let lines: Vec<String> = fusebox::text::read_text(f)?
                    .lines()
                    .map(str::to_string)
                    .collect();
                if lines.is_empty() {
                    bail!("{}: empty: --file expects one input per line", f.display());
                }
                lines
            }
            (None, None) => bail!("give --input TEXT or --file F"),
        };
        for text in &inputs {
            let hyps = if text.trim().is_empty() {
                let blank = || Hypothesis {
                    text: String::new(),
                    tokens: Vec::new(),
                    score: None,
                };
                (0..cfg.num_return_sequences).map(|_| blank()).collect()
            } else {
                self.generate(&format!("{prefix}{text}"), max_source_length, cfg)?
            };
            if a.json {
                println!("{}", to_json(hyps));
            } else {
                for h in hyps {
                    println!("{}", h.text);
                }
            }
        }
        Ok(())
    }

    /// The sequences generate() returns for one source text, best first.
    fn generate(
        &self,
        src: &str,
        max_source_length: Option<usize>,
        cfg: &GenerateConfig,
    ) -> Result<Vec<Hypothesis>> {
        let ids = self.tok.encode_source(src, max_source_length)?;
        let n = ids.len();
        let input = Tensor::from_i32(ids, [1, n], self.device)?;
        // The tokenizer's mask, as the pipeline passes it: every input token attended.
        let mask = Tensor::from_i32(vec![1; n], [1, n], self.device)?;
        let g = generate(self.model.as_ref(), &input, Some(&mask), cfg)?;
        let pad = cfg.pad_token_id.unwrap_or(0);
        let mut out = Vec::with_capacity(g.sequences.len());
        for (i, seq) in g.sequences.iter().enumerate() {
            // Drop the decoder start token; stop after the first eos (the rest is padding).
            let mut tokens: Vec<i32> = Vec::new();
            for &t in seq.iter().skip(1) {
                tokens.push(t);
                if cfg.eos_token_id.contains(&t) {
                    break;
                }
            }
            let plain: Vec<i32> = tokens.iter().copied().filter(|&t| t != pad).collect();
            let text = self.tok.decode(&plain, true)?;
            out.push(Hypothesis {
                text: text.trim().to_string(),
                tokens,
                score: g.scores.as_ref().and_then(|s| s.get(i)).copied(),
            });
        }
        Ok(out)
    }

    /// Keep generation within the model's length limit, so a model that never emits eos
    /// stops: its position table (`max_position_embeddings`), or for T5, whose relative
    /// positions have no table, config.json's `n_positions` (the checkpoints were
    /// trained and are documented to that length; 512 when absent) or a larger
    /// `max_length` of the model's own generation configuration. A request beyond it is
    /// capped, and stderr says so.
    fn cap_length(&self, cfg: &mut GenerateConfig) -> Result<()> {
        let model = self.model.as_ref();
        let cfg_path = self.dir.join("config.json");
        let (cap, why) = match model.max_position_embeddings() {
            Some(p) => (
                p,
                format!("max_position_embeddings in {}", cfg_path.display()),
            ),
            None => t5_length_limit(model, &self.config, &cfg_path),
        };
        if cap < 2 {
            bail!("{why} is {cap}: no room for a generated token");
        }
        let asked = cfg.total_max_length(model.max_position_embeddings());
        if asked > cap {
            eprintln!(
                "infer {}: {} new tokens asked for; capped at {} ({why}): a model that never emits its eos would otherwise run on",
                self.cmd,
                asked - 1,
                cap - 1
            );
            cfg.max_new_tokens = Some(cap - 1);
        }
        Ok(())
    }
}

/// The decoder length (start token included) a T5 without `n_positions` in its
/// config.json may generate to: what every released T5 checkpoint states.
const DEFAULT_POSITIONS: usize = 512;

/// A T5's length limit and where it comes from (see `cap_length`).
fn t5_length_limit(model: &dyn Seq2SeqLm, config: &Value, cfg_path: &Path) -> (usize, String) {
    let mut limit = match config.get("n_positions").and_then(|x| x.as_u64()) {
        Some(n) => (n as usize, format!("n_positions in {}", cfg_path.display())),
        None => (
            DEFAULT_POSITIONS,
            format!(
                "{DEFAULT_POSITIONS} positions, T5's own, as config.json states no n_positions"
            ),
        ),
    };
    let own = model.generation_config();
    if let Some(n) = own.max_length.filter(|&n| n > limit.0) {
        limit = (n, format!("max_length in {}", own.origin));
    }
    limit
}
