//! Per-op timing for `bench`: when enabled, every op's forward and every backward node
//! is timed and summed by name, and optionally kept as a timeline for a Chrome
//! trace-event file (Perfetto opens it). On CUDA the device is synchronised at both ends
//! of a span so the wall time covers the kernels, not just their launch; that costs a
//! little throughput, so it is on only while profiling.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

use crate::shape::Device;

/// (op name, is backward) → (calls, seconds).
type OpStats = BTreeMap<(&'static str, bool), (u64, f64)>;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static TRACE: Cell<bool> = const { Cell::new(false) };
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static STATS: RefCell<OpStats> = const { RefCell::new(BTreeMap::new()) };
    static EVENTS: RefCell<Vec<TraceEvent>> = const { RefCell::new(Vec::new()) };
    static EPOCH: RefCell<Option<Instant>> = const { RefCell::new(None) };
}

/// One completed span of the timeline.
#[derive(Clone, Debug)]
pub struct TraceEvent {
    pub name: &'static str,
    pub backward: bool,
    pub start_us: f64,
    pub dur_us: f64,
}

/// Start collecting (clears earlier stats). `trace` also keeps every span.
pub fn enable(trace: bool) {
    ENABLED.with(|e| e.set(true));
    TRACE.with(|t| t.set(trace));
    reset();
}

pub fn disable() {
    ENABLED.with(|e| e.set(false));
}

pub fn enabled() -> bool {
    ENABLED.with(|e| e.get())
}

pub fn reset() {
    STATS.with(|s| s.borrow_mut().clear());
    EVENTS.with(|s| s.borrow_mut().clear());
    EPOCH.with(|e| *e.borrow_mut() = Some(Instant::now()));
}

fn sync(device: Device) {
    if device.is_cuda() {
        // Errors here would also surface from the op itself; timing must not fail a run.
        let _ = crate::backend::synchronize(device);
    }
}

/// A timed region; records on drop. Nested spans are not double counted: only the
/// outermost op is timed (an op implemented with other ops counts once).
pub struct Span {
    name: &'static str,
    backward: bool,
    device: Device,
    start: Option<Instant>,
}

impl Span {
    /// Time an op's forward.
    pub fn new(name: &'static str, device: Device) -> Span {
        Span::make(name, false, device)
    }

    /// Time an op's backward.
    pub fn backward(name: &'static str, device: Device) -> Span {
        Span::make(name, true, device)
    }

    fn make(name: &'static str, backward: bool, device: Device) -> Span {
        if !enabled() {
            return Span {
                name,
                backward,
                device,
                start: None,
            };
        }
        let depth = DEPTH.with(|d| {
            let v = d.get();
            d.set(v + 1);
            v
        });
        if depth > 0 {
            return Span {
                name,
                backward,
                device,
                start: None,
            };
        }
        sync(device);
        Span {
            name,
            backward,
            device,
            start: Some(Instant::now()),
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if !enabled() {
            return;
        }
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        let Some(start) = self.start else {
            return;
        };
        sync(self.device);
        let dur = start.elapsed().as_secs_f64();
        STATS.with(|s| {
            let mut s = s.borrow_mut();
            let e = s.entry((self.name, self.backward)).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += dur;
        });
        if TRACE.with(|t| t.get()) {
            let epoch = EPOCH.with(|e| *e.borrow()).unwrap_or(start);
            EVENTS.with(|ev| {
                ev.borrow_mut().push(TraceEvent {
                    name: self.name,
                    backward: self.backward,
                    start_us: start.duration_since(epoch).as_secs_f64() * 1e6,
                    dur_us: dur * 1e6,
                })
            });
        }
    }
}

/// (op, calls, total seconds) with backward entries named `op.bwd`, slowest first.
pub fn summary() -> Vec<(String, u64, f64)> {
    let mut v: Vec<_> = STATS.with(|s| {
        s.borrow()
            .iter()
            .map(|((k, b), (n, t))| {
                (
                    if *b {
                        format!("{k}.bwd")
                    } else {
                        k.to_string()
                    },
                    *n,
                    *t,
                )
            })
            .collect()
    });
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}

/// The kept timeline as a Chrome trace-event JSON document.
pub fn chrome_trace() -> serde_json::Value {
    let events: Vec<serde_json::Value> = EVENTS.with(|ev| {
        ev.borrow()
            .iter()
            .map(|e| {
                let name = if e.backward { format!("{}.bwd", e.name) } else { e.name.to_string() };
                serde_json::json!({"name": name, "ph": "X", "ts": e.start_us, "dur": e.dur_us, "pid": 1, "tid": 1, "cat": "op"})
            })
            .collect()
    });
    serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"})
}
