//! When a run must stop early and keep its work: SIGINT (Colab's stop button, Ctrl-C) or
//! SIGTERM (a runtime being shut down) ask the loop to finish the current optimizer
//! step, write a checkpoint and exit; a second SIGINT exits at once (status 130). A
//! `--max-time` limit stops the same way before a session's time runs out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Why the loop stopped before its last step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Signal,
    TimeLimit,
}

impl StopReason {
    /// The process exit status the binaries use: 130 after a signal (the shell's
    /// convention for SIGINT), 75 (EX_TEMPFAIL, "try again later") at a time limit.
    pub fn exit_code(self) -> i32 {
        match self {
            StopReason::Signal => 130,
            StopReason::TimeLimit => 75,
        }
    }
}

/// The process-wide flag the signal handlers set (installed once).
fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        use signal_hook::consts::{SIGINT, SIGTERM};
        use signal_hook::flag::{register, register_conditional_shutdown};
        // The conditional shutdown first: it exits only if the flag is already set, i.e.
        // on the second signal; the first one just sets the flag.
        for sig in [SIGINT, SIGTERM] {
            let ok = register_conditional_shutdown(sig, 130, Arc::clone(&f)).is_ok()
                && register(sig, Arc::clone(&f)).is_ok();
            if !ok {
                eprintln!("warning: cannot handle signal {sig}: an interrupt will not checkpoint");
            }
        }
        f
    })
}

/// The stop conditions of one run.
pub struct Stopper {
    deadline: Option<Instant>,
    signals: &'static Arc<AtomicBool>,
}

impl Stopper {
    /// Handle SIGINT/SIGTERM from now on; stop at `max_time` after `start`.
    pub fn new(start: Instant, max_time: Option<Duration>) -> Stopper {
        Stopper {
            deadline: max_time.map(|d| start + d),
            signals: flag(),
        }
    }

    /// Should the loop stop after the step it just finished?
    pub fn check(&self) -> Option<StopReason> {
        if self.signals.load(Ordering::SeqCst) {
            return Some(StopReason::Signal);
        }
        match self.deadline {
            Some(d) if Instant::now() >= d => Some(StopReason::TimeLimit),
            _ => None,
        }
    }
}

/// Parse a duration as `--max-time` takes it: `11h30m`, `90m`, `45s`, `1h2m3s`, or plain
/// seconds (`3600`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || {
        Error::msg(format!(
            "--max-time {s:?}: expected a duration such as 11h30m, 90m, 45s or 3600 (seconds)"
        ))
    };
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return (secs > 0)
            .then(|| Duration::from_secs(secs))
            .ok_or_else(bad);
    }
    let mut total = 0u64;
    let mut num = String::new();
    // h, m and s in that order, each at most once.
    let mut prev_rank = 0;
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let (rank, mult) = match c {
            'h' => (1, 3600),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        if rank <= prev_rank {
            return Err(bad());
        }
        prev_rank = rank;
        total = n
            .checked_mul(mult)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_and_garbage_is_refused() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs()).ok();
        assert_eq!(secs("11h30m"), Some(41_400));
        assert_eq!(secs("90m"), Some(5_400));
        assert_eq!(secs("45s"), Some(45));
        assert_eq!(secs("1h2m3s"), Some(3_723));
        assert_eq!(secs("3600"), Some(3_600));
        for bad in [
            "", "0", "0m", "10x", "m", "30m1h", "1h1h", "5m5", "-5m", "1.5h",
        ] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }
}
