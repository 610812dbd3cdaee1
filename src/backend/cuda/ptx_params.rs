// Kernel parameter lists read off PTX `.entry` declarations.
//
// Why: a kernel launch passes its arguments as untyped bytes, so a Rust wrapper whose
// argument list drifted from its kernel (one argument more or less, an i32 where the
// kernel takes a 64-bit value) corrupts memory on the card instead of failing. Kernel
// signatures changed in sessions without a GPU. build.rs compiles the kernels to PTX once
// more (compute_75), reads each entry's parameters with `parse_entries` and embeds the
// table; `Dev::launch` checks every launch against it before it goes to the driver.
// This file has no crate dependencies because build.rs `include!`s it as well.

/// (kernel name, parameter types separated by spaces) for each `.entry` in `ptx`.
/// Scalars keep their PTX type (`u64`, `u32`, `f32`, `b64`, ...). A by-value struct
/// becomes `bytes<n>`, e.g. `bytes3856` for `.param .align 8 .b8 name[3856]`.
#[allow(dead_code)]
pub fn parse_entries(ptx: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry ") {
        rest = &rest[at + ".entry ".len()..];
        let Some(open) = rest.find('(') else { break };
        let name = rest[..open].trim().to_string();
        let Some(close) = rest[open..].find(')') else {
            break;
        };
        let params = &rest[open + 1..open + close];
        rest = &rest[open + close..];
        let mut types = Vec::new();
        for p in params.split(',') {
            let words: Vec<&str> = p.split_whitespace().collect();
            if words.first() != Some(&".param") {
                continue;
            }
            // ".param .u64 name" or ".param .align 8 .b8 name[3856]"
            let bytes = words.last().and_then(|w| {
                let (_, n) = w.split_once('[')?;
                n.trim_end_matches(']').parse::<usize>().ok()
            });
            match (bytes, words.get(1)) {
                (Some(n), _) => types.push(format!("bytes{n}")),
                (None, Some(t)) => types.push(t.trim_start_matches('.').to_string()),
                (None, None) => {}
            }
        }
        if !name.is_empty() {
            out.push((name, types.join(" ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_entries;

    #[test]
    fn entries_scalars_and_by_value_structs() {
        let ptx = "
.version 8.0
.visible .entry fb_a(
	.param .u64 fb_a_param_0,
	.param .u32 fb_a_param_1,
	.param .f32 fb_a_param_2
)
.maxntid 256, 1, 1
{
	ret;
}
	// .globl	fb_b
.visible .entry fb_b(
	.param .align 8 .b8 fb_b_param_0[3856],
	.param .f64 fb_b_param_1
)
{
}
.visible .entry fb_c()
{
}
";
        assert_eq!(
            parse_entries(ptx),
            vec![
                ("fb_a".to_string(), "u64 u32 f32".to_string()),
                ("fb_b".to_string(), "bytes3856 f64".to_string()),
                ("fb_c".to_string(), String::new()),
            ]
        );
    }
}
