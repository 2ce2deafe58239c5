import Foundation

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
    static let currentVersion: Int64 = 4

    /// The SQL dialects the schema is written for.
    enum Dialect: Sendable {
        case sqlite, postgresql
    }

    /// Migration steps: `steps(dialect)[n]` takes the schema from version n to n + 1.
    static func steps(_ dialect: Dialect) -> [String] {
        switch dialect {
        case .sqlite: return [version1, version2, version3, version4]
        // The only difference: PostgreSQL's auto-assigned id column is spelled differently.
        case .postgresql:
            return [
                version1.replacingOccurrences(
                    of: "id INTEGER PRIMARY KEY,",
                    with: "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                ), version2, version3, version4,
            ]
        }
    }

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

    /// Version 3: the hosts of a cluster (``HostRecord``): the public half of each host's claim-signing key,
    /// registered by the host itself, revoked by an operator. PostgreSQL: the same statement.
    static let version3 = """
        CREATE TABLE host (
            host_id TEXT NOT NULL PRIMARY KEY,
            name TEXT NOT NULL,
            public_key TEXT NOT NULL,
            registered_at BIGINT NOT NULL,
            revoked_at BIGINT,
            revoked_reason TEXT
        );
        """

    /// Version 4: the endorsement keys a rekey derived (``EndorsementKeyRecord``), recorded before their
    /// certificates are asked for, so that a separated CA signer certifies only what the registry records.
    /// PostgreSQL: the same statement.
    static let version4 = """
        CREATE TABLE endorsement_key (
            vm_id TEXT NOT NULL,
            generation BIGINT NOT NULL,
            algorithm TEXT NOT NULL,
            public_key_digest TEXT NOT NULL,
            parent_vm_id TEXT,
            parent_generation BIGINT,
            recorded_at BIGINT NOT NULL,
            PRIMARY KEY (vm_id, generation, algorithm)
        );
        """

    /// The version table. PostgreSQL: the same statement.
    static let versionTable = "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"

    /// Whether the database is at ``currentVersion`` (a read; false also for a new or damaged database,
    /// which ``migrate(_:dialect:)`` then handles or reports).
    static func isCurrent(_ s: any SQLSession) -> Bool {
        // A missing table is an error, i.e. false.
        guard let rows = try? s.fetchAll("SELECT version FROM schema_version", []), rows.count == 1 else {
            return false
        }
        return (try? rows[0].int64("version")) == currentVersion
    }

    /// Brings the schema to ``currentVersion`` in the caller's transaction.
    ///
    /// - Throws: ``RegistryError/Code/unsupportedSchemaVersion`` when the database is newer than this
    ///   build, ``RegistryError/Code/corrupt`` when `schema_version` does not hold exactly one row,
    ///   or the database's error.
    static func migrate(_ s: any SQLSession, dialect: Dialect) throws {
        try s.execute(versionTable, [])
        let rows = try s.fetchAll("SELECT version FROM schema_version", [])
        var version: Int64
        switch rows.count {
        case 0:
            version = 0
            try s.execute("INSERT INTO schema_version (version) VALUES (0)", [])
        case 1:
            version = try rows[0].int64("version")
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
        let steps = self.steps(dialect)
        while version < currentVersion {
            // PostgreSQL's extended protocol takes one statement at a time.
            for statement in Self.statements(steps[Int(version)]) { try s.execute(statement, []) }
            let next = version + 1
            let changed = try s.execute(
                "UPDATE schema_version SET version = ? WHERE version = ?",
                [.integer(next), .integer(version)]
            )
            guard changed == 1 else {
                throw RegistryError(.conflict, "schema_version changed during the migration to \(next)")
            }
            version = next
        }
    }

    /// The statements of a migration step: split at semicolons, comments dropped.
    static func statements(_ step: String) -> [String] {
        let lines = step.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("--") }
        return lines.joined(separator: "\n").split(separator: ";")
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            .filter { !$0.isEmpty }
    }
}
