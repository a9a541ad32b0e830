//! Unit tests of the pipeline: no HTTP, a manual clock, in-memory ports, real keys.
