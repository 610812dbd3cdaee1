//! Running the command-line binaries from tests: a run that must succeed, its JSON or
//! text output lines, and `infer` subcommands on a model directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A fresh scratch directory `fusebox-cli-<tag>-<pid>-<name>` (not created).
pub fn scratch(tag: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fusebox-cli-{tag}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `bin args`, which must succeed.
pub fn run(bin: &str, args: &[&str]) -> Output {
    let o = Command::new(bin).args(args).output().expect("spawn");
    assert!(
        o.status.success(),
        "{bin} {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `bin` with the words of `flags`, then `pairs` (a flag and its value: paths, which may
/// hold spaces); it must succeed.
pub fn run_flags(bin: &str, flags: &str, pairs: &[(&str, &str)]) -> Output {
    let mut args: Vec<&str> = flags.split_whitespace().collect();
    args.extend(pairs.iter().flat_map(|(f, v)| [*f, *v]));
    run(bin, &args)
}

pub fn p(x: &Path) -> &str {
    x.to_str().expect("utf8 path")
}

/// The lines of stdout.
pub fn stdout_lines(o: &Output) -> Vec<String> {
    String::from_utf8(o.stdout.clone())
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every stdout line, each a JSON value.
pub fn json_lines(o: &Output) -> Vec<Value> {
    stdout_lines(o)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect()
}

pub fn last_json_line(o: &Output) -> Value {
    json_lines(o).pop().expect("a final line")
}

/// `infer SUB --model MODEL` on the CPU with `pairs` (a flag and its value: texts and
/// paths, which may hold spaces) and the words of `flags`; it must succeed.
pub fn infer(sub: &str, model: &Path, pairs: &[(&str, &str)], flags: &str) -> Output {
    let mut args = vec![sub, "--model", p(model), "--device", "cpu"];
    args.extend(pairs.iter().flat_map(|(f, v)| [*f, *v]));
    args.extend(flags.split_whitespace());
    run(env!("CARGO_BIN_EXE_infer"), &args)
}

/// A tiny T5 trained from scratch by `train translate` for five steps (under a second
/// on a CPU), in `out`: config.json, generation_config.json, tokenizer.json, weights.
pub fn tiny_t5(out: &Path) {
    let flags = "translate --max-steps 5 --epochs 1 --eval-limit 4 --device cpu --quiet";
    let mut args: Vec<&str> = flags.split_whitespace().collect();
    args.extend(["--out", p(out)]);
    run(env!("CARGO_BIN_EXE_train"), &args);
}

/// Runs `bin args`, which must fail before any training, with every needle in its
/// stderr and no panic.
pub fn refused(bin: &str, args: &[&str], needles: &[&str]) {
    let o = Command::new(bin).args(args).output().expect("spawn");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{bin} {args:?} succeeded:\n{err}");
    assert!(!err.contains("panicked"), "{bin} {args:?} panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{bin} {args:?}: no {n:?} in:\n{err}");
    }
}
