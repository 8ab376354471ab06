//! The exchange of `aggregate` counts between regions, through the regions' own Redis: off
//! the request path, once every `store.exchange.interval`.
//!
//! Each tick a node
//! 1. adds what it admitted since the last tick to its region's counts: `HINCRBY` into the
//!    hash `{<prefix>:agg:<region>}:<window length>:<window start>` (one field per counter,
//!    see `super::tally::field`), which expires two windows after its start, and stamps
//!    `{<prefix>:agg:<region>}:stamp` with the time;
//! 2. reads, from every other region's Redis at once, the hashes of the current and the
//!    previous window of each window length the policy's `aggregate` limits use, and that
//!    region's stamp;
//! 3. swaps the counts into the [`Tally`], marking each region it could read as fresh.
//!
//! With leases on (`store.exchange.lease_above`), step 2 reads the node's own region too: a
//! lease is counted from the region's own published count (`Tally::lease`).
//!
//! A region that cannot be read keeps its last counts until `partition_after`, after which
//! it is taken as cut off (`Tally::others` then counts it at its share). Nothing needs to
//! rejoin: the next successful read brings it back. What a node could not publish stays
//! pending and goes with the next tick. Every key of a region carries one hash tag, so a
//! region on a Redis Cluster answers the whole pipeline from one slot.

use super::metrics as m;
use super::tally::{self, Known, Place, Tally, CATCH_ALL};
use crate::shutdown::Shutdown;
use spillway_core::policy::{Policy, Regions, Scope, StoreConfig};
use spillway_core::time::{Clock, Micros};
use spillway_redis::connection::{Conn, ConnectOptions};
use spillway_redis::login::{self, Refusal, TellOnce};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The most counters a node holds the other regions' counts of (about 100 MB at the limit;
/// what clients can make grow, by sending fresh key values, must have a bound). Past it the
/// largest counts are kept, and a counter not held reads as its region's share of the limit
/// (see `Known::truncated`): fail closed, not open.
pub const MAX_KNOWN: usize = 1_000_000;

/// The most counters one publication pipeline carries; a larger publication is sent in
/// several pipelines.
pub const PUBLISH_CHUNK: usize = 5_000;

/// The most counters a node watches: those it published lately, read exactly (`HMGET`) from a
/// region whose hashes were too large to read whole. Past it, a counter newly published is
/// not watched, and a region read in part counts it at its share, as before.
pub const MAX_WATCHED: usize = 200_000;

/// The most window lengths a node exchanges (policy, catalog overrides, and what other
/// regions announce).
pub const MAX_LENGTHS: usize = 64;

/// How long a region's announced window lengths outlive its last publication at least (a
/// week, or two of the publication's longest windows): they are trimmed as they expire, so
/// the set stays small, and a longer window another node announced is not dropped early by a
/// publication of short ones.
const LENGTHS_KEPT_MS: u64 = 7 * 24 * 3_600_000;

/// One region's Redis as the exchange sees it: connected on first use, and again after a
/// failure.
struct Link {
    name: Arc<str>,
    config: StoreConfig,
    conn: Option<Conn>,
    /// `{<prefix>:agg:<region>}`.
    tag: String,
    /// Whether a refused login was logged since the last call that succeeded: a refusal is
    /// logged once as an error (each failed call stays counted and logged at debug).
    refusal: TellOnce,
}

impl Link {
    fn new(name: &Arc<str>, config: &StoreConfig) -> Self {
        let prefix = match config {
            StoreConfig::Redis(s)
            | StoreConfig::RedisCluster(s)
            | StoreConfig::RedisSentinel(s) => s.prefix.as_deref(),
            StoreConfig::Memory { .. } => None,
        }
        .unwrap_or("rl");
        Self {
            name: name.clone(),
            config: config.clone(),
            conn: None,
            tag: format!("{{{prefix}:agg:{name}}}"),
            refusal: TellOnce::default(),
        }
    }

    fn hash(&self, len: Micros, start: Micros) -> String {
        format!("{}:{len}:{start}", self.tag)
    }

    fn stamp(&self) -> String {
        format!("{}:stamp", self.tag)
    }

    /// The window lengths the region's nodes count `aggregate` limits in: a sorted set whose
    /// scores say until when (node clock, microseconds) each length's hashes may still be
    /// read, so a length no node uses any more leaves it. (Releases before it announced the
    /// lengths in the set `{tag}:lengths`, whose members stayed as long as any node
    /// published: neither written nor read now, it expires on its own.)
    fn lengths(&self) -> String {
        format!("{}:lengths_until", self.tag)
    }

    /// Connects within `budget`: the client's own waits take at most half of it, so that a
    /// cluster's refusal leaves time to ask which seed refused (`Refusal::connect_cluster`).
    async fn connect(&mut self, budget: Duration) -> redis::RedisResult<Conn> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        // Validation gives regions only `redis` and `redis_cluster` stores.
        let Some(target) = crate::store::url_target(&self.config) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a region needs a `redis` or `redis_cluster` store",
            )));
        };
        let owner = format!("region {}", self.name);
        let hint = crate::store::login_hints::region(&self.name);
        let how = ConnectOptions {
            refusal: Refusal::of(&owner, &hint),
            deadline: tokio::time::Instant::now() + budget,
            retries: 0,
            ask: self.refusal.ask_seeds(),
        };
        let conn = Conn::connect(&target, how).await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `pipe` within `budget`; a failure drops the connection, so the next call
    /// connects afresh. A refused login is logged here, once until a call succeeds.
    async fn run<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
        budget: Duration,
    ) -> Result<T, String> {
        let called = async {
            let mut conn = self.connect(budget).await?;
            conn.pipeline_within(pipe, budget).await
        };
        let err = match called.await {
            Ok(v) => {
                self.refusal.reset();
                return Ok(v);
            }
            Err(e) => e,
        };
        self.conn = None;
        if login::refused(&err) && self.refusal.first() {
            tracing::error!(
                region = %self.name,
                "{err}; this region's counts are neither published nor read until it accepts \
                 the login (told once)"
            );
        }
        Err(err.to_string())
    }
}

/// The window lengths of the policy's `aggregate` limits (tenant overrides included).
fn window_lengths(policy: &Policy) -> BTreeSet<Micros> {
    policy
        .limits()
        .filter(|d| d.scope == Scope::Aggregate)
        .map(|d| d.params.window().max(1))
        .collect()
}

/// The exchange task of one node; see the module docs.
pub struct Exchange {
    tally: Arc<Tally>,
    links: Vec<Link>,
    interval: Duration,
    /// The budget of one call to a region's Redis.
    budget: Duration,
    clock: Arc<dyn Clock>,
    /// The counts last read from each region (kept while it cannot be read).
    last: Vec<HashMap<Place, u64>>,
    /// Window lengths seen beyond the policy's own (tenant overrides set at run time, here or
    /// announced by another region), with when they were last seen.
    seen: HashMap<Micros, Micros>,
    /// Whether each region's last read left counters out (a hash over its cap).
    cut_reads: Vec<bool>,
    /// The window lengths each region's kept counts were read for (`None`: never read).
    read_lengths: Vec<Option<Arc<BTreeSet<Micros>>>>,
    /// The policy's own window lengths, as of the last tick: always read, so they take no
    /// room under [`MAX_LENGTHS`].
    policy_lengths: BTreeSet<Micros>,
    /// How long a region's stamp may be old before the region is taken as cut off.
    partition_after: Micros,
    /// The counters this node published lately, by hash (window length and start), with how
    /// many there are: read exactly from a region whose hashes were read in part
    /// ([`read_watched`]).
    watched: HashMap<(Micros, Micros), HashSet<Box<str>>>,
    watched_len: usize,
    /// The most fields one hash read brings before it is read in part (`None`: from
    /// [`MAX_KNOWN`]); tests make it small.
    read_cap: Option<usize>,
}

impl Exchange {
    /// The exchange of `tally`'s region with the others of `regions`.
    pub fn new(regions: &Regions, tally: Arc<Tally>, clock: Arc<dyn Clock>) -> Self {
        let links = (regions.names().iter().enumerate())
            .map(|(i, name)| Link::new(name, regions.store(i)))
            .collect();
        Self {
            tally,
            links,
            interval: Duration::from_micros(regions.interval),
            budget: Duration::from_micros(regions.partition_after / 2)
                .max(Duration::from_millis(50)),
            clock,
            last: vec![HashMap::new(); regions.names().len()],
            seen: HashMap::new(),
            cut_reads: vec![false; regions.names().len()],
            read_lengths: vec![None; regions.names().len()],
            policy_lengths: BTreeSet::new(),
            partition_after: regions.partition_after,
            watched: HashMap::new(),
            watched_len: 0,
            read_cap: None,
        }
    }

    /// Notes that this node published the counter at `place`: watched until its hash expires.
    fn watch(&mut self, (len, start, field): &Place) {
        if self.watched_len >= MAX_WATCHED {
            return;
        }
        let fields = self.watched.entry((*len, *start)).or_default();
        if !fields.contains(field) {
            fields.insert(field.clone());
            self.watched_len += 1;
        }
    }

    /// Runs ticks, reading the policy in force from `policy` on each, until `stop` is notified
    /// (after the drain: requests still admit while draining) or `shutdown` is forced; then
    /// publishes once more, so what the node admitted last is not lost to the others.
    pub fn spawn(
        mut self,
        policy: impl Fn() -> Arc<Policy> + Send + 'static,
        shutdown: Shutdown,
        stop: Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Ticks go on while requests drain (they still admit); a last publication follows.
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stop.notified() => break,
                    () = shutdown.forced() => break,
                }
                let lengths = window_lengths(&policy());
                self.tick(&lengths).await;
            }
            let own = self.tally.own();
            let now = self.clock.now();
            self.publish(own, now, self.budget).await;
        })
    }

    /// One exchange: publish, read the others, swap the counts in.
    pub async fn tick(&mut self, lengths: &BTreeSet<Micros>) {
        // Reads of every region run at once, each cut well before the region would be taken
        // as cut off; a tick lasts at least the slowest round trip.
        let budget = self.budget;
        let own = self.tally.own();
        let now = self.clock.now();
        self.policy_lengths.clone_from(lengths);
        self.publish(own, now, budget).await;
        // Lengths a tenant override brought (seen here or announced by another region) are
        // read for two windows after they were last seen.
        self.seen
            .retain(|&len, &mut at| now.saturating_sub(at) <= 2 * len);
        let mut all: BTreeSet<Micros> = lengths.clone();
        all.extend(self.seen.keys().copied());
        let all = Arc::new(all);
        let lengths = &*all;
        // Watched counters whose hashes have expired are read no more.
        self.watched
            .retain(|&(len, start), _| tally::read_until(len, start) > now);
        self.watched_len = self.watched.values().map(HashSet::len).sum();
        let read_own = self.tally.leases();
        let cap = self.read_cap;
        let reads = self
            .links
            .iter_mut()
            .enumerate()
            .map(|(r, link)| async move {
                // The own region is read only for leases (its published count).
                if r == own && !read_own {
                    return None;
                }
                let stopwatch = crate::metrics::Stopwatch::start();
                let read = read_region(link, lengths, now, budget, cap).await;
                let took = stopwatch.elapsed().as_secs_f64();
                metrics::histogram!(m::READ_SECONDS, "region" => link.name.to_string())
                    .record(took);
                Some(read)
            });
        let mut results = futures_util::future::join_all(reads).await;
        // From the regions read in part, what this node admits itself, and every catch-all,
        // are read exactly (all such regions at once, one round trip each); left out, a
        // counter a region used far beyond its share would read as that share.
        let watched = &self.watched;
        let exact_reads = (self.links.iter_mut().zip(&mut results))
            .filter_map(|(link, read)| match read {
                Some(Ok((counts, _, _, true))) => Some((link, counts)),
                _ => None,
            })
            .map(|(link, counts)| async move {
                match read_watched(link, lengths, now, watched, budget).await {
                    Ok(exact) => counts.extend(exact),
                    Err(err) => {
                        metrics::counter!(m::WATCHED_FAILED, "region" => link.name.to_string())
                            .increment(1);
                        tracing::warn!(region = %link.name, %err,
                            "cannot read the watched counters of a region read in part; its \
                             counters left out read as its share");
                    }
                }
            });
        futures_util::future::join_all(exact_reads).await;
        let mut read_ok = Vec::new();
        for (r, read) in results.into_iter().enumerate() {
            let name = self.links[r].name.to_string();
            match read {
                Some(Ok((counts, stamp, announced, cut))) => {
                    self.cut_reads[r] = cut;
                    self.read_lengths[r] = Some(all.clone());
                    for len in announced {
                        self.see(len, now);
                    }
                    // A region whose nodes have not published within `partition_after` (none
                    // running, or frozen) is cut off, however readable its store.
                    let live = stamp.is_some_and(|s| now.saturating_sub(s) <= self.partition_after);
                    if live {
                        read_ok.push(r);
                    }
                    let total: u64 = counts
                        .iter()
                        .filter(|((len, start, _), _)| *start == now - now % len)
                        .map(|(_, n)| n)
                        .sum();
                    metrics::gauge!(m::COUNTS, "region" => name.clone()).set(total as f64);
                    if let Some(stamp) = stamp {
                        // From the region's publication to this node having its counts.
                        let lag = self.clock.now().saturating_sub(stamp) as f64 / 1e6;
                        metrics::gauge!(m::LAG, "region" => name.clone()).set(lag);
                    }
                    metrics::counter!(m::EXCHANGES, "region" => name, "outcome" => "ok")
                        .increment(1);
                    self.last[r] = counts;
                }
                Some(Err(err)) => {
                    tracing::debug!(region = %name, %err, "cannot read the region's counts");
                    metrics::counter!(m::EXCHANGES, "region" => name, "outcome" => "failed")
                        .increment(1);
                }
                None => {}
            }
        }
        let regions = self.tally.regions();
        let mut known = gather(&self.last, regions, MAX_KNOWN);
        // A counter of a length a region's kept counts were not read for (past the cap, or
        // new since that region's last good read) reads that region at its share.
        known.lengths = self.read_lengths.clone().into_boxed_slice();
        for (t, &cut) in known.truncated.iter_mut().zip(&self.cut_reads) {
            *t |= cut;
        }
        if known.truncated.iter().any(|&t| t) {
            metrics::counter!(m::KNOWN_OVERFLOW).increment(1);
        }
        self.tally.publish_known(known, &read_ok, now);
        metrics::gauge!(m::KNOWN).set(self.tally.known_len() as f64);
        for r in 0..regions {
            let name = self.links[r].name.to_string();
            let cut = self.tally.cut_off(r, now);
            metrics::gauge!(m::PARTITIONED, "region" => name.clone()).set(f64::from(u8::from(cut)));
            if r != own {
                let age = now.saturating_sub(self.tally.fresh_at(r)) as f64 / 1e6;
                metrics::gauge!(m::READ_AGE, "region" => name).set(age);
            }
        }
        metrics::gauge!(m::ISOLATED).set(f64::from(u8::from(self.tally.isolated(now))));
    }

    /// Notes that window length `len` (not one of the policy's) is in use at `now`, so its
    /// hashes are read for two windows more; past [`MAX_LENGTHS`] a new length is not read (its counters then read each
    /// region at its share: `Known::lengths`), which is counted and logged.
    fn see(&mut self, len: Micros, now: Micros) {
        if self.policy_lengths.contains(&len) {
            return;
        }
        if self.seen.len() < MAX_LENGTHS || self.seen.contains_key(&len) {
            self.seen.insert(len, now);
        } else {
            metrics::counter!(m::LENGTHS_OVERFLOW).increment(1);
            tracing::debug!(
                window_us = len,
                "more aggregate window lengths in use than the exchange reads; this one is not read"
            );
        }
    }

    /// Adds this node's admissions to its region's counts, in pipelines of at most
    /// [`PUBLISH_CHUNK`] counters; what a failed pipeline carried is kept for the next tick.
    /// `HINCRBY` is not idempotent: a pipeline that timed out after Redis applied it is sent
    /// again and counted twice (the others then over-count: under-admission, never over).
    async fn publish(&mut self, own: usize, now: Micros, budget: Duration) {
        let pending = self.tally.take_pending();
        for place in pending.keys() {
            self.see(place.0, now);
            self.watch(place);
        }
        let link = &mut self.links[own];
        let name = link.name.to_string();
        let mut entries: Vec<(Place, u64)> = pending.into_iter().collect();
        let mut failed: HashMap<Place, u64> = HashMap::new();
        let lengths: BTreeSet<Micros> = entries.iter().map(|((len, _, _), _)| *len).collect();
        let mut first = true;
        while first || !entries.is_empty() {
            first = false;
            let cut = entries.len().saturating_sub(PUBLISH_CHUNK);
            let chunk = entries.split_off(cut);
            let mut pipe = redis::pipe();
            for ((len, start, field), n) in &chunk {
                let hash = link.hash(*len, *start);
                // Kept until the window has served as a sliding window's previous one.
                let expire_at_ms = tally::read_until(*len, *start) / 1_000 + 1_000;
                pipe.cmd("HINCRBY")
                    .arg(&hash)
                    .arg(&**field)
                    .arg(*n)
                    .ignore();
                pipe.cmd("PEXPIREAT").arg(&hash).arg(expire_at_ms).ignore();
            }
            if entries.is_empty() {
                // The last pipeline stamps the time and announces the window lengths.
                pipe.cmd("SET")
                    .arg(link.stamp())
                    .arg(now)
                    .arg("PX")
                    .arg(60_000)
                    .ignore();
                if let Some(&longest) = lengths.iter().next_back() {
                    // Each length is announced until its hashes published now expire; those
                    // whose time has passed leave the set.
                    let lens = link.lengths();
                    let zadd = pipe.cmd("ZADD").arg(&lens);
                    for &len in &lengths {
                        zadd.arg(now.saturating_add(2 * len)).arg(len);
                    }
                    zadd.ignore();
                    pipe.cmd("ZREMRANGEBYSCORE")
                        .arg(&lens)
                        .arg("-inf")
                        .arg(format!("({now}"))
                        .ignore();
                    // Other nodes may announce longer windows than this publication's: the
                    // set outlives them (trimmed above, it stays small).
                    pipe.cmd("PEXPIRE")
                        .arg(&lens)
                        .arg((2 * longest / 1_000).max(LENGTHS_KEPT_MS))
                        .ignore();
                }
            }
            match link.run::<()>(&pipe, budget).await {
                Ok(()) => {
                    metrics::counter!(m::PUBLISHED, "region" => name.clone())
                        .increment(chunk.len() as u64);
                }
                Err(err) => {
                    tracing::debug!(region = %name, %err, "cannot publish the region's counts");
                    failed.extend(chunk);
                    // The region's store is failing: keep the rest for the next tick.
                    failed.extend(entries.drain(..));
                }
            }
        }
        if !failed.is_empty() {
            self.tally.restore_pending(failed, now);
        }
    }
}

/// The known counts of the regions' last reads, at most `max` counters: the catch-all fields
/// first, then the largest counts; a region some of whose counters were left out is marked
/// truncated.
fn gather(last: &[HashMap<Place, u64>], regions: usize, max: usize) -> Known {
    let mut truncated = vec![false; regions];
    let mut known = Known::default();
    let total: usize = last.iter().map(HashMap::len).sum();
    let mut entries: Vec<(&Place, usize, u64)> = Vec::with_capacity(total);
    for (r, counts) in last.iter().enumerate() {
        entries.extend(counts.iter().map(|(p, &n)| (p, r, n)));
    }
    if total > max {
        entries.sort_unstable_by_key(|(p, _, n)| {
            (std::cmp::Reverse(&*p.2 == CATCH_ALL), std::cmp::Reverse(*n))
        });
    }
    for (place, r, n) in entries {
        if known.counts.len() >= max && !known.counts.contains_key(place) && &*place.2 != CATCH_ALL
        {
            truncated[r] = true;
            continue;
        }
        let slot = known
            .counts
            .entry(place.clone())
            .or_insert_with(|| vec![0; regions].into_boxed_slice());
        slot[r] = n;
    }
    known.truncated = truncated.into_boxed_slice();
    known
}

/// What one read of a region brings: its counts, its stamp, the window lengths it counts,
/// and whether some of its counters were left out.
type Read = (HashMap<Place, u64>, Option<Micros>, Vec<Micros>, bool);

/// The hashes a read at `now` covers, by window length and start: the current and the
/// previous window of each of `lengths`.
fn hashes_at(
    lengths: &BTreeSet<Micros>,
    now: Micros,
) -> impl Iterator<Item = (Micros, Micros)> + '_ {
    lengths.iter().flat_map(move |&len| {
        let start = now - now % len;
        [(len, start), (len, start.saturating_sub(len))]
    })
}

/// Reads one region's hashes for `lengths` (current and previous windows) and its stamp.
/// `cap`: the most fields a hash read brings whole (`None`: from [`MAX_KNOWN`]).
async fn read_region(
    link: &mut Link,
    lengths: &BTreeSet<Micros>,
    now: Micros,
    budget: Duration,
    cap: Option<usize>,
) -> Result<Read, String> {
    let mut pipe = redis::pipe();
    let mut places = Vec::new();
    // Each hash is read whole up to a cap, so one read's memory is bounded too; a hash over
    // it is read in part and the region marked truncated (its other counters read as its
    // share, but for those `read_watched` then reads exactly).
    let hashes_read = (2 * lengths.len()).max(1);
    let cap = cap.unwrap_or((MAX_KNOWN / hashes_read).max(1_000));
    for (len, s) in hashes_at(lengths, now) {
        pipe.cmd("EVAL")
            .arg(READ_CAPPED)
            .arg(1)
            .arg(link.hash(len, s))
            .arg(cap);
        places.push((len, s));
    }
    pipe.cmd("GET").arg(link.stamp());
    // The lengths still in use, those whose hashes last longest first (the longer windows,
    // mostly); one more than are kept, so a full list shows.
    pipe.cmd("ZREVRANGEBYSCORE")
        .arg(link.lengths())
        .arg("+inf")
        .arg(now)
        .arg("LIMIT")
        .arg(0)
        .arg(MAX_LENGTHS + 1);
    let mut all: Vec<redis::Value> = link.run(&pipe, budget).await?;
    let announced = all
        .pop()
        .and_then(|v| redis::from_redis_value::<Vec<u64>>(v).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|&len| len > 0)
        .collect();
    let stamp = all
        .pop()
        .and_then(|v| redis::from_redis_value::<Option<u64>>(v).ok().flatten());
    let mut truncated = false;
    let mut hashes = Vec::with_capacity(all.len());
    for v in all {
        let (cut, flat): (u8, Vec<String>) =
            redis::from_redis_value(v).map_err(|e| e.to_string())?;
        truncated |= cut != 0;
        let mut pairs = HashMap::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let n: u64 = pair[1]
                .parse()
                .map_err(|_| format!("not a count: {}", pair[1]))?;
            pairs.insert(pair[0].clone(), n);
        }
        hashes.push(pairs);
    }
    let mut counts = HashMap::new();
    for ((len, start), hash) in places.into_iter().zip(hashes) {
        for (field, n) in hash {
            counts.insert((len, start, field.into_boxed_str()), n);
        }
    }
    Ok((counts, stamp, announced, truncated))
}

/// Reads, from a region whose hashes were read in part, the counters this node published
/// lately (`watched`) and each hash's catch-all, exactly (`HMGET`, at most [`PUBLISH_CHUNK`]
/// fields a command, all in one pipeline): the counters this node admits, and so the only ones
/// whose count here can let it over-admit. A counter the region does not hold is not
/// returned (it stays unheld, read at the region's share).
async fn read_watched(
    link: &mut Link,
    lengths: &BTreeSet<Micros>,
    now: Micros,
    watched: &HashMap<(Micros, Micros), HashSet<Box<str>>>,
    budget: Duration,
) -> Result<HashMap<Place, u64>, String> {
    let catch_all: Box<str> = Box::from(CATCH_ALL);
    let mut asked: Vec<Place> = Vec::new();
    for (len, start) in hashes_at(lengths, now) {
        asked.push((len, start, catch_all.clone()));
        if let Some(fields) = watched.get(&(len, start)) {
            asked.extend(fields.iter().map(|f| (len, start, f.clone())));
        }
    }
    // One pipeline, one round trip: an `HMGET` per hash and per chunk of its fields.
    let mut pipe = redis::pipe();
    let mut run = 0;
    while run < asked.len() {
        let (len, start, _) = &asked[run];
        let same = (asked[run..].iter())
            .take(PUBLISH_CHUNK)
            .take_while(|(l, s, _)| (l, s) == (len, start))
            .count();
        let cmd = pipe.cmd("HMGET").arg(link.hash(*len, *start));
        for (_, _, field) in &asked[run..run + same] {
            cmd.arg(&**field);
        }
        run += same;
    }
    let replies: Vec<Vec<Option<String>>> = link.run(&pipe, budget).await?;
    let mut exact = HashMap::new();
    for (place, value) in asked.iter().zip(replies.into_iter().flatten()) {
        if let Some(text) = value {
            let n: u64 = text.parse().map_err(|_| format!("not a count: {text}"))?;
            exact.insert(place.clone(), n);
        }
    }
    Ok(exact)
}

/// Returns `{0, HGETALL}` for a hash of at most `ARGV[1]` fields, else `{1, fields}` with about
/// that many of them (by `HSCAN`).
const READ_CAPPED: &str = r"
local cap = tonumber(ARGV[1])
if redis.call('HLEN', KEYS[1]) <= cap then
  return {0, redis.call('HGETALL', KEYS[1])}
end
local got, cursor = {}, '0'
repeat
  local r = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 1000)
  cursor = r[1]
  for i = 1, #r[2] do got[#got + 1] = r[2][i] end
until cursor == '0' or #got >= 2 * cap
return {1, got}
";

#[cfg(test)]
mod tests;
