//! Printing: diagnostics through miette, JSON for scripts.

use distillery_engine::Diagnostic;
use distillery_engine::diagnostic::SourceDiagnostic;
use std::path::Path;

/// Prints each diagnostic with its source excerpt, then a count.
pub fn print_diagnostics(path: &Path, source: &str, diagnostics: &[Diagnostic]) {
    let name = path.display().to_string();
    for d in diagnostics {
        let report = miette::Report::new(SourceDiagnostic::new(d.clone(), &name, source));
        eprintln!("{report:?}");
    }
    eprintln!(
        "{name}: {} problem{} found",
        diagnostics.len(),
        if diagnostics.len() == 1 { "" } else { "s" }
    );
}

/// A diagnostic as JSON, with 1-based line and column of the primary label.
pub fn diagnostic_json(source: &str, d: &Diagnostic) -> serde_json::Value {
    let (line, column) = d.primary.span.line_col(source);
    serde_json::json!({
        "code": d.code,
        "message": d.message,
        "line": line,
        "column": column,
        "label": d.primary.text,
        "help": d.help,
        "related": d.secondary.iter().map(|l| {
            let (line, column) = l.span.line_col(source);
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
