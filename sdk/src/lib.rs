//! Write Steward fulfilment plugins in Rust.
//!
//! A plugin is a function from a typed input to a typed output, exported with
//! [`plugin!`]. The SDK turns JSON into your types and back, and maps your
//! [`Error`] onto the WIT contract in `wit/` (retryable or not).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use steward_sdk::{Context, Error};
//!
//! #[derive(Deserialize)]
//! struct Input { name: String }
//!
//! #[derive(Serialize)]
//! struct Output { greeting: String }
//!
//! fn handle(_ctx: &Context, input: Input) -> Result<Output, Error> {
//!     if input.name.is_empty() {
//!         return Err(Error::fatal("name must not be empty"));
//!     }
//!     Ok(Output { greeting: format!("hello, {}", input.name) })
//! }
//!
//! steward_sdk::plugin!(handle);
//! # fn main() {}
//! ```
//!
//! Build it with `steward plugin build` (or `cargo build --target
//! wasm32-wasip2 --release`); the result is a WebAssembly component.

#[cfg(target_arch = "wasm32")]
mod arena;
pub mod capabilities;
mod error;

/// Plugins allocate from a static arena first (see `arena.rs`): a fresh
/// instance per call then rarely grows its memory.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: arena::BumpThenSystem = arena::BumpThenSystem;

pub use capabilities::{clock, config, http, kv, log, secrets};
pub use error::Error;
pub use serde_json::{Value, json};

/// Generated bindings for the `steward:plugin` world. Plugin code rarely
/// needs them directly: the capability modules wrap them.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "fulfilment",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "steward_sdk::bindings",
    });
}

/// Where this call sits in a run. Use `idempotency_key` to de-duplicate side
/// effects: every attempt of one step of one run carries the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub run_id: String,
    pub workflow: String,
    pub step_id: String,
    pub attempt: u32,
    pub idempotency_key: String,
}

impl Context {
    /// The context of the first attempt of `step_id` in a run `r1` of
    /// `workflow`, with the key the host would give it: for a plugin's own
    /// unit tests, which call its handler without a host.
    pub fn for_tests(workflow: &str, step_id: &str) -> Context {
        Context {
            run_id: "r1".into(),
            workflow: workflow.into(),
            step_id: step_id.into(),
            attempt: 1,
            idempotency_key: format!("r1/{step_id}"),
        }
    }
}

impl From<bindings::steward::plugin::types::StepContext> for Context {
    fn from(c: bindings::steward::plugin::types::StepContext) -> Self {
        Context {
            run_id: c.run_id,
            workflow: c.workflow,
            step_id: c.step_id,
            attempt: c.attempt,
            idempotency_key: c.idempotency_key,
        }
    }
}

/// Runs a typed handler on the raw JSON the host hands over. Used by
/// [`plugin!`]; public only so the macro can reach it.
#[doc(hidden)]
pub fn dispatch<I, O>(
    context: bindings::steward::plugin::types::StepContext,
    input: &str,
    handler: fn(&Context, I) -> Result<O, Error>,
) -> Result<String, bindings::steward::plugin::types::PluginError>
where
    I: serde::de::DeserializeOwned,
    O: serde::Serialize,
{
    let context = Context::from(context);
    let input: I = serde_json::from_str(input)
        .map_err(|e| Error::fatal(format!("invalid input: {e}")).with_code("invalid-input"))?;
    let output = handler(&context, input)?;
    serde_json::to_string(&output)
        .map_err(|e| Error::fatal(format!("output is not JSON: {e}")).into())
}

/// Exports `handler` as this component's step handler.
///
/// `handler` is a `fn(&Context, I) -> Result<O, Error>` where `I` is
/// deserialisable from the step's `with` object and `O` serialisable.
///
/// `plugin!(raw handler)` exports a `fn(&Context, &str) -> Result<String,
/// Error>` that sees the input JSON text as-is and returns JSON text, for
/// plugins that pass data through without looking at it.
#[macro_export]
macro_rules! plugin {
    (raw $handler:path) => {
        $crate::plugin!(@export |context, input| $handler(&$crate::Context::from(context), &input)
            .map_err(::std::convert::Into::into));
    };
    ($handler:path) => {
        $crate::plugin!(@export |context, input| $crate::dispatch(context, &input, $handler));
    };
    (@export |$context:ident, $input:ident| $body:expr) => {
        struct __StewardPlugin;

        impl $crate::bindings::exports::steward::plugin::handler::Guest for __StewardPlugin {
            fn handle(
                $context: $crate::bindings::steward::plugin::types::StepContext,
                $input: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::steward::plugin::types::PluginError,
            > {
                $body
            }
        }

        $crate::bindings::export!(__StewardPlugin with_types_in $crate::bindings);
    };
}
