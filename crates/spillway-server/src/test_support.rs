//! Helpers shared by the server's unit tests.

use spillway_core::algorithm::Decision;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, Store, StoreError};

/// A store that is always down (connection refused), to drive the failure-mode paths without
/// a real outage. Integration tests use a real Redis that is killed, frozen or slowed instead.
pub(crate) struct DownStore;

#[async_trait::async_trait]
impl Store for DownStore {
    async fn check(&self, _: &[Check<'_>], _: CheckMode) -> Result<Vec<Decision>, StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    fn key_count(&self) -> u64 {
        0
    }
    fn evictions(&self) -> u64 {
        0
    }
    fn sweep(&self) -> u64 {
        0
    }
}
