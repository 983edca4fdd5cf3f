//! Small helpers with no dependency on the rest of tlab, shared by every
//! layer: paths as a user reads them, "did you mean" suggestions, the phase
//! profiler and raster drawing.

pub mod draw;
pub mod paths;
pub mod profile;
pub mod suggest;
