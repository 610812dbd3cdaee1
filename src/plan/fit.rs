//! `fit`: the largest micro-batch (and the accumulation steps and checkpointing choice)
//! whose predicted step fits a memory budget.

use super::{human, predict, Plan, Workload};
use crate::error::{Error, Result};
use crate::models::step::ModelSource;
use crate::optim::{AdafactorConfig, OptimConfig};

/// Pick the largest micro-batch ≤ `requested_batch` whose step fits `budget` bytes, the
/// accumulation steps that keep the requested batch (`ceil(requested / micro)`, the
/// micro-batch then evened out to `ceil(requested / steps)`), and
/// activation checkpointing only when even micro-batch 1 does not fit without it (or
/// always, when `force_checkpointing`). Refuses with the micro-batch-1 breakdown when
/// nothing fits, saying whether Adafactor would fit where AdamW does not (the optimizer
/// stays the one asked for).
pub fn fit(
    model: &ModelSource,
    budget: usize,
    requested_batch: usize,
    base: &Workload,
    force_checkpointing: bool,
) -> Result<Plan> {
    let requested = requested_batch.max(1);
    let choices: &[bool] = if force_checkpointing {
        &[true]
    } else {
        &[false, true]
    };
    let plan_at = |micro: usize, ckpt: bool| {
        let w = Workload {
            micro_batch: micro,
            grad_accum: requested.div_ceil(micro),
            checkpointing: ckpt,
            ..*base
        };
        predict(model, &w, requested)
    };
    for &ckpt in choices {
        // The peak grows with the micro-batch: binary search the largest that fits.
        let first = plan_at(1, ckpt)?;
        if first.peak_bytes > budget {
            continue;
        }
        let (mut lo, mut hi) = (1, requested);
        let mut best = first;
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let p = plan_at(mid, ckpt)?;
            if p.peak_bytes <= budget {
                lo = mid;
                best = p;
            } else {
                hi = mid - 1;
            }
        }
        // The accumulation steps the largest micro-batch needs, then the smallest
        // micro-batch that still covers the request in that many steps: the same number
        // of sequential steps, and the effective batch overshoots the request by fewer
        // than `grad_accum` rows (64 with room for 27 runs 22 x 3, not 27 x 3).
        let accum = requested.div_ceil(best.work.micro_batch);
        let micro = requested.div_ceil(accum);
        if micro != best.work.micro_batch {
            best = plan_at(micro, ckpt)?;
        }
        best.budget = Some(budget);
        return Ok(best);
    }
    let mut p = plan_at(1, true)?;
    p.budget = Some(budget);
    Err(Error::msg(format!(
        "the memory budget {} is too small: micro-batch 1 with activation checkpointing needs {}{}\n{}",
        human(budget),
        human(p.peak_bytes),
        adafactor_hint(model, budget, requested, base)?,
        p.table()
    )))
}

/// When AdamW does not fit: what Adafactor (Trainer's settings, AdamW's weight decay)
/// would fit, as a sentence for the refusal, or nothing. The planner never switches the
/// optimizer itself: the optimizer is the user's choice (`--optim`).
fn adafactor_hint(
    model: &ModelSource,
    budget: usize,
    requested: usize,
    base: &Workload,
) -> Result<String> {
    let OptimConfig::AdamW(adamw) = base.optim else {
        return Ok(String::new());
    };
    let ada = Workload {
        optim: OptimConfig::Adafactor(AdafactorConfig::trainer(adamw.weight_decay)),
        ..*base
    };
    Ok(
        match fit(model, budget, requested, &ada, base.checkpointing) {
            Ok(p) => format!(
                "; with --optim adafactor (factored second moments instead of AdamW's m and v) \
             it would fit: micro-batch {} x {} accumulation step(s), checkpointing {}, \
             predicted peak {}",
                p.work.micro_batch,
                p.work.grad_accum,
                if p.work.checkpointing { "on" } else { "off" },
                human(p.peak_bytes)
            ),
            Err(_) => "; --optim adafactor would not fit either".into(),
        },
    )
}

/// [`fit`] when there is a budget, else [`predict`] of `base` as it stands.
pub fn plan_or_fit(
    model: &ModelSource,
    budget: Option<usize>,
    requested_batch: usize,
    base: &Workload,
) -> Result<Plan> {
    match budget {
        Some(b) => fit(model, b, requested_batch, base, base.checkpointing),
        None => predict(model, base, requested_batch),
    }
}
