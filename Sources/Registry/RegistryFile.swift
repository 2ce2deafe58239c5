import _VTPMPosix

/// Creating and vetting the registry file before SQLite opens it.
///
/// SQLite creates a missing database file with mode 0644 (less the umask). So a missing file is made by
/// `_VTPMPosix` (through its fault-injectable calls): an `O_EXCL` temp file with mode 0600, fsync-ed and
/// hard-linked into place; `link(2)` fails if the name exists, so a concurrent creator is never overwritten.
/// SQLite gives its journal the database file's mode.
///
/// A registry in a set-group-ID directory is shared with that directory's group (the separated CA signer's,
/// which reads the EKs a rekey recorded): it is created with mode 0660, and group write is accepted on a
/// file of the directory's group. SQLite's write-ahead log and shared-memory files, which every reader must
/// be able to create and lock, then get the same mode and group.
enum RegistryFile {
    /// Makes sure `path` names a usable registry file, creating an empty one (0600) if it is missing.
    /// - Returns: Whether this call created the file.
    static func prepare(path: String) throws -> Bool {
        // The common case, an existing file, is one fstatat.
        let (directory, name) = splitPath(path)
        let sharedGroup = try self.sharedGroup(directory: directory)
        if let status = try self.status(path) {
            try self.vet(path: path, status: status, sharedGroup: sharedGroup)
            return false
        }
        do {
            try makeDirectories(directory, mode: 0o700)
            let handle = try DirectoryHandle.open(directory)
            defer { handle.close() }
            // An O_EXCL temp file with the mode, fsync-ed, hard-linked into place (never replacing), in the
            // directory itself: in a set-group-ID directory it has the directory's group from the start.
            if try handle.createFileExclusively(name, contents: [], mode: sharedGroup == nil ? 0o600 : 0o660) {
                return true
            }
        } catch {
            throw RegistryError(.io, "cannot create the registry \(path): \(error)")
        }
        // Another process created it first: use theirs, after the same checks.
        guard let status = try self.status(path) else {
            throw RegistryError(.io, "the registry \(path) vanished while it was created")
        }
        try self.vet(path: path, status: status, sharedGroup: sharedGroup)
        return false
    }

    /// The status of `path` itself (a symlink is not followed), or nil if nothing is there.
    private static func status(_ path: String) throws -> FileStatus? {
        let (directory, name) = splitPath(path)
        do {
            let handle = try DirectoryHandle.open(directory)
            defer { handle.close() }
            return try handle.status(name)
        } catch {
            if error.isNotFound { return nil }
            throw RegistryError(.io, "cannot examine the registry \(path): \(error)")
        }
    }

    /// The group a set-group-ID `directory` shares its registry with, or nil.
    private static func sharedGroup(directory: String) throws -> UInt32? {
        guard let status = try self.status(directory), status.kind == .directory, status.mode & 0o2000 != 0 else {
            return nil
        }
        return status.group
    }

    /// Refuses a symlink, a non-regular file, and a file that others may write, or group unless the file
    /// is shared with `sharedGroup` (its group is that group).
    private static func vet(path: String, status: FileStatus, sharedGroup: UInt32?) throws {
        if status.kind == .symlink {
            throw RegistryError(.hostileFile, "the registry \(path) is a symbolic link; refusing to follow it")
        }
        guard status.kind == .regular else {
            throw RegistryError(.hostileFile, "the registry \(path) is not a regular file")
        }
        let groupMayWrite = sharedGroup != nil && status.group == sharedGroup
        if status.mode & 0o002 != 0 || (status.mode & 0o020 != 0 && !groupMayWrite) {
            throw RegistryError(
                .hostileFile,
                "the registry \(path) is writable by group or others (mode \(String(status.mode & 0o7777, radix: 8)))"
            )
        }
    }
}
