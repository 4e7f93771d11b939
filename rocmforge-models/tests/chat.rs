//! A conversation's cache reuse: each turn's tokens are those of a fresh generation from
//! the whole prompt, whatever part of it was cached.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

use std::path::PathBuf;

use rocmforge_models::chat::{Conversation, CpuDecoder};
use rocmforge_models::{GenerateOptions, LoadOptions, Model};

/// The Llama fixture: random weights whose greedy tokens vary (the demo model's repeat
/// the last prompt token, which a stale cache would repeat as well).
fn llama() -> Model {
    Model::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama"), LoadOptions::default()).unwrap()
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, ..GenerateOptions::default() }
}

fn fresh(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    model.generate(prompt, &greedy(n), |_| {}).unwrap().generated_ids
}

#[test]
fn turns_reuse_the_cached_prefix_and_match_a_fresh_generation() {
    for run in [1, 4, 16] {
        turns(run);
    }
}

/// The turns, token by token (`run` 1) or `run` greedy tokens at a time.
fn turns(run: usize) {
    let model = llama();
    let mut conv = Conversation::new(CpuDecoder::new(&model, 256).unwrap()).pipelined(run);
    let a = model.codec.encode("the first message", true).unwrap();
    let t1 = conv.generate(&model.codec, &a, &greedy(10), &mut |_| {}).unwrap();
    assert_eq!(t1.reused, 0);
    assert_eq!(t1.generation.generated_ids, fresh(&model, &a, 10));
    // The last new token is never fed: the cache holds the prompt and the others.
    assert_eq!(conv.cached(), a.len() + 9);

    // The next turn extends what was generated: all of the cache is reused.
    let mut b = a.clone();
    b.extend_from_slice(&t1.generation.generated_ids);
    b.extend(model.codec.encode(" and a reply to it", false).unwrap());
    let t2 = conv.generate(&model.codec, &b, &greedy(10), &mut |_| {}).unwrap();
    assert_eq!(t2.reused, a.len() + 9);
    assert_eq!(t2.generation.generated_ids, fresh(&model, &b, 10));
    assert_eq!(conv.cached(), b.len() + 9);

    // A prompt that departs from the cache inside it: cut back to where it departs.
    let keep = a.len() + 3;
    let mut c = b[..keep].to_vec();
    c.extend(model.codec.encode(" something else entirely", false).unwrap());
    assert_ne!(c[keep], b[keep]);
    let t3 = conv.generate(&model.codec, &c, &greedy(10), &mut |_| {}).unwrap();
    assert_eq!(t3.reused, keep);
    assert_eq!(t3.generation.generated_ids, fresh(&model, &c, 10));

    // The same prompt again: all but its last token is cached; that one is fed again.
    let t4 = conv.generate(&model.codec, &c, &greedy(10), &mut |_| {}).unwrap();
    assert_eq!(t4.reused, c.len() - 1);
    assert_eq!(t4.generation.generated_ids, t3.generation.generated_ids);

    conv.reset();
    assert_eq!(conv.cached(), 0);
    let t5 = conv.generate(&model.codec, &a, &greedy(10), &mut |_| {}).unwrap();
    assert_eq!(t5.reused, 0);
    assert_eq!(t5.generation.generated_ids, t1.generation.generated_ids);
}

#[test]
fn a_stop_inside_a_greedy_run_is_cut_back_at_the_next_turn() {
    let model = llama();
    let a = model.codec.encode("stop early", true).unwrap();
    let free = fresh(&model, &a, 12);
    // An EOS id first drawn after the first new token (so a greedy run starts before it).
    let at = (1..free.len()).find(|&i| !free[..i].contains(&free[i])).unwrap();
    let eos = free[at];
    let mut conv = Conversation::new(CpuDecoder::new(&model, 256).unwrap()).pipelined(16);
    let opts = GenerateOptions { max_tokens: 12, eos: vec![eos], ..GenerateOptions::default() };
    let t1 = conv.generate(&model.codec, &a, &opts, &mut |_| {}).unwrap();
    assert_eq!(t1.generation.generated_ids, free[..=at]);
    // Greedy decode ran ahead of the stop (one piece of 11): the cache holds more than was given.
    assert!(conv.cached() > a.len() + at, "{} cached", conv.cached());
    let mut b = a.clone();
    b.extend_from_slice(&t1.generation.generated_ids);
    b.extend(model.codec.encode(" then more", false).unwrap());
    let t2 = conv.generate(&model.codec, &b, &greedy(6), &mut |_| {}).unwrap();
    assert!(t2.reused > a.len() + at && t2.reused < b.len(), "{} reused of {}", t2.reused, b.len());
    assert_eq!(t2.generation.generated_ids, fresh(&model, &b, 6));
}

#[test]
fn a_turn_past_the_context_is_refused_and_keeps_the_cache() {
    let model = llama();
    let mut conv = Conversation::new(CpuDecoder::new(&model, 48).unwrap());
    assert_eq!(conv.context(), 48);
    let a = model.codec.encode("short", true).unwrap();
    conv.generate(&model.codec, &a, &greedy(4), &mut |_| {}).unwrap();
    let held = conv.cached();
    let long: Vec<u32> = a.iter().copied().cycle().take(45).collect();
    let e = conv.generate(&model.codec, &long, &greedy(4), &mut |_| {}).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("45 tokens") && msg.contains("past the context of 48"), "{msg}");
    assert_eq!(conv.cached(), held);
    // What fits still runs, from the cache.
    let t = conv.generate(&model.codec, &a, &greedy(4), &mut |_| {}).unwrap();
    assert_eq!(t.reused, a.len() - 1);
    assert!(conv.generate(&model.codec, &[], &greedy(4), &mut |_| {}).is_err());
}
