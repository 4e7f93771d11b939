//! The CPU forward against HF transformers on the committed fixtures
//! (tests/fixtures/models, built by scripts/make_fixtures.py): prompt ids from the
//! tokenizer, last-position logits (normalized MSE at most 1e-5), per-position argmax and
//! the 24-token greedy continuation (identical), the chat template's rendering, and the
//! bf16 copy's argmax agreement (at least 95%).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

use std::path::PathBuf;

use rocmforge_models::sampling::argmax;
use rocmforge_models::tokenizer::Message;
use rocmforge_models::transformer::Logits;
use rocmforge_models::{GenerateOptions, LoadOptions, Model};
use serde_json::Value;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(name)
}

fn reference(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir(name).join("reference.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// sum (a - b)^2 / sum b^2, in f64.
fn nmse(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    num / den
}

/// All-position logits of `prompt` through a fresh cache.
fn logits_all(model: &Model, prompt: &[u32]) -> Vec<f32> {
    let mut pool = model.kv_pool(prompt.len()).unwrap();
    let mut seq = pool.new_sequence();
    let out = model.transformer.forward(&mut pool, &mut seq, prompt, Logits::All).unwrap();
    pool.release(seq);
    out
}

fn check_model(name: &str) {
    let model = Model::load(&dir(name), LoadOptions::default()).unwrap();
    let r = reference(name);
    let vocab = model.transformer.config().vocab;
    for p in r["prompts"].as_array().unwrap() {
        let text = p["prompt"].as_str().unwrap();
        let want_ids = ids(&p["ids"]);
        let got_ids = model.codec.encode(text, true).unwrap();
        assert_eq!(got_ids, want_ids, "{name}: tokenization of {text:?}");

        let all = logits_all(&model, &got_ids);
        let last = &all[(got_ids.len() - 1) * vocab..];
        let want: Vec<f64> = p["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let e = nmse(last, &want);
        assert!(e <= 1e-5, "{name}: last-position logits nmse {e:e} for {text:?}");
        assert!(e > 0.0 || last.iter().any(|&x| x != 0.0), "{name}: logits all zero");
        let argmax_all: Vec<u32> = all.chunks_exact(vocab).map(argmax).collect();
        assert_eq!(argmax_all, ids(&p["argmax"]), "{name}: per-position argmax for {text:?}");

        // Greedy continuation through the KV cache, one token at a time.
        let opts = GenerateOptions { max_tokens: 24, ..GenerateOptions::default() };
        let g = model.generate(&got_ids, &opts, |_| {}).unwrap();
        assert_eq!(g.generated_ids, ids(&p["greedy"]), "{name}: greedy continuation of {text:?}");
    }
    // The chat template, rendered as transformers rendered it, and its tokens.
    let chat = &r["chat"];
    let msgs: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let tmpl = model.chat_template.as_ref().expect("fixture has a chat template");
    let text = tmpl.render(&msgs, true).unwrap();
    assert_eq!(text, chat["text"].as_str().unwrap(), "{name}: chat template rendering");
    assert_eq!(model.codec.encode(&text, false).unwrap(), ids(&chat["ids"]), "{name}: chat ids");
}

#[test]
fn llama_matches_transformers() {
    check_model("llama");
}

#[test]
fn mistral_matches_transformers() {
    check_model("mistral");
}

#[test]
fn qwen2_matches_transformers() {
    check_model("qwen2");
}

#[test]
fn qwen3_matches_transformers() {
    check_model("qwen3");
}

#[test]
fn bf16_copy_agrees_on_argmax() {
    let model = Model::load(&dir("llama-bf16"), LoadOptions::default()).unwrap();
    assert_eq!(model.transformer.config().dtype, Some(rocmforge_models::config::WeightDType::BF16));
    let f32_ref = reference("llama");
    let (mut agree, mut total) = (0usize, 0usize);
    let vocab = model.transformer.config().vocab;
    for p in f32_ref["prompts"].as_array().unwrap() {
        let prompt = ids(&p["ids"]);
        let all = logits_all(&model, &prompt);
        for (got, want) in all.chunks_exact(vocab).map(argmax).zip(ids(&p["argmax"])) {
            agree += usize::from(got == want);
            total += 1;
        }
    }
    assert!(total > 50);
    assert!(agree * 100 >= total * 95, "bf16 argmax agreement {agree}/{total}");
}

#[test]
fn f32_weights_are_mapped_not_copied() {
    // The f32 fixture is used in place from the mapping; the bf16 one's vectors are widened.
    let ck = rocmforge_models::weights::Checkpoint::open(&dir("llama")).unwrap();
    assert!(ck.get("model.norm.weight", &[64]).unwrap().is_mapped());
    let ck = rocmforge_models::weights::Checkpoint::open(&dir("llama-bf16")).unwrap();
    assert!(!ck.get("model.norm.weight", &[64]).unwrap().is_mapped());
}

#[test]
fn bf16_matrices_are_read_in_place_and_widen_exactly() {
    use rocmforge_models::weights::Values;
    let ck = rocmforge_models::weights::Checkpoint::open(&dir("llama-bf16")).unwrap();
    let (name, shape) = ("model.layers.1.mlp.down_proj.weight", [64usize, 160usize]);
    let w = ck.get(name, &shape).unwrap();
    assert!(w.is_mapped());
    // Stored as 16-bit values (the bytes per value follow from the variant).
    assert!(matches!(w.values(), Values::BF16(v) if v.len() == 64 * 160));
    // The widened values equal the checkpoint's own f32 conversion, row by row too.
    let want: Vec<f32> = ck
        .get_as(name, &shape, rocmforge_dsl::DType::F32)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert!(want.iter().any(|&v| v != 0.0));
    assert_eq!(&*w.data(), &want[..]);
    for r in [0, 17, 63] {
        assert_eq!(&*w.row(r).unwrap(), &want[r * 160..(r + 1) * 160]);
    }
    assert!(w.row(64).is_none(), "past the last row");
    // A product over the 16-bit matrix gives the same bits as over the widened copy.
    let x: Vec<f32> = (0..2 * 160).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
    let widened = rocmforge_models::weights::Weight::from_vec(want, shape.to_vec()).unwrap();
    // One input row (decode: the row-dot path) and two (prefill: a widened row reused).
    for rows in [1, 2] {
        let a = rocmforge_models::transformer::linear(&x[..rows * 160], rows, &w, None).unwrap();
        let b = rocmforge_models::transformer::linear(&x[..rows * 160], rows, &widened, None).unwrap();
        assert!(rocmforge_models::transformer::linear(&x[..rows * 160 - 1], rows, &w, None).is_err(), "short input");
        assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
}

#[test]
fn template_exceptions_are_typed_errors() {
    // The Mistral-style template raises on roles that do not alternate.
    let model = Model::load(&dir("mistral"), LoadOptions::default()).unwrap();
    let user = |s: &str| Message { role: "user".into(), content: s.into() };
    let e = model.chat_template.as_ref().unwrap().render(&[user("a"), user("b")], true).unwrap_err();
    assert!(e.to_string().contains("Conversation roles must alternate"), "{e}");
}

#[test]
fn f16_copy_agrees_on_argmax() {
    // Write the f32 fixture's tensors as f16 into a fresh directory, then load that.
    let src = dir("llama");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut halves: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        let data: Vec<u8> = view
            .data()
            .chunks_exact(4)
            .flat_map(|b| half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect();
        halves.push((name, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = halves
        .iter()
        .map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &tmp.path().join("model.safetensors")).unwrap();
    let model = Model::load(tmp.path(), LoadOptions::default()).unwrap();
    let r = reference("llama");
    let vocab = model.transformer.config().vocab;
    let (mut agree, mut total) = (0usize, 0usize);
    for p in r["prompts"].as_array().unwrap() {
        let all = logits_all(&model, &ids(&p["ids"]));
        for (got, want) in all.chunks_exact(vocab).map(argmax).zip(ids(&p["argmax"])) {
            agree += usize::from(got == want);
            total += 1;
        }
    }
    assert!(agree * 100 >= total * 95, "f16 argmax agreement {agree}/{total}");
}
