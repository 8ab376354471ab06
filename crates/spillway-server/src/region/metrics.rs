//! What the regions tell operators. Every label is a region name from the policy (bounded),
//! never a counter's key.

/// Gauge, by region: seconds between a region's last publication of its counts and the read
/// that brought them here (how stale `aggregate` decisions are, from this node's view).
pub const LAG: &str = "spillway_region_exchange_lag_seconds";
/// Histogram, by region: how long one read of a region's counts took (a round trip).
pub const READ_SECONDS: &str = "spillway_region_read_seconds";
/// Gauge, by region: seconds since this node last read the region's counts.
pub const READ_AGE: &str = "spillway_region_read_age_seconds";
/// Counter, by region and outcome (`ok`, `failed`): reads of another region's counts.
pub const EXCHANGES: &str = "spillway_region_exchanges_total";
/// Counter, by region: counters this node added to its own region's published counts.
pub const PUBLISHED: &str = "spillway_region_published_total";
/// Gauge, by region: the sum of the region's `aggregate` counts in the current windows, as
/// last read.
pub const COUNTS: &str = "spillway_region_counts";
/// Gauge, by region: 1 while this node takes the region as cut off.
pub const PARTITIONED: &str = "spillway_region_partitioned";
/// Gauge: 1 while every other region is cut off (this region decides on its share).
pub const ISOLATED: &str = "spillway_region_isolated";
/// Gauge: counters whose other regions' counts this node holds.
pub const KNOWN: &str = "spillway_region_known_counters";
/// Counter: other regions' counters not held because the known map was full.
pub const KNOWN_OVERFLOW: &str = "spillway_region_known_overflow_total";
/// Counter: times a window length in use was not read because the exchange already read
/// [`super::exchange::MAX_LENGTHS`] others (its counters read each region at its share).
pub const LENGTHS_OVERFLOW: &str = "spillway_region_lengths_overflow_total";
/// Counter: admissions not tallied because the pending map was full.
pub const TALLY_OVERFLOW: &str = "spillway_region_tally_overflow_total";
/// Counter, by region: reads of the counters this node watches (those it published) that
/// failed on a region read in part; those counters then read the region at its share.
pub const WATCHED_FAILED: &str = "spillway_region_watched_read_failures_total";
/// Counter, by region and outcome (`ok`, `failed`): calls to another region's store for a
/// `home` limit.
pub const HOME_CALLS: &str = "spillway_region_home_calls_total";

/// Describes the metrics and sets each region's series to zero, so they exist from start.
pub fn describe(names: &[std::sync::Arc<str>]) {
    metrics::describe_gauge!(
        LAG,
        metrics::Unit::Seconds,
        "Age of another region's aggregate counts when read."
    );
    metrics::describe_gauge!(
        READ_AGE,
        metrics::Unit::Seconds,
        "Seconds since another region's counts were last read."
    );
    metrics::describe_counter!(
        EXCHANGES,
        "Reads of another region's aggregate counts, by outcome."
    );
    metrics::describe_counter!(
        PUBLISHED,
        "Counters added to this region's published counts."
    );
    metrics::describe_gauge!(
        COUNTS,
        "A region's aggregate counts in the current windows, as last read."
    );
    metrics::describe_gauge!(
        PARTITIONED,
        "1 while this node takes the region as cut off."
    );
    metrics::describe_gauge!(ISOLATED, "1 while every other region is cut off.");
    metrics::describe_gauge!(
        KNOWN,
        "Counters whose other regions' counts this node holds."
    );
    metrics::describe_counter!(
        LENGTHS_OVERFLOW,
        "Window lengths in use left unread because the exchange reads at most 64."
    );
    metrics::describe_counter!(
        TALLY_OVERFLOW,
        "Admissions not tallied because the pending map was full."
    );
    metrics::describe_counter!(
        WATCHED_FAILED,
        "Exact reads of this node's own counters from a region read in part that failed."
    );
    metrics::describe_counter!(
        HOME_CALLS,
        "Calls to another region's store for home-scoped limits, by outcome."
    );
    for name in names {
        let region = name.to_string();
        metrics::gauge!(PARTITIONED, "region" => region.clone()).set(0.0);
        for outcome in ["ok", "failed"] {
            metrics::counter!(EXCHANGES, "region" => region.clone(), "outcome" => outcome)
                .increment(0);
            metrics::counter!(HOME_CALLS, "region" => region.clone(), "outcome" => outcome)
                .increment(0);
        }
    }
    metrics::gauge!(ISOLATED).set(0.0);
}
