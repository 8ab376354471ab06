-- Spillway catalog, schema 1 (SQLite). Applied by `CatalogDb::migrate` and recorded in
-- spillway_schema_migrations; never edit a released migration, add the next one.

-- One row: the catalog's version, bumped by every write inside its transaction (see
-- src/sqlite.rs for why versions are allocated this way).
CREATE TABLE spillway_catalog_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO spillway_catalog_meta (id, version) VALUES (1, 0);

-- Every entry, live or deleted (a tombstone keeps its key and gets a new version so pollers
-- see the deletion). kind/scope/id: see src/row.rs.
CREATE TABLE spillway_catalog_entries (
    kind TEXT NOT NULL CHECK (kind IN ('tenant', 'user', 'api_key')),
    scope TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, scope, id),
    CHECK ((deleted = 0) = (body IS NOT NULL))
) WITHOUT ROWID;

-- The change feed: WHERE version > ? ORDER BY version.
CREATE UNIQUE INDEX spillway_catalog_entries_version ON spillway_catalog_entries (version);
