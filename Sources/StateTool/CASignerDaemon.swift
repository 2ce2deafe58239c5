import CASigner
import EndorsementCA
import Logging
import Registry
import VTPMServer
import _VTPMPosix

/// `vtpm-state ca serve`: the separated CA signer as a process of its own user (``CASignerService``).
///
/// Start-up order: the socket is created (mode, group) while the process may still change owners, then
/// `--runas` drops to the signer's user, then the CA and the registry are opened as that user: the CA
/// directory must belong to it (the same trust rules as everywhere), and nothing else ever reads the key.
public enum CASignerDaemon {
    /// What `ca serve` was told.
    public struct Options: Sendable {
        public var caDirectory: String
        public var registry: String
        public var socketPath: String
        /// The socket's mode (default 0660: the signer's user and the socket's group).
        public var socketMode: UInt32 = 0o660
        /// The group that may connect (vtpmd's: `tss` under libvirt).
        public var socketGroup: String?
        public var runas: String?
        /// The log file (issuances and refusals); standard error when nil.
        public var logPath: String?

        public init(caDirectory: String, registry: String, socketPath: String) {
            self.caDirectory = caDirectory
            self.registry = registry
            self.socketPath = socketPath
        }
    }

    /// Runs the signer; returns only by throwing.
    /// - Throws: ``StateToolError`` for a failed start-up.
    public static func run(_ options: Options) throws -> Never {
        var descriptor: Int32 = 2
        if let path = options.logPath {
            do { descriptor = try openLogFile(path: path, truncate: false) } catch {
                throw StateToolError(.invalidArgument, "--log \(path): \(error)")
            }
        }
        let logFD = descriptor
        var logger = Logger(label: "vtpm.ca-signer") { label in
            FileLogHandler(label: label, descriptor: logFD, level: .info, prefix: "")
        }
        logger.logLevel = .info
        var group: UInt32? = nil
        if let name = options.socketGroup {
            guard let gid = ProcessControl.groupID(name) else {
                throw StateToolError(.invalidArgument, "--socket-group: no group \(name)")
            }
            group = gid
        }
        let listener: Int32
        do {
            listener = try Socket.listenUnix(
                path: options.socketPath,
                mode: options.socketMode,
                group: group,
                backlog: 16
            )
        } catch {
            throw StateToolError(.invalidArgument, "cannot listen on \(options.socketPath): \(error)")
        }
        if let user = options.runas {
            do { try ProcessControl.runAs(user: user) } catch {
                throw StateToolError(.invalidArgument, "--runas \(user): \(error)")
            }
        }
        ProcessControl.ignoreSIGPIPE()
        let ca: HostCA
        do { ca = try HostCA.load(from: options.caDirectory) } catch {
            throw StateToolError(.certificateAuthority, "cannot load the CA in \(options.caDirectory): \(error)")
        }
        let registry = try StateProvisioner.openRegistry(options.registry)
        // The schema is read (and brought up to date) now, not at the first request.
        do { _ = try registry.schemaVersion() } catch {
            throw StateToolError(.registry, "registry \(registry.location): \(error)")
        }
        let service = CASignerService(ca: ca, registry: registry, logger: logger)
        logger.notice(
            "CA signer for \(ca.subject) serving \(options.socketPath) as uid \(ProcessControl.effectiveUserID), registry \(registry.location)"
        )
        do { try service.serve(listener: listener) } catch {
            throw StateToolError(.invalidArgument, "the CA signer stopped: \(error)")
        }
    }
}
