//! The demo records the examples use, and loading `{table: [records]}`.

use serde_json::{Value, json};

use super::Sim;

/// CMDB items with owners and criticality, their relationships, laptops in
/// stock, and the people the examples approve as.
pub(super) fn demo() -> Value {
    json!({
        "sys_user": [
            {"user_name": "dana", "name": "Dana Scully", "title": "Payroll service owner"},
            {"user_name": "eli", "name": "Eli Cohen", "title": "IT manager"},
            {"user_name": "sam", "name": "Sam Reyes", "title": "Security officer"},
            {"user_name": "max", "name": "Max Mustermann", "title": "Engineering manager"}
        ],
        "cmdb_ci": [
            {"sys_id": "a1000000000000000000000000000001", "name": "payroll", "sys_class_name": "cmdb_ci_appl",
             "owned_by": {"value": "dana", "display_value": "dana"}, "support_group": "hr-apps",
             "business_criticality": "1 - most critical"},
            {"sys_id": "a1000000000000000000000000000002", "name": "hr-db", "sys_class_name": "cmdb_ci_db_instance",
             "owned_by": {"value": "dana", "display_value": "dana"}, "support_group": "dba",
             "business_criticality": "1 - most critical"},
            {"sys_id": "a1000000000000000000000000000003", "name": "wiki", "sys_class_name": "cmdb_ci_appl",
             "owned_by": {"value": "eli", "display_value": "eli"}, "support_group": "collaboration",
             "business_criticality": "3 - less critical"},
            {"sys_id": "a1000000000000000000000000000004", "name": "vpn", "sys_class_name": "cmdb_ci_service",
             "owned_by": {"value": "eli", "display_value": "eli"}, "support_group": "network",
             "business_criticality": "1 - most critical"}
        ],
        "cmdb_rel_ci": [
            {"parent": {"value": "a1000000000000000000000000000001", "display_value": "payroll"},
             "child": {"value": "a1000000000000000000000000000002", "display_value": "hr-db"},
             "type": "Depends on::Used by"}
        ],
        "alm_hardware": [
            {"asset_tag": "P1000481", "model": "ThinkPad T14", "model_category": "laptop", "install_status": "6", "cost": "1450"},
            {"asset_tag": "P1000482", "model": "ThinkPad T14", "model_category": "laptop", "install_status": "6", "cost": "1450"},
            {"asset_tag": "P1000490", "model": "MacBook Pro 14", "model_category": "laptop", "install_status": "1", "cost": "2399"}
        ]
    })
}

/// Adds every record of `seed` (`{table: [record, ...]}`) through the same
/// path as a create, so seeded records look like created ones.
pub(super) fn load(sim: &mut Sim, seed: &Value) -> Result<(), String> {
    let tables = seed
        .as_object()
        .ok_or("the seed must be a JSON object of {table: [records]}")?;
    for (table, records) in tables {
        let records = records
            .as_array()
            .ok_or_else(|| format!("{table}: expected an array of records"))?;
        for (i, record) in records.iter().enumerate() {
            let fields = record
                .as_object()
                .ok_or_else(|| format!("{table}[{i}]: expected a JSON object"))?;
            sim.insert(table, fields.clone());
        }
    }
    Ok(())
}
