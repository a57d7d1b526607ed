#![cfg(all(feature = "wgpu", not(feature = "cuda")))]
//! The bf16 products' whole path on wgpu, with f16 standing in for bf16
//! (`DISTILLERY_BF16_AS_F16=1`): lavapipe has f16 but not bf16, so without
//! the switch this code runs only on CUDA, and a bug in it would first
//! show on a GPU machine. Every check of `matmul_support` (inference's
//! two-part products, training's rounded products and gradients under
//! autodiff, the shared products of one input) and of
//! `product_inputs_support` (RMSNorm and SwiGLU writing the products' f16
//! operands), then a model's logits against the float64 reference and its
//! training gradients against the f32 ones: within f16's rounding, and not
//! the f32 result itself. The logits are also those of a forward that
//! captures every activation, and so writes them in f32 first, bit for
//! bit; with the activations rounded once (`Activations::Rounded`), they
//! are a training forward's, bit for bit, and within f16's rounding of
//! the reference, and again with the weights held rounded
//! (`Llama::with_inference_weights`), as is a distillation loss with the
//! heads in chunks from such a teacher, and its gradient.
//!
//! One test in its own binary: the switch is read once, so it is set
//! before anything reads it.

mod cube_support;
mod matmul_support;
mod model_support;
mod product_inputs_support;

use burn::backend::Autodiff;
use burn::tensor::DType;
use cube_support::{Cube, device};
use distillery_ops::kernels::kd::{KdLoss, KdSpec};
use distillery_ops::kernels::{Activations, MatmulOps, Precision};
use distillery_ops::model::{Capture, Llama, tokens_tensor};
use distillery_ops::train::data::{MicroBatch, TrainRow};
use distillery_ops::train::{Distillation, Objective};
use matmul_support::{check_products, check_shared, check_training, runs_bf16};
use model_support::{
    Rng, all_configs, cfg_gqa, cfg_odd_tied, random_weights, reference_forward, rel_err,
    rel_err_f32,
};

#[test]
fn the_bf16_path_with_f16_standing_in_matches_its_oracles() {
    // SAFETY: this binary's only test sets the variable before anything
    // reads the environment, and no other thread reads or writes it.
    unsafe { std::env::set_var("DISTILLERY_BF16_AS_F16", "1") };
    let device = device();
    assert_eq!(
        Cube::reduced_dtype(&device),
        Some(DType::F16),
        "lavapipe should offer f16 to stand in for bf16"
    );
    assert!(runs_bf16::<Cube>(&device));

    check_products::<Cube>(&device);
    check_training::<Autodiff<Cube>>(&device);
    check_shared::<Cube, Autodiff<Cube>>(&device, &device);
    product_inputs_support::check_product_inputs::<Cube, Autodiff<Cube>>(
        &device,
        &device,
        product_inputs_support::Kernels::Cube,
    );

    // A model's logits in inference's two-part arithmetic: f16 parts keep
    // about 22 bits of the activations, the weights 11.
    for (i, (name, c)) in all_configs().into_iter().enumerate() {
        let mut rng = Rng::new(500 + i as u64);
        let sd = random_weights(&c, &mut rng);
        let tokens = rng.tokens(11, c.vocab_size);
        let model = Llama::<Cube>::from_state_dict(c.clone(), sd.clone(), &device)
            .expect("model builds")
            .with_precision(Precision::Bf16);
        let got: Vec<f32> = model
            .forward(tokens_tensor(&[&tokens], &device))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let want = reference_forward(&c, &sd, &tokens).logits;
        let captured: Vec<f32> = model
            .forward_with(tokens_tensor(&[&tokens], &device), &Capture::ALL)
            .logits
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            got == captured,
            "{name}: logits differ when the norms and SwiGLU are written in f32 first"
        );
        let err = rel_err(&got, &want);
        eprintln!("{name}: logits off by {err:.2e} of the largest");
        assert!(err <= 4e-3, "{name}: logits off by {err:e} of the largest");
        assert!(
            err > 1e-6,
            "{name}: logits as exact as f32's ({err:e}): nothing was rounded"
        );

        // The activations rounded once (`Activations::Rounded`, a fast
        // teacher): exactly a training step's forward, which a model
        // under autodiff without gradients runs; f16 keeps 11 bits, and
        // the bound is 8 of its unit roundoffs (2^-11), as above.
        let rounded: Vec<f32> = model
            .clone()
            .with_activations(Activations::Rounded)
            .forward(tokens_tensor(&[&tokens], &device))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let trained: Vec<f32> =
            Llama::<Autodiff<Cube>>::from_state_dict(c.clone(), sd.clone(), &device)
                .expect("model builds")
                .with_precision(Precision::Bf16)
                .forward(tokens_tensor(&[&tokens], &device))
                .inner()
                .into_data()
                .to_vec::<f32>()
                .unwrap();
        assert!(
            rounded == trained,
            "{name}: logits with the activations rounded once differ from a training forward's"
        );
        let err_rounded = rel_err(&rounded, &want);
        eprintln!(
            "{name}: activations rounded once: logits off by {err_rounded:.2e} of the largest"
        );
        assert!(
            err_rounded <= 4e-3,
            "{name}: activations rounded once: logits off by {err_rounded:e} of the largest"
        );
        assert!(
            rounded != got,
            "{name}: the activations rounded once give the two parts' logits"
        );

        // The same model holding its weights as those products read them
        // (a teacher's `with_inference_weights`): in f16, except a tied
        // head (the embedding), and the same logits bit for bit.
        let held = model
            .clone()
            .with_activations(Activations::Rounded)
            .with_inference_weights();
        let layer = &held.layers[0];
        for (what, dtype) in [
            ("q_proj", layer.self_attn.q_proj.weight.val().dtype()),
            ("down_proj", layer.mlp.down_proj.weight.val().dtype()),
            ("the head", held.head_weight().dtype()),
            ("the embedding", held.embed_tokens.val().dtype()),
            ("a norm", layer.input_layernorm.weight.val().dtype()),
        ] {
            let want = if what == "the embedding"
                || what == "a norm"
                || (what == "the head" && c.tie_word_embeddings)
            {
                DType::F32
            } else {
                DType::F16
            };
            assert_eq!(dtype, want, "{name}: {what} held in {dtype:?}");
        }
        let held_logits: Vec<f32> = held
            .forward(tokens_tensor(&[&tokens], &device))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            held_logits == rounded,
            "{name}: logits differ with the weights held rounded"
        );
        // Two parts stack each weight from f32: nothing is held rounded.
        let two_parts = model.clone().with_inference_weights();
        assert_eq!(
            two_parts.layers[0].mlp.up_proj.weight.val().dtype(),
            DType::F32,
            "{name}: a two-part model's weight rounded"
        );
    }

    // A distillation loss with the heads in chunks, from a teacher whose
    // activations are rounded once: its head (tied: rounded once a step for
    // every chunk; untied: held rounded) gives the loss and the student's
    // gradient of a teacher holding f32 weights, bit for bit.
    for (name, c) in [("tied", cfg_odd_tied()), ("untied", cfg_gqa())] {
        let mut rng = Rng::new(31);
        let teacher =
            Llama::<Cube>::from_state_dict(c.clone(), random_weights(&c, &mut rng), &device)
                .expect("model builds")
                .with_precision(Precision::Bf16)
                .with_activations(Activations::Rounded);
        let student_sd = random_weights(&c, &mut rng);
        let tokens = [rng.tokens(8, c.vocab_size), rng.tokens(8, c.vocab_size)];
        let rows: Vec<TrainRow> = tokens
            .iter()
            .enumerate()
            .map(|(index, t)| TrainRow {
                index,
                tokens: t,
                mask: None,
            })
            .collect();
        let batch = MicroBatch::<Cube>::new(&rows, 1.0 / 14.0, &device);
        let loss_and_grad = |teacher: Llama<Cube>| {
            let objective = Distillation {
                teacher,
                spec: KdSpec {
                    loss: KdLoss::ForwardKl,
                    temperature: 1.0,
                    tau_squared: false,
                },
                ce_weight: 0.0,
                vocab: c.vocab_size,
                head_chunk_rows: Some(5),
            };
            let student =
                Llama::<Autodiff<Cube>>::from_state_dict(c.clone(), student_sd.clone(), &device)
                    .expect("model builds")
                    .with_precision(Precision::Bf16);
            let loss = objective.loss(&student, &batch).expect("a loss");
            let grads = loss.backward();
            let grad = student.layers[0]
                .mlp
                .up_proj
                .weight
                .grad(&grads)
                .expect("a gradient");
            (
                loss.into_data().to_vec::<f32>().unwrap(),
                grad.into_data().to_vec::<f32>().unwrap(),
            )
        };
        let (want_loss, want_grad) = loss_and_grad(teacher.clone());
        let (loss, grad) = loss_and_grad(teacher.with_inference_weights());
        assert!(
            want_loss[0].is_finite() && want_loss[0] > 0.0,
            "{name}: {want_loss:?}"
        );
        assert!(
            loss == want_loss && grad == want_grad,
            "{name}: the chunked loss or its gradient differ with the teacher's weights held rounded"
        );
    }

    // A training backward with every product's operands rounded once:
    // every parameter's gradient against the f32 path's.
    let c = cfg_gqa();
    let mut rng = Rng::new(7);
    let sd = random_weights(&c, &mut rng);
    let rows = [rng.tokens(9, c.vocab_size), rng.tokens(9, c.vocab_size)];
    let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let model = |precision| {
        Llama::<Autodiff<Cube>>::from_state_dict(c.clone(), sd.clone(), &device)
            .expect("model builds")
            .with_precision(precision)
    };
    let want = model_support::parameter_gradients(&model(Precision::F32), &rows, &device);
    let got = model_support::parameter_gradients(&model(Precision::Bf16), &rows, &device);
    assert_eq!(want.len(), got.len());
    let mut largest = 0.0f64;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let err = rel_err_f32(g, w);
        assert!(
            err <= 2e-2,
            "parameter {i}: gradient off by {err:e} of the largest"
        );
        largest = largest.max(err);
    }
    eprintln!("gradients off by at most {largest:.2e} of a parameter's largest");
    assert!(
        largest > 1e-6,
        "gradients as exact as f32's: nothing was rounded"
    );
}
