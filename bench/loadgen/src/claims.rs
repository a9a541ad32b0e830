//! The claims the crypto ceiling and `mayfly-floor` read and write, mirroring the server's: one
//! definition for both, so that the floor and the ceiling do exactly the same JSON work.

use serde::{Deserialize, Serialize};

/// A client assertion's claims, typed as the server reads them.
#[derive(Deserialize)]
#[allow(dead_code)] // read by serde, as the server's typed claims are
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub jti: String,
    pub exp: u64,
    pub iat: u64,
}

/// An RFC 9068 access token's claims.
#[derive(Serialize)]
pub struct AccessClaims<'a> {
    pub iss: &'a str,
    pub sub: &'a str,
    pub aud: &'a str,
    pub client_id: &'a str,
    pub scope: &'a str,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}
