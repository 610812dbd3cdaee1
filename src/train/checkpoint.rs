//! Checkpoints during training (`OUT/checkpoint-STEP/`, HF Trainer's layout and names):
//! the model as the task saves it (HF files, loadable by `infer` and by transformers),
//! `optimizer.safetensors` (the fp32 master or parameter and the optimizer's state
//! under torch's names per parameter: AdamW's `exp_avg`, `exp_avg_sq`; Adafactor's
//! `exp_avg_sq_row`, `exp_avg_sq_col` or `exp_avg_sq`, and `exp_avg` with beta1), `trainer_state.json` (the loop's counters, data order and position, the
//! random generator, the loss scaler, the log's length, the run's settings) and, written
//! last, `manifest.json`: every file's size and SHA-256. A checkpoint is built under a
//! temporary name and renamed whole; one whose manifest is missing or does not match its
//! files is incomplete and is skipped with a message.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::outdir::{write_atomic, TMP};
use crate::error::{Error, Result};
use crate::nn::safetensors_io;
use crate::optim::LossScaler;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The version of `trainer_state.json` this build writes and reads.
const FORMAT: u32 = 1;

/// Everything the loop needs to continue exactly where a checkpoint left it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps taken (HF's global_step).
    pub step: usize,
    /// Of those, the ones applied (an fp16 overflow skips one); the schedule follows these.
    pub applied: usize,
    /// The epoch being run and the next step's position in its data order.
    pub epoch: usize,
    pub pos: usize,
    /// This epoch's data order (empty before the epoch's shuffle).
    pub order: Vec<usize>,
    pub rng: Rng,
    pub scaler: Option<LossScaler>,
    pub tokens_total: usize,
    /// Sum of the step losses since the last loss line (as bits: it may be NaN).
    pub window_loss_bits: u64,
    pub window_n: usize,
    /// Lines of metrics.jsonl written so far.
    pub metrics_lines: usize,
    pub last_eval: Map<String, Value>,
    pub last_eval_step: Option<usize>,
    /// The best evaluation so far: (metric value, step, the evaluation).
    pub best: Option<(f64, usize, Map<String, Value>)>,
    /// Seconds trained before this process.
    pub seconds: f64,
    /// The optimizer's count of applied updates (AdamW's bias correction, Adafactor's
    /// step t).
    pub optimizer_steps: u64,
    /// The run's total optimizer steps (its schedule's length) when the state was saved.
    pub total: usize,
}

impl LoopState {
    pub fn new(seed: u64) -> LoopState {
        LoopState {
            step: 0,
            applied: 0,
            epoch: 0,
            pos: 0,
            order: Vec::new(),
            rng: Rng::new(seed),
            scaler: None,
            tokens_total: 0,
            window_loss_bits: 0f64.to_bits(),
            window_n: 0,
            metrics_lines: 0,
            last_eval: Map::new(),
            last_eval_step: None,
            best: None,
            seconds: 0.0,
            optimizer_steps: 0,
            total: 0,
        }
    }
}

/// `trainer_state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: u32,
    pub run_id: String,
    /// The run's settings that a resumed run must share (see [`differences`]).
    pub config: Value,
    pub state: LoopState,
}

/// `step` of a `checkpoint-STEP` folder name.
fn step_of(p: &Path) -> Option<usize> {
    p.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .parse()
        .ok()
}

/// The complete checkpoints' folders in `out`, newest (highest step) first.
fn folders(out: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .filter_map(|p| step_of(&p).map(|s| (s, p)))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|x| std::cmp::Reverse(x.0));
    v
}

fn sha256(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((n, hex))
}

/// Every file of `dir` (flat: a model folder has no subfolders) but the manifest.
fn listed(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.ends_with("manifest.json"))
        .collect();
    v.sort();
    Ok(v)
}

/// Write a checkpoint of `state` into `out/checkpoint-STEP`: the model by `save_model`,
/// the optimizer's tensors, the state, then the manifest; built under a temporary name
/// and renamed whole. Returns the folder.
pub fn save(
    out: &Path,
    state: &TrainerState,
    save_model: &dyn Fn(&Path) -> Result<()>,
    optimizer: &BTreeMap<String, Tensor>,
) -> Result<PathBuf> {
    let dir = out.join(format!("checkpoint-{}", state.state.step));
    let tmp = out.join(format!(
        "checkpoint-{}{TMP}{}",
        state.state.step, state.run_id
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    save_model(&tmp)?;
    safetensors_io::save(&tmp.join("optimizer.safetensors"), optimizer, None)?;
    let text = serde_json::to_string_pretty(state)
        .map_err(|e| Error::msg(format!("trainer_state.json: {e}")))?;
    write_atomic(&tmp.join("trainer_state.json"), text.as_bytes())?;
    let mut files = Map::new();
    for p in listed(&tmp)? {
        let (size, hash) = sha256(&p)?;
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        files.insert(
            name.unwrap_or_default(),
            serde_json::json!({"bytes": size, "sha256": hash}),
        );
    }
    let manifest = serde_json::json!({"format": FORMAT, "files": files});
    write_atomic(&tmp.join("manifest.json"), manifest.to_string().as_bytes())?;
    // A checkpoint of the same step (saved again at a stop) is replaced only once the new
    // one is complete: the old one is renamed aside, the new one in, then the old removed.
    let old = out.join(format!(
        "checkpoint-{}{TMP}old-{}",
        state.state.step, state.run_id
    ));
    let had_old = dir.exists() && std::fs::rename(&dir, &old).is_ok();
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(dir)
}

/// Read a checkpoint's state after checking every file against its manifest.
pub fn verify(dir: &Path) -> Result<TrainerState> {
    let mpath = dir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath)
        .map_err(|_| Error::msg(format!("{}: no manifest (incomplete)", dir.display())))?;
    let manifest: Value =
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", mpath.display())))?;
    let files = manifest["files"]
        .as_object()
        .ok_or_else(|| Error::msg(format!("{}: no file list", mpath.display())))?;
    for (name, want) in files {
        let p = dir.join(name);
        if !p.is_file() {
            return Err(Error::msg(format!("{}: missing", p.display())));
        }
        let (size, hash) = sha256(&p)?;
        if Some(size) != want["bytes"].as_u64() || Some(hash.as_str()) != want["sha256"].as_str() {
            return Err(Error::msg(format!(
                "{}: size or checksum differs from the manifest (a partial write?)",
                p.display()
            )));
        }
    }
    let spath = dir.join("trainer_state.json");
    if !files.contains_key("trainer_state.json") {
        return Err(Error::msg(format!(
            "{}: not in the manifest",
            spath.display()
        )));
    }
    let st: TrainerState =
        serde_json::from_str(&std::fs::read_to_string(&spath).map_err(|e| Error::io(&spath, e))?)
            .map_err(|e| Error::msg(format!("{}: {e}", spath.display())))?;
    if st.format != FORMAT {
        return Err(Error::msg(format!(
            "{}: format {}, this build reads {FORMAT}",
            spath.display(),
            st.format
        )));
    }
    Ok(st)
}

/// The newest complete checkpoint in `out`; incomplete or corrupt ones are skipped,
/// each with a message.
pub fn latest(out: &Path) -> Option<(PathBuf, TrainerState)> {
    for (_, dir) in folders(out) {
        match verify(&dir) {
            Ok(st) => return Some((dir, st)),
            Err(e) => eprintln!("skipping {}: {e}", dir.display()),
        }
    }
    None
}

/// Delete all but the newest `keep` checkpoints, never the one just written (`written`)
/// nor the one at step `protect` (the best model, when it is to be loaded at the end).
pub fn rotate(out: &Path, keep: Option<usize>, written: usize, protect: Option<usize>) {
    let Some(keep) = keep else {
        return;
    };
    for (step, dir) in folders(out).into_iter().skip(keep) {
        if step == written || Some(step) == protect {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("warning: could not remove {}: {e}", dir.display());
        }
    }
}

/// Rename checkpoints past `step` to `checkpoint-N.superseded-PID` (kept for the user,
/// no longer a checkpoint of this run): a run resumed from `step` makes its own.
pub fn set_aside_after(out: &Path, step: usize) {
    for (s, dir) in folders(out) {
        if s <= step {
            continue;
        }
        let aside = dir.with_file_name(format!("checkpoint-{s}.superseded-{}", std::process::id()));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => eprintln!(
                "{} is past the resumed step {step}: kept as {}",
                dir.display(),
                aside.display()
            ),
            Err(e) => eprintln!("warning: could not set {} aside: {e}", dir.display()),
        }
    }
}

/// What differs between a checkpoint's settings and this run's, as `key: then -> now`.
pub fn differences(then: &Value, now: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (then.as_object(), now.as_object()) else {
        return vec![format!("settings {then} -> {now}")];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or("(absent)".into(), |v| v.to_string());
            format!(
                "{k}: {} in the checkpoint, {} now",
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect()
}
