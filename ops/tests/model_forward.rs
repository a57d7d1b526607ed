//! The Burn forward against the float64 reference on tiny random models:
//! logits, batching, and the captured activations.

mod model_support;

use distillery_ops::model::{Capture, Llama, tokens_tensor};
use model_support::*;

const TOL: f64 = 1e-4;

#[test]
fn logits_match_float64_reference() {
    for (i, (name, c)) in all_configs().into_iter().enumerate() {
        let mut rng = Rng::new(100 + i as u64);
        let sd = random_weights(&c, &mut rng);
        let model = build(&c, &sd);
        let tokens = rng.tokens(11, c.vocab_size);
        let got = model_logits(&model, &[&tokens]);
        let want = reference_forward(&c, &sd, &tokens).logits;
        let err = rel_err(&got, &want);
        assert!(err <= TOL, "{name}: relative error {err:e}");
        // Random weights must give logits that actually vary.
        let spread = want.iter().cloned().fold(f64::MIN, f64::max)
            - want.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 1.0, "{name}: degenerate logits (spread {spread})");
    }
}

#[test]
fn batch_rows_are_independent() {
    let c = cfg_gqa();
    let mut rng = Rng::new(7);
    let sd = random_weights(&c, &mut rng);
    let model = build(&c, &sd);
    let a = rng.tokens(9, c.vocab_size);
    let b = rng.tokens(9, c.vocab_size);
    let got = model_logits(&model, &[&a, &b]);
    let per_row = 9 * c.vocab_size;
    for (row, tokens) in [&a, &b].into_iter().enumerate() {
        let want = reference_forward(&c, &sd, tokens).logits;
        let err = rel_err(&got[row * per_row..(row + 1) * per_row], &want);
        assert!(err <= TOL, "row {row}: relative error {err:e}");
    }
}

#[test]
fn captured_activations_match_reference() {
    for (i, (name, c)) in all_configs().into_iter().enumerate() {
        let mut rng = Rng::new(200 + i as u64);
        let sd = random_weights(&c, &mut rng);
        let model = build(&c, &sd);
        let tokens = rng.tokens(8, c.vocab_size);
        let out = model.forward_with(tokens_tensor(&[&tokens], &device()), &Capture::ALL);
        let want = reference_forward(&c, &sd, &tokens);

        assert_eq!(out.layers.len(), c.num_hidden_layers);
        for (l, (got, want)) in out.layers.into_iter().zip(&want.layers).enumerate() {
            let checks = [
                ("layer_input", got.layer_input, &want.layer_input),
                (
                    "input_layernorm",
                    got.input_layernorm,
                    &want.input_layernorm,
                ),
                ("o_proj_input", got.o_proj_input, &want.o_proj_input),
                (
                    "post_attention_layernorm",
                    got.post_attention_layernorm,
                    &want.post_attention_layernorm,
                ),
                (
                    "down_proj_input",
                    got.down_proj_input,
                    &want.down_proj_input,
                ),
                ("layer_output", got.layer_output, &want.layer_output),
            ];
            for (what, t, reference) in checks {
                let t = t.unwrap_or_else(|| panic!("{name} layer {l}: {what} not captured"));
                let err = rel_err(&to_vec(t), reference);
                assert!(
                    err <= TOL,
                    "{name} layer {l} {what}: relative error {err:e}"
                );
            }
        }
        let err = rel_err(
            &to_vec(out.final_norm.expect("final norm")),
            &want.final_norm,
        );
        assert!(err <= TOL, "{name} final norm: relative error {err:e}");

        // Capturing changes nothing in the logits: it is the same path.
        let plain = model_logits(&model, &[&tokens]);
        assert_eq!(
            to_vec(out.logits),
            plain,
            "{name}: capture altered the logits"
        );
    }
}

#[test]
fn capture_only_what_is_asked() {
    let c = cfg_gqa();
    let mut rng = Rng::new(3);
    let model = build(&c, &random_weights(&c, &mut rng));
    let tokens = rng.tokens(5, c.vocab_size);
    let none = model.forward_with(tokens_tensor(&[&tokens], &device()), &Capture::NONE);
    assert!(none.layers.is_empty() && none.final_norm.is_none());

    let only = Capture {
        down_proj_input: true,
        ..Capture::NONE
    };
    let out = model.forward_with(tokens_tensor(&[&tokens], &device()), &only);
    assert_eq!(out.layers.len(), 2);
    for layer in &out.layers {
        assert_eq!(
            layer.down_proj_input.as_ref().unwrap().dims(),
            [1, 5, c.intermediate_size]
        );
        assert!(layer.layer_input.is_none() && layer.o_proj_input.is_none());
    }
}

/// The CPU's products round no operand ahead of time (AMX rounds as it
/// packs), so a model holding its inference weights keeps them in f32 and
/// its logits as they were. (`kernels_bf16_as_f16` checks a device that
/// does round them.)
#[test]
fn inference_weights_on_the_cpu_stay_f32() {
    use burn::tensor::DType;
    use distillery_ops::kernels::{Activations, Precision};
    let c = cfg_gqa();
    let mut rng = Rng::new(12);
    let model = build(&c, &random_weights(&c, &mut rng))
        .with_precision(Precision::Bf16)
        .with_activations(Activations::Rounded);
    let tokens = rng.tokens(7, c.vocab_size);
    let want = model_logits(&model, &[&tokens]);
    let held = model.with_inference_weights();
    assert_eq!(
        held.layers[0].mlp.gate_proj.weight.val().dtype(),
        DType::F32
    );
    assert_eq!(held.head_weight().dtype(), DType::F32);
    assert_eq!(model_logits(&held, &[&tokens]), want);
}

#[test]
fn hidden_states_then_head_equals_forward() {
    let c = cfg_odd_tied();
    let mut rng = Rng::new(11);
    let model = build(&c, &random_weights(&c, &mut rng));
    let tokens = rng.tokens(6, c.vocab_size);
    let t = || tokens_tensor(&[&tokens], &device());
    let hidden = model.hidden_states(t());
    assert_eq!(hidden.dims(), [1, 6, c.hidden_size]);
    assert_eq!(to_vec(model.logits(hidden)), to_vec(model.forward(t())));
}

#[test]
fn autodiff_forward_matches_and_gives_gradients() {
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    type AD = Autodiff<B>;

    let c = cfg_bias_llama3();
    let mut rng = Rng::new(21);
    let sd = random_weights(&c, &mut rng);
    let tokens = rng.tokens(7, c.vocab_size);
    let model = Llama::<AD>::from_state_dict(c.clone(), sd.clone(), &device()).unwrap();

    // Under autodiff the attention takes Burn's matmul + softmax fallback;
    // the logits must not change.
    let logits = model.forward(tokens_tensor(&[&tokens], &device()));
    let want = reference_forward(&c, &sd, &tokens).logits;
    let got: Vec<f32> = logits.clone().into_data().to_vec().unwrap();
    let err = rel_err(&got, &want);
    assert!(err <= TOL, "autodiff relative error {err:e}");

    let grads = logits.square().mean().backward();
    let layer = &model.layers[1];
    for (name, g) in [
        (
            "embed_tokens",
            model.embed_tokens.grad(&grads).map(|g| g.dims().to_vec()),
        ),
        (
            "lm_head",
            model
                .lm_head
                .as_ref()
                .unwrap()
                .grad(&grads)
                .map(|g| g.dims().to_vec()),
        ),
        (
            "q_proj",
            layer
                .self_attn
                .q_proj
                .weight
                .grad(&grads)
                .map(|g| g.dims().to_vec()),
        ),
        (
            "k_proj bias",
            layer
                .self_attn
                .k_proj
                .bias
                .as_ref()
                .unwrap()
                .grad(&grads)
                .map(|g| g.dims().to_vec()),
        ),
        (
            "down_proj",
            layer
                .mlp
                .down_proj
                .weight
                .grad(&grads)
                .map(|g| g.dims().to_vec()),
        ),
        (
            "norm",
            model.norm.weight.grad(&grads).map(|g| g.dims().to_vec()),
        ),
    ] {
        assert!(g.is_some(), "no gradient for {name}");
    }

    // The inner (non-autodiff) model runs the same forward.
    let inner = model.valid();
    assert_eq!(inner.config, c);
    let err = rel_err(&model_logits(&inner, &[&tokens]), &want);
    assert!(err <= TOL, "valid() relative error {err:e}");
}
