//! `steward validate` on broken workflows: every error names the file, the
//! line and column, and the field. Cases are data: a workflow and what the
//! error must say.

use crate::common;

use std::process::Command;

/// A valid workflow to break in small ways.
const BASE: &str = "name: demo
steps:
  - id: first
    uses: transform
    with: { a: 1 }
  - id: second
    uses: transform
    with: { b: \"${{ steps.first.output.a }}\" }
";

struct Case {
    name: &'static str,
    yaml: String,
    /// Substrings the output must contain, `FILE` replaced by the path.
    expect: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "yaml syntax error",
            yaml: "name: demo\nsteps:\n  - id: a\n    uses: [transform\n".into(),
            expect: &["FILE:5:", "yaml: syntax error"],
        },
        Case {
            name: "unknown step",
            yaml: BASE.replace("steps.first.output.a", "steps.nope.output.a"),
            expect: &["FILE:6:", "steps.second.with: `steps.nope.output.a`: unknown step nope"],
        },
        Case {
            name: "later step",
            yaml: BASE.replace("with: { a: 1 }", "with: { a: \"${{ steps.second.output.b }}\" }"),
            expect: &["FILE:3:", "steps.first.with", "step second (line 6) has not finished"],
        },
        Case {
            name: "bad expression",
            yaml: BASE.replace("steps.first.output.a", "steps.first.output.a +"),
            expect: &["FILE:8:", "steps.second.with.b: invalid expression `steps.first.output.a +`"],
        },
        Case {
            name: "unknown variable",
            yaml: BASE.replace("steps.first.output.a", "secrets.token"),
            expect: &["FILE:6:", "unknown variable secrets"],
        },
        Case {
            name: "when that is text",
            yaml: BASE.replace("with: { a: 1 }", "with: { a: 1 }\n    when: yes please"),
            expect: &["FILE:6:11: steps.first.when: expected one expression", "the text \"yes please\""],
        },
        Case {
            name: "when that is a number",
            yaml: BASE.replace("with: { a: 1 }", "with: { a: 1 }\n    when: 42"),
            expect: &["FILE:6:11: steps.first.when:", "found an integer"],
        },
        Case {
            name: "sla paused by a step that does not exist",
            yaml: "name: demo\nsla:\n  priority: P1\n  resolution: { P1: 4h }\n  pause_while: ghost\nsteps:\n  - id: a\n    uses: transform\n    with: { a: 1 }\n".into(),
            expect: &["FILE:5:", "sla.pause_while: unknown step ghost"],
        },
        Case {
            name: "unknown field of run",
            yaml: BASE.replace("steps.first.output.a", "run.nonsense"),
            expect: &["FILE:6:", "`run.nonsense`: run has no field nonsense; it has id, workflow, version, started_at"],
        },
        Case {
            name: "zero timeout",
            yaml: BASE.replace("with: { a: 1 }", "with: { a: 1 }\n    timeout: 0s"),
            expect: &["FILE:6:14: steps.first.timeout: a step cannot finish in no time"],
        },
        Case {
            name: "unknown plugin",
            yaml: BASE.replace("uses: transform\n    with: { b", "uses: cmdb-lookupp\n    with: { b"),
            expect: &["FILE:7:11: steps.second.uses: unknown plugin cmdb-lookupp; loaded plugins:", "transform"],
        },
        Case {
            name: "duplicate id",
            yaml: BASE.replace("id: second", "id: first"),
            expect: &["FILE:6:9: steps.first.id: duplicate step id (first used on line 3)"],
        },
        Case {
            name: "unknown field",
            yaml: BASE.replace("with: { a: 1 }", "with: { a: 1 }\n    retries: 3"),
            expect: &["FILE:6:14: steps.first.retries: unknown field"],
        },
        Case {
            name: "bad duration",
            yaml: BASE.replace("with: { a: 1 }", "with: { a: 1 }\n    timeout: soon"),
            expect: &["FILE:6:14: steps.first.timeout: \"soon\" is not a duration"],
        },
        Case {
            name: "step without a kind",
            yaml: "name: demo\nsteps:\n  - id: a\n".into(),
            expect: &["FILE:3:5: steps.a: a step needs exactly one of uses, approval, parallel, wait, wait_for, for_each or workflow"],
        },
        Case {
            name: "parallel branches cannot see each other",
            yaml: "name: demo\nsteps:\n  - id: group\n    parallel:\n      - { id: x, uses: transform }\n      - { id: y, uses: transform, with: { v: \"${{ steps.x.output }}\" } }\n".into(),
            expect: &["FILE:6:11: steps.y.with", "step x (line 5) has not finished"],
        },
        Case {
            name: "sla priority cannot read steps",
            yaml: format!("{BASE}sla:\n  priority: ${{{{ steps.first.output.a }}}}\n  resolution: {{ P1: 4h }}\n"),
            expect: &["FILE:10:13: sla.priority", "use input, run or env, not steps"],
        },
        Case {
            name: "bad input schema",
            yaml: format!("{BASE}input:\n  type: objekt\n"),
            expect: &["FILE:10:3: input: not a valid JSON Schema"],
        },
        Case {
            name: "bad worker tag",
            yaml: format!("{BASE}tags: [gpu, \"GPU Cluster\"]\n"),
            expect: &["FILE:9:13: tags[1]:", "\"GPU Cluster\" is not a tag"],
        },
        Case {
            name: "zero concurrency",
            yaml: format!("{BASE}concurrency: 0\n"),
            expect: &["FILE:9:14: concurrency:", "a number from 1 to 100000"],
        },
        Case {
            name: "bad cron",
            yaml: format!("{BASE}triggers:\n  - cron: \"0 25 * * *\"\n"),
            expect: &["FILE:10:11: triggers[0].cron:", "is not a cron expression"],
        },
        Case {
            name: "cron with 7 fields",
            yaml: format!("{BASE}triggers:\n  - cron: \"0 0 9 * * MON 2027\"\n"),
            expect: &["FILE:10:11: triggers[0].cron:", "7 fields"],
        },
        Case {
            name: "unknown time zone",
            yaml: format!("{BASE}triggers:\n  - cron: \"@daily\"\n    timezone: Europe/Atlantis\n"),
            expect: &["FILE:11:15: triggers[0].timezone: unknown time zone \"Europe/Atlantis\""],
        },
        Case {
            name: "bad overlap policy",
            yaml: format!("{BASE}triggers:\n  - cron: \"@daily\"\n    overlap: sometimes\n"),
            expect: &["FILE:11:14: triggers[0].overlap: \"sometimes\" is not an overlap policy: use skip, queue, allow or cancel_previous"],
        },
        Case {
            name: "trigger input against the schema",
            yaml: format!("{BASE}input:\n  type: object\n  required: [team]\ntriggers:\n  - cron: \"@daily\"\n    input: {{ region: eu }}\n"),
            expect: &["triggers[0].input: does not match the workflow's input schema", "team"],
        },
        Case {
            name: "responded_when names an unknown step",
            yaml: format!("{BASE}sla:\n  priority: P1\n  resolution: {{ P1: 4h }}\n  response: {{ P1: 15m }}\n  responded_when: acknowledge\n"),
            expect: &["FILE:13:19: sla.responded_when: unknown step acknowledge"],
        },
        Case {
            name: "a quorum only the requester could complete",
            yaml: FOUR_EYES.replace("QUORUM", "2").replace("REQUESTER", "max"),
            expect: &[
                "FILE:6:15: steps.ask.approval.quorum: 2 approval(s) needed but only 1 of the approvers (max, ann) may decide",
                "max is the requester",
            ],
        },
        Case {
            name: "quorum all with the requester among the approvers",
            yaml: FOUR_EYES.replace("QUORUM", "all").replace("REQUESTER", "ann"),
            expect: &["FILE:6:15: steps.ask.approval.quorum:", "ann is the requester"],
        },
        Case {
            name: "a requester that is not a name",
            yaml: FOUR_EYES.replace("QUORUM", "any").replace("REQUESTER", "[max, ann]"),
            expect: &["FILE:7:18: steps.ask.approval.requester: expected a name or an expression"],
        },
        Case {
            name: "a requester from a step that does not exist",
            yaml: FOUR_EYES.replace("QUORUM", "any").replace("REQUESTER", "\"${{ steps.form.output.employee }}\""),
            expect: &["steps.ask.approval.requester", "unknown step form"],
        },
        Case {
            name: "allow_self_approval that is not a boolean",
            yaml: format!("{}      allow_self_approval: sometimes\n", FOUR_EYES.replace("QUORUM", "any").replace("REQUESTER", "max")),
            expect: &["FILE:8:28: steps.ask.approval.allow_self_approval: expected true or false"],
        },
        Case {
            name: "for_each over a literal that is not a list",
            yaml: LOOP.replace("${{ input.items }}", "seven"),
            expect: &["FILE:4:15: steps.each.for_each: expected a list to loop over"],
        },
        Case {
            name: "a loop's item used outside it",
            yaml: format!("{LOOP}  - id: after\n    uses: transform\n    with: {{ x: \"${{{{ item.sku }}}}\" }}\n"),
            expect: &["steps.after.with", "unknown variable item", "exist only inside its for_each"],
        },
        Case {
            name: "a step inside a loop read after it",
            yaml: format!("{LOOP}  - id: after\n    uses: transform\n    with: {{ x: \"${{{{ steps.order.output }}}}\" }}\n"),
            expect: &["steps.after.with", "step order runs once per element inside for_each each", "steps.each.output"],
        },
        Case {
            name: "an approval inside a loop",
            yaml: LOOP.replace("      - id: order\n        uses: transform\n        with: { sku: \"${{ item.sku }}\", n: \"${{ index }}\" }\n", "      - id: order\n        approval: { approvers: [ana] }\n"),
            expect: &["FILE:7:9: steps.order: approval steps cannot run inside for_each each"],
        },
        Case {
            name: "a wait_for inside a loop",
            yaml: LOOP.replace("        uses: transform\n        with: { sku: \"${{ item.sku }}\", n: \"${{ index }}\" }\n", "        wait_for: { signal: answered }\n"),
            expect: &["FILE:7:9: steps.order: wait_for steps cannot run inside for_each each"],
        },
        Case {
            name: "a loop inside a loop",
            yaml: LOOP.replace("        uses: transform\n        with: { sku: \"${{ item.sku }}\", n: \"${{ index }}\" }\n", "        for_each: [1, 2]\n        steps: [{ id: inner, uses: transform }]\n"),
            expect: &["steps.order: a for_each inside a for_each cannot run inside for_each each"],
        },
        Case {
            name: "a loop whose element name hides a root",
            yaml: LOOP.replace("    concurrency: 5\n", "    concurrency: 5\n    as: input\n"),
            expect: &["FILE:6:9: steps.each.as: \"input\" cannot name the element"],
        },
        Case {
            name: "a loop with a concurrency out of range",
            yaml: LOOP.replace("concurrency: 5", "concurrency: 0"),
            expect: &["FILE:5:18: steps.each.concurrency: expected how many elements may run at once"],
        },
        Case {
            name: "a loop with an unknown on_error",
            yaml: LOOP.replace("    concurrency: 5\n", "    concurrency: 5\n    on_error: ignore\n"),
            expect: &["FILE:6:15: steps.each.on_error: expected fail_fast", "or continue"],
        },
        Case {
            name: "a loop without steps",
            yaml: "name: demo\nsteps:\n  - id: each\n    for_each: [1]\n".into(),
            expect: &["steps.each.steps: a for_each needs the steps to run per element"],
        },
        Case {
            name: "a version on a plugin step",
            yaml: BASE.replace("with: { a: 1 }", "with: { a: 1 }\n    version: 2"),
            expect: &["FILE:6:14: steps.first.version: only sub-workflow steps (workflow) take `version`"],
        },
        Case {
            name: "a sub-workflow version that is not a number",
            yaml: "name: demo\nsteps:\n  - id: sub\n    workflow: other\n    version: latest\n".into(),
            expect: &["FILE:5:14: steps.sub.version: expected a positive integer"],
        },
        Case {
            name: "loop fields on a plugin step",
            yaml: BASE.replace("with: { a: 1 }", "with: { a: 1 }\n    concurrency: 4"),
            expect: &["FILE:6:18: steps.first.concurrency: only for_each steps take `concurrency`"],
        },
    ]
}

/// A loop over the input's items, to break in small ways.
const LOOP: &str = "name: order
steps:
  - id: each
    for_each: ${{ input.items }}
    concurrency: 5
    steps:
      - id: order
        uses: transform
        with: { sku: \"${{ item.sku }}\", n: \"${{ index }}\" }
";

/// An approval by two people with a requester, to break in small ways.
const FOUR_EYES: &str = "name: leave
steps:
  - id: ask
    approval:
      approvers: [max, ann]
      quorum: QUORUM
      requester: REQUESTER
";

/// The four-eyes check rejects only what can never be met: a requester
/// outside the approvers, a quorum the others meet, a group resolved
/// later, or `allow_self_approval` all validate.
#[test]
fn an_approval_its_requester_alone_could_meet_is_refused_but_not_one_the_others_can() {
    let dir = tempfile::tempdir().unwrap();
    let valid = [
        FOUR_EYES.replace("QUORUM", "2").replace("REQUESTER", "eve"),
        FOUR_EYES.replace("QUORUM", "1").replace("REQUESTER", "max"),
        FOUR_EYES
            .replace("QUORUM", "2")
            .replace("REQUESTER", "\"${{ input.employee }}\""),
        FOUR_EYES
            .replace("[max, ann]", "[max, group:cab]")
            .replace("QUORUM", "2")
            .replace("REQUESTER", "max"),
        format!(
            "{}      allow_self_approval: true\n",
            FOUR_EYES.replace("QUORUM", "2").replace("REQUESTER", "max")
        ),
    ];
    for (i, yaml) in valid.iter().enumerate() {
        let file = dir.path().join(format!("valid{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let out = Command::new(common::steward_bin())
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{yaml}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        FOUR_EYES.replace("QUORUM", "2").replace("REQUESTER", "max"),
    )
    .unwrap();
    let out = Command::new(common::steward_bin())
        .arg("validate")
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:6:15: steps.ask.approval.quorum: 2 approval(s) needed but only 1 of the approvers (max, ann) may decide: max is the requester",
            broken.display()
        )),
        "{stderr}"
    );
}

#[test]
fn every_broken_workflow_is_reported_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        let file = dir.path().join(format!("case{i}.yaml"));
        std::fs::write(&file, &case.yaml).unwrap();
        let out = Command::new(common::steward_bin())
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) {
            failures.push(format!(
                "{}: exit {:?}, stderr: {stderr}",
                case.name,
                out.status.code()
            ));
            continue;
        }
        for expected in case.expect {
            let expected = expected.replace("FILE", &file.display().to_string());
            if !stderr.contains(&expected) {
                failures.push(format!(
                    "{}: expected {expected:?} in:\n{stderr}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_base_workflow_and_the_examples_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("base.yaml");
    std::fs::write(&file, BASE).unwrap();
    let mut command = Command::new(common::steward_bin());
    command.arg("validate").arg(&file);
    for entry in std::fs::read_dir(common::root().join("examples/workflows")).unwrap() {
        command.arg(entry.unwrap().path());
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (workflow demo version 1, 2 steps)"));
}

#[test]
fn a_malformed_steward_toml_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:8080\"\n[plugins.http-request]\nallowed_hosts = \"everything\"\n",
    )
    .unwrap();
    let file = dir.path().join("base.yaml");
    std::fs::write(&file, BASE).unwrap();
    let out = Command::new(common::steward_bin())
        .args(["validate", "--config"])
        .arg(&config)
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:3:17:", config.display())),
        "{stderr}"
    );
    assert!(stderr.contains("invalid type"), "{stderr}");
}

/// A database that refuses connections fails the start at once, saying
/// so, rather than after the pool's 30 s of retries with "timed out".
#[test]
fn an_unreachable_database_fails_the_start_at_once_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"postgres://postgres@127.0.0.1:{}/x\"\ndata_dir = {:?}\nworkflows = []\n",
            common::server::free_port(),
            dir.path().join("data")
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(common::steward_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot open the database"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// A few hundred bytes of nested YAML aliases would expand to gigabytes:
/// refused at the alias that goes over, with its line.
#[test]
fn a_yaml_alias_bomb_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bomb = String::from("name: lol\nsteps: []\na: &a [x, x, x, x, x, x, x, x, x]\n");
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
    let file = dir.path().join("lol.yaml");
    std::fs::write(&file, bomb).unwrap();
    let out = Command::new(common::steward_bin())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:7:", file.display())) && stderr.contains("aliases"),
        "{stderr}"
    );
}

/// Workflows that once overflowed the stack of the parsers (and killed
/// the server that loaded them): 40 KB of nested block lists and a
/// 30,000-term CEL chain. Each is a validation error with its position.
#[test]
fn workflows_too_deep_for_the_parsers_are_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let lists = format!(
        "name: deep\nsteps:\n  - id: a\n    uses: transform\n    with: {{ a: 1 }}\nx:\n  {}1\n",
        "- ".repeat(20_000)
    );
    let chain = BASE.replace(
        "steps.first.output.a",
        &format!("steps.first.output.a{}", "+1".repeat(30_000)),
    );
    for (name, yaml, expect) in [
        (
            "lists.yaml",
            lists,
            ":7:129: yaml: syntax error: lists and mappings nest deeper than 64 levels",
        ),
        (
            "chain.yaml",
            chain,
            ":8:16: steps.second.with.b: the expression is 60022 characters long, more than 4096",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        let out = Command::new(common::steward_bin())
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        let expected = format!("{}{expect}", file.display());
        assert!(
            stderr.contains(&expected),
            "{name}: expected {expected:?} in:\n{stderr}"
        );
    }
}

/// A data_dir without a database once still kept the database in
/// ./steward-data; now the database follows data_dir. An older one left
/// there stops the start with where it is and how to keep it, instead of
/// a silent start on an empty database.
#[test]
fn a_database_left_where_older_versions_kept_it_is_not_silently_replaced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("steward-data")).unwrap();
    std::fs::write(dir.path().join("steward-data/steward.db"), b"").unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\nworkflows = []\n", dir.path().join("data")),
    )
    .unwrap();
    let out = Command::new(common::steward_bin())
        .current_dir(dir.path())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("steward-data/steward.db holds one from an older steward"),
        "{stderr}"
    );
    assert!(!dir.path().join("data/steward.db").exists());
}
