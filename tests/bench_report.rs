//! `bench --report DIR`: the page a real (tiny) run writes, opened in headless Chromium
//! (Debian's `chromium`), which must render the charts with one bar per category on
//! each side of the comparison and one point per op that has FLOPs or bytes; and the
//! directory's refusals. Without Chromium the browser test skips with the reason, except
//! with FUSEBOX_REQUIRE_CHROMIUM=1 (CI, which installs it), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{p, refused, run, scratch};
use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

/// A tiny DistilBERT run against the committed torch.profiler fixture, reported in `dir`.
fn bench_args(dir: &Path) -> Vec<String> {
    let model = common::fixture("models/distilbert_qa");
    let torch = common::fixture("torch_profile_distilbert_qa_cpu.json");
    let mut args: Vec<String> = [
        "--model",
        p(&model),
        "--compare",
        p(&torch),
        "--report",
        p(dir),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let fixed = "--device cpu --batch 2 --seq 16 --steps 1";
    args.extend(fixed.split_whitespace().map(str::to_string));
    args
}

fn bench(args: &[String]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(BENCH, &args);
}

/// Chromium's binary: env FUSEBOX_CHROMIUM, else `chromium`, `chromium-browser` or
/// `google-chrome` on PATH.
fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FUSEBOX_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

fn headless(browser: &Path, profile: &Path, extra: &[&str], page: &Path) -> std::process::Output {
    let url = format!("file://{}", page.canonicalize().expect("page").display());
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url)
        .output()
        .expect("spawn chromium");
    assert!(
        o.status.success(),
        "{} {extra:?} {url} failed:\n{}",
        browser.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        let why = "chromium not found (apt-get install chromium, or set FUSEBOX_CHROMIUM)";
        if std::env::var("FUSEBOX_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
            panic!("{why}, and FUSEBOX_REQUIRE_CHROMIUM=1");
        }
        eprintln!("skipping: {why}");
        return;
    };
    let dir = scratch("report", "chromium");
    bench(&bench_args(&dir));
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    let page = dir.join("index.html");
    let profile = dir.join("chromium-profile");
    // The DOM as Chromium parsed it.
    let dom = String::from_utf8(headless(&browser, &profile, &["--dump-dom"], &page).stdout)
        .expect("utf8 DOM");
    for id in ["categories", "memory", "roofline", "bandwidth"] {
        assert_eq!(count(&dom, &format!("<svg id=\"{id}\"")), 1, "{id}");
    }
    // One bar per category on each side: fusebox's categories and PyTorch's seven.
    let cats = rec["compare"]["categories"].as_object().unwrap();
    assert_eq!(count(&dom, "class=\"bar fusebox\""), cats.len());
    assert_eq!(count(&dom, "class=\"bar torch\""), cats.len());
    // One point per op with FLOPs or bytes; the others named under the charts.
    let ops = rec["ops"].as_array().unwrap();
    let work = |o: &Value, k: &str| o[k].as_f64().unwrap_or(0.0);
    let drawn: Vec<&str> = ops
        .iter()
        .filter(|o| work(o, "bytes") > 0.0 && work(o, "ms") > 0.0)
        .map(|o| o["op"].as_str().unwrap())
        .collect();
    assert!(drawn.len() > 10, "{drawn:?}");
    assert_eq!(count(&dom, "class=\"op-point\""), drawn.len());
    for op in &drawn {
        assert_eq!(count(&dom, &format!("data-op=\"{op}\"")), 1, "{op}");
    }
    for o in ops
        .iter()
        .filter(|o| !drawn.contains(&o["op"].as_str().unwrap()))
    {
        let op = o["op"].as_str().unwrap();
        assert!(
            dom.contains(&format!("{op} (")),
            "{op} neither drawn nor listed"
        );
    }
    // The memory bars: the plan's components and the three measured ones.
    let plan = rec["memory_plan"]["components"].as_array().unwrap().len();
    assert_eq!(count(&dom, "data-bar=\"plan\""), plan);
    assert_eq!(count(&dom, "data-bar=\"measured (tracker)\""), 3);
    assert_eq!(
        count(&dom, "<tr>"),
        7 + 1 + ops.len(),
        "summary, header, ops"
    );
    // And a screenshot of the given size.
    let png = dir.join("shot.png");
    let shot = format!("--screenshot={}", png.display());
    headless(
        &browser,
        &profile,
        &[&shot, "--window-size=900,1600"],
        &page,
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert_eq!(&bytes[1..4], b"PNG");
    let dim = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (900, 1600));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_report_is_not_overwritten_unless_asked() {
    let dir = scratch("report", "overwrite");
    let args = bench_args(&dir);
    bench(&args);
    let first = std::fs::metadata(dir.join("index.html")).unwrap();
    assert!(first.len() > 1000);
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(BENCH, &strs, &["--report", "holds a report", "--overwrite"]);
    let mut again = strs.clone();
    again.push("--overwrite");
    run(BENCH, &again);
    // A file where the directory should be, before any benchmarking.
    let file = dir.join("index.html");
    let mut bad = strs.clone();
    let at = bad.iter().position(|a| *a == "--report").unwrap() + 1;
    bad[at] = p(&file);
    refused(BENCH, &bad, &["--report", "not a directory"]);
    refused(BENCH, &["--overwrite"], &["--report"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
