//! `transform`: returns its evaluated `with` object unchanged. Workflows use
//! it to reshape data; it asks for no capability at all.

use steward_sdk::{Context, Error, Value};

fn handle(_ctx: &Context, input: Value) -> Result<Value, Error> {
    Ok(input)
}

steward_sdk::plugin!(handle);
