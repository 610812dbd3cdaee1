//! Text metrics that must agree, digit for digit, with the Python reference tools people
//! quote in papers: the official SQuAD scripts, google-research `rouge-score` and
//! `sacrebleu`. Because those tools are Python, a few Python string/number behaviours
//! (`str.split()` whitespace, `repr(float)`) live here so every metric shares one copy.

pub mod bleu;
pub mod porter;
pub mod rouge;
pub mod squad;

/// Python's `str.isspace()`: Unicode White_Space plus the ASCII information separators
/// (U+001C..U+001F), which Python treats as whitespace and Rust does not.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no arguments.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_isspace).filter(|t| !t.is_empty())
}

/// Python's `str.rstrip()` with no arguments.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_isspace)
}

/// `repr(float)` as Python prints it (and so as `json.dumps` writes it): the shortest
/// digits that round-trip, fixed notation for exponents -4..=15 with at least one digit
/// after the point, otherwise `d.ddde+XX`. Non-finite values use json.dumps' spellings.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as Python's repr.
    let sci = format!("{:e}", x.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (a, b) = digits.split_at((exp + 1) as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (100.0, "100.0"),
            (0.5, "0.5"),
            (66.66666666666667, "66.66666666666667"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1e15, "1000000000000000.0"),
            (-2.5, "-2.5"),
            (123456.789, "123456.789"),
            // Expected strings are Python's repr of the same literals.
            (1.2345678901234567e-7, "1.2345678901234566e-07"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e22, "1e+22"),
            (123456789012345.6, "123456789012345.6"),
            (5e-324, "5e-324"),
            (0.0, "0.0"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn split_like_python() {
        let v: Vec<&str> = py_split(" a\u{1f}b\u{a0}c\t\n").collect();
        assert_eq!(v, ["a", "b", "c"]);
        assert_eq!(py_rstrip("x \u{1c}"), "x");
    }
}
