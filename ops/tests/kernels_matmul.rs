//! The model's matrix products (`kernels::linear_matmul`) on the CPU
//! against a float64 oracle (the checks of `matmul_support`): f32, and
//! bf16 where the CPU has AMX (elsewhere the bf16 request must give exactly
//! the f32 result), in inference and under autodiff with both gradients;
//! one input's products with several weights at once; RMSNorm and SwiGLU
//! written as the products read them, against their composition.

use burn::backend::{Autodiff, Flex};
use distillery_ops::kernels::matmul::bf16_on_cpu;
use distillery_ops::kernels::{Precision, WeightLayout};
use distillery_ops::rng::SplitMix64;

mod matmul_support;
mod product_inputs_support;

use matmul_support::{
    assert_within, check_products, check_shared, check_training, oracle, product, random,
    round_bf16, runs_bf16,
};

#[test]
fn products_match_the_float64_oracle() {
    assert_eq!(runs_bf16::<Flex>(&Default::default()), bf16_on_cpu());
    check_products::<Flex>(&Default::default());
}

#[test]
fn a_new_weight_is_never_served_another_weights_packing() {
    // The packed weights are cached per weight buffer: a product with a
    // weight made after the first was dropped (its memory may be reused)
    // must use the new values.
    let shape = (32, 64, 32);
    let mut rng = SplitMix64::new(5);
    let x = random(&mut rng, 32 * 64);
    for round in 0..4 {
        let w = random(&mut rng, 64 * 32);
        for _ in 0..2 {
            let got = product::<Flex>(
                &x,
                &w,
                shape,
                WeightLayout::InOut,
                Precision::Bf16,
                &Default::default(),
            );
            let (want, mag) = oracle(&x, &w, shape, WeightLayout::InOut, |v| {
                if bf16_on_cpu() { round_bf16(v) } else { v }
            });
            assert_within(
                &format!("round {round}"),
                &got,
                &want,
                &mag,
                2f64.powi(-15) + 64.0 * 2f64.powi(-24),
            );
        }
    }
}

#[test]
fn training_products_and_gradients_match_the_float64_oracle() {
    check_training::<Autodiff<Flex>>(&Default::default());
}

#[test]
fn shared_products_equal_the_products_alone_and_sum_their_gradients() {
    check_shared::<Flex, Autodiff<Flex>>(&Default::default(), &Default::default());
}

#[test]
fn row_ops_writing_the_products_operands_equal_their_composition() {
    product_inputs_support::check_product_inputs::<Flex, Autodiff<Flex>>(
        &Default::default(),
        &Default::default(),
        product_inputs_support::Kernels::Cpu,
    );
}
