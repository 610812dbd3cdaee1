//! The report's roofline: each profiled op a point (arithmetic intensity, achieved
//! FLOP/s) on log-log axes under the run's ceilings (the FLOP peaks and the memory
//! bandwidths of `peaks`); ops that move bytes without computing (copies) a point on a
//! bandwidth strip under the bandwidth ceiling; ops with no cost or no work listed.

use std::fmt::Write;

use serde_json::Value;

use super::svg::{axis, category_color, esc, num, svg, Log, Side};

const W: f64 = 760.0;
const INTENSITY: &str = "arithmetic intensity (FLOP per byte moved)";
const ACHIEVED_BW: &str = "achieved GB/s (ops that move bytes without FLOPs)";

/// Where an op of the bench record goes on the page.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// On the roofline: FLOP per byte and achieved GFLOP/s.
    Roofline { intensity: f64, gflops: f64 },
    /// On the bandwidth strip (bytes moved, no FLOPs): achieved GB/s.
    Bandwidth { gb_per_s: f64 },
    /// Not drawn, and why.
    Listed(&'static str),
}

/// One op row of the record, placed.
#[derive(Clone, Debug, PartialEq)]
pub struct OpPoint {
    pub op: String,
    pub category: String,
    pub ms: f64,
    pub place: Placement,
    /// The tooltip's details: bound and % of that peak.
    pub detail: String,
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64).filter(|x| x.is_finite())
}

/// Every op of `rec["ops"]`, placed.
pub fn points(rec: &Value) -> Vec<OpPoint> {
    let ops = rec["ops"].as_array().map(Vec::as_slice).unwrap_or_default();
    ops.iter()
        .map(|o| {
            let (flops, bytes, ms) = (f(o, "flops"), f(o, "bytes"), f(o, "ms").unwrap_or(0.0));
            let place = match (flops, bytes) {
                _ if ms <= 0.0 => Placement::Listed("no time measured"),
                (None, _) | (_, None) => Placement::Listed("no cost known"),
                (Some(fl), Some(by)) if fl > 0.0 && by > 0.0 => Placement::Roofline {
                    intensity: fl / by,
                    gflops: fl / (ms * 1e-3) / 1e9,
                },
                (Some(fl), Some(by)) if fl == 0.0 && by > 0.0 => Placement::Bandwidth {
                    gb_per_s: by / (ms * 1e-3) / 1e9,
                },
                (Some(fl), _) if fl > 0.0 => Placement::Listed("FLOPs but no bytes"),
                _ => Placement::Listed("no FLOPs, no bytes"),
            };
            let detail = match (o["bound"].as_str(), f(o, "pct_of_peak")) {
                (Some(b), Some(p)) => format!("{b}-bound, {p:.1} % of its peak"),
                _ => String::new(),
            };
            OpPoint {
                op: o["op"].as_str().unwrap_or("?").to_string(),
                category: o["category"].as_str().unwrap_or("other").to_string(),
                ms,
                place,
                detail,
            }
        })
        .collect()
}

/// A ceiling: its value (GFLOP/s or GB/s) and its label.
pub type Ceiling = (f64, String);

/// The ceilings of a record's `peaks`: FLOP peaks in GFLOP/s and bandwidths in GB/s,
/// each with its label; equal ones (the CPU's one measured GEMM peak, its one
/// measured bandwidth) drawn once.
pub fn ceilings(peaks: &Value) -> (Vec<Ceiling>, Vec<Ceiling>) {
    let mut flops: Vec<Ceiling> = Vec::new();
    for (k, label) in [
        ("tensor_tflops", "fp16 tensor peak"),
        ("fp32_tflops", "fp32 peak"),
    ] {
        if let Some(t) = f(peaks, k).filter(|t| *t > 0.0) {
            match flops.iter_mut().find(|(g, _)| close(*g, t * 1e3)) {
                Some(x) => x.1 = format!("FLOP peak {} TFLOP/s", num(t)),
                None => flops.push((t * 1e3, format!("{label} {} TFLOP/s", num(t)))),
            }
        }
    }
    let mut bw: Vec<Ceiling> = Vec::new();
    for (k, label) in [
        ("mem_gb_per_s", "memory"),
        ("measured_copy_gb_per_s", "copy measured"),
    ] {
        if let Some(g) = f(peaks, k).filter(|g| *g > 0.0) {
            if !bw.iter().any(|(b, _)| close(*b, g)) {
                bw.push((g, format!("{label} {} GB/s", num(g))));
            }
        }
    }
    (flops, bw)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

/// The roofline chart: `circle.op-point` per op with FLOPs and bytes (its category's
/// colour; the slowest labelled by name), under `line.ceiling`s.
pub fn roofline(pts: &[OpPoint], peaks: &Value) -> String {
    let (flops, bw) = ceilings(peaks);
    let on: Vec<(&OpPoint, f64, f64)> = pts
        .iter()
        .filter_map(|p| match p.place {
            Placement::Roofline { intensity, gflops } => Some((p, intensity, gflops)),
            _ => None,
        })
        .collect();
    let (left, top, right, plot_h) = (80.0, 16.0, W - 20.0, 380.0);
    let bottom = top + plot_h;
    // The ridge points (peak ÷ bandwidth) belong on the x axis, the peaks on the y axis.
    let ridges = flops
        .iter()
        .flat_map(|(p, _)| bw.iter().map(move |(b, _)| p / b));
    // Room around the points: a third of a decade right and up, for their names.
    let x = Log::covering(
        on.iter().flat_map(|o| [o.1, o.1 * 2.0]).chain(ridges),
        left,
        right,
    );
    let y = Log::covering(
        on.iter()
            .flat_map(|o| [o.2, o.2 * 2.0])
            .chain(flops.iter().map(|p| p.0 * 2.0)),
        bottom,
        top,
    );
    let mut s = format!(
        r##"<defs><clipPath id="roof-clip"><rect x="{left}" y="{top}" width="{}" height="{plot_h}"/></clipPath></defs>"##,
        right - left
    );
    let xl = x.grid(&mut s, Side::Bottom, (top, bottom));
    let yl = y.grid(&mut s, Side::Left, (left, right));
    s += r##"<g clip-path="url(#roof-clip)">"##;
    let x_hi = 10f64.powi(x.hi);
    let x_lo = 10f64.powi(x.lo);
    let top_peak = flops.iter().map(|p| p.0).fold(f64::NAN, f64::max);
    for (i, (b, label)) in bw.iter().enumerate() {
        // y = bandwidth × intensity, up to the highest FLOP peak (or the axis' end).
        let x_end = if top_peak.is_finite() {
            (top_peak / b).min(x_hi)
        } else {
            x_hi
        };
        let dash = if i > 0 {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let (x0, y0) = (x.at(x_lo), y.at(b * x_lo));
        let _ = write!(
            s,
            r##"<line class="ceiling memory" x1="{x0:.1}" y1="{y0:.1}" x2="{:.1}" y2="{:.1}" stroke="#444" stroke-width="2"{dash}><title>{}</title></line>"##,
            x.at(x_end),
            y.at(b * x_end),
            esc(label)
        );
        // The label along the line, just inside where it enters the plot.
        let enter = x_lo.max(10f64.powi(y.lo) / b) * 2.0;
        let slope = (y.at(b * enter * 10.0) - y.at(b * enter)) / (x.at(enter * 10.0) - x.at(enter));
        let (lx, ly) = (x.at(enter), y.at(b * enter) - 6.0 - 12.0 * i as f64);
        let _ = write!(
            s,
            r##"<text class="ceiling-label" x="{lx:.1}" y="{ly:.1}" transform="rotate({:.1} {lx:.1} {ly:.1})">{}</text>"##,
            slope.atan().to_degrees(),
            esc(label)
        );
    }
    for (i, (p, label)) in flops.iter().enumerate() {
        let x_start = bw.iter().map(|(b, _)| p / b).fold(f64::NAN, f64::min);
        let x0 = if x_start.is_finite() { x_start } else { x_lo };
        let dash = if i > 0 {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let _ = write!(
            s,
            r##"<line class="ceiling compute" x1="{:.1}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#444" stroke-width="2"{dash}><title>{}</title></line><text class="ceiling-label" x="{:.1}" y="{:.1}">{}</text>"##,
            x.at(x0),
            x.at(x_hi),
            esc(label),
            x.at(x0) + 4.0,
            y.at(*p) - 6.0,
            esc(label),
            yy = y.at(*p),
        );
    }
    s += "</g>";
    // Points, slowest last so they sit on top.
    let mut order: Vec<&(&OpPoint, f64, f64)> = on.iter().collect();
    order.sort_by(|a, b| a.0.ms.total_cmp(&b.0.ms));
    for (p, xi, yg) in &order {
        let what = format!("{} FLOP/B, {} GFLOP/s", num(*xi), num(*yg));
        point(&mut s, p, x.at(*xi), y.at(*yg), &what);
    }
    // Names of up to eight, slowest first, where a name overlaps no earlier one (every
    // point names its op in its tooltip).
    let mut boxes: Vec<(f64, f64, f64)> = Vec::new();
    for (p, xi, yg) in order.iter().rev() {
        let (lx, ly) = (x.at(*xi) + 7.0, y.at(*yg) - 5.0);
        let w = 6.5 * p.op.chars().count() as f64 + 4.0;
        let (lx, anchor) = if lx + w > right {
            (lx - 14.0 - w, lx - 14.0)
        } else {
            (lx, lx)
        };
        let free = boxes
            .iter()
            .all(|&(bx, by, bw)| lx + w < bx || bx + bw < lx || (ly - by).abs() > 11.0);
        if boxes.len() < 8 && free {
            boxes.push((lx, ly, w));
            let _ = write!(
                s,
                r##"<text class="op-label" x="{anchor:.1}" y="{ly:.1}"{}>{}</text>"##,
                if anchor == lx {
                    ""
                } else {
                    r#" text-anchor="end""#
                },
                esc(&p.op)
            );
        }
    }
    axis(&mut s, Side::Bottom, bottom, (left, right), &xl, INTENSITY);
    axis(
        &mut s,
        Side::Left,
        left,
        (bottom, top),
        &yl,
        "achieved GFLOP/s",
    );
    svg(
        "roofline",
        W,
        bottom + 44.0,
        "roofline: each op against the ceilings",
        &s,
    )
}

fn point(s: &mut String, p: &OpPoint, cx: f64, cy: f64, what: &str) {
    let _ = write!(
        s,
        r##"<circle class="op-point" data-op="{op}" data-category="{cat}" cx="{cx:.1}" cy="{cy:.1}" r="5" fill="{}" fill-opacity="0.85" stroke="#222" stroke-width="0.5"><title>{op} ({cat}): {} ms, {what}{}</title></circle>"##,
        category_color(&p.category),
        num(p.ms),
        if p.detail.is_empty() {
            String::new()
        } else {
            format!(", {}", esc(&p.detail))
        },
        op = esc(&p.op),
        cat = esc(&p.category),
    );
}

/// The ops that move bytes without FLOPs, one row per category, on a log GB/s axis
/// under the bandwidth ceilings; None when there are none.
pub fn bandwidth(pts: &[OpPoint], peaks: &Value) -> Option<String> {
    let on: Vec<(&OpPoint, f64)> = pts
        .iter()
        .filter_map(|p| match p.place {
            Placement::Bandwidth { gb_per_s } => Some((p, gb_per_s)),
            _ => None,
        })
        .collect();
    if on.is_empty() {
        return None;
    }
    let (_, bw) = ceilings(peaks);
    let mut cats: Vec<&str> = on.iter().map(|o| o.0.category.as_str()).collect();
    cats.dedup();
    cats.sort();
    cats.dedup();
    let (left, right, top, row) = (120.0, W - 20.0, 16.0, 26.0);
    let bottom = top + row * cats.len() as f64 + 8.0;
    let x = Log::covering(
        on.iter().map(|o| o.1).chain(bw.iter().map(|b| b.0)),
        left,
        right,
    );
    let mut s = String::new();
    let xl = x.grid(&mut s, Side::Bottom, (top, bottom));
    for (i, (b, label)) in bw.iter().enumerate() {
        let dash = if i > 0 {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let bx = x.at(*b);
        let _ = write!(
            s,
            r##"<line class="ceiling memory" x1="{bx:.1}" y1="{top:.1}" x2="{bx:.1}" y2="{bottom:.1}" stroke="#444" stroke-width="2"{dash}><title>{l}</title></line><text class="ceiling-label" x="{:.1}" y="{:.1}" text-anchor="end">{l}</text>"##,
            bx - 4.0,
            top + 10.0 + 12.0 * i as f64,
            l = esc(label),
        );
    }
    for (i, c) in cats.iter().enumerate() {
        let cy = top + row * (i as f64 + 0.5);
        let _ = write!(
            s,
            r##"<text class="cat-label" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 8.0,
            cy + 4.0,
            esc(c)
        );
        for (p, g) in on.iter().filter(|o| o.0.category == *c) {
            point(&mut s, p, x.at(*g), cy, &format!("{} GB/s", num(*g)));
        }
    }
    axis(
        &mut s,
        Side::Bottom,
        bottom,
        (left, right),
        &xl,
        ACHIEVED_BW,
    );
    Some(svg(
        "bandwidth",
        W,
        bottom + 44.0,
        "ops without FLOPs against the bandwidth ceilings",
        &s,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ops_are_placed_by_their_cost() {
        let rec = json!({"ops": [
            {"op": "linear", "category": "gemm", "ms": 2.0, "flops": 4e9, "bytes": 2e7,
             "bound": "compute", "pct_of_peak": 12.5},
            {"op": "cat", "category": "copies", "ms": 1.0, "flops": 0.0, "bytes": 1e6},
            {"op": "reshape", "category": "copies", "ms": 0.1, "flops": 0.0, "bytes": 0.0},
            {"op": "mystery", "category": "other", "ms": 0.1, "flops": null, "bytes": null},
        ]});
        let p = points(&rec);
        // 4 GFLOP in 2 ms: 2000 GFLOP/s at 200 FLOP/B.
        assert_eq!(
            p[0].place,
            Placement::Roofline {
                intensity: 200.0,
                gflops: 2000.0
            }
        );
        assert_eq!(p[0].detail, "compute-bound, 12.5 % of its peak");
        assert_eq!(p[1].place, Placement::Bandwidth { gb_per_s: 1.0 });
        assert_eq!(p[2].place, Placement::Listed("no FLOPs, no bytes"));
        assert_eq!(p[3].place, Placement::Listed("no cost known"));
    }

    #[test]
    fn equal_ceilings_are_drawn_once() {
        let cpu = json!({"tensor_tflops": 0.1, "fp32_tflops": 0.1, "mem_gb_per_s": 20.0,
                         "measured_copy_gb_per_s": 20.0});
        let (f, b) = ceilings(&cpu);
        assert_eq!((f.len(), b.len()), (1, 1));
        assert!((f[0].0 - 100.0).abs() < 1e-9);
        let t4 = json!({"tensor_tflops": 65.0, "fp32_tflops": 8.1, "mem_gb_per_s": 320.0,
                        "measured_copy_gb_per_s": 240.0});
        let (f, b) = ceilings(&t4);
        assert_eq!((f.len(), b.len()), (2, 2));
        let svg = roofline(&[], &t4);
        assert_eq!(svg.matches(r##"class="ceiling compute""##).count(), 2);
        assert_eq!(svg.matches(r##"class="ceiling memory""##).count(), 2);
    }
}
