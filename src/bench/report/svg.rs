//! The report's drawing vocabulary: escaping, number formats, colours, and linear and
//! log-10 scales with their axes, as inline SVG text.

use std::fmt::Write;

/// Text for HTML and SVG (element content and quoted attribute values).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// A number with about three significant digits, plain between 0.001 and 1e6 and in
/// exponent form outside.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if x == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{x:.2e}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The colour of a category (the per-category bars' legend, the roofline's points).
pub fn category_color(name: &str) -> &'static str {
    match name {
        "gemm" => "#1f77b4",
        "attention" => "#d62728",
        "norm" => "#2ca02c",
        "elementwise" => "#9467bd",
        "loss" => "#8c564b",
        "optimizer" => "#ff7f0e",
        "copies" => "#17becf",
        _ => "#7f7f7f",
    }
}

/// A linear map from `[0, max]` onto `[p0, p1]` pixels.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub max: f64,
    pub p0: f64,
    pub p1: f64,
}

impl Linear {
    pub fn at(&self, v: f64) -> f64 {
        self.p0 + (self.p1 - self.p0) * (v / self.max.max(f64::MIN_POSITIVE)).clamp(0.0, 1.0)
    }
}

/// A log-10 map from whole decades `[10^lo, 10^hi]` onto `[p0, p1]` pixels.
#[derive(Clone, Copy, Debug)]
pub struct Log {
    pub lo: i32,
    pub hi: i32,
    pub p0: f64,
    pub p1: f64,
}

impl Log {
    /// The decades that hold every positive value of `vals` (at least one decade).
    pub fn covering(vals: impl IntoIterator<Item = f64>, p0: f64, p1: f64) -> Log {
        let (mut lo, mut hi) = (i32::MAX, i32::MIN);
        for v in vals.into_iter().filter(|v| v.is_finite() && *v > 0.0) {
            lo = lo.min(v.log10().floor() as i32);
            hi = hi.max(v.log10().ceil() as i32);
        }
        if lo > hi {
            (lo, hi) = (0, 1);
        }
        Log {
            lo,
            hi: hi.max(lo + 1),
            p0,
            p1,
        }
    }

    pub fn at(&self, v: f64) -> f64 {
        let t = (v.max(f64::MIN_POSITIVE).log10() - self.lo as f64) / (self.hi - self.lo) as f64;
        self.p0 + (self.p1 - self.p0) * t
    }

    pub fn ticks(&self) -> impl Iterator<Item = f64> {
        (self.lo..=self.hi).map(|k| 10f64.powi(k))
    }

    /// Grid lines at each decade across `span` (see [`grid`]); returns the decades'
    /// pixels and labels for [`axis`].
    pub fn grid(&self, s: &mut String, side: Side, span: (f64, f64)) -> Vec<(f64, String)> {
        let ticks: Vec<(f64, String)> = self.ticks().map(|t| (self.at(t), num(t))).collect();
        let px: Vec<f64> = ticks.iter().map(|t| t.0).collect();
        grid(s, side, &px, span);
        ticks
    }
}

/// Which side of the plot an axis is drawn on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    Bottom,
    Left,
}

/// An axis at `at` (the y of a bottom axis, the x of a left one) spanning `from..to`
/// along it, with a grid line, a tick and a label at each `(pixel, label)` and the
/// axis title.
pub fn axis(
    s: &mut String,
    side: Side,
    at: f64,
    (from, to): (f64, f64),
    ticks: &[(f64, String)],
    title: &str,
) {
    let title_at = match side {
        Side::Bottom => at + 34.0,
        Side::Left => at - 48.0,
    };
    match side {
        Side::Bottom => {
            let _ = write!(
                s,
                r##"<line class="axis" x1="{from:.1}" y1="{at:.1}" x2="{to:.1}" y2="{at:.1}" stroke="#333"/>"##
            );
            for (x, label) in ticks {
                let _ = write!(
                    s,
                    r##"<line x1="{x:.1}" y1="{at:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"##,
                    at + 4.0,
                    at + 16.0,
                    esc(label)
                );
            }
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{title_at:.1}" text-anchor="middle" class="axis-title">{}</text>"##,
                (from + to) / 2.0,
                esc(title)
            );
        }
        Side::Left => {
            let _ = write!(
                s,
                r##"<line class="axis" x1="{at:.1}" y1="{from:.1}" x2="{at:.1}" y2="{to:.1}" stroke="#333"/>"##
            );
            for (y, label) in ticks {
                let _ = write!(
                    s,
                    r##"<line x1="{:.1}" y1="{y:.1}" x2="{at:.1}" y2="{y:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
                    at - 4.0,
                    at - 6.0,
                    y + 4.0,
                    esc(label)
                );
            }
            let mid = (from + to) / 2.0;
            let _ = write!(
                s,
                r##"<text x="{title_at:.1}" y="{mid:.1}" text-anchor="middle" transform="rotate(-90 {title_at:.1} {mid:.1})" class="axis-title">{}</text>"##,
                esc(title)
            );
        }
    }
}

/// Light grid lines across the plot at each tick: vertical ones for a bottom axis
/// (from `y0` to `y1`), horizontal ones for a left axis (from `x0` to `x1`).
pub fn grid(s: &mut String, side: Side, ticks: &[f64], (a, b): (f64, f64)) {
    for t in ticks {
        let _ = match side {
            Side::Bottom => write!(
                s,
                r##"<line x1="{t:.1}" y1="{a:.1}" x2="{t:.1}" y2="{b:.1}" stroke="#ddd"/>"##
            ),
            Side::Left => write!(
                s,
                r##"<line x1="{a:.1}" y1="{t:.1}" x2="{b:.1}" y2="{t:.1}" stroke="#ddd"/>"##
            ),
        };
    }
}

/// An `<svg>` element of `w` × `h` pixels with an id and an accessible title, around
/// `body`.
pub fn svg(id: &str, w: f64, h: f64, title: &str, body: &str) -> String {
    format!(
        r##"<svg id="{id}" xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" role="img"><title>{}</title>{body}</svg>"##,
        esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_scales() {
        assert_eq!(
            esc(r##"<a href="x">&'"##),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(num(0.0), "0");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(2.5e-5), "2.50e-5");
        let l = Log::covering([0.02, 300.0], 0.0, 500.0);
        assert_eq!((l.lo, l.hi), (-2, 3));
        assert!((l.at(1.0) - 200.0).abs() < 1e-9);
        assert_eq!(l.ticks().count(), 6);
        // No positive value: one decade, not a panic.
        let l = Log::covering([0.0, f64::NAN], 0.0, 1.0);
        assert_eq!((l.lo, l.hi), (0, 1));
        let lin = Linear {
            max: 4.0,
            p0: 100.0,
            p1: 0.0,
        };
        assert!((lin.at(1.0) - 75.0).abs() < 1e-9);
        assert!((lin.at(9.0) - 0.0).abs() < 1e-9);
    }
}
