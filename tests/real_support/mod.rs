//! `support::real` under its old name, for the gateway tests that still ask
//! for it (`tests/http_gateway.rs`) until they move to a crate of their own.

#[path = "../support/mod.rs"]
mod support;

pub use support::real::*;
