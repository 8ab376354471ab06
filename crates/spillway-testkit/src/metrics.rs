//! A Prometheus recorder of a test's own: the counts the code under test makes on the test's
//! thread, and no other test's (the process-wide recorder is shared by every test of a
//! binary). The recorder is thread-local, so the test runs on one thread
//! (`#[tokio::test(flavor = "current_thread")]`) for it to hear every task's counts.

use metrics::LocalRecorderGuard;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// This thread's own recorder while the value lives; see the module docs.
pub struct LocalMetrics {
    handle: PrometheusHandle,
    _heard: LocalRecorderGuard<'static>,
}

impl LocalMetrics {
    /// Makes a recorder and hears this thread's counts with it until the value is dropped.
    /// The recorder itself is leaked, since the guard must borrow it for as long as the value
    /// lives: with it stays its registry, every metric the test recorded, until the test
    /// binary exits (acceptable for tests, which record a bounded set each).
    pub fn hear() -> Self {
        let recorder = Box::leak(Box::new(PrometheusBuilder::new().build_recorder()));
        Self {
            handle: recorder.handle(),
            _heard: metrics::set_default_local_recorder(recorder),
        }
    }

    /// Everything counted so far, in Prometheus' text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// The sum of the samples of `metric` whose line holds `label` (such as `kind="moved"`; `""`
/// for every sample) in a Prometheus rendering.
pub fn sample(rendered: &str, metric: &str, label: &str) -> u64 {
    rendered
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts made on this thread are heard, by label; those made before, or on another
    /// thread, are not.
    #[test]
    fn hears_this_threads_counts_only() {
        metrics::counter!("testkit_heard_total", "kind" => "before").increment(1);
        let heard = LocalMetrics::hear();
        metrics::counter!("testkit_heard_total", "kind" => "a").increment(2);
        metrics::counter!("testkit_heard_total", "kind" => "b").increment(3);
        std::thread::spawn(|| metrics::counter!("testkit_heard_total", "kind" => "a").increment(5))
            .join()
            .expect("the other thread");
        let rendered = heard.render();
        assert_eq!(
            sample(&rendered, "testkit_heard_total", ""),
            5,
            "{rendered}"
        );
        assert_eq!(sample(&rendered, "testkit_heard_total", r#"kind="a""#), 2);
        assert_eq!(
            sample(&rendered, "testkit_heard_total", r#"kind="before""#),
            0
        );
    }
}
