//! The presentation layer: results become rows once ([`rows`]) and pictures
//! and HTML ([`views`], [`preview`]), as functions of results (evaluations,
//! histories, data), below the lab that produces them.

pub mod preview;
pub mod rows;
pub mod views;
