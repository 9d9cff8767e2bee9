//! Turns workflow YAML into a [`Workflow`], collecting every problem as
//! `FILE:LINE:COL: field: message` instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::expr::{self, Expression, ROOTS, Template};
use super::model::*;
use super::yaml::{self, Node, NodeValue, Pos};

/// One problem in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub file: String,
    pub pos: Pos,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.pos.line, self.pos.col, self.field, self.message
        )
    }
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ValidationErrors(pub Vec<ValidationError>);

/// Loads and validates a workflow file. `plugins` are the names `uses:` may
/// refer to.
pub fn load_file(path: &Path, plugins: &BTreeSet<String>) -> Result<Workflow, ValidationErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ValidationErrors(vec![ValidationError {
            file: file.clone(),
            pos: Pos { line: 1, col: 1 },
            field: "file".into(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    load_str(&text, &file, plugins)
}

/// Loads every `*.yaml`/`*.yml` in `dir` (sorted by name).
pub fn load_dir(
    dir: &Path,
    plugins: &BTreeSet<String>,
) -> Result<Vec<Result<Workflow, ValidationErrors>>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot read the folder: {e}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    Ok(paths.iter().map(|p| load_file(p, plugins)).collect())
}

/// Validates workflow text; `file` names it in errors.
pub fn load_str(
    text: &str,
    file: &str,
    plugins: &BTreeSet<String>,
) -> Result<Workflow, ValidationErrors> {
    let mut loader = Loader {
        file,
        plugins,
        errors: Vec::new(),
        in_loop: None,
        loop_bodies: BTreeMap::new(),
    };
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            loader.error(e.pos, "yaml", format!("syntax error: {}", e.message));
            return Err(ValidationErrors(loader.errors));
        }
    };
    let workflow = loader.workflow(&root, text);
    match workflow {
        Some(w) if loader.errors.is_empty() => Ok(w),
        _ => {
            loader.errors.sort_by_key(|e| (e.pos.line, e.pos.col));
            Err(ValidationErrors(loader.errors))
        }
    }
}

struct Loader<'a> {
    file: &'a str,
    plugins: &'a BTreeSet<String>,
    errors: Vec<ValidationError>,
    /// The `for_each` whose body is being read.
    in_loop: Option<String>,
    /// Every step inside a loop's body, with the loop's id.
    loop_bodies: BTreeMap<String, String>,
}

const WORKFLOW_KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "input",
    "sla",
    "steps",
    "output",
    "triggers",
    "tags",
    "concurrency",
];
const STEP_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "uses",
    "with",
    "when",
    "retry",
    "timeout",
    "approval",
    "parallel",
    "wait",
    "for_each",
    "as",
    "concurrency",
    "on_error",
    "steps",
    "workflow",
    "version",
    "wait_for",
];

/// The fields only a `for_each` step takes.
const FOR_EACH_KEYS: &[&str] = &["as", "concurrency", "on_error", "steps"];

/// Where an expression sits decides what it may read.
struct RefRules<'a> {
    /// Steps finished before this point.
    available: &'a BTreeSet<String>,
    /// All ids, to tell "later" from "unknown".
    known: &'a BTreeMap<String, Pos>,
    /// Extra explanation when `steps` is not allowed at all.
    no_steps: Option<&'a str>,
    /// Variables bound here besides the roots (a loop's item and `index`).
    locals: &'a [String],
}

impl<'a> Loader<'a> {
    fn error(&mut self, pos: Pos, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            file: self.file.to_string(),
            pos,
            field: field.into(),
            message: message.into(),
        });
    }

    fn mapping<'n>(
        &mut self,
        node: &'n Node,
        field: &str,
        allowed: &[&str],
    ) -> Option<&'n [(String, Node)]> {
        let NodeValue::Map(entries) = &node.value else {
            self.error(
                node.pos,
                field,
                format!("expected a mapping, found {}", node.kind()),
            );
            return None;
        };
        for (key, value) in entries {
            if !allowed.contains(&key.as_str()) {
                self.error(
                    value.pos,
                    join_field(field, key),
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                );
            }
        }
        Some(entries)
    }

    fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match &node.value {
            NodeValue::Str(s) => Some(s.clone()),
            _ => {
                self.error(
                    node.pos,
                    field,
                    format!("expected a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, field: &str) -> Option<Duration> {
        match &node.value {
            NodeValue::Int(secs) if *secs >= 0 => Some(Duration::from_secs(*secs as u64)),
            NodeValue::Str(s) => match humantime::parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(
                        node.pos,
                        field,
                        format!("{s:?} is not a duration ({e}); write e.g. 30s, 10m, 8h, 2d"),
                    );
                    None
                }
            },
            _ => {
                self.error(
                    node.pos,
                    field,
                    format!(
                        "expected a duration such as 30s or 8h, found {}",
                        node.kind()
                    ),
                );
                None
            }
        }
    }

    /// Compiles every `${{ }}` inside `node`.
    fn template(&mut self, node: &Node, field: &str) -> Option<Template> {
        Some(match &node.value {
            NodeValue::Str(s) => match expr::parse_string(s) {
                Ok(Some(t)) => t,
                Ok(None) => Template::Literal(Value::String(s.clone())),
                Err(e) => {
                    self.error(node.pos, field, e);
                    return None;
                }
            },
            NodeValue::Seq(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.push(self.template(item, &format!("{field}[{i}]"))?);
                }
                Template::Array(out)
            }
            NodeValue::Map(entries) => {
                let mut out = Vec::new();
                for (k, v) in entries {
                    out.push((k.clone(), self.template(v, &join_field(field, k))?));
                }
                Template::Object(out)
            }
            _ => Template::Literal(node.to_json()),
        })
    }

    /// A `when`: one expression (`${{ ... }}`), or `true` / `false`. Text
    /// or a list would fail every run at that step, so it fails the load.
    fn condition(&mut self, node: &Node, field: &str) -> Option<Template> {
        let template = self.template(node, field)?;
        match &template {
            // `when: ~` skips the step, as an expression giving null does.
            Template::Expr(_) | Template::Literal(Value::Bool(_) | Value::Null) => Some(template),
            _ => {
                self.error(
                    node.pos,
                    field,
                    format!(
                        "expected one expression such as \"${{{{ input.priority == 'P1' }}}}\" or true/false, found {}",
                        match node.as_str() {
                            Some(text) => format!("the text {text:?}"),
                            None => node.kind().to_string(),
                        }
                    ),
                );
                None
            }
        }
    }

    /// Checks what a template's expressions refer to.
    fn check_refs(&mut self, template: &Template, pos: Pos, field: &str, rules: &RefRules<'_>) {
        self.check_refs_allowing(template, pos, field, rules, &[]);
    }

    /// [`Loader::check_refs`] where the place adds variables of its own
    /// (`signal` in a `wait_for` step's `match`).
    fn check_refs_allowing(
        &mut self,
        template: &Template,
        pos: Pos,
        field: &str,
        rules: &RefRules<'_>,
        extra_roots: &[&str],
    ) {
        for expression in template.expressions() {
            self.check_expression(expression, pos, field, rules, extra_roots);
        }
    }

    fn check_expression(
        &mut self,
        e: &Arc<Expression>,
        pos: Pos,
        field: &str,
        rules: &RefRules<'_>,
        extra_roots: &[&str],
    ) {
        for root in &e.roots {
            if rules.locals.contains(root) || extra_roots.contains(&root.as_str()) {
                continue;
            }
            if !ROOTS.contains(&root.as_str()) {
                let mut usable: Vec<&str> = ROOTS.iter().chain(extra_roots).copied().collect();
                usable.extend(rules.locals.iter().map(String::as_str));
                let hint =
                    if usable.len() == ROOTS.len() && (root == "item" || root == FOR_EACH_INDEX) {
                        " (a loop's item and index exist only inside its for_each steps)"
                    } else {
                        ""
                    };
                self.error(
                    pos,
                    field,
                    format!(
                        "`{}`: unknown variable {root}; expressions can use {}{hint}",
                        e.source,
                        usable.join(", ")
                    ),
                );
            } else if root == "steps"
                && let Some(why) = rules.no_steps
            {
                self.error(pos, field, format!("`{}`: {why}", e.source));
            }
        }
        for unknown in e
            .run_fields
            .iter()
            .filter(|f| !expr::RUN_FIELDS.contains(&f.as_str()))
        {
            self.error(
                pos,
                field,
                format!(
                    "`{}`: run has no field {unknown}; it has {}",
                    e.source,
                    expr::RUN_FIELDS.join(", ")
                ),
            );
        }
        if rules.no_steps.is_some() {
            return;
        }
        for step in &e.steps {
            if rules.available.contains(step) {
                continue;
            }
            let message = match (rules.known.get(step), self.loop_bodies.get(step)) {
                (Some(_), Some(owner)) => format!(
                    "`{}`: step {step} runs once per element inside for_each {owner}: \
                     read the loop's results as steps.{owner}.output (a list)",
                    e.source
                ),
                (Some(at), None) => format!(
                    "`{}`: step {step} (line {}) has not finished at this point: use only steps before this one",
                    e.source, at.line
                ),
                (None, _) => format!("`{}`: unknown step {step}", e.source),
            };
            self.error(pos, field, message);
        }
    }

    fn workflow(&mut self, root: &Node, source: &str) -> Option<Workflow> {
        let entries = self.mapping(root, "workflow", WORKFLOW_KEYS)?;
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);

        let name = match get("name") {
            Some(n) => self.string(n, "name").inspect(|name| {
                if !is_valid_name(name) {
                    self.error(
                        n.pos,
                        "name",
                        "use lowercase letters, digits, '-' and '_' (it appears in URLs)",
                    );
                }
            }),
            None => {
                self.error(root.pos, "name", "a workflow needs a name");
                None
            }
        };
        let version = match get("version") {
            None => 1,
            Some(Node {
                value: NodeValue::Int(v),
                ..
            }) if *v >= 1 && *v <= u32::MAX as i64 => *v as u32,
            Some(n) => {
                self.error(
                    n.pos,
                    "version",
                    format!("expected a positive integer, found {}", n.kind()),
                );
                1
            }
        };
        let description = get("description")
            .and_then(|n| self.string(n, "description"))
            .unwrap_or_default();
        let input = get("input").and_then(|n| self.input_schema(n));

        let mut known = BTreeMap::new();
        let steps = match get("steps") {
            Some(node) => self.steps(node, "steps", &mut known),
            None => {
                self.error(root.pos, "steps", "a workflow needs at least one step");
                Vec::new()
            }
        };
        self.check_step_refs(&steps, &BTreeSet::new(), &known, &[]);
        // Steps inside loops have a result per element, not one to read.
        let all: BTreeSet<String> = known
            .keys()
            .filter(|id| !self.loop_bodies.contains_key(*id))
            .cloned()
            .collect();
        let rules_all = RefRules {
            available: &all,
            known: &known,
            no_steps: None,
            locals: &[],
        };

        let output = get("output").and_then(|n| {
            let t = self.template(n, "output")?;
            self.check_refs(&t, n.pos, "output", &rules_all);
            Some(t)
        });
        let sla = get("sla").and_then(|n| self.sla(n, &rules_all));
        let triggers = get("triggers")
            .map(|n| self.triggers(n))
            .unwrap_or_default();
        if let (Some(schema), Some(node)) = (&input, get("triggers")) {
            for (i, trigger) in triggers.iter().enumerate() {
                for e in schema.validator.iter_errors(&trigger.input) {
                    self.error(
                        node.pos,
                        format!("triggers[{i}].input"),
                        format!("does not match the workflow's input schema: {e}"),
                    );
                }
            }
        }

        let tags = get("tags").map(|n| self.tags(n)).unwrap_or_default();
        let concurrency = match get("concurrency") {
            None => None,
            Some(Node {
                value: NodeValue::Int(v),
                ..
            }) if *v >= 1 && *v <= 100_000 => Some(*v as u32),
            Some(n) => {
                self.error(
                    n.pos,
                    "concurrency",
                    "expected how many runs may execute at once, a number from 1 to 100000",
                );
                None
            }
        };

        Some(Workflow {
            name: name?,
            version,
            description,
            input,
            sla,
            steps,
            output,
            triggers,
            tags,
            concurrency,
            file: self.file.to_string(),
            source: source.to_string(),
        })
    }

    /// `tags: [gpu, eu]`: names a worker is started with (`--tags`).
    fn tags(&mut self, node: &Node) -> Vec<String> {
        let NodeValue::Seq(items) = &node.value else {
            self.error(
                node.pos,
                "tags",
                format!("expected a list of worker tags, found {}", node.kind()),
            );
            return Vec::new();
        };
        let mut tags = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("tags[{i}]");
            let Some(tag) = self.string(item, &field) else {
                continue;
            };
            match check_tag(&tag) {
                Ok(()) => {
                    tags.insert(tag);
                }
                Err(e) => self.error(item.pos, field, e),
            }
        }
        if tags.len() > MAX_TAGS {
            self.error(node.pos, "tags", format!("at most {MAX_TAGS} tags"));
        }
        tags.into_iter().collect()
    }

    fn input_schema(&mut self, node: &Node) -> Option<InputSchema> {
        if !matches!(node.value, NodeValue::Map(_)) {
            self.error(
                node.pos,
                "input",
                format!("expected a JSON Schema mapping, found {}", node.kind()),
            );
            return None;
        }
        let schema = node.to_json();
        match jsonschema::validator_for(&schema) {
            Ok(validator) => Some(InputSchema {
                schema,
                validator: Arc::new(validator),
                pos: node.pos,
            }),
            Err(e) => {
                self.error(node.pos, "input", format!("not a valid JSON Schema: {e}"));
                None
            }
        }
    }

    fn steps(&mut self, node: &Node, field: &str, known: &mut BTreeMap<String, Pos>) -> Vec<Step> {
        let NodeValue::Seq(items) = &node.value else {
            self.error(
                node.pos,
                field,
                format!("expected a list of steps, found {}", node.kind()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(node.pos, field, "expected at least one step");
        }
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.step(item, &format!("{field}[{i}]"), known))
            .collect()
    }

    fn step(
        &mut self,
        node: &Node,
        field: &str,
        known: &mut BTreeMap<String, Pos>,
    ) -> Option<Step> {
        let id_node = node.get("id");
        let id = match id_node {
            Some(n) => self.string(n, &format!("{field}.id"))?,
            None if matches!(node.value, NodeValue::Map(_)) => {
                self.error(node.pos, format!("{field}.id"), "every step needs an id");
                return None;
            }
            None => {
                self.error(
                    node.pos,
                    field,
                    format!(
                        "expected a step (a mapping with an id), found {}",
                        node.kind()
                    ),
                );
                return None;
            }
        };
        let id_pos = id_node.map_or(node.pos, |n| n.pos);
        let field = format!("steps.{id}");
        let entries = self.mapping(node, &field, STEP_KEYS)?;
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        if !is_valid_name(&id) {
            self.error(
                id_pos,
                format!("{field}.id"),
                "use letters, digits, '-' and '_'",
            );
        }
        if let Some(first) = known.get(&id) {
            self.error(
                id_pos,
                format!("{field}.id"),
                format!("duplicate step id (first used on line {})", first.line),
            );
        } else {
            known.insert(id.clone(), id_pos);
        }

        let kinds: Vec<&str> = [
            "uses", "approval", "parallel", "wait", "wait_for", "for_each", "workflow",
        ]
        .into_iter()
        .filter(|k| get(k).is_some())
        .collect();
        if kinds.len() != 1 {
            let found = if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(", ")
            };
            self.error(
                node.pos,
                &field,
                format!(
                    "a step needs exactly one of uses, approval, parallel, wait, wait_for, for_each or workflow (found {found})"
                ),
            );
            return None;
        }
        if kinds[0] != "for_each" {
            for key in FOR_EACH_KEYS {
                if let Some(n) = get(key) {
                    self.error(
                        n.pos,
                        format!("{field}.{key}"),
                        format!("only for_each steps take `{key}`"),
                    );
                }
            }
        }
        if kinds[0] == "for_each" {
            for key in ["retry", "timeout"] {
                if let Some(n) = get(key) {
                    self.error(
                        n.pos,
                        format!("{field}.{key}"),
                        format!(
                            "set `{key}` on the steps inside the for_each, which it applies to"
                        ),
                    );
                }
            }
        }
        if let Some(owner) = self.in_loop.clone() {
            let refused = match kinds[0] {
                "approval" => Some("approval steps"),
                "wait_for" => Some("wait_for steps"),
                "for_each" => Some("a for_each inside a for_each"),
                _ => None,
            };
            if let Some(what) = refused {
                self.error(
                    node.pos,
                    &field,
                    format!(
                        "{what} cannot run inside for_each {owner}: \
                         put the loop's body in its own steps, or loop over a flat list"
                    ),
                );
            }
        }
        if get("with").is_some() && kinds[0] != "uses" && kinds[0] != "workflow" {
            self.error(
                get("with").unwrap().pos,
                format!("{field}.with"),
                "only plugin steps (uses) and sub-workflows (workflow) take `with`",
            );
        }
        if let Some(n) = get("version").filter(|_| kinds[0] != "workflow") {
            self.error(
                n.pos,
                format!("{field}.version"),
                "only sub-workflow steps (workflow) take `version`",
            );
        }
        let kind = match kinds[0] {
            "uses" => {
                let uses_node = get("uses").unwrap();
                let uses = self.string(uses_node, &format!("{field}.uses"))?;
                self.check_plugin(&uses, uses_node.pos, &format!("{field}.uses"));
                let with = match get("with") {
                    Some(w) => self.template(w, &format!("{field}.with"))?,
                    None => Template::Object(Vec::new()),
                };
                StepKind::Plugin { uses, with }
            }
            "approval" => StepKind::Approval(
                self.approval(get("approval").unwrap(), &format!("{field}.approval"))?,
            ),
            "parallel" => {
                let branches = self.steps(
                    get("parallel").unwrap(),
                    &format!("{field}.parallel"),
                    known,
                );
                StepKind::Parallel(branches)
            }
            "for_each" => StepKind::ForEach(self.for_each(&id, &field, &get, known)?),
            "workflow" => {
                let name_node = get("workflow").unwrap();
                let name = self.string(name_node, &format!("{field}.workflow"))?;
                if !is_valid_name(&name) {
                    self.error(
                        name_node.pos,
                        format!("{field}.workflow"),
                        format!("{name:?} is not a workflow name"),
                    );
                }
                let version = match get("version") {
                    None => None,
                    Some(Node {
                        value: NodeValue::Int(v),
                        ..
                    }) if *v >= 1 && *v <= u32::MAX as i64 => Some(*v as u32),
                    Some(n) => {
                        self.error(
                            n.pos,
                            format!("{field}.version"),
                            format!("expected a positive integer, found {}", n.kind()),
                        );
                        None
                    }
                };
                let with = match get("with") {
                    Some(w) => self.template(w, &format!("{field}.with"))?,
                    None => Template::Object(Vec::new()),
                };
                StepKind::Workflow(SubWorkflow {
                    name,
                    version,
                    with,
                })
            }
            "wait_for" => StepKind::Signal(
                self.signal_wait(get("wait_for").unwrap(), &format!("{field}.wait_for"))?,
            ),
            _ => StepKind::Wait(self.wait(get("wait").unwrap(), &format!("{field}.wait"))?),
        };
        let when = get("when").and_then(|n| self.condition(n, &format!("{field}.when")));
        let retry = match get("retry") {
            None => None,
            Some(n) => Some(self.retry(n, &format!("{field}.retry"))?),
        };
        let timeout = get("timeout")
            .and_then(|n| self.timeout(n, &format!("{field}.timeout"), "a step cannot finish"));
        Some(Step {
            id,
            when,
            kind,
            retry,
            timeout,
            pos: node.pos,
        })
    }

    /// `for_each: ${{ list }}` with its body (`steps`), `as`, `concurrency`
    /// and `on_error`.
    fn for_each<'n>(
        &mut self,
        id: &str,
        field: &str,
        get: &dyn Fn(&str) -> Option<&'n Node>,
        known: &mut BTreeMap<String, Pos>,
    ) -> Option<ForEach> {
        let items_node = get("for_each").unwrap();
        let items = self.template(items_node, &format!("{field}.for_each"))?;
        if let Template::Literal(value) = &items
            && !value.is_array()
        {
            self.error(
                items_node.pos,
                format!("{field}.for_each"),
                format!(
                    "expected a list to loop over (or an expression giving one), found {}",
                    items_node.kind()
                ),
            );
        }
        let var = match get("as") {
            None => "item".to_string(),
            Some(n) => {
                let name = self.string(n, &format!("{field}.as"))?;
                let clash = ROOTS.contains(&name.as_str()) || name == FOR_EACH_INDEX;
                let identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !identifier || clash {
                    self.error(
                        n.pos,
                        format!("{field}.as"),
                        format!(
                            "{name:?} cannot name the element: use letters, digits and '_', \
                             and none of {}, {FOR_EACH_INDEX}",
                            ROOTS.join(", ")
                        ),
                    );
                }
                name
            }
        };
        let concurrency = match get("concurrency") {
            None => 1,
            Some(Node {
                value: NodeValue::Int(v),
                ..
            }) if (1..=1000).contains(v) => *v as u32,
            Some(n) => {
                self.error(
                    n.pos,
                    format!("{field}.concurrency"),
                    format!(
                        "expected how many elements may run at once, a number from 1 to 1000, found {}",
                        n.kind()
                    ),
                );
                1
            }
        };
        let on_error = match get("on_error") {
            None => OnError::FailFast,
            Some(n) => match n.as_str() {
                Some("fail_fast") => OnError::FailFast,
                Some("continue") => OnError::Continue,
                _ => {
                    self.error(
                        n.pos,
                        format!("{field}.on_error"),
                        "expected fail_fast (the loop fails at the first failed element) \
                         or continue (failed elements give {\"error\": ...} entries)",
                    );
                    OnError::FailFast
                }
            },
        };
        let Some(body) = get("steps") else {
            self.error(
                items_node.pos,
                format!("{field}.steps"),
                "a for_each needs the steps to run per element (steps: [...])",
            );
            return None;
        };
        let outer = self.in_loop.replace(id.to_string());
        let before: BTreeSet<String> = known.keys().cloned().collect();
        let steps = self.steps(body, &format!("{field}.steps"), known);
        for inner in known.keys() {
            if !before.contains(inner) {
                self.loop_bodies.insert(inner.clone(), id.to_string());
            }
        }
        self.in_loop = outer;
        Some(ForEach {
            items,
            var,
            concurrency,
            on_error,
            steps,
        })
    }

    /// A `timeout`: a duration of at least 1ms (`what` cannot take none).
    fn timeout(&mut self, node: &Node, field: &str, what: &str) -> Option<Duration> {
        let timeout = self.duration(node, field)?;
        if timeout.is_zero() {
            self.error(
                node.pos,
                field,
                format!("{what} in no time: give it at least 1ms, or leave timeout out"),
            );
            return None;
        }
        Some(timeout)
    }

    fn check_plugin(&mut self, uses: &str, pos: Pos, field: &str) {
        if !self.plugins.contains(uses) {
            let loaded: Vec<&str> = self.plugins.iter().map(String::as_str).collect();
            self.error(
                pos,
                field,
                format!(
                    "unknown plugin {uses}; loaded plugins: {}",
                    loaded.join(", ")
                ),
            );
        }
    }

    /// Walks the steps in order: each may use the steps finished before it;
    /// parallel branches may not use each other.
    fn check_step_refs(
        &mut self,
        steps: &[Step],
        before: &BTreeSet<String>,
        known: &BTreeMap<String, Pos>,
        locals: &[String],
    ) {
        let mut available = before.clone();
        for step in steps {
            let rules = RefRules {
                available: &available,
                known,
                no_steps: None,
                locals,
            };
            let field = format!("steps.{}", step.id);
            if let Some(when) = &step.when {
                self.check_refs(when, step.pos, &format!("{field}.when"), &rules);
            }
            match &step.kind {
                StepKind::Plugin { with, .. } | StepKind::Workflow(SubWorkflow { with, .. }) => {
                    self.check_refs(with, step.pos, &format!("{field}.with"), &rules)
                }
                StepKind::Approval(a) => {
                    if let Some(t) = &a.requester {
                        self.check_refs(
                            t,
                            step.pos,
                            &format!("{field}.approval.requester"),
                            &rules,
                        );
                    }
                    for t in &a.approvers {
                        self.check_refs(
                            t,
                            step.pos,
                            &format!("{field}.approval.approvers"),
                            &rules,
                        );
                    }
                    let mut next = &a.on_timeout;
                    while let OnTimeout::Escalate { to, then, .. } = next {
                        for t in to {
                            self.check_refs(
                                t,
                                step.pos,
                                &format!("{field}.approval.on_timeout"),
                                &rules,
                            );
                        }
                        next = then;
                    }
                }
                StepKind::Wait(WaitFor::Until(t)) => {
                    self.check_refs(t, step.pos, &format!("{field}.wait"), &rules)
                }
                StepKind::Wait(WaitFor::Duration(_)) => {}
                StepKind::Signal(wait) => {
                    if let Some(key) = &wait.key {
                        self.check_refs(key, step.pos, &format!("{field}.wait_for.key"), &rules);
                    }
                    if let Some(matches) = &wait.matches {
                        self.check_refs_allowing(
                            matches,
                            step.pos,
                            &format!("{field}.wait_for.match"),
                            &rules,
                            &["signal"],
                        );
                    }
                }
                StepKind::Parallel(branches) => {
                    // Branches run concurrently: each sees only what came before the group.
                    for branch in branches {
                        self.check_step_refs(
                            std::slice::from_ref(branch),
                            &available,
                            known,
                            locals,
                        );
                    }
                    available.extend(branches.iter().map(|b| b.id.clone()));
                }
                StepKind::ForEach(each) => {
                    self.check_refs(&each.items, step.pos, &format!("{field}.for_each"), &rules);
                    // The body sees what came before the loop, its element
                    // and index, and its own earlier steps.
                    let mut inner = locals.to_vec();
                    inner.push(each.var.clone());
                    inner.push(FOR_EACH_INDEX.to_string());
                    self.check_step_refs(&each.steps, &available, known, &inner);
                }
            }
            available.insert(step.id.clone());
        }
    }

    fn retry(&mut self, node: &Node, field: &str) -> Option<RetryPolicy> {
        let entries = self.mapping(
            node,
            field,
            &["max_attempts", "backoff", "max_backoff", "backoff_jitter"],
        )?;
        let mut policy = RetryPolicy::default();
        for (key, value) in entries {
            match key.as_str() {
                "max_attempts" => match value.value {
                    NodeValue::Int(n) if (1..=100).contains(&n) => policy.max_attempts = n as u32,
                    _ => self.error(
                        value.pos,
                        join_field(field, key),
                        "expected an integer from 1 to 100",
                    ),
                },
                "backoff" => policy.backoff = self.duration(value, &join_field(field, key))?,
                "max_backoff" => {
                    policy.max_backoff = self.duration(value, &join_field(field, key))?
                }
                "backoff_jitter" => match value.value {
                    NodeValue::Bool(b) => policy.jitter = b,
                    _ => self.error(value.pos, join_field(field, key), "expected true or false"),
                },
                _ => {}
            }
        }
        Some(policy)
    }

    fn wait(&mut self, node: &Node, field: &str) -> Option<WaitFor> {
        let text = self.string(node, field).or_else(|| match node.value {
            NodeValue::Int(_) => Some(String::new()),
            _ => None,
        })?;
        if text.is_empty() {
            return self.duration(node, field).map(WaitFor::Duration);
        }
        if text.contains("${{") {
            return self.template(node, field).map(WaitFor::Until);
        }
        if let Ok(d) = humantime::parse_duration(&text) {
            return Some(WaitFor::Duration(d));
        }
        if chrono::DateTime::parse_from_rfc3339(&text).is_ok() {
            return Some(WaitFor::Until(Template::Literal(Value::String(text))));
        }
        self.error(
            node.pos,
            field,
            format!("{text:?} is neither a duration (10m, 2h) nor an RFC 3339 time"),
        );
        None
    }

    /// `wait_for: { signal, key, match, timeout, on_timeout }`.
    fn signal_wait(&mut self, node: &Node, field: &str) -> Option<SignalWait> {
        let entries = self.mapping(
            node,
            field,
            &["signal", "key", "match", "timeout", "on_timeout"],
        )?;
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let signal = match get("signal") {
            Some(n) => {
                let name = self.string(n, &format!("{field}.signal"))?;
                if let Err(e) = check_signal_name(&name) {
                    self.error(n.pos, format!("{field}.signal"), e);
                }
                name
            }
            None => {
                self.error(
                    node.pos,
                    format!("{field}.signal"),
                    "wait_for needs the name of the signal it waits for (signal: ticket-updated)",
                );
                return None;
            }
        };
        let key = match get("key") {
            Some(n) if matches!(n.value, NodeValue::Str(_) | NodeValue::Int(_)) => {
                Some(self.template(n, &format!("{field}.key"))?)
            }
            Some(n) => {
                self.error(
                    n.pos,
                    format!("{field}.key"),
                    format!(
                        "expected a string or an expression such as \"${{{{ input.number }}}}\", found {}",
                        n.kind()
                    ),
                );
                None
            }
            None => None,
        };
        let matches = get("match").and_then(|n| self.condition(n, &format!("{field}.match")));
        let timeout = get("timeout")
            .and_then(|n| self.timeout(n, &format!("{field}.timeout"), "a wait cannot end"));
        let on_timeout = match get("on_timeout") {
            None => SignalTimeout::Fail,
            Some(n) => match n.as_str() {
                Some("fail") => SignalTimeout::Fail,
                Some("continue") => SignalTimeout::Continue,
                _ => {
                    self.error(
                        n.pos,
                        format!("{field}.on_timeout"),
                        "expected fail (the step fails) or continue (the step's output is null)",
                    );
                    SignalTimeout::Fail
                }
            },
        };
        if let Some(n) = get("on_timeout")
            && get("timeout").is_none()
        {
            self.error(
                n.pos,
                format!("{field}.on_timeout"),
                "on_timeout needs a timeout",
            );
        }
        Some(SignalWait {
            signal,
            key,
            matches,
            timeout,
            on_timeout,
        })
    }

    fn quorum(&mut self, node: &Node, field: &str) -> Option<Quorum> {
        match &node.value {
            NodeValue::Int(n) if *n >= 1 => Some(Quorum::Count(*n as u32)),
            NodeValue::Str(s) if s == "any" => Some(Quorum::Any),
            NodeValue::Str(s) if s == "all" => Some(Quorum::All),
            NodeValue::Str(s) if s.ends_with('%') => match s.trim_end_matches('%').parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Some(Quorum::Percent(p)),
                _ => {
                    self.error(
                        node.pos,
                        field,
                        format!("{s:?}: a percentage is 1% to 100%"),
                    );
                    None
                }
            },
            _ => {
                self.error(
                    node.pos,
                    field,
                    "expected any, all, a number of approvers, or a percentage",
                );
                None
            }
        }
    }

    fn approvers(&mut self, node: &Node, field: &str) -> Option<Vec<Template>> {
        let NodeValue::Seq(items) = &node.value else {
            self.error(
                node.pos,
                field,
                format!("expected a list of approvers, found {}", node.kind()),
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                node.pos,
                field,
                "expected at least one approver (a user name or group:NAME)",
            );
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.template(item, &format!("{field}[{i}]")))
            .collect()
    }

    fn approval(&mut self, node: &Node, field: &str) -> Option<Approval> {
        let entries = self.mapping(
            node,
            field,
            &[
                "approvers",
                "quorum",
                "timeout",
                "on_timeout",
                "requester",
                "allow_self_approval",
            ],
        )?;
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let approvers = match get("approvers") {
            Some(n) => self.approvers(n, &format!("{field}.approvers"))?,
            None => {
                self.error(
                    node.pos,
                    format!("{field}.approvers"),
                    "an approval needs approvers",
                );
                return None;
            }
        };
        let quorum = get("quorum").map_or(Some(Quorum::Any), |n| {
            self.quorum(n, &format!("{field}.quorum"))
        })?;
        let timeout = get("timeout").and_then(|n| self.duration(n, &format!("{field}.timeout")));
        let on_timeout = match get("on_timeout") {
            None => OnTimeout::Reject,
            Some(n) => self.on_timeout(n, &format!("{field}.on_timeout"))?,
        };
        if timeout.is_none() && get("on_timeout").is_some() {
            self.error(
                node.pos,
                format!("{field}.on_timeout"),
                "on_timeout needs a timeout",
            );
        }
        let requester = match get("requester") {
            Some(n) => Some(self.requester(n, &format!("{field}.requester"))?),
            None => None,
        };
        let allow_self_approval = match get("allow_self_approval").map(|n| (n, &n.value)) {
            None => false,
            Some((_, NodeValue::Bool(b))) => *b,
            Some((n, _)) => {
                self.error(
                    n.pos,
                    format!("{field}.allow_self_approval"),
                    format!("expected true or false, found {}", n.kind()),
                );
                false
            }
        };
        if !allow_self_approval {
            // Reported at the quorum when it is written out, else at the approval.
            let pos = get("quorum").map_or(node.pos, |n| n.pos);
            self.check_four_eyes_quorum(pos, field, &approvers, quorum, requester.as_ref());
        }
        Some(Approval {
            approvers,
            quorum,
            timeout,
            on_timeout,
            requester,
            allow_self_approval,
        })
    }

    /// A requester is one name: a string, literal or an expression.
    fn requester(&mut self, node: &Node, field: &str) -> Option<Template> {
        if !matches!(node.value, NodeValue::Str(_)) {
            self.error(
                node.pos,
                field,
                format!(
                    "expected a name or an expression such as ${{{{ input.employee }}}}, found {}",
                    node.kind()
                ),
            );
            return None;
        }
        self.template(node, field)
    }

    /// With only literal people as approvers and a literal requester, the
    /// requester's exclusion is known now: a quorum that could then never
    /// be met is an error here rather than a run stuck waiting. Groups and
    /// expressions are resolved when the approval opens, so they are not
    /// judged.
    fn check_four_eyes_quorum(
        &mut self,
        pos: Pos,
        field: &str,
        approvers: &[Template],
        quorum: Quorum,
        requester: Option<&Template>,
    ) {
        let Some(Template::Literal(Value::String(requester))) = requester else {
            return;
        };
        let requester = requester.trim();
        let mut people: Vec<&str> = Vec::new();
        for approver in approvers {
            match approver {
                Template::Literal(Value::String(name)) if !name.starts_with("group:") => {
                    let name = name.trim();
                    if !people.contains(&name) {
                        people.push(name);
                    }
                }
                _ => return,
            }
        }
        if !people.contains(&requester) {
            return;
        }
        let needed = match quorum {
            Quorum::Any => 1,
            Quorum::All => people.len(),
            Quorum::Count(c) => (c as usize).min(people.len()),
            Quorum::Percent(_) => quorum.required(people.len()) as usize,
        };
        let others = people.len() - 1;
        if needed > others {
            self.error(
                pos,
                format!("{field}.quorum"),
                format!(
                    "{needed} approval(s) needed but only {others} of the approvers ({}) may decide: {requester} is the requester and may not approve their own request (add approvers, lower the quorum, or set allow_self_approval: true)",
                    people.join(", ")
                ),
            );
        }
    }

    fn on_timeout(&mut self, node: &Node, field: &str) -> Option<OnTimeout> {
        match node.as_str() {
            Some("reject") => return Some(OnTimeout::Reject),
            Some("approve") => return Some(OnTimeout::Approve),
            _ => {}
        }
        let entries = self.mapping(
            node,
            field,
            &["action", "escalate_to", "quorum", "timeout", "on_timeout"],
        )?;
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        if let Some(to) = get("escalate_to") {
            let to = self.approvers(to, &format!("{field}.escalate_to"))?;
            let quorum = get("quorum").map_or(Some(Quorum::Any), |n| {
                self.quorum(n, &format!("{field}.quorum"))
            })?;
            let timeout =
                get("timeout").and_then(|n| self.duration(n, &format!("{field}.timeout")));
            // What happens when the escalation times out too: another
            // escalation, or (by default) a rejection.
            let then = match get("on_timeout") {
                Some(n) => self.on_timeout(n, &format!("{field}.on_timeout"))?,
                None => OnTimeout::Reject,
            };
            return Some(OnTimeout::Escalate {
                to,
                quorum,
                timeout,
                then: Box::new(then),
            });
        }
        match get("action").and_then(Node::as_str) {
            Some("reject") => Some(OnTimeout::Reject),
            Some("approve") => Some(OnTimeout::Approve),
            _ => {
                self.error(
                    node.pos,
                    field,
                    "expected reject, approve, or { escalate_to: [...], timeout: ... }",
                );
                None
            }
        }
    }

    /// A step named by a field (`responded_when`, `pause_while`); an
    /// unknown one is an error saying what to name (`hint`).
    fn step_name(
        &mut self,
        node: &Node,
        field: &str,
        rules_all: &RefRules<'_>,
        hint: &str,
    ) -> Option<String> {
        let id = self.string(node, field)?;
        if !rules_all.known.contains_key(&id) {
            self.error(node.pos, field, format!("unknown step {id}: {hint}"));
        }
        Some(id)
    }

    fn sla(&mut self, node: &Node, rules_all: &RefRules<'_>) -> Option<Sla> {
        let field = "sla";
        let entries = self.mapping(
            node,
            field,
            &[
                "priority",
                "resolution",
                "calendar",
                "pause_while",
                "escalations",
                "response",
                "responded_when",
            ],
        )?;
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let start_rules = RefRules {
            available: rules_all.available,
            known: rules_all.known,
            no_steps: Some(
                "sla.priority is set when the run starts: use input, run or env, not steps",
            ),
            locals: &[],
        };
        let priority = match get("priority") {
            Some(n) => {
                let t = self.template(n, "sla.priority")?;
                self.check_refs(&t, n.pos, "sla.priority", &start_rules);
                t
            }
            None => {
                self.error(
                    node.pos,
                    "sla.priority",
                    "an SLA needs a priority (P1..P4 or an expression)",
                );
                return None;
            }
        };
        let resolution = get("resolution").map(|n| self.targets(n, "sla.resolution"));
        let response = get("response")
            .map(|n| self.targets(n, "sla.response"))
            .unwrap_or_default();
        let responded_when = get("responded_when").and_then(|n| {
            self.step_name(
                n,
                "sla.responded_when",
                rules_all,
                "name the step whose end is the response",
            )
        });
        if responded_when.is_some() && response.is_empty() {
            self.error(
                node.pos,
                "sla.responded_when",
                "responded_when needs response targets, e.g. response: { P1: 15m }",
            );
        }
        let resolution = match resolution {
            Some(r) => r,
            None => {
                self.error(
                    node.pos,
                    "sla.resolution",
                    "an SLA needs resolution targets, e.g. { P1: 4h, P2: 1d }",
                );
                BTreeMap::new()
            }
        };
        let calendar = get("calendar").and_then(|n| self.string(n, "sla.calendar"));
        let pause_while = get("pause_while").and_then(|n| {
            self.step_name(
                n,
                "sla.pause_while",
                rules_all,
                "name the step during which the clock stops (an approval, say)",
            )
        });
        let mut escalations = Vec::new();
        if let Some(list) = get("escalations") {
            if let NodeValue::Seq(items) = &list.value {
                for (i, item) in items.iter().enumerate() {
                    if let Some(e) =
                        self.escalation(item, &format!("sla.escalations[{i}]"), rules_all)
                    {
                        escalations.push(e);
                    }
                }
            } else {
                self.error(
                    list.pos,
                    "sla.escalations",
                    format!("expected a list, found {}", list.kind()),
                );
            }
        }
        Some(Sla {
            priority,
            resolution,
            response,
            responded_when,
            calendar,
            pause_while,
            escalations,
        })
    }

    /// Targets per priority, e.g. `{ P1: 4h, P2: 1d }`.
    fn targets(&mut self, node: &Node, field: &str) -> BTreeMap<String, Duration> {
        let mut out = BTreeMap::new();
        if let Some(targets) = self.mapping(node, field, &["P1", "P2", "P3", "P4", "P5"]) {
            for (p, d) in targets {
                if let Some(d) = self.duration(d, &format!("{field}.{p}")) {
                    out.insert(p.clone(), d);
                }
            }
        }
        out
    }

    fn escalation(&mut self, node: &Node, field: &str, rules: &RefRules<'_>) -> Option<Escalation> {
        let entries = self.mapping(node, field, &["at", "uses", "with"])?;
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let at_node = get("at").or_else(|| {
            self.error(
                node.pos,
                format!("{field}.at"),
                "an escalation needs `at`, e.g. 75%",
            );
            None
        })?;
        let at_percent = match &at_node.value {
            NodeValue::Str(s) => s.trim_end_matches('%').trim().parse::<f64>().ok(),
            NodeValue::Int(i) => Some(*i as f64),
            NodeValue::Float(f) => Some(*f),
            _ => None,
        }
        .filter(|p| *p > 0.0 && *p <= 1000.0);
        let Some(at_percent) = at_percent else {
            self.error(
                at_node.pos,
                format!("{field}.at"),
                "expected a share of the target such as 75% or 100%",
            );
            return None;
        };
        let uses_node = get("uses").or_else(|| {
            self.error(
                node.pos,
                format!("{field}.uses"),
                "an escalation needs a plugin (uses)",
            );
            None
        })?;
        let uses = self.string(uses_node, &format!("{field}.uses"))?;
        self.check_plugin(&uses, uses_node.pos, &format!("{field}.uses"));
        let with = match get("with") {
            Some(w) => {
                let t = self.template(w, &format!("{field}.with"))?;
                self.check_refs(&t, w.pos, &format!("{field}.with"), rules);
                t
            }
            None => Template::Object(Vec::new()),
        };
        let index = field
            .trim_start_matches("sla.escalations[")
            .trim_end_matches(']');
        Some(Escalation {
            at_percent,
            step: Step {
                id: sla_escalation_id(index.parse().unwrap_or(0)),
                when: None,
                kind: StepKind::Plugin { uses, with },
                retry: None,
                timeout: None,
                pos: node.pos,
            },
        })
    }

    fn triggers(&mut self, node: &Node) -> Vec<Trigger> {
        let NodeValue::Seq(items) = &node.value else {
            self.error(
                node.pos,
                "triggers",
                format!("expected a list, found {}", node.kind()),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("triggers[{i}]");
            let Some(entries) = self.mapping(
                item,
                &field,
                &[
                    "cron",
                    "timezone",
                    "input",
                    "overlap",
                    "catch_up",
                    "catch_up_window",
                ],
            ) else {
                continue;
            };
            let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
            let Some(cron_node) = get("cron") else {
                self.error(
                    item.pos,
                    format!("{field}.cron"),
                    "a trigger needs a cron expression",
                );
                continue;
            };
            let Some(cron) = self.string(cron_node, &format!("{field}.cron")) else {
                continue;
            };
            let timezone = match get("timezone") {
                Some(n) => match self.string(n, &format!("{field}.timezone")) {
                    Some(tz) => tz,
                    None => continue,
                },
                None => "UTC".to_string(),
            };
            let mut spec = crate::schedule::ScheduleSpec::new("", &cron);
            spec.timezone = timezone;
            spec.input = get("input").map_or(Value::Object(Default::default()), Node::to_json);
            let mut problems = Vec::new();
            if let Err(e) = spec.parse_cron() {
                let at = if e.field == "cron" {
                    cron_node.pos
                } else {
                    get("timezone").map_or(item.pos, |n| n.pos)
                };
                problems.push((at, e));
            }
            let text = |key: &str| {
                get(key).and_then(|n| match &n.value {
                    NodeValue::Str(s) => Some((n.pos, s.clone())),
                    _ => None,
                })
            };
            if let Some((pos, s)) = text("overlap") {
                match crate::schedule::Overlap::parse(&s) {
                    Ok(o) => spec.overlap = o,
                    Err(e) => problems.push((pos, e)),
                }
            }
            if let Some((pos, s)) = text("catch_up") {
                match crate::schedule::CatchUp::parse(&s) {
                    Ok(c) => spec.catch_up = c,
                    Err(e) => problems.push((pos, e)),
                }
            }
            if let Some((pos, s)) = text("catch_up_window") {
                match crate::schedule::parse_window(&s) {
                    Ok(w) => spec.catch_up_window = w,
                    Err(e) => problems.push((pos, e)),
                }
            }
            for key in ["overlap", "catch_up", "catch_up_window"] {
                if let Some(n) = get(key)
                    && !matches!(n.value, NodeValue::Str(_))
                {
                    self.error(
                        n.pos,
                        format!("{field}.{key}"),
                        format!("expected a string, found {}", n.kind()),
                    );
                }
            }
            let failed = !problems.is_empty();
            for (pos, e) in problems {
                self.error(pos, format!("{field}.{}", e.field), e.message);
            }
            if failed {
                continue;
            }
            out.push(Trigger {
                cron: spec.cron,
                timezone: spec.timezone,
                input: spec.input,
                overlap: spec.overlap,
                catch_up: spec.catch_up,
                catch_up_window: spec.catch_up_window,
            });
        }
        out
    }
}

fn join_field(field: &str, key: &str) -> String {
    if field == "workflow" {
        key.to_string()
    } else {
        format!("{field}.{key}")
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
