//! The QA task end to end on the CPU: SQuAD-format examples from the data loader, a
//! tiny BERT with all-MiniLM-L6-v2's tokenizer, `train::run` (AdamW, schedule, eval
//! each epoch, HF checkpoint), then the checkpoint reloaded and scored again. The
//! model must fit its 14 training questions: loss falls and F1 rises.

mod common;
use common::assets;

use fusebox::autograd::no_grad;
use fusebox::data::squad::{load_squad, SquadOptions};
use fusebox::models::auto::load_qa_model;
use fusebox::models::bert::{BertConfig, BertForQa};
use fusebox::tasks::qa::PipelineConfig;
use fusebox::tasks::qa::{FeatureConfig, PostprocessConfig, QaExample};
use fusebox::tasks::qa_train::{answer_question, QaTask};
use fusebox::tokenize::TextTokenizer;
use fusebox::train::{run, Task, TrainConfig};
use fusebox::{DType, Device};

fn mean_loss(task: &mut QaTask) -> f64 {
    let _g = no_grad();
    let idx: Vec<usize> = (0..task.train_len()).collect();
    task.loss(&idx, 0)
        .expect("loss")
        .0
        .to_scalar()
        .expect("scalar")
}

#[test]
fn qa_task_trains_evaluates_and_saves() {
    let Some(a) = assets() else { return };
    let tok = TextTokenizer::from_dir(&a.join("models/all-minilm-l6-v2")).expect("tokenizer");
    let load = load_squad(
        a.join("qa/hf-fixture-sample-flat.json"),
        SquadOptions::default(),
    )
    .expect("squad");
    let examples: Vec<QaExample> = load.examples.iter().map(QaExample::from).collect();
    let cfg: BertConfig = serde_json::from_value(serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
    }))
    .expect("config");
    let model = BertForQa::new(cfg, Device::Cpu, DType::F32, 1).expect("model");
    let features = FeatureConfig {
        max_length: 128,
        stride: 32,
        pad_to_max_length: false,
    };
    // The sample mixes answerable and unanswerable questions: SQuAD v2 scoring.
    let post = PostprocessConfig {
        version_2_with_negative: true,
        ..Default::default()
    };
    let mut task = QaTask::new(
        Box::new(model),
        tok,
        &examples,
        examples.clone(),
        features,
        post,
        Device::Cpu,
    )
    .expect("task");
    assert!(
        task.train_len() > examples.len(),
        "long contexts give several windows"
    );
    let loss0 = mean_loss(&mut task);
    let f1_0 = task.evaluate().expect("eval")["f1"].as_f64().expect("f1");
    let out = std::env::temp_dir().join(format!("fusebox-qa-train-{}", std::process::id()));
    let tc = TrainConfig {
        epochs: 25,
        batch: 8,
        lr: 3e-3,
        warmup_ratio: 0.1,
        out_dir: out.clone(),
        quiet: true,
        ..Default::default()
    };
    let fin = run(&mut task, &tc).expect("train");
    let loss1 = mean_loss(&mut task);
    let f1_1 = fin["f1"].as_f64().expect("f1");
    eprintln!("loss {loss0:.3} -> {loss1:.3}, f1 {f1_0:.1} -> {f1_1:.1}, {fin}");
    assert!(loss1 < 0.3 * loss0, "loss {loss0} -> {loss1}");
    assert!(f1_1 > f1_0 + 20.0, "f1 {f1_0} -> {f1_1}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
    ] {
        assert!(out.join(f).exists(), "{f} written");
    }
    // The checkpoint reloads into the same predictions.
    let back = load_qa_model(&out, Device::Cpu, DType::F32, 0).expect("reload");
    let tok = TextTokenizer::from_dir(&out).expect("saved tokenizer");
    let again = QaTask::new(
        back,
        tok,
        &[],
        examples.clone(),
        features,
        post,
        Device::Cpu,
    )
    .expect("task");
    let m = again
        .score(&again.predict().expect("predict"))
        .expect("score");
    assert_eq!(m["f1"].as_f64(), Some(f1_1));
    // Pipeline-style answering of a question the model was fit to.
    let ex = examples
        .iter()
        .find(|e| !e.answers.is_empty())
        .expect("answerable");
    let ans = answer_question(
        again.model.as_ref(),
        &TextTokenizer::from_dir(&out).expect("tok"),
        &ex.question,
        &ex.context,
        features,
        &PipelineConfig::default(),
        Device::Cpu,
    )
    .expect("answer");
    eprintln!("pipeline: {:?} (gold {:?})", ans, ex.answers[0].text);
    assert_eq!(ans.len(), 1);
    assert!(ans[0].score > 0.0 && ans[0].score <= 1.0);
    assert_eq!(ans[0].answer, ex.answers[0].text, "the fitted answer");
    let _ = std::fs::remove_dir_all(&out);
}
