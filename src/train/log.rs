//! The run's log: `metrics.jsonl` (one JSON object per line, a user can plot it) and
//! `curves.svg`.
//!
//! A new run starts its own file; a resumed run continues it from the line its
//! checkpoint counted, so an interrupted and resumed run has the same lines as one that
//! was not interrupted (timings aside). A failed write warns once and training goes on:
//! a full disk must not cost the run its weights.

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use serde_json::Value;

use crate::error::{Error, Result};

/// Appends JSON lines to `metrics.jsonl` and keeps the series for the plot.
pub struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
    /// Lines in the file (what a checkpoint records).
    pub lines: usize,
    warned: bool,
    /// The eval metric the plot draws.
    metric: String,
    pub losses: Vec<(f64, f64)>,
    pub evals: Vec<(f64, f64)>,
}

impl MetricsLog {
    /// A new run's log: an existing file is replaced.
    pub fn create(dir: &Path, metric: &str) -> Result<MetricsLog> {
        MetricsLog::open(dir, None, metric)
    }

    /// The log of a resumed run: the first `keep` lines of the file (what the checkpoint
    /// saw), then appends. Loss and `metric` values of the kept lines rebuild the plot.
    pub fn resume(dir: &Path, keep: usize, metric: &str) -> Result<MetricsLog> {
        MetricsLog::open(dir, Some(keep), metric)
    }

    fn open(dir: &Path, keep: Option<usize>, metric: &str) -> Result<MetricsLog> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("metrics.jsonl");
        let kept: Vec<String> = match keep {
            Some(k) => std::fs::read_to_string(&path)
                .map_err(|e| Error::io(&path, e))?
                .lines()
                .take(k)
                .map(String::from)
                .collect(),
            None => Vec::new(),
        };
        if kept.len() < keep.unwrap_or(0) {
            return Err(Error::msg(format!(
                "{}: {} lines, the checkpoint counted {}: the log does not belong to it",
                path.display(),
                kept.len(),
                keep.unwrap_or(0)
            )));
        }
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        super::outdir::write_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut log = MetricsLog {
            file,
            path,
            lines: kept.len(),
            warned: false,
            metric: metric.to_string(),
            losses: Vec::new(),
            evals: Vec::new(),
        };
        for line in &kept {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                log.plot_point(&v);
            }
        }
        Ok(log)
    }

    /// The plot's point of a logged line: a loss, or the eval's metric.
    fn plot_point(&mut self, v: &Value) {
        let Some(step) = v["step"].as_f64() else {
            return;
        };
        if let Some(loss) = v["loss"].as_f64() {
            self.losses.push((step, loss));
        } else if let Some(m) = v["eval"][self.metric.as_str()].as_f64() {
            self.evals.push((step, m));
        }
    }

    /// Append one line (and its plot point). A failed write warns (once) and training
    /// goes on.
    pub fn write(&mut self, v: &Value) {
        self.plot_point(v);
        match writeln!(self.file, "{v}").and_then(|_| self.file.flush()) {
            Ok(()) => self.lines += 1,
            Err(e) if !self.warned => {
                self.warned = true;
                eprintln!(
                    "warning: {}: {e}; training goes on, later lines may be missing",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
    }
}

/// Draw loss and the headline eval metric over steps as an SVG (plotters).
pub fn plot_curves(
    path: &Path,
    losses: &[(f64, f64)],
    evals: &[(f64, f64)],
    metric: &str,
) -> Result<()> {
    use plotters::prelude::*;
    let err =
        |e: &dyn std::fmt::Display| Error::msg(format!("{}: plotting failed: {e}", path.display()));
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(320);
    let max_step = losses
        .iter()
        .chain(evals)
        .map(|p| p.0)
        .fold(1.0f64, f64::max);
    let max_loss = losses
        .iter()
        .map(|p| p.1)
        .filter(|x| x.is_finite())
        .fold(1e-3f64, f64::max);
    let mut c = curve_panel(&top, "training loss", "loss", [max_step, max_loss], &err)?;
    c.draw_series(LineSeries::new(losses.iter().copied(), &RED))
        .map_err(|e| err(&e))?;
    let max_eval = evals.iter().map(|p| p.1).fold(1e-3f64, f64::max);
    let caption = format!("eval {metric}");
    let mut c = curve_panel(&bottom, &caption, metric, [max_step, max_eval], &err)?;
    c.draw_series(LineSeries::new(evals.iter().copied(), &BLUE))
        .map_err(|e| err(&e))?;
    c.draw_series(evals.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A panel of `plot_curves`: f64 steps against f64 values, on the SVG.
type CurvePanel<'a, 'b> = plotters::chart::ChartContext<
    'a,
    plotters::prelude::SVGBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<RangedCoordf64, RangedCoordf64>,
>;

/// One panel of the curves: axes from 0 to `[x_max, y_max * 1.05]`, x labelled "step".
fn curve_panel<'a, 'b>(
    area: &'a plotters::drawing::DrawingArea<plotters::prelude::SVGBackend<'b>, Shift>,
    caption: &str,
    y_desc: &str,
    [x_max, y_max]: [f64; 2],
    err: &dyn Fn(&dyn std::fmt::Display) -> Error,
) -> Result<CurvePanel<'a, 'b>> {
    let mut c = plotters::chart::ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max * 1.05)
        .map_err(|e| err(&e))?;
    c.configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(c)
}
