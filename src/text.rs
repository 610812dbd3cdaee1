//! Text files as users make them: a UTF-8 byte-order mark (Windows editors write one) is
//! not part of the content, so every reader of a user's file goes through here.

use std::path::Path;

use crate::error::{Error, Result};

/// `text` without a leading byte-order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// The file at `path` as UTF-8 text, without a leading byte-order mark; an error names
/// the file.
pub fn read_text(path: &Path) -> Result<String> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(match s.strip_prefix('\u{feff}') {
        Some(t) => t.to_string(),
        None => s,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_byte_order_mark_is_dropped_once() {
        assert_eq!(super::strip_bom("\u{feff}{}"), "{}");
        assert_eq!(super::strip_bom("{}"), "{}");
        assert_eq!(super::strip_bom("\u{feff}\u{feff}x"), "\u{feff}x");
        let p = std::env::temp_dir().join(format!("fusebox-bom-{}", std::process::id()));
        std::fs::write(&p, "\u{feff}[1]").expect("write");
        assert_eq!(super::read_text(&p).expect("read"), "[1]");
        let _ = std::fs::remove_file(&p);
        let e = super::read_text(&p).expect_err("gone").to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
    }
}
