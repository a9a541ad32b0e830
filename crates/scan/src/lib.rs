//! `mayfly scan`: rules, the scanning engine and reports. No file, network or git access here:
//! the engine scans whatever reader it is given (`mayfly-scan-sources` supplies them).

mod engine;
mod finding;
mod report;
mod rules;
pub mod validate;

pub use engine::{Outcome, RawMatch, Scanner};
pub use finding::{Finding, Location, fingerprint, mask};
pub use report::{Format, Stats, load_baseline, write};
pub use rules::{BUILTIN_RULES, Rule, RuleSet, RuleSpec, Validate};

/// What can go wrong in the scanner itself.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A rules file does not parse or a rule does not compile.
    #[error("{file}: {msg}")]
    Rules {
        /// File (or "built-in rules").
        file: String,
        /// What is wrong and, where it helps, how to fix it.
        msg: String,
    },
    /// A baseline file is not a report.
    #[error("baseline {file}: {msg}")]
    Baseline {
        /// File.
        file: String,
        /// What is wrong.
        msg: String,
    },
}
