//! The output directory of a run: whose it is, and files written so that a kill at any
//! moment leaves either the old file or the new one, never half of one.
//!
//! Every file goes to a temporary name in its own directory, is flushed to disk and
//! renamed over the target (a rename within a directory is atomic on POSIX file
//! systems); a directory (a checkpoint, the final model) is built under a temporary name
//! and renamed whole, or its files moved in one by one and a marker written last.
//! Temporaries carry `.tmp-` in their names, so the next start removes what a killed run
//! left. A directory holding another run's files is refused unless the user asks to
//! overwrite or to resume it.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What marks a temporary (removed at the next start).
pub const TMP: &str = ".tmp-";
/// The marker of a finished run's final model (written last).
pub const RUN_MARKER: &str = "run.json";

/// A run's id: the process id and the start time, enough to tell two runs apart.
pub fn new_run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{t:x}-{:x}", std::process::id())
}

/// Write `bytes` to `path` atomically: a temporary beside it, flushed, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}{TMP}{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Files and folders a run writes into its output directory (besides the model's own
/// files, which the final save replaces as a whole).
fn run_files(out: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            matches!(
                n.as_ref(),
                "metrics.jsonl" | "curves.svg" | RUN_MARKER | "model.safetensors"
            ) || n.starts_with("checkpoint-")
        })
        .collect();
    v.sort();
    v
}

/// Remove what a killed run left half-written in `out` (names with [`TMP`]).
fn remove_temporaries(out: &Path) {
    let Ok(rd) = std::fs::read_dir(out) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        // Only the names this module and checkpoint.rs make: `checkpoint-N.tmp-*`,
        // `final.tmp-*` and `.FILE.tmp-*`; anything else is not ours to remove.
        let ours = name.is_some_and(|n| {
            n.contains(TMP)
                && (n.starts_with("checkpoint-") || n.starts_with("final.") || n.starts_with('.'))
        });
        if !ours {
            continue;
        }
        let gone = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match gone {
            Ok(()) => eprintln!("removed {} (left by an interrupted run)", p.display()),
            Err(e) => eprintln!("warning: could not remove {}: {e}", p.display()),
        }
    }
}

/// Bytes free for an unprivileged user on the file system of `dir` (its nearest existing
/// ancestor), or None where that cannot be read.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let mut d = dir;
    while !d.exists() {
        d = d.parent()?;
    }
    let d = if d.as_os_str().is_empty() {
        Path::new(".")
    } else {
        d
    };
    let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed statvfs struct the call fills in.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuse to start when `out`'s file system has less than `need` bytes free (what the
/// run's checkpoints and final model take), naming both numbers.
pub fn check_space(out: &Path, need: u64, what: &str) -> Result<()> {
    match free_bytes(out) {
        Some(free) if free < need => Err(Error::msg(format!(
            "{}: {} MiB free, the run needs about {} MiB ({what}); free space or pass \
             --save-total-limit / --save-strategy no",
            out.display(),
            free >> 20,
            need.div_ceil(1 << 20)
        ))),
        _ => Ok(()),
    }
}

/// How a run may use an output directory that already holds files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutMode {
    /// A new run: the directory must hold no other run's files.
    New,
    /// `--overwrite`: another run's log, plot, marker and checkpoints are removed.
    Overwrite,
    /// `--resume`: the run continues the one in the directory.
    Resume,
}

/// Make `out` ready for a run: refuse `--out` equal to the model it trains (`model`),
/// remove temporaries a killed run left, and refuse a directory holding another run's
/// files unless `mode` says to overwrite or resume it. Call before anything is written.
pub fn prepare(out: &Path, model: Option<&Path>, mode: OutMode) -> Result<()> {
    if let Some(m) = model {
        let same = match (out.canonicalize(), m.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            return Err(Error::msg(format!(
                "--out {} is the model directory being trained: the run would overwrite \
                 its input checkpoint; choose another --out",
                out.display()
            )));
        }
    }
    remove_temporaries(out);
    let found = run_files(out);
    match mode {
        OutMode::Resume | OutMode::New if found.is_empty() => Ok(()),
        OutMode::Resume => Ok(()),
        OutMode::New => Err(Error::msg(format!(
            "--out {} holds another run's files ({}): pass --overwrite to replace them, \
             --resume auto to continue that run, or another --out",
            out.display(),
            found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        OutMode::Overwrite => {
            for p in found {
                let gone = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                gone.map_err(|e| Error::io(&p, e))?;
            }
            Ok(())
        }
    }
}

/// Write a model with `save` into `out` as a whole: into a temporary folder first, then
/// each file renamed into place, then `marker` (the run's id and state) written last.
/// If that fails (a full disk, a removed folder), the weights are kept: `save` runs
/// once more into `OUT.rescue-RUNID` beside it, then into the system's temporary folder,
/// and the error says where they went.
pub fn save_final(
    out: &Path,
    run_id: &str,
    marker: &serde_json::Value,
    save: &dyn Fn(&Path) -> Result<()>,
) -> Result<()> {
    let into_out = || -> Result<()> {
        let tmp = out.join(format!("final{TMP}{run_id}"));
        let _ = std::fs::remove_dir_all(&tmp);
        save(&tmp)?;
        for e in std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
            let p = e.map_err(|e| Error::io(&tmp, e))?.path();
            if let Some(name) = p.file_name() {
                let dst = out.join(name);
                if dst.is_dir() {
                    std::fs::remove_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
                }
                std::fs::rename(&p, &dst).map_err(|e| Error::io(&dst, e))?;
            }
        }
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let text = serde_json::to_string_pretty(marker).unwrap_or_default() + "\n";
        write_atomic(&out.join(RUN_MARKER), text.as_bytes())
    };
    let first = match into_out() {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let rescue = [
        out.with_file_name(format!("{name}.rescue-{run_id}")),
        std::env::temp_dir().join(format!("fusebox-{name}.rescue-{run_id}")),
    ];
    for dir in rescue {
        if save(&dir).is_ok() {
            return Err(Error::msg(format!(
                "saving the final model into {} failed ({first}); the weights were saved \
                 to {} instead",
                out.display(),
                dir.display()
            )));
        }
    }
    Err(Error::msg(format!(
        "saving the final model into {} failed ({first}), and so did the rescue copies \
         beside it and in the temporary folder: the weights are lost",
        out.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fusebox-outdir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn another_runs_files_are_refused_overwritten_or_resumed() {
        let d = dir("modes");
        prepare(&d, None, OutMode::New).expect("empty is fine");
        std::fs::write(d.join("metrics.jsonl"), "{}\n").expect("log");
        std::fs::create_dir_all(d.join("checkpoint-5")).expect("ckpt");
        std::fs::write(d.join("notes.txt"), "mine").expect("user file");
        std::fs::write(d.join(format!(".x{TMP}9")), "half").expect("tmp");
        std::fs::write(d.join(format!("report{TMP}3")), "another tool's").expect("tmp");
        let e = prepare(&d, None, OutMode::New)
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("--overwrite") && e.contains("metrics.jsonl") && e.contains("checkpoint-5"),
            "{e}"
        );
        assert!(!d.join(format!(".x{TMP}9")).exists(), "temporaries removed");
        assert!(d.join(format!("report{TMP}3")).exists(), "not ours: kept");
        prepare(&d, None, OutMode::Resume).expect("resume keeps them");
        assert!(d.join("metrics.jsonl").exists());
        prepare(&d, None, OutMode::Overwrite).expect("overwrite");
        assert!(!d.join("metrics.jsonl").exists() && !d.join("checkpoint-5").exists());
        assert!(d.join("notes.txt").exists(), "a user's own files stay");
        let e = prepare(&d, Some(&d), OutMode::Overwrite)
            .expect_err("out == model")
            .to_string();
        assert!(e.contains("model directory"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn free_space_is_read_and_a_shortfall_refused() {
        let d = dir("space");
        let free = free_bytes(&d.join("not/yet/made")).expect("statvfs of an ancestor");
        assert!(free > 0);
        check_space(&d, 1, "one byte").expect("room for one byte");
        let e = check_space(&d, u64::MAX, "everything")
            .expect_err("no room")
            .to_string();
        assert!(e.contains("MiB free") && e.contains("everything"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_final_save_goes_to_a_rescue_folder() {
        let d = dir("rescue");
        let out = d.join("run");
        // `out` is a file, so nothing can be saved inside it.
        std::fs::write(&out, "not a folder").expect("file");
        let save = |p: &Path| -> Result<()> {
            std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
            std::fs::write(p.join("model.safetensors"), "w").map_err(|e| Error::io(p, e))
        };
        let e = save_final(&out, "r1", &serde_json::json!({}), &save)
            .expect_err("rescued")
            .to_string();
        let rescued = d.join("run.rescue-r1");
        assert!(e.contains(&rescued.display().to_string()), "{e}");
        assert!(rescued.join("model.safetensors").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
