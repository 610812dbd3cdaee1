//! The built-in datasets behind `train qa|summarize|translate` with no arguments:
//! generated deterministically from a seed, written to disk in the same formats as real
//! data (SQuAD v1.1 JSON, JSONL), so a user can read exactly what the model learns from.
//!
//! They are small, closed-vocabulary tasks that a from-scratch model learns on two CPU
//! cores in minutes. They show the whole pipeline working (tokenizer training, features,
//! training, decoding, official-style metrics); they say nothing about real-world
//! accuracy.
//!
//! - QA: short biographies of several people in one context (birthplace, year, job, pet,
//!   favourite colour), so every question has distractor answers of the right type;
//!   questions are paraphrased several ways.
//! - Summarize: a paragraph of event sentences with distractors; the target is the one
//!   sentence about the winner, rewritten as a headline.
//! - Translate: English → a made-up language with its own lexicon, subject–object–verb
//!   order, noun–adjective order and a plural particle, so it is more than word
//!   substitution.

use serde_json::{json, Value};

use crate::rng::Rng;

const FIRST: &[&str] = &[
    "Alice", "Bruno", "Chandra", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas",
    "Kemal", "Lucia", "Marek", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamar",
    "Umar", "Vera", "Wanda", "Xavier", "Yusuf", "Zofia",
];
const LAST: &[&str] = &[
    "Abbott",
    "Brennan",
    "Castillo",
    "Dekker",
    "Eriksen",
    "Fontaine",
    "Gallo",
    "Haas",
    "Ibarra",
    "Jansen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Novak",
    "Ortega",
    "Petrov",
    "Quinn",
    "Rossi",
    "Santos",
    "Tanaka",
    "Ueda",
    "Varga",
    "Weber",
    "Yilmaz",
    "Zeller",
];
const CITIES: &[&str] = &[
    "Lisbon",
    "Krakow",
    "Osaka",
    "Nairobi",
    "Quito",
    "Tbilisi",
    "Bergen",
    "Adelaide",
    "Porto",
    "Lyon",
    "Seville",
    "Dublin",
    "Riga",
    "Tallinn",
    "Valencia",
    "Marseille",
    "Bologna",
    "Gdansk",
    "Leipzig",
    "Utrecht",
    "Ghent",
    "Graz",
    "Brno",
    "Turin",
];
const JOBS: &[&str] = &[
    "carpenter",
    "pilot",
    "chemist",
    "violinist",
    "baker",
    "surgeon",
    "librarian",
    "architect",
    "journalist",
    "plumber",
    "geologist",
    "translator",
    "gardener",
    "judge",
    "nurse",
    "sculptor",
    "engineer",
    "farmer",
    "teacher",
    "photographer",
];
const PETS: &[&str] = &[
    "parrot", "tortoise", "ferret", "hamster", "rabbit", "goat", "pony", "lizard", "goldfish",
    "beagle", "canary", "hedgehog",
];
const COLORS: &[&str] = &[
    "green",
    "orange",
    "purple",
    "yellow",
    "crimson",
    "turquoise",
    "silver",
    "amber",
    "violet",
    "teal",
    "scarlet",
    "indigo",
];

struct Person {
    name: String,
    city: &'static str,
    year: u32,
    job: &'static str,
    pet: &'static str,
    color: &'static str,
}

fn pick(rng: &mut Rng, xs: &[&'static str]) -> &'static str {
    xs[rng.below(xs.len())]
}

fn person(rng: &mut Rng, used: &mut Vec<String>) -> Person {
    loop {
        let name = format!("{} {}", pick(rng, FIRST), pick(rng, LAST));
        if !used.contains(&name) {
            used.push(name.clone());
            return Person {
                name,
                city: pick(rng, CITIES),
                year: 1900 + rng.below(110) as u32,
                job: pick(rng, JOBS),
                pet: pick(rng, PETS),
                color: pick(rng, COLORS),
            };
        }
    }
}

/// One sentence per fact, in a varied order and wording.
fn facts(rng: &mut Rng, p: &Person) -> Vec<(String, Vec<(&'static str, String)>)> {
    // The full name in every sentence and question: the model must bind each question
    // to the right person among the distractors by name.
    let who = p.name.clone();
    let born = match rng.below(3) {
        0 => format!("{} was born in {} in {}.", p.name, p.city, p.year),
        1 => format!(
            "Born in {} in {}, {} grew up by the sea.",
            p.city, p.year, p.name
        ),
        _ => format!("In {}, {} was born in {}.", p.year, p.name, p.city),
    };
    let job = match rng.below(3) {
        0 => format!("{who} works as a {}.", p.job),
        1 => format!("By trade, {} is a {}.", p.name, p.job),
        _ => format!("{who} earns a living as a {}.", p.job),
    };
    let pet = match rng.below(2) {
        0 => format!("{who} keeps a {} at home.", p.pet),
        _ => format!("At home, {} looks after a {}.", p.name, p.pet),
    };
    let color = match rng.below(2) {
        0 => format!("The favourite colour of {who} is {}.", p.color),
        _ => format!("{who} likes {} more than any other colour.", p.color),
    };
    vec![
        (
            born,
            vec![("city", p.city.to_string()), ("year", p.year.to_string())],
        ),
        (job, vec![("job", p.job.to_string())]),
        (pet, vec![("pet", p.pet.to_string())]),
        (color, vec![("color", p.color.to_string())]),
    ]
}

fn question(rng: &mut Rng, slot: &str, name: &str) -> String {
    let who = name;
    let opts: Vec<String> = match slot {
        "city" => vec![
            format!("Where was {name} born?"),
            format!("In which city was {name} born?"),
            format!("What is the birthplace of {name}?"),
        ],
        "year" => vec![
            format!("When was {name} born?"),
            format!("In what year was {name} born?"),
            format!("What year was {who} born in?"),
        ],
        "job" => vec![
            format!("What does {who} do for a living?"),
            format!("What is the job of {name}?"),
            format!("What is {name}'s profession?"),
        ],
        "pet" => vec![
            format!("What animal does {who} keep?"),
            format!("Which pet does {name} have?"),
        ],
        _ => vec![
            format!("What is the favourite colour of {who}?"),
            format!("Which colour does {name} like best?"),
        ],
    };
    opts[rng.below(opts.len())].clone()
}

/// A SQuAD v1.1 JSON document of `n_contexts` contexts with `q_per_context` questions each.
pub fn qa_dataset(seed: u64, n_contexts: usize, q_per_context: usize, title: &str) -> Value {
    let mut rng = Rng::new(seed);
    let mut paragraphs = Vec::new();
    let mut qid = 0usize;
    for _ in 0..n_contexts {
        let mut used = Vec::new();
        let people: Vec<Person> = (0..2 + rng.below(3))
            .map(|_| person(&mut rng, &mut used))
            .collect();
        let mut sentences = Vec::new();
        for p in &people {
            for f in facts(&mut rng, p) {
                sentences.push((p.name.clone(), f));
            }
        }
        rng.shuffle(&mut sentences);
        let mut context = String::new();
        let mut spans: Vec<(String, &'static str, String, usize)> = Vec::new();
        for (name, (sentence, slots)) in &sentences {
            if !context.is_empty() {
                context.push(' ');
            }
            let base = context.chars().count();
            for (slot, value) in slots {
                if let Some(byte) = sentence.find(value.as_str()) {
                    let char_off = sentence[..byte].chars().count();
                    spans.push((name.clone(), slot, value.clone(), base + char_off));
                }
            }
            context.push_str(sentence);
        }
        let mut qas = Vec::new();
        for _ in 0..q_per_context {
            let (name, slot, value, start) = spans[rng.below(spans.len())].clone();
            qas.push(json!({
                "id": format!("{title}-{qid:06}"),
                "question": question(&mut rng, slot, &name),
                "answers": [{"text": value, "answer_start": start}],
            }));
            qid += 1;
        }
        paragraphs.push(json!({"context": context, "qas": qas}));
    }
    json!({"version": "1.1", "data": [{"title": title, "paragraphs": paragraphs}]})
}

const EVENTS: &[&str] = &[
    "chess open",
    "marathon",
    "baking contest",
    "poetry prize",
    "sailing regatta",
    "science fair",
    "piano competition",
    "cycling race",
    "film festival",
    "debate cup",
];

/// (document, summary) pairs: several competitors per event, one winner; the summary is
/// the headline "<name> from <city> wins the <event>".
pub fn summarize_dataset(seed: u64, n: usize) -> Vec<(String, String)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let event = pick(&mut rng, EVENTS);
            let mut used = Vec::new();
            let people: Vec<Person> = (0..3 + rng.below(2))
                .map(|_| person(&mut rng, &mut used))
                .collect();
            let winner = rng.below(people.len());
            let mut sents = vec![format!(
                "The {event} took place in {} this weekend.",
                pick(&mut rng, CITIES)
            )];
            let mut lines: Vec<String> = people
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    if i == winner {
                        format!(
                            "{} from {} took first place after a strong finish.",
                            p.name, p.city
                        )
                    } else {
                        match rng.below(2) {
                            0 => format!(
                                "{} from {} finished in the middle of the field.",
                                p.name, p.city
                            ),
                            _ => format!("{}, a {} from {}, also competed.", p.name, p.job, p.city),
                        }
                    }
                })
                .collect();
            rng.shuffle(&mut lines);
            sents.extend(lines);
            sents.push(format!(
                "Organisers expect the {event} to return next year.",
            ));
            let w = &people[winner];
            (
                sents.join(" "),
                format!("{} from {} wins the {event}", w.name, w.city),
            )
        })
        .collect()
}

const LEX: &[(&str, &str)] = &[
    ("the", "ko"),
    ("a", "na"),
    ("cat", "miru"),
    ("dog", "basu"),
    ("bird", "tipa"),
    ("house", "dela"),
    ("river", "sono"),
    ("tree", "ulan"),
    ("child", "peko"),
    ("teacher", "maraki"),
    ("sees", "vot"),
    ("likes", "amo"),
    ("finds", "hesa"),
    ("carries", "lubo"),
    ("big", "gor"),
    ("small", "mik"),
    ("red", "ruba"),
    ("old", "sena"),
    ("quick", "fesa"),
    ("green", "verd"),
    ("near", "apud"),
    ("and", "e"),
];
const NOUNS: &[&str] = &[
    "cat", "dog", "bird", "house", "river", "tree", "child", "teacher",
];
const VERBS: &[&str] = &["sees", "likes", "finds", "carries"];
const ADJS: &[&str] = &["big", "small", "red", "old", "quick", "green"];

fn lex(w: &str) -> &'static str {
    LEX.iter()
        .find(|(e, _)| *e == w)
        .map(|(_, t)| *t)
        .unwrap_or("?")
}

/// Noun phrase: English "the big dog(s)" → target "ko basu ri gor" (noun before adjective,
/// plural particle `ri` after the noun).
fn noun_phrase(rng: &mut Rng) -> (String, String) {
    let det = if rng.below(2) == 0 { "the" } else { "a" };
    let noun = pick(rng, NOUNS);
    let plural = det == "the" && rng.below(3) == 0;
    let adj = if rng.below(2) == 0 {
        Some(pick(rng, ADJS))
    } else {
        None
    };
    let en_noun = if plural {
        format!("{noun}s")
    } else {
        noun.to_string()
    };
    let tg_noun = if plural {
        format!("{} ri", lex(noun))
    } else {
        lex(noun).to_string()
    };
    let en = match adj {
        Some(a) => format!("{det} {a} {en_noun}"),
        None => format!("{det} {en_noun}"),
    };
    let tg = match adj {
        Some(a) => format!("{} {tg_noun} {}", lex(det), lex(a)),
        None => format!("{} {tg_noun}", lex(det)),
    };
    (en, tg)
}

/// (english, target) sentence pairs: subject–verb–object in English becomes
/// subject–object–verb in the target language.
pub fn translate_dataset(seed: u64, n: usize) -> Vec<(String, String)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let (s_en, s_tg) = noun_phrase(&mut rng);
            let (o_en, o_tg) = noun_phrase(&mut rng);
            let v = pick(&mut rng, VERBS);
            let mut en = format!("{s_en} {v} {o_en}");
            let mut tg = format!("{s_tg} {o_tg} {}", lex(v));
            if rng.below(3) == 0 {
                let (p_en, p_tg) = noun_phrase(&mut rng);
                en.push_str(&format!(" near {p_en}"));
                tg.push_str(&format!(" {} {}", p_tg, lex("near")));
            }
            (format!("{en}."), format!("{tg}."))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qa_answers_match_their_context_offsets() {
        let d = qa_dataset(1, 20, 3, "synth-train");
        let paras = d["data"][0]["paragraphs"].as_array().expect("paragraphs");
        assert_eq!(paras.len(), 20);
        for p in paras {
            let ctx: Vec<char> = p["context"].as_str().expect("context").chars().collect();
            for qa in p["qas"].as_array().expect("qas") {
                let a = &qa["answers"][0];
                let text = a["text"].as_str().expect("text");
                let start = a["answer_start"].as_u64().expect("start") as usize;
                let got: String = ctx[start..start + text.chars().count()].iter().collect();
                assert_eq!(got, text, "question {}", qa["question"]);
            }
        }
    }

    #[test]
    fn datasets_are_deterministic_and_seed_dependent() {
        assert_eq!(qa_dataset(5, 3, 2, "t"), qa_dataset(5, 3, 2, "t"));
        assert_ne!(qa_dataset(5, 3, 2, "t"), qa_dataset(6, 3, 2, "t"));
        assert_eq!(translate_dataset(2, 10), translate_dataset(2, 10));
        let s = summarize_dataset(3, 5);
        for (doc, sum) in &s {
            let name = sum.split(" from ").next().expect("name");
            assert!(doc.contains(name), "{sum} not grounded in {doc}");
        }
        let t = translate_dataset(4, 50);
        assert!(t.iter().any(|(_, tg)| tg.contains(" ri")), "plurals appear");
    }
}
