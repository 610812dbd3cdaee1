//! The report's bar charts: time per category (fusebox beside PyTorch under
//! `--compare`) and memory (the plan's components beside the measured peak's, stacked).

use std::fmt::Write;

use serde_json::Value;

use super::svg::{axis, category_color, esc, grid, num, svg, Linear, Side};
use crate::plan::human;
use crate::profile::cost::Category;

const W: f64 = 760.0;
const FUSEBOX: &str = "#1f77b4";
const TORCH: &str = "#ee6a2f";

/// One category's ms per profiled step: fusebox's, and PyTorch's when compared.
#[derive(Clone, Debug, PartialEq)]
pub struct CategoryTimes {
    pub name: String,
    pub fusebox: f64,
    pub torch: Option<f64>,
}

/// The categories of a bench record in the table's order (any other after them), with
/// PyTorch's time from its `compare` object when there is one.
pub fn category_times(rec: &Value) -> Vec<CategoryTimes> {
    let cmp = rec["compare"]["categories"].as_object();
    let mut names: Vec<String> = Category::ALL.iter().map(|c| c.name().to_string()).collect();
    let mut extra: Vec<String> = rec["categories"]
        .as_object()
        .into_iter()
        .chain(cmp)
        .flat_map(|m| m.keys().cloned())
        .filter(|k| !names.contains(k))
        .collect();
    extra.sort();
    extra.dedup();
    names.extend(extra);
    names
        .into_iter()
        .filter_map(|name| {
            let ours = rec["categories"][&name]["ms_per_step"].as_f64();
            let theirs = cmp.map(|c| c.get(&name)?["torch_ms_per_step"].as_f64());
            (ours.is_some() || theirs.flatten().is_some()).then(|| CategoryTimes {
                fusebox: ours.unwrap_or(0.0),
                torch: theirs.map(|t| t.unwrap_or(0.0)),
                name,
            })
        })
        .collect()
}

/// Horizontal bars of ms per profiled step by category: `rect.bar.fusebox` and, when
/// compared, `rect.bar.torch` with the ratio.
pub fn categories(rows: &[CategoryTimes]) -> String {
    let compared = rows.iter().any(|r| r.torch.is_some());
    let (bar, gap) = (16.0, if compared { 12.0 } else { 8.0 });
    let group = if compared { 2.0 * bar + 2.0 } else { bar } + gap;
    let (left, top) = (120.0, 34.0);
    let h = top + rows.len() as f64 * group + 44.0;
    let max = rows
        .iter()
        .flat_map(|r| [r.fusebox, r.torch.unwrap_or(0.0)])
        .fold(0.0, f64::max);
    let x = Linear {
        max: nice_ceiling(max),
        p0: left,
        p1: W - 150.0,
    };
    let mut s = String::new();
    legend_swatch(&mut s, left, 12.0, FUSEBOX, "fusebox");
    if compared {
        legend_swatch(&mut s, left + 110.0, 12.0, TORCH, "PyTorch");
    }
    let ticks: Vec<f64> = (0..=4).map(|i| x.max * i as f64 / 4.0).collect();
    let bottom = top + rows.len() as f64 * group;
    grid(
        &mut s,
        Side::Bottom,
        &ticks.iter().map(|&t| x.at(t)).collect::<Vec<_>>(),
        (top - 4.0, bottom),
    );
    for (i, r) in rows.iter().enumerate() {
        let y = top + i as f64 * group;
        let _ = write!(
            s,
            r##"<text class="cat-label" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 8.0,
            y + if compared { bar + 4.0 } else { bar - 4.0 },
            esc(&r.name)
        );
        bar_row(&mut s, &x, y, bar, "fusebox", &r.name, r.fusebox, "");
        if let Some(t) = r.torch {
            let ratio = if t > 0.0 {
                format!(" (fusebox {:.2}x)", r.fusebox / t)
            } else {
                String::new()
            };
            bar_row(&mut s, &x, y + bar + 2.0, bar, "torch", &r.name, t, &ratio);
        }
    }
    let labelled: Vec<(f64, String)> = ticks.iter().map(|&t| (x.at(t), num(t))).collect();
    axis(
        &mut s,
        Side::Bottom,
        bottom,
        (x.p0, x.p1),
        &labelled,
        "ms per profiled step",
    );
    svg(
        "categories",
        W,
        h,
        "time per category, ms per profiled step",
        &s,
    )
}

#[allow(clippy::too_many_arguments)]
fn bar_row(s: &mut String, x: &Linear, y: f64, h: f64, who: &str, cat: &str, ms: f64, note: &str) {
    let color = if who == "torch" { TORCH } else { FUSEBOX };
    let w = (x.at(ms) - x.p0).max(if ms > 0.0 { 1.0 } else { 0.0 });
    let _ = write!(
        s,
        r##"<rect class="bar {who}" data-category="{c}" data-ms="{ms}" x="{:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{color}"><title>{c}: {who} {} ms per step{}</title></rect><text class="value" x="{:.1}" y="{:.1}">{} ms{}</text>"##,
        x.p0,
        num(ms),
        esc(note),
        x.p0 + w + 4.0,
        y + h - 4.0,
        num(ms),
        esc(note),
        c = esc(cat),
    );
}

fn legend_swatch(s: &mut String, x: f64, y: f64, color: &str, label: &str) {
    let _ = write!(
        s,
        r##"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"##,
        y - 10.0,
        x + 16.0,
        y,
        esc(label)
    );
}

/// The smallest 1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10^k at or above `v` (the scale's
/// end: a fifth and a quarter of each are round too).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * p)
}

/// One stacked bar of the memory chart: its name and its (what, bytes) segments.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryBar {
    pub name: String,
    pub segments: Vec<(String, u64)>,
}

/// The memory bars of a bench record: the plan's components, the tracker's measured
/// peak split at the optimizer's construction, and on CUDA the caching allocator's
/// reserved peak and NVML's used memory.
pub fn memory_bars(rec: &Value) -> Vec<MemoryBar> {
    let mut bars = Vec::new();
    if let Some(c) = rec["memory_plan"]["components"].as_array() {
        bars.push(MemoryBar {
            name: "plan".into(),
            segments: c
                .iter()
                .map(|x| {
                    let what = x["what"].as_str().unwrap_or("?").to_string();
                    (what, x["bytes"].as_u64().unwrap_or(0))
                })
                .collect(),
        });
    }
    let m = &rec["measured_memory"];
    if m.is_object() {
        let seg = |k: &str| m[k].as_u64().unwrap_or(0);
        bars.push(MemoryBar {
            name: "measured (tracker)".into(),
            segments: vec![
                (
                    "weights and the batch".into(),
                    seg("weights_and_batch_bytes"),
                ),
                (
                    "optimizer state (fp32 masters, moments)".into(),
                    seg("optimizer_state_bytes"),
                ),
                (
                    "step peak above them (activations, gradients, transients)".into(),
                    seg("step_bytes"),
                ),
            ],
        });
    }
    for (k, name) in [
        ("allocator_peak_reserved_bytes", "allocator reserved peak"),
        ("nvml_used_bytes", "NVML used"),
    ] {
        if let Some(b) = rec[k].as_u64() {
            bars.push(MemoryBar {
                name: name.into(),
                segments: vec![(format!("{name} (CUDA)"), b)],
            });
        }
    }
    bars
}

/// A segment's colour by what it holds, so the plan's and the measured bar line up.
pub fn memory_color(what: &str) -> &'static str {
    let w = what.to_ascii_lowercase();
    if w.starts_with("optimizer") || w.contains("adamw") || w.contains("adafactor") {
        "#ff7f0e"
    } else if w.contains("master") {
        "#9467bd"
    } else if w.contains("weights") {
        "#1f77b4"
    } else if w.contains("peak") && !w.contains("allocator") {
        "#2ca02c"
    } else if w.contains("slack") {
        "#bcbd22"
    } else if w.contains("cublas") {
        "#8c564b"
    } else if w.contains("context") || w.contains("nvml") {
        "#7f7f7f"
    } else {
        "#17becf"
    }
}

/// Vertical stacked bars (`rect.segment`, one per component) on a byte axis, with a
/// dashed line at the plan's tensor peak.
pub fn memory(bars: &[MemoryBar], plan_tensor_peak: Option<u64>) -> String {
    let (left, top, plot_h, bar_w, step) = (90.0, 20.0, 300.0, 90.0, 150.0);
    let total = |b: &MemoryBar| b.segments.iter().map(|s| s.1).sum::<u64>();
    let max = bars
        .iter()
        .map(total)
        .chain(plan_tensor_peak)
        .max()
        .unwrap_or(0) as f64;
    let gib = (1u64 << 30) as f64;
    // A byte axis in round MiB or GiB.
    let unit = if max >= gib { gib } else { (1u64 << 20) as f64 };
    let y = Linear {
        max: nice_ceiling(max / unit) * unit,
        p0: top + plot_h,
        p1: top,
    };
    let mut s = String::new();
    let ticks: Vec<f64> = (0..=5).map(|i| y.max * i as f64 / 5.0).collect();
    grid(
        &mut s,
        Side::Left,
        &ticks.iter().map(|&t| y.at(t)).collect::<Vec<_>>(),
        (left, W - 20.0),
    );
    for (i, b) in bars.iter().enumerate() {
        let x = left + 30.0 + i as f64 * step;
        let mut acc = 0u64;
        for (what, bytes) in &b.segments {
            let (y0, y1) = (y.at(acc as f64), y.at((acc + bytes) as f64));
            acc += bytes;
            let _ = write!(
                s,
                r##"<rect class="segment" data-bar="{bar}" data-bytes="{bytes}" x="{x:.1}" y="{y1:.1}" width="{bar_w:.1}" height="{:.1}" fill="{}" stroke="#fff"><title>{bar}: {} — {}</title></rect>"##,
                (y0 - y1).max(0.0),
                memory_color(what),
                esc(what),
                human(*bytes as usize),
                bar = esc(&b.name),
            );
            if y0 - y1 >= 14.0 {
                let _ = write!(
                    s,
                    r##"<text class="seg-label" x="{:.1}" y="{:.1}" text-anchor="middle" fill="#fff">{}</text>"##,
                    x + bar_w / 2.0,
                    (y0 + y1) / 2.0 + 4.0,
                    human(*bytes as usize)
                );
            }
        }
        let _ = write!(
            s,
            r##"<text class="bar-total" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text class="bar-name" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x + bar_w / 2.0,
            y.at(acc as f64) - 4.0,
            human(acc as usize),
            x + bar_w / 2.0,
            top + plot_h + 18.0,
            esc(&b.name)
        );
    }
    if let Some(p) = plan_tensor_peak {
        let py = y.at(p as f64);
        let _ = write!(
            s,
            r##"<line class="plan-tensor-peak" x1="{left:.1}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#333" stroke-dasharray="5 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="legend">plan: tensor peak {}</text>"##,
            W - 20.0,
            W - 20.0,
            py - 4.0,
            human(p as usize)
        );
    }
    let unit_name = if unit == gib { "GiB" } else { "MiB" };
    let labelled: Vec<(f64, String)> = ticks
        .iter()
        .map(|&t| (y.at(t), format!("{} {unit_name}", num(t / unit))))
        .collect();
    axis(&mut s, Side::Left, left, (y.p0, y.p1), &labelled, "bytes");
    svg(
        "memory",
        W,
        top + plot_h + 30.0,
        "memory: the plan beside the measured peak, by component",
        &s,
    )
}

/// The legend of the memory bars, one list per bar: colour, component and bytes.
pub fn memory_legend(bars: &[MemoryBar]) -> String {
    let mut s = String::from(r##"<div class="mem-legend">"##);
    for b in bars {
        let _ = write!(s, "<div><b>{}</b><ul>", esc(&b.name));
        for (what, bytes) in &b.segments {
            let _ = write!(
                s,
                r##"<li><span class="swatch" style="background:{}"></span>{} — {}</li>"##,
                memory_color(what),
                esc(what),
                human(*bytes as usize)
            );
        }
        s += "</ul></div>";
    }
    s + "</div>"
}

/// The colour legend of the categories present in `names`.
pub fn category_legend<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::from(r##"<p class="cat-legend">"##);
    for n in names {
        let _ = write!(
            s,
            r##"<span><span class="swatch" style="background:{}"></span>{}</span> "##,
            category_color(n),
            esc(n)
        );
    }
    s + "</p>"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 4.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
        assert_eq!(nice_ceiling(0.011), 0.015);
        assert_eq!(nice_ceiling(1013.4), 1500.0);
        assert_eq!(nice_ceiling(900.0), 1000.0);
    }

    #[test]
    fn plan_and_measured_components_share_colours() {
        for (plan, measured) in [
            ("weights (fp16 working copy)", "weights and the batch"),
            (
                "AdamW m and v (fp32)",
                "optimizer state (fp32 masters, moments)",
            ),
            (
                "forward + backward peak (saved activations 1 MiB, ...)",
                "step peak above them (activations, gradients, transients)",
            ),
        ] {
            assert_eq!(memory_color(plan), memory_color(measured), "{plan}");
        }
        assert_ne!(
            memory_color("fp32 master weights (adamw)"),
            memory_color("weights (fp32)")
        );
        assert_ne!(
            memory_color("allocator reserved peak (CUDA)"),
            memory_color("forward + backward peak")
        );
    }
}
