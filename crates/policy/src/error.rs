//! Load and test-file errors: each names the file, the policy and the problem, and says the fix.

use std::fmt;
use std::path::PathBuf;

/// Why a policy set (or a test file) was refused. A refused set is refused whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The policy directory has no `schema.cedarschema`.
    #[error(
        "{}: no schema.cedarschema; fix: add one that declares Client, Workload, Audience and the actions (see conf/policies/schema.cedarschema)",
        dir.display()
    )]
    MissingSchema {
        /// The directory.
        dir: PathBuf,
    },
    /// A file is over the size limit.
    #[error("{}: {size} bytes, over the limit of {limit}; fix: split it into several files", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The directory holds more `.cedar` files than the limit.
    #[error("{}: more than {limit} .cedar files; fix: merge some of them", dir.display())]
    TooManyFiles {
        /// The directory.
        dir: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// A proxy route's policy does not parse or does not fit the route schema.
    #[error("route policy {origin}: {message}")]
    Route {
        /// The file.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The schema does not parse.
    #[error("{file}: {message}")]
    Schema {
        /// The schema file.
        file: String,
        /// Where and what.
        message: String,
    },
    /// The schema parses but does not fit mayfly's model (a missing entity type or action, a
    /// Workload or context shape mayfly does not supply, ...).
    #[error("{file}: {message}; fix: {fix}")]
    SchemaMismatch {
        /// The schema file.
        file: String,
        /// What does not fit.
        message: String,
        /// What to change.
        fix: String,
    },
    /// A client's `audiences`/`scopes` need an entity type or action the schema does not declare.
    #[error(
        "{file}: client `{client}` (from the mayfly config) needs {what}, which the schema does not declare; fix: {fix}"
    )]
    SugarNotInSchema {
        /// The schema file.
        file: String,
        /// The client.
        client: String,
        /// What is missing.
        what: String,
        /// What to add.
        fix: String,
    },
    /// A client lists the reserved scope `token`.
    #[error(
        "client `{client}`: the scope `token` is reserved for the audience check (Action::\"token\"); fix: rename the scope"
    )]
    ReservedScope {
        /// The client.
        client: String,
    },
    /// A client lists a scope named after an SVID action.
    #[error(
        "client `{client}`: the scope `{scope}` is reserved for SVID issuance (Action::\"{scope}\"); fix: rename the scope"
    )]
    SvidScope {
        /// The client.
        client: String,
        /// The scope.
        scope: String,
    },
    /// A `.cedar` file does not parse.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A `.cedar` file holds a template (a policy with `?principal` or `?resource` slots).
    #[error(
        "{file}:{line}: policy `{id}` is a template (it has ?principal or ?resource); fix: name the entity instead of a slot"
    )]
    Template {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The policy id.
        id: String,
    },
    /// An `@id` is empty.
    #[error(
        "{file}:{line}: policy {index} has an empty @id; fix: give it a name or drop the annotation"
    )]
    EmptyId {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The policy's index in the file.
        index: usize,
    },
    /// Two policies have the same id.
    #[error(
        "policy id `{id}` is used twice, in {first} and in {second}; fix: give each policy its own @id(\"...\")"
    )]
    DuplicateId {
        /// The id.
        id: String,
        /// Where it is first used.
        first: String,
        /// Where it is used again.
        second: String,
    },
    /// A `@max_ttl` annotation is not a usable duration, or is on a forbid.
    #[error(
        "{file}: policy `{id}`: @max_ttl(\"{value}\") {problem}; fix: a duration such as \"90s\", \"10m\" or \"1h\" on a permit"
    )]
    BadMaxTtl {
        /// The file.
        file: String,
        /// The policy id.
        id: String,
        /// The annotation's value.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The set does not validate against the schema (strict mode). Every problem is listed.
    #[error(
        "the policy set does not validate against the schema:{}",
        Problems(problems)
    )]
    Validation {
        /// One entry per validator error.
        problems: Vec<ValidationProblem>,
    },
    /// A test file (`mayfly policy test`) is malformed.
    #[error("test file: {message}")]
    Cases {
        /// What is wrong.
        message: String,
    },
    /// Something that validation should have made impossible (a bug in mayfly: please report it).
    #[error("internal error: {message}")]
    Internal {
        /// What happened.
        message: String,
    },
}

/// One validator error, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationProblem {
    /// The file the policy came from (or the client whose sugar it is).
    pub file: String,
    /// 1-based line in that file (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The policy id.
    pub policy: String,
    /// The validator's message, with its help when it has one.
    pub message: String,
}

impl fmt::Display for ValidationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        write!(f, "policy `{}`: {}", self.policy, self.message)
    }
}

struct Problems<'a>(&'a [ValidationProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}
