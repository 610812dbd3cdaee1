// The CUDA architectures build.rs compiles the kernels' SASS for, and the check of
// FUSEBOX_CUDA_ARCHS, which restricts them (a Colab T4 build needs sm_75 alone: ptxas
// runs for one architecture instead of five). This file has no crate dependencies
// because build.rs `include!`s it as well; the library compiles it for its tests.

/// Every architecture the kernels support, oldest first.
pub const ARCHS: &[&str] = &["75", "80", "86", "89", "90"];

/// The architectures to build SASS for: FUSEBOX_CUDA_ARCHS's comma-separated list (each
/// one of `ARCHS`, in that order, duplicates dropped), or all of them when unset. The
/// first one's PTX goes into the fatbin too.
pub fn cuda_archs(setting: Option<&str>) -> Result<Vec<&'static str>, String> {
    let Some(v) = setting else {
        return Ok(ARCHS.to_vec());
    };
    let mut picked = Vec::new();
    for item in v.split(',').map(str::trim) {
        let found = ARCHS.iter().find(|a| **a == item).ok_or_else(|| {
            format!(
                "FUSEBOX_CUDA_ARCHS={v:?}: {item:?} is not a supported architecture; expected \
                 a comma-separated list of {} (compute capability without the dot, e.g. 75 \
                 for a T4), or unset for all of them",
                ARCHS.join(", ")
            )
        })?;
        if !picked.contains(found) {
            picked.push(*found);
        }
    }
    picked.sort_by_key(|a| ARCHS.iter().position(|x| x == a));
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_picks_supported_architectures() {
        assert_eq!(cuda_archs(None).unwrap(), ARCHS.to_vec());
        assert_eq!(cuda_archs(Some("75")).unwrap(), vec!["75"]);
        assert_eq!(cuda_archs(Some("90, 80,80")).unwrap(), vec!["80", "90"]);
        for bad in ["", "sm_75", "70", "75;80", "100"] {
            let e = cuda_archs(Some(bad)).unwrap_err();
            assert!(
                e.contains("FUSEBOX_CUDA_ARCHS") && e.contains("75, 80"),
                "{bad}: {e}"
            );
        }
    }
}
