//! Workflows: the YAML shape, its validation, and expressions.
//!
//! Architecture invariant: this module knows neither wasmtime, SQL nor HTTP.
//! Plugins are known only by name.

pub mod expr;
pub mod links;
pub mod load;
pub mod model;
pub mod placement;
pub mod yaml;

pub use links::check_links;
pub use load::{ValidationError, ValidationErrors, load_dir, load_file, load_str};
pub use model::{MAX_TAGS, Step, StepKind, Workflow, check_tag};
pub use placement::Placement;
