//! flowpol's node agent and CLI. Modules follow the data:
//! capture (kernel → records) → enrich (identity) → store (SQLite) → serve (HTTP),
//! and the CLI commands on top.
pub mod cli;
#[cfg(target_os = "linux")]
pub mod lab;
pub mod store;
// --- serve (HTTP API, metrics, --cluster) ---
pub mod serve;

// --- capture (kernel side and agent loop) ---
#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "agent")]
pub mod capture;

// --- identity ---
pub mod enrich;
