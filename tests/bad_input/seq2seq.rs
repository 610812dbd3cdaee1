//! The bad-input rows of `infer generate`, `summarize` and `translate`: generate()'s
//! flags, generation settings from the model directory, the pipelines' --task and
//! task_specific_params, missing model files and an empty --file.

use std::path::Path;

use serde_json::json;

use super::{as_row, cli, copy_model, edit_json, gen, gen_fails, root, row, s, write};
use super::{Models, Row, FAIL, INFER, OK};

pub(super) fn rows(m: &Models) -> Vec<Row> {
    let t5 = s(&m.t5);
    let mut rows = Vec::new();

    // --- infer generate ---------------------------------------------------------------
    rows.push(as_row(
        INFER,
        gen(&t5, &["--max-new-tokens", "1000000", "--json"]),
        OK,
        &["1000000 new tokens asked for; capped at 511"],
    ));
    // A model that never emits </s> (eos banned by min_length) stops at the cap.
    let no_eos = copy_model(&m.t5, "t5-no-eos");
    std::fs::write(
        no_eos.join("generation_config.json"),
        json!({"min_length": 1_000_000, "max_new_tokens": 1_000_000}).to_string(),
    )
    .expect("write");
    rows.push(as_row(
        INFER,
        gen(&s(&no_eos), &["--json"]),
        OK,
        &["capped at 511", "\"tokens\":["],
    ));
    rows.push(as_row(
        INFER,
        gen(&t5, &["--num-beams", "100"]),
        FAIL,
        &[
            "--num-beams 100 exceeds the model's vocabulary",
            "vocab_size",
        ],
    ));
    rows.push(as_row(
        INFER,
        gen(&t5, &["--length-penalty", "nan"]),
        FAIL,
        &["--length-penalty must be a finite number"],
    ));
    rows.push(as_row(
        INFER,
        gen(&t5, &["--max-source-length", "0"]),
        FAIL,
        &["--max-source-length must be at least 1"],
    ));
    let bad_eos = copy_model(&m.t5, "t5-bad-eos");
    std::fs::write(
        bad_eos.join("generation_config.json"),
        json!({"eos_token_id": 100_000}).to_string(),
    )
    .expect("write");
    rows.push(gen_fails(
        &bad_eos,
        &[
            "eos_token_id 100000 is not a token of the model",
            "generation_config.json",
        ],
    ));
    rows.push(row(
        INFER,
        &["generate", "--model", &t5, "--device", "cpu"],
        FAIL,
        &["--input <INPUT>|--file <FILE>"],
    ));
    // generate()'s flags (issue 16): each names itself, as generate() refuses them.
    for (extra, want) in [
        (
            "--num-return-sequences 0",
            &["--num-return-sequences must be at least 1"][..],
        ),
        (
            "--num-return-sequences 2",
            &[
                "--num-return-sequences 2 needs beam search with at least 2 beams",
                "the model's num_beams",
            ],
        ),
        (
            "--num-beams 2 --num-return-sequences 3",
            &[
                "--num-return-sequences 3 needs beam search",
                "--num-beams is 2",
            ],
        ),
        ("--max-length 1", &["--max-length 1 leaves no room"]),
        (
            "--max-new-tokens 0",
            &["--max-new-tokens must be at least 1"],
        ),
        (
            "--early-stopping maybe",
            &["invalid value 'maybe' for '--early-stopping"],
        ),
    ] {
        let extra: Vec<&str> = extra.split_whitespace().collect();
        rows.push(as_row(INFER, gen(&t5, &extra), FAIL, want));
    }
    // Several sequences per input: a JSON list of {"text", "tokens", "score"}, best first.
    rows.push(as_row(
        INFER,
        gen(
            &t5,
            &["--num-beams", "3", "--num-return-sequences", "2", "--json"],
        ),
        OK,
        &["[{\"score\":", "},{\"score\":"],
    ));
    // Generation settings from the model directory are checked, naming field and file.
    for (name, gen_cfg, want) in [
        (
            "t5-rep-penalty",
            json!({"repetition_penalty": 1.3}),
            &[
                "`repetition_penalty` = 1.3 is not implemented",
                "generation_config.json",
            ][..],
        ),
        (
            "t5-bad-words",
            json!({"bad_words_ids": [[5, 100_000]]}),
            &["bad_words_ids holds 100000", "generation_config.json"],
        ),
        (
            "t5-beams-text",
            json!({"num_beams": "four"}),
            &["generation_config.json: field `num_beams`: expected a non-negative integer"],
        ),
        (
            "t5-nrs-greedy",
            json!({"num_return_sequences": 2}),
            &["num_return_sequences 2 (the model's", "needs beam search"],
        ),
    ] {
        let dir = copy_model(&m.t5, name);
        std::fs::write(dir.join("generation_config.json"), gen_cfg.to_string()).expect("write");
        rows.push(gen_fails(&dir, want));
    }

    // --- infer summarize / translate ---------------------------------------------------
    let pipe = |flags: &str, model: &Path| {
        let flags = format!("{flags} --device cpu");
        cli(
            &flags,
            &[("--model", s(model)), ("--input", "one two".into())],
        )
    };
    let tasks = copy_model(&m.t5, "t5-tasks");
    edit_json(&tasks.join("config.json"), |v| {
        v["task_specific_params"] = json!({"translation_en_to_de": {"prefix": "de: "}});
    });
    let no_tok = copy_model(&m.t5, "t5-no-tokenizer");
    std::fs::remove_file(no_tok.join("tokenizer.json")).expect("rm");
    let no_weights = copy_model(&m.t5, "t5-no-weights");
    std::fs::remove_file(no_weights.join("model.safetensors")).expect("rm");
    let bad_params = copy_model(&m.t5, "t5-bad-params");
    edit_json(&bad_params.join("config.json"), |v| {
        v["task_specific_params"] = json!({"summarization": 3});
    });
    for (flags, model, want) in [
        ("summarize", &no_tok, &["tokenizer.json"][..]),
        ("translate", &no_weights, &["model.safetensors"]),
        (
            "summarize",
            &root().join("no-such-model"),
            &["no-such-model", "config.json"],
        ),
        (
            "translate --task translation_en_fr",
            &m.t5,
            &["Invalid translation task translation_en_fr, use 'translation_XX_to_YY' format"],
        ),
        (
            "translate --task summarization",
            &m.t5,
            &["infer translate runs a translation task"],
        ),
        (
            "translate --task translation_en_to_fr",
            &tasks,
            &[
                "has no entry \"translation_en_to_fr\"",
                "translation_en_to_de",
            ],
        ),
        (
            "summarize",
            &bad_params,
            &["task_specific_params.summarization`: expected an object"],
        ),
        (
            "summarize --num-return-sequences 5",
            &m.t5,
            &[
                "--num-return-sequences 5 needs beam search",
                "the pipeline's num_beams",
            ],
        ),
    ] {
        rows.push(as_row(INFER, pipe(flags, model), FAIL, want));
    }
    let empty = write("empty-inputs.txt", b"");
    let args = cli(
        "summarize --device cpu",
        &[("--model", &t5), ("--file", &s(&empty))],
    );
    rows.push(as_row(
        INFER,
        args,
        FAIL,
        &["empty-inputs.txt: empty: --file expects one input per line"],
    ));
    rows
}
