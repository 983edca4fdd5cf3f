//! Commands built on the engine, each a library function the binary, the
//! TUI and notebooks share: `tlab tune`, the data doctor, `tlab export`,
//! `tlab embed`, `tlab inspect`, `tlab new`, `tlab check` and `tlab bench`.

#[doc(hidden)]
pub mod bench;
pub mod doctor;
pub mod embed;
pub mod export;
pub mod inspect;
#[doc(hidden)]
pub mod preflight;
pub mod starter;
pub mod tune;
