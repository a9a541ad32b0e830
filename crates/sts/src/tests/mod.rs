//! Unit tests of the pipeline: no HTTP, a manual clock, in-memory ports, real keys and real
//! signatures. One test per refusal, each asserting the [`Denial`] variant and its RFC code.

mod client_credentials;
mod exchange;
mod lease;
mod query;
mod world;
