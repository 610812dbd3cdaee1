use super::*;
use serde_json::json;

fn base() -> GenerateConfig {
    GenerateConfig::with_special_tokens(0, vec![1], Some(0))
}

#[test]
fn overlay_reads_hf_generation_fields() {
    let v = json!({
        "num_beams": 4, "length_penalty": 2.0, "max_length": 200, "min_length": 30,
        "no_repeat_ngram_size": 3, "early_stopping": true, "eos_token_id": [1, 5],
        "forced_bos_token_id": 0, "forced_eos_token_id": 2, "bad_words_ids": [[7], [8, 9]],
        "renormalize_logits": true, "num_return_sequences": 2, "min_new_tokens": 4,
        "transformers_version": "5.25.0"
    });
    let c = base().overlay_json(&v, "t").unwrap();
    assert_eq!(
        (c.num_beams, c.max_length, c.min_length),
        (4, Some(200), 30)
    );
    assert_eq!((c.no_repeat_ngram_size, c.length_penalty), (3, 2.0));
    assert_eq!(c.early_stopping, EarlyStopping::True);
    assert_eq!(c.eos_token_id, vec![1, 5]);
    assert_eq!(c.forced_bos_token_id, Some(0));
    assert_eq!(c.forced_eos_token_id, Some(vec![2]));
    assert_eq!(c.bad_words_ids, Some(vec![vec![7], vec![8, 9]]));
    assert!(c.renormalize_logits);
    assert_eq!((c.num_return_sequences, c.min_new_tokens), (2, Some(4)));
    assert_eq!(
        c.total_min_length(),
        5,
        "min_new_tokens wins over min_length"
    );
    assert_eq!(c.other.get("transformers_version"), Some(&json!("5.25.0")));
    // Written back: what was read, the defaults left out.
    let back = base().overlay_json(&c.to_json(), "back").unwrap();
    assert_eq!(
        GenerateConfig {
            origin: String::new(),
            ..back
        },
        GenerateConfig {
            origin: String::new(),
            ..c
        }
    );
    let never = base()
        .overlay_json(&json!({"early_stopping": "never"}), "t")
        .unwrap();
    assert_eq!(never.early_stopping, EarlyStopping::Never);
}

#[test]
fn wrong_types_name_the_field_and_file() {
    for (v, field) in [
        (json!({"num_beams": "four"}), "num_beams"),
        (json!({"bad_words_ids": [5, 6]}), "bad_words_ids"),
        (json!({"forced_eos_token_id": "x"}), "forced_eos_token_id"),
        (json!({"renormalize_logits": 1}), "renormalize_logits"),
    ] {
        let e = base().overlay_json(&v, "gen.json").unwrap_err().to_string();
        assert!(e.contains("gen.json") && e.contains(field), "{e}");
    }
}

#[test]
fn max_length_follows_generate() {
    let mut c = base();
    assert_eq!(c.total_max_length(None), 21, "20 new tokens by default");
    assert_eq!(c.total_max_length(Some(16)), 16, "capped at the positions");
    c.max_length = Some(9);
    assert_eq!(c.total_max_length(Some(16)), 9);
    c.max_new_tokens = Some(4);
    assert_eq!(c.total_max_length(None), 5, "max_new_tokens wins");
}

#[test]
fn config_json_gives_only_its_generation_fields() {
    let cfg = json!({"d_model": 512, "num_beams": 4, "repetition_penalty": 1.0,
                     "suppress_tokens": [3]});
    let c = base().from_model_config(&cfg, "config.json").unwrap();
    assert_eq!(c.num_beams, 4);
    assert!(!c.other.contains_key("d_model"));
    assert!(
        !c.other.contains_key("repetition_penalty"),
        "a default is inert"
    );
    let e = c.validate(10).unwrap_err().to_string();
    assert!(
        e.contains("suppress_tokens") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn validate_refuses_what_generate_refuses() {
    let cases: [(serde_json::Value, &str); 9] = [
        (json!({"num_return_sequences": 2}), "needs beam search"),
        (
            json!({"num_beams": 2, "num_return_sequences": 3}),
            "num_return_sequences (3) has to be smaller or equal to num_beams (2)",
        ),
        (
            json!({"max_new_tokens": 0}),
            "max_new_tokens must be greater than 0",
        ),
        (json!({"max_length": 1}), "max_length 1 leaves no room"),
        (json!({"forced_bos_token_id": 10}), "forced_bos_token_id 10"),
        (
            json!({"forced_eos_token_id": [2, 12]}),
            "forced_eos_token_id 12",
        ),
        (
            json!({"bad_words_ids": [[3, 10]]}),
            "bad_words_ids holds 10",
        ),
        (json!({"bad_words_ids": [[]]}), "non-empty"),
        (
            json!({"repetition_penalty": 1.2}),
            "`repetition_penalty` = 1.2",
        ),
    ];
    for (v, want) in cases {
        let c = base().overlay_json(&v, "g.json").unwrap();
        let e = c.validate(10).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("g.json"), "{v}: {e}");
    }
    base().validate(10).unwrap();
}
