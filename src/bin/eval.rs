//! `eval`: score predictions the way the reference Python tools do, from the command line.
//! A thin front end over `fusebox::metrics`; output formats copy the tools so numbers can
//! be diffed against published ones: `squad` prints exactly what the official
//! evaluate-v1.1.py / evaluate-v2.0.py print, `rouge` the rouge-score fields, `bleu` the
//! sacrebleu `BLEUScore` fields.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fusebox::metrics::{bleu, py_float_repr, rouge, squad};

#[derive(Parser)]
#[command(
    name = "eval",
    about = "SQuAD EM/F1, ROUGE and BLEU matching the reference Python tools"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// SQuAD v1.1 / v2.0 (version taken from the data file) like the official scripts.
    Squad {
        /// Dataset JSON (official nested or HF flat layout).
        data: PathBuf,
        /// Predictions JSON {question id: answer text}.
        predictions: PathBuf,
        /// v2.0: JSON {question id: probability of no answer}.
        #[arg(long)]
        na_prob_file: Option<PathBuf>,
        /// v2.0: predict "" when the no-answer probability exceeds this.
        #[arg(long, default_value_t = 1.0)]
        na_prob_thresh: f64,
    },
    /// rouge-score 0.1.2 rouge1/rouge2/rougeL/rougeLsum, mean over line pairs.
    Rouge {
        /// One reference text per line.
        references: PathBuf,
        /// One prediction per line, same count.
        predictions: PathBuf,
        /// Porter-stem tokens longer than 3 characters (rouge-score's use_stemmer).
        #[arg(long)]
        stemmer: bool,
    },
    /// sacrebleu corpus BLEU (13a, exp smoothing), one segment per line.
    Bleu {
        /// One reference per line.
        references: PathBuf,
        /// One hypothesis per line, same count.
        hypotheses: PathBuf,
        /// Further reference streams (same line count), for multi-reference BLEU.
        #[arg(long = "extra-references")]
        extra_references: Vec<PathBuf>,
        /// Lowercase everything first (sacrebleu -lc).
        #[arg(long)]
        lowercase: bool,
    },
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

fn paired(a: &Path, b: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let (x, y) = (read_lines(a)?, read_lines(b)?);
    if x.len() != y.len() {
        bail!(
            "{} has {} lines but {} has {}; they must pair up line by line",
            a.display(),
            x.len(),
            b.display(),
            y.len()
        );
    }
    if x.is_empty() {
        bail!("{} is empty", a.display());
    }
    Ok((x, y))
}

fn floats(v: &[f64]) -> String {
    let s: Vec<String> = v.iter().map(|x| py_float_repr(*x)).collect();
    format!("[{}]", s.join(", "))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Squad {
            data,
            predictions,
            na_prob_file,
            na_prob_thresh,
        } => {
            let gold = squad::SquadGold::from_file(&data)?;
            let preds = squad::read_predictions(&predictions)?;
            match gold.version {
                squad::SquadVersion::V1 => {
                    if na_prob_file.is_some() {
                        bail!(
                            "{}: --na-prob-file needs a SQuAD v2.0 dataset",
                            data.display()
                        );
                    }
                    let r = squad::evaluate_v1(&gold.questions, &preds)?;
                    eprint!("{}", r.official_stderr());
                    print!("{}", r.official_stdout());
                }
                squad::SquadVersion::V2 => {
                    let na_probs = na_prob_file.map(squad::read_na_probs).transpose()?;
                    let opts = squad::V2Options {
                        na_probs,
                        na_prob_thresh,
                    };
                    let r =
                        squad::evaluate_v2(&gold.questions, &preds, &opts).with_context(|| {
                            format!(
                                "scoring {} against {}",
                                predictions.display(),
                                data.display()
                            )
                        })?;
                    print!("{}", r.official_stdout());
                }
            }
        }
        Cmd::Rouge {
            references,
            predictions,
            stemmer,
        } => {
            let (refs, preds) = paired(&references, &predictions)?;
            let m = rouge::mean_scores(&refs, &preds, stemmer)?;
            let parts: Vec<String> = m
                .named()
                .iter()
                .map(|(k, s)| {
                    format!(
                        "  \"{k}\": {{\"precision\": {}, \"recall\": {}, \"fmeasure\": {}}}",
                        py_float_repr(s.precision),
                        py_float_repr(s.recall),
                        py_float_repr(s.fmeasure)
                    )
                })
                .collect();
            println!("{{\n{}\n}}", parts.join(",\n"));
        }
        Cmd::Bleu {
            references,
            hypotheses,
            extra_references,
            lowercase,
        } => {
            let (refs, hyps) = paired(&references, &hypotheses)?;
            let mut streams = vec![refs];
            for p in &extra_references {
                let lines = read_lines(p)?;
                if lines.len() != hyps.len() {
                    bail!(
                        "{} has {} lines but {} has {}; every reference file must pair up with the hypotheses line by line",
                        p.display(),
                        lines.len(),
                        hypotheses.display(),
                        hyps.len()
                    );
                }
                streams.push(lines);
            }
            let opts = bleu::BleuOptions {
                lowercase,
                effective_order: false,
            };
            let b = bleu::corpus_bleu(&hyps, &streams, &opts)?;
            let ints = |v: &[usize]| {
                let s: Vec<String> = v.iter().map(usize::to_string).collect();
                format!("[{}]", s.join(", "))
            };
            println!(
                "{{\n  \"score\": {},\n  \"counts\": {},\n  \"totals\": {},\n  \"precisions\": {},\n  \"bp\": {},\n  \"sys_len\": {},\n  \"ref_len\": {}\n}}",
                py_float_repr(b.score),
                ints(&b.counts),
                ints(&b.totals),
                floats(&b.precisions),
                py_float_repr(b.bp),
                b.sys_len,
                b.ref_len
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    run(Cli::parse())
}
