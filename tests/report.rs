//! `distillery report`: the page for a run of the test ops shows every
//! stage with its cache state and run time, and the page builders (charts,
//! tables, stage graph) produce well-formed, escaped HTML from metrics.

mod common;

use common::{Workspace, text};
use distillery_ops::model::LlamaConfig;
use distillery_ops::prune::Keep;
use distillery_ops::prune::report::{ModelSizes, PruneMethod, PruningReport};
use distillery_ops::report::format::escape;
use distillery_ops::report::{
    Report, StageStatus, StageView, dag_svg, heldout_comparison_chart, loss_chart, lr_chart,
    markdown_table, nice_ticks, perplexity_chart, render,
};
use distillery_ops::train::metrics::{MetricsKind, MetricsLine, read_metrics};

const RECIPE: &str = "\
name: \"demo <b> & co\"
seed: 7
stages:
  a:
    op: emit
    with: { text: \"hello \", repeat: 2 }
  b:
    op: emit
    with: { text: world }
  joined:
    op: concat
    inputs: { parts: [a, b] }
    with: { separator: \"|\" }
  counted:
    op: count
    inputs: { source: joined }
    with: { steps: 3 }
  side:
    op: emit
    with: { text: unrelated }
";

const VOID: [&str; 6] = ["meta", "br", "img", "hr", "input", "link"];

/// Checks that every element opened is closed in order (void elements and
/// `<x/>` aside); returns the first problem.
fn check_balanced(html: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after
            .find('>')
            .ok_or_else(|| format!("unclosed `<` at {:?}", &after[..after.len().min(40)]))?;
        let tag = &after[..end];
        rest = &after[end + 1..];
        if tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name.trim() => {}
                other => return Err(format!("`</{name}>` closes {other:?}")),
            }
            continue;
        }
        let name: String = tag
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("not a tag: `<{tag}>`"));
        }
        if !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("never closed: {stack:?}"))
    }
}

/// `metrics.jsonl` of a run in progress, its last line half-written.
fn metrics() -> Vec<MetricsLine> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    std::fs::write(
        &path,
        r#"{"kind":"eval","step":0,"tokens":0,"elapsed_s":3.0,"heldout_loss":6.5,"heldout_ppl":665.1,"heldout_tokens":4080}
{"kind":"train","step":1,"tokens":2048,"loss":2.94,"lr":0.00006,"grad_norm":12.1,"tokens_per_s":33.5,"elapsed_s":94.2}
{"kind":"train","step":2,"tokens":4096,"loss":2.51,"lr":0.00012,"grad_norm":9.0,"tokens_per_s":34.0,"elapsed_s":150.0}
{"kind":"train","step":3,"tokens":6144,"loss":2.20,"lr":0.00018,"grad_norm":7.5,"tokens_per_s":34.1,"elapsed_s":210.0}
{"kind":"eval","step":3,"tokens":6144,"elapsed_s":215.0,"heldout_loss":4.1,"heldout_ppl":60.3,"heldout_tokens":4080}
{"kind":"train","step":4,"tok"#,
    )
    .unwrap();
    read_metrics(&path).unwrap()
}

const TABLE_MD: &str = "| | teacher | pruned |\n|---|---:|---:|\n| parameters | 134.5M | 84.0M |\n| heldout_ppl perplexity (2048 tokens) | 9.876 | 512.3 |\n";

fn smollm2_config(hidden: usize, ffn: usize) -> LlamaConfig {
    LlamaConfig::from_json(&serde_json::json!({
        "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "vocab_size": 49152, "tie_word_embeddings": true
    }))
    .unwrap()
}

#[test]
fn metrics_lines_parse_and_a_half_written_line_is_skipped() {
    let lines = metrics();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0].kind, MetricsKind::Eval);
    assert_eq!(lines[0].heldout_ppl, Some(665.1));
    assert_eq!(lines[1].loss, Some(2.94));
    assert_eq!(lines[3].tokens, 6144);
    assert_eq!(lines[4].heldout_loss, Some(4.1));
}

#[test]
fn charts_have_axes_ticks_labels_and_a_line_per_series() {
    let lines = metrics();
    let svg = loss_chart(&lines);
    check_balanced(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("Training loss"));
    assert!(svg.contains(">tokens seen</text>"));
    assert!(svg.contains("class=\"axis\""));
    assert_eq!(svg.matches("<polyline").count(), 1);
    // Three training points: the polyline has three coordinates, each drawn.
    let points = svg
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(points.split(' ').count(), 3, "{points}");
    assert_eq!(svg.matches("<circle").count(), 3);
    assert!(svg.matches("class=\"xtick\"").count() >= 3);
    assert!(svg.matches("class=\"ytick\"").count() >= 3);
    // x ticks run from 0 to at least the last token count.
    assert!(svg.contains(">0</text>"), "{svg}");

    let ppl = perplexity_chart(&lines);
    check_balanced(&ppl).unwrap();
    assert_eq!(ppl.matches("<circle").count(), 2, "two evaluations");
    let lr = lr_chart(&lines);
    check_balanced(&lr).unwrap();
    assert!(lr.contains("Learning rate"));
    assert!(lr.contains("e-5") || lr.contains("0.0001"), "{lr}");

    // Several stages on one chart: a line each for those with evaluations.
    let train_only: Vec<MetricsLine> = lines
        .iter()
        .filter(|l| l.heldout_loss.is_none())
        .cloned()
        .collect();
    let svg = heldout_comparison_chart(&[
        ("distilled", &lines),
        ("not evaluated", &train_only),
        ("scratch", &lines[..1]),
    ]);
    check_balanced(&svg).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
    assert!(
        svg.contains(">distilled</text>") && svg.contains(">scratch</text>"),
        "{svg}"
    );
    assert!(!svg.contains("not evaluated"), "{svg}");

    let empty = loss_chart(&[]);
    assert!(!empty.contains("<svg"));
    assert!(empty.contains("no data yet"));
    check_balanced(&empty).unwrap();
}

#[test]
fn ticks_are_round_and_cover_the_range() {
    let t = nice_ticks(0.0, 6144.0, 6);
    assert_eq!(t.first(), Some(&0.0));
    assert!(*t.last().unwrap() >= 6144.0);
    assert!(t.len() >= 4 && t.len() <= 9, "{t:?}");
    let t = nice_ticks(2.2, 2.94, 5);
    assert!(t[0] <= 2.2 && *t.last().unwrap() >= 2.94, "{t:?}");
    // A single value still gets a range.
    assert!(nice_ticks(3.0, 3.0, 5).len() >= 2);
}

#[test]
fn evaluation_tables_become_html_tables() {
    let html = markdown_table(TABLE_MD);
    check_balanced(&html).unwrap();
    assert!(html.contains("<thead><tr><th></th><th class=\"num\">teacher</th>"));
    assert!(html.contains("<td class=\"num\">9.876</td>"));
    assert_eq!(html.matches("<tr>").count(), 3);
    assert!(markdown_table("a < b").contains("<p>a &lt; b</p>"));
}

#[test]
fn the_models_table_counts_parameters_as_the_model_does() {
    // Biases on the attention projections count: 2 layers of q (8), k (4),
    // v (4) and o (8) bias entries on top of 1,448 weights.
    let config = LlamaConfig::from_json(&serde_json::json!({
        "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
        "vocab_size": 32, "tie_word_embeddings": true, "attention_bias": true
    }))
    .unwrap();
    let mut stage = StageView::new(
        "tiny",
        "load_model",
        "24cc614654edbbbb",
        StageStatus::Stored,
    );
    stage.model = Some(config);
    let report = Report {
        recipe: "r".into(),
        recipe_path: "r.yaml".into(),
        store: "/tmp/store".into(),
        generated: "2026-11-26 20:00 UTC".into(),
        stages: vec![stage],
        edges: vec![],
    };
    let html = render(&report);
    assert!(html.contains("<td class=\"num\">1496</td>"), "{html}");
}

#[test]
fn text_is_escaped_everywhere_it_goes() {
    assert_eq!(
        escape("<a href=\"x\">&'"),
        "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
    );
    let stages = vec![
        StageView::new(
            "<script>x",
            "load_model",
            "abcdef0123456789",
            StageStatus::Stored,
        ),
        StageView::new(
            "b",
            "evaluate",
            "0123456789abcdef",
            StageStatus::NotRun("never run".into()),
        ),
    ];
    let svg = dag_svg(&stages, &[(0, 1)]);
    check_balanced(&svg).unwrap();
    assert!(!svg.contains("<script>"));
    assert!(svg.contains("&lt;script&gt;x"));
    assert!(svg.contains("class=\"node stored\""));
    assert!(svg.contains("class=\"node notrun\""));
}

#[test]
fn the_page_shows_graph_models_curves_and_tables() {
    let mut teacher = StageView::new(
        "teacher",
        "load_model",
        "e06eeffe5268aaaa",
        StageStatus::Stored,
    );
    teacher.duration_secs = Some(1.3);
    teacher.output_bytes = Some(540_000_000);
    let teacher_config = smollm2_config(576, 1536);
    teacher.model = Some(teacher_config.clone());
    let mut pruned = StageView::new("pruned", "prune", "24cc614654edbbbb", StageStatus::Stored);
    let pruned_config = smollm2_config(448, 1024);
    pruned.model = Some(pruned_config.clone());
    pruned.pruning = Some(PruningReport {
        method: PruneMethod::Importance,
        depth_metric: None,
        source: ModelSizes::of(&teacher_config),
        result: ModelSizes::of(&pruned_config),
        dropped_layers: vec![],
        kept: Keep::identity(&pruned_config),
    });
    let mut distilled = StageView::new(
        "distilled",
        "distill",
        "24d61771eb27cccc",
        StageStatus::Partial { recent: true },
    );
    distilled.metrics = metrics();
    let mut scratch = StageView::new(
        "scratch",
        "teacher_correction",
        "31d61771eb27eeee",
        StageStatus::Stored,
    );
    scratch.metrics = metrics();
    let mut compare = StageView::new(
        "compare",
        "evaluate",
        "9e7010cb1c26dddd",
        StageStatus::Stored,
    );
    compare.duration_secs = Some(75.0);
    compare.eval_table = Some(TABLE_MD.into());
    let report = Report {
        recipe: "width <pruning>".into(),
        recipe_path: "recipes/x.yaml".into(),
        store: "/tmp/store".into(),
        generated: "2026-11-26 20:00 UTC".into(),
        stages: vec![teacher, pruned, distilled, scratch, compare],
        edges: vec![
            (0, 1),
            (0, 2),
            (1, 2),
            (1, 3),
            (0, 4),
            (1, 4),
            (2, 4),
            (3, 4),
        ],
    };
    let html = render(&report);
    check_balanced(&html).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<h1>width &lt;pruning&gt;</h1>"));
    assert!(!html.contains("<script"), "the page is static");
    assert!(
        !html.contains("http://") || !html.contains("src=\"http"),
        "nothing fetched"
    );
    assert_eq!(html.matches("<svg class=\"dag\"").count(), 1);
    assert_eq!(
        html.matches("<svg class=\"chart\"").count(),
        9,
        "both stages' loss, held-out loss, perplexity, lr, and their held-out losses together"
    );
    assert!(html.contains("Held-out loss, every training stage"));
    assert!(
        html.contains("134.5M → 84.0M"),
        "parameters before and after pruning"
    );
    assert!(html.contains("576 → 448"));
    assert!(html.contains("running · step 3"));
    assert!(html.contains("cached · 1.3 s"));
    assert!(html.contains("<td class=\"num\">512.3</td>"));
    assert!(html.contains("pruned by importance"));
}

fn report_of(ws: &Workspace, extra: &[&str]) -> (String, std::path::PathBuf) {
    let mut args = vec!["report", "recipe.yaml"];
    args.extend_from_slice(extra);
    // No `xdg-open` on the PATH: `--open` must then only print the path.
    let out = ws.cmd(&args).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let path = ws.dir.path().join(text(&out.stdout).trim());
    let html = std::fs::read_to_string(&path).unwrap();
    (html, path)
}

#[test]
fn report_of_a_real_run_shows_every_stage_cached_with_its_time() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    let out = ws.run(&["run", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let (html, path) = report_of(&ws, &[]);
    assert_eq!(
        path,
        ws.store().join("reports").join("demo__b____co.html"),
        "default: in the store, named after the recipe"
    );
    check_balanced(&html).unwrap();
    assert!(
        html.contains("<h1>demo &lt;b&gt; &amp; co</h1>"),
        "recipe name escaped"
    );
    assert!(!html.contains("<b> & co"));
    assert_eq!(html.matches("<g class=\"node stored\">").count(), 5);
    for stage in ["a", "b", "joined", "counted", "side"] {
        assert!(html.contains(&format!("<tr><th>{stage}</th>")), "{stage}");
    }
    // Every stored stage is labelled with the time its manifest recorded.
    assert_eq!(
        html.matches("cached · ").count(),
        2 * 5,
        "node label and tooltip"
    );
    assert_eq!(html.matches("<path class=\"edge\"").count(), 3);

    // A changed parameter: that stage and its descendant are not stored.
    ws.write(
        "recipe.yaml",
        &RECIPE.replace("separator: \"|\"", "separator: \"+\""),
    );
    let out_file = ws.path("out/page.html");
    let (html, path) = report_of(&ws, &["-o", out_file.to_str().unwrap(), "--open"]);
    assert_eq!(path, out_file);
    check_balanced(&html).unwrap();
    assert_eq!(html.matches("<g class=\"node stored\">").count(), 3);
    assert_eq!(html.matches("<g class=\"node notrun\">").count(), 2);
    assert!(html.contains("changed: params.separator"));
}

#[test]
fn report_leaves_the_store_as_it_was() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    assert_eq!(ws.run(&["run", "recipe.yaml"]).status.code(), Some(0));
    let stat_cache = ws.store().join("stat-cache.json");
    let before = std::fs::metadata(&stat_cache)
        .ok()
        .map(|m| m.modified().unwrap());
    let out = ws.path("page.html");
    report_of(&ws, &["-o", out.to_str().unwrap()]);
    let after = std::fs::metadata(&stat_cache)
        .ok()
        .map(|m| m.modified().unwrap());
    assert_eq!(before, after);
    assert!(!ws.store().join("reports").exists());
}

#[test]
fn an_edge_that_skips_a_column_runs_in_a_lane_below_the_stages() {
    let stages: Vec<StageView> = ["a", "b", "c"]
        .iter()
        .map(|n| StageView::new(n, "emit", "0123456789abcdef", StageStatus::Stored))
        .collect();
    let svg = dag_svg(&stages, &[(0, 1), (1, 2), (0, 2)]);
    check_balanced(&svg).unwrap();
    let paths: Vec<&str> = svg
        .split("<path class=\"edge\" d=\"")
        .skip(1)
        .map(|p| p.split('"').next().unwrap())
        .collect();
    assert_eq!(paths.len(), 3);
    // The direct edges are one curve each; the skipping one crosses b's
    // column in a straight lane, below b's box (y > 16 + 60).
    assert!(!paths[0].contains(" L") && !paths[1].contains(" L"));
    let lane = paths[2].split(" L").nth(1).expect("a lane segment");
    let y: f64 = lane
        .split(',')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(y > 76.0, "{}", paths[2]);
}
