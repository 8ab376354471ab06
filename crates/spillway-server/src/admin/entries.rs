//! The admin API's handlers: one entry read, written, patched or deleted, lists, and the
//! node's catalog version.

use crate::http::problem::Problem;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use spillway_catalog::tenant::{still_holds, TenantDeletion};
use spillway_catalog::Error as DbError;
use spillway_core::catalog::{
    ApiKeyRecord, Entry, EntryKey, FieldIssue, Kind, OverrideRecord, TenantRecord, UserRecord,
};
use std::sync::Arc;
use std::time::Duration;

/// How long a write waits for this node to apply it before answering anyway.
const APPLY_WAIT: Duration = Duration::from_secs(2);
/// Entries per list page unless `limit` says otherwise, and the most it may say.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Header carrying the catalog version a write produced.
const VERSION_HEADER: &str = "spillway-catalog-version";

type Answer = Result<Response, Problem>;

/// `GET /v1/admin/version`: what this node has applied, and how current it is.
pub async fn version(State(app): State<Arc<AppState>>) -> Response {
    let status = app.catalog.status();
    let age = status
        .contact_at
        .map(|at| app.clock.now().saturating_sub(at) as f64 / 1e6);
    let database = match app.catalog.db() {
        Some(db) => match tokio::time::timeout(Duration::from_secs(1), db.version()).await {
            Ok(Ok(v)) => json!(v),
            _ => Value::Null,
        },
        None => Value::Null,
    };
    let mut body = serde_json::to_value(&status).unwrap_or_default();
    if let Value::Object(map) = &mut body {
        map.insert("age_seconds".into(), json!(age));
        map.insert("database_version".into(), database);
    }
    Json(body).into_response()
}

pub async fn get_tenant(State(app): State<Arc<AppState>>, Path(tenant): Path<String>) -> Answer {
    read(&app, EntryKey::Tenant { tenant }).await
}

pub async fn put_tenant(
    State(app): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let record: TenantRecord = parse(&body)?;
    put(
        &app,
        EntryKey::Tenant { tenant },
        Entry::Tenant(record),
        &headers,
    )
    .await
}

pub async fn patch_tenant(
    State(app): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    patch(&app, EntryKey::Tenant { tenant }, &headers, &body).await
}

/// The query of a tenant's DELETE: `?cascade=true` deletes its users and API keys with it.
#[derive(Deserialize)]
pub struct Cascade {
    cascade: Option<String>,
}

/// `DELETE /v1/admin/tenants/{tenant}`: refused (409) while the tenant has users or API keys,
/// unless `?cascade=true` (see `spillway_catalog::tenant`).
pub async fn delete_tenant(
    State(app): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    Query(q): Query<Cascade>,
    headers: HeaderMap,
) -> Answer {
    let cascade = match q.cascade.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            let detail = format!("`cascade` must be `true` or `false`, not `{other}`");
            return Err(Problem::invalid(detail, Some("cascade".into())));
        }
    };
    let db = writable(&app)?;
    let condition = condition(&headers)?;
    let deletion = spillway_catalog::tenant::delete_tenant(&**db, &tenant, condition, cascade)
        .await
        .map_err(db_problem)?;
    match deletion {
        TenantDeletion::Deleted {
            version,
            users,
            api_keys,
        } => {
            let applied = applied(&app, version).await;
            let body = json!({ "deleted": true, "version": version, "applied": applied,
                               "users": users, "api_keys": api_keys });
            Ok(written(body, version))
        }
        TenantDeletion::NotFound => Err(not_found(&EntryKey::Tenant { tenant })),
        TenantDeletion::Holds { users, api_keys } => Err(Problem::new(
            StatusCode::CONFLICT,
            crate::http::problem::TENANT_HOLDS,
            "Tenant still has users or API keys",
            still_holds(&tenant, users, api_keys, "add `?cascade=true`"),
        )),
    }
}

pub async fn get_user(
    State(app): State<Arc<AppState>>,
    Path((tenant, user)): Path<(String, String)>,
) -> Answer {
    read(&app, EntryKey::User { tenant, user }).await
}

pub async fn put_user(
    State(app): State<Arc<AppState>>,
    Path((tenant, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let record: UserRecord = parse(&body)?;
    put(
        &app,
        EntryKey::User { tenant, user },
        Entry::User(record),
        &headers,
    )
    .await
}

pub async fn patch_user(
    State(app): State<Arc<AppState>>,
    Path((tenant, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    patch(&app, EntryKey::User { tenant, user }, &headers, &body).await
}

pub async fn delete_user(
    State(app): State<Arc<AppState>>,
    Path((tenant, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    delete(&app, EntryKey::User { tenant, user }, &headers).await
}

pub async fn get_key(State(app): State<Arc<AppState>>, Path(digest): Path<String>) -> Answer {
    read(&app, EntryKey::ApiKey { digest }).await
}

pub async fn put_key(
    State(app): State<Arc<AppState>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let record: ApiKeyRecord = parse(&body)?;
    put(
        &app,
        EntryKey::ApiKey { digest },
        Entry::ApiKey(record),
        &headers,
    )
    .await
}

pub async fn patch_key(
    State(app): State<Arc<AppState>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    patch(&app, EntryKey::ApiKey { digest }, &headers, &body).await
}

pub async fn delete_key(
    State(app): State<Arc<AppState>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Answer {
    delete(&app, EntryKey::ApiKey { digest }, &headers).await
}

/// The body of `POST /v1/admin/api-keys`: the key in clear (hashed here, never stored or
/// logged) and what it stands for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    key: String,
    tenant: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    tier: Option<String>,
}

/// `POST /v1/admin/api-keys`: adds a key; 409 if it exists already.
pub async fn add_key(State(app): State<Arc<AppState>>, body: Bytes) -> Answer {
    let new: NewKey = parse(&body)?;
    if let Some(detail) = super::key_refusal(&new.key) {
        return Err(Problem::invalid(detail, Some("key".into())));
    }
    let digest = digest_of(&new.key);
    let record = ApiKeyRecord {
        tenant: new.tenant,
        user: new.user,
        tier: new.tier,
    };
    let key = EntryKey::ApiKey { digest };
    // The client sent no condition, so a key that exists already is a clash with the state of
    // the resource (409), not a failed precondition (412).
    let response = match write(&app, key, Entry::ApiKey(record), Some(0)).await {
        Err(p) if p.status() == StatusCode::PRECONDITION_FAILED => {
            return Err(Problem::http(
                StatusCode::CONFLICT,
                "an API key with this digest exists already",
            ))
        }
        other => other?,
    };
    Ok((StatusCode::CREATED, response).into_response())
}

/// The lowercase hex SHA-256 of an API key: how the catalog stores it.
pub fn digest_of(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
pub struct Paging {
    after: Option<String>,
    limit: Option<String>,
}

pub async fn list_tenants(State(app): State<Arc<AppState>>, Query(q): Query<Paging>) -> Answer {
    let after = q.after.clone().map(|tenant| EntryKey::Tenant { tenant });
    list(&app, Kind::Tenant, None, after, &q).await
}

pub async fn list_users(
    State(app): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    Query(q): Query<Paging>,
) -> Answer {
    let after = q.after.clone().map(|user| EntryKey::User {
        tenant: tenant.clone(),
        user,
    });
    list(&app, Kind::User, Some(&tenant), after, &q).await
}

pub async fn list_keys(State(app): State<Arc<AppState>>, Query(q): Query<Paging>) -> Answer {
    let after = q.after.clone().map(|digest| EntryKey::ApiKey { digest });
    list(&app, Kind::ApiKey, None, after, &q).await
}

async fn list(
    app: &AppState,
    kind: Kind,
    tenant: Option<&str>,
    after: Option<EntryKey>,
    paging: &Paging,
) -> Answer {
    let limit = match paging.limit.as_deref().map(str::parse::<usize>) {
        None => PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            let detail = format!("`limit` must be a whole number from 1 to {MAX_PAGE}");
            return Err(Problem::invalid(detail, Some("limit".into())));
        }
    };
    let rows: Vec<(EntryKey, Entry, u64)> = match app.catalog.db() {
        Some(db) => db
            .list(kind, tenant, after.as_ref(), limit)
            .await
            .map_err(db_problem)?,
        None => {
            // The policy's own catalog: small, sorted here.
            let (_, catalog) = app.catalog.current();
            let mut rows: Vec<_> = catalog
                .entries()
                .filter(|(k, _)| k.kind() == kind)
                .filter(|(k, _)| match (k, tenant) {
                    (EntryKey::User { tenant: t, .. }, Some(want)) => t == want,
                    _ => true,
                })
                .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
                .map(|(k, e)| (k, e, 0))
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            rows.truncate(limit);
            rows
        }
    };
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|(k, _, _)| id_of(k).to_owned()))
        .flatten();
    let items: Vec<Value> = rows.iter().map(|(k, e, v)| document(k, e, *v)).collect();
    Ok(Json(json!({ "items": items, "next": next })).into_response())
}

/// The last part of a key: the cursor of a list that ended there.
pub(crate) fn id_of(key: &EntryKey) -> &str {
    match key {
        EntryKey::Tenant { tenant } => tenant,
        EntryKey::User { user, .. } => user,
        EntryKey::ApiKey { digest } => digest,
    }
}

async fn read(app: &AppState, key: EntryKey) -> Answer {
    let found = match app.catalog.db() {
        Some(db) => db.get(&key).await.map_err(db_problem)?,
        None => app.catalog.current().1.get(&key).map(|e| (e, 0)),
    };
    match found {
        Some((entry, version)) => Ok(with_etag(document(&key, &entry, version), version)),
        None => Err(not_found(&key)),
    }
}

async fn put(app: &AppState, key: EntryKey, entry: Entry, headers: &HeaderMap) -> Answer {
    let condition = condition(headers)?;
    write(app, key, entry, condition).await
}

/// Checks `entry` against this node's policy, writes it, and waits until this node has
/// applied it.
async fn write(app: &AppState, key: EntryKey, entry: Entry, condition: Option<u64>) -> Answer {
    let db = writable(app)?;
    let (policy, catalog) = app.catalog.current();
    if let Err(issues) = catalog.check(&policy, &key, &entry) {
        return Err(refused(issues));
    }
    let version = db
        .put(key.clone(), entry.clone(), condition)
        .await
        .map_err(db_problem)?;
    let applied = applied(app, version).await;
    let mut body = document(&key, &entry, version);
    body["applied"] = json!(applied);
    Ok(written(body, version))
}

/// A JSON merge patch (RFC 7396) of the entry, which need not exist yet. Retried a few times
/// if another writer changes the entry between the read and the write.
async fn patch(app: &AppState, key: EntryKey, headers: &HeaderMap, body: &Bytes) -> Answer {
    let db = writable(app)?;
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| Problem::invalid(format!("the body is not JSON: {e}"), None))?;
    if !patch.is_object() {
        return Err(Problem::invalid(
            "a merge patch must be a JSON object",
            None,
        ));
    }
    if let Some(issue) = unknown_removal(key.kind(), &patch) {
        return Err(Problem::invalid(issue.message, Some(issue.field)));
    }
    let condition = condition(headers)?;
    for _ in 0..3 {
        let current = db.get(&key).await.map_err(db_problem)?;
        let (mut doc, version) = match &current {
            Some((entry, version)) => (record_value(entry), *version),
            None => (json!({}), 0),
        };
        if condition.is_some_and(|want| want != version) {
            return Err(conflict(Some(version).filter(|v| *v > 0)));
        }
        merge(&mut doc, &patch);
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        let entry = match key.kind() {
            Kind::Tenant => Entry::Tenant(parse(&bytes)?),
            Kind::User => Entry::User(parse(&bytes)?),
            Kind::ApiKey => Entry::ApiKey(parse(&bytes)?),
        };
        match write(app, key.clone(), entry, Some(version)).await {
            Err(problem) if problem.status() == StatusCode::PRECONDITION_FAILED => continue,
            other => return other,
        }
    }
    Err(Problem::http(
        StatusCode::CONFLICT,
        "the entry kept changing under the patch; try again",
    ))
}

async fn delete(app: &AppState, key: EntryKey, headers: &HeaderMap) -> Answer {
    let db = writable(app)?;
    let condition = condition(headers)?;
    match db.delete(&key, condition).await.map_err(db_problem)? {
        Some(version) => {
            let applied = applied(app, version).await;
            Ok(written(
                json!({ "deleted": true, "version": version, "applied": applied }),
                version,
            ))
        }
        None => Err(not_found(&key)),
    }
}

/// The first member `patch` sets to `null` that an entry of `kind` does not have (at the top,
/// or in one of its overrides), as a refusal: merged onto what this build reads it would
/// remove nothing, and the answer would say it had. (A newer build's field is kept by this
/// build's writes.)
pub(crate) fn unknown_removal(kind: Kind, patch: &Value) -> Option<FieldIssue> {
    let field = unknown_null(kind, patch)?;
    let message = format!(
        "`{field}` is not a field this build knows, so a null cannot remove it; fields a newer \
         build wrote are kept by this build's writes (delete the entry to drop them)"
    );
    Some(FieldIssue { field, message })
}

fn unknown_null(kind: Kind, patch: &Value) -> Option<String> {
    let own = kind.fields();
    let nulls = |map: &Map<String, Value>, own: &[&str]| {
        map.iter()
            .find(|(name, value)| value.is_null() && !own.contains(&name.as_str()))
            .map(|(name, _)| name.clone())
    };
    let map = patch.as_object()?;
    if let Some(name) = nulls(map, own) {
        return Some(name);
    }
    let overrides = map.get("overrides").and_then(Value::as_object)?;
    overrides.iter().find_map(|(limit, one)| {
        let name = nulls(one.as_object()?, OverrideRecord::FIELDS)?;
        Some(format!("overrides.{limit}.{name}"))
    })
}

/// RFC 7396: objects merge member by member, `null` removes, anything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (name, value) in patch {
            if value.is_null() {
                map.remove(name);
            } else {
                merge(map.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn writable(app: &AppState) -> Result<&Arc<dyn spillway_catalog::CatalogDb>, Problem> {
    app.catalog.db().ok_or_else(|| {
        Problem::http(
            StatusCode::CONFLICT,
            "this node's catalog is the policy file's `tenants:` section; start it with \
             --catalog <database URL> to change tenants at runtime",
        )
    })
}

/// Nudges the sync task and waits until this node has applied `version`.
async fn applied(app: &AppState, version: u64) -> bool {
    app.catalog.nudge();
    let mut applied = app.catalog.applied();
    tokio::time::timeout(APPLY_WAIT, applied.wait_for(|v| *v >= version))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// `If-None-Match: *` → must not exist; `If-Match: "<version>"` → must be at that version.
fn condition(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        return match value.to_str() {
            Ok("*") => Ok(Some(0)),
            _ => Err(Problem::invalid(
                "If-None-Match takes only `*` here (create, never replace)",
                Some("If-None-Match".into()),
            )),
        };
    }
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    match text.parse::<u64>() {
        Ok(version) if version > 0 => Ok(Some(version)),
        _ => Err(Problem::invalid(
            "If-Match takes the entry's ETag, a version such as \"12\"",
            Some("If-Match".into()),
        )),
    }
}

/// The body as one JSON value of `T`; anything after it (a second object, junk) is refused,
/// not ignored: a body cut or joined on its way is not half applied.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        Problem::invalid(
            format!("the body is not a valid entry: {}", e.inner()),
            field,
        )
    })?;
    reader
        .end()
        .map_err(|e| Problem::invalid(format!("the body has text after its entry: {e}"), None))?;
    Ok(value)
}

/// The entry as JSON: its key's fields, its record's fields and its version.
pub(crate) fn document(key: &EntryKey, entry: &Entry, version: u64) -> Value {
    let mut doc = record_value(entry);
    if let Value::Object(map) = &mut doc {
        match key {
            EntryKey::Tenant { tenant } => {
                map.insert("tenant".into(), json!(tenant));
            }
            EntryKey::User { tenant, user } => {
                map.insert("tenant".into(), json!(tenant));
                map.insert("user".into(), json!(user));
            }
            EntryKey::ApiKey { digest } => {
                map.insert("digest".into(), json!(digest));
            }
        }
        map.insert("version".into(), json!(version));
    }
    doc
}

/// The record alone, as JSON (what a merge patch applies to).
pub(crate) fn record_value(entry: &Entry) -> Value {
    let value = match entry {
        Entry::Tenant(r) => serde_json::to_value(r),
        Entry::User(r) => serde_json::to_value(r),
        Entry::ApiKey(r) => serde_json::to_value(r),
    };
    value.unwrap_or_default()
}

fn with_etag(body: Value, version: u64) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

fn written(body: Value, version: u64) -> Response {
    let mut response = with_etag(body, version);
    response
        .headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from(version));
    response
}

fn not_found(key: &EntryKey) -> Problem {
    Problem::http(StatusCode::NOT_FOUND, format!("no {key} in the catalog"))
}

fn conflict(current: Option<u64>) -> Problem {
    let detail = match current {
        Some(v) => format!("the entry is at version {v}; read it again and retry"),
        None => "the entry does not exist (or was deleted); read it again and retry".into(),
    };
    Problem::http(StatusCode::PRECONDITION_FAILED, detail)
}

fn refused(issues: Vec<spillway_core::catalog::FieldIssue>) -> Problem {
    let detail = issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let field = issues.first().map(|i| i.field.clone());
    let errors = issues
        .into_iter()
        .map(|i| json!({ "field": i.field, "message": i.message }))
        .collect();
    Problem::invalid(detail, field).with_errors(errors)
}

fn db_problem(err: DbError) -> Problem {
    match err {
        DbError::Unavailable(_) => Problem::http(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
            .with_retry_after(Duration::from_secs(1)),
        DbError::Conflict { current } => conflict(current),
        DbError::Invalid(message) => Problem::invalid(message, None),
        other => {
            tracing::error!(error = %other, "catalog database error");
            Problem::http(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
        }
    }
}
