//! `distillery dag`: the stage graph as text, Graphviz dot or Mermaid.

use super::{DagFormat, EXIT_OK, OverrideArgs, pipeline};
use clap::Args;
use distillery_engine::Pipeline;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct DagArgs {
    recipe: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: DagFormat,
    #[command(flatten)]
    overrides: OverrideArgs,
}

pub fn dag(args: DagArgs) -> u8 {
    let registry = pipeline::registry();
    let pipeline = match pipeline::load(&args.recipe, &args.overrides.set, &registry) {
        Ok(p) => p,
        Err(code) => return code,
    };
    print!("{}", render(&pipeline, args.format));
    EXIT_OK
}

/// (producer, slot, consumer) triples in recipe order.
fn edges(p: &Pipeline) -> Vec<(usize, &str, usize)> {
    let mut out = Vec::new();
    for (i, stage) in p.stages.iter().enumerate() {
        for (slot, producers) in &stage.inputs {
            for &j in producers {
                out.push((j, slot.as_str(), i));
            }
        }
    }
    out
}

pub fn render(p: &Pipeline, format: DagFormat) -> String {
    let mut s = String::new();
    match format {
        DagFormat::Text => {
            for i in p.graph.topological_order() {
                let stage = &p.stages[i];
                let _ = write!(s, "{} ({})", stage.name, stage.op.name());
                let inputs: Vec<String> = stage
                    .inputs
                    .iter()
                    .map(|(slot, producers)| {
                        let names: Vec<&str> = producers
                            .iter()
                            .map(|&j| p.stages[j].name.as_str())
                            .collect();
                        format!("{slot}: {}", names.join(", "))
                    })
                    .collect();
                if !inputs.is_empty() {
                    let _ = write!(s, " <- {}", inputs.join("; "));
                }
                s.push('\n');
            }
        }
        DagFormat::Dot => {
            let _ = writeln!(
                s,
                "digraph \"{}\" {{\n  rankdir=LR;",
                escape(&p.recipe.name)
            );
            for stage in &p.stages {
                let _ = writeln!(
                    s,
                    "  \"{}\" [shape=box, label=\"{}\\n{}\"];",
                    escape(&stage.name),
                    escape(&stage.name),
                    stage.op.name()
                );
            }
            for (from, slot, to) in edges(p) {
                let _ = writeln!(
                    s,
                    "  \"{}\" -> \"{}\" [label=\"{}\"];",
                    escape(&p.stages[from].name),
                    escape(&p.stages[to].name),
                    escape(slot)
                );
            }
            s.push_str("}\n");
        }
        DagFormat::Mermaid => {
            s.push_str("flowchart LR\n");
            for (i, stage) in p.stages.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  s{i}[\"{}<br/><i>{}</i>\"]",
                    stage.name,
                    stage.op.name()
                );
            }
            for (from, slot, to) in edges(p) {
                let _ = writeln!(s, "  s{from} -->|{slot}| s{to}");
            }
        }
    }
    s
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}
