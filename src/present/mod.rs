//! The presentation layer: results become rows once ([`rows`]) and pictures
//! and HTML ([`views`], [`preview`]); [`cells`] is the step-by-step API over a
//! [`Lab`](crate::lab::Lab) that notebooks and other front ends render.

pub mod cells;
pub mod preview;
pub mod rows;
pub mod views;
