//! The run directory, in one place: [`recorder`] fills it as a run goes
//! (whichever front end drives the [`Lab`](crate::lab::Lab)), [`dir`] writes
//! its reports, pictures, model and status, [`files`] holds the formats of
//! its files, [`tensorboard`] its event files, and [`history`] reads earlier
//! runs back (`tlab runs`, `tlab compare`). Epoch checkpoints are the
//! training loop's, in [`train::checkpoint`](crate::train::checkpoint).

pub mod dir;
pub mod files;
pub mod history;
pub mod recorder;
pub mod tensorboard;
