//! The roofline of each profiled op and of each category: achieved TFLOP/s and GB/s from
//! the FLOPs and bytes the op's shapes imply (profile/cost.rs) over its measured time,
//! its arithmetic intensity against the ridge point (peak FLOP/s ÷ peak bandwidth), so
//! whether it is compute- or memory-bound, and the percentage of the peak that bounds it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{json, Map, Value};

use super::peaks::Peaks;
use crate::profile::cost::{category, Category};
use crate::profile::{OpTime, Work};

/// The roofline fields of `work` done in `secs`; `cat` picks the FLOP peak (the tensor
/// cores for GEMMs and attention in fp16, the fp32 peak otherwise).
fn roofline(
    work: Option<Work>,
    secs: f64,
    cat: Option<Category>,
    peaks: &Peaks,
    fp16: bool,
) -> Map<String, Value> {
    let mut m = Map::new();
    let Some(w) = work else {
        for k in [
            "flops",
            "bytes",
            "tflops_per_s",
            "gb_per_s",
            "flop_per_byte",
            "bound",
            "pct_of_peak",
        ] {
            m.insert(k.into(), Value::Null);
        }
        return m;
    };
    let secs = secs.max(1e-12);
    let (flops_s, bytes_s) = (w.flops / secs, w.bytes / secs);
    let peak_flops = if fp16 && cat.is_some_and(Category::tensor_cores) {
        peaks.tensor_flops
    } else {
        peaks.fp32_flops
    };
    let intensity = (w.bytes > 0.0).then(|| w.flops / w.bytes);
    // Nothing moved and nothing computed (a reshape, dropout at p = 0): no bound.
    let bound = match (intensity, peak_flops) {
        (Some(i), Some(p)) => Some(i >= p / peaks.mem_bw),
        (Some(_), None) => Some(false),
        (None, Some(_)) if w.flops > 0.0 => Some(true),
        _ => None,
    };
    let pct = match bound {
        Some(true) => peak_flops.map(|p| 100.0 * flops_s / p),
        Some(false) => Some(100.0 * bytes_s / peaks.mem_bw),
        None => None,
    };
    m.insert("flops".into(), json!(w.flops));
    m.insert("bytes".into(), json!(w.bytes));
    m.insert("tflops_per_s".into(), json!(flops_s / 1e12));
    m.insert("gb_per_s".into(), json!(bytes_s / 1e9));
    m.insert("flop_per_byte".into(), json!(intensity));
    m.insert(
        "bound".into(),
        json!(bound.map(|c| if c { "compute" } else { "memory" })),
    );
    m.insert("pct_of_peak".into(), json!(pct));
    m
}

/// The name of an op's category, `other` for a name the table lacks.
fn category_name(op: &str) -> &'static str {
    category(op).map_or("other", Category::name)
}

/// The JSON `ops` rows (slowest first) and the `categories` object of `steps` profiled
/// steps, with the run's peaks.
pub fn report(ops: &[OpTime], peaks: &Peaks, fp16: bool, steps: usize) -> (Vec<Value>, Value) {
    let rows = ops
        .iter()
        .map(|o| {
            let name = o.op();
            let mut m = Map::new();
            m.insert("op".into(), json!(name));
            m.insert("calls".into(), json!(o.calls));
            m.insert("ms".into(), json!(o.secs * 1e3));
            m.insert("category".into(), json!(category_name(&name)));
            m.extend(roofline(o.work, o.secs, category(&name), peaks, fp16));
            Value::Object(m)
        })
        .collect();
    // Per category: time, work of the costed ops, and the time of those without a cost.
    let mut sums: BTreeMap<&'static str, (Option<Category>, f64, Work, f64)> = BTreeMap::new();
    for o in ops {
        let name = o.op();
        let e = sums.entry(category_name(&name)).or_insert((
            category(&name),
            0.0,
            Work::default(),
            0.0,
        ));
        e.1 += o.secs;
        match o.work {
            Some(w) => e.2 += w,
            None => e.3 += o.secs,
        }
    }
    let per_step = |secs: f64| secs * 1e3 / steps.max(1) as f64;
    let mut cats = Map::new();
    for (name, (cat, secs, work, uncosted)) in sums {
        let mut m = Map::new();
        m.insert("ms".into(), json!(secs * 1e3));
        m.insert("ms_per_step".into(), json!(per_step(secs)));
        m.insert("uncosted_ms".into(), json!(uncosted * 1e3));
        m.extend(roofline(Some(work), secs - uncosted, cat, peaks, fp16));
        cats.insert(name.into(), Value::Object(m));
    }
    (rows, Value::Object(cats))
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

/// One roofline row's columns after the name: GFLOP, MB, TFLOP/s, GB/s, FLOP/B, the
/// bound and its % of peak ("-" where unknown).
fn columns(v: &Value) -> String {
    let f = |k: &str, scale: f64, prec: usize| {
        num(v, k).map_or("-".to_string(), |x| format!("{:.*}", prec, x * scale))
    };
    format!(
        "{:>9} {:>9} {:>8} {:>8} {:>7} {:>8} {:>6}",
        f("flops", 1e-9, 2),
        f("bytes", 1e-6, 1),
        f("tflops_per_s", 1.0, 3),
        f("gb_per_s", 1.0, 1),
        f("flop_per_byte", 1.0, 1),
        v.get("bound").and_then(Value::as_str).unwrap_or("-"),
        f("pct_of_peak", 1.0, 1),
    )
}

const HEADER: &str = "    GFLOP        MB  TFLOP/s     GB/s  FLOP/B    bound  %peak";

/// The printed per-op table (the `limit` slowest) and the per-category sums of a bench
/// record.
pub fn table(rec: &Value, profile_steps: usize, limit: usize) -> String {
    let mut s = String::new();
    let ops = rec["ops"].as_array().map(Vec::as_slice).unwrap_or_default();
    let total: f64 = ops
        .iter()
        .filter_map(|o| num(o, "ms"))
        .sum::<f64>()
        .max(1e-12);
    let p = &rec["peaks"];
    let _ = writeln!(
        s,
        "\npeaks ({}): tensor {} / fp32 {} TFLOP/s, memory {} GB/s (copy measured {} GB/s)",
        p["source"].as_str().unwrap_or("?"),
        num(p, "tensor_tflops").map_or("-".into(), |x| format!("{x:.2}")),
        num(p, "fp32_tflops").map_or("-".into(), |x| format!("{x:.2}")),
        num(p, "mem_gb_per_s").map_or("-".into(), |x| format!("{x:.1}")),
        num(p, "measured_copy_gb_per_s").map_or("-".into(), |x| format!("{x:.1}")),
    );
    let _ = writeln!(
        s,
        "per-op time and roofline over {profile_steps} profiled step(s):"
    );
    let _ = writeln!(
        s,
        "{:<28} {:>6} {:>9} {:>6} {HEADER}",
        "op", "calls", "ms", "%"
    );
    for o in ops.iter().take(limit) {
        let ms = num(o, "ms").unwrap_or(0.0);
        let _ = writeln!(
            s,
            "{:<28} {:>6} {:>9.2} {:>5.1}% {}",
            o["op"].as_str().unwrap_or("?"),
            o["calls"].as_u64().unwrap_or(0),
            ms,
            100.0 * ms / total,
            columns(o)
        );
    }
    if ops.len() > limit {
        let _ = writeln!(s, "... {} more ops in --json", ops.len() - limit);
    }
    let _ = writeln!(s, "\nper category:");
    let _ = writeln!(s, "{:<12} {:>9} {:>6} {HEADER}", "category", "ms/step", "%");
    if let Some(cats) = rec["categories"].as_object() {
        let mut order: Vec<(&String, &Value)> = cats.iter().collect();
        order.sort_by(|a, b| {
            num(b.1, "ms")
                .unwrap_or(0.0)
                .total_cmp(&num(a.1, "ms").unwrap_or(0.0))
        });
        for (name, c) in order {
            let _ = writeln!(
                s,
                "{:<12} {:>9.2} {:>5.1}% {}",
                name,
                num(c, "ms_per_step").unwrap_or(0.0),
                100.0 * num(c, "ms").unwrap_or(0.0) / total,
                columns(c)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Pass;

    fn peaks() -> Peaks {
        Peaks {
            source: "test".into(),
            tensor_flops: Some(100e12),
            fp32_flops: Some(10e12),
            mem_bw: 1e12,
            measured_copy_bw: 0.8e12,
            measured_gemm_flops: None,
        }
    }

    fn op(name: &'static str, pass: Pass, secs: f64, work: Option<Work>) -> OpTime {
        OpTime {
            name,
            pass,
            calls: 1,
            secs,
            work,
        }
    }

    #[test]
    fn bound_and_percentages_against_the_ridge() {
        let ops = [
            // 1 TFLOP over 1 GB in 0.1 s: intensity 1000 > ridge 100 (fp16 tensor):
            // compute-bound at 10 TFLOP/s, 10 % of 100.
            op(
                "linear",
                Pass::Forward,
                0.1,
                Some(Work {
                    flops: 1e12,
                    bytes: 1e9,
                }),
            ),
            // 1 GFLOP over 10 GB in 0.02 s: memory-bound at 500 GB/s, 50 % of 1 TB/s.
            op(
                "layer_norm",
                Pass::Backward,
                0.02,
                Some(Work {
                    flops: 1e9,
                    bytes: 1e10,
                }),
            ),
            op("add", Pass::Forward, 0.01, None),
        ];
        let (rows, cats) = report(&ops, &peaks(), true, 2);
        assert_eq!(rows[0]["bound"], "compute");
        assert!((rows[0]["pct_of_peak"].as_f64().unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(rows[1]["op"], "layer_norm.bwd");
        assert_eq!(rows[1]["category"], "norm");
        assert_eq!(rows[1]["bound"], "memory");
        assert!((rows[1]["pct_of_peak"].as_f64().unwrap() - 50.0).abs() < 1e-9);
        assert!(rows[2]["flops"].is_null());
        // Per step over 2 profiled steps; the uncosted op's time is kept apart.
        assert!((cats["gemm"]["ms_per_step"].as_f64().unwrap() - 50.0).abs() < 1e-9);
        assert!((cats["elementwise"]["uncosted_ms"].as_f64().unwrap() - 10.0).abs() < 1e-9);
        // The same GEMM in fp32 is held to the fp32 peak: ridge 10, 100 % of 10 TFLOP/s.
        let (rows, _) = report(&ops[..1], &peaks(), false, 1);
        assert!((rows[0]["pct_of_peak"].as_f64().unwrap() - 100.0).abs() < 1e-9);
        let text = table(
            &json!({"ops": rows, "categories": cats, "peaks": peaks().json()}),
            2,
            30,
        );
        assert!(text.contains("compute"), "{text}");
        assert!(text.contains("per category"), "{text}");
    }
}
