//! `bench --compare torch.json`: PyTorch's time per category for the same workload
//! (`tools/torch_baseline.py --profile`, torch.profiler's CUDA kernels or CPU aten ops
//! mapped onto the categories of profile/cost.rs) beside fusebox's, with the ratio per
//! category, so the gap is located and not only measured.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::profile::cost::Category;

/// What `tools/torch_baseline.py --profile` wrote, checked.
#[derive(Clone, Debug)]
pub struct TorchProfile {
    pub file: String,
    /// The whole record (impl, model, batch, seq, tgt_seq, device, ...).
    pub rec: Value,
    /// Milliseconds per step by category name (every category of [`Category::ALL`],
    /// and any other the script reported).
    pub ms_per_step: BTreeMap<String, f64>,
}

const EXPECTED: &str = "the JSON object `tools/torch_baseline.py --profile FILE` writes, \
     with `categories.<name>.ms_per_step` for each of gemm, attention, norm, elementwise, \
     loss, optimizer, copies";

/// Read and check a comparison file; the error names the file and what was expected.
pub fn load(path: &Path) -> Result<TorchProfile> {
    let file = path.display().to_string();
    let bad = |what: String| Error::msg(format!("--compare {file}: {what}; expected {EXPECTED}"));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    let rec: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| bad(format!("not JSON ({e})")))?;
    if let Some(err) = rec.get("error").and_then(Value::as_str) {
        return Err(bad(format!("the PyTorch run it records failed: {err}")));
    }
    let cats = rec
        .get("categories")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no `categories` object".into()))?;
    let mut ms_per_step = BTreeMap::new();
    for (name, v) in cats {
        let ms = v.get("ms_per_step").and_then(Value::as_f64);
        match ms {
            Some(ms) if ms.is_finite() && ms >= 0.0 => {
                ms_per_step.insert(name.clone(), ms);
            }
            _ => {
                return Err(bad(format!(
                    "`categories.{name}.ms_per_step` is {}, not a number >= 0",
                    v.get("ms_per_step").unwrap_or(&Value::Null)
                )))
            }
        }
    }
    if let Some(c) = Category::ALL
        .iter()
        .find(|c| !ms_per_step.contains_key(c.name()))
    {
        return Err(bad(format!("`categories.{}` is absent", c.name())));
    }
    Ok(TorchProfile {
        file,
        rec,
        ms_per_step,
    })
}

/// The `compare` object of a bench record: per category fusebox's and PyTorch's ms per
/// step and their ratio (fusebox ÷ PyTorch: above 1, fusebox is slower there), and
/// which workload fields differ from `workload` (model, batch, seq, tgt_seq).
pub fn compare(rec: &Value, torch: &TorchProfile, workload: &Value) -> Value {
    let ours = |c: &str| rec["categories"][c]["ms_per_step"].as_f64().unwrap_or(0.0);
    let mut names: Vec<String> = Category::ALL.iter().map(|c| c.name().to_string()).collect();
    for n in torch.ms_per_step.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    if let Some(cats) = rec["categories"].as_object() {
        names.extend(
            cats.keys()
                .filter(|k| !names.contains(k))
                .cloned()
                .collect::<Vec<_>>(),
        );
    }
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let mut cats = Map::new();
    let (mut ours_total, mut theirs_total) = (0.0, 0.0);
    for n in &names {
        let (a, b) = (ours(n), torch.ms_per_step.get(n).copied().unwrap_or(0.0));
        ours_total += a;
        theirs_total += b;
        cats.insert(
            n.clone(),
            json!({"fusebox_ms_per_step": a, "torch_ms_per_step": b, "ratio": ratio(a, b)}),
        );
    }
    let differs: Vec<String> = ["model", "batch", "seq", "tgt_seq"]
        .iter()
        .filter(|k| workload.get(**k) != torch.rec.get(**k))
        .map(|k| {
            format!(
                "{k} {} here, {} there",
                workload.get(*k).unwrap_or(&Value::Null),
                torch.rec.get(*k).unwrap_or(&Value::Null)
            )
        })
        .collect();
    json!({
        "file": torch.file,
        "torch_impl": torch.rec.get("impl"),
        "torch_device": torch.rec.get("device"),
        "torch_profile_source": torch.rec.get("profile_source"),
        "workload_differs": differs,
        "categories": cats,
        "total": {
            "fusebox_ms_per_step": ours_total,
            "torch_ms_per_step": theirs_total,
            "ratio": ratio(ours_total, theirs_total),
        },
    })
}

/// The printed comparison.
pub fn table(cmp: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nper category against PyTorch ({}: {} on {}, {}):",
        cmp["file"].as_str().unwrap_or("?"),
        cmp["torch_impl"].as_str().unwrap_or("?"),
        cmp["torch_device"].as_str().unwrap_or("?"),
        cmp["torch_profile_source"].as_str().unwrap_or("?"),
    );
    if let Some(d) = cmp["workload_differs"].as_array().filter(|d| !d.is_empty()) {
        let d: Vec<&str> = d.iter().filter_map(Value::as_str).collect();
        let _ = writeln!(s, "note: not the same workload: {}", d.join("; "));
    }
    let _ = writeln!(
        s,
        "{:<12} {:>12} {:>12} {:>9}",
        "category", "fusebox ms", "torch ms", "ratio"
    );
    let row = |s: &mut String, name: &str, v: &Value| {
        let _ = writeln!(
            s,
            "{:<12} {:>12.2} {:>12.2} {:>9}",
            name,
            v["fusebox_ms_per_step"].as_f64().unwrap_or(0.0),
            v["torch_ms_per_step"].as_f64().unwrap_or(0.0),
            v["ratio"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.2}x")),
        );
    };
    if let Some(cats) = cmp["categories"].as_object() {
        // The categories in their table's order, any other after them.
        let rank = |n: &str| Category::ALL.iter().position(|c| c.name() == n);
        let mut order: Vec<(&String, &Value)> = cats.iter().collect();
        order.sort_by_key(|(n, _)| (rank(n).unwrap_or(usize::MAX), n.to_string()));
        for (name, v) in order {
            row(&mut s, name, v);
        }
    }
    row(&mut s, "total", &cmp["total"]);
    let _ = writeln!(
        s,
        "(ms per profiled step; ratio = fusebox / PyTorch, above 1 = slower)"
    );
    s
}
