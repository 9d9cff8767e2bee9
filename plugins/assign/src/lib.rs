//! `assign`: `{group, members?, strategy?, action?, assignee?}` →
//! `{assignee, group, strategy, load}`.
//!
//! Picks who works on something: `round_robin` (the default) takes the
//! group's members in turn; `least_loaded` takes the member with the fewest
//! open assignments, counted by this plugin (`action: release` with the
//! `assignee` gives one back when the work is done). Members come from the
//! input or from the operator's `[plugins.assign.groups]`.
//!
//! State lives in the plugin's key-value store. A retried or re-run step
//! (same idempotency key) gets the assignee it got the first time and counts
//! once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_sdk::{Context, Error, config, kv};

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
enum Strategy {
    #[default]
    RoundRobin,
    LeastLoaded,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
enum Action {
    #[default]
    Assign,
    Release,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    group: String,
    members: Option<Vec<String>>,
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    action: Action,
    assignee: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Output {
    assignee: String,
    group: String,
    strategy: Strategy,
    /// The assignee's open assignments after this step.
    load: i64,
}

/// Where the counters live, so the pure choice can be tested natively.
trait Counters {
    fn get(&self, key: &str) -> Result<Option<i64>, Error>;
    fn set(&mut self, key: &str, value: i64) -> Result<(), Error>;
}

struct PluginKv;

impl Counters for PluginKv {
    fn get(&self, key: &str) -> Result<Option<i64>, Error> {
        kv::get_json(key)
    }
    fn set(&mut self, key: &str, value: i64) -> Result<(), Error> {
        kv::set_json(key, &value)
    }
}

fn handle(ctx: &Context, input: Input) -> Result<Output, Error> {
    let done_key = format!("done:{}", ctx.idempotency_key);
    if let Some(earlier) = kv::get_json::<Output>(&done_key)? {
        return Ok(earlier);
    }
    let output = match input.action {
        Action::Assign => {
            let members = members(&input)?;
            assign(&mut PluginKv, &input.group, &members, input.strategy)?
        }
        Action::Release => {
            let assignee = input
                .assignee
                .clone()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    Error::fatal("release needs `assignee`: who is done with the work")
                        .with_code("invalid-input")
                })?;
            release(&mut PluginKv, &input.group, &assignee, input.strategy)?
        }
    };
    kv::set_json(&done_key, &output)?;
    Ok(output)
}

fn members(input: &Input) -> Result<Vec<String>, Error> {
    let members = match &input.members {
        Some(list) => list.clone(),
        None => {
            let mut groups: BTreeMap<String, Vec<String>> =
                config::get("groups")?.unwrap_or_default();
            groups.remove(&input.group).ok_or_else(|| {
                Error::fatal(format!(
                    "group {:?} has no members: pass `members`, or list it under [plugins.assign.groups] in steward.toml",
                    input.group
                ))
                .with_code("unknown-group")
            })?
        }
    };
    let members: Vec<String> = members
        .into_iter()
        .filter(|m| !m.trim().is_empty())
        .collect();
    if members.is_empty() {
        return Err(Error::fatal(format!(
            "group {:?} has no members to assign to",
            input.group
        ))
        .with_code("empty-group"));
    }
    Ok(members)
}

fn assign(
    store: &mut impl Counters,
    group: &str,
    members: &[String],
    strategy: Strategy,
) -> Result<Output, Error> {
    let turn_key = format!("turn:{group}");
    let turn = store.get(&turn_key)?.unwrap_or(0);
    let assignee = match strategy {
        Strategy::RoundRobin => members[turn.rem_euclid(members.len() as i64) as usize].clone(),
        Strategy::LeastLoaded => {
            // Ties go to whoever is next in turn, so equal loads rotate.
            let mut best: Option<(i64, usize)> = None;
            for offset in 0..members.len() {
                let index =
                    (turn.rem_euclid(members.len() as i64) as usize + offset) % members.len();
                let load = store.get(&load_key(&members[index]))?.unwrap_or(0);
                if best.is_none_or(|(l, _)| load < l) {
                    best = Some((load, index));
                }
            }
            members[best.expect("members is not empty").1].clone()
        }
    };
    let position = members.iter().position(|m| *m == assignee).unwrap_or(0) as i64;
    store.set(&turn_key, position + 1)?;
    let load = store.get(&load_key(&assignee))?.unwrap_or(0) + 1;
    store.set(&load_key(&assignee), load)?;
    Ok(Output {
        assignee,
        group: group.to_string(),
        strategy,
        load,
    })
}

fn release(
    store: &mut impl Counters,
    group: &str,
    assignee: &str,
    strategy: Strategy,
) -> Result<Output, Error> {
    let load = (store.get(&load_key(assignee))?.unwrap_or(0) - 1).max(0);
    store.set(&load_key(assignee), load)?;
    Ok(Output {
        assignee: assignee.to_string(),
        group: group.to_string(),
        strategy,
        load,
    })
}

fn load_key(member: &str) -> String {
    format!("load:{member}")
}

steward_sdk::plugin!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Memory(BTreeMap<String, i64>);

    impl Counters for Memory {
        fn get(&self, key: &str) -> Result<Option<i64>, Error> {
            Ok(self.0.get(key).copied())
        }
        fn set(&mut self, key: &str, value: i64) -> Result<(), Error> {
            self.0.insert(key.to_string(), value);
            Ok(())
        }
    }

    fn team() -> Vec<String> {
        vec!["ana".into(), "ben".into(), "cy".into()]
    }

    #[test]
    fn round_robin_takes_members_in_turn() {
        let mut m = Memory::default();
        let picks: Vec<String> = (0..5)
            .map(|_| {
                assign(&mut m, "desk", &team(), Strategy::RoundRobin)
                    .unwrap()
                    .assignee
            })
            .collect();
        assert_eq!(picks, ["ana", "ben", "cy", "ana", "ben"]);
    }

    #[test]
    fn least_loaded_fills_the_emptiest_and_release_frees() {
        let mut m = Memory::default();
        m.set("load:ana", 2).unwrap();
        m.set("load:ben", 1).unwrap();
        let first = assign(&mut m, "desk", &team(), Strategy::LeastLoaded).unwrap();
        assert_eq!((first.assignee.as_str(), first.load), ("cy", 1));
        // ben and cy tie at 1: the turn after cy wraps to ana (2), then ben.
        let second = assign(&mut m, "desk", &team(), Strategy::LeastLoaded).unwrap();
        assert_eq!(second.assignee, "ben");
        let freed = release(&mut m, "desk", "ana", Strategy::LeastLoaded).unwrap();
        assert_eq!(freed.load, 1);
        let third = assign(&mut m, "desk", &team(), Strategy::LeastLoaded).unwrap();
        assert_eq!(
            third.assignee, "cy",
            "cy (1) beats ana (1) by turn, ben has 2"
        );
    }

    #[test]
    fn release_never_goes_below_zero() {
        let mut m = Memory::default();
        assert_eq!(
            release(&mut m, "desk", "ana", Strategy::RoundRobin)
                .unwrap()
                .load,
            0
        );
    }

    #[test]
    fn input_is_checked() {
        assert!(
            serde_json::from_value::<Input>(
                serde_json::json!({"group": "g", "strategy": "random"})
            )
            .is_err()
        );
        let i: Input =
            serde_json::from_value(serde_json::json!({"group": "g", "members": [" ", ""]}))
                .unwrap();
        assert!(members(&i).unwrap_err().message.contains("no members"));
    }
}
