import Foundation
import Logging
import StateStore
import TPMWire
import VMIdentity
import _VTPMPosix

/// A state directory as `vtpm-state` reads it: locked first (a directory in use by vtpmd or swtpm is
/// refused), then its identity and every state file decoded and checked. Nothing is written.
final class OpenedState {
    let path: String
    let store: StateDirectory
    /// The recorded identity, nil for a directory without a marker (swtpm's) or a damaged marker.
    let identity: InstanceIdentity?
    /// Every state file present, with its integrity verdict.
    let files: [StateReport.File]
    /// The plain libtpms permanent state, nil when it is damaged.
    let permanentState: [UInt8]?
    /// A running vtpmd or swtpm holds the directory: it was read without the lock.
    let inUse: Bool

    /// The file names `vtpm-state` looks at, in report order.
    static let fileNames = [
        StateDirectory.fileName("permall"), StateDirectory.fileName("volatilestate"),
        StateDirectory.fileName("savestate"), StateDirectory.instanceName,
    ]

    static let silentLogger = Logger(label: "vtpm.statetool", factory: { _ in SwiftLogNoOpLogHandler() })

    /// `open(path, readingInUse: true)`, read once more when a file did not decode in a directory a running
    /// vtpmd holds (it may have been rewriting it: the spare swap reuses inodes).
    static func openForReading(_ path: String, stateKey: StateKey?) throws -> OpenedState {
        let opened = try self.open(path, readingInUse: true, stateKey: stateKey)
        guard opened.inUse && !opened.isIntact else { return opened }
        Thread.sleep(forTimeInterval: 0.05)
        return try self.open(path, readingInUse: true, stateKey: stateKey)
    }

    /// Opens and locks `path`; with `readingInUse`, a directory a running vtpmd or swtpm holds is read
    /// without its lock instead (each file as last renamed into place; nothing is written).
    /// - Throws: ``StateToolError``: `notFound` for a missing directory or one without a TPM state,
    ///   `locked` when a running vtpmd or swtpm holds it (without `readingInUse`).
    static func open(_ path: String, readingInUse: Bool = false, stateKey: StateKey? = nil) throws -> OpenedState {
        guard Self.kind(path) == .directory else {
            throw StateToolError(.notFound, "state directory \(path) does not exist")
        }
        // Checked before locking, which would create `.lock` in a directory that holds no TPM.
        let present = self.fileNames.filter { name in fileStatus(atPath: Self.join(path, name)) != nil }
        guard !present.isEmpty else {
            throw StateToolError(.notFound, "\(path) holds no TPM state (no \(StateDirectory.fileName("permall")))")
        }
        var options = StateDirectory.Options()
        options.stateKey = stateKey
        options.trustDirectoryOwner = true
        var store = StateDirectory(path: path, options: options, logger: Self.silentLogger)
        var inUse = false
        do {
            try store.lock()
        } catch {
            guard error.code == .locked else {
                throw StateToolError(.notFound, "cannot open state directory \(path): \(error.message)")
            }
            guard readingInUse else {
                throw StateToolError(
                    .locked,
                    "state directory \(path) is locked: a running vtpmd or swtpm is using it; stop it first"
                )
            }
            options.readOnly = true
            store = StateDirectory(path: path, options: options, logger: Self.silentLogger)
            do { try store.lock() } catch {
                throw StateToolError(.notFound, "cannot open state directory \(path): \(error.message)")
            }
            inUse = true
        }
        var files: [StateReport.File] = []
        var identity: InstanceIdentity? = nil
        var permanent: [UInt8]? = nil
        for name in present {
            let full = Self.join(path, name)
            let size = fileStatus(atPath: full).map { Int($0.size) } ?? 0
            var file = StateReport.File(name: name, size: size, status: "ok")
            do {
                if name == StateDirectory.instanceName {
                    identity = try store.identity()
                    file.writer = "vtpmd"
                } else {
                    let blob = String(name.dropFirst("tpm2-00.".count))
                    guard let plain = try store.load(blob) else { continue }
                    if blob == "permall" { permanent = plain }
                    // Not following a symbolic link, at most the size a state file may have.
                    if let raw = try? readWholeFile(path: full, maxSize: 1 << 20),
                        let info = try? StateFile.decode(raw, key: stateKey).info
                    {
                        file.writer = info.generation == nil ? "swtpm" : "vtpmd"
                        file.writeGeneration = info.generation
                        file.encrypted = info.encrypted
                    }
                }
            } catch {
                file.status = "damaged"
                file.error = error.message
                if error.code == .keyMissing { file.encrypted = true }
            }
            files.append(file)
        }
        if !present.contains(StateDirectory.fileName("permall")) {
            files.insert(
                StateReport.File(
                    name: StateDirectory.fileName("permall"),
                    size: 0,
                    status: "missing",
                    error: "the permanent state is missing"
                ),
                at: 0
            )
        }
        return OpenedState(
            path: path,
            store: store,
            identity: identity,
            files: files,
            permanentState: permanent,
            inUse: inUse
        )
    }

    private init(
        path: String,
        store: StateDirectory,
        identity: InstanceIdentity?,
        files: [StateReport.File],
        permanentState: [UInt8]?,
        inUse: Bool
    ) {
        self.inUse = inUse
        self.path = path
        self.store = store
        self.identity = identity
        self.files = files
        self.permanentState = permanentState
    }

    /// Whether every file decoded.
    var isIntact: Bool { self.files.allSatisfy { $0.status == "ok" } }

    /// The plain permanent state, or why there is none.
    func requirePermanentState() throws -> [UInt8] {
        guard let permanentState, self.isIntact else {
            let bad = self.files.filter { $0.status != "ok" }
                .map { "\($0.name): \($0.error ?? $0.status)" }
            throw StateToolError(.damaged, "\(self.path) is damaged: \(bad.joined(separator: "; "))")
        }
        return permanentState
    }

    /// The file type at `path` (not following a final symlink), nil when nothing is there.
    static func kind(_ path: String) -> FileStatus.Kind? {
        fileStatus(atPath: path)?.kind
    }

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }
}
