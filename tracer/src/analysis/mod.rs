//! What rows of several kinds say together.

pub mod attribution;
pub mod explain;
pub mod fragments;
