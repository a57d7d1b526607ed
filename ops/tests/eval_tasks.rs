//! Benchmarks and held-out text: every benchmark file of the development
//! assets loads, a malformed line names its file and line, the accuracies,
//! standard errors and perplexities of a tiny random model equal a float64
//! oracle computed here, and the real teacher reproduces the reference
//! figures of `reference/teacher_eval_first100.json` (within 0.02) and
//! `reference/teacher_perplexity.json` (within 1%).

mod model_support;

use distillery_ops::eval::multiple_choice::{Request, ScoringSetup, run_task, score_requests};
use distillery_ops::eval::tasks::{Candidate, TaskItem, TaskKind, load_task_file, with_shots};
use distillery_ops::eval::text_perplexity::{read_text_file, run_text, text_windows};
use distillery_ops::eval::tokenize::EvalTokenizer;
use distillery_ops::model::LlamaConfig;
use model_support::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use testkit::require_asset;
use tokenizers::Tokenizer;

// ---------------------------------------------------------------------------
// Loading.

fn benchmark_files() -> Option<Vec<PathBuf>> {
    let dir = require_asset("benchmarks")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.zst"))
        .collect();
    files.sort();
    Some(files)
}

fn line_count(path: &Path) -> usize {
    let bytes = zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn every_benchmark_file_in_the_assets_loads() {
    let Some(files) = benchmark_files() else {
        return;
    };
    assert_eq!(files.len(), 18, "{files:?}");
    let mut total = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let file = load_task_file(path, &name, None).unwrap_or_else(|e| panic!("{e:#}"));
        let want = if name.starts_with("winogrande") {
            TaskKind::Partial
        } else if name.starts_with("lambada") {
            TaskKind::Greedy
        } else {
            TaskKind::MultipleChoice
        };
        assert_eq!(file.kind, want, "{name}");
        assert_eq!(file.items.len(), line_count(path), "{name}");
        for item in &file.items {
            assert!(item.gold < item.candidates.len(), "{name}:{}", item.line);
            if want == TaskKind::Partial {
                // Partial scoring shares one continuation.
                assert!(
                    item.candidates
                        .windows(2)
                        .all(|w| w[0].continuation == w[1].continuation)
                );
            }
        }
        // The kind, when given, must agree with the file.
        let other = if want == TaskKind::Greedy {
            TaskKind::MultipleChoice
        } else {
            TaskKind::Greedy
        };
        let err = load_task_file(path, &name, Some(other)).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("{name}:1: ")),
            "{err:#}"
        );
        total += file.items.len();
    }
    // The README's count of items over all files.
    assert_eq!(total, 47_120);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if name.ends_with(".zst") {
        let bytes = zstd::encode_all(text.as_bytes(), 3).unwrap();
        std::fs::write(&path, bytes).unwrap();
    } else {
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    path
}

#[test]
fn a_malformed_line_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good_mc = r#"{"id": 1, "context": "Q: 1+1?\nA:", "choices": [" 2", " 3"], "gold": 0, "raw": {"x": [1, 2]}}"#;
    let good_partial = r#"{"contexts": ["a", "b"], "continuation": " c", "gold": 1}"#;
    let good_greedy = r#"{"context": "the end of the", "target": " story"}"#;
    let cases: &[(&str, &str, &str)] = &[
        (
            good_mc,
            "{\"context\": \"x\", \"choices\": [\" a\"",
            "not a JSON object",
        ),
        (good_mc, "[1, 2]", "not a JSON object"),
        (
            good_mc,
            r#"{"context": "x", "choices": [" a", " b"], "gold": 2}"#,
            "`gold` is 2, but `choices` has 2 entries",
        ),
        (
            good_mc,
            r#"{"context": "x", "choices": [" a", " b"], "gold": -1}"#,
            "`gold` must be a whole number",
        ),
        (
            good_mc,
            r#"{"context": "x", "choices": [" a", " b"]}"#,
            "no `gold` field",
        ),
        (
            good_mc,
            r#"{"choices": [" a", " b"], "gold": 0}"#,
            "no `context` field",
        ),
        (
            good_mc,
            r#"{"context": "x", "choices": [" a", 7], "gold": 0}"#,
            "`choices[1]` must be a string, found a number",
        ),
        (
            good_mc,
            r#"{"context": "x", "choices": [" a"], "gold": 0}"#,
            "`choices` has 1 entries; it needs at least 2",
        ),
        (
            good_mc,
            r#"{"context": "x", "choices": [" a", ""], "gold": 0}"#,
            "choice 1 is empty",
        ),
        (good_mc, good_partial, "a partial item"),
        (
            good_mc,
            r#"{"text": "hello"}"#,
            "no `context` field (a multiple_choice item has `context`, `choices`, `gold`)",
        ),
        (
            good_partial,
            r#"{"contexts": "a", "continuation": " c", "gold": 0}"#,
            "`contexts` must be a list of strings, found a string",
        ),
        (
            good_greedy,
            r#"{"context": "x", "target": ""}"#,
            "`target` is empty",
        ),
        (
            good_greedy,
            r#"{"context": 3, "target": " y"}"#,
            "`context` must be a string",
        ),
    ];
    for (i, (good, bad, why)) in cases.iter().enumerate() {
        for ext in ["jsonl", "jsonl.zst"] {
            let name = format!("case{i}.{ext}");
            // Line 3 is the bad one (line 2 is blank and skipped).
            let path = write(dir.path(), &name, &format!("{good}\n\n{bad}\n{good}\n"));
            let label = format!("benchmarks/{name}");
            let err = format!("{:#}", load_task_file(&path, &label, None).unwrap_err());
            assert!(
                err.starts_with(&format!("{label}:3: ")) && err.contains(why),
                "case {i} ({ext}): {err}"
            );
        }
    }
    let unknown = write(dir.path(), "text.jsonl", "{\"text\": \"hello\"}\n");
    let err = format!(
        "{:#}",
        load_task_file(&unknown, "text.jsonl", None).unwrap_err()
    );
    assert!(
        err.starts_with(
            "text.jsonl:1: no `choices` (multiple choice), `contexts` (partial scoring) or `target`"
        ),
        "{err}"
    );
    let empty = write(dir.path(), "empty.jsonl", "\n \n");
    let err = format!(
        "{:#}",
        load_task_file(&empty, "empty.jsonl", None).unwrap_err()
    );
    assert!(err.contains("empty.jsonl: the file has no items"), "{err}");
    let missing = dir.path().join("missing.jsonl");
    let err = format!(
        "{:#}",
        load_task_file(&missing, "missing.jsonl", None).unwrap_err()
    );
    assert!(err.contains("missing.jsonl"), "{err}");
}

fn item(line: usize, pairs: &[(&str, &str)], gold: usize) -> TaskItem {
    TaskItem {
        line,
        candidates: pairs
            .iter()
            .map(|&(context, continuation)| Candidate {
                context: context.into(),
                continuation: continuation.into(),
            })
            .collect(),
        gold,
    }
}

#[test]
fn few_shot_prompts_are_seeded_and_never_show_the_item_itself() {
    let dev: Vec<TaskItem> = (0..6)
        .map(|i| {
            let ctx = format!("Q{i}:");
            item(i + 1, &[(&ctx, " yes"), (&ctx, " no")], i % 2)
        })
        .collect();
    let items = vec![
        dev[2].clone(),
        item(9, &[("Q9:", " up"), ("Q9:", " down")], 1),
    ];
    let a = with_shots(&items, &dev, 5, 7, "").unwrap();
    let b = with_shots(&items, &dev, 5, 7, "").unwrap();
    assert_eq!(a, b, "the same seed gives the same prompts");
    let c = with_shots(&items, &dev, 5, 8, "").unwrap();
    assert_ne!(a, c, "another seed gives other prompts");
    // The first item is dev[2]: its five examples are the five others.
    let prompt = &a[0].candidates[0].context;
    assert!(!prompt[..prompt.len() - 3].contains("Q2:"), "{prompt}");
    let blocks: Vec<&str> = prompt.split("\n\n").collect();
    assert_eq!(blocks.len(), 6, "{prompt}");
    assert_eq!(*blocks.last().unwrap(), "Q2:");
    for block in &blocks[..5] {
        let i: usize = block[1..2].parse().unwrap();
        let answer = if i.is_multiple_of(2) { " yes" } else { " no" };
        assert_eq!(*block, format!("Q{i}:{answer}"));
    }
    // Every candidate of an item shares the prompt; continuations are kept.
    assert!(
        a[1].candidates
            .iter()
            .all(|c| c.context.ends_with("\n\nQ9:") && c.context.len() > 10)
    );
    assert_eq!(a[1].candidates[1].continuation, " down");
    // A delimiter goes between a demonstration's context and continuation.
    let d = with_shots(&items[1..], &dev, 1, 7, "~").unwrap();
    assert!(d[0].candidates[0].context.contains(":~"), "{:?}", d[0]);
    // Too few examples is an error.
    let err = with_shots(&items[..1], &dev[..3], 3, 7, "").unwrap_err();
    assert!(err.to_string().contains("only 2 other items"), "{err}");
}

// ---------------------------------------------------------------------------
// Scoring on a tiny random model against a float64 oracle.

const WORDS: usize = 50;

/// Word `i` of the tiny tokenizer's vocabulary (lengths vary, so that the
/// per-byte normalization matters).
fn word(i: usize) -> String {
    let letters = "abcdefghijklmnopqrstuvwxyz".as_bytes();
    let base = letters[i % 26] as char;
    format!("{base}{}", "o".repeat(i % 7))
}

/// A word-level tokenizer over whitespace-separated words: ids are easy to
/// compute independently, and context + continuation always splits cleanly.
fn tiny_tokenizer() -> EvalTokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..WORDS)
        .map(|i| (word(i), serde_json::Value::from(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": word(0)}
    });
    let tokenizer: Tokenizer = json.to_string().parse().unwrap();
    EvalTokenizer::new(tokenizer).unwrap()
}

fn ids_of(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|w| (0..WORDS).find(|&i| word(i) == w).unwrap() as u32)
        .collect()
}

fn phrase(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|_| word(rng.below(WORDS)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per-position log-probabilities of `tokens[1..]` given the prefix, and
/// whether each is the argmax, in f64.
fn oracle(c: &LlamaConfig, sd: &distillery_ops::io::StateDict, tokens: &[u32]) -> Vec<(f64, bool)> {
    let out = reference_forward(c, sd, &tokens[..tokens.len() - 1]);
    let v = c.vocab_size;
    (0..tokens.len() - 1)
        .map(|t| {
            let logits = &out.logits[t * v..(t + 1) * v];
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            let target = tokens[t + 1] as usize;
            let first_max = logits.iter().position(|&l| l == max).unwrap();
            (logits[target] - lse, first_max == target)
        })
        .collect()
}

/// The oracle's (log-likelihood, greedy) of a continuation.
fn oracle_pair(
    c: &LlamaConfig,
    sd: &distillery_ops::io::StateDict,
    context: &str,
    continuation: &str,
) -> (f64, bool) {
    let ctx = ids_of(context);
    let cont = ids_of(continuation);
    let mut all = ctx.clone();
    all.extend(&cont);
    let per = oracle(c, sd, &all);
    let tail = &per[ctx.len() - 1..];
    (tail.iter().map(|p| p.0).sum(), tail.iter().all(|p| p.1))
}

fn argmax_first(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn proportion_stderr(p: f64, n: usize) -> f64 {
    (p * (1.0 - p) / (n as f64 - 1.0)).sqrt()
}

fn setup(tok: &EvalTokenizer, batch: usize) -> ScoringSetup<'_> {
    ScoringSetup {
        tokenizer: tok,
        delimiter: "",
        batch,
        max_len: 64,
        empty_context: 0,
    }
}

#[test]
fn accuracies_and_standard_errors_equal_a_float64_oracle() {
    let c = cfg_gqa();
    assert_eq!(c.vocab_size, WORDS);
    let mut rng = Rng::new(21);
    let sd = random_weights(&c, &mut rng);
    let model = build(&c, &sd);
    let tok = tiny_tokenizer();
    assert!(tok.prefix().is_empty());

    // Multiple choice: 3 or 4 choices of 1 to 3 words after a shared context.
    let mut items = Vec::new();
    for line in 1..=24 {
        let ctx_words = 1 + rng.below(6);
        let context = phrase(&mut rng, ctx_words);
        let n = 3 + rng.below(2);
        let choices: Vec<String> = (0..n)
            .map(|_| {
                let words = 1 + rng.below(3);
                format!(" {}", phrase(&mut rng, words))
            })
            .collect();
        let pairs: Vec<(&str, &str)> = choices
            .iter()
            .map(|ch| (context.as_str(), ch.as_str()))
            .collect();
        items.push(item(line, &pairs, rng.below(n)));
    }
    let (mut right, mut right_norm, mut norm_differs) = (0, 0, 0);
    for it in &items {
        let lps: Vec<f64> = it
            .candidates
            .iter()
            .map(|cand| oracle_pair(&c, &sd, &cand.context, &cand.continuation).0)
            .collect();
        let norm: Vec<f64> = lps
            .iter()
            .zip(&it.candidates)
            .map(|(lp, cand)| lp / cand.continuation.len() as f64)
            .collect();
        right += usize::from(argmax_first(&lps) == it.gold);
        right_norm += usize::from(argmax_first(&norm) == it.gold);
        norm_differs += usize::from(argmax_first(&lps) != argmax_first(&norm));
    }
    let n = items.len();
    let (acc, acc_norm) = (right as f64 / n as f64, right_norm as f64 / n as f64);
    // The case must exercise both metrics: some right, some wrong, and some
    // items whose pick changes with the per-byte normalization.
    assert!(
        acc > 0.0 && acc < 1.0 && acc_norm > 0.0 && norm_differs > 0,
        "{acc} {acc_norm} {norm_differs}: pick another seed"
    );
    for batch in [1, 5] {
        let run = run_task(
            &model,
            TaskKind::MultipleChoice,
            &items,
            &setup(&tok, batch),
            &mut |_| {},
        )
        .unwrap();
        let s = run.scores;
        assert_eq!(s.n, n);
        assert_eq!(s.acc, acc, "batch {batch}");
        assert_eq!(s.acc_norm, Some(acc_norm), "batch {batch}");
        assert!((s.acc_stderr.unwrap() - proportion_stderr(acc, n)).abs() < 1e-12);
        assert!((s.acc_norm_stderr.unwrap() - proportion_stderr(acc_norm, n)).abs() < 1e-12);
        assert_eq!(
            run.sequences,
            items.iter().map(|i| i.candidates.len()).sum::<usize>()
        );
    }

    // Partial scoring: two contexts, one continuation; no acc_norm.
    let mut partial = Vec::new();
    for line in 1..=16 {
        let stem_words = 1 + rng.below(3);
        let stem = phrase(&mut rng, stem_words);
        let a = rng.below(WORDS);
        let b = (a + 1 + rng.below(WORDS - 1)) % WORDS;
        let (a, b) = (word(a), word(b));
        let cont_words = 1 + rng.below(3);
        let cont = format!(" {}", phrase(&mut rng, cont_words));
        let (ca, cb) = (format!("{stem} {a}"), format!("{stem} {b}"));
        partial.push(item(line, &[(&ca, &cont), (&cb, &cont)], rng.below(2)));
    }
    let right = partial
        .iter()
        .filter(|it| {
            let lps: Vec<f64> = it
                .candidates
                .iter()
                .map(|cand| oracle_pair(&c, &sd, &cand.context, &cand.continuation).0)
                .collect();
            argmax_first(&lps) == it.gold
        })
        .count();
    let run = run_task(
        &model,
        TaskKind::Partial,
        &partial,
        &setup(&tok, 3),
        &mut |_| {},
    )
    .unwrap();
    let p = right as f64 / partial.len() as f64;
    assert_eq!(run.scores.acc, p);
    assert!((run.scores.acc_stderr.unwrap() - proportion_stderr(p, partial.len())).abs() < 1e-12);
    assert_eq!(run.scores.acc_norm, None);

    // Greedy match: half the targets are the oracle's own greedy words.
    let mut greedy = Vec::new();
    let mut want_right = 0;
    for line in 1..=12 {
        let ctx_words = 2 + rng.below(4);
        let context = phrase(&mut rng, ctx_words);
        let target = if line % 2 == 0 {
            let mut ids = ids_of(&context);
            for _ in 0..2 {
                let out = reference_forward(&c, &sd, &ids);
                let last = &out.logits[(ids.len() - 1) * WORDS..];
                let best = argmax_first(last);
                ids.push(best as u32);
            }
            format!(
                " {} {}",
                word(ids[ids.len() - 2] as usize),
                word(ids[ids.len() - 1] as usize)
            )
        } else {
            format!(" {}", phrase(&mut rng, 2))
        };
        let (_, is_greedy) = oracle_pair(&c, &sd, &context, &target);
        if line % 2 == 0 {
            assert!(is_greedy);
        }
        want_right += usize::from(is_greedy);
        greedy.push(item(line, &[(&context, &target)], 0));
    }
    let run = run_task(
        &model,
        TaskKind::Greedy,
        &greedy,
        &setup(&tok, 4),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(run.scores.acc, want_right as f64 / greedy.len() as f64);
    assert!(want_right < greedy.len(), "some targets must miss");
}

#[test]
fn batched_scoring_equals_one_sequence_at_a_time() {
    let c = cfg_odd_tied();
    let mut rng = Rng::new(4);
    let sd = random_weights(&c, &mut rng);
    let model = build(&c, &sd);
    let requests: Vec<Request> = (0..7)
        .map(|i| Request {
            tokens: rng.tokens(3 + (i * 5) % 11, c.vocab_size),
            continuation: 1 + i % 3,
        })
        .collect();
    let one = score_requests(&model, &requests, 1, &mut |_| {});
    let mut done = 0;
    let many = score_requests(&model, &requests, 3, &mut |k| done += k);
    assert_eq!(done, requests.len());
    for ((a, b), r) in one.iter().zip(&many).zip(&requests) {
        assert!((a.logprob - b.logprob).abs() < 1e-4, "{a:?} {b:?}");
        assert_eq!(a.greedy, b.greedy);
        // And both equal the oracle.
        let per = oracle(&c, &sd, &r.tokens);
        let tail = &per[per.len() - r.continuation..];
        let want: f64 = tail.iter().map(|p| p.0).sum();
        assert!(
            (a.logprob - want).abs() < 1e-4 * want.abs().max(1.0),
            "{a:?} vs {want}"
        );
        assert_eq!(a.greedy, tail.iter().all(|p| p.1));
    }
}

#[test]
fn candidates_sharing_a_context_score_as_alone() {
    // Items of 1 to 4 candidates after a shared context of 16 to 28 tokens:
    // those of 3 and 4 short candidates share it through the cache (and a
    // group is cut into batches), the others are batched; every score
    // against the oracle.
    let c = cfg_gqa();
    let mut rng = Rng::new(12);
    let sd = random_weights(&c, &mut rng);
    let model = build(&c, &sd);
    let mut requests = Vec::new();
    for item in 0..5 {
        let context = rng.tokens(16 + (item * 7) % 13, c.vocab_size);
        for cand in 0..1 + item % 4 {
            let continuation = 1 + (item + cand) % 4;
            let mut tokens = context.clone();
            tokens.extend(rng.tokens(continuation, c.vocab_size));
            requests.push(Request {
                tokens,
                continuation,
            });
        }
    }
    for batch in [1, 2, 4] {
        let mut done = 0;
        let scored = score_requests(&model, &requests, batch, &mut |k| done += k);
        assert_eq!(done, requests.len());
        for (a, r) in scored.iter().zip(&requests) {
            let per = oracle(&c, &sd, &r.tokens);
            let tail = &per[per.len() - r.continuation..];
            let want: f64 = tail.iter().map(|p| p.0).sum();
            assert!(
                (a.logprob - want).abs() < 1e-4 * want.abs().max(1.0),
                "batch {batch}: {a:?} vs {want}"
            );
            assert_eq!(a.greedy, tail.iter().all(|p| p.1));
        }
    }
}

#[test]
fn text_perplexity_and_bits_per_byte_equal_a_float64_oracle() {
    let c = cfg_gqa();
    let mut rng = Rng::new(8);
    let sd = random_weights(&c, &mut rng);
    let model = build(&c, &sd);
    let tok = tiny_tokenizer();
    // Long enough that the NLL is summed over several slices of positions.
    let text = phrase(&mut rng, 420);
    let ids = ids_of(&text);
    let (seq, max) = (50, 7);
    let windows = text_windows(&tok, &text, seq, Some(max)).unwrap();
    assert_eq!(windows.windows.len(), max);
    let (mut nll, mut bytes) = (0.0, 0);
    for w in 0..max {
        let chunk = &ids[w * seq..(w + 1) * seq];
        assert_eq!(windows.windows[w], chunk);
        nll -= oracle(&c, &sd, chunk).iter().map(|p| p.0).sum::<f64>();
        // The tiny tokenizer decodes words joined by single spaces.
        bytes += chunk[1..]
            .iter()
            .map(|&t| word(t as usize))
            .collect::<Vec<_>>()
            .join(" ")
            .len();
    }
    let tokens = max * (seq - 1);
    let run = run_text(&model, &windows, 4, &mut |_| {}).unwrap();
    assert_eq!((run.windows, run.tokens, run.bytes), (max, tokens, bytes));
    let ppl = (nll / tokens as f64).exp();
    assert!((run.ppl - ppl).abs() < 1e-4 * ppl, "{} vs {ppl}", run.ppl);
    let bpb = nll / std::f64::consts::LN_2 / bytes as f64;
    assert!(
        (run.bits_per_byte - bpb).abs() < 1e-4 * bpb,
        "{} vs {bpb}",
        run.bits_per_byte
    );
    // Without a window limit the whole text is cut (the partial tail dropped).
    let all = text_windows(&tok, &text, seq, None).unwrap();
    assert_eq!(all.windows.len(), 420 / seq);
}

// ---------------------------------------------------------------------------
// The real teacher against the reference figures.

/// Whether to score every reference task and text (`DISTILLERY_EVAL_FULL=1`:
/// 84,000 tokens through the model, 10 to 30 minutes on two cores) instead
/// of a subset that covers each kind of scoring in about a third of that:
/// PIQA (multiple choice, `acc` and `acc_norm`), WinoGrande (partial
/// scoring), LAMBADA (greedy match) and the in-domain text (perplexity and
/// bits per byte). Each must be whole (100 items, 12 windows): the reference
/// gives only the aggregate figures.
fn full_reference_run() -> bool {
    std::env::var("DISTILLERY_EVAL_FULL").is_ok_and(|v| v == "1")
}

#[test]
fn the_teacher_reproduces_the_reference_figures() {
    let Some(gguf) = require_asset("models/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let Some(scores) = require_asset("reference/teacher_eval_first100.json") else {
        return;
    };
    let Some(ppl_ref) = require_asset("reference/teacher_perplexity.json") else {
        return;
    };
    let scores: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scores).unwrap()).unwrap();
    let ppl_ref: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ppl_ref).unwrap()).unwrap();
    let (model, assets) = distillery_ops::loader::load_model::<B>(&gguf, &device()).unwrap();
    let tok = EvalTokenizer::new(assets.tokenizer.unwrap()).unwrap();
    assert!(tok.prefix().is_empty(), "SmolLM2 adds no BOS");
    let full = full_reference_run();

    // Multiple choice (with acc_norm), partial scoring and greedy match.
    let tasks: Vec<&str> = if full {
        scores["scores"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    } else {
        vec![
            "piqa_validation",
            "winogrande_xl_validation",
            "lambada_openai_test",
        ]
    };
    let setup = ScoringSetup {
        tokenizer: &tok,
        delimiter: "",
        batch: 4,
        max_len: 1024,
        empty_context: 0,
    };
    let mut failures = Vec::new();
    for task in tasks {
        let Some(path) = require_asset(&format!("benchmarks/{task}.jsonl.zst")) else {
            return;
        };
        let file = load_task_file(&path, task, None).unwrap();
        let items = &file.items[..100];
        let run = run_task(&model, file.kind, items, &setup, &mut |_| {}).unwrap();
        let want = &scores["scores"][task];
        eprintln!(
            "{task}: acc {:.2} (reference {}), acc_norm {:?} (reference {}), {:.1} s, {:.2} items/s, {:.0} tokens/s",
            run.scores.acc,
            want["acc"],
            run.scores.acc_norm,
            want["acc_norm"],
            run.seconds,
            run.items_per_s,
            run.tokens_per_s
        );
        assert_eq!(run.scores.n as u64, want["n"].as_u64().unwrap());
        if (run.scores.acc - want["acc"].as_f64().unwrap()).abs() > 0.02 + 1e-9 {
            failures.push(format!("{task} acc {}", run.scores.acc));
        }
        if let Some(norm) = want["acc_norm"].as_f64() {
            let got = run.scores.acc_norm.unwrap();
            if (got - norm).abs() > 0.02 + 1e-9 {
                failures.push(format!("{task} acc_norm {got}"));
            }
        }
    }

    let texts: Vec<&str> = if full {
        ppl_ref["files"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    } else {
        vec!["heldout_ppl.txt"]
    };
    for name in texts {
        let Some(path) = require_asset(&format!("corpus/{name}.zst")) else {
            return;
        };
        let want = &ppl_ref["files"][name];
        let text = read_text_file(&path, name).unwrap();
        let windows = text_windows(&tok, &text, 512, Some(12)).unwrap();
        let run = run_text(&model, &windows, 1, &mut |_| {}).unwrap();
        eprintln!(
            "{name}: ppl {:.4} (reference {}), bits/byte {:.4} (reference {}), {} tokens, {:.1} s, {:.0} tokens/s",
            run.ppl,
            want["ppl"],
            run.bits_per_byte,
            want["bits_per_byte"],
            run.tokens,
            run.seconds,
            run.tokens_per_s
        );
        assert_eq!(run.tokens as u64, want["tokens_scored"].as_u64().unwrap());
        assert_eq!(run.windows as u64, want["windows"].as_u64().unwrap());
        for (field, got) in [("ppl", run.ppl), ("bits_per_byte", run.bits_per_byte)] {
            let reference = want[field].as_f64().unwrap();
            if (got / reference - 1.0).abs() > 0.01 {
                failures.push(format!("{name} {field} {got} vs {reference}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

// ---------------------------------------------------------------------------
// The `evaluate` op: parameters, plan-time checks, and its output files.

fn tiny_tokenizer_object() -> Tokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..WORDS)
        .map(|i| (word(i), serde_json::Value::from(i)))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": word(0)}
    })
    .to_string()
    .parse()
    .unwrap()
}

fn evaluate_op() -> std::sync::Arc<dyn distillery_engine::Op> {
    let mut registry = distillery_engine::OpRegistry::new();
    distillery_ops::register(&mut registry);
    registry.get("evaluate").unwrap().clone()
}

fn issues(with: serde_json::Value, data_bound: bool) -> Vec<String> {
    let op = evaluate_op();
    let params = op.normalize(with).unwrap();
    let mut inputs = std::collections::BTreeMap::new();
    if data_bound {
        inputs.insert("data".to_string(), Vec::new());
    }
    let ctx = distillery_engine::CheckContext {
        inputs: &inputs,
        recipe_dir: Path::new("."),
    };
    op.check(&params, &ctx)
        .into_iter()
        .map(|i| format!("{}: {}", i.path.join("."), i.message))
        .collect()
}

#[test]
fn evaluate_checks_its_parameters_at_plan_time() {
    assert_eq!(
        issues(serde_json::json!({}), false),
        [": nothing to evaluate: no `data` input, `tasks` or `texts`"]
    );
    assert!(issues(serde_json::json!({}), true).is_empty());
    let found = issues(
        serde_json::json!({
            "tasks": [
                {"path": "b/hellaswag.jsonl.zst", "shots": 5},
                {"path": "a/hellaswag.jsonl", "dev": "dev.jsonl"},
                {"path": "x.jsonl", "limit": 0, "name": ""},
            ],
            "texts": [{"path": "t.txt", "seq_len": 1, "windows": 0}],
        }),
        false,
    );
    let want = [
        "tasks.0.shots: 5 shots need a `dev` file to draw them from",
        "tasks.1: tasks 0 and 1 are both named `hellaswag`",
        "tasks.1.dev: `dev` is only read when `shots` is above 0",
        "tasks.2.name: a task's `name` cannot be empty",
        "tasks.2.limit: `limit` must be at least 1 (leave it out to score every item)",
        "texts.0.seq_len: `seq_len` must be at least 2, found 1",
        "texts.0.windows: `windows` must be at least 1 (leave it out to score the whole text)",
    ];
    assert_eq!(found, want);
    // Unknown fields are rejected when the parameters are read.
    let err = evaluate_op()
        .normalize(serde_json::json!({"tasks": [{"path": "x.jsonl", "shot": 1}]}))
        .unwrap_err();
    assert_eq!(err.path, ["tasks", "0", "shot"]);
    // The files are external inputs: hashed into the key, missing ones reported.
    let op = evaluate_op();
    let params = op
        .normalize(serde_json::json!({
            "tasks": [{"path": "t.jsonl", "shots": 1, "dev": "d.jsonl"}],
            "texts": [{"path": "x.txt"}],
        }))
        .unwrap();
    assert_eq!(
        op.external_files(&params),
        [PathBuf::from("t.jsonl"), "d.jsonl".into(), "x.txt".into()]
    );
    // The reference is one of the models; a bootstrap has enough resamples.
    let params = op
        .normalize(serde_json::json!({
            "texts": [{"path": "x.txt"}],
            "reference": "teachr",
            "resamples": 10,
        }))
        .unwrap();
    let upstream = |stage: &str| distillery_engine::op::UpstreamInfo {
        stage: stage.into(),
        op: "load_model".into(),
        params: serde_json::json!({}),
        inputs: Default::default(),
    };
    let inputs = [(
        "models".to_string(),
        vec![upstream("teacher"), upstream("student")],
    )]
    .into();
    let ctx = distillery_engine::CheckContext {
        inputs: &inputs,
        recipe_dir: Path::new("."),
    };
    let found: Vec<String> = op
        .check(&params, &ctx)
        .into_iter()
        .map(|i| {
            format!(
                "{}: {} ({})",
                i.path.join("."),
                i.message,
                i.help.unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            "reference: `teachr` is not one of the evaluated models (name a stage bound to `models`: `teacher`, `student`)",
            "resamples: `resamples` must be at least 100 for a 95% interval, found 10 ()",
        ]
    );
}

#[test]
fn evaluate_writes_metrics_and_a_side_by_side_table() {
    let c = cfg_gqa();
    let mut rng = Rng::new(33);
    let dir = tempfile::tempdir().unwrap();
    let assets = distillery_ops::io::hf_folder::HfAssets {
        tokenizer: Some(tiny_tokenizer_object()),
        ..Default::default()
    };
    let options = distillery_ops::io::hf_folder::HfWriteOptions::default();
    let models: Vec<PathBuf> = (0..2)
        .map(|m| {
            let sd = random_weights(&c, &mut rng);
            let path = dir.path().join(format!("model{m}"));
            build(&c, &sd).save_hf(&path, &assets, &options).unwrap();
            path
        })
        .collect();
    let recipe_dir = dir.path().join("recipe");
    std::fs::create_dir_all(recipe_dir.join("bench")).unwrap();
    let mut lines = String::new();
    for _ in 0..8 {
        let context = phrase(&mut rng, 3);
        let choices: Vec<String> = (0..3)
            .map(|_| format!(" {}", phrase(&mut rng, 2)))
            .collect();
        let gold = rng.below(3);
        lines.push_str(
            &serde_json::json!({"context": context, "choices": choices, "gold": gold}).to_string(),
        );
        lines.push('\n');
    }
    write(&recipe_dir.join("bench"), "mc.jsonl.zst", &lines);
    let text = phrase(&mut rng, 60);
    write(&recipe_dir, "held.txt", &text);
    let with = serde_json::json!({
        "batch": 3,
        "tasks": [
            {"path": "bench/mc.jsonl.zst", "limit": 5},
            {"path": "bench/mc.jsonl.zst", "name": "mc_2shot", "shots": 2, "dev": "bench/mc.jsonl.zst"},
        ],
        "texts": [{"path": "held.txt", "seq_len": 8, "windows": 3}],
        "reference": "teacher",
        "resamples": 200,
    });
    let op = evaluate_op();
    let params = op.normalize(with).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let ctx = distillery_engine::RunContext {
        stage: "report",
        inputs: [("models".to_string(), models.clone())].into(),
        input_stages: [(
            "models".to_string(),
            vec!["teacher".into(), "student".into()],
        )]
        .into(),
        absent: Default::default(),
        output_dir: out.clone(),
        scratch_dir: dir.path().join("scratch"),
        recipe_dir: recipe_dir.clone(),
        seed: 0,
        device: distillery_engine::Device::Cpu,
        progress: &distillery_engine::progress::NoProgress,
    };
    op.run(&params, &ctx).unwrap();

    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics.get("split").is_none(), "no data input: {metrics}");
    assert_eq!(metrics["tasks"][0]["name"], "mc");
    assert_eq!(metrics["tasks"][0]["kind"], "multiple_choice");
    assert_eq!(metrics["tasks"][1]["items"], 8);
    let tok = tiny_tokenizer();
    let file = load_task_file(&recipe_dir.join("bench/mc.jsonl.zst"), "mc", None).unwrap();
    let models_json = metrics["models"].as_array().unwrap();
    assert_eq!(models_json.len(), 2);
    for (m, path) in models_json.iter().zip(&models) {
        assert!(m.get("loss").is_none());
        let (model, _) = distillery_ops::model::Llama::<B>::load_hf(path, &device()).unwrap();
        // The stage's figures are the library's on the same items.
        let setup = ScoringSetup {
            tokenizer: &tok,
            delimiter: "",
            batch: 2,
            max_len: c.max_position_embeddings,
            empty_context: 0,
        };
        let run = run_task(
            &model,
            TaskKind::MultipleChoice,
            &file.items[..5],
            &setup,
            &mut |_| {},
        )
        .unwrap();
        let task = &m["tasks"]["mc"];
        assert_eq!(task["n"], 5);
        assert_eq!(task["acc"].as_f64().unwrap(), run.scores.acc);
        assert_eq!(task["acc_norm"].as_f64(), run.scores.acc_norm);
        assert_eq!(task["acc_stderr"].as_f64(), run.scores.acc_stderr);
        for key in [
            "acc_norm_stderr",
            "seconds",
            "items_per_s",
            "tokens_per_s",
            "tokens",
        ] {
            assert!(task[key].as_f64().is_some(), "{key}: {task}");
        }
        assert_eq!(m["tasks"]["mc_2shot"]["n"], 8);
        let windows = text_windows(&tok, &text, 8, Some(3)).unwrap();
        let text_run = run_text(&model, &windows, 1, &mut |_| {}).unwrap();
        let held = &m["texts"]["held"];
        assert_eq!(held["tokens"], 3 * 7);
        assert_eq!(held["windows"], 3);
        let ppl = held["ppl"].as_f64().unwrap();
        assert!(
            (ppl - text_run.ppl).abs() < 1e-5 * ppl,
            "{ppl} {}",
            text_run.ppl
        );
        assert!(held["bits_per_byte"].as_f64().unwrap() > 0.0);
    }
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    eprintln!(
        "{table}{}",
        std::fs::read_to_string(out.join("metrics.json")).unwrap()
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "| | teacher | student |", "{table}");
    assert_eq!(lines[1], "|---|---:|---:|");
    for label in [
        "| parameters |",
        "| mc acc (n=5) |",
        "| mc acc_norm |",
        "| mc_2shot acc (n=8) |",
        "| held perplexity (21 tokens) |",
        "| held bits per byte |",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(label)),
            "{label}\n{table}"
        );
    }
    let acc_row = lines
        .iter()
        .find(|l| l.starts_with("| mc acc (n=5)"))
        .unwrap();
    assert_eq!(acc_row.matches('±').count(), 2, "{acc_row}");

    // Each item's and window's outcome per model, consistent with the
    // metrics.
    let items: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("items.json")).unwrap()).unwrap();
    for (m, model) in items["models"].as_array().unwrap().iter().zip(models_json) {
        assert_eq!(m["stage"], model["stage"]);
        let right: Vec<f64> = m["tasks"]["mc"]["acc"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(right.len(), 5);
        assert_eq!(
            right.iter().sum::<f64>() / 5.0,
            model["tasks"]["mc"]["acc"].as_f64().unwrap()
        );
        assert_eq!(
            m["tasks"]["mc"]["chance"],
            serde_json::json!(vec![1.0 / 3.0; 5])
        );
        let windows = m["texts"]["held"].as_array().unwrap();
        assert_eq!(windows.len(), 3);
        let (nll, tokens) = windows.iter().fold((0.0, 0.0), |(n, t), w| {
            (n + w[0].as_f64().unwrap(), t + w[1].as_f64().unwrap())
        });
        assert_eq!(tokens, 21.0);
        let ppl = model["texts"]["held"]["ppl"].as_f64().unwrap();
        assert!(
            ((nll / tokens).exp() - ppl).abs() < 1e-12 * ppl,
            "{nll} {ppl}"
        );
    }
    // The student against the teacher: the estimates are the differences
    // of the metrics, inside their intervals.
    let paired = &metrics["paired"];
    assert_eq!(paired["reference"], "teacher");
    assert_eq!(paired["resamples"], 200);
    let comparison = &paired["comparisons"][0];
    assert_eq!(comparison["model"], "student");
    let differences: std::collections::BTreeMap<String, serde_json::Value> =
        comparison["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d[0].as_str().unwrap().to_string(), d[1].clone()))
            .collect();
    let figure = |m: usize, path: &[&str]| {
        path.iter()
            .fold(&models_json[m], |v, k| &v[*k])
            .as_f64()
            .unwrap()
    };
    let want = [
        (
            "mc acc",
            figure(1, &["tasks", "mc", "acc"]) - figure(0, &["tasks", "mc", "acc"]),
        ),
        (
            "mc_2shot acc_norm",
            figure(1, &["tasks", "mc_2shot", "acc_norm"])
                - figure(0, &["tasks", "mc_2shot", "acc_norm"]),
        ),
        (
            "held loss",
            figure(1, &["texts", "held", "ppl"]).ln() - figure(0, &["texts", "held", "ppl"]).ln(),
        ),
    ];
    for (name, want) in want {
        let d = &differences[name];
        let (estimate, low, high) = (
            d["estimate"].as_f64().unwrap(),
            d["low"].as_f64().unwrap(),
            d["high"].as_f64().unwrap(),
        );
        assert!((estimate - want).abs() < 1e-9, "{name}: {d} against {want}");
        assert!(low <= estimate && estimate <= high, "{name}: {d}");
    }
    assert!(
        table.contains(
            "Against `teacher`: differences with 95% paired bootstrap intervals (200 resamples"
        ),
        "{table}"
    );

    // The teacher's stage failed in this run: the student alone, with the
    // same figures, and the table says who is missing.
    let out = dir.path().join("out-partial");
    std::fs::create_dir_all(&out).unwrap();
    let ctx = distillery_engine::RunContext {
        absent: [("models".to_string(), vec![0])].into(),
        output_dir: out.clone(),
        ..ctx
    };
    op.run(&params, &ctx).unwrap();
    let partial: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(partial["absent"], serde_json::json!(["teacher"]));
    assert_eq!(partial["models"].as_array().unwrap().len(), 1);
    let (alone, beside) = (&partial["models"][0], &metrics["models"][1]);
    assert_eq!(alone["stage"], "student");
    assert_eq!(alone["tasks"]["mc"]["acc"], beside["tasks"]["mc"]["acc"]);
    assert_eq!(
        alone["texts"]["held"]["ppl"],
        beside["texts"]["held"]["ppl"]
    );
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.starts_with("| | student |"), "{table}");
    assert!(
        table.contains("Not evaluated (their stages failed in this run): teacher"),
        "{table}"
    );
    assert!(
        table.contains("No comparison with `teacher`: its stage failed in this run."),
        "{table}"
    );
    let ctx = distillery_engine::RunContext {
        absent: [("models".to_string(), vec![0, 1])].into(),
        ..ctx
    };
    let err = op.run(&params, &ctx).unwrap_err().to_string();
    assert!(err.contains("no model to evaluate"), "{err}");
}

#[test]
fn every_benchmark_file_scores_with_the_teacher() {
    let Some(files) = benchmark_files() else {
        return;
    };
    let Some(gguf) = require_asset("models/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let (model, assets) = distillery_ops::loader::load_model::<B>(&gguf, &device()).unwrap();
    let tok = EvalTokenizer::new(assets.tokenizer.unwrap()).unwrap();
    let setup = ScoringSetup {
        tokenizer: &tok,
        delimiter: "",
        batch: 4,
        max_len: 1024,
        empty_context: 0,
    };
    // One item per file keeps this to minutes on two cores; the reference
    // test above checks the scores themselves on whole tasks.
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let file = load_task_file(path, &name, None).unwrap();
        let run = run_task(&model, file.kind, &file.items[..1], &setup, &mut |_| {})
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(run.scores.n, 1, "{name}");
        assert!(run.scores.acc == 0.0 || run.scores.acc == 1.0, "{name}");
        assert!(
            run.tokens_per_s.is_finite() && run.tokens_per_s > 0.0,
            "{name}"
        );
    }
}
