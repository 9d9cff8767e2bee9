//! `${{ ... }}` expressions in CEL, and the templates that embed them.
//!
//! Expressions are compiled and their references checked when a workflow
//! loads; evaluating one can fail only on data (a missing key, a type
//! mismatch), never on syntax.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use serde_json::Value;

/// The variables an expression may use.
pub const ROOTS: [&str; 4] = ["input", "steps", "run", "env"];

/// The fields of `run` (see `run::plan`'s scope).
pub const RUN_FIELDS: [&str; 4] = ["id", "workflow", "version", "started_at"];

/// A compiled CEL expression and what it refers to.
#[derive(Debug)]
pub struct Expression {
    pub source: String,
    program: cel::Program,
    /// Step ids read through `steps.<id>`.
    pub steps: BTreeSet<String>,
    /// Top-level variables used (`input`, `steps`, ...).
    pub roots: BTreeSet<String>,
    /// Fields read through `run.<field>`.
    pub run_fields: BTreeSet<String>,
    /// Set when the expression is a plain member chain (`input.ticket`,
    /// `steps.shape.output`), the common case: read straight off the JSON,
    /// since converting the scope to CEL values for it cost more than the
    /// rest of a step. Anything else goes through CEL.
    path: Option<Vec<String>>,
}

/// The longest expression, in characters.
pub const MAX_CHARS: usize = 4096;
/// How deep `(`, `[` and `{` may nest in an expression.
pub const MAX_NESTING: usize = 32;
/// How many operator characters (`+ - * / % ! < > = & | ? : .`) an
/// expression may hold.
pub const MAX_OPERATORS: usize = 256;

/// Refuses an expression too big or too deep for the CEL parser, checked
/// before it runs. The parser, our reference walk and evaluation all
/// recurse once per operator or bracket level, so a 30,000-term `1+1+...`
/// overflowed a 2 MiB tokio worker stack and killed the server. Counting
/// is on characters outside string literals, a cheap over-estimate of the
/// AST's depth; the limits are far above what a workflow needs and far
/// below what a debug build's stack survives (a unit test runs the worst
/// case within them on a 2 MiB thread).
fn check_size(source: &str) -> Result<(), String> {
    let chars = source.chars().count();
    if chars > MAX_CHARS {
        return Err(format!(
            "the expression is {chars} characters long, more than {MAX_CHARS}: \
             split it over several steps"
        ));
    }
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in source.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '+' | '-' | '*' | '/' | '%' | '!' | '<' | '>' | '=' | '&' | '|' | '?' | ':' | '.' => {
                operators += 1
            }
            _ => {}
        }
    }
    if deepest > MAX_NESTING {
        return Err(format!(
            "the expression nests brackets {deepest} deep, more than {MAX_NESTING}: \
             split it over several steps"
        ));
    }
    if operators > MAX_OPERATORS {
        return Err(format!(
            "the expression has {operators} operators, more than {MAX_OPERATORS}: \
             split it over several steps"
        ));
    }
    Ok(())
}

impl Expression {
    /// Compiles `source`; the error says what is wrong in CEL terms.
    pub fn compile(source: &str) -> Result<Expression, String> {
        check_size(source)?;
        let program = cel::Program::compile(source).map_err(|e| {
            let text = e.to_string();
            format!(
                "invalid expression `{}`: {}",
                source.trim(),
                text.lines().next().unwrap_or("syntax error")
            )
        })?;
        let mut refs = References::default();
        refs.walk(&program.expression().clone(), &mut Vec::new());
        if let Some(bad) = refs.bad_steps_use {
            return Err(format!("`{}`: {bad}", source.trim()));
        }
        Ok(Expression {
            source: source.trim().to_string(),
            program,
            steps: refs.steps,
            roots: refs.roots,
            run_fields: refs.run_fields,
            path: plain_path(source.trim()),
        })
    }

    /// Evaluates against `scope`, giving JSON.
    pub fn eval(&self, scope: &Scope) -> Result<Value, String> {
        self.eval_with(scope, &[])
    }

    /// Evaluates against `scope` plus `extra` variables of the expression's
    /// place (`signal` in a `wait_for` step's `match`, `body` in a hook's
    /// signal key): what a place allows is checked when the file loads.
    pub fn eval_with(&self, scope: &Scope, extra: &[(&str, &Value)]) -> Result<Value, String> {
        if let Some(path) = &self.path {
            let name = path[0].as_str();
            let extra_value = extra.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
            let root = match (scope.local(name).or(extra_value), name) {
                (Some(bound), _) => bound,
                (None, "input") => &*scope.input,
                (None, "steps") => &*scope.steps,
                (None, "run") => &*scope.run,
                (None, "env") => &*scope.env,
                _ => return self.eval_cel(scope, extra),
            };
            // A missing key or a non-object falls through to CEL, whose
            // error it is to report.
            if let Some(value) = path[1..]
                .iter()
                .try_fold(root, |value, key| value.as_object()?.get(key))
            {
                return Ok(value.clone());
            }
        }
        self.eval_cel(scope, extra)
    }

    fn eval_cel(&self, scope: &Scope, extra: &[(&str, &Value)]) -> Result<Value, String> {
        let mut context = cel::Context::with_env(STDLIB.clone());
        for (name, value) in scope.locals.iter().map(|(n, v)| (n.as_str(), v)) {
            if self.roots.contains(name) {
                context.add_variable_from_value(name, to_cel(value));
            }
        }
        let roots = [
            ("input", &*scope.input),
            ("steps", &*scope.steps),
            ("run", &*scope.run),
            ("env", &*scope.env),
        ];
        for &(name, value) in extra.iter().chain(roots.iter()) {
            if scope.local(name).is_some() {
                continue;
            }
            // Only what the expression reads: `steps` grows with the run.
            if self.roots.contains(name) {
                context.add_variable_from_value(name, to_cel(value));
            }
        }
        let value = self
            .program
            .execute(&context)
            .map_err(|e| format!("`{}` failed: {e}", self.source))?;
        value
            .json()
            .map_err(|e| format!("`{}` gave a value that is not JSON: {e}", self.source))
    }
}

/// The segments of `root.key.key...` when `source` is only that (a root
/// variable and identifiers joined by dots; CEL has compiled it already).
fn plain_path(source: &str) -> Option<Vec<String>> {
    let segments: Vec<String> = source.split('.').map(str::to_string).collect();
    let identifier = |s: &String| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    segments.iter().all(identifier).then_some(segments)
}

/// CEL's standard functions, built once: building them per evaluation cost
/// more than the evaluation.
static STDLIB: std::sync::LazyLock<Arc<cel::Env>> =
    std::sync::LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// JSON to CEL, with integers as CEL `int` (serde would make every
/// non-negative number a `uint`, and `input.n + 1` would not type-check).
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> = map
                .iter()
                .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

/// The data expressions see. Shared parts are reference-counted: a
/// `for_each` plans many elements against the same input in one pass, and
/// each element's scope must not copy it.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub input: Arc<Value>,
    /// `{ "<id>": { "output": ... } }` for every finished step.
    pub steps: Arc<Value>,
    pub run: Arc<Value>,
    pub env: Arc<Value>,
    /// Variables bound where the expression runs (a `for_each` element's
    /// item and `index`), read before the roots above.
    pub locals: Vec<(String, Value)>,
}

impl Scope {
    /// A scope with no local variables.
    pub fn new(input: Value, steps: Value, run: Value, env: Value) -> Scope {
        Scope {
            input: Arc::new(input),
            steps: Arc::new(steps),
            run: Arc::new(run),
            env: Arc::new(env),
            locals: Vec::new(),
        }
    }

    fn local(&self, name: &str) -> Option<&Value> {
        self.locals.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

#[derive(Default)]
struct References {
    steps: BTreeSet<String>,
    roots: BTreeSet<String>,
    run_fields: BTreeSet<String>,
    bad_steps_use: Option<String>,
}

impl References {
    fn walk(&mut self, e: &IdedExpr, bound: &mut Vec<String>) {
        match &e.expr {
            Expr::Ident(name) => {
                if !bound.contains(name) {
                    self.roots.insert(name.clone());
                    if name == "steps" {
                        self.bad_steps_use =
                            Some("refer to a step's result as steps.<id>.output".into());
                    }
                }
            }
            Expr::Select(select) => {
                if let Expr::Ident(root) = &select.operand.expr
                    && root == "steps"
                    && !bound.contains(root)
                {
                    self.roots.insert(root.clone());
                    self.steps.insert(select.field.clone());
                } else if let Expr::Ident(root) = &select.operand.expr
                    && root == "run"
                    && !bound.contains(root)
                {
                    self.roots.insert(root.clone());
                    self.run_fields.insert(select.field.clone());
                } else {
                    self.walk(&select.operand, bound);
                }
            }
            Expr::Call(call) => {
                // `steps['cool-off']` names a step whose id is not a CEL identifier.
                if call.func_name == "_[_]"
                    && let [
                        IdedExpr {
                            expr: Expr::Ident(root),
                            ..
                        },
                        IdedExpr {
                            expr: Expr::Literal(LiteralValue::String(id)),
                            ..
                        },
                    ] = call.args.as_slice()
                    && root == "steps"
                    && !bound.contains(root)
                {
                    self.roots.insert(root.clone());
                    self.steps.insert(id.inner().to_string());
                    return;
                }
                if let Some(target) = &call.target {
                    self.walk(target, bound);
                }
                for arg in &call.args {
                    self.walk(arg, bound);
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range, bound);
                self.walk(&c.accu_init, bound);
                let before = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.clone());
                bound.push(c.accu_var.clone());
                self.walk(&c.loop_cond, bound);
                self.walk(&c.loop_step, bound);
                self.walk(&c.result, bound);
                bound.truncate(before);
            }
            Expr::List(list) => {
                for item in &list.elements {
                    self.walk(item, bound);
                }
            }
            Expr::Map(map) => self.walk_entries(map.entries.iter().map(|e| &e.expr), bound),
            Expr::Struct(s) => self.walk_entries(s.entries.iter().map(|e| &e.expr), bound),
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn walk_entries<'a>(
        &mut self,
        entries: impl Iterator<Item = &'a EntryExpr>,
        bound: &mut Vec<String>,
    ) {
        for entry in entries {
            match entry {
                EntryExpr::MapEntry(m) => {
                    self.walk(&m.key, bound);
                    self.walk(&m.value, bound);
                }
                EntryExpr::StructField(f) => self.walk(&f.value, bound),
            }
        }
    }
}

/// A value from the workflow file that may contain expressions.
#[derive(Debug, Clone)]
pub enum Template {
    Literal(Value),
    /// The whole value is one expression: its result keeps its type.
    Expr(Arc<Expression>),
    /// Text with expressions spliced in: always a string.
    Interpolate(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Expr(Arc<Expression>),
}

impl Template {
    /// Every expression in the template, for reference checks.
    pub fn expressions(&self) -> Vec<&Arc<Expression>> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Arc<Expression>>) {
        match self {
            Template::Literal(_) => {}
            Template::Expr(e) => out.push(e),
            Template::Interpolate(parts) => out.extend(parts.iter().filter_map(|p| match p {
                Part::Expr(e) => Some(e),
                Part::Text(_) => None,
            })),
            Template::Array(items) => items.iter().for_each(|t| t.collect(out)),
            Template::Object(entries) => entries.iter().for_each(|(_, t)| t.collect(out)),
        }
    }

    /// Evaluates every expression and builds the JSON value.
    pub fn render(&self, scope: &Scope) -> Result<Value, String> {
        self.render_with(scope, &[])
    }

    /// [`Template::render`] with `extra` variables (see
    /// [`Expression::eval_with`]).
    pub fn render_with(&self, scope: &Scope, extra: &[(&str, &Value)]) -> Result<Value, String> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Expr(e) => e.eval_with(scope, extra)?,
            Template::Interpolate(parts) => {
                let mut text = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => text.push_str(t),
                        Part::Expr(e) => match e.eval_with(scope, extra)? {
                            Value::String(s) => text.push_str(&s),
                            Value::Null => {}
                            other => text.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(text)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.render_with(scope, extra))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.render_with(scope, extra)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

/// Splits a string into text and `${{ }}` expressions. `Ok(None)` when it
/// holds no expression.
pub fn parse_string(text: &str) -> Result<Option<Template>, String> {
    if !text.contains("${{") {
        return Ok(None);
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 3..];
        let end = after.find("}}").ok_or_else(|| {
            format!("unterminated expression: `${{{{` at offset {start} has no closing `}}}}`")
        })?;
        let source = &after[..end];
        if source.trim().is_empty() {
            return Err("empty expression `${{ }}`".to_string());
        }
        parts.push(Part::Expr(Arc::new(Expression::compile(source)?)));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    if let [Part::Expr(e)] = parts.as_slice() {
        return Ok(Some(Template::Expr(e.clone())));
    }
    Ok(Some(Template::Interpolate(parts)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope::new(
            json!({"user": "ada", "team": "net", "n": 3, "items": [1, 2, 3]}),
            json!({"owner": {"output": {"criticality": "high", "owner": "bob"}}}),
            json!({"id": "r1"}),
            json!({"iam_url": "https://iam.example.com"}),
        )
    }

    fn render(text: &str) -> Value {
        parse_string(text)
            .unwrap()
            .unwrap()
            .render(&scope())
            .unwrap()
    }

    #[test]
    fn expressions_past_the_limits_are_refused_before_parsing() {
        let chain = vec!["1"; 30_000].join("+");
        let err = Expression::compile(&chain).unwrap_err();
        assert!(err.contains("characters long, more than 4096"), "{err}");
        let chain = vec!["1"; MAX_OPERATORS + 2].join("+");
        let err = Expression::compile(&chain).unwrap_err();
        assert!(err.contains("operators, more than 256"), "{err}");
        let deep = format!(
            "{}1{}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        );
        let err = Expression::compile(&deep).unwrap_err();
        assert!(err.contains("nests brackets 33 deep"), "{err}");
        // Operators inside string literals are text, not terms.
        let text = format!(
            "input.user + '{}' + \"{}\\\"\"",
            "+".repeat(1000),
            "-".repeat(1000)
        );
        Expression::compile(&text).unwrap();
    }

    /// The worst expressions the limits let through compile (or are
    /// refused by CEL's own recursion limit) and evaluate on a stack the size of a tokio worker's (2 MiB), in a debug build.
    #[test]
    fn expressions_at_the_limits_fit_a_worker_stack() {
        let nest = |inner: String| {
            format!(
                "{}{inner}{}",
                "(".repeat(MAX_NESTING),
                ")".repeat(MAX_NESTING)
            )
        };
        let cases = [
            nest(vec!["1"; MAX_OPERATORS + 1].join("+")),
            nest(vec!["1"; MAX_OPERATORS + 1].join("*")),
            nest(format!("{}true", "!".repeat(MAX_OPERATORS))),
            nest(format!("{}1", "-".repeat(MAX_OPERATORS))),
            nest(format!("{}1", "true ? 1 : ".repeat(MAX_OPERATORS / 2))),
            nest(format!("input{}", ".a".repeat(MAX_OPERATORS))),
            format!("{}1{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING)),
            format!(
                "{}1{}",
                "size(".repeat(MAX_NESTING),
                ")".repeat(MAX_NESTING)
            ),
        ];
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for source in cases {
                    // CEL's own recursion limit may refuse one: an error,
                    // not a crash, is all this asks.
                    if let Ok(e) = Expression::compile(&source) {
                        let _ = e.eval(&scope());
                    }
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_lone_expression_keeps_its_type() {
        assert_eq!(render("${{ input.n + 1 }}"), json!(4));
        assert_eq!(
            render("${{ steps.owner.output.criticality == 'high' }}"),
            json!(true)
        );
        assert_eq!(render("${{ input.items }}"), json!([1, 2, 3]));
    }

    #[test]
    fn mixed_text_is_interpolated() {
        assert_eq!(
            render("user ${{ input.user }} on ${{ input.n }}"),
            json!("user ada on 3")
        );
        assert_eq!(render("${{ 'oncall-' + input.team }}"), json!("oncall-net"));
        assert_eq!(
            render("${{ env.iam_url }}/grants"),
            json!("https://iam.example.com/grants")
        );
    }

    #[test]
    fn a_member_chain_read_off_the_json_equals_what_cel_gives() {
        let scope = Scope {
            input: Arc::new(json!({
                "f": 2.0, "big": u64::MAX, "neg": -7, "none": null, "s": "x",
                "nested": {"list": [1, {"a": 1.5}], "empty": {}}
            })),
            ..scope()
        };
        for source in [
            "input",
            "input.f",
            "input.big",
            "input.neg",
            "input.none",
            "input.s",
            "input.nested",
            "input.nested.list",
            "steps.owner.output",
            "run.id",
            "env",
            "input.missing",
            "input.s.deeper",
            "steps.nobody.output",
        ] {
            let e = Expression::compile(source).unwrap();
            assert!(e.path.is_some(), "{source} is a plain path");
            assert_eq!(e.eval(&scope), e.eval_cel(&scope, &[]), "{source}");
        }
        for source in [
            "input.items[0]",
            "input.n + 1",
            "steps['cool-off'].output",
            "size(input)",
        ] {
            assert!(
                Expression::compile(source).unwrap().path.is_none(),
                "{source}"
            );
        }
        assert!(
            Expression::compile("input.missing")
                .unwrap()
                .eval(&scope)
                .is_err()
        );
    }

    #[test]
    fn references_are_collected() {
        let e = Expression::compile("steps.owner.output.x && has(steps.grant.output) && input.a")
            .unwrap();
        assert_eq!(e.steps, ["grant".to_string(), "owner".to_string()].into());
        assert!(e.roots.contains("input"));
    }

    #[test]
    fn hyphenated_step_ids_are_indexed() {
        let e = Expression::compile("steps['cool-off'].output").unwrap();
        assert_eq!(e.steps, ["cool-off".to_string()].into());
    }

    #[test]
    fn comprehension_variables_are_not_roots() {
        let e = Expression::compile("input.items.map(x, x * 2)").unwrap();
        assert_eq!(e.roots, ["input".to_string()].into());
        assert_eq!(render("${{ input.items.map(x, x * 2) }}"), json!([2, 4, 6]));
    }

    #[test]
    fn bad_syntax_is_an_error() {
        assert!(
            parse_string("${{ input. }}")
                .unwrap_err()
                .contains("invalid expression")
        );
        assert!(
            parse_string("${{ input.a ")
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(parse_string("${{ }}").unwrap_err().contains("empty"));
    }

    #[test]
    fn missing_data_fails_at_evaluation() {
        let t = parse_string("${{ input.nope }}").unwrap().unwrap();
        assert!(t.render(&scope()).unwrap_err().contains("input.nope"));
    }
}
