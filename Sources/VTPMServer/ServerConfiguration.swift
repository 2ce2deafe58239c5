public import StateStore

/// Everything `vtpmd socket` / `vtpmd chardev` / `vtpmd cuse` was told on its command line, validated.
public struct ServerConfiguration: Sendable {
    /// Where a channel comes from.
    public enum Endpoint: Sendable, Hashable {
        /// A UNIX socket vtpmd creates (replacing a stale socket file), chmod-ed to `mode` and
        /// chown-ed to `owner`/`group` when given.
        case unix(path: String, mode: UInt32?, owner: UInt32? = nil, group: UInt32? = nil)
        /// A TCP listener vtpmd creates.
        case tcp(bindAddress: String, port: UInt16)
        /// An inherited listening socket.
        case listeningDescriptor(Int32)
        /// An inherited, already connected stream (swtpm's `clientfd=`, `--server ...,fd=` for TCP,
        /// `chardev --fd`).
        case connectedDescriptor(Int32)
        /// A vTPM proxy device vtpmd creates through /dev/vtpmx (`chardev --vtpm-proxy`).
        case vtpmProxy
    }

    /// The character device of `vtpmd cuse`.
    public struct CUSEDevice: Sendable, Hashable {
        /// /dev/NAME.
        public var name: String
        /// 0: the kernel chooses.
        public var major: UInt32 = 0
        public var minor: UInt32 = 0
        public init(name: String) { self.name = name }
    }

    /// TPM2_Startup type sent at start (`--flags startup-*`).
    public enum StartupType: Sendable, Hashable {
        case clear, state
    }

    public var control: Endpoint?
    /// `vtpmd cuse`: the device that takes both the TPM commands and the control commands (as ioctls).
    public var cuse: CUSEDevice?
    /// What a system call outside ``SeccompProfile/allowed`` gets once vtpmd serves (`--seccomp action=`).
    public var seccomp: SeccompProfile.Action = .kill
    public var server: Endpoint?
    /// The data descriptor is a character device (`chardev --fd`): errors on it stop its
    /// service but do not end the process.
    public var dataIsCharacterDevice = false
    /// Close the data connection after every response (`--server ...,disconnect`).
    public var disconnectAfterResponse = false
    /// Exit when the data connection goes away (`--terminate`, and always for a connected data fd).
    public var terminateOnDataLoss = false
    /// Where the TPM state lives (`--tpmstate`, or the `TPM_PATH` directory).
    public var stateLocation: StateLocation?
    /// The state directory, if the state lives in one (`dir=`, `backend-uri=dir://`, `TPM_PATH`).
    public var stateDirectory: String? {
        get {
            if case .directory(let path) = self.stateLocation { return path }
            return nil
        }
        set { self.stateLocation = newValue.map { .directory($0) } }
    }
    public var stateOptions = StateDirectory.Options()
    public var migrationKey: StateKey?
    public var migrationPolicy: MigrationBlob.Policy = .lenient
    /// Start libtpms without waiting for CMD_INIT.
    public var notNeedInit = false
    public var startup: StartupType?
    public var pidFile: String?
    public var pidDescriptor: Int32?
    public var rejectLocality4 = false
    public var allowSetLocality = false
    /// Send TPM2_Shutdown(SU_STATE) before STOP, INIT, SHUTDOWN and SIGTERM if the guest did not.
    public var autoShutdown = true
    /// Largest control-channel message body (SET_STATEBLOB), bytes.
    public var maximumBlobSize = BlobContainer.maximumSize

    /// Clone-rekey (`--vm-id` and friends, or the host configuration); nil: plain swtpm behaviour.
    public var identity: IdentityConfiguration? = nil
    /// Why clone-rekey is off although the host configuration asked for it (logged at start).
    public var identityNote: String? = nil

    public init() {}

    /// Descriptors named on the command line (they must survive daemonizing).
    public var inheritedDescriptors: Set<Int32> {
        var fds: Set<Int32> = []
        for endpoint in [self.control, self.server].compactMap({ $0 }) {
            switch endpoint {
            case .listeningDescriptor(let fd), .connectedDescriptor(let fd): fds.insert(fd)
            default: break
            }
        }
        if let fd = self.pidDescriptor { fds.insert(fd) }
        return fds
    }
}
