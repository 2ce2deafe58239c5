public import Logging
import Registry
import StateStore
import TPMEngine
import TPMWire
import _VTPMPosix

/// vtpmd's backend: one thread, one poll loop serving the control listener/connection, the data
/// listener/connection and the signal pipe, and the libtpms engine. Like swtpm, a control command
/// never runs while a TPM command runs, and vice versa.
///
/// SwiftNIO is not used: the data socket arrives over SCM_RIGHTS (NIO does not surface received
/// descriptors), the device is strictly serial, and a blocking read/process/write on one thread is
/// the shortest path a TPM command can take (the benchmark floor is the loopback round trip).
public final class Server {
    let configuration: ServerConfiguration
    let logger: Logger
    let store: StateDirectory?
    let engine: Engine
    let storage: EngineStorageAdapter
    /// Clone-rekey state, when `--vm-id` is given.
    let identity: IdentityService?
    /// The state directory's recorded identity was compared with `--vm-id` (first INIT).
    var identityChecked = false

    var controlListener: Int32 = -1
    /// The control connection being served.
    var control: ControlConnection?
    /// Further control connections (read-only queries, or waiting their turn): see Server+Observers.
    var controlPeers: [ControlConnection] = []
    var dataListener: Int32 = -1
    var dataConnection: Int32 = -1
    /// Framing of the data channel's commands in `readBuffer`, and when the current one started.
    var dataFramer: TPMCommandFramer
    var dataStarted: UInt64 = 0
    /// Responses the data peer has not read yet.
    var dataOutbox = Outbox()
    /// The data connection came from SET_DATAFD (QEMU) rather than the --server listener.
    var dataFromControl = false
    var signalDescriptor: Int32 = -1
    /// Bumped whenever a connection is opened or closed: poll results from before are stale then
    /// (a new descriptor may reuse a number that was just reported readable).
    var connectionEpoch = 0
    var shouldExit = false
    var exitStatus: Int32 = 0
    var bufferSize: UInt32
    /// The last command libtpms executed successfully was TPM2_Shutdown.
    var lastCommandWasShutdown = false
    /// GET_STATEBLOB results kept for reads at offset > 0 (the bytes must not change between chunks).
    var blobCache: [UInt32: (blob: [UInt8], flags: UInt32)] = [:]
    /// Data-channel input buffer: commands are read into it and executed in place.
    var readBuffer: [UInt8]
    /// `vtpmd cuse`: the device and its transfers.
    var cuseChannel: CUSEChannel?

    /// Creates the server; opens nothing yet.
    public init(configuration: ServerConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        if let location = configuration.stateLocation {
            self.store = StateDirectory(location: location, options: configuration.stateOptions, logger: logger)
        } else {
            self.store = nil
        }
        self.storage = EngineStorageAdapter(store: self.store, logger: logger)
        if let identityConfiguration = configuration.identity {
            let identity = try IdentityService(configuration: identityConfiguration, logger: logger)
            identity.store = self.store
            self.store?.identityForNewTPM = InstanceIdentity(
                vmID: identityConfiguration.vmID,
                generation: identity.generation
            )
            self.identity = identity
        } else {
            self.identity = nil
        }
        self.engine = try Engine(storage: self.storage)
        self.bufferSize = Engine.setBufferSize(0).size
        self.readBuffer = [UInt8](repeating: 0, count: Int(Engine.setBufferSize(0).maximum) + 16)
        self.dataFramer = TPMCommandFramer(capacity: self.readBuffer.count)
    }

    /// Creates the sockets and the pid file, starts libtpms if told to. Errors here are startup
    /// errors: the process reports them and exits non-zero.
    public func start() throws {
        ProcessControl.ignoreSIGPIPE()
        self.signalDescriptor = try ProcessControl.terminationSignalDescriptor()
        if let control = self.configuration.control {
            switch control {
            case .unix(let path, let mode, let owner, let group):
                self.controlListener = try Socket.listenUnix(
                    path: path,
                    mode: mode ?? 0o770,
                    owner: owner,
                    group: group
                )
            case .tcp(let address, let port):
                self.controlListener = try Socket.listenTCP(bindAddress: address, port: port)
            case .listeningDescriptor(let fd):
                self.controlListener = fd
            case .connectedDescriptor(let fd):
                self.control = ControlConnection(fd: fd, maximumBlobSize: self.configuration.maximumBlobSize)
            case .vtpmProxy:
                throw ServerError.startup("a vTPM proxy is a data channel, not a control channel")
            }
        }
        if let server = self.configuration.server {
            switch server {
            case .unix(let path, let mode, let owner, let group):
                self.dataListener = try Socket.listenUnix(path: path, mode: mode ?? 0o770, owner: owner, group: group)
            case .tcp(let address, let port):
                self.dataListener = try Socket.listenTCP(bindAddress: address, port: port)
            case .listeningDescriptor(let fd):
                self.dataListener = fd
            case .connectedDescriptor(let fd):
                self.dataConnection = fd
            case .vtpmProxy:
                let device: VTPMProxyDevice
                do {
                    device = try VTPMProxyDevice.create()
                } catch {
                    throw ServerError.startup("cannot create the vTPM proxy device: \(error)")
                }
                self.dataConnection = device.descriptor
                // swtpm's announcement, on standard output.
                try? writeAll(
                    fd: 1,
                    Array(
                        "New TPM device: /dev/tpm\(device.number) (major/minor = \(device.major)/\(device.minor))\n"
                            .utf8
                    )
                )
                self.logger.info("vTPM proxy device /dev/tpm\(device.number) created")
            }
        }
        if let cuse = self.configuration.cuse { try self.openCUSEDevice(cuse) }
        if let pidFile = self.configuration.pidFile {
            try writeSmallFile(path: pidFile, contents: Array("\(ProcessControl.processID)".utf8), mode: 0o644)
        }
        if let fd = self.configuration.pidDescriptor {
            try writeAll(fd: fd, Array("\(ProcessControl.processID)".utf8), object: "pid fd")
            closeDescriptor(fd)
        }
    }

    /// Starts libtpms at process start when `--flags not-need-init` or `startup-*` asked for it
    /// (after `--runas` took effect, so state files belong to that user).
    public func startTPMIfRequested() throws {
        if self.configuration.cuse != nil, let directory = self.configuration.stateDirectory {
            // swtpm cuse creates a missing state directory (the other modes expect it, as swtpm's do); here, after
            // --runas, so that it belongs to the user the TPM runs as.
            do {
                try makeDirectories(directory, mode: 0o700)
            } catch {
                throw ServerError.startup("cannot create the state directory: \(error)")
            }
        }
        if self.configuration.notNeedInit || self.configuration.startup != nil {
            let rc = self.initializeTPM(flags: 0)
            guard rc == 0 else {
                throw ServerError.startup("could not initialize the TPM (0x\(String(rc, radix: 16)))")
            }
            if let startup = self.configuration.startup {
                let su: UInt16 = startup == .clear ? 0 : 1
                var command = TPMFrame.command(code: 0x144, body: [UInt8(su >> 8), UInt8(su & 0xff)])
                let response = self.engine.process(&command)
                let rc = response.flatMap(TPMFrame.responseCode) ?? TPMFrame.rcFailure
                // TPM_RC_INITIALIZE: a resumed volatile state is already started (swtpm ignores it too).
                guard rc == 0 || rc == TPMFrame.rcInitialize else {
                    throw ServerError.startup("TPM2_Startup failed with 0x\(String(rc, radix: 16))")
                }
            }
        }
        if let note = self.configuration.identityNote { self.logger.notice("\(note)") }
        if let identity = self.configuration.identity {
            self.logger.info("clone-rekey on", metadata: ["vm": "\(identity.vmID)"])
        }
        self.logger.info("vtpmd ready", metadata: ["pid": "\(ProcessControl.processID)"])
    }

    /// Orderly stop of libtpms: TPM2_Shutdown(SU_STATE) first unless the guest already did it (R13).
    func shutdownTPM() {
        guard self.engine.isRunning else { return }
        self.autoShutdown()
        self.engine.terminate()
    }

    func autoShutdown() {
        guard self.configuration.autoShutdown, self.engine.isRunning, !self.lastCommandWasShutdown else { return }
        for su: UInt8 in [1, 0] {
            var command = TPMFrame.command(code: 0x145, body: [0, su])
            if let response = self.engine.process(&command), TPMFrame.responseCode(response) == 0 {
                self.logger.debug("sent automatic TPM2_Shutdown", metadata: ["type": "\(su == 1 ? "STATE" : "CLEAR")"])
                self.lastCommandWasShutdown = true
                return
            }
        }
    }

    /// Installs the seccomp filter (``SeccompProfile``) with the configured action, once the start-up that
    /// needs more (configuration, sockets, files, `--runas`) is done. With `VTPMD_TEST_SECCOMP_PROBE` in the
    /// environment it then makes one call outside the list, which the tests of the filter look for.
    public func confine() throws {
        let action = self.configuration.seccomp
        let allowed: Int
        do {
            allowed = try SeccompProfile.install(action)
        } catch {
            throw ServerError.startup("cannot install the seccomp filter: \(error)")
        }
        self.logger.info("seccomp filter: action=\(action.rawValue), \(allowed) system calls allowed")
        if ProcessControl.environment("VTPMD_TEST_SECCOMP_PROBE") != nil {
            let ran = SeccompFilter.probe()
            self.logger.notice("seccomp probe: personality(2) \(ran ? "ran" : "failed")")
        }
    }

    /// Debug builds only: installs the storage faults and crash points `VTPM_FAULTS` names, for the tests of
    /// failing storage (``FaultInjection``). Returns their description, nil when there are none.
    public static func installTestFaults() throws -> String? {
        let rules = try FaultInjection.installFromEnvironment()
        return rules.isEmpty ? nil : rules.map(\.description).joined(separator: "; ")
    }

    /// Undoes `start` after a startup failure: closes the sockets, removes their paths and the pid file.
    public func abandon() {
        self.engine.terminate()
        self.cleanup()
    }

    func cleanup() {
        self.cuseChannel?.device?.close()
        for fd in [self.dataConnection, self.controlListener, self.dataListener] where fd >= 0 {
            closeDescriptor(fd)
        }
        self.control?.close()
        self.control = nil
        for peer in self.controlPeers { peer.close() }
        self.controlPeers = []
        if case .unix(let path, _, _, _) = self.configuration.control { removePath(path) }
        if case .unix(let path, _, _, _) = self.configuration.server { removePath(path) }
        if let pidFile = self.configuration.pidFile { removePath(pidFile) }
    }

    /// Closes the data connection. `byPeer` is true when the client went away (not when vtpmd
    /// closes after a response in `disconnect` mode); with --terminate, or for a data descriptor
    /// inherited at start, that ends the process.
    func closeDataConnection(byPeer: Bool, reason: String) {
        guard self.dataConnection >= 0 else { return }
        closeDescriptor(self.dataConnection)
        self.dataConnection = -1
        self.connectionEpoch += 1
        self.dataFramer.reset()
        self.dataOutbox = Outbox()
        self.dataFromControl = false
        self.logger.debug("data connection closed", metadata: ["reason": "\(reason)"])
        var inherited = false
        if case .connectedDescriptor = self.configuration.server { inherited = true }
        if self.configuration.server == .vtpmProxy {
            // The kernel removed the device (or it failed): nothing is left to serve.
            self.shouldExit = true
            return
        }
        if self.configuration.dataIsCharacterDevice {
            // A character device has no peer that could come back over a listener; keep serving
            // the control channel (swtpm's chardev mode ends with CMD_SHUTDOWN).
            return
        }
        if byPeer && (self.configuration.terminateOnDataLoss || inherited) {
            self.shouldExit = true
        }
    }

    func closeControlConnection() {
        guard let control = self.control else { return }
        control.close()
        self.control = nil
        self.connectionEpoch += 1
        if case .connectedDescriptor = self.configuration.control {
            // swtpm_setup's socketpair: nobody can reconnect, so the process is done.
            self.shouldExit = true
        }
    }

    /// CMD_INIT's work (also used at start with not-need-init): power-cycle libtpms with writes
    /// staged in memory, persist them only when libtpms came up.
    func initializeTPM(flags: UInt32) -> UInt32 {
        if self.engine.isRunning {
            self.autoShutdown()
            self.engine.terminate()
        }
        self.lastCommandWasShutdown = false
        self.blobCache = [:]
        guard let store = self.store else {
            self.logger.error("no state directory: give --tpmstate dir=... or set TPM_PATH")
            return ControlResult.fail
        }
        if let identity = self.identity {
            if !identity.incoming.isEmpty {
                // Not a state change of the running TPM: the decision looks at the incoming claim.
                return self.initializeIncoming(identity: identity, store: store, flags: flags)
            }
            identity.stateWillChange()
            if !self.identityChecked {
                switch self.initializeFromDisk(identity: identity, store: store) {
                case .proceed: break
                case .done: return 0
                case .failed(let rc): return rc
                }
            }
        }
        store.beginStaging()
        self.storage.lastFailure = nil
        do {
            try self.engine.initialize()
        } catch {
            store.discardStaged()
            if let failure = self.storage.lastFailure {
                self.logger.error("CMD_INIT failed: \(failure.message)")
                if failure.code == .locked { return ControlResult.fail }
            } else {
                self.logger.error("CMD_INIT failed: \(error)")
            }
            return error.result == 0 ? ControlResult.fail : error.result
        }
        do {
            try store.commitStaged()
            if flags & ControlRequest.initFlagDeleteVolatile != 0 {
                try store.delete("volatilestate")
            }
        } catch {
            self.logger.error("CMD_INIT could not persist the state: \(error.message)")
            self.engine.terminate()
            return ControlResult.fail
        }
        // The state this TPM runs from is the newest committed one: recorded when the loop is idle (a
        // registry write only when it moved).
        self.identity?.stateWriteDue = true
        return 0
    }
}

/// A failure that stops vtpmd from starting.
public enum ServerError: Error, CustomStringConvertible {
    case startup(String)
    public var description: String {
        switch self {
        case .startup(let message): message
        }
    }
}
