//! `bench --report DIR`: the run as one self-contained HTML page, `DIR/index.html`
//! (inline SVG and CSS; no script, nothing fetched), beside the record it was drawn
//! from, `DIR/bench.json`. The page shows the run's figures, the time per category
//! (fusebox beside PyTorch under `--compare`), the memory plan beside the measured peak
//! as stacked bars by component, the roofline (each op a point under the device's
//! ceilings, log-log) with the ops that only move bytes on a bandwidth strip, and the
//! per-op table.
//!
//! A directory that already holds a report is refused unless the user passes
//! `--overwrite` (as `train --out` refuses another run's files); both files are written
//! under temporary names and renamed (train/outdir.rs).

mod bars;
mod roof;
mod svg;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use self::roof::Placement;
use self::svg::{esc, num};
use crate::error::{Error, Result};
use crate::plan::human;
use crate::train::outdir::{write_atomic, TMP};

/// The page's file name in the report directory.
pub const PAGE: &str = "index.html";
/// The bench record's file name in the report directory.
pub const RECORD: &str = "bench.json";

/// Make `dir` ready before the run, so a bad `--report` fails before minutes of
/// benchmarking: create it, check that a file can be written there, and refuse a report
/// already in it unless `overwrite`.
pub fn prepare(dir: &Path, overwrite: bool) -> Result<()> {
    let shown = dir.display();
    if dir.exists() && !dir.is_dir() {
        return Err(Error::msg(format!(
            "--report {shown}: not a directory (expected a directory for {PAGE} and {RECORD})"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::msg(format!(
            "--report {shown}: cannot create the directory ({e})"
        ))
    })?;
    let existing: Vec<&str> = [PAGE, RECORD]
        .into_iter()
        .filter(|f| dir.join(f).exists())
        .collect();
    if !existing.is_empty() && !overwrite {
        return Err(Error::msg(format!(
            "--report {shown} holds a report ({}): pass --overwrite to replace it, or \
             another --report",
            existing.join(", ")
        )));
    }
    let probe = dir.join(format!(".{PAGE}{TMP}probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| Error::msg(format!("--report {shown}: cannot write there ({e})")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Write the record and its page into `dir` (each atomically); returns the page's path.
pub fn write(dir: &Path, rec: &Value) -> Result<PathBuf> {
    let json = serde_json::to_string_pretty(rec)
        .map_err(|e| Error::msg(format!("--report: the record as JSON: {e}")))?;
    write_atomic(&dir.join(RECORD), (json + "\n").as_bytes())?;
    let page = dir.join(PAGE);
    write_atomic(&page, html(rec).as_bytes())?;
    Ok(page)
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;\
margin:24px auto;max-width:800px;color:#222}h1{font-size:22px}h2{font-size:18px;\
margin-top:28px;border-bottom:1px solid #ddd}table{border-collapse:collapse;font-size:13px}\
td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #eee}td:first-child,\
th:first-child{text-align:left}.summary td{text-align:left}svg text{font-size:11px}\
svg .axis-title,svg .legend{font-size:12px}svg .op-label{font-size:10px;fill:#333}\
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}.note{color:#555;\
font-size:13px}.mem-legend{display:flex;gap:16px;font-size:12px}.mem-legend ul{padding-left:\
14px;margin:4px 0}.mem-legend li{list-style:none}.cat-legend span{margin-right:10px;\
font-size:12px}";

/// The page of a bench record (the JSON `bench --json` prints).
pub fn html(rec: &Value) -> String {
    let s_ = |k: &str| rec[k].as_str().unwrap_or("?").to_string();
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fusebox bench: {}</title><style>{STYLE}</style></head><body>\n",
        esc(&s_("model"))
    );
    let _ = writeln!(h, "<h1>fusebox bench: {}</h1>", esc(&s_("model")));
    h += &summary(rec);
    h += "<h2 id=\"time\">Time per category</h2>\n";
    let times = bars::category_times(rec);
    if let Some(cmp) = rec.get("compare").filter(|c| c.is_object()) {
        let _ = writeln!(
            h,
            "<p class=\"note\">PyTorch: {} ({} on {}, {}); ratio = fusebox ÷ PyTorch, above 1 is slower. Both sides timed under their profilers: compare the profiles with each other.</p>",
            esc(cmp["file"].as_str().unwrap_or("?")),
            esc(cmp["torch_impl"].as_str().unwrap_or("?")),
            esc(cmp["torch_device"].as_str().unwrap_or("?")),
            esc(cmp["torch_profile_source"].as_str().unwrap_or("?")),
        );
        if let Some(d) = cmp["workload_differs"].as_array().filter(|d| !d.is_empty()) {
            let d: Vec<&str> = d.iter().filter_map(Value::as_str).collect();
            let _ = writeln!(
                h,
                "<p class=\"note workload-differs\">Not the same workload: {}.</p>",
                esc(&d.join("; "))
            );
        }
    }
    if times.is_empty() {
        h += "<p class=\"note\">No per-op profile (run with --profile-steps 1 or more).</p>\n";
    } else {
        h += &bars::categories(&times);
    }
    h += "\n<h2 id=\"memory\">Memory: plan and measured peak</h2>\n";
    let mem = bars::memory_bars(rec);
    let tensor_peak = rec["memory_plan"]["tensor_peak_bytes"].as_u64();
    h += &bars::memory(&mem, tensor_peak);
    h += &bars::memory_legend(&mem);
    h += "<p class=\"note\">The plan is the planner's step on the meta device; the measured \
          bar is the byte tracker's peak, split where the optimizer was built (the plan \
          counts the batch in the step, the measurement with the weights).</p>\n";
    h += &roofline_section(rec);
    h += &op_table(rec);
    h + "</body></html>\n"
}

fn summary(rec: &Value) -> String {
    let f = |k: &str| rec[k].as_f64();
    let bytes = |k: &str| rec[k].as_u64().map_or("-".into(), |b| human(b as usize));
    let mut rows: Vec<(&str, String)> = vec![
        ("device", rec["device"].as_str().unwrap_or("?").into()),
        (
            "mode",
            format!(
                "{} {}, {}",
                rec["mode"].as_str().unwrap_or("?"),
                rec["precision"].as_str().unwrap_or("?"),
                rec["optimizer"].as_str().unwrap_or("?")
            ),
        ),
        ("tokens/s", f("tokens_per_s").map_or("-".into(), num)),
        (
            "ms/step",
            format!(
                "median {}, p90 {} ({} timed steps)",
                f("ms_per_step_median").map_or("-".into(), num),
                f("ms_per_step_p90").map_or("-".into(), num),
                rec["steps"]
            ),
        ),
        (
            "model FLOP/s",
            format!(
                "{} TFLOP/s{}",
                f("model_tflops_per_s").map_or("-".into(), num),
                f("mfu_vs_fp16_peak").map_or(String::new(), |m| format!(
                    ", MFU {:.1} % of the fp16 tensor peak",
                    m * 100.0
                ))
            ),
        ),
        (
            "peak memory",
            format!(
                "measured {} (tracker), plan {}",
                bytes("peak_mem_bytes"),
                bytes("predicted_peak_bytes")
            ),
        ),
    ];
    let p = &rec["peaks"];
    if p.is_object() {
        let t = |k: &str| p[k].as_f64().map_or("-".into(), num);
        rows.push((
            "ceilings",
            format!(
                "{}: tensor {} / fp32 {} TFLOP/s, memory {} GB/s, copy measured {} GB/s",
                p["source"].as_str().unwrap_or("?"),
                t("tensor_tflops"),
                t("fp32_tflops"),
                t("mem_gb_per_s"),
                t("measured_copy_gb_per_s")
            ),
        ));
    }
    let mut s = String::from("<table class=\"summary\">");
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    }
    s + "</table>\n"
}

fn roofline_section(rec: &Value) -> String {
    let pts = roof::points(rec);
    let mut h = String::from("\n<h2 id=\"roofline\">Roofline</h2>\n");
    if pts.is_empty() {
        return h
            + "<p class=\"note\">No per-op profile (run with --profile-steps 1 or more).</p>\n";
    }
    let mut cats: Vec<&str> = pts.iter().map(|p| p.category.as_str()).collect();
    cats.sort();
    cats.dedup();
    h += &bars::category_legend(cats);
    h += &roof::roofline(&pts, &rec["peaks"]);
    h += "<p class=\"note\">Each op summed over the profiled steps: FLOPs and compulsory bytes \
          from its shapes over its measured time. GEMMs and attention in fp16 are held to \
          the tensor peak, every other op to the fp32 peak.</p>\n";
    if let Some(b) = roof::bandwidth(&pts, &rec["peaks"]) {
        h += &b;
    }
    let listed: Vec<String> = pts
        .iter()
        .filter_map(|p| match p.place {
            Placement::Listed(why) => Some(format!("{} ({why})", p.op)),
            _ => None,
        })
        .collect();
    if !listed.is_empty() {
        let _ = writeln!(
            h,
            "<p class=\"note unplotted\">Not drawn: {}.</p>",
            esc(&listed.join(", "))
        );
    }
    h
}

fn op_table(rec: &Value) -> String {
    let ops = rec["ops"].as_array().map(Vec::as_slice).unwrap_or_default();
    if ops.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n<h2 id=\"ops\">Per op</h2>\n<table id=\"ops-table\"><tr><th>op</th><th>category</th>\
         <th>calls</th><th>ms</th><th>GFLOP</th><th>MB</th><th>TFLOP/s</th><th>GB/s</th>\
         <th>FLOP/B</th><th>bound</th><th>% peak</th></tr>",
    );
    for o in ops {
        let c = |k: &str, scale: f64| o[k].as_f64().map_or("-".into(), |x| num(x * scale));
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(o["op"].as_str().unwrap_or("?")),
            esc(o["category"].as_str().unwrap_or("?")),
            o["calls"].as_u64().unwrap_or(0),
            c("ms", 1.0),
            c("flops", 1e-9),
            c("bytes", 1e-6),
            c("tflops_per_s", 1.0),
            c("gb_per_s", 1.0),
            c("flop_per_byte", 1.0),
            esc(o["bound"].as_str().unwrap_or("-")),
            c("pct_of_peak", 1.0),
        );
    }
    s + "</table>\n"
}

#[cfg(test)]
mod tests;
