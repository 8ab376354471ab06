//! Helpers shared by the server's unit tests.

use crate::catalog::CatalogNode;
use crate::cli::{Cli, Command};
use crate::clock::ServerClock;
use crate::config::{PolicySource, ServerSettings};
use crate::failure::{Failover, FailureSettings};
use crate::http::settings::AuthorizeSettings;
use crate::region::RegionNode;
use crate::state::{AppState, PolicyInfo};
use crate::telemetry::decision_log::DecisionLog;
use crate::telemetry::live::Live;
use crate::telemetry::top::Top;
use crate::telemetry::trace::Tracing;
use arc_swap::ArcSwap;
use clap::Parser;
use spillway_core::algorithm::Decision;
use spillway_core::engine::Engine;
use spillway_core::policy::Policy;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, MemoryStore, Store, StoreError};
use std::sync::Arc;

/// A store whose every check fails, to drive the failure-mode paths without a real outage
/// (integration tests use a real Redis that is killed, frozen or slowed instead):
/// [`FailingStore::down`] or [`FailingStore::full_queue`].
pub(crate) struct FailingStore {
    error: fn() -> StoreError,
}

impl FailingStore {
    /// Always down (connection refused), pings too.
    pub(crate) fn down() -> Self {
        Self {
            error: || StoreError::Unavailable("connection refused".into()),
        }
    }

    /// Every call refused before it is sent, this node's queue to it being full
    /// ([`StoreError::Overloaded`]): the node overloaded, the store itself fine (it pings).
    pub(crate) fn full_queue() -> Self {
        Self {
            error: || StoreError::Overloaded("every queue is full".into()),
        }
    }
}

#[async_trait::async_trait]
impl Store for FailingStore {
    async fn check(&self, _: &[Check<'_>], _: CheckMode) -> Result<Vec<Decision>, StoreError> {
        Err((self.error)())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        // An overloaded node's store is up.
        match (self.error)() {
            error if error.is_overload() => Ok(()),
            error => Err(error),
        }
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

/// The default `AppState::for_test` clock start, in milliseconds since the epoch.
pub(crate) const TEST_START_MS: u64 = 1_800_000_000_000;

/// Builds the [`AppState`] a unit test runs against, with the defaults of a plain `spillway
/// serve` (in-memory store, `serve`'s default `/v1/authorize` headers and statuses, no decision
/// log, traces, regions or catalog database) on a manual clock. Each setter overrides one part;
/// [`TestState::build`] assembles it. One place, so a new field of [`AppState`] gets its test
/// default here and nowhere else.
pub(crate) struct TestState {
    policy: Arc<Policy>,
    clock: ServerClock,
    store: Option<Arc<dyn Store>>,
    authorize: AuthorizeSettings,
    failure: FailureSettings,
    decision_log: Option<DecisionLog>,
    tracing: Option<Tracing>,
    regions: Option<Arc<RegionNode>>,
    node: String,
    source: String,
}

impl AppState {
    /// A test state for the policy in `policy` (YAML; a test policy that does not parse fails
    /// the test with the error).
    pub(crate) fn for_test(policy: &str) -> TestState {
        let policy = PolicySource::Builtin
            .parse(policy)
            .unwrap_or_else(|e| panic!("the test policy is invalid: {e}"));
        TestState {
            policy: Arc::new(policy),
            clock: ServerClock::manual(TEST_START_MS),
            store: None,
            authorize: authorize_settings(&[]),
            failure: FailureSettings::default(),
            decision_log: None,
            tracing: None,
            regions: None,
            node: "test".into(),
            source: "test.yaml".into(),
        }
    }
}

/// `/v1/authorize`'s settings as `spillway serve <args>` would make them.
fn authorize_settings(args: &[&str]) -> AuthorizeSettings {
    let argv = ["spillway", "serve"].iter().chain(args);
    let Command::Serve(args) = Cli::parse_from(argv).command else {
        unreachable!("serve was asked for");
    };
    ServerSettings::from_args(*args)
        .unwrap_or_else(|e| panic!("test serve flags: {e}"))
        .authorize
}

impl TestState {
    /// The process clock (default: manual, at [`TEST_START_MS`]). The default store and the
    /// failure handling run on it.
    pub(crate) fn clock(mut self, clock: ServerClock) -> Self {
        self.clock = clock;
        self
    }

    /// The store (default: an in-memory store of 10,000 keys on the state's clock).
    pub(crate) fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// `/v1/authorize` reads headers as `spillway serve <args>` would set them up, e.g.
    /// `["--tier-header", "X-Tier"]`.
    pub(crate) fn serve_args(mut self, args: &[&str]) -> Self {
        self.authorize = authorize_settings(args);
        self
    }

    /// What to do when the store fails (default: [`FailureSettings::default`]).
    pub(crate) fn failure(mut self, failure: FailureSettings) -> Self {
        self.failure = failure;
        self
    }

    /// Turns the decision log on with this request-path end.
    pub(crate) fn decision_log(mut self, log: DecisionLog) -> Self {
        self.decision_log = Some(log);
        self
    }

    /// Trace spans of decisions (default: off).
    pub(crate) fn tracing(mut self, tracing: Option<Tracing>) -> Self {
        self.tracing = tracing;
        self
    }

    /// The node's regions (default: none).
    pub(crate) fn regions(mut self, regions: Option<Arc<RegionNode>>) -> Self {
        self.regions = regions;
        self
    }

    /// The node's name in the top-k summaries (default: `test`).
    pub(crate) fn node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    /// The policy, as parsed, for tests that need it before [`TestState::build`] (regions).
    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Assembles the state.
    pub(crate) fn build(self) -> AppState {
        let clock = self.clock;
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new(10_000, clock.shared())));
        AppState {
            catalog: Arc::new(CatalogNode::new(self.policy.clone(), None)),
            policy_info: ArcSwap::from_pointee(PolicyInfo {
                source: self.source,
                loaded_at: clock.now(),
                limits: self.policy.limits().count(),
            }),
            engine: Engine::new(self.policy, store.clone(), clock.shared()),
            store,
            failover: Arc::new(Failover::new(self.failure, clock.shared())),
            clock,
            metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
            authorize: self.authorize,
            decision_log: self.decision_log,
            top: Arc::new(Top::new(&self.node)),
            top_board: None,
            tracing: self.tracing,
            principals: Default::default(),
            regions: self.regions,
            live: Live::new("memory"),
        }
    }
}

/// What `tracing` logs on this thread from [`Logs::capture`] until it is dropped: the tasks of
/// a current-thread runtime (`#[tokio::test]`) included.
///
/// One global subscriber, installed by the first capture, writes each event into the buffer of
/// the capture open on the event's thread (and drops events of threads with none). A scoped
/// subscriber per capture (`set_default`) was flaky under parallel tests: registering a
/// dispatcher rebuilds every callsite's cached interest, and a callsite first hit on another
/// thread at that moment could store an interest computed without the new dispatcher, so the
/// capture missed its event. With one dispatcher for the whole process nothing is rebuilt after
/// the first capture, and its filter is asked per event, never cached per callsite.
pub(crate) struct Logs {
    buffer: LogBuffer,
    /// The capture this one replaced on its thread (captures nest).
    outer: Option<LogBuffer>,
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<parking_lot::Mutex<Vec<u8>>>);

thread_local! {
    /// The buffer of the capture open on this thread, if any.
    static CAPTURING: std::cell::RefCell<Option<LogBuffer>> = const { std::cell::RefCell::new(None) };
}

/// Where the global subscriber writes: the capture open on this thread, or nowhere.
struct ThisThread;

impl std::io::Write for ThisThread {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|open| {
            if let Some(buffer) = open.borrow().as_ref() {
                buffer.0.lock().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Starts capturing (every level).
    pub(crate) fn capture() -> Self {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            use tracing_subscriber::layer::{Layer, SubscriberExt};
            // Events are formatted only on threads with a capture open. The filter is asked at
            // every event: `filter_fn` would ask once per callsite and cache the answer, so
            // whether a log line could ever be captured would depend on which test's thread
            // happened to reach it first.
            let capturing = tracing_subscriber::filter::dynamic_filter_fn(|_, _| {
                CAPTURING.with(|open| open.borrow().is_some())
            });
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(|| ThisThread)
                .with_ansi(false)
                .with_filter(capturing);
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other test installs a global subscriber");
        });
        let buffer = LogBuffer::default();
        let outer = CAPTURING.with(|open| open.borrow_mut().replace(buffer.clone()));
        Self { buffer, outer }
    }

    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.0.lock()).into_owned()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        let outer = self.outer.take();
        CAPTURING.with(|open| *open.borrow_mut() = outer);
    }
}

/// A policy with `store` (its whole `store:` block, ending in a newline) and one limit,
/// counted across regions (`scope: aggregate`) per tenant: what the regions' tests run on.
pub(crate) fn aggregate_policy(store: &str) -> spillway_core::policy::Policy {
    crate::config::PolicySource::Builtin
        .parse(&aggregate_policy_text(store, 10, "1m"))
        .expect("valid policy")
}

/// [`aggregate_policy`]'s text, its limit `soft` of `limit` a `window`.
pub(crate) fn aggregate_policy_text(store: &str, limit: u64, window: &str) -> String {
    format!(
        "default_tier: t
{store}limits:
  soft: {{algorithm: fixed_window, limit: {limit}, window: {window}, key: [tenant], scope: aggregate}}
tiers:
  t: {{limits: [soft]}}
"
    )
}

mod tests {
    use super::Logs;

    /// One log line, at one callsite of its own.
    fn say() {
        tracing::info!("said once per call");
    }

    #[test]
    fn a_line_first_reached_outside_any_capture_is_still_captured_later() {
        // The subscriber is installed; then a thread with no capture open reaches the callsite
        // first, as another test's thread may.
        drop(Logs::capture());
        std::thread::spawn(say).join().expect("the thread logs");
        let logs = Logs::capture();
        say();
        assert!(
            logs.text().contains("said once per call"),
            "{}",
            logs.text()
        );
    }

    #[test]
    fn a_capture_sees_its_own_thread_only_and_nests() {
        let outer = Logs::capture();
        tracing::info!("outer line");
        {
            let inner = Logs::capture();
            std::thread::spawn(|| tracing::info!("other thread"))
                .join()
                .expect("the thread logs");
            tracing::info!("inner line");
            assert!(inner.text().contains("inner line"));
            assert!(!inner.text().contains("other thread"));
            assert!(!inner.text().contains("outer line"));
        }
        tracing::info!("outer again");
        let text = outer.text();
        assert!(
            text.contains("outer line") && text.contains("outer again"),
            "{text}"
        );
        assert!(
            !text.contains("inner line") && !text.contains("other thread"),
            "{text}"
        );
    }
}
