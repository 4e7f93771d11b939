//! The paged KV cache (10,000 sequences through the pool, exhaustion as a typed error that
//! changes nothing) and the sampler (greedy, top-k/top-p/min-p, penalties as HF applies
//! them, seeded reproducibility, and draws that follow the softmax).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

use rocmforge_models::kv::{KvError, KvPool, KvShape};
use rocmforge_models::sampling::{argmax, Rng, Sampler, SamplingParams};
use rocmforge_models::{demo, GenerateOptions};

fn shape(blocks: usize) -> KvShape {
    KvShape { layers: 2, kv_dim: 8, block_size: 16, blocks }
}

#[test]
fn ten_thousand_sequences_return_every_block() {
    let mut pool = KvPool::new(shape(64)).unwrap();
    let mut rng = Rng::new(7);
    let mut live = Vec::new();
    for i in 0..10_000 {
        let mut seq = pool.new_sequence();
        let len = 1 + (rng.next_u64() % 100) as usize;
        match pool.reserve(&mut seq, len) {
            Ok(()) => {
                pool.commit(&mut seq, len).unwrap();
                // Blocks of live sequences never alias.
                live.push(seq);
            }
            Err(KvError::Exhausted { .. }) => pool.release(seq),
            Err(e) => panic!("{e}"),
        }
        // End some sequences, oldest first, so the pool churns.
        if (live.len() > 4 || i % 3 == 0) && !live.is_empty() {
            let s = live.remove(0);
            pool.release(s);
        }
        let mut owned: Vec<u32> = live.iter().flat_map(|s| s.blocks().to_vec()).collect();
        let n = owned.len();
        owned.sort_unstable();
        owned.dedup();
        assert_eq!(owned.len(), n, "a block is owned twice");
        assert_eq!(pool.free_blocks() + n, 64);
    }
    for s in live {
        pool.release(s);
    }
    assert_eq!(pool.free_blocks(), 64, "the pool is full again");
}

#[test]
fn exhaustion_is_typed_and_changes_nothing() {
    let mut pool = KvPool::new(shape(4)).unwrap();
    let mut a = pool.new_sequence();
    pool.reserve(&mut a, 40).unwrap(); // 3 blocks
    pool.commit(&mut a, 40).unwrap();
    let mut b = pool.new_sequence();
    let e = pool.reserve(&mut b, 17).unwrap_err(); // needs 2, 1 free
    assert_eq!(e, KvError::Exhausted { needed: 2, free: 1, total: 4, block_size: 16 });
    assert!(e.to_string().contains("KV cache exhausted"));
    assert_eq!(pool.free_blocks(), 1);
    assert!(b.blocks().is_empty());
    // Growing `a` by 8 fits in its last block: no new block taken.
    pool.reserve(&mut a, 8).unwrap();
    assert_eq!(pool.free_blocks(), 1);
    pool.release(a);
    pool.release(b);
    assert_eq!(pool.free_blocks(), 4);
}

#[test]
fn truncate_keeps_the_prefix_and_returns_the_blocks_past_it() {
    let mut pool = KvPool::new(shape(8)).unwrap();
    let mut seq = pool.new_sequence();
    pool.reserve(&mut seq, 20).unwrap();
    pool.commit(&mut seq, 20).unwrap();
    let d = pool.shape().kv_dim;
    for p in 0..20 {
        let k: Vec<f32> = (0..d).map(|i| (p * 100 + i) as f32).collect();
        pool.write(&seq, 0, p, &k, &k).unwrap();
    }
    let bs = pool.shape().block_size;
    let before = pool.free_blocks();
    pool.truncate(&mut seq, 7);
    assert_eq!(seq.len(), 7);
    assert_eq!(seq.blocks().len(), 7usize.div_ceil(bs));
    assert_eq!(pool.free_blocks(), before + 20usize.div_ceil(bs) - 7usize.div_ceil(bs));
    for p in 0..7 {
        assert_eq!(pool.read(&seq, 0, p).unwrap().0[1], (p * 100 + 1) as f32);
    }
    // Longer than held: nothing changes.
    pool.truncate(&mut seq, 100);
    assert_eq!(seq.len(), 7);
    pool.truncate(&mut seq, 0);
    assert!(seq.is_empty() && seq.blocks().is_empty());
    assert_eq!(pool.free_blocks(), 8);
}

#[test]
fn kv_reads_back_what_was_written_through_the_block_table() {
    let mut pool = KvPool::new(shape(8)).unwrap();
    let mut filler = pool.new_sequence();
    pool.reserve(&mut filler, 20).unwrap(); // scatter the next sequence's blocks
    let mut s = pool.new_sequence();
    pool.reserve(&mut s, 50).unwrap();
    for pos in 0..50 {
        let k: Vec<f32> = (0..8).map(|i| (pos * 10 + i) as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        pool.write(&s, 1, pos, &k, &v).unwrap();
    }
    for pos in 0..50 {
        let (k, v) = pool.read(&s, 1, pos).unwrap();
        assert_eq!(k[3], (pos * 10 + 3) as f32);
        assert_eq!(v[3], -((pos * 10 + 3) as f32));
    }
    assert!(pool.read(&s, 1, 64).is_none());
    assert!(pool.write(&s, 0, 70, &[0.0; 8], &[0.0; 8]).is_err());
    assert!(KvPool::new(KvShape { layers: 0, ..shape(1) }).is_err());
    assert!(KvPool::new(KvShape { blocks: usize::MAX, ..shape(1) }).is_err());
}

#[test]
fn a_forward_that_does_not_fit_leaves_the_sequence_as_it_was() {
    let model = demo::model(1).unwrap();
    let mut pool = model.transformer.kv_pool(32, 16).unwrap();
    let mut seq = pool.new_sequence();
    let t = rocmforge_models::transformer::Logits::Last;
    model.transformer.forward(&mut pool, &mut seq, &[1, 2, 3], t).unwrap();
    let err = model.transformer.forward(&mut pool, &mut seq, &[5; 40], t).unwrap_err();
    assert!(matches!(err, rocmforge_models::ModelError::Kv(KvError::Exhausted { .. })), "{err}");
    assert_eq!(seq.len(), 3);
    let err = model.transformer.forward(&mut pool, &mut seq, &[999], t).unwrap_err();
    assert!(matches!(err, rocmforge_models::ModelError::TokenOutOfRange { id: 999, vocab: 256 }), "{err}");
    assert_eq!(seq.len(), 3);
    pool.release(seq);
    assert_eq!(pool.free_blocks(), 2);
}

fn logits() -> Vec<f32> {
    vec![1.0, 3.0, -2.0, 2.5, 0.0, 2.9, -1.0, 0.5]
}

#[test]
fn greedy_and_top_k_one_pick_the_argmax() {
    let mut s = Sampler::new(SamplingParams::default()).unwrap();
    assert_eq!(s.sample(&mut logits()).unwrap(), 1);
    let mut s = Sampler::new(SamplingParams { temperature: 5.0, top_k: 1, seed: 9, ..SamplingParams::default() }).unwrap();
    for _ in 0..50 {
        assert_eq!(s.sample(&mut logits()).unwrap(), 1);
    }
    assert_eq!(argmax(&[f32::NAN, 1.0, 1.0]), 1);
}

#[test]
fn top_p_and_min_p_cut_the_tail() {
    // Probabilities at T=1: token 1 (3.0) and 5 (2.9) dominate, then 3 (2.5).
    let p = SamplingParams { temperature: 1.0, top_p: 0.5, seed: 1, ..SamplingParams::default() };
    let mut s = Sampler::new(p).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        seen.insert(s.sample(&mut logits()).unwrap());
    }
    // p(1) = 0.375 < 0.5, so the nucleus is {1, 5}.
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 5]);
    let p = SamplingParams { temperature: 1.0, min_p: 0.6, seed: 2, ..SamplingParams::default() };
    let mut s = Sampler::new(p).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        seen.insert(s.sample(&mut logits()).unwrap());
    }
    // exp(2.5 - 3) = 0.61 >= 0.6 keeps token 3; exp(1 - 3) = 0.14 drops token 0.
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3, 5]);
}

#[test]
fn draws_follow_the_softmax() {
    let l = logits();
    let t = 0.8f64;
    let w: Vec<f64> = l.iter().map(|&x| (f64::from(x) / t).exp()).collect();
    let z: f64 = w.iter().sum();
    let mut s = Sampler::new(SamplingParams { temperature: 0.8, seed: 42, ..SamplingParams::default() }).unwrap();
    let n = 40_000;
    let mut counts = vec![0usize; l.len()];
    for _ in 0..n {
        // The sampler records history, but with penalties off it must not matter.
        counts[s.sample(&mut l.clone()).unwrap() as usize] += 1;
    }
    for (i, &c) in counts.iter().enumerate() {
        let p = w[i] / z;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        let got = c as f64 / n as f64;
        assert!((got - p).abs() <= 5.0 * sd + 1e-4, "token {i}: {got} vs {p}");
    }
}

#[test]
fn penalties_follow_hf_and_openai() {
    let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::default() }).unwrap();
    s.observe(&[1, 2, 2]);
    let mut l = logits();
    s.penalize(&mut l);
    assert_eq!(l[1], 1.5); // positive: divided
    assert_eq!(l[2], -4.0); // negative: multiplied (once, however often seen)
    assert_eq!(l[3], 2.5);
    let mut s = Sampler::new(SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, ..SamplingParams::default() }).unwrap();
    s.observe(&[1, 2, 2]);
    let mut l = logits();
    s.penalize(&mut l);
    assert_eq!(l[1], 3.0 - 0.5 - 0.25);
    assert_eq!(l[2], -2.0 - 0.5 - 0.5);
    // Greedy with a strong repetition penalty moves off a seen argmax.
    let mut s = Sampler::new(SamplingParams { repetition_penalty: 10.0, ..SamplingParams::default() }).unwrap();
    s.observe(&[1]);
    assert_eq!(s.sample(&mut logits()).unwrap(), 5);
}

#[test]
fn a_seed_reproduces_a_run_and_another_seed_does_not() {
    // A fixture model: its random weights give a flat next-token distribution.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama");
    let model = rocmforge_models::Model::load(&dir, rocmforge_models::LoadOptions::default()).unwrap();
    let ids = model.codec.encode("The baker sold", true).unwrap();
    let run = |seed| {
        let sampling = SamplingParams { temperature: 1.5, top_p: 0.95, seed, ..SamplingParams::default() };
        model.generate(&ids, &GenerateOptions { max_tokens: 24, sampling, ..GenerateOptions::default() }, |_| {}).unwrap().generated_ids
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn bad_sampling_parameters_are_rejected() {
    for p in [
        SamplingParams { temperature: -1.0, ..SamplingParams::default() },
        SamplingParams { top_p: 0.0, ..SamplingParams::default() },
        SamplingParams { min_p: 1.5, ..SamplingParams::default() },
        SamplingParams { repetition_penalty: 0.0, ..SamplingParams::default() },
        SamplingParams { temperature: f32::NAN, ..SamplingParams::default() },
    ] {
        assert!(Sampler::new(p).is_err());
    }
}

#[test]
fn eos_stop_strings_and_max_tokens_end_generation() {
    let model = demo::model(5).unwrap();
    let ids = model.codec.encode("abc", true).unwrap();
    // No token asked for: nothing runs, and no speed is made up for the prefill.
    let none = model.generate(&ids, &GenerateOptions { max_tokens: 0, ..GenerateOptions::default() }, |_| {}).unwrap();
    assert!(none.generated_ids.is_empty());
    assert_eq!((none.prefill_tok_s, none.decode_tok_s), (None, None));
    // One token: the prefill gives it, so a prefill rate and no decode rate.
    let one = model.generate(&ids, &GenerateOptions { max_tokens: 1, ..GenerateOptions::default() }, |_| {}).unwrap();
    assert_eq!(one.generated_ids.len(), 1);
    assert!(one.prefill_tok_s.is_some_and(|r| r > 0.0 && r.is_finite()));
    assert_eq!(one.decode_tok_s, None);
    let free = model.generate(&ids, &GenerateOptions { max_tokens: 12, ..GenerateOptions::default() }, |_| {}).unwrap();
    assert_eq!(free.generated_ids.len(), 12);
    assert_eq!(free.finish, rocmforge_models::Finish::Length);
    assert!(free.decode_tok_s.is_some_and(|r| r > 0.0 && r.is_finite()));
    // EOS: the third greedy token, made an EOS id, ends the run there.
    let eos = free.generated_ids[2];
    let first = free.generated_ids.iter().position(|&t| t == eos).unwrap();
    let g = model.generate(&ids, &GenerateOptions { max_tokens: 12, eos: vec![eos], ..GenerateOptions::default() }, |_| {}).unwrap();
    assert_eq!(g.finish, rocmforge_models::Finish::Eos);
    assert_eq!(g.generated_ids, free.generated_ids[..=first]);
    // A stop string taken from the free run's text cuts the text before it.
    let text = free.text.clone();
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[3..5].iter().collect();
        let at = text.find(&stop).unwrap();
        let mut streamed = String::new();
        let g = model
            .generate(&ids, &GenerateOptions { max_tokens: 12, stop: vec![stop.clone()], ..GenerateOptions::default() }, |s| {
                streamed.push_str(s)
            })
            .unwrap();
        assert_eq!(g.finish, rocmforge_models::Finish::Stop);
        assert_eq!(g.text, text[..at]);
        assert_eq!(streamed, g.text);
    }
    let e = model.generate(&[], &GenerateOptions::default(), |_| {}).unwrap_err();
    assert!(e.to_string().contains("prompt"));
}
