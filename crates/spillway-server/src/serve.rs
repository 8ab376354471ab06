//! `spillway serve`: assemble the server, run it, and take it down gracefully.
//!
//! Start-up order matters: signal handlers (including `SIGHUP`, whose default action would
//! kill the process) are installed before the `listening on <addr>` line is logged, so anyone
//! who waits for that line may signal the process safely.
//!
//! Shutdown: the first SIGTERM/SIGINT fires the shared [`Shutdown`]. The listener closes at
//! once, idle keep-alive connections are closed, and in-flight requests get up to
//! `--shutdown-grace` to finish; the process then exits 0 either way (a warning says when
//! requests were cut off). A second signal cuts the wait short.

use crate::catalog::settings::CatalogSettings;
use crate::catalog::{sync, CatalogNode};
use crate::cli::ServeArgs;
use crate::clock::ServerClock;
use crate::config::{ServerSettings, SettingsError};
use crate::failure::{Failover, FailureSettings};
use crate::http::entry::Entry;
use crate::region::RegionNode;
use crate::reload::{self, Reloader};
use crate::shutdown::{self, Shutdown};
use crate::state::{AppState, PolicyInfo};
use crate::telemetry::decision_log::{self, DecisionLog};
use crate::telemetry::top::redis::{self as top_redis, Board};
use crate::telemetry::top::Top;
use crate::telemetry::trace::Tracing;
use crate::{admin, app};
use crate::{grpc, logging, metrics, serving, sweeper};
use anyhow::Context;
use arc_swap::ArcSwap;
use spillway_core::engine::Engine;
use spillway_core::policy::StoreConfig;
use spillway_core::store::Store;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Runs the subcommand to completion: exit status 0 after a graceful shutdown, 1 when the
/// server could not start for a reason trying again may cure (a port taken, the store
/// unreachable, the policy file unreadable), 2 for settings that make no sense (flags and
/// variables, an invalid policy, a mistyped `--store-url` or `--region`, a store that
/// refuses the login, store logins the store cannot use: see [`SettingsError`]).
pub fn main(args: ServeArgs) -> ExitCode {
    if let Err(err) = logging::init(args.log_format, &args.log_filter) {
        eprintln!("spillway serve: {err}");
        return ExitCode::from(2);
    }
    let settings = match ServerSettings::from_args(args) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("spillway serve: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("spillway serve: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown::listen_for_signals(shutdown.clone()).context("cannot install signal handlers")?;
        run(settings, shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("spillway serve: {err:#}");
            if err.chain().any(|cause| cause.is::<SettingsError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Builds the server from `settings` and serves until `shutdown` fires and the drain ends.
pub async fn run(settings: ServerSettings, shutdown: Shutdown) -> anyhow::Result<()> {
    let clock = ServerClock::from_flag(settings.manual_clock_ms);
    if clock.manual_control().is_some() {
        tracing::warn!("running on a MANUAL clock with POST /debug/clock enabled: test use only");
    }
    let source = settings.policy.describe();
    let text = settings.policy.read().await?;
    // `--store-url` stands in for the policy's `store.nodes`; a region's are always used.
    let store_url = settings.store_url.as_deref();
    let replaced = crate::store::given_url(store_url).is_some();
    let policy = settings
        .policy
        .parse_checked(&text, replaced)
        .map_err(|err| SettingsError(format!("the policy {source} is invalid: {err}")))?;
    let limits = policy.limits().count();

    // Installed before the store is built, so the store's and the breaker's start-up values
    // are recorded.
    let recorder = metrics::install().context("cannot set up metrics")?;
    let region = settings.region.as_deref();
    let (store_config, login_hint) =
        crate::region::own_store(&policy, region, store_url).map_err(SettingsError)?;
    if crate::store::sentinel_login::is_set(&settings.sentinel_auth)
        && !matches!(store_config, StoreConfig::RedisSentinel(_))
    {
        return Err(SettingsError(format!(
            "--master-*/--sentinel-* logins (or SPILLWAY_MASTER_PASSWORD / \
             SPILLWAY_SENTINEL_PASSWORD) apply to a `redis_sentinel` store only, and this \
             store is `{}`: give a redis:// URL its own login (redis://user:password@host)",
            store_config.kind()
        ))
        .into());
    }
    // `--decision-log redis` names the store's Redis: found here, once, so a store it cannot
    // name stops start-up as the bad setting it is, before the store connects.
    let log_redis = match &settings.decision_log {
        Some(log) if log.sink == decision_log::settings::SinkSpec::StoreRedis => {
            let target =
                decision_log::settings::store_target(&store_config).map_err(SettingsError)?;
            Some((target, login_hint.as_str()))
        }
        _ => None,
    };
    let failure = FailureSettings::from_store(&store_config, settings.store_timeout);
    let store: Arc<dyn Store> = crate::store::build(
        &store_config,
        crate::store::Login::own(&settings.sentinel_auth, &login_hint),
        settings.max_keys,
        clock.shared(),
        failure.budget,
        settings.manual_clock_in_store,
        // Behind `failover.guard` below, with the same budget.
        true,
    )
    .await?;
    let failover = Arc::new(Failover::new(failure, clock.shared()));
    let shared = !matches!(store_config, StoreConfig::Memory { .. });
    let store = failover.guard(store, shared);
    let regions = RegionNode::new(&policy, region, &failure, clock.shared())?;
    let policy = Arc::new(policy);
    let (catalog_db, migration_pending) = match &settings.catalog {
        Some(catalog) => {
            let (db, pending) = open_catalog(catalog, &policy).await?;
            (Some(db), pending)
        }
        None => (None, false),
    };
    let catalog = Arc::new(CatalogNode::new(Arc::clone(&policy), catalog_db));
    let engine = Engine::new(policy, store.clone(), clock.shared());
    let (decision_log, log_writer) = match &settings.decision_log {
        Some(log) => {
            let sink = decision_log::Sink::open(log, log_redis, clock.shared())
                .map_err(anyhow::Error::msg)?;
            let (handle, writer) = DecisionLog::new(log);
            let writer = writer
                .start(sink)
                .context("cannot start the decision log's writer")?;
            tracing::info!(sink = ?log.sink, node = %log.node, "decision log on");
            (Some(handle), Some(writer))
        }
        None => (None, None),
    };
    let (traces, trace_exporter) = match &settings.trace {
        Some(trace) => {
            let (traces, exporter) =
                Tracing::start(trace, store_kind(&store_config)).map_err(anyhow::Error::msg)?;
            let endpoint = spillway_core::redact::mask_service_url(&trace.endpoint);
            tracing::info!(%endpoint, sample = trace.sample, "traces on");
            (Some(traces), Some(exporter))
        }
        None => (None, None),
    };
    let top = Arc::new(if settings.top_k {
        Top::new(&settings.node_name).sampled(settings.top_k_sample)
    } else {
        Top::off(&settings.node_name)
    });
    let top_board = Board::connect(
        &store_config,
        &login_hint,
        &settings.sentinel_auth,
        settings.top_publish_every,
    )
    .await?;
    let app = Arc::new(AppState {
        engine,
        store: store.clone(),
        clock: clock.clone(),
        policy_info: ArcSwap::from_pointee(PolicyInfo {
            source: source.clone(),
            loaded_at: clock.now(),
            limits,
        }),
        metrics: recorder.clone(),
        authorize: settings.authorize.clone(),
        failover,
        catalog,
        decision_log,
        top: top.clone(),
        top_board: top_board.clone(),
        tracing: traces,
        principals: Default::default(),
        regions,
        live: crate::telemetry::live::Live::new(store_kind(&store_config)),
    });
    app.principals
        .prepare(&app.engine.policy(), app.clock.now())
        .await;
    let sync_task = match &settings.catalog {
        Some(catalog) => {
            sync::boot(&app.catalog, &app.engine, &app.clock, &catalog.sync)
                .await
                .map_err(SettingsError)?;
            let follow = sync::SyncSettings {
                migrate: migration_pending,
                ..catalog.sync.clone()
            };
            sync::spawn(app.clone(), follow, shutdown.clone())
        }
        None => None,
    };

    let reloader = Reloader::new(app.clone(), settings.policy.clone(), text, replaced);
    let reload_task =
        reload::spawn(reloader, shutdown.clone()).context("cannot listen for SIGHUP")?;
    let sweep_task = sweeper::spawn(store, recorder, shutdown.clone());
    let exchange_stop = Arc::new(tokio::sync::Notify::new());
    let exchange_task = app.regions.as_ref().map(|regions| {
        let app = app.clone();
        let stop = exchange_stop.clone();
        regions.spawn_exchange(move || app.engine.policy(), shutdown.clone(), stop)
    });
    let catalog_task = crate::telemetry::live::follow_catalog(app.clone(), shutdown.clone());
    let publish_task =
        top_board.map(|board| top_redis::spawn(board, top, clock.shared(), shutdown.clone()));

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(policy = %source, limits, "listening on {addr}");
    let limits = settings.connections;
    let grpc = grpc::start(&settings.grpc, limits, app.clone(), shutdown.clone()).await?;

    let admin_on_main = match &settings.admin {
        Some(admin) if admin.listen.is_none() => Some(admin.token.clone()),
        _ => None,
    };
    let admin_task = match &settings.admin {
        Some(crate::catalog::settings::AdminSettings {
            token,
            listen: Some(listen),
        }) => Some(
            admin::serve(
                *listen,
                app.clone(),
                token.clone(),
                settings.connections,
                shutdown.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    // The dashboard goes where the admin API is: its own listener, else this one.
    let ui_on_main = !matches!(&settings.admin, Some(a) if a.listen.is_some());
    let readers = crate::ui::Readers::new(
        settings.admin.as_ref().map(|a| a.token.clone()),
        settings.ui_open,
        &app.authorize.forwarding,
    );
    let ui = ui_on_main.then(|| crate::ui::router(app.clone(), readers.clone()));
    let mut router = app::router(app.clone(), admin_on_main, &readers);
    if let Some(ui) = ui {
        router = router.merge(ui);
    }
    let mut http = serving::start(
        "HTTP",
        settings.http_threads,
        listener,
        limits,
        shutdown.clone(),
        move |incoming: serving::Incoming| async move {
            // This thread's own store lane, if the store makes them (see `crate::serving`).
            app.store.attach_thread();
            // Each connection's service knows its peer, for handlers that key by client IP,
            // and answers `/v1/check` without the router. Its answers are small, so HTTP/1
            // writes each in one buffer.
            serving::serve_http(incoming, serving::Writes::Flattened, |peer: SocketAddr| {
                Entry::new(router.clone(), &app, peer)
            })
            .await;
            Ok::<(), Infallible>(())
        },
    )?;

    // Both listeners drain at once, within one grace period from the signal. The servers end
    // only after the signal, unless every thread of one of them has stopped: then its port is
    // closed, and the process exits with an error rather than run on half deaf.
    let mut grpc = grpc;
    tokio::select! {
        () = shutdown.triggered() => {}
        () = http.finished() => anyhow::bail!("every HTTP serving thread has stopped"),
        () = grpc::stopped(&mut grpc) => anyhow::bail!("every gRPC serving thread has stopped"),
    }
    let drain_deadline = tokio::time::Instant::now() + settings.shutdown_grace;
    tokio::select! {
        () = http.finished() => tracing::info!("in-flight requests finished"),
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace_ms = settings.shutdown_grace.as_millis() as u64,
                "grace period over; exiting with requests still in flight");
            http.abandon();
        }
        () = shutdown.forced() => http.abandon(),
    }
    if let Some(grpc) = grpc {
        let left = drain_deadline.saturating_duration_since(tokio::time::Instant::now());
        grpc.finish(left, &shutdown).await;
    }
    reload_task.abort();
    sweep_task.abort();
    if let Some(task) = exchange_task {
        // The drain is over: a last publication of what this node admitted, within a budget.
        exchange_stop.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    catalog_task.abort();
    if let Some(mut admin) = admin_task {
        admin.abandon();
    }
    if let Some(task) = sync_task {
        // It writes a last snapshot on its way out.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(writer) = log_writer {
        writer.finish(Duration::from_secs(2)).await;
    }
    if let Some(task) = publish_task {
        task.abort();
    }
    if let Some(exporter) = trace_exporter {
        exporter.finish(Duration::from_secs(2)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The store's kind, as trace spans name it.
fn store_kind(config: &StoreConfig) -> &'static str {
    config.kind()
}

/// Opens the catalog database (migrating it when allowed), and says whether a migration asked
/// for is still to do. A database that is merely unreachable is not fatal: the node boots from
/// its snapshot, and the sync task migrates and catches up once it answers. A policy with its
/// own `tenants:` section is: it would be silently ignored.
async fn open_catalog(
    settings: &CatalogSettings,
    policy: &spillway_core::policy::Policy,
) -> anyhow::Result<(Arc<dyn spillway_catalog::CatalogDb>, bool)> {
    let shown = spillway_catalog::redacted(&settings.url);
    if policy.has_static_tenants() {
        anyhow::bail!(
            "the policy has a `tenants:` section, but --catalog {shown} names a catalog \
             database: import the tenants (`spillway catalog import --from-policy <file>`) and \
             remove the section"
        );
    }
    let db = spillway_catalog::open(&settings.url)
        .await
        .with_context(|| format!("cannot open the catalog {shown}"))?;
    if !settings.migrate {
        return Ok((db, false));
    }
    match db.migrate().await {
        Ok(done) => {
            if done.from != done.to {
                tracing::info!(from = done.from, to = done.to, "catalog schema migrated");
            }
            Ok((db, false))
        }
        Err(err) if err.is_unavailable() => {
            tracing::warn!(error = %err, "cannot migrate the catalog now: it is unreachable");
            Ok((db, true))
        }
        Err(err) => Err(err).context("cannot migrate the catalog"),
    }
}
