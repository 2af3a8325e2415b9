//! The farm on Kubernetes: the same plan as `farm build`, built by Indexed Jobs.
//!
//! - [`manifest`]: the Jobs, the NetworkPolicy and the results claim, as typed Kubernetes objects;
//! - [`podsecurity`]: PodSecurity "restricted", checked on every pod spec ckms writes.

pub mod manifest;
pub mod podsecurity;
