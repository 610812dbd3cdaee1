//! The Porter stemmer exactly as `rouge-score` 0.1.2 runs it: `nltk.stem.porter.
//! PorterStemmer()` with its default mode, NLTK_EXTENSIONS (irregular-form table, the
//! `ies`/`ied` four-letter rules, `y -> i` only after a consonant, `bli`, `fulli`, `logi`,
//! the two-letter `*o` case). rouge-score never selects ORIGINAL_ALGORITHM.
//!
//! Words reaching it are ASCII `[a-z0-9]+` (the rouge tokenizer guarantees that), so it
//! works on bytes. Each step mirrors one nltk method, rule lists kept in nltk's order,
//! because the first rule whose suffix matches ends the step even when its condition fails.

type Cond<'a> = Option<&'a dyn Fn(&[u8]) -> bool>;

fn cons_flags(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = match c {
            b'a' | b'e' | b'i' | b'o' | b'u' => false,
            b'y' => i == 0 || !flags[i - 1],
            _ => true,
        };
        flags.push(f);
    }
    flags
}

fn is_cons(w: &[u8], i: usize) -> bool {
    cons_flags(&w[..=i])[i]
}

fn measure(stem: &[u8]) -> usize {
    let f = cons_flags(stem);
    f.windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(stem: &[u8]) -> bool {
    cons_flags(stem).iter().any(|c| !c)
}

fn ends_double_cons(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_cons(w, n - 1)
}

fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    (n >= 3
        && is_cons(w, n - 3)
        && !is_cons(w, n - 2)
        && is_cons(w, n - 1)
        && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !is_cons(w, 0) && is_cons(w, 1))
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, b].concat()
}

fn apply_rules(word: &[u8], rules: &[(&[u8], &[u8], Cond)]) -> Vec<u8> {
    for &(suffix, repl, cond) in rules {
        let ok = |stem: &[u8]| cond.is_none_or(|c| c(stem));
        if suffix == b"*d" {
            if ends_double_cons(word) {
                let stem = &word[..word.len() - 2];
                return if ok(stem) {
                    cat(stem, repl)
                } else {
                    word.to_vec()
                };
            }
            continue;
        }
        if word.ends_with(suffix) {
            let stem = &word[..word.len() - suffix.len()];
            return if ok(stem) {
                cat(stem, repl)
            } else {
                word.to_vec()
            };
        }
    }
    word.to_vec()
}

fn m_gt0(s: &[u8]) -> bool {
    measure(s) > 0
}

fn m_gt1(s: &[u8]) -> bool {
    measure(s) > 1
}

fn step1a(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ies") && w.len() == 4 {
        return cat(&w[..1], b"ie");
    }
    apply_rules(
        w,
        &[
            (b"sses", b"ss", None),
            (b"ies", b"i", None),
            (b"ss", b"ss", None),
            (b"s", b"", None),
        ],
    )
}

fn step1b(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ied") {
        let repl: &[u8] = if w.len() == 4 { b"ie" } else { b"i" };
        return cat(&w[..w.len() - 3], repl);
    }
    if w.ends_with(b"eed") {
        let stem = &w[..w.len() - 3];
        return if measure(stem) > 0 {
            cat(stem, b"ee")
        } else {
            w.to_vec()
        };
    }
    let mut inter: Option<&[u8]> = None;
    for suffix in [&b"ed"[..], b"ing"] {
        if w.ends_with(suffix) {
            let s = &w[..w.len() - suffix.len()];
            if contains_vowel(s) {
                inter = Some(s);
                break;
            }
        }
    }
    let Some(inter) = inter else {
        return w.to_vec();
    };
    let last = [inter[inter.len() - 1]];
    let not_lsz = |_: &[u8]| !matches!(last[0], b'l' | b's' | b'z');
    let add_e = |s: &[u8]| measure(s) == 1 && ends_cvc(s);
    apply_rules(
        inter,
        &[
            (b"at", b"ate", None),
            (b"bl", b"ble", None),
            (b"iz", b"ize", None),
            (b"*d", &last, Some(&not_lsz)),
            (b"", b"e", Some(&add_e)),
        ],
    )
}

fn step1c(w: &[u8]) -> Vec<u8> {
    let cond = |s: &[u8]| s.len() > 1 && is_cons(s, s.len() - 1);
    apply_rules(w, &[(b"y", b"i", Some(&cond))])
}

fn step2(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"alli") && m_gt0(&w[..w.len() - 4]) {
        return step2(&cat(&w[..w.len() - 4], b"al"));
    }
    let logi = |_: &[u8]| w.len() >= 3 && m_gt0(&w[..w.len() - 3]);
    let m: Cond = Some(&m_gt0);
    apply_rules(
        w,
        &[
            (b"ational", b"ate", m),
            (b"tional", b"tion", m),
            (b"enci", b"ence", m),
            (b"anci", b"ance", m),
            (b"izer", b"ize", m),
            (b"bli", b"ble", m),
            (b"alli", b"al", m),
            (b"entli", b"ent", m),
            (b"eli", b"e", m),
            (b"ousli", b"ous", m),
            (b"ization", b"ize", m),
            (b"ation", b"ate", m),
            (b"ator", b"ate", m),
            (b"alism", b"al", m),
            (b"iveness", b"ive", m),
            (b"fulness", b"ful", m),
            (b"ousness", b"ous", m),
            (b"aliti", b"al", m),
            (b"iviti", b"ive", m),
            (b"biliti", b"ble", m),
            (b"fulli", b"ful", m),
            (b"logi", b"log", Some(&logi)),
        ],
    )
}

fn step3(w: &[u8]) -> Vec<u8> {
    let m: Cond = Some(&m_gt0);
    apply_rules(
        w,
        &[
            (b"icate", b"ic", m),
            (b"ative", b"", m),
            (b"alize", b"al", m),
            (b"iciti", b"ic", m),
            (b"ical", b"ic", m),
            (b"ful", b"", m),
            (b"ness", b"", m),
        ],
    )
}

/// Step 4 only deletes a suffix: the first that matches, where the stem's measure is
/// above 1 (and, for `ion`, the stem ends in `s` or `t`).
fn step4(w: &[u8]) -> Vec<u8> {
    const SUFFIXES: [&str; 19] = [
        "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion",
        "ou", "ism", "ate", "iti", "ous", "ive", "ize",
    ];
    let m: Cond = Some(&m_gt1);
    let ion = |s: &[u8]| m_gt1(s) && matches!(s.last(), Some(b's' | b't'));
    let rules: Vec<(&[u8], &[u8], Cond)> = SUFFIXES
        .iter()
        .map(|&suffix| {
            let cond: Cond = if suffix == "ion" { Some(&ion) } else { m };
            (suffix.as_bytes(), &b""[..], cond)
        })
        .collect();
    apply_rules(w, &rules)
}

fn step5a(w: &[u8]) -> Vec<u8> {
    if let Some(stem) = w.strip_suffix(b"e") {
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w.to_vec()
}

fn step5b(w: &[u8]) -> Vec<u8> {
    let cond = |_: &[u8]| !w.is_empty() && m_gt1(&w[..w.len() - 1]);
    apply_rules(w, &[(b"ll", b"l", Some(&cond))])
}

const IRREGULAR: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

/// `PorterStemmer().stem(word)` (NLTK_EXTENSIONS). Non-ASCII input is returned lowercased
/// and unstemmed; rouge never passes any.
pub fn stem(word: &str) -> String {
    let w = word.to_lowercase();
    if let Some((_, s)) = IRREGULAR.iter().find(|(k, _)| *k == w) {
        return (*s).to_string();
    }
    if word.chars().count() <= 2 || !w.is_ascii() {
        return w;
    }
    let mut s = step1a(w.as_bytes());
    for f in [step1b, step1c, step2, step3, step4, step5a, step5b] {
        s = f(&s);
    }
    String::from_utf8(s).unwrap_or(w)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_stems() {
        // Values from nltk 3.x PorterStemmer() (NLTK_EXTENSIONS).
        let cases = [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("running", "run"),
            ("hopping", "hop"),
            ("relational", "relat"),
            ("happy", "happi"),
            ("enjoy", "enjoy"),
            ("dying", "die"),
            ("generalization", "gener"),
            ("controll", "control"),
            ("agreed", "agre"),
            ("filing", "file"),
        ];
        for (w, want) in cases {
            assert_eq!(super::stem(w), want, "{w}");
        }
    }
}
