//! The training step's numerics against float64 oracles written here: the
//! masked token-mean cross-entropy, and AdamW (bias correction, decoupled
//! decay on matrices only, global-norm clipping) over two steps; the
//! optimizer state surviving a checkpoint round trip bit for bit; and the
//! step the training loop runs ([`TrainStep`]): micro-batches adding up to
//! the whole batch, and its phase timer leaving the arithmetic alone; bf16
//! training following f32's loss curve; and distillation with the heads and
//! the loss in chunks of positions taking the steps it takes without.

mod model_support;

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use distillery_ops::kernels::Precision;
use distillery_ops::kernels::kd::{KdLoss, KdSpec};
use distillery_ops::kernels::matmul::bf16_on_cpu;
use distillery_ops::model::Llama;
use distillery_ops::train::data::{MicroBatch, TrainRow};
use distillery_ops::train::{
    AdamW, AdamWConfig, CrossEntropy, Distillation, GradientSum, Objective, StepTimings, TrainStep,
};
use model_support::{B, Rng, cfg_bias_llama3, device, random_weights, reference_forward};

type A = Autodiff<B>;

/// Every float parameter in visit order: values, gradients (if any) and rank.
struct Collect<'a> {
    grads: Option<&'a <A as AutodiffBackend>::Gradients>,
    out: Vec<(Vec<f32>, Option<Vec<f32>>, usize)>,
}

impl ModuleVisitor<A> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let value = param.val();
        let grad = self
            .grads
            .and_then(|g| value.grad(g))
            .map(|g| g.into_data().to_vec::<f32>().unwrap());
        let data = value.inner().into_data().to_vec::<f32>().unwrap();
        self.out.push((data, grad, D));
    }
}

fn collect(
    model: &Llama<A>,
    grads: Option<&<A as AutodiffBackend>::Gradients>,
) -> Vec<(Vec<f32>, Option<Vec<f32>>, usize)> {
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

fn rows_of(tokens: &[Vec<u32>], masks: &[Option<Vec<u8>>]) -> Vec<(Vec<u32>, Option<Vec<u8>>)> {
    tokens.iter().cloned().zip(masks.iter().cloned()).collect()
}

fn train_rows(owned: &[(Vec<u32>, Option<Vec<u8>>)]) -> Vec<TrainRow<'_>> {
    owned
        .iter()
        .enumerate()
        .map(|(index, (t, m))| TrainRow {
            index,
            tokens: t,
            mask: m.as_deref(),
        })
        .collect()
}

#[test]
fn masked_cross_entropy_is_the_mean_over_target_tokens() {
    let c = cfg_bias_llama3();
    let mut rng = Rng::new(4);
    let sd = random_weights(&c, &mut rng);
    let model = Llama::<A>::from_state_dict(c.clone(), sd.clone(), &device()).unwrap();
    let seq = 9;
    let tokens: Vec<Vec<u32>> = (0..3).map(|_| rng.tokens(seq, c.vocab_size)).collect();
    let masks = vec![
        None,
        Some(vec![0, 0, 1, 1, 0, 1, 1, 1, 0]),
        Some(vec![1, 0, 0, 0, 0, 0, 0, 0, 0]), // no target at all
    ];
    let owned = rows_of(&tokens, &masks);
    let rows = train_rows(&owned);
    let count: usize = rows.iter().map(TrainRow::targets).sum();
    assert_eq!(count, 8 + 5);
    let mb = MicroBatch::<B>::new(&rows, 1.0 / count as f32, &device());
    let loss: f32 = CrossEntropy.loss(&model, &mb).unwrap().into_scalar();

    let mut nll = 0.0f64;
    for (row, mask) in tokens.iter().zip(&masks) {
        let logits = reference_forward(&c, &sd, &row[..seq - 1]).logits;
        for j in 1..seq {
            if mask.as_ref().is_some_and(|m| m[j] == 0) {
                continue;
            }
            let z = &logits[(j - 1) * c.vocab_size..j * c.vocab_size];
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            nll += lse - z[row[j] as usize];
        }
    }
    let expected = nll / count as f64;
    assert!(
        (loss as f64 - expected).abs() <= 1e-5 * expected.abs(),
        "loss {loss} vs float64 {expected}"
    );
}

/// AdamW in float64 over host vectors: one step for one parameter.
struct RefAdam {
    m: Vec<f64>,
    v: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn ref_step(
    p: &mut [f64],
    g: &[f64],
    s: &mut RefAdam,
    t: i32,
    lr: f64,
    c: AdamWConfig,
    decay: bool,
) {
    for i in 0..p.len() {
        s.m[i] = c.beta1 * s.m[i] + (1.0 - c.beta1) * g[i];
        s.v[i] = c.beta2 * s.v[i] + (1.0 - c.beta2) * g[i] * g[i];
        let m_hat = s.m[i] / (1.0 - c.beta1.powi(t));
        let v_hat = s.v[i] / (1.0 - c.beta2.powi(t));
        if decay {
            p[i] *= 1.0 - lr * c.weight_decay;
        }
        p[i] -= lr * m_hat / (v_hat.sqrt() + c.eps);
    }
}

#[test]
fn adamw_matches_a_float64_reference_over_two_clipped_steps() {
    let c = cfg_bias_llama3();
    let mut rng = Rng::new(9);
    let sd = random_weights(&c, &mut rng);
    let mut model = Llama::<A>::from_state_dict(c.clone(), sd, &device()).unwrap();
    let config = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 0.5,
    };
    let mut adam = AdamW::<B>::new(config);
    let initial = collect(&model, None);
    let mut ref_params: Vec<Vec<f64>> = initial
        .iter()
        .map(|(v, _, _)| v.iter().map(|&x| x as f64).collect())
        .collect();
    let mut ref_state: Vec<RefAdam> = ref_params
        .iter()
        .map(|p| RefAdam {
            m: vec![0.0; p.len()],
            v: vec![0.0; p.len()],
        })
        .collect();
    let ranks: Vec<usize> = initial.iter().map(|(_, _, d)| *d).collect();
    assert!(
        ranks.contains(&1) && ranks.contains(&2),
        "norms, biases and matrices"
    );

    let mut clipped_once = false;
    for (t, lr) in [(1, 3e-2), (2, 1e-2)] {
        let owned = rows_of(
            &(0..2)
                .map(|_| rng.tokens(7, c.vocab_size))
                .collect::<Vec<_>>(),
            &[None, None],
        );
        let rows = train_rows(&owned);
        let mb = MicroBatch::<B>::new(&rows, 1.0 / 12.0, &device());
        let loss = CrossEntropy.loss(&model, &mb).unwrap();
        let grads = loss.backward();
        let seen = collect(&model, Some(&grads));
        let host_grads: Vec<Vec<f64>> = seen
            .iter()
            .map(|(_, g, _)| g.as_ref().unwrap().iter().map(|&x| x as f64).collect())
            .collect();
        let norm = host_grads
            .iter()
            .flatten()
            .map(|g| g * g)
            .sum::<f64>()
            .sqrt();
        let scale = if norm > config.grad_clip {
            clipped_once = true;
            config.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        let mut sum = GradientSum::<B>::default();
        sum.add::<A, _>(&model, &grads);
        let (next, report) = adam.step::<A, _>(model, &mut sum, lr);
        model = next;
        assert!(
            (report.grad_norm - norm).abs() <= 1e-5 * norm,
            "{} vs {norm}",
            report.grad_norm
        );
        for (i, p) in ref_params.iter_mut().enumerate() {
            let g: Vec<f64> = host_grads[i].iter().map(|x| x * scale).collect();
            ref_step(p, &g, &mut ref_state[i], t, lr, config, ranks[i] >= 2);
        }
        let after = collect(&model, None);
        for (i, ((got, _, _), want)) in after.iter().zip(&ref_params).enumerate() {
            for (k, (&a, &b)) in got.iter().zip(want).enumerate() {
                let tol = 2e-6 * (1.0 + b.abs()) + 1e-4 * lr;
                assert!(
                    (a as f64 - b).abs() <= tol,
                    "step {t}, parameter {i} (rank {}), element {k}: {a} vs {b}",
                    ranks[i]
                );
            }
        }
    }
    assert!(clipped_once, "the test must exercise clipping");
}

#[test]
fn optimizer_state_round_trips_bit_for_bit() {
    let c = cfg_bias_llama3();
    let mut rng = Rng::new(21);
    let sd = random_weights(&c, &mut rng);
    let config = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 1.0,
    };
    let batch = |rng: &mut Rng| {
        rows_of(
            &(0..2)
                .map(|_| rng.tokens(6, c.vocab_size))
                .collect::<Vec<_>>(),
            &[None, None],
        )
    };
    let step = |model: Llama<A>, adam: &mut AdamW<B>, owned: &[(Vec<u32>, Option<Vec<u8>>)]| {
        let rows = train_rows(owned);
        let mb = MicroBatch::<B>::new(&rows, 0.1, &device());
        let grads = CrossEntropy.loss(&model, &mb).unwrap().backward();
        let mut sum = GradientSum::<B>::default();
        sum.add::<A, _>(&model, &grads);
        adam.step::<A, _>(model, &mut sum, 1e-2).0
    };
    let model = Llama::<A>::from_state_dict(c.clone(), sd, &device()).unwrap();
    let mut adam = AdamW::<B>::new(config);
    let first = batch(&mut rng);
    let model = step(model, &mut adam, &first);

    // Save everything, restore into fresh objects, and take the same step.
    use burn::module::AutodiffModule;
    let saved_model = model.valid().to_state_dict();
    let saved_adam = adam.to_state_dict();
    let mut restored_adam =
        AdamW::<B>::load_state_dict(config, adam.steps, saved_adam, &device()).unwrap();
    let restored = Llama::<A>::from_state_dict(c.clone(), saved_model, &device()).unwrap();
    let second = batch(&mut rng);
    let a = collect(&step(model, &mut adam, &second), None);
    let b = collect(&step(restored, &mut restored_adam, &second), None);
    for ((x, _, _), (y, _, _)) in a.iter().zip(&b) {
        assert!(x == y, "a restored optimizer takes a different step");
    }
}

/// Four rows of 8 tokens, two of them masked (one with a single target).
fn step_batch(rng: &mut Rng, vocab: usize) -> Vec<(Vec<u32>, Option<Vec<u8>>)> {
    rows_of(
        &(0..4).map(|_| rng.tokens(8, vocab)).collect::<Vec<_>>(),
        &[
            None,
            Some(vec![0, 0, 0, 1, 1, 1, 0, 1]),
            None,
            Some(vec![1, 0, 0, 0, 0, 0, 1, 0]),
        ],
    )
}

fn step_config() -> AdamWConfig {
    AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 0.5,
    }
}

#[test]
fn a_train_step_over_micro_batches_matches_one_over_the_whole_batch() {
    let c = cfg_bias_llama3();
    let mut rng = Rng::new(31);
    let sd = random_weights(&c, &mut rng);
    let owned = step_batch(&mut rng, c.vocab_size);
    let rows = train_rows(&owned);
    let run = |micro_batch: usize| {
        let model = Llama::<A>::from_state_dict(c.clone(), sd.clone(), &device()).unwrap();
        let mut adam = AdamW::<B>::new(step_config());
        let step = TrainStep {
            objective: &CrossEntropy,
            micro_batch,
            device: &device(),
        };
        let (model, outcome) = step.run(model, &mut adam, 0, &rows, 1e-2, None).unwrap();
        (collect(&model, None), outcome)
    };
    let (whole, whole_outcome) = run(4);
    let (split, split_outcome) = run(1);

    // The loss of the whole batch in one forward, as the oracle test above
    // checks it: the mean over the batch's target tokens.
    let count: usize = rows.iter().map(|r| r.targets()).sum();
    let model = Llama::<A>::from_state_dict(c.clone(), sd, &device()).unwrap();
    let mb = MicroBatch::<B>::new(&rows, 1.0 / count as f32, &device());
    let loss_tensor = CrossEntropy.loss(&model, &mb).unwrap();
    let loss = loss_tensor.clone().into_scalar() as f64;
    let grads = loss_tensor.backward();
    let gradients = collect(&model, Some(&grads));
    for outcome in [whole_outcome, split_outcome] {
        assert!(
            (outcome.loss - loss).abs() <= 1e-5 * loss,
            "{} vs {loss}",
            outcome.loss
        );
    }
    assert!(
        (split_outcome.grad_norm - whole_outcome.grad_norm).abs() <= 1e-5 * whole_outcome.grad_norm,
        "{split_outcome:?} vs {whole_outcome:?}"
    );
    assert!(
        whole_outcome.grad_norm > 0.5,
        "the test must exercise clipping"
    );
    // Adam's first step moves each entry by `g / (|g| + eps)`: an entry
    // whose gradient is at the level of f32 rounding of the step's gradients
    // (below 1e-6 of the largest) moves by the sign and size of that
    // rounding, which differs with the order of the sums. Such entries (a
    // few key-bias components in the slowest RoPE pairs, which the softmax
    // nearly ignores) are left out, and must stay rare. (Exact zeros, as
    // for the embeddings of tokens absent from the batch, stay put in both.)
    let overall = gradients
        .iter()
        .flat_map(|(_, g, _)| g.as_deref().unwrap())
        .fold(0.0f32, |m, x| m.max(x.abs()));
    let (mut compared, mut rounding) = (0, 0);
    for (((a, _, _), (b, _, _)), (_, grad, _)) in whole.iter().zip(&split).zip(&gradients) {
        for ((&x, &y), &g) in a.iter().zip(b).zip(grad.as_deref().unwrap()) {
            if g != 0.0 && g.abs() < 1e-6 * overall {
                rounding += 1;
                continue;
            }
            compared += 1;
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }
    assert!(
        rounding * 1000 < compared,
        "{rounding} of {} gradient entries are rounding errors",
        compared + rounding
    );
}

#[test]
fn timing_a_train_step_leaves_its_arithmetic_unchanged() {
    let c = cfg_bias_llama3();
    let mut rng = Rng::new(32);
    let sd = random_weights(&c, &mut rng);
    let batches = [
        step_batch(&mut rng, c.vocab_size),
        step_batch(&mut rng, c.vocab_size),
    ];
    let run = |timed: bool| {
        let mut model = Llama::<A>::from_state_dict(c.clone(), sd.clone(), &device()).unwrap();
        let mut adam = AdamW::<B>::new(step_config());
        let step = TrainStep {
            objective: &CrossEntropy,
            micro_batch: 2,
            device: &device(),
        };
        let mut timings = StepTimings::default();
        let mut outcomes = Vec::new();
        for (i, owned) in batches.iter().enumerate() {
            let rows = train_rows(owned);
            let timer = timed.then_some(&mut timings);
            let (next, outcome) = step
                .run(model, &mut adam, i as u64, &rows, 1e-2, timer)
                .unwrap();
            model = next;
            outcomes.push(outcome);
        }
        (collect(&model, None), outcomes, timings)
    };
    let (plain, plain_outcomes, untouched) = run(false);
    let (timed, timed_outcomes, timings) = run(true);
    assert_eq!(plain_outcomes, timed_outcomes);
    for ((a, _, _), (b, _, _)) in plain.iter().zip(&timed) {
        assert!(a == b, "a timed step computes different weights");
    }
    assert_eq!(untouched, StepTimings::default());
    assert!(
        timings.forward_s > 0.0 && timings.backward_s > 0.0 && timings.optimizer_s > 0.0,
        "{timings:?}"
    );
}

#[test]
fn bf16_training_follows_the_f32_loss_curve() {
    // A tied-embedding model (the head's gradient and the embedding's land
    // on one parameter) learns a deterministic successor rule, 60 steps in
    // f32 and in bf16 from the same weights on the same rows. Where the
    // CPU has AMX the bf16 run rounds every product's operands once; the
    // curves must still agree, and both must learn.
    let c = model_support::cfg_odd_tied();
    let vocab = c.vocab_size;
    let mut rng = Rng::new(41);
    let sd = random_weights(&c, &mut rng);
    let batches: Vec<_> = (0..60)
        .map(|_| {
            let rows: Vec<Vec<u32>> = (0..4)
                .map(|_| {
                    let mut t = rng.below(vocab) as u32;
                    (0..16)
                        .map(|_| {
                            let now = t;
                            t = (3 * t + 7) % vocab as u32;
                            now
                        })
                        .collect()
                })
                .collect();
            rows_of(&rows, &[None, None, None, None])
        })
        .collect();
    let run = |precision: Precision| {
        let mut model = Llama::<A>::from_state_dict(c.clone(), sd.clone(), &device())
            .unwrap()
            .with_precision(precision);
        let mut adam = AdamW::<B>::new(step_config());
        let step = TrainStep {
            objective: &CrossEntropy,
            micro_batch: 4,
            device: &device(),
        };
        let mut losses = Vec::new();
        for (i, owned) in batches.iter().enumerate() {
            let rows = train_rows(owned);
            let (next, outcome) = step
                .run(model, &mut adam, i as u64, &rows, 3e-3, None)
                .unwrap();
            model = next;
            losses.push(outcome.loss);
        }
        (losses, collect(&model, None))
    };
    let (f32_losses, f32_weights) = run(Precision::F32);
    let (bf16_losses, bf16_weights) = run(Precision::Bf16);
    let (first, last) = (f32_losses[0], f32_losses[59]);
    assert!(last < 0.5 * first, "f32 did not learn: {first} -> {last}");
    // The mean of the last 10 steps' losses, so that one step's noise does
    // not decide.
    let tail = |l: &[f64]| l[50..].iter().sum::<f64>() / 10.0;
    let (a, b) = (tail(&f32_losses), tail(&bf16_losses));
    assert!(
        (a - b).abs() <= 0.03 * a,
        "the last 10 steps' mean loss: f32 {a}, bf16 {b}\nf32 {f32_losses:?}\nbf16 {bf16_losses:?}"
    );
    assert!(
        (f32_losses[0] - bf16_losses[0]).abs() <= 1e-2 * f32_losses[0],
        "the first losses: {} and {}",
        f32_losses[0],
        bf16_losses[0]
    );
    let same = f32_weights
        .iter()
        .zip(&bf16_weights)
        .all(|((x, _, _), (y, _, _))| x == y);
    assert_eq!(
        same,
        !bf16_on_cpu(),
        "bf16 training must differ from f32 exactly where the CPU has a bf16 path"
    );
}

#[test]
fn distilling_with_the_heads_in_chunks_takes_the_same_steps() {
    // A tied-embedding student (the head's gradient and the embedding's
    // land on one parameter) and a teacher of the same shape, three steps
    // of two micro-batches with the cross-entropy mixed in: chunks of 5
    // positions (a short last chunk of each micro-batch's 30) against all
    // at once. Each step's loss and gradient norm depend on the weights the
    // steps before made, so the whole run is compared.
    let c = model_support::cfg_odd_tied();
    let mut rng = Rng::new(43);
    let student_sd = random_weights(&c, &mut rng);
    let teacher =
        Llama::<B>::from_state_dict(c.clone(), random_weights(&c, &mut rng), &device()).unwrap();
    let batches: Vec<_> = (0..3).map(|_| step_batch(&mut rng, c.vocab_size)).collect();
    let run = |head_chunk_rows: Option<usize>| {
        let objective = Distillation {
            teacher: teacher.clone(),
            spec: KdSpec {
                loss: KdLoss::ForwardKl,
                temperature: 1.5,
                tau_squared: true,
            },
            ce_weight: 0.2,
            vocab: c.vocab_size,
            head_chunk_rows,
        };
        let mut model =
            Llama::<A>::from_state_dict(c.clone(), student_sd.clone(), &device()).unwrap();
        let mut adam = AdamW::<B>::new(step_config());
        let step = TrainStep {
            objective: &objective,
            micro_batch: 2,
            device: &device(),
        };
        let mut outcomes = Vec::new();
        for (i, owned) in batches.iter().enumerate() {
            let rows = train_rows(owned);
            let (next, outcome) = step
                .run(model, &mut adam, i as u64, &rows, 1e-2, None)
                .unwrap();
            model = next;
            outcomes.push(outcome);
        }
        outcomes
    };
    let (whole, chunked) = (run(None), run(Some(5)));
    for (i, (a, b)) in whole.iter().zip(&chunked).enumerate() {
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * a.loss,
            "step {i}: loss {} in chunks, {} whole",
            b.loss,
            a.loss
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() <= 1e-4 * a.grad_norm,
            "step {i}: gradient norm {} in chunks, {} whole",
            b.grad_norm,
            a.grad_norm
        );
    }
}
