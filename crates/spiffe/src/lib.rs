//! SPIFFE for mayfly (skeleton; filled in by issue 5).
#![forbid(unsafe_code)]
