#if canImport(Glibc)
import Glibc
#endif

/// A state file (or block device) held open read-write and exclusively locked for as long as
/// this object lives: the storage of `--tpmstate backend-uri=file://PATH`.
///
/// - The lock is an open-file-description lock (`F_OFD_SETLK`, write lock over the whole file)
///   on the file itself, so it conflicts with swtpm's classic `fcntl` lock on the same file and
///   with another vtpmd; there is no separate lock file.
/// - The one descriptor is used for every read and write; it is closed only by ``close()`` or
///   when the object is released, which also drops the lock.
/// - Writes go to the same inode in place (no temp file + rename: that would leave the lock on
///   the old inode and cannot work for a block device).
package final class LockedFile {
    /// What the path turned out to be. Anything else is refused.
    package enum Kind: Sendable, Hashable {
        case regular, blockDevice
    }

    package let path: String
    package let kind: Kind
    /// Whether the open created the file (it did not exist before).
    package let created: Bool
    private var fd: Int32

    private init(fd: Int32, path: String, kind: Kind, created: Bool) {
        self.fd = fd
        self.path = path
        self.kind = kind
        self.created = created
    }

    deinit { self.close() }

    /// Opens `path` read-write, creating it (exclusively, with exactly `mode`, whatever the umask)
    /// if it does not exist, never through a symbolic link, and takes an exclusive non-blocking
    /// OFD write lock on it.
    ///
    /// The path must name a regular file or a block device: a symlink throws
    /// `HostileFileError(.symlink)`, anything else `HostileFileError(.notRegular)`. With
    /// `strictMode`, a regular file must also be owned by the effective user and not be writable
    /// by group or others (block devices are left to the system's device permissions). The
    /// file's mode is never changed unless this call created it.
    ///
    /// Throws `PosixError` with `isWouldBlock` when another process holds a lock on the file.
    /// Wraps `open(O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC)`, `fstat`, `fchmod` and
    /// `fcntl(F_OFD_SETLK)`.
    package static func openAndLock(_ path: String, mode: UInt32, strictMode: Bool) throws -> LockedFile {
        // O_NONBLOCK keeps a FIFO or an odd device from blocking the open; it is refused below.
        let flags = O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK
        var fd: Int32 = -1
        var created = false
        for _ in 0..<8 {
            do {
                fd = try retryingEINTR("open", path) { Sys.open(path, flags) }
                break
            } catch {
                if error.errno == ELOOP { throw HostileFileError(name: path, reason: .symlink) }
                if error.errno == EISDIR { throw HostileFileError(name: path, reason: .notRegular) }
                guard error.errno == ENOENT else { throw error }
            }
            do {
                fd = try retryingEINTR("open", path) { Sys.open(path, flags | O_CREAT | O_EXCL, mode) }
                created = true
                break
            } catch {
                if error.errno == ELOOP { throw HostileFileError(name: path, reason: .symlink) }
                // Someone created it between the two opens: open the existing file.
                guard error.errno == EEXIST else { throw error }
            }
        }
        guard fd >= 0 else { throw PosixError(errno: EEXIST, function: "open", object: path) }
        var keep = false
        defer { if !keep { _ = Glibc.close(fd) } }

        var st = stat()
        guard unsafe fstat(fd, &st) == 0 else {
            throw PosixError(errno: currentErrno(), function: "fstat", object: path)
        }
        let kind: Kind
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFBLK: kind = .blockDevice
        default: throw HostileFileError(name: path, reason: .notRegular)
        }
        if kind == .regular && strictMode {
            guard st.st_uid == geteuid() else { throw HostileFileError(name: path, reason: .wrongOwner) }
            guard st.st_mode & 0o022 == 0 else {
                throw HostileFileError(name: path, reason: .writableByOthers)
            }
        }
        if created, fchmod(fd, mode_t(mode)) != 0 {
            throw PosixError(errno: currentErrno(), function: "fchmod", object: path)
        }
        if lockWholeFile(fd) != 0 {
            throw PosixError(errno: currentErrno(), function: "fcntl(F_OFD_SETLK)", object: path)
        }
        // Back to blocking I/O for reads and writes.
        let fileFlags = fcntl(fd, F_GETFL)
        if fileFlags >= 0 { _ = fcntl(fd, F_SETFL, fileFlags & ~O_NONBLOCK) }
        keep = true
        return LockedFile(fd: fd, path: path, kind: kind, created: created)
    }

    /// Whether the descriptor (and so the lock) is still held.
    package var isOpen: Bool { self.fd >= 0 }

    /// Closes the descriptor, which releases the lock. Wraps `close`.
    package func close() {
        if self.fd >= 0 { _ = Glibc.close(self.fd) }
        self.fd = -1
    }

    /// The current size in bytes: the file size of a regular file, the capacity of a block
    /// device. Wraps `fstat` and `lseek(SEEK_END)`.
    package func size() throws(PosixError) -> Int64 {
        let fd = try self.descriptor()
        switch self.kind {
        case .regular:
            var st = stat()
            guard unsafe fstat(fd, &st) == 0 else {
                throw PosixError(errno: currentErrno(), function: "fstat", object: self.path)
            }
            return Int64(st.st_size)
        case .blockDevice:
            let end = lseek(fd, 0, SEEK_END)
            guard end >= 0 else { throw PosixError(errno: currentErrno(), function: "lseek", object: self.path) }
            return Int64(end)
        }
    }

    /// Reads the contents from offset 0. A regular file is read whole and must not exceed
    /// `maxSize` bytes (`HostileFileError(.tooLarge)` otherwise); of a block device only the first
    /// `min(capacity, maxSize)` bytes are read. Wraps `pread`.
    package func readContents(maxSize: Int) throws -> [UInt8] {
        let fd = try self.descriptor()
        let size = try self.size()
        let limit: Int
        switch self.kind {
        case .regular:
            guard size <= Int64(maxSize) else { throw HostileFileError(name: self.path, reason: .tooLarge(size)) }
            limit = maxSize
        case .blockDevice:
            limit = Int(min(size, Int64(maxSize)))
        }
        var result = [UInt8]()
        result.reserveCapacity(Int(min(size, Int64(limit))))
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let wanted = min(chunk.count, limit + 1 - result.count)
            if wanted <= 0 { break }
            let offset = result.count
            let n = try retryingEINTR("pread", self.path) { rawPread(fd, &chunk, wanted, offset) }
            if n == 0 { break }
            result.append(contentsOf: chunk[0..<n])
        }
        if result.count > limit {
            if self.kind == .regular {
                // It grew while we read it.
                throw HostileFileError(name: self.path, reason: .tooLarge(Int64(result.count)))
            }
            result.removeLast(result.count - limit)
        }
        return result
    }

    /// Writes all of `bytes` at offset 0, handling partial writes and EINTR. Bytes beyond
    /// `bytes.count` stay as they were. Wraps `pwrite`.
    package func writeAtStart(_ bytes: [UInt8]) throws(PosixError) {
        let fd = try self.descriptor()
        var offset = 0
        while offset < bytes.count {
            let n = try retryingEINTR("pwrite", self.path) { Sys.pwrite(fd, bytes, offset, object: self.path) }
            guard n > 0 else { throw PosixError(errno: ENOSPC, function: "pwrite", object: self.path) }
            offset += n
        }
    }

    /// Sets the length of a regular file. Wraps `ftruncate`.
    package func truncate(to length: Int) throws(PosixError) {
        let fd = try self.descriptor()
        _ = try retryingEINTR("ftruncate", self.path) { Sys.ftruncate(fd, length, object: self.path) }
    }

    /// Flushes the data (and the size) to stable storage. Wraps `fdatasync`.
    package func synchronizeData() throws(PosixError) {
        let fd = try self.descriptor()
        _ = try retryingEINTR("fdatasync", self.path) { Sys.fdatasync(fd, object: self.path) }
    }

    private func descriptor() throws(PosixError) -> Int32 {
        guard self.fd >= 0 else { throw PosixError(errno: EBADF, function: "use", object: self.path) }
        return self.fd
    }
}

/// `pread(2)` of up to `count` bytes at file offset `offset` into `buffer[0..<count]`.
private func rawPread(_ fd: Int32, _ buffer: inout [UInt8], _ count: Int, _ offset: Int) -> Int {
    precondition(count >= 0 && count <= buffer.count)
    return unsafe buffer.withUnsafeMutableBytes { buf in unsafe Glibc.pread(fd, buf.baseAddress!, count, off_t(offset))
    }
}

/// `pwrite(2)` of `bytes[offset...]` at file offset `offset`.
func rawPwrite(_ fd: Int32, _ bytes: [UInt8], _ offset: Int) -> Int {
    precondition(offset >= 0 && offset <= bytes.count)
    return unsafe bytes.withUnsafeBytes { buf in
        unsafe Glibc.pwrite(fd, buf.baseAddress! + offset, buf.count - offset, off_t(offset))
    }
}
