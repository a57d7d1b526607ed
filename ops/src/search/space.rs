//! The architectures near a parameter budget (Minitron's search space,
//! ../shared/METHOD.md section 8): every combination of hidden size, FFN
//! size, query heads and layers a `prune` stage can make from a source
//! model whose parameter count is within a tolerance of the target, largest
//! first, each with the transformers class its export needs.

use serde::Serialize;

use crate::io::hf_architecture::{ArchitectureChoice, resolve};
use crate::model::LlamaConfig;

/// The choices on each axis; an empty list means the defaults of
/// [`SearchSpace::choices`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchSpace {
    pub target_params: usize,
    /// Largest relative distance from the target kept (0.05: +-5%).
    pub tolerance: f64,
    pub hidden: Vec<usize>,
    pub ffn: Vec<usize>,
    /// Query heads in total; every kv group is kept.
    pub heads: Vec<usize>,
    pub layers: Vec<usize>,
    /// The smallest fraction of the source's hidden and FFN sizes and heads
    /// the default choices go down to.
    pub min_width: f64,
    /// The smallest fraction of the source's layers the default choices go
    /// down to.
    pub min_depth: f64,
}

/// One architecture of the space.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub layers: usize,
    pub parameters: usize,
    /// `parameters / target - 1`.
    pub distance: f64,
    /// The transformers class `export` will declare...
    pub transformers_class: Option<String>,
    /// ...or why no class loads this shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transformers_problem: Option<String>,
}

/// Hidden sizes step by 64 and FFN sizes by 256 (by 64 below 1024), the
/// granularities ModelOpt's search uses for these axes.
const HIDDEN_STEP: usize = 64;
const FFN_STEP: usize = 256;
const SMALL_FFN_STEP: usize = 64;

impl SearchSpace {
    /// The choices on each axis for `source`: those given, checked, or the
    /// defaults from the source's size down to the minimum fractions.
    pub fn choices(&self, source: &LlamaConfig) -> Result<[Vec<usize>; 4], String> {
        let down_to = |size: usize, fraction: f64, step: usize| -> Vec<usize> {
            let floor = (size as f64 * fraction).ceil() as usize;
            let mut v: Vec<usize> = (1..=size / step)
                .map(|k| k * step)
                .filter(|&s| s >= floor)
                .collect();
            if !v.contains(&size) {
                v.push(size);
            }
            v
        };
        let kv = source.num_key_value_heads;
        let pick = |given: &[usize], default: Vec<usize>, name: &str, max: usize| {
            if given.is_empty() {
                return Ok(default);
            }
            match given.iter().find(|&&v| v == 0 || v > max) {
                Some(bad) => Err(format!(
                    "{name} {bad} is not between 1 and the source's {max}"
                )),
                None => Ok(given.to_vec()),
            }
        };
        let ffn_step = if source.intermediate_size < 1024 {
            SMALL_FFN_STEP
        } else {
            FFN_STEP
        };
        let heads_default: Vec<usize> = (1..=source.num_attention_heads / kv)
            .map(|m| m * kv)
            .filter(|&h| h as f64 >= source.num_attention_heads as f64 * self.min_width)
            .collect();
        let heads = pick(
            &self.heads,
            heads_default,
            "heads",
            source.num_attention_heads,
        )?;
        if let Some(bad) = heads.iter().find(|&&h| h % kv != 0) {
            return Err(format!(
                "heads {bad} is not a multiple of the source's {kv} kv groups (every group is kept)"
            ));
        }
        let layers_default: Vec<usize> = (1..=source.num_hidden_layers)
            .filter(|&l| l as f64 >= source.num_hidden_layers as f64 * self.min_depth)
            .collect();
        Ok([
            pick(
                &self.hidden,
                down_to(source.hidden_size, self.min_width, HIDDEN_STEP),
                "hidden",
                source.hidden_size,
            )?,
            pick(
                &self.ffn,
                down_to(source.intermediate_size, self.min_width, ffn_step),
                "ffn",
                source.intermediate_size,
            )?,
            heads,
            pick(
                &self.layers,
                layers_default,
                "layers",
                source.num_hidden_layers,
            )?,
        ])
    }

    /// Every combination within the tolerance, largest first (ties in the
    /// order hidden, ffn, heads, layers, largest first).
    pub fn enumerate(&self, source: &LlamaConfig) -> Result<Vec<Candidate>, String> {
        if self.target_params == 0 {
            return Err("the parameter target must be positive".into());
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return Err(format!("tolerance {} must be >= 0", self.tolerance));
        }
        let [hidden, ffn, heads, layers] = self.choices(source)?;
        let mut out = Vec::new();
        for &h in &hidden {
            for &f in &ffn {
                for &q in &heads {
                    for &l in &layers {
                        let mut c = source.clone();
                        c.hidden_size = h;
                        c.intermediate_size = f;
                        c.num_attention_heads = q;
                        c.num_hidden_layers = l;
                        let parameters = c.num_parameters();
                        let distance = parameters as f64 / self.target_params as f64 - 1.0;
                        if distance.abs() > self.tolerance {
                            continue;
                        }
                        let class = resolve(&c, ArchitectureChoice::Auto);
                        out.push(Candidate {
                            hidden: h,
                            ffn: f,
                            heads: q,
                            layers: l,
                            parameters,
                            distance,
                            transformers_class: class
                                .as_ref()
                                .ok()
                                .map(|r| r.architecture.class().to_string()),
                            transformers_problem: class.err(),
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (b.parameters, b.hidden, b.ffn, b.heads, b.layers).cmp(&(
                a.parameters,
                a.hidden,
                a.ffn,
                a.heads,
                a.layers,
            ))
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> LlamaConfig {
        let mut c = LlamaConfig::new(576, 1536, 30, 9, 3, 49152);
        c.head_dim = 64;
        c.tie_word_embeddings = true;
        c
    }

    fn space(target: usize) -> SearchSpace {
        SearchSpace {
            target_params: target,
            tolerance: 0.05,
            min_width: 0.5,
            min_depth: 0.5,
            ..SearchSpace::default()
        }
    }

    #[test]
    fn every_candidate_is_within_the_tolerance_and_counted_like_a_pruned_model() {
        let source = smollm2();
        let found = space(84_000_000).enumerate(&source).unwrap();
        assert!(!found.is_empty());
        for c in &found {
            assert!(c.distance.abs() <= 0.05, "{c:?}");
            let mut pruned = source.clone();
            pruned.hidden_size = c.hidden;
            pruned.intermediate_size = c.ffn;
            pruned.num_attention_heads = c.heads;
            pruned.num_hidden_layers = c.layers;
            assert_eq!(pruned.num_parameters(), c.parameters);
        }
        // The quickstart's student (448, 1024, 9 heads, 30 layers: 83.98M)
        // is one of them, flagged for Mistral.
        let quickstart = found
            .iter()
            .find(|c| (c.hidden, c.ffn, c.heads, c.layers) == (448, 1024, 9, 30))
            .expect("the quickstart's shape");
        assert_eq!(quickstart.parameters, 83_978_944);
        assert_eq!(
            quickstart.transformers_class.as_deref(),
            Some("MistralForCausalLM")
        );
        // Largest first.
        assert!(found.windows(2).all(|w| w[0].parameters >= w[1].parameters));
    }

    #[test]
    fn a_brute_force_count_over_the_same_grid_agrees() {
        let source = smollm2();
        let s = SearchSpace {
            hidden: vec![384, 448, 512],
            ffn: vec![768, 1024, 1280],
            heads: vec![6, 9],
            layers: vec![20, 24, 30],
            ..space(84_000_000)
        };
        let found = s.enumerate(&source).unwrap();
        let mut expected = 0;
        for h in [384usize, 448, 512] {
            for f in [768usize, 1024, 1280] {
                for q in [6usize, 9] {
                    for l in [20usize, 24, 30] {
                        // Embedding (tied) + layers + final norm, by hand.
                        let layer = 2 * h * q * 64 + 2 * h * 3 * 64 + 3 * h * f + 2 * h;
                        let n = 49152 * h + l * layer + h;
                        if (n as f64 / 84e6 - 1.0).abs() <= 0.05 {
                            expected += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(found.len(), expected);
    }

    #[test]
    fn choices_beyond_the_source_or_across_kv_groups_are_refused() {
        let source = smollm2();
        let bad = |s: SearchSpace| s.enumerate(&source).unwrap_err();
        assert!(
            bad(SearchSpace {
                hidden: vec![640],
                ..space(84_000_000)
            })
            .contains("hidden 640")
        );
        assert!(
            bad(SearchSpace {
                heads: vec![4],
                ..space(84_000_000)
            })
            .contains("kv groups")
        );
        assert!(bad(space(0)).contains("positive"));
        // Defaults respect the minimum fractions.
        let [hidden, ffn, heads, layers] = space(1).choices(&source).unwrap();
        assert_eq!(hidden, [320, 384, 448, 512, 576]);
        assert_eq!(ffn, [768, 1024, 1280, 1536]);
        assert_eq!(heads, [6, 9]);
        assert_eq!(layers.first(), Some(&15));
    }
}
