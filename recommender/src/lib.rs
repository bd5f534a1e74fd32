//! flowpol's recommender: a pure library with no root, no kernel and no cluster.
//!
//! Data flows observe → recommend / audit / explain:
//! - [`flow`]: the typed flow record every stage shares.
//! - [`manifest`]: reads Kubernetes manifests (YAML, JSON, lists, `kubectl get` dumps).
//! - [`model`]: namespaces, workloads (pods folded into their top owner), services, policies.
//! - [`policy`] and [`selector`]: NetworkPolicies compiled and validated.
//! - [`engine`]: exact NetworkPolicy verdicts, each with its reasons.
//! - [`connectivity`]: who may talk to whom; [`explain`]: one connection, why; [`lint`]:
//!   common policy mistakes.
pub mod audit;
pub mod connectivity;
pub mod connset;
pub mod drops;
pub mod engine;
pub mod explain;
pub mod flow;
pub mod lint;
pub mod manifest;
pub mod model;
pub mod observe;
pub mod policy;
pub mod recommend;
pub mod selector;
pub mod synth;
