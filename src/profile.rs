//! Per-op timing for `bench`: when enabled, every op's forward and every backward node
//! is timed and summed by name, with the FLOPs and bytes its shapes imply (cost.rs), and
//! optionally kept as a timeline for a Chrome trace-event file (Perfetto opens it). On
//! CUDA the device is synchronised at both ends of a span so the wall time covers the
//! kernels, not just their launch; that costs a little throughput, so it is on only
//! while profiling. Off, a span is one thread-local read and its cost formula is never
//! evaluated. Each span is also an NVTX range (nvtx.rs) when those are on.

pub mod cost;
pub mod nvtx;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

use crate::shape::Device;
pub use cost::{OpCost, Work};

/// Which pass a span times: an op's forward, its tape node's backward, or the forward
/// activation checkpointing reruns inside a backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pass {
    Forward,
    Backward,
    Recompute,
}

impl Pass {
    /// The suffix of the op's row (`linear`, `linear.bwd`, `linear.recompute`).
    pub fn suffix(self) -> &'static str {
        match self {
            Pass::Forward => "",
            Pass::Backward => ".bwd",
            Pass::Recompute => ".recompute",
        }
    }
}

/// Calls, seconds, and the work of the calls whose cost is known.
#[derive(Clone, Copy, Debug, Default)]
struct Stat {
    calls: u64,
    secs: f64,
    work: Work,
    uncosted: u64,
}

/// (op name, pass) → totals.
type OpStats = BTreeMap<(&'static str, Pass), Stat>;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static TRACE: Cell<bool> = const { Cell::new(false) };
    static RECOMPUTE: Cell<bool> = const { Cell::new(false) };
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The open spans, innermost last: name and the backward work of its tape node.
    static OPEN: RefCell<Vec<(&'static str, Option<Work>)>> = const { RefCell::new(Vec::new()) };
    static STATS: RefCell<OpStats> = const { RefCell::new(BTreeMap::new()) };
    static EVENTS: RefCell<Vec<TraceEvent>> = const { RefCell::new(Vec::new()) };
    static EPOCH: RefCell<Option<Instant>> = const { RefCell::new(None) };
}

/// One completed span of the timeline.
#[derive(Clone, Debug)]
pub struct TraceEvent {
    pub name: &'static str,
    pub pass: Pass,
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

/// While alive, forward spans count as checkpointing's recompute (`autograd::checkpoint`
/// holds it around the rerun of its function).
pub struct RecomputeGuard {
    prev: bool,
}

impl Drop for RecomputeGuard {
    fn drop(&mut self) {
        RECOMPUTE.with(|r| r.set(self.prev));
    }
}

pub fn recompute() -> RecomputeGuard {
    RecomputeGuard {
        prev: RECOMPUTE.with(|r| r.replace(true)),
    }
}

/// The backward work of the tape node `name` being recorded now: the cost its op's span
/// gave, when that span is the innermost open one and has the node's name (else none:
/// the backward is timed without a roofline).
pub fn node_cost(name: &'static str) -> Option<Work> {
    if !enabled() {
        return None;
    }
    OPEN.with(|o| match o.borrow().last() {
        Some((n, w)) if *n == name => *w,
        _ => None,
    })
}

/// A timed region; records on drop. Nested spans are not double counted: only the
/// outermost op is timed (an op implemented with other ops counts once, at the cost its
/// own formula gives).
pub struct Span {
    name: &'static str,
    pass: Pass,
    device: Device,
    /// Profiling was on when the span opened (it then holds a depth and an OPEN entry).
    open: bool,
    start: Option<Instant>,
    work: Option<Work>,
    /// The op's NVTX range (`linear.bwd`), open while the span is.
    _range: nvtx::Range,
}

impl Span {
    /// Time an op's forward (its recompute under [`recompute`]).
    pub fn new(name: &'static str, device: Device) -> Span {
        let pass = if RECOMPUTE.with(|r| r.get()) {
            Pass::Recompute
        } else {
            Pass::Forward
        };
        Span::make(name, pass, device, None)
    }

    /// Time a tape node's backward, whose work its op's span gave ([`node_cost`]).
    pub fn backward(name: &'static str, device: Device, work: Option<Work>) -> Span {
        Span::make(name, Pass::Backward, device, work)
    }

    /// The op's cost from its shapes: evaluated only while profiling.
    pub fn cost(mut self, f: impl FnOnce() -> OpCost) -> Span {
        if self.open {
            let c = f();
            self.work = Some(c.fwd);
            OPEN.with(|o| {
                if let Some(top) = o.borrow_mut().last_mut() {
                    top.1 = Some(c.bwd);
                }
            });
        }
        self
    }

    fn make(name: &'static str, pass: Pass, device: Device, work: Option<Work>) -> Span {
        let mut span = Span {
            name,
            pass,
            device,
            open: false,
            start: None,
            work,
            _range: nvtx::range(format_args!("{name}{}", pass.suffix())),
        };
        if !enabled() {
            return span;
        }
        span.open = true;
        OPEN.with(|o| o.borrow_mut().push((name, None)));
        let depth = DEPTH.with(|d| d.replace(d.get() + 1));
        if depth == 0 {
            sync(device);
            span.start = Some(Instant::now());
        }
        span
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        OPEN.with(|o| o.borrow_mut().pop());
        let Some(start) = self.start else {
            return;
        };
        sync(self.device);
        let dur = start.elapsed().as_secs_f64();
        STATS.with(|s| {
            let mut s = s.borrow_mut();
            let e = s.entry((self.name, self.pass)).or_default();
            e.calls += 1;
            e.secs += dur;
            match self.work {
                Some(w) => e.work += w,
                None => e.uncosted += 1,
            }
        });
        if TRACE.with(|t| t.get()) {
            let epoch = EPOCH.with(|e| *e.borrow()).unwrap_or(start);
            EVENTS.with(|ev| {
                ev.borrow_mut().push(TraceEvent {
                    name: self.name,
                    pass: self.pass,
                    start_us: start.duration_since(epoch).as_secs_f64() * 1e6,
                    dur_us: dur * 1e6,
                })
            });
        }
    }
}

/// One row of the per-op table.
#[derive(Clone, Debug)]
pub struct OpTime {
    pub name: &'static str,
    pub pass: Pass,
    pub calls: u64,
    pub secs: f64,
    /// The summed work of the calls, when every call's cost was known.
    pub work: Option<Work>,
}

impl OpTime {
    /// The row's name: the op with its pass's suffix (`linear.bwd`).
    pub fn op(&self) -> String {
        format!("{}{}", self.name, self.pass.suffix())
    }
}

/// The timed ops, slowest first.
pub fn summary() -> Vec<OpTime> {
    let mut v: Vec<OpTime> = STATS.with(|s| {
        s.borrow()
            .iter()
            .map(|(&(name, pass), st)| OpTime {
                name,
                pass,
                calls: st.calls,
                secs: st.secs,
                work: (st.uncosted == 0).then_some(st.work),
            })
            .collect()
    });
    v.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    v
}

/// The kept timeline as a Chrome trace-event JSON document.
pub fn chrome_trace() -> serde_json::Value {
    let events: Vec<serde_json::Value> = EVENTS.with(|ev| {
        ev.borrow()
            .iter()
            .map(|e| {
                let name = format!("{}{}", e.name, e.pass.suffix());
                serde_json::json!({"name": name, "ph": "X", "ts": e.start_us, "dur": e.dur_us, "pid": 1, "tid": 1, "cat": "op"})
            })
            .collect()
    });
    serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"})
}
