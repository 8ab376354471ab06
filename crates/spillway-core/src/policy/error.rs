//! What a rejected policy reports: every problem found, each with the file, the line and
//! column, the dotted field path and a message.
//!
//! Semantic checks run to the end and collect everything they find, so an operator fixes a
//! bad file in one pass instead of one error per reload. A YAML syntax or shape error stops
//! parsing, so it arrives alone.

use serde_saphyr::Location;
use std::fmt;
use std::sync::Arc;

/// One problem in a policy file, precise enough for an editor jump and a test assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    /// 1-based line of the offending value; 0 only when the file could not be read at all.
    pub line: u64,
    /// 1-based column of the offending value; 0 when unknown.
    pub column: u64,
    /// Dotted path of the field, e.g. `limits.ip-burst.rate` or `routes[2].cost`; empty for
    /// the document as a whole.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

/// Why a policy was rejected. Carries every issue found, sorted by position.
///
/// Displayed one issue per line as `{source}:{line}:{column}: {path}: {message}`, the format
/// editors and CI logs already know how to link.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", Lines(self))]
pub struct PolicyError {
    origin: Arc<str>,
    issues: Vec<PolicyIssue>,
}

impl PolicyError {
    /// Builds an error from collected issues; `origin` names the file (or other source).
    pub(crate) fn new(origin: &str, mut issues: Vec<PolicyIssue>) -> Self {
        issues.sort_by_key(|i| (i.line, i.column));
        Self {
            origin: origin.into(),
            issues,
        }
    }

    /// A single issue that has no position in the file (the file could not be read).
    pub(crate) fn unreadable(origin: &str, message: String) -> Self {
        let issue = PolicyIssue {
            line: 0,
            column: 0,
            path: String::new(),
            message,
        };
        Self::new(origin, vec![issue])
    }

    /// The source the policy came from (a file path, or the name given to
    /// [`super::Policy::from_yaml_str`]), so callers can log it separately.
    pub fn source_name(&self) -> &str {
        &self.origin
    }

    /// Every issue found, in file order; never empty.
    pub fn errors(&self) -> &[PolicyIssue] {
        &self.issues
    }
}

struct Lines<'a>(&'a PolicyError);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = &self.0.origin;
        for (i, issue) in self.0.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match (issue.line, issue.path.is_empty()) {
                (0, _) => write!(f, "{origin}: {}", issue.message)?,
                (line, true) => write!(f, "{origin}:{line}:{}: {}", issue.column, issue.message)?,
                (line, false) => write!(
                    f,
                    "{origin}:{line}:{}: {}: {}",
                    issue.column, issue.path, issue.message
                )?,
            }
        }
        Ok(())
    }
}

/// Collects issues during validation so every check can run to the end.
#[derive(Debug, Default)]
pub(crate) struct Issues(Vec<PolicyIssue>);

impl Issues {
    /// The problems recorded, in the order found.
    pub(crate) fn into_issues(self) -> Vec<PolicyIssue> {
        self.0
    }

    /// Records a problem at `at` for the field `path`.
    pub(crate) fn push(
        &mut self,
        at: Location,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push(PolicyIssue {
            line: at.line(),
            column: at.column(),
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records problems found apart (see [`super::store::seed_logins`]).
    pub(crate) fn extend(&mut self, found: impl IntoIterator<Item = PolicyIssue>) {
        self.0.extend(found);
    }

    /// Whether nothing has been recorded yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many issues have been recorded, so a step can tell whether it added any.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Turns the collected issues into an error attributed to `origin`.
    pub(crate) fn into_error(self, origin: &str) -> PolicyError {
        PolicyError::new(origin, self.0)
    }
}
