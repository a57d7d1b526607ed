//! The sizes a pruned model should have, axis by axis, and the checks that
//! say, before anything runs, why a target does not fit a model. Ranking
//! ([`super::rank`]) and selection ([`super::select`]) both read them.

use crate::model::LlamaConfig;

/// How many units of each axis to keep. `None` leaves an axis whole and in
/// its original order (only targeted axes are re-ordered, as in ModelOpt).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Targets {
    /// Hidden size (embedding channels, shared by every layer).
    pub hidden: Option<usize>,
    /// MLP neurons per layer (`intermediate_size`).
    pub ffn: Option<usize>,
    /// Query heads per layer in total; a multiple of the kv groups kept.
    pub heads: Option<usize>,
    /// Key/value groups per layer; each is kept or dropped whole, with its
    /// query heads.
    pub kv_groups: Option<usize>,
    pub depth: Option<DepthTarget>,
}

/// What to do with the layers.
#[derive(Debug, Clone, PartialEq)]
pub enum DepthTarget {
    /// Keep the `n` highest-ranked layers (not necessarily contiguous).
    Layers(usize),
    /// Keep `n` layers by dropping the one contiguous block of `L - n`
    /// layers whose removal hurts least (the last of the block ranking).
    Contiguous(usize),
    /// Drop these layers (0-based indices).
    Drop(Vec<usize>),
}

/// A target that does not fit the model: the field as a recipe spells it
/// (`heads`, `drop`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetProblem {
    pub field: &'static str,
    pub message: String,
}

impl Targets {
    /// Every way these targets do not fit `config`: a size of 0 or beyond
    /// the model's, heads that do not split evenly over the kv groups kept,
    /// more heads per group than a group has, a `drop` list that names a
    /// missing layer, a layer twice, or every layer.
    pub fn problems(&self, config: &LlamaConfig) -> Vec<TargetProblem> {
        let c = config;
        let mut out = Vec::new();
        let mut push =
            |field: &'static str, message: String| out.push(TargetProblem { field, message });
        let layers = c.num_hidden_layers;
        let n_depth = match &self.depth {
            Some(DepthTarget::Layers(n)) | Some(DepthTarget::Contiguous(n)) => Some(*n),
            _ => None,
        };
        for (field, target, size, name) in [
            ("hidden", self.hidden, c.hidden_size, "hidden_size"),
            ("ffn", self.ffn, c.intermediate_size, "intermediate_size"),
            (
                "heads",
                self.heads,
                c.num_attention_heads,
                "num_attention_heads",
            ),
            (
                "kv_groups",
                self.kv_groups,
                c.num_key_value_heads,
                "num_key_value_heads",
            ),
            ("layers", n_depth, layers, "num_hidden_layers"),
        ] {
            match target {
                Some(0) => push(field, format!("`{field}` must be at least 1")),
                Some(n) if n > size => push(
                    field,
                    format!("`{field}: {n}` is more than the model's {name} {size}"),
                ),
                _ => {}
            }
        }
        let per_group = c.num_attention_heads / c.num_key_value_heads.max(1);
        let groups_kept = self.kv_groups.unwrap_or(c.num_key_value_heads);
        if let Some(n) = self.heads
            && n > 0
            && groups_kept > 0
            && groups_kept <= c.num_key_value_heads
        {
            if !n.is_multiple_of(groups_kept) {
                push(
                    "heads",
                    format!(
                        "`heads: {n}` is not a multiple of the {groups_kept} kv groups kept: \
                         query heads are pruned inside each kv group, so every group keeps \
                         heads / kv_groups of them{}",
                        if self.kv_groups.is_none() {
                            " (set `kv_groups` too to drop whole groups; with multi-head \
                             attention every head is its own group)"
                        } else {
                            ""
                        }
                    ),
                );
            } else if n / groups_kept > per_group {
                push(
                    "heads",
                    format!(
                        "`heads: {n}` over {groups_kept} kv groups is {} query heads per group, \
                         but each group of the model has {per_group}",
                        n / groups_kept
                    ),
                );
            }
        }
        if let Some(DepthTarget::Drop(drop)) = &self.depth {
            let mut seen = vec![false; layers];
            for &l in drop {
                if l >= layers {
                    push(
                        "drop",
                        format!(
                            "`drop` names layer {l}, but the model has {layers} layers, \
                             numbered from 0 to {}",
                            layers.saturating_sub(1)
                        ),
                    );
                } else if seen[l] {
                    push("drop", format!("`drop` names layer {l} twice"));
                } else {
                    seen[l] = true;
                }
            }
            if seen.iter().all(|&s| s) {
                push("drop", format!("`drop` would remove all {layers} layers"));
            }
        }
        out
    }

    /// True when nothing would be pruned.
    pub fn is_empty(&self) -> bool {
        self.hidden.is_none()
            && self.ffn.is_none()
            && self.heads.is_none()
            && self.kv_groups.is_none()
            && self.depth.is_none()
    }
}
