//! flowpol's recommender: a pure library with no root, no kernel and no cluster.
//!
//! Data flows observe → recommend / audit / explain:
//! - [`flow`]: the typed flow record every stage shares.
pub mod flow;
