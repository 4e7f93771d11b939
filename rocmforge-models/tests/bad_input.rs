//! Every malformed checkpoint gives a typed error that names the file and the field or
//! tensor, never a panic; a proptest mutates the bytes of the fixture's safetensors file
//! and config.json and requires that loading returns (Ok or Err) without panicking.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rocmforge_models::config::ModelConfig;
use rocmforge_models::{LoadOptions, Model, ModelError};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(name)
}

/// A writable copy of a fixture model.
fn copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn load(dir: &Path) -> Result<Model, ModelError> {
    Model::load(dir, LoadOptions::default())
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Splits a safetensors file into (header JSON, data).
fn split(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), bytes[8 + n..].to_vec())
}

fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

#[test]
fn missing_files_are_named() {
    for (file, name) in [("config.json", "config.json"), ("tokenizer.json", "tokenizer.json"), ("model.safetensors", "model.safetensors")] {
        let d = copy("llama");
        fs::remove_file(d.path().join(file)).unwrap();
        let e = load(d.path()).unwrap_err();
        assert!(matches!(e, ModelError::MissingFile { ref path, .. } if path.ends_with(name)), "{file}: {e}");
        assert!(e.to_string().contains(name), "{e}");
    }
    let e = load(Path::new("/nonexistent/model")).unwrap_err();
    assert!(matches!(e, ModelError::MissingFile { .. }), "{e}");
}

#[test]
fn a_missing_shard_is_named() {
    let d = copy("qwen3");
    fs::remove_file(d.path().join("model-00002-of-00004.safetensors")).unwrap();
    let e = load(d.path()).unwrap_err();
    assert!(e.to_string().contains("model-00002-of-00004.safetensors"), "{e}");
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let d = copy("llama");
    edit_config(d.path(), |c| {
        c.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
    });
    let e = load(d.path()).unwrap_err();
    assert!(matches!(e, ModelError::UnknownArchitecture { ref found, .. } if found == "GPT2LMHeadModel"), "{e}");
    let msg = e.to_string();
    for a in ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"] {
        assert!(msg.contains(a), "{msg}");
    }
}

#[test]
fn config_field_errors_name_file_and_field() {
    type Edit = Box<dyn Fn(&mut serde_json::Map<String, Value>)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("hidden_size", Box::new(|c| drop(c.remove("hidden_size")))),
        ("num_hidden_layers", Box::new(|c| drop(c.insert("num_hidden_layers".into(), Value::from("two"))))),
        ("num_key_value_heads", Box::new(|c| drop(c.insert("num_key_value_heads".into(), Value::from(3))))),
        ("vocab_size", Box::new(|c| drop(c.insert("vocab_size".into(), Value::from(0))))),
        ("rope_parameters.factor", Box::new(|c| drop(c["rope_parameters"].as_object_mut().unwrap().remove("factor")))),
        (
            "rope_type",
            Box::new(|c| drop(c["rope_parameters"].as_object_mut().unwrap().insert("rope_type".into(), Value::from("dynamic-ish")))),
        ),
        ("hidden_act", Box::new(|c| drop(c.insert("hidden_act".into(), Value::from("gelu"))))),
        ("dtype", Box::new(|c| drop(c.insert("dtype".into(), Value::from("int4"))))),
    ];
    for (field, edit) in cases {
        let d = copy("llama");
        edit_config(d.path(), edit);
        let e = load(d.path()).unwrap_err();
        assert!(matches!(e, ModelError::MissingField { .. } | ModelError::BadField { .. }), "{field}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("config.json") && msg.contains(field), "{field}: {msg}");
    }
}

#[test]
fn invalid_json_is_a_typed_error() {
    let d = copy("llama");
    fs::write(d.path().join("config.json"), b"{\"hidden_size\": 64,").unwrap();
    assert!(matches!(load(d.path()).unwrap_err(), ModelError::Json { .. }));
    let d = copy("llama");
    fs::write(d.path().join("tokenizer.json"), b"{}").unwrap();
    assert!(matches!(load(d.path()).unwrap_err(), ModelError::Tokenizer { .. }));
}

#[test]
fn truncated_safetensors_is_rejected() {
    let d = copy("llama");
    let p = d.path().join("model.safetensors");
    let bytes = fs::read(&p).unwrap();
    for cut in [4, 8 + 10, bytes.len() - 1] {
        fs::write(&p, &bytes[..cut]).unwrap();
        let e = load(d.path()).unwrap_err();
        assert!(matches!(e, ModelError::Safetensors { ref path, .. } if path.ends_with("model.safetensors")), "cut {cut}: {e}");
    }
}

#[test]
fn overlapping_or_past_the_end_offsets_are_rejected() {
    let d = copy("llama");
    let p = d.path().join("model.safetensors");
    let (header, data) = split(&fs::read(&p).unwrap());
    // Overlap: the second tensor (by offset) starts inside the first.
    let mut h = header.clone();
    let mut by_start: Vec<(String, u64)> = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (k.clone(), v["data_offsets"][0].as_u64().unwrap()))
        .collect();
    by_start.sort_by_key(|x| x.1);
    let second = &by_start[1].0;
    let offs = h[second]["data_offsets"].clone();
    h[second]["data_offsets"] = serde_json::json!([offs[0].as_u64().unwrap() - 4, offs[1].as_u64().unwrap() - 4]);
    fs::write(&p, join(&h, &data)).unwrap();
    let e = load(d.path()).unwrap_err();
    assert!(matches!(e, ModelError::Safetensors { .. }), "overlap: {e}");
    // Past the end: the last tensor claims more bytes than the file has.
    let mut h = header.clone();
    let last = &by_start.last().unwrap().0;
    let offs = h[last]["data_offsets"].clone();
    h[last]["data_offsets"] = serde_json::json!([offs[0], offs[1].as_u64().unwrap() + 64]);
    fs::write(&p, join(&h, &data)).unwrap();
    let e = load(d.path()).unwrap_err();
    assert!(matches!(e, ModelError::Safetensors { .. }), "past the end: {e}");
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let d = copy("llama");
    let p = d.path().join("model.safetensors");
    let (header, data) = split(&fs::read(&p).unwrap());
    // Rename a tensor: the loader reports the one it needed.
    let mut h = header.clone();
    let obj = h.as_object_mut().unwrap();
    let v = obj.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    obj.insert("model.layers.1.mlp.up_projection.weight".into(), v);
    fs::write(&p, join(&h, &data)).unwrap();
    let e = load(d.path()).unwrap_err();
    assert!(matches!(e, ModelError::MissingTensor { ref name, .. } if name == "model.layers.1.mlp.up_proj.weight"), "{e}");
    // Transpose a shape: same bytes, wrong layout.
    let mut h = header.clone();
    h["model.layers.0.self_attn.k_proj.weight"]["shape"] = serde_json::json!([64, 32]);
    fs::write(&p, join(&h, &data)).unwrap();
    let e = load(d.path()).unwrap_err();
    assert!(matches!(e, ModelError::BadTensor { ref name, .. } if name == "model.layers.0.self_attn.k_proj.weight"), "{e}");
    assert!(e.to_string().contains("[64, 32]") && e.to_string().contains("[32, 64]"), "{e}");
}

#[test]
fn both_config_forms_give_the_same_model_config() {
    // llama's fixture config is the 5.x form; rewrite it into the 4.x form.
    let p = fixture("llama").join("config.json");
    let v5: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    let mut v4 = v5.clone();
    let o = v4.as_object_mut().unwrap();
    let mut rp = o.remove("rope_parameters").unwrap();
    let theta = rp.as_object_mut().unwrap().remove("rope_theta").unwrap();
    o.insert("rope_theta".into(), theta);
    o.insert("rope_scaling".into(), rp);
    let dt = o.remove("dtype").unwrap();
    o.insert("torch_dtype".into(), dt);
    let a = ModelConfig::from_json(&p, &v5).unwrap();
    let b = ModelConfig::from_json(&p, &v4).unwrap();
    assert_eq!(a, b);
    assert!(matches!(a.rope_scaling, rocmforge_dsl::rope::RopeScaling::Llama3 { .. }));
    assert_eq!(a.rope_theta, 500_000.0);
    // Mistral's fixture is the 4.x form with a window on every layer.
    let m = ModelConfig::from_dir(&fixture("mistral")).unwrap();
    assert_eq!(m.windows, vec![Some(12); 3]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn mutated_safetensors_never_panics(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
        let d = copy("llama");
        let p = d.path().join("model.safetensors");
        let mut bytes = fs::read(&p).unwrap();
        // Mostly hit the header (first 8 + ~6 KB), where the structure is.
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (i, b) in &edits {
            let at = if *b % 2 == 0 { i.index(header_end) } else { i.index(bytes.len()) };
            bytes[at] = *b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        fs::write(&p, &bytes).unwrap();
        let _ = load(d.path());
    }

    #[test]
    fn mutated_config_never_panics(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), field in 0usize..12, value in prop_oneof![Just(Value::from(0)), Just(Value::from(-1)), Just(Value::from(u64::MAX)), Just(Value::from(1e308)), Just(Value::from("x")), Just(Value::Null), Just(serde_json::json!([])), Just(serde_json::json!({}))]) {
        let d = copy("qwen3");
        let names = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "rope_parameters", "max_position_embeddings", "eos_token_id", "tie_word_embeddings"];
        edit_config(d.path(), |c| drop(c.insert(names[field].into(), value.clone())));
        let p = d.path().join("config.json");
        let mut bytes = fs::read(&p).unwrap();
        for (i, b) in &edits {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        fs::write(&p, &bytes).unwrap();
        let _ = load(d.path());
    }
}
