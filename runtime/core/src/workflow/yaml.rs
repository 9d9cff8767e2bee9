//! YAML with positions: every node remembers its line and column, so every
//! validation error can point at the exact place in the file.

use std::collections::HashMap;

use serde_json::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column in the source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: NodeValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys are kept in file order; duplicates are reported by the parser.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The entry `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// What the value is, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a number",
            NodeValue::Str(_) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }

    /// How many levels of lists and mappings the node holds (a scalar: 0).
    /// Recursion is safe: parsing refuses nodes deeper than [`MAX_DEPTH`].
    pub fn height(&self) -> usize {
        match &self.value {
            NodeValue::Seq(items) => 1 + items.iter().map(Node::height).max().unwrap_or(0),
            NodeValue::Map(entries) => {
                1 + entries.iter().map(|(_, v)| v.height()).max().unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// The node as JSON, positions dropped.
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A syntax error at a position.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// How deep lists and mappings may nest. yaml-rust2's `Parser::load`
/// recurses once per level, and so do the loader, `Node::to_json` and
/// dropping a node: 40 KB of `- - - ...` overflowed a 2 MiB tokio worker
/// stack and killed the server. Events are therefore pulled one at a time
/// here (no recursion in the parser) and a document nesting deeper than
/// this is refused before anything walks it. Real workflows nest a
/// handful of levels; 64 leaves room for deep `with` payloads.
pub const MAX_DEPTH: usize = 64;

/// Parses one YAML document.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let scan_error = |e: yaml_rust2::ScanError| YamlError {
        pos: Pos {
            line: e.marker().line(),
            col: e.marker().col() + 1,
        },
        message: e.info().to_string(),
    };
    // The events of the first document, in the order `Parser::load` would
    // deliver them, without its recursion.
    let mut depth = 0usize;
    let mut started = false;
    loop {
        let (event, mark) = parser.next_token().map_err(scan_error)?;
        match event {
            Event::StreamStart | Event::Nothing => continue,
            Event::StreamEnd => break,
            Event::DocumentStart => {
                if started {
                    break;
                }
                started = true;
                continue;
            }
            Event::DocumentEnd => break,
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(YamlError {
                        pos: position(mark),
                        message: format!(
                            "lists and mappings nest deeper than {MAX_DEPTH} levels here: \
                             flatten the document"
                        ),
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
        builder.on_event(event, mark);
        if builder.error.is_some() {
            break;
        }
    }
    if let Some(error) = builder.error {
        return Err(error);
    }
    builder.root.ok_or(YamlError {
        pos: Pos { line: 1, col: 1 },
        message: "the file is empty".into(),
    })
}

enum Frame {
    Seq(Pos, usize, Vec<Node>),
    Map(
        Pos,
        usize,
        Vec<(String, Node)>,
        Option<(String, Pos)>,
        Option<Pos>,
    ),
}

/// Values aliases may add beyond the file's own: an alias repeats what its
/// anchor holds, so a few hundred bytes of nested aliases ("billion
/// laughs") would otherwise expand to gigabytes. Real workflows repeat a
/// retry policy or a `with` block, far below this.
const ALIAS_BUDGET: usize = 50_000;

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    /// Values under each anchor, aliases expanded.
    anchor_sizes: HashMap<usize, usize>,
    /// Values written in the file, and values aliases added.
    written: usize,
    repeated: usize,
    /// `written + repeated` when each open collection started.
    starts: Vec<usize>,
    error: Option<YamlError>,
}

impl Builder {
    fn values(&self) -> usize {
        self.written + self.repeated
    }

    /// Counts a value written in the file; a collection's own count
    /// starts here.
    fn written(&mut self, collection: bool) {
        if collection {
            self.starts.push(self.values());
        }
        self.written += 1;
    }

    /// Ends a collection: records its size under its anchor.
    fn ended(&mut self, anchor: usize) {
        let start = self.starts.pop().unwrap_or(0);
        if anchor > 0 {
            self.anchor_sizes.insert(anchor, self.values() - start);
        }
    }

    fn fail(&mut self, pos: Pos, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError { pos, message });
        }
    }

    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let pos = node.pos;
        let mut duplicate = None;
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(_, _, entries, pending, first_key)) => match pending.take() {
                None => match node.value {
                    _ if first_key.is_none()
                        && !matches!(node.value, NodeValue::Seq(_) | NodeValue::Map(_)) =>
                    {
                        *first_key = Some(pos);
                        *pending = Some((scalar_key(&node.value), pos));
                    }
                    NodeValue::Str(key) => *pending = Some((key, pos)),
                    NodeValue::Null => *pending = Some(("null".into(), pos)),
                    NodeValue::Bool(b) => *pending = Some((b.to_string(), pos)),
                    NodeValue::Int(i) => *pending = Some((i.to_string(), pos)),
                    NodeValue::Float(f) => *pending = Some((f.to_string(), pos)),
                    _ => duplicate = Some((pos, "mapping keys must be plain values".to_string())),
                },
                Some((key, key_pos)) => {
                    if entries.iter().any(|(k, _)| *k == key) {
                        duplicate = Some((key_pos, format!("duplicate key {key:?}")));
                    }
                    entries.push((key, node));
                }
            },
        }
        if let Some((pos, message)) = duplicate {
            self.fail(pos, message);
        }
    }
}

fn scalar_key(value: &NodeValue) -> String {
    match value {
        NodeValue::Str(s) => s.clone(),
        NodeValue::Null => "null".into(),
        NodeValue::Bool(b) => b.to_string(),
        NodeValue::Int(i) => i.to_string(),
        NodeValue::Float(f) => f.to_string(),
        NodeValue::Seq(_) | NodeValue::Map(_) => String::new(),
    }
}

fn position(mark: Marker) -> Pos {
    Pos {
        line: mark.line(),
        col: mark.col() + 1,
    }
}

fn scalar(text: String, style: TScalarStyle) -> NodeValue {
    if style != TScalarStyle::Plain {
        return NodeValue::Str(text);
    }
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => NodeValue::Null,
        "true" | "True" | "TRUE" => NodeValue::Bool(true),
        "false" | "False" | "FALSE" => NodeValue::Bool(false),
        _ => {
            if let Ok(i) = text.parse::<i64>() {
                NodeValue::Int(i)
            } else if text
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '.')
                && let Ok(f) = text.parse::<f64>()
            {
                NodeValue::Float(f)
            } else {
                NodeValue::Str(text)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = position(mark);
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                self.written(false);
                if anchor > 0 {
                    // A long text counts as many values: an alias copies it.
                    self.anchor_sizes.insert(anchor, 1 + text.len() / 64);
                }
                let node = Node {
                    pos,
                    value: scalar(text, style),
                };
                self.push(node, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.written(true);
                self.stack.push(Frame::Seq(pos, anchor, Vec::new()))
            }
            Event::MappingStart(anchor, _) => {
                self.written(true);
                self.stack
                    .push(Frame::Map(pos, anchor, Vec::new(), None, None))
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(pos, anchor, items)) = self.stack.pop() {
                    self.ended(anchor);
                    self.push(
                        Node {
                            pos,
                            value: NodeValue::Seq(items),
                        },
                        anchor,
                    );
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(pos, anchor, entries, _, first_key)) = self.stack.pop() {
                    self.ended(anchor);
                    // A block mapping is where its first key is.
                    let pos = first_key.unwrap_or(pos);
                    self.push(
                        Node {
                            pos,
                            value: NodeValue::Map(entries),
                        },
                        anchor,
                    );
                }
            }
            Event::Alias(id) => {
                let size = self.anchor_sizes.get(&id).copied().unwrap_or(0);
                if self.error.is_some() {
                    // Nothing more is built once the document failed.
                } else if self.repeated + size > self.written + ALIAS_BUDGET {
                    self.fail(
                        pos,
                        format!(
                            "aliases here repeat more than {} values beyond the file's own \
                             (each alias copies what its anchor holds): write the values out, \
                             or use fewer nested aliases",
                            ALIAS_BUDGET
                        ),
                    );
                } else {
                    match self.anchors.get(&id) {
                        // An alias nests its anchor's levels where it stands.
                        Some(node) if self.stack.len() + node.height() > MAX_DEPTH => self.fail(
                            pos,
                            format!(
                                "this alias nests lists and mappings deeper than {MAX_DEPTH} \
                                 levels: flatten the document"
                            ),
                        ),
                        Some(node) => {
                            let node = node.clone();
                            self.repeated += size;
                            self.push(Node { pos, ..node }, 0)
                        }
                        None => self.fail(pos, "unknown alias".into()),
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_position() {
        let doc = parse("name: demo\nsteps:\n  - id: a\n    uses: transform\n").unwrap();
        let steps = doc.get("steps").unwrap();
        let NodeValue::Seq(items) = &steps.value else {
            panic!()
        };
        let uses = items[0].get("uses").unwrap();
        assert_eq!(uses.pos, Pos { line: 4, col: 11 });
        assert_eq!(uses.as_str(), Some("transform"));
    }

    #[test]
    fn scalars_are_typed_like_yaml() {
        let doc = parse("a: 3\nb: '3'\nc: true\nd: ~\ne: 1.5\nf: text\ng: -2\n").unwrap();
        assert_eq!(
            doc.to_json(),
            serde_json::json!({"a": 3, "b": "3", "c": true, "d": null, "e": 1.5, "f": "text", "g": -2})
        );
    }

    #[test]
    fn aliases_expand_within_a_budget_and_a_bomb_is_refused() {
        let doc = parse("retry: &r { max_attempts: 3, backoff: 1s }\na: *r\nb: *r\n").unwrap();
        assert_eq!(doc.get("b").unwrap().to_json()["max_attempts"], 3);

        // "Billion laughs": each level repeats the one above nine times.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for pair in names.windows(2) {
            let alias = format!("*{}", pair[0]);
            bomb.push_str(&format!(
                "{}: &{} [{}]\n",
                pair[1],
                pair[1],
                [alias.as_str(); 9].join(", ")
            ));
        }
        let started = std::time::Instant::now();
        let err = parse(&bomb).unwrap_err();
        assert!(
            err.message.contains("aliases here repeat more than"),
            "{err:?}"
        );
        assert!(err.pos.line >= 5, "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        // A long text repeated: it counts by its length.
        let long = "x".repeat(64 * 1024);
        let mut texts = format!("a: &a {long}\nb: [");
        texts.push_str(&["*a"; 100].join(", "));
        texts.push_str("]\n");
        let err = parse(&texts).unwrap_err();
        assert!(err.message.contains("aliases here repeat"), "{err:?}");
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_an_error_not_a_stack_overflow() {
        let ok = format!(
            "a: {}1{}\n",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(parse(&ok).unwrap().height(), MAX_DEPTH);

        // Block lists 20,000 deep: far past what recursion survives.
        let deep = format!("name: x\nsteps:\n  {}1\n", "- ".repeat(20_000));
        let err = parse(&deep).unwrap_err();
        assert!(err.message.contains("nest deeper than 64"), "{err:?}");
        assert_eq!(err.pos.line, 3, "{err:?}");

        let flow = format!("a: {}1{}", "[".repeat(100), "]".repeat(100));
        let err = parse(&flow).unwrap_err();
        assert!(err.message.contains("nest deeper"), "{err:?}");

        // Aliases cannot stack levels past the limit either.
        let mut aliases = format!("a: &a {}1{}\n", "[".repeat(40), "]".repeat(40));
        aliases.push_str(&format!("b: &b {}*a{}\n", "[".repeat(40), "]".repeat(40)));
        let err = parse(&aliases).unwrap_err();
        assert!(err.message.contains("alias nests"), "{err:?}");
        assert_eq!(err.pos.line, 2, "{err:?}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("name: demo\nsteps: [a, b\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err:?}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("name: a\nname: b\n").unwrap_err();
        assert_eq!(err.pos.line, 2);
        assert!(err.message.contains("duplicate key"));
    }

    #[test]
    fn aliases_copy_their_anchor() {
        let doc = parse("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(
            doc.get("other").unwrap().to_json(),
            serde_json::json!({"x": 1})
        );
    }
}
