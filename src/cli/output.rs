//! Printing: diagnostics through miette, JSON for scripts.

use distillery_engine::Diagnostic;
use distillery_engine::diagnostic::SourceDiagnostic;
use distillery_engine::overrides::Sources;
use std::path::Path;

/// Prints each diagnostic with its source excerpt (the recipe, or the
/// command line's `--set` flags), then a count.
pub fn print_diagnostics(path: &Path, sources: &Sources<'_>, diagnostics: &[Diagnostic]) {
    let name = path.display().to_string();
    for d in diagnostics {
        let (d, source_name, text) = sources.locate(d);
        let report = miette::Report::new(SourceDiagnostic::new(d, source_name, text));
        eprintln!("{report:?}");
    }
    eprintln!(
        "{name}: {} problem{} found",
        diagnostics.len(),
        if diagnostics.len() == 1 { "" } else { "s" }
    );
}

/// A diagnostic as JSON, with the text it points into (`source`: the
/// recipe's path or `command line`) and 1-based line and column of the
/// primary label there.
pub fn diagnostic_json(sources: &Sources<'_>, d: &Diagnostic) -> serde_json::Value {
    let (d, source_name, text) = sources.locate(d);
    let (line, column) = d.primary.span.line_col(text);
    serde_json::json!({
        "code": d.code,
        "message": d.message,
        "source": source_name,
        "line": line,
        "column": column,
        "label": d.primary.text,
        "help": d.help,
        "related": d.secondary.iter().map(|l| {
            let (line, column) = l.span.line_col(text);
            serde_json::json!({"line": line, "column": column, "label": l.text})
        }).collect::<Vec<_>>(),
    })
}

pub fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable output")
    );
}
