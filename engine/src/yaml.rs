//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Built on saphyr-parser's event stream so that every node, key and scalar
//! keeps its byte span (semantic errors point at line and column, not only
//! syntax errors), duplicate keys are an error instead of last-one-wins, and
//! plain scalars are typed by the YAML 1.2 core schema (plus `_` digit
//! separators, so `2_000_000` reads as a number).

use crate::diagnostic::{Diagnostic, Span};
use saphyr_parser::{Event, Parser, ScalarStyle};
use std::collections::HashMap;

/// Aliases may expand a document; past this many nodes we stop (a
/// "billion laughs" document must not exhaust memory).
const MAX_NODES: usize = 100_000;
/// Deeper nesting than this is not a recipe; refusing it keeps recursion bounded.
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under `key` in a mapping, with its key node.
    pub fn get(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.key_text().as_deref() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// A mapping key as text: scalars of any type are accepted as keys.
    pub fn key_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null => Some("null".into()),
            _ => None,
        }
    }

    /// What kind of YAML value this is, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node as JSON (mapping keys as strings).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.key_text().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The node at a JSON-like path (`["with", "hidden"]`, `["files", "1"]`),
    /// as deep as the path resolves. Returns the deepest node reached and
    /// whether the whole path resolved.
    pub fn find_path<'a>(&'a self, path: &[String]) -> (&'a Node, bool) {
        let mut node = self;
        for segment in path {
            let next = match &node.value {
                Value::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| k.key_text().as_deref() == Some(segment.as_str()))
                    .map(|(_, v)| v),
                Value::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return (node, false),
            }
        }
        (node, true)
    }

    /// The key node for the last segment of a path into mappings, if any.
    pub fn find_key<'a>(&'a self, path: &[String]) -> Option<&'a Node> {
        let (last, parent_path) = path.split_last()?;
        let (parent, complete) = self.find_path(parent_path);
        if !complete {
            return None;
        }
        parent
            .as_map()?
            .iter()
            .find(|(k, _)| k.key_text().as_deref() == Some(last.as_str()))
            .map(|(k, _)| k)
    }
}

/// Parses one YAML document. Returns the root (None for an empty document)
/// and every problem found; a syntax error ends parsing, duplicate keys do not.
pub fn parse(source: &str) -> (Option<Node>, Vec<Diagnostic>) {
    let mut builder = Builder::new(source);
    let result = builder.run();
    let mut diagnostics = builder.diagnostics;
    match result {
        Ok(root) => (root, diagnostics),
        Err(d) => {
            diagnostics.push(d);
            (None, diagnostics)
        }
    }
}

enum Frame {
    Seq {
        start: Span,
        items: Vec<Node>,
        anchor: usize,
    },
    Map {
        start: Span,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        anchor: usize,
    },
}

struct Builder<'s> {
    source: &'s str,
    /// Byte offset of each character index (saphyr's markers count characters).
    char_to_byte: Vec<usize>,
    anchors: HashMap<usize, Node>,
    stack: Vec<Frame>,
    node_count: usize,
    diagnostics: Vec<Diagnostic>,
}

// A `Diagnostic` error ends the parse, once per bad recipe: its size does
// not matter, and boxing it would only add noise.
#[allow(clippy::result_large_err)]
impl<'s> Builder<'s> {
    fn new(source: &'s str) -> Self {
        let mut char_to_byte: Vec<usize> = source.char_indices().map(|(b, _)| b).collect();
        char_to_byte.push(source.len());
        Self {
            source,
            char_to_byte,
            anchors: HashMap::new(),
            stack: Vec::new(),
            node_count: 0,
            diagnostics: Vec::new(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        self.char_to_byte
            .get(char_index)
            .copied()
            .unwrap_or(self.source.len())
    }

    fn span(&self, s: saphyr_parser::Span) -> Span {
        Span::new(self.byte(s.start.index()), self.byte(s.end.index()))
    }

    fn run(&mut self) -> Result<Option<Node>, Diagnostic> {
        let mut parser = Parser::new_from_str(self.source);
        let mut root: Option<Node> = None;
        let mut documents = 0;
        loop {
            let (event, span) = match parser.next_event() {
                None => break,
                Some(Ok(pair)) => pair,
                Some(Err(e)) => {
                    let at = self.byte(e.marker().index());
                    let end = (at + 1).min(self.source.len()).max(at);
                    return Err(Diagnostic::new(
                        "recipe::yaml-syntax",
                        format!("invalid YAML: {}", e.info()),
                        Span::new(at, end),
                    )
                    .label("here"));
                }
            };
            let span = self.span(span);
            let node = match event {
                Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => {
                    continue;
                }
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(Diagnostic::new(
                            "recipe::multiple-documents",
                            "a recipe is a single YAML document, found a second one",
                            span,
                        )
                        .label("second document starts here"));
                    }
                    continue;
                }
                Event::SequenceStart(anchor, _) => {
                    self.push(Frame::Seq {
                        start: span,
                        items: Vec::new(),
                        anchor,
                    })?;
                    continue;
                }
                Event::MappingStart(anchor, _) => {
                    self.push(Frame::Map {
                        start: span,
                        entries: Vec::new(),
                        pending_key: None,
                        anchor,
                    })?;
                    continue;
                }
                Event::SequenceEnd => match self.stack.pop() {
                    Some(Frame::Seq {
                        start,
                        items,
                        anchor,
                    }) => {
                        let end = items.last().map_or(span.end, |n| n.span.end.max(span.end));
                        let node = Node {
                            value: Value::Seq(items),
                            span: Span::new(start.start, end),
                        };
                        self.anchor(anchor, &node);
                        node
                    }
                    _ => return Err(self.internal(span)),
                },
                Event::MappingEnd => match self.stack.pop() {
                    Some(Frame::Map {
                        start,
                        entries,
                        anchor,
                        ..
                    }) => {
                        let end = entries
                            .last()
                            .map_or(span.end, |(_, v)| v.span.end.max(span.end));
                        let node = Node {
                            value: Value::Map(entries),
                            span: Span::new(start.start, end),
                        };
                        self.anchor(anchor, &node);
                        node
                    }
                    _ => return Err(self.internal(span)),
                },
                Event::Scalar(text, style, anchor, tag) => {
                    let verbatim = tag.as_ref().is_some_and(|t| t.suffix == "str");
                    let value = if style == ScalarStyle::Plain && !verbatim {
                        resolve_plain(&text)
                    } else {
                        Value::Str(text.into_owned())
                    };
                    let node = Node { value, span };
                    self.anchor(anchor, &node);
                    node
                }
                Event::Alias(id) => match self.anchors.get(&id) {
                    Some(target) => {
                        let mut node = target.clone();
                        self.count_nodes(&node, span)?;
                        node.span = span;
                        node
                    }
                    None => {
                        return Err(Diagnostic::new(
                            "recipe::yaml-syntax",
                            "invalid YAML: alias to an unknown anchor",
                            span,
                        ));
                    }
                },
            };
            self.count_nodes_shallow(span)?;
            if let Some(done) = self.attach(node) {
                root = Some(done);
            }
        }
        Ok(root)
    }

    fn push(&mut self, frame: Frame) -> Result<(), Diagnostic> {
        if self.stack.len() >= MAX_DEPTH {
            let span = match &frame {
                Frame::Seq { start, .. } | Frame::Map { start, .. } => *start,
            };
            return Err(Diagnostic::new(
                "recipe::too-deep",
                format!("YAML nested deeper than {MAX_DEPTH} levels"),
                span,
            ));
        }
        self.stack.push(frame);
        Ok(())
    }

    fn internal(&self, span: Span) -> Diagnostic {
        Diagnostic::new(
            "recipe::yaml-syntax",
            "invalid YAML: unbalanced collection",
            span,
        )
    }

    fn anchor(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    fn count_nodes_shallow(&mut self, span: Span) -> Result<(), Diagnostic> {
        self.node_count += 1;
        self.check_count(span)
    }

    fn count_nodes(&mut self, node: &Node, span: Span) -> Result<(), Diagnostic> {
        fn count(n: &Node) -> usize {
            1 + match &n.value {
                Value::Seq(items) => items.iter().map(count).sum(),
                Value::Map(entries) => entries.iter().map(|(k, v)| count(k) + count(v)).sum(),
                _ => 0,
            }
        }
        self.node_count += count(node);
        self.check_count(span)
    }

    fn check_count(&self, span: Span) -> Result<(), Diagnostic> {
        if self.node_count > MAX_NODES {
            return Err(Diagnostic::new(
                "recipe::too-large",
                format!("YAML document expands to more than {MAX_NODES} nodes"),
                span,
            ));
        }
        Ok(())
    }

    /// Adds a finished node to the collection being built; returns it when
    /// it is the document's root.
    fn attach(&mut self, node: Node) -> Option<Node> {
        match self.stack.last_mut() {
            None => Some(node),
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                None
            }
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => {
                match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => {
                        if let Some(text) = key.key_text()
                            && let Some((first, _)) = entries
                                .iter()
                                .find(|(k, _)| k.key_text().as_deref() == Some(text.as_str()))
                        {
                            self.diagnostics.push(
                                Diagnostic::new(
                                    "recipe::duplicate-key",
                                    format!("duplicate key `{text}`"),
                                    key.span,
                                )
                                .label("defined again here")
                                .with_secondary(first.span, "first defined here")
                                .help("YAML keys must be unique; rename or merge the two entries"),
                            );
                            return None;
                        }
                        entries.push((key, node));
                    }
                }
                None
            }
        }
    }
}

/// Types a plain (unquoted) scalar by the YAML 1.2 core schema.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = parse_int(text) {
        return Value::Int(i);
    }
    if looks_like_float(text)
        && let Ok(f) = text.replace('_', "").parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text.to_string())
}

fn parse_int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = digits.strip_prefix("0o") {
        (8, oct)
    } else {
        (10, digits)
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || !digits.chars().all(|c| c == '_' || c.is_digit(radix))
    {
        return None;
    }
    let magnitude = i128::from_str_radix(&digits.replace('_', ""), radix).ok()?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).ok()
}

fn looks_like_float(text: &str) -> bool {
    let body = text.trim_start_matches(['+', '-']);
    let mut digits = 0;
    let mut dots = 0;
    let mut exponent = false;
    let mut previous = ' ';
    for c in body.chars() {
        match c {
            '0'..='9' => digits += 1,
            '_' if previous.is_ascii_digit() => {}
            '.' if !exponent => dots += 1,
            'e' | 'E' if digits > 0 && !exponent => exponent = true,
            '+' | '-' if matches!(previous, 'e' | 'E') => {}
            _ => return false,
        }
        previous = c;
    }
    digits > 0 && dots <= 1 && !previous.eq(&'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(source: &str) -> Node {
        let (node, diagnostics) = parse(source);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        node.unwrap()
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let node = root("a: 2_000_000\nb: 2e-5\nc: '12'\nd: true\ne: ~\nf: 1.5\ng: 0x1f\nh: hello");
        let get = |k: &str| node.get(k).unwrap().1.value.clone();
        assert_eq!(get("a"), Value::Int(2_000_000));
        assert_eq!(get("b"), Value::Float(2e-5));
        assert_eq!(get("c"), Value::Str("12".into()));
        assert_eq!(get("d"), Value::Bool(true));
        assert_eq!(get("e"), Value::Null);
        assert_eq!(get("f"), Value::Float(1.5));
        assert_eq!(get("g"), Value::Int(31));
        assert_eq!(get("h"), Value::Str("hello".into()));
    }

    #[test]
    fn spans_point_at_the_scalar() {
        let source = "stages:\n  teacher:\n    op: lod_model\n";
        let node = root(source);
        let (_, stages) = node.get("stages").unwrap();
        let (_, teacher) = stages.get("teacher").unwrap();
        let (_, op) = teacher.get("op").unwrap();
        assert_eq!(&source[op.span.start..op.span.end], "lod_model");
        assert_eq!(op.span.line_col(source), (3, 9));
    }

    #[test]
    fn spans_count_bytes_after_multibyte_characters() {
        let source = "name: \"é☃\"\nseed: 5\n";
        let node = root(source);
        let (_, seed) = node.get("seed").unwrap();
        assert_eq!(&source[seed.span.start..seed.span.end], "5");
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_places() {
        let source = "a: 1\nb: 2\na: 3\n";
        let (_, diagnostics) = parse(source);
        assert_eq!(diagnostics.len(), 1);
        let d = &diagnostics[0];
        assert_eq!(d.code, "recipe::duplicate-key");
        assert_eq!(d.primary.span.line_col(source), (3, 1));
        assert_eq!(d.secondary[0].span.line_col(source), (1, 1));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let source = "a: [1, 2\nb: 3\n";
        let (node, diagnostics) = parse(source);
        assert!(node.is_none());
        assert_eq!(diagnostics[0].code, "recipe::yaml-syntax");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut source = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            source.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let (node, diagnostics) = parse(&source);
        assert!(node.is_none());
        assert_eq!(diagnostics[0].code, "recipe::too-large");
    }

    #[test]
    fn aliases_copy_the_anchored_value() {
        let node = root("a: &x {k: 1}\nb: *x\n");
        assert_eq!(
            node.get("b").unwrap().1.to_json(),
            serde_json::json!({"k": 1})
        );
    }
}
