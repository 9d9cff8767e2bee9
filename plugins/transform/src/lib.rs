//! `transform`: returns its evaluated `with` object unchanged. Workflows use
//! it to reshape data; it asks for no capability at all.
//!
//! The host hands over the rendered `with` as JSON text it produced itself,
//! so passing that text back unchanged is exactly "the object unchanged",
//! without a parse and a re-serialisation.

use steward_sdk::{Context, Error};

fn handle(_ctx: &Context, input: &str) -> Result<String, Error> {
    Ok(input.to_string())
}

steward_sdk::plugin!(raw handle);
