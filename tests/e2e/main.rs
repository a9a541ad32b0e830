//! End-to-end tests: the real `mayfly` binary (or the real server in process, where a fake
//! clock is needed) spoken to over HTTP on loopback, as clients would.

// Test helpers: a failure should stop the test where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A scenario (start, act, crash, restart, check) reads top to bottom as one story.
#![allow(clippy::too_many_lines)]

mod anchor;
mod ci_lease;
mod cli;
mod crash;
mod debt;
mod exec;
mod federation;
mod federation_trust;
mod fixture;
mod interop_node;
mod issuance;
mod jwks_uri;
mod lifecycle;
mod no_secrets;
mod operator_revoke;
mod policy_cli;
mod proxy;
mod rejections;
mod replicas;
mod revocation;
mod rotation;
mod scan;
mod spiffe;
mod status_list;
mod support;
mod transfer;
