//! Checks between workflows, which one file cannot make alone: a
//! `workflow:` step must name a workflow that exists, a literal input must
//! match that workflow's input schema, and no chain of sub-workflows may
//! lead back to where it started (it would never end).

use std::sync::Arc;

use serde_json::Value;

use super::expr::Template;
use super::load::ValidationError;
use super::model::{StepKind, SubWorkflow, Workflow};

/// Finds a workflow by name and, when given, version.
pub type Find<'a> = dyn Fn(&str, Option<u32>) -> Option<Arc<Workflow>> + 'a;

/// Every problem with `workflow`'s sub-workflow steps, each at its step.
pub fn check_links(workflow: &Workflow, find: &Find<'_>) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    for step in workflow.all_steps() {
        let StepKind::Workflow(child) = &step.kind else {
            continue;
        };
        let error = |message: String| ValidationError {
            file: workflow.file.clone(),
            pos: step.pos,
            field: format!("steps.{}.workflow", step.id),
            message,
        };
        if child.name == workflow.name {
            errors.push(error(format!(
                "workflow {} calls itself: a cycle of sub-workflows would never end",
                workflow.name
            )));
            continue;
        }
        let Some(target) = find(&child.name, child.version) else {
            let version = child
                .version
                .map(|v| format!(" version {v}"))
                .unwrap_or_default();
            errors.push(error(format!(
                "unknown workflow {}{version}: deploy it first, or put it in the same workflow folder",
                child.name
            )));
            continue;
        };
        if let Some(input) = literal(&child.with)
            && let Err(problems) = target.check_input_for_client(&input)
        {
            for problem in problems {
                errors.push(ValidationError {
                    field: format!("steps.{}.with", step.id),
                    ..error(format!(
                        "does not match the input of workflow {}: {problem}",
                        child.name
                    ))
                });
            }
        }
        if let Some(chain) = path_back(&target, &workflow.name, find, &mut vec![child.name.clone()])
        {
            errors.push(error(format!(
                "{} -> {}: a cycle of sub-workflows would never end",
                workflow.name,
                chain.join(" -> ")
            )));
        }
    }
    errors
}

/// The chain of workflow names from `from` (already on `path`) back to
/// `home`, if any, through the latest versions.
fn path_back(
    from: &Workflow,
    home: &str,
    find: &Find<'_>,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    for step in from.all_steps() {
        let StepKind::Workflow(SubWorkflow { name, version, .. }) = &step.kind else {
            continue;
        };
        if name == home {
            let mut chain = path.clone();
            chain.push(name.clone());
            return Some(chain);
        }
        if path.contains(name) {
            continue; // a cycle not through `home`: reported for its own members
        }
        let Some(next) = find(name, *version) else {
            continue;
        };
        path.push(name.clone());
        let found = path_back(&next, home, find, path);
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The value of a template without expressions.
fn literal(template: &Template) -> Option<Value> {
    match template {
        Template::Literal(value) => Some(value.clone()),
        Template::Array(items) => items
            .iter()
            .map(literal)
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
        Template::Object(entries) => entries
            .iter()
            .map(|(k, t)| Some((k.clone(), literal(t)?)))
            .collect::<Option<serde_json::Map<_, _>>>()
            .map(Value::Object),
        Template::Expr(_) | Template::Interpolate(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, file: &str) -> Arc<Workflow> {
        let plugins = ["transform".to_string()].into();
        Arc::new(crate::workflow::load_str(yaml, file, &plugins).unwrap())
    }

    fn errors_of(workflow: &Workflow, others: &[Arc<Workflow>]) -> Vec<String> {
        let find = |name: &str, _: Option<u32>| others.iter().find(|w| w.name == name).cloned();
        check_links(workflow, &find)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    const CHILD: &str = "name: child\ninput:\n  type: object\n  required: [n]\n  properties: { n: { type: integer } }\nsteps:\n  - id: t\n    uses: transform\n";

    #[test]
    fn unknown_children_bad_literal_inputs_and_cycles_are_reported_at_the_step() {
        let child = load(CHILD, "child.yaml");
        let parent = load(
            "name: parent\nsteps:\n  - id: a\n    workflow: child\n    with: { n: seven }\n  - id: b\n    workflow: nobody\n  - id: c\n    workflow: child\n    with: { n: \"${{ input.n }}\" }\n",
            "parent.yaml",
        );
        let errors = errors_of(&parent, std::slice::from_ref(&child));
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with("parent.yaml:3:5: steps.a.with: does not match the input of workflow child: child.yaml:"), "{}", errors[0]);
        assert!(
            errors[1].starts_with(
                "parent.yaml:6:5: steps.b.workflow: unknown workflow nobody: deploy it first"
            ),
            "{}",
            errors[1]
        );

        let ping = load(
            "name: ping\nsteps:\n  - id: p\n    workflow: pong\n",
            "ping.yaml",
        );
        let pong = load(
            "name: pong\nsteps:\n  - id: q\n    workflow: ping\n",
            "pong.yaml",
        );
        let errors = errors_of(&ping, &[ping.clone(), pong.clone()]);
        assert_eq!(
            errors,
            [
                "ping.yaml:3:5: steps.p.workflow: ping -> pong -> ping: a cycle of sub-workflows would never end"
            ]
        );
        let me = load(
            "name: me\nsteps:\n  - id: again\n    workflow: me\n",
            "me.yaml",
        );
        let errors = errors_of(&me, &[]);
        assert!(errors[0].contains("workflow me calls itself"), "{errors:?}");
    }
}
