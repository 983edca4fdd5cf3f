//! The `tlab` binary's commands. Each turns its parsed arguments into calls
//! of the library and prints what they return; anything a notebook or the
//! TUI could also want lives in the library, not here.

pub mod data;
pub mod model;
pub mod progress;
pub mod run;
pub mod runs;
