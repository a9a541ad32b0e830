//! A signing key's schedule as the engines and the store exchange it: its lifecycle times and
//! the changes a schedule asks the store to make. The schedule itself is computed in the
//! issuance engine.

/// The lifecycle times of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTimes {
    /// Key id.
    pub kid: String,
    /// When it was created and first published.
    pub created_at: i64,
    /// When it starts signing.
    pub not_before: i64,
    /// When it stops signing.
    pub not_after: i64,
    /// When it leaves the JWKS.
    pub expires_at: i64,
}

/// A change the store must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Generate a key with these times.
    Create {
        /// Starts signing.
        not_before: i64,
        /// Stops signing.
        not_after: i64,
        /// Leaves the JWKS.
        expires_at: i64,
    },
    /// Change an existing key's times (manual rotation).
    Reschedule(KeyTimes),
    /// Delete a key whose tokens have all expired.
    Remove {
        /// Key id.
        kid: String,
    },
}
