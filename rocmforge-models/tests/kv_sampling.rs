//! The paged KV cache (10,000 sequences through the pool, exhaustion as a typed error that
//! changes nothing) and the sampler (greedy, top-k/top-p/min-p, penalties as HF applies
//! them, seeded reproducibility, and draws that follow the softmax).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

use rocmforge_models::kv::{KvError, KvPool, KvShape};
use rocmforge_models::sampling::{argmax, merge_mass, MassParts, Rng, Sampler, SamplingParams, SORTED_HEAD};
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

/// The `k` largest of `logits` as `(id, logit)`, shuffled (the GPU's top-k is unordered).
fn top_candidates(logits: &[f32], k: usize, rng: &mut Rng) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    for i in (1..all.len()).rev() {
        all.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    all
}

/// The softmax normalizer relative to the largest logit, in f64 over the whole row.
fn mass(logits: &[f32], t: f32) -> f64 {
    let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    logits.iter().map(|&l| (f64::from(l / t) - f64::from(top / t)).exp()).sum()
}

/// The normalizer in parts of `chunk` logits as the GPU writes them: each part's largest
/// logit and its f64 sum relative to it, rounded to f32.
fn mass_parts(logits: &[f32], t: f32, chunk: usize) -> Vec<f32> {
    let mut parts = Vec::new();
    for c in logits.chunks(chunk) {
        let m = c.iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        parts.push(m);
        let s: f64 = if m > f32::NEG_INFINITY {
            c.iter().filter(|l| !l.is_nan()).map(|&l| (f64::from(l / t) - f64::from(m / t)).exp()).sum()
        } else {
            0.0
        };
        parts.push(s as f32);
    }
    parts
}

/// What a draw over candidates copied: whole rows, and parts (each checked to be one
/// part of the row, or the row).
#[derive(Default, Debug)]
struct Copies {
    rows: usize,
    parts: usize,
}

impl Copies {
    fn fetch<'a>(
        &'a mut self,
        row: &'a [f32],
        chunk: usize,
    ) -> impl FnMut(std::ops::Range<usize>) -> rocmforge_models::Result<Vec<f32>> + 'a {
        move |cols| {
            if cols == (0..row.len()) {
                self.rows += 1;
            } else {
                assert_eq!(cols.start % chunk, 0, "{cols:?} is not a part");
                assert_eq!(cols.end, (cols.start + chunk).min(row.len()), "{cols:?} is not a part");
                self.parts += 1;
            }
            Ok(row[cols].to_vec())
        }
    }
}

#[test]
fn draws_over_top_candidates_match_draws_over_the_whole_row() {
    // Rows of 3000 logits at three spreads (flat to peaked), 64 candidates: every setting
    // draws the same tokens as the full row, copying the row only when the draw needs it.
    let mut rng = Rng::new(11);
    let settings = [
        SamplingParams { temperature: 1.0, ..SamplingParams::default() },
        SamplingParams { temperature: 0.7, top_p: 0.9, ..SamplingParams::default() },
        SamplingParams { temperature: 1.3, top_p: 0.5, ..SamplingParams::default() },
        SamplingParams { temperature: 1.0, min_p: 0.05, ..SamplingParams::default() },
        SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, ..SamplingParams::default() },
        SamplingParams { temperature: 0.9, top_k: 500, ..SamplingParams::default() },
        SamplingParams { temperature: 1.0, top_p: 0.8, repetition_penalty: 1.3, presence_penalty: 0.2, ..SamplingParams::default() },
        SamplingParams { temperature: 0.0, frequency_penalty: 0.5, ..SamplingParams::default() },
    ];
    let (mut copied, mut decided, mut in_parts) = (0usize, 0usize, 0usize);
    for (n, params) in settings.iter().enumerate() {
        let (mut copied_here, mut decided_here, mut parts_here) = (0usize, 0usize, 0usize);
        for spread in [1.0f32, 4.0, 12.0] {
            let seed = n as u64 * 10 + spread as u64;
            let mut full = Sampler::new(SamplingParams { seed, ..params.clone() }).unwrap();
            let mut top = Sampler::new(SamplingParams { seed, ..params.clone() }).unwrap();
            for _ in 0..60 {
                let row: Vec<f32> = (0..3000).map(|_| (rng.next_f32() * 2.0 - 1.0) * spread).collect();
                let want = full.sample(&mut row.clone()).unwrap();
                // The GPU applies the penalties to its logits before the selection.
                let mut pen = row.clone();
                top.penalize(&mut pen);
                // 64 candidates; the plain draw takes as many as a whole-row draw sorts
                // first (the GPU's count without a top-k), so its tail can go in parts.
                let k = if n == 0 { SORTED_HEAD } else { 64 };
                let cands = top_candidates(&pen, k, &mut rng);
                // Parts of 700 logits (the last of 200), as the GPU cuts a row.
                let parts = mass_parts(&pen, params.temperature.max(1e-3), 700);
                let row = MassParts { parts: &parts, chunk: 700, cols: pen.len() };
                let mut c = Copies::default();
                let got = top.sample_top(cands, &row, c.fetch(&pen, 700)).unwrap();
                assert_eq!(got, want, "setting {n} spread {spread}");
                copied_here += c.rows;
                parts_here += c.parts;
                decided_here += usize::from(c.rows + c.parts == 0);
            }
        }
        // Settings bounded inside the candidates never copy the row.
        if params.top_k == 40 || params.temperature == 0.0 {
            assert_eq!(copied_here + parts_here, 0, "setting {n}");
        }
        // A top-k past the candidates always does.
        if params.top_k == 500 {
            assert_eq!(decided_here, 0, "setting {n}");
        }
        // A plain temperature draw past the candidates copies a part, never the row.
        if n == 0 {
            assert_eq!(copied_here, 0, "setting {n}");
            assert!(parts_here > 0, "setting {n}: no draw landed past the candidates");
        } else {
            assert_eq!(parts_here, 0, "setting {n}: only a draw with nothing cut walks parts");
        }
        copied += copied_here;
        decided += decided_here;
        in_parts += parts_here;
    }
    // Every path ran: draws decided by the candidates, in parts, and with the row.
    assert!(copied > 0 && decided > 0 && in_parts > 0, "copied {copied}, decided {decided}, parts {in_parts}");
}

#[test]
fn a_draw_over_candidates_copies_the_row_only_for_the_tail() {
    // One dominant logit: a plain temperature draw lands on it nearly always, and then
    // nothing is copied; top-p 0.5 is reached by the first candidate alone.
    let mut row = vec![0.0f32; 1000];
    row[7] = 20.0;
    let cands = |r: &[f32]| top_candidates(r, 8, &mut Rng::new(1));
    let whole = |r: &[f32]| mass_parts(r, 1.0, r.len());
    for params in [
        SamplingParams { temperature: 1.0, seed: 3, ..SamplingParams::default() },
        SamplingParams { temperature: 1.0, top_p: 0.5, seed: 3, ..SamplingParams::default() },
    ] {
        let mut s = Sampler::new(params).unwrap();
        let parts = whole(&row);
        for _ in 0..100 {
            let got =
                s.sample_top(cands(&row), &MassParts { parts: &parts, chunk: 1000, cols: 1000 }, |_| panic!("logits were copied")).unwrap();
            assert_eq!(got, 7);
        }
    }
    // A flat row of 3000: top-p 0.9 is not reached by 8 candidates, so every draw copies
    // the row, as does a plain draw past 8; past the 1024 a whole-row draw sorts first,
    // a plain draw copies one part of 100 (about two draws in three land there).
    let flat = vec![0.5f32; 3000];
    let parts = mass_parts(&flat, 1.0, 100);
    let mp = MassParts { parts: &parts, chunk: 100, cols: 3000 };
    for (top_p, k, seed) in [(0.9f32, 8, 4u64), (1.0, 8, 5), (1.0, SORTED_HEAD, 6)] {
        let params = SamplingParams { temperature: 1.0, top_p, seed, ..SamplingParams::default() };
        let (mut s, mut full) = (Sampler::new(params.clone()).unwrap(), Sampler::new(params).unwrap());
        let mut c = Copies::default();
        let mut decided = 0;
        for _ in 0..30 {
            let before = (c.rows, c.parts);
            let got = s.sample_top(top_candidates(&flat, k, &mut Rng::new(1)), &mp, c.fetch(&flat, 100)).unwrap();
            assert_eq!(got, full.sample(&mut flat.clone()).unwrap(), "top_p {top_p}, {k} candidates");
            decided += usize::from(before == (c.rows, c.parts));
        }
        if k == 8 {
            assert_eq!((c.rows, c.parts), (30, 0), "top_p {top_p}, {k} candidates");
        } else {
            assert_eq!(c.rows, 0);
            assert_eq!(c.parts + decided, 30, "one part a draw past the candidates");
            assert!(c.parts >= 10 && decided >= 3, "{} parts, {decided} draws on candidates", c.parts);
        }
    }
    // The candidates fill the first part (ids 0-1023 of 2048, parts of 1024): its mass
    // past them is only rounding, and the walk never returns a candidate from the tail.
    let mut head_row = vec![1.0f32; 2 * SORTED_HEAD];
    head_row[..SORTED_HEAD].iter_mut().for_each(|l| *l = 1.5);
    let parts = mass_parts(&head_row, 1.0, SORTED_HEAD);
    let mp = MassParts { parts: &parts, chunk: SORTED_HEAD, cols: head_row.len() };
    let mut s = Sampler::new(SamplingParams { temperature: 1.0, seed: 6, ..SamplingParams::default() }).unwrap();
    let mut full = s.clone();
    let mut c = Copies::default();
    for _ in 0..200 {
        let got = s.sample_top(top_candidates(&head_row, SORTED_HEAD, &mut Rng::new(2)), &mp, c.fetch(&head_row, SORTED_HEAD)).unwrap();
        assert_eq!(got, full.sample(&mut head_row.clone()).unwrap());
    }
    assert_eq!(c.rows, 0);
    assert!(c.parts > 0);
    // A normalizer that cannot be right (an infinite logit) takes the whole row.
    let mut inf = row.clone();
    inf[3] = f32::INFINITY;
    let parts = whole(&inf);
    let mut s = Sampler::new(SamplingParams { temperature: 1.0, seed: 5, ..SamplingParams::default() }).unwrap();
    let mut c = Copies::default();
    assert_eq!(s.sample_top(cands(&inf), &MassParts { parts: &parts, chunk: 1000, cols: 1000 }, c.fetch(&inf, 1000)).unwrap(), 3);
    assert_eq!((c.rows, c.parts), (1, 0));
}

#[test]
fn whole_row_draws_follow_the_truncated_softmax_past_the_sorted_head() {
    // 2000 and 7000 logits (more than the 1024 the draw sorts first): a plain draw walks
    // the rest in id order; top-p 0.9 and 0.99 reach past the sorted head, and their cut
    // is found by selection (one to seven halvings of the rest). Frequencies over ten id
    // buckets against an independent f64 reference (a full sort, the nucleus cut, the
    // softmax); every draw inside the reference's nucleus.
    for (len, top_p, seed) in [(2000usize, 1.0f32, 5u64), (2000, 0.9, 6), (7000, 0.9, 7), (7000, 0.99, 8)] {
        let mut rng = Rng::new(21 + seed);
        let row: Vec<f32> = (0..len).map(|_| rng.next_f32() * 3.0).collect();
        let t = 1.0f64;
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let w: Vec<f64> = order.iter().map(|&i| (f64::from(row[i]) / t).exp()).collect();
        let z: f64 = w.iter().sum();
        let mut acc = 0.0;
        let keep = w.iter().position(|&x| {
            acc += x / z;
            acc >= f64::from(top_p)
        });
        let keep = keep.map_or(w.len(), |i| i + 1);
        assert!(keep > 1024, "the nucleus must reach past the sorted head ({keep})");
        let zk: f64 = w[..keep].iter().sum();
        // Ten buckets by id, and ten by rank inside the nucleus (a cut in the wrong place
        // moves the last ones).
        let mut want = [0.0f64; 20];
        for (j, &i) in order[..keep].iter().enumerate() {
            want[i * 10 / row.len()] += w[j] / zk;
            want[10 + j * 10 / keep] += w[j] / zk;
        }
        let rank: std::collections::HashMap<usize, usize> = order[..keep].iter().enumerate().map(|(j, &i)| (i, j)).collect();
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p, seed, ..SamplingParams::default() }).unwrap();
        let n = 8_000;
        let mut got = [0usize; 20];
        for _ in 0..n {
            let tok = s.sample(&mut row.clone()).unwrap() as usize;
            let Some(&j) = rank.get(&tok) else { panic!("len {len} top_p {top_p}: token {tok} is outside the nucleus") };
            got[tok * 10 / row.len()] += 1;
            got[10 + j * 10 / keep] += 1;
        }
        for b in 0..20 {
            let p = want[b];
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            let f = got[b] as f64 / n as f64;
            assert!((f - p).abs() <= 5.0 * sd + 1e-4, "len {len} top_p {top_p} bucket {b}: {f} vs {p}");
        }
    }
}

#[test]
fn the_normalizer_merged_from_parts_is_the_rows() {
    // Parts as the GPU writes them: each part's largest logit and its f64 sum relative to
    // it, rounded to f32; merged, the row's sum relative to its largest within 2^-23.
    let mut rng = Rng::new(9);
    let row: Vec<f32> = (0..5000).map(|_| (rng.next_f32() * 2.0 - 1.0) * 9.0).collect();
    for t in [0.3f32, 1.0, 2.5] {
        let mut parts = Vec::new();
        for c in row.chunks(700) {
            let m = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            parts.push(m);
            parts.push(c.iter().map(|&l| (f64::from(l / t) - f64::from(m / t)).exp()).sum::<f64>() as f32);
        }
        // A part of a greedy row or without a finite logit.
        parts.extend([f32::NEG_INFINITY, 0.0]);
        let got = merge_mass(&parts, t);
        let want = mass(&row, t);
        assert!((got / want - 1.0).abs() < 1.2e-7, "t {t}: {got} vs {want}");
    }
    assert!(merge_mass(&[f32::INFINITY, 1.0, 0.5, 1.0], 1.0).is_nan());
    assert_eq!(merge_mass(&[f32::NEG_INFINITY, 0.0], 1.0), 0.0);
}
