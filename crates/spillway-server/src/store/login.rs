//! What a refused login asks to check, by where the login was given: the one wording ("...;
//! check the username/password in <the URL>", see [`spillway_redis::login::Refusal`]) of
//! every Redis user of the server, the store's, a far region's, the decision log's and the
//! top-k board's alike.

/// The store's URL, for the store itself and for those using its Redis (the top-k board,
/// `--decision-log redis`).
pub const STORE: &str = "the username/password in the store's URL (--store-url, or the \
                         policy's store.url / store.nodes)";
/// A region's store, for home calls to it and the exchange of counts.
pub const REGION: &str =
    "the username/password in the region's URL (the policy's store.regions.<name>)";
/// The decision log's own Redis (`--decision-log redis://...`).
pub const DECISION_LOG: &str =
    "the username/password in --decision-log's URL (SPILLWAY_DECISION_LOG)";
/// The Redis `spillway decisions --redis` reads.
pub const REDIS_FLAG: &str = "the username/password in --redis's URL";
