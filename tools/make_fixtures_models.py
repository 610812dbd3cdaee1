"""Tiny random Hugging Face models and their forward/backward/AdamW/generate references.

Why a separate file: tools/make_fixtures.py holds the op-level fixtures; this one builds
the model-level ones (QA and T5 parity) and is called from it (`make_fixtures.py models`).

Each model is saved with save_pretrained under tests/fixtures/models/<name>/ and its
references go to tests/fixtures/<name>_io.safetensors. The references are computed in
float64 from the float32 weights (a deep copy cast with .double()) and rounded to float32,
so they are the exact answer for the stored weights; torch_f32.* holds what plain float32
torch gives, to show how far f32 arithmetic alone lands. For the float64 run T5LayerNorm
is patched to compute its variance in float64 (HF casts it to float32 even for float64
inputs, which would put a ~1e-7 floor on the oracle); the float32 run is unpatched.
"""

import copy
import os

import torch

ADAMW = dict(lr=1e-3, weight_decay=0.01, betas=[0.9, 0.999], eps=1e-8)


def _i32(t):
    return t.to(torch.int32)


def _rms_f64(self, hidden_states):
    var = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(var + self.variance_epsilon))


def _forward_backward(model, inputs, outputs_of, patch_t5=False):
    """float64 forward + backward on a copy, and a float32 forward; returns tensors."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    m64 = copy.deepcopy(model).double()
    orig = T5LayerNorm.forward
    if patch_t5:
        T5LayerNorm.forward = _rms_f64
    try:
        out = m64(**inputs)
        out.loss.backward()
    finally:
        T5LayerNorm.forward = orig
    tensors = {"loss": out.loss.detach().float().reshape(1)}
    for k in outputs_of:
        tensors[k] = getattr(out, k).detach().float()
    grads = {}
    for name, p in m64.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        grads[name] = p.grad.float()
        tensors[f"grad.{name}"] = grads[name]
    with torch.no_grad():
        o32 = model(**inputs)
    tensors["torch_f32.loss"] = o32.loss.detach().reshape(1)
    for k in outputs_of:
        tensors[f"torch_f32.{k}"] = getattr(o32, k).detach()
    return tensors, grads


def _adamw_after(model, grads):
    """One torch AdamW step on float32 copies of the params, fed the stored gradients."""
    params = {n: torch.nn.Parameter(p.detach().clone()) for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(
        list(params.values()),
        lr=ADAMW["lr"],
        weight_decay=ADAMW["weight_decay"],
        betas=tuple(ADAMW["betas"]),
        eps=ADAMW["eps"],
    )
    for n, p in params.items():
        p.grad = grads[n].clone()
    opt.step()
    return {f"param_after.{n}": p.detach() for n, p in params.items()}


def _qa(save, root, name, cls, config, with_token_types):
    torch.manual_seed(1000 + len(name))
    model = cls._from_config(config, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(7)
    B, S = 3, 12
    ids = torch.randint(2, config.vocab_size, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[2, 9:] = 0
    ids[2, 9:] = 0  # pad
    ids[:, 0] = 2  # a [CLS]-like first token
    # Row 1's end and row 2's start lie outside [0, S): HF clamps them to S = ignore_index.
    start = torch.tensor([1, 4, 20])
    end = torch.tensor([3, 30, 8])
    inputs = dict(input_ids=ids, attention_mask=mask, start_positions=start, end_positions=end)
    stored = {
        "input_ids": _i32(ids),
        "attention_mask": _i32(mask),
        "start_positions": _i32(start),
        "end_positions": _i32(end),
    }
    if with_token_types:
        tt = torch.zeros(B, S, dtype=torch.long)
        tt[:, 5:] = 1
        inputs["token_type_ids"] = tt
        stored["token_type_ids"] = _i32(tt)
    tensors, grads = _forward_backward(model, inputs, ["start_logits", "end_logits"])
    tensors.update(stored)
    tensors.update(_adamw_after(model, grads))
    model.save_pretrained(os.path.join(root, "models", name))
    meta = {
        "what": f"{cls.__name__} tiny random model: forward, loss, grads, one AdamW step",
        "model_dir": f"models/{name}",
        "reference": "float64 run of the float32 weights, rounded to float32; torch_f32.* "
        "from the float32 run",
        "loss": "(CE(start) + CE(end)) / 2, positions clamped to [0, S], S ignored",
        "adamw": dict(ADAMW, groups="none", fed="the stored grad.* tensors"),
        "attn_implementation": "eager",
        "notes": "word_embeddings has padding_idx=0: its row 0 gets no gradient",
    }
    save(f"{name}_io.safetensors", tensors, meta)


def _t5(save, root, name, gated):
    from transformers import DynamicCache, EncoderDecoderCache, T5Config
    from transformers import T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=99,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=37,
        num_layers=2,
        num_decoder_layers=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if gated else "relu",
        # transformers 5 forces tie_word_embeddings=True and turns False into
        # scale_decoder_outputs=False; the untied lm_head is made by hand below.
        tie_word_embeddings=not gated,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    # Seed 2008: the tied relu model's greedy output changes token at least once (most
    # seeds echo one token forever: the tied embedding feeds back its own input). A larger
    # initializer_factor gives more varied output but f32 grads drift 3e-5..5e-4 from f64,
    # too ill-conditioned for a parity test. The gated model covers varied generation.
    torch.manual_seed(2001 if gated else 2008)
    model = T5ForConditionalGeneration._from_config(cfg, attn_implementation="eager").eval()
    if gated:
        g = torch.Generator().manual_seed(99)
        model.lm_head.weight = torch.nn.Parameter(torch.randn(99, 32, generator=g))
        assert model.lm_head.weight is not model.shared.weight
    model.generation_config.decoder_start_token_id = 0
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 0

    g = torch.Generator().manual_seed(11)
    B, S, T = 2, 9, 6
    ids = torch.randint(2, 99, (B, S), generator=g)
    ids[:, 6] = 1  # eos closes row 1's source
    ids[1, 7:] = 0
    mask = (torch.arange(S)[None, :] < torch.tensor([[S], [7]])).long()
    ids[0, S - 1] = 1
    labels = torch.randint(2, 99, (B, T), generator=g)
    labels[1, 4:] = -100
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels)
    tensors, grads = _forward_backward(model, inputs, ["logits"], patch_t5=True)
    tensors.update(
        input_ids=_i32(ids),
        attention_mask=_i32(mask),
        labels=_i32(labels),
        decoder_input_ids=_i32(model._shift_right(labels)),
    )
    tensors.update(_adamw_after(model, grads))

    gen = dict(max_new_tokens=8, do_sample=False, decoder_start_token_id=0, eos_token_id=1,
               pad_token_id=0, length_penalty=1.0, early_stopping=False, no_repeat_ngram_size=0)
    with torch.no_grad():
        greedy = model.generate(
            input_ids=ids, attention_mask=mask, num_beams=1, **gen,
            cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
        )
        beam = model.generate(
            input_ids=ids, attention_mask=mask, num_beams=3, num_return_sequences=1,
            output_scores=True, return_dict_in_generate=True, **gen,
            cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
        )
        # Greedy without a cache, step by step: the cache workaround must not change tokens.
        dec = torch.zeros(B, 1, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        for _ in range(gen["max_new_tokens"]):
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
            nxt = logits[:, -1].argmax(-1).masked_fill(done, 0)
            dec = torch.cat([dec, nxt[:, None]], 1)
            done |= nxt == 1
            if done.all():
                break
        assert torch.equal(dec, greedy), (dec, greedy)
        assert len(set(greedy[:, 1:].flatten().tolist())) > 2, f"greedy output too uniform: {greedy}"
    tensors["generate.greedy"] = _i32(greedy)
    tensors["generate.beam"] = _i32(beam.sequences)
    tensors["generate.beam_scores"] = beam.sequences_scores.float()
    model.save_pretrained(os.path.join(root, "models", name))
    meta = {
        "what": "T5ForConditionalGeneration tiny random model: forward, loss, grads, one "
        "AdamW step, greedy and beam generate()",
        "model_dir": f"models/{name}",
        "feed_forward_proj": cfg.feed_forward_proj,
        "tied_lm_head": not gated,
        "scale_decoder_outputs": cfg.scale_decoder_outputs,
        "reference": "float64 run of the float32 weights (T5LayerNorm variance in float64), "
        "rounded to float32; torch_f32.* from the unpatched float32 run",
        "loss": "CrossEntropy(ignore_index=-100) mean over kept labels; decoder_input_ids = "
        "_shift_right(labels) (start 0, -100 -> 0)",
        "adamw": dict(ADAMW, groups="none", fed="the stored grad.* tensors"),
        "generate": dict(gen, greedy_num_beams=1, beam_num_beams=3, inputs="input_ids + "
                         "attention_mask of this file", model_dtype="float32",
                         cache="EncoderDecoderCache(DynamicCache(), DynamicCache()) "
                         "(num_decoder_layers != num_layers crashes the default cache)",
                         outputs="sequences incl. decoder start 0; greedy pads finished "
                         "rows with pad 0, HF 5.24 beam search with `pad_token_id or "
                         "eos_token_id` (= eos 1 when pad is 0); beam_scores = "
                         "sequences_scores"),
        "attn_implementation": "eager",
    }
    save(f"{name}_io.safetensors", tensors, meta)


def models_fixture(save, root):
    from transformers import BertConfig, BertForQuestionAnswering
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering

    # initializer_range 0.2 (HF default 0.02) so attention is far from uniform at dim 32.
    dcfg = DistilBertConfig(
        vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
        max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, qa_dropout=0.0,
        seq_classif_dropout=0.0, initializer_range=0.2, pad_token_id=0,
    )
    _qa(save, root, "distilbert_qa", DistilBertForQuestionAnswering, dcfg, False)
    bcfg = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2,
        pad_token_id=0,
    )
    _qa(save, root, "bert_qa", BertForQuestionAnswering, bcfg, True)
    _t5(save, root, "t5_relu_tied", gated=False)
    _t5(save, root, "t5_gated_untied", gated=True)
