//! The page from synthetic records, without a browser: which elements it holds, their
//! counts and sizes, escaping, self-containment, and the directory's refusals.

use serde_json::{json, Value};

use super::*;

/// A CUDA-like record: four ops (one on the roofline per FLOP-doing op, a copy on the
/// bandwidth strip, one without a cost), a comparison and the memory fields.
fn sample(compare: bool) -> Value {
    let mut rec = json!({
        "model": "DistilBertForQuestionAnswering <tiny>", "device": "Tesla T4",
        "mode": "train", "precision": "fp16", "optimizer": "adamw", "steps": 3,
        "tokens_per_s": 1234.5, "ms_per_step_median": 10.0, "ms_per_step_p90": 11.0,
        "model_tflops_per_s": 12.0, "mfu_vs_fp16_peak": 0.18,
        "peak_mem_bytes": 3u64 << 30, "predicted_peak_bytes": 3u64 << 30,
        "allocator_peak_reserved_bytes": 3500u64 << 20, "nvml_used_bytes": 4000u64 << 20,
        "peaks": {"source": "T4 datasheet", "tensor_tflops": 65.0, "fp32_tflops": 8.1,
                  "mem_gb_per_s": 320.0, "measured_copy_gb_per_s": 240.0},
        "ops": [
            {"op": "linear", "category": "gemm", "calls": 12, "ms": 6.0, "flops": 2.4e11,
             "bytes": 1e9, "tflops_per_s": 40.0, "gb_per_s": 166.0, "flop_per_byte": 240.0,
             "bound": "compute", "pct_of_peak": 61.5},
            {"op": "layer_norm.bwd", "category": "norm", "calls": 12, "ms": 1.0,
             "flops": 1e8, "bytes": 2e8, "bound": "memory", "pct_of_peak": 62.5},
            {"op": "cat", "category": "copies", "calls": 2, "ms": 0.5, "flops": 0.0,
             "bytes": 1e8},
            {"op": "odd<op>", "category": "other", "calls": 1, "ms": 0.1, "flops": null,
             "bytes": null},
        ],
        "categories": {
            "gemm": {"ms": 6.0, "ms_per_step": 6.0}, "norm": {"ms": 1.0, "ms_per_step": 1.0},
            "copies": {"ms": 0.5, "ms_per_step": 0.5}, "other": {"ms": 0.1, "ms_per_step": 0.1},
        },
        "measured_memory": {"weights_and_batch_bytes": 1u64 << 30,
                            "optimizer_state_bytes": 1u64 << 30, "step_bytes": 1u64 << 30},
        "memory_plan": {"components": [
            {"what": "weights (fp16 working copy)", "bytes": 1u64 << 29},
            {"what": "fp32 master weights (adamw)", "bytes": 1u64 << 29},
            {"what": "AdamW m and v (fp32)", "bytes": 1u64 << 30},
            {"what": "forward + backward peak (saved activations 1 GiB, ...)", "bytes": 1u64 << 30},
            {"what": "allocator slack (10 % of tensors)", "bytes": 300u64 << 20},
            {"what": "cuBLAS workspace", "bytes": 32u64 << 20},
            {"what": "CUDA context and kernels", "bytes": 450u64 << 20},
        ], "tensor_peak_bytes": 3u64 << 30, "peak_bytes": 3900u64 << 20},
    });
    if compare {
        rec["compare"] = json!({
            "file": "torch.json", "torch_impl": "torch-cuda-fp16", "torch_device": "Tesla T4",
            "torch_profile_source": "cuda kernels", "workload_differs": ["batch 2 here, 4 there"],
            "categories": {
                "gemm": {"fusebox_ms_per_step": 6.0, "torch_ms_per_step": 5.0, "ratio": 1.2},
                "norm": {"fusebox_ms_per_step": 1.0, "torch_ms_per_step": 2.0, "ratio": 0.5},
                "attention": {"fusebox_ms_per_step": 0.0, "torch_ms_per_step": 1.5, "ratio": 0.0},
            },
        });
    }
    rec
}

fn count(page: &str, needle: &str) -> usize {
    page.matches(needle).count()
}

#[test]
fn the_page_holds_every_chart_and_op() {
    let page = html(&sample(true));
    for id in [
        r#"<svg id="categories""#,
        r#"<svg id="memory""#,
        r#"<svg id="roofline""#,
        r#"<svg id="bandwidth""#,
        r#"<table id="ops-table""#,
    ] {
        assert_eq!(count(&page, id), 1, "{id}");
    }
    // Fusebox's categories plus PyTorch's attention, each with both bars.
    assert_eq!(count(&page, r#"class="bar fusebox""#), 5);
    assert_eq!(count(&page, r#"class="bar torch""#), 5);
    assert!(page.contains("fusebox 1.20x"), "the gemm ratio");
    assert!(page.contains("Not the same workload: batch 2 here, 4 there"));
    // Two FLOP-doing ops on the roofline, the copy on the strip: one point per drawn op;
    // the op without a cost listed by name, escaped.
    assert_eq!(count(&page, r#"class="op-point""#), 3);
    assert_eq!(count(&page, r#"data-op="linear""#), 1);
    assert!(page.contains("Not drawn: odd&lt;op&gt; (no cost known)"));
    assert!(!page.contains("odd<op>"));
    // T4: two FLOP roofs and two bandwidths (datasheet, measured copy) on the roofline,
    // the two bandwidths again on the strip.
    assert_eq!(count(&page, r#"class="ceiling compute""#), 2);
    assert_eq!(count(&page, r#"class="ceiling memory""#), 4);
    // Memory: 7 plan components, 3 measured, allocator and NVML.
    assert_eq!(count(&page, r#"data-bar="plan""#), 7);
    assert_eq!(count(&page, r#"data-bar="measured (tracker)""#), 3);
    assert_eq!(count(&page, r#"class="segment""#), 12);
    assert_eq!(count(&page, r#"class="plan-tensor-peak""#), 1);
    // Four ops in the table (plus the header row).
    assert_eq!(count(&page, "<tr>"), 4 + 1 + 7);
}

#[test]
fn without_compare_only_fusebox_bars() {
    let page = html(&sample(false));
    assert_eq!(count(&page, r#"class="bar fusebox""#), 4);
    assert_eq!(count(&page, r#"class="bar torch""#), 0);
    assert!(!page.contains("PyTorch:"));
}

/// Every point and bar lies inside its SVG's box and bar lengths follow the times.
#[test]
fn geometry_stays_inside_the_charts() {
    let page = html(&sample(true));
    let attr = |el: &str, k: &str| -> f64 {
        let at = el
            .find(&format!(" {k}=\""))
            .unwrap_or_else(|| panic!("{k} in {el}"))
            + k.len()
            + 3;
        el[at..el[at..].find('"').unwrap() + at].parse().unwrap()
    };
    for chart in page.split("<svg ").skip(1) {
        let (w, h) = (attr(chart, "width"), attr(chart, "height"));
        for el in chart.split('<').filter(|e| e.starts_with("circle ")) {
            let (cx, cy) = (attr(el, "cx"), attr(el, "cy"));
            assert!((0.0..=w).contains(&cx) && (0.0..=h).contains(&cy), "{el}");
        }
        for el in chart.split('<').filter(|e| e.starts_with("rect class=")) {
            let (x, y) = (attr(el, "x"), attr(el, "y"));
            let (rw, rh) = (attr(el, "width"), attr(el, "height"));
            assert!(
                x >= 0.0 && y >= 0.0 && x + rw <= w + 0.1 && y + rh <= h + 0.1,
                "{el}"
            );
        }
    }
    // gemm 6 ms against norm 1 ms: six times the length.
    let width_of = |cat: &str| {
        let at = page
            .find(&format!(r#"class="bar fusebox" data-category="{cat}""#))
            .unwrap();
        attr(&page[at..], "width")
    };
    assert!((width_of("gemm") / width_of("norm") - 6.0).abs() < 0.05);
}

#[test]
fn the_page_is_self_contained() {
    let page = html(&sample(true));
    assert!(page.starts_with("<!DOCTYPE html>"));
    for banned in ["<script", "src=", "href=", "@import", "url(http"] {
        assert!(!page.contains(banned), "{banned}");
    }
    // The only URL is the SVG namespace, which nothing fetches.
    assert_eq!(
        count(&page, "http"),
        count(&page, "http://www.w3.org/2000/svg")
    );
}

#[test]
fn an_empty_profile_still_makes_a_page() {
    let mut rec = sample(false);
    rec["ops"] = json!([]);
    rec.as_object_mut().unwrap().remove("categories");
    let page = html(&rec);
    assert!(page.contains("No per-op profile"));
    assert_eq!(count(&page, r#"class="op-point""#), 0);
    assert_eq!(count(&page, r#"<svg id="memory""#), 1);
}

#[test]
fn the_directory_is_refused_or_replaced_as_asked() {
    let dir = std::env::temp_dir().join(format!("fusebox-report-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rec = sample(false);
    prepare(&dir, false).unwrap();
    let page = write(&dir, &rec).unwrap();
    assert_eq!(page, dir.join(PAGE));
    let back: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(RECORD)).unwrap()).unwrap();
    assert_eq!(back, rec);
    let err = prepare(&dir, false).unwrap_err().to_string();
    assert!(
        err.contains("--report") && err.contains("--overwrite"),
        "{err}"
    );
    prepare(&dir, true).unwrap();
    // No temporaries left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let file = dir.join(PAGE);
    let err = prepare(&file, true).unwrap_err().to_string();
    assert!(
        err.contains("--report") && err.contains("not a directory"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
