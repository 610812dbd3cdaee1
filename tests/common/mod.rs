//! Helpers shared by the integration tests: fixture loading and error measures.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use fusebox::nn::safetensors_io;
use fusebox::{DType, Device, Tensor};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every tensor of a fixture file, floats as `dtype`, on the CPU.
pub fn load(name: &str, dtype: DType) -> BTreeMap<String, Tensor> {
    let p = fixture(name);
    safetensors_io::load(&p, dtype, Device::Cpu).unwrap_or_else(|e| {
        panic!(
            "fixture {} (regenerate with tools/fixtures/make_fixtures.py): {e}",
            p.display()
        )
    })
}

pub fn get<'a>(m: &'a BTreeMap<String, Tensor>, k: &str) -> &'a Tensor {
    m.get(k)
        .unwrap_or_else(|| panic!("fixture tensor {k:?} missing"))
}

/// max |a − b| / max(max |b|, floor).
pub fn rel_to_max(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let m = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(floor);
    a.iter()
        .zip(b)
        .fold(0.0f64, |e, (x, y)| e.max((x - y).abs()))
        / m
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let e = rel_to_max(
        &got.to_vec_f64().unwrap(),
        &want.to_vec_f64().unwrap(),
        1e-12,
    );
    assert!(
        e <= tol,
        "{what}: max error {e:e} relative to max > {tol:e}"
    );
}

/// The shared real-data assets: env FUSEBOX_ASSETS, else ../shared/assets beside the
/// crate, else ./shared/assets (the GPU machine's copy). None, with the reason printed,
/// when absent: tests that need them skip, so a fresh clone without them is green. With
/// FUSEBOX_REQUIRE_ASSETS=1 (CI, which has them) absent assets fail the test instead.
pub fn assets() -> Option<PathBuf> {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/assets");
    let p = match std::env::var("FUSEBOX_ASSETS") {
        Ok(p) => PathBuf::from(p),
        Err(_) if built.exists() => built,
        Err(_) => PathBuf::from("shared/assets"),
    };
    if p.exists() {
        Some(p)
    } else {
        skip_or_fail(&format!(
            "assets not found at {} (set FUSEBOX_ASSETS)",
            p.display()
        ));
        None
    }
}

/// One file of the assets (`rel` below the assets folder), as [`assets`] finds them: None
/// with the reason printed when it is absent, a panic when FUSEBOX_REQUIRE_ASSETS=1.
pub fn asset(rel: &str) -> Option<PathBuf> {
    let p = assets()?.join(rel);
    if p.exists() {
        Some(p)
    } else {
        skip_or_fail(&format!("{} not found (set FUSEBOX_ASSETS)", p.display()));
        None
    }
}

/// Are the assets required (FUSEBOX_REQUIRE_ASSETS=1)?
pub fn assets_required() -> bool {
    std::env::var("FUSEBOX_REQUIRE_ASSETS").is_ok_and(|v| v == "1")
}

fn skip_or_fail(why: &str) {
    if assets_required() {
        panic!("{why}, and FUSEBOX_REQUIRE_ASSETS=1");
    }
    eprintln!("skipping: {why}");
}
