//! NVTX ranges for Nsight Systems / Nsight Compute: the training step, its forward,
//! backward and optimizer, each layer (`encoder.3`, `decoder.2`) and each op (every
//! profiler [`Span`](super::Span) pushes its row's name: `linear`, `linear.bwd`,
//! `linear.recompute`), so a timeline groups the kernels by what launched them.
//!
//! NVTX 3 is header-only (the `nvtx` crate compiles its C shim; nothing is linked):
//! with no tool attached its calls find no injection library and return at once. The
//! crate's wrapper still formats and copies every name into a C string, so ranges are
//! pushed only when asked for, decided once per process: `FUSEBOX_NVTX=1` turns them
//! on, `FUSEBOX_NVTX=0` off, and otherwise they are on when a tool is attached
//! (`NVTX_INJECTION64_PATH`, which nsys and ncu set, or `NSYS_PROFILING_SESSION_ID`).
//! Off, a range is one atomic load.

use std::cell::RefCell;
use std::fmt::Display;
use std::sync::OnceLock;

static ON: OnceLock<bool> = OnceLock::new();

thread_local! {
    /// The names pushed on this thread while [`capture`] is active (tests read them).
    static RECORD: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Whether ranges are pushed in this process (decided at the first call).
pub fn on() -> bool {
    *ON.get_or_init(|| decide(|k| std::env::var(k).ok()))
}

/// The decision from the environment `var` reads: `FUSEBOX_NVTX` when set ("1"/"0",
/// anything else counts as on), else whether a profiler's variables are present.
pub fn decide(var: impl Fn(&str) -> Option<String>) -> bool {
    match var("FUSEBOX_NVTX").as_deref() {
        Some("0") | Some("") => false,
        Some(_) => true,
        None => ["NVTX_INJECTION64_PATH", "NSYS_PROFILING_SESSION_ID"]
            .iter()
            .any(|k| var(k).is_some()),
    }
}

/// Layer `i` of a stack (`encoder`, `decoder`), displayed `encoder.3`.
struct Layer<'a>(&'a str, usize);

impl Display for Layer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The name of layer `i` of a stack (`encoder`, `decoder`): `encoder.3`.
pub fn layer_name(stack: &str, i: usize) -> String {
    Layer(stack, i).to_string()
}

/// An open NVTX range; popped on drop. Push and pop happen on the same thread.
#[must_use = "the range ends when this is dropped"]
pub struct Range {
    pushed: bool,
}

impl Drop for Range {
    fn drop(&mut self) {
        if self.pushed {
            nvtx::range_pop!();
        }
    }
}

/// Open a range named `name` (formatted only when ranges are on or recorded).
pub fn range(name: impl Display) -> Range {
    let recording = RECORD.with(|r| r.borrow().is_some());
    if !on() && !recording {
        return Range { pushed: false };
    }
    let name = name.to_string();
    nvtx::range_push!("{name}");
    if recording {
        RECORD.with(|r| {
            if let Some(v) = r.borrow_mut().as_mut() {
                v.push(name);
            }
        });
    }
    Range { pushed: true }
}

/// The range of layer `i` of `stack` ([`layer_name`]).
pub fn layer(stack: &str, i: usize) -> Range {
    range(Layer(stack, i))
}

/// Run `f` with ranges pushed (whatever [`on`] says) and their names recorded in push
/// order: what a profiler attached to this thread would see.
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let prev = RECORD.with(|r| r.borrow_mut().replace(Vec::new()));
    let out = f();
    let names = RECORD.with(|r| std::mem::replace(&mut *r.borrow_mut(), prev));
    (out, names.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_decides() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!decide(env(&[])));
        assert!(decide(env(&[("FUSEBOX_NVTX", "1")])));
        assert!(!decide(env(&[("FUSEBOX_NVTX", "0")])));
        assert!(decide(env(&[("NSYS_PROFILING_SESSION_ID", "7")])));
        assert!(decide(env(&[("NVTX_INJECTION64_PATH", "/x.so")])));
        // An explicit 0 wins over an attached tool.
        assert!(!decide(env(&[
            ("FUSEBOX_NVTX", "0"),
            ("NVTX_INJECTION64_PATH", "/x.so")
        ])));
    }

    #[test]
    fn layers_and_nesting_are_named_in_push_order() {
        assert_eq!(layer_name("encoder", 3), "encoder.3");
        let ((), names) = capture(|| {
            let _step = range("step");
            for i in 0..2 {
                let _l = layer("decoder", i);
                let _op = range(format_args!("{}{}", "linear", ".bwd"));
            }
        });
        assert_eq!(
            names,
            ["step", "decoder.0", "linear.bwd", "decoder.1", "linear.bwd"]
        );
        // A later capture starts empty.
        let ((), after) = capture(|| ());
        assert!(after.is_empty());
    }
}
