internal import GRDB

/// The registry's schema, written in SQL that SQLite and PostgreSQL both accept wherever possible.
///
/// Conventions, chosen so that the same records can live in PostgreSQL for a cluster:
/// - Types are `TEXT`, `BIGINT` and `BOOLEAN`. SQLite gives `BIGINT` INTEGER affinity (64-bit signed) and
///   `BOOLEAN` NUMERIC affinity; it stores `TRUE`/`FALSE` as 1/0. The statements use the `TRUE`/`FALSE`
///   keywords (SQLite 3.23 and later), never 1/0, so they read the same on PostgreSQL.
/// - Timestamps are `BIGINT` microseconds since the Unix epoch (UTC), not `TIMESTAMPTZ`, so both stores
///   hold the same integers and no time zone conversion happens on the way.
/// - Unsigned numbers (generation, checkpoint) are stored as signed 64-bit values; the registry refuses
///   values above `Int64.max`.
/// - Every write that a cluster could race on is a conditional `UPDATE ... WHERE <expected value>` whose
///   row count says whether it matched (compare-and-set), or an `INSERT` that a primary key guards.
/// - Null-safe comparison is `IS NOT DISTINCT FROM` (SQLite 3.39 and later, PostgreSQL).
///
/// The schema is versioned in `schema_version` (one row). ``Schema/migrate(_:)`` applies the missing
/// steps in one transaction and refuses a database written by a newer build.
enum Schema {
    /// The version this build writes.
    static let currentVersion: Int64 = 2

    /// Migration steps: `steps[n]` takes the schema from version n to n + 1.
    static let steps: [String] = [version1, version2]

    /// Version 1: identities, generations, checkpoints, lineage events.
    static let version1 = """
        -- One row per VM identity. current_generation is the compare-and-set target of beginGeneration;
        -- NULL until the identity's first generation.
        CREATE TABLE identity (
            vm_id TEXT NOT NULL PRIMARY KEY,
            created_at BIGINT NOT NULL,
            current_generation BIGINT
        );

        -- One row per (vmID, generation). latest_checkpoint is the compare-and-set target of
        -- recordCheckpoint: 0 before the generation's first checkpoint.
        CREATE TABLE generation (
            vm_id TEXT NOT NULL REFERENCES identity (vm_id),
            generation BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            reason TEXT NOT NULL,
            parent_vm_id TEXT,
            parent_generation BIGINT,
            parent_checkpoint BIGINT,
            latest_checkpoint BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (vm_id, generation)
        );
        CREATE INDEX generation_parent ON generation (parent_vm_id, parent_generation);

        -- One row per checkpoint (a state handed out by GET_STATEBLOB).
        -- ran_after: SQLite stores 0/1 (NUMERIC affinity); PostgreSQL: BOOLEAN NOT NULL DEFAULT FALSE, as written.
        CREATE TABLE checkpoint (
            vm_id TEXT NOT NULL,
            generation BIGINT NOT NULL,
            checkpoint BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            ran_after BOOLEAN NOT NULL DEFAULT FALSE,
            PRIMARY KEY (vm_id, generation, checkpoint),
            FOREIGN KEY (vm_id, generation) REFERENCES generation (vm_id, generation)
        );

        -- Append-only history.
        -- id: in SQLite only a column declared exactly INTEGER PRIMARY KEY is the auto-assigned rowid
        -- (64-bit, increasing); PostgreSQL: id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY.
        -- Inserts never name the column, so the same INSERT works on both.
        CREATE TABLE lineage_event (
            id INTEGER PRIMARY KEY,
            vm_id TEXT NOT NULL REFERENCES identity (vm_id),
            generation BIGINT NOT NULL,
            kind TEXT NOT NULL,
            source_vm_id TEXT,
            source_generation BIGINT,
            source_checkpoint BIGINT,
            at BIGINT NOT NULL,
            duration_micros BIGINT,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX lineage_event_vm ON lineage_event (vm_id, id);
        CREATE INDEX lineage_event_source ON lineage_event (source_vm_id);
        """

    /// Version 2: the newest permanent-state write seen committed per generation (restored backups are
    /// rollbacks). PostgreSQL: the same statement.
    static let version2 = """
        ALTER TABLE generation ADD COLUMN state_write BIGINT;
        """

    /// The version table. PostgreSQL: the same statement.
    static let versionTable = "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"

    /// Whether the database is at ``currentVersion`` (a read; false also for a new or damaged database,
    /// which ``migrate(_:)`` then handles or reports).
    static func isCurrent(_ db: Database) -> Bool {
        // A plain SELECT (GRDB's tableExists loads the whole schema): a missing table is an error, i.e. false.
        guard let rows = try? Row.fetchAll(db, sql: "SELECT version FROM schema_version"), rows.count == 1 else {
            return false
        }
        return (try? rows[0].decode(Int64.self, forColumn: "version")) == currentVersion
    }

    /// Brings the schema to ``currentVersion`` in one transaction.
    ///
    /// - Throws: ``RegistryError/Code/unsupportedSchemaVersion`` when the database is newer than this
    ///   build, ``RegistryError/Code/corrupt`` when `schema_version` does not hold exactly one row,
    ///   or the SQLite error.
    static func migrate(_ db: Database) throws {
        try db.execute(sql: versionTable)
        let rows = try Row.fetchAll(db, sql: "SELECT version FROM schema_version")
        var version: Int64
        switch rows.count {
        case 0:
            version = 0
            try db.execute(sql: "INSERT INTO schema_version (version) VALUES (0)")
        case 1:
            version = try rows[0].decode(Int64.self, forColumn: "version")
        default:
            throw RegistryError(.corrupt, "schema_version holds \(rows.count) rows, expected one")
        }
        guard version >= 0 else { throw RegistryError(.corrupt, "schema_version is \(version)") }
        guard version <= currentVersion else {
            throw RegistryError(
                .unsupportedSchemaVersion,
                "registry schema version \(version) is newer than this build's (\(currentVersion))"
            )
        }
        while version < currentVersion {
            try db.execute(sql: steps[Int(version)])
            let next = version + 1
            try db.execute(
                sql: "UPDATE schema_version SET version = ? WHERE version = ?",
                arguments: [next, version]
            )
            guard db.changesCount == 1 else {
                throw RegistryError(.conflict, "schema_version changed during the migration to \(next)")
            }
            version = next
        }
    }
}
