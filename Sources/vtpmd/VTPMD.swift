import ArgumentParser
import CloneRekey
import Logging
import StateStore
import VTPMServer
import _VTPMPosix

@main
struct VTPMD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vtpmd",
        abstract: "A TPM 2.0 backend for QEMU, command-line compatible with `swtpm socket`.",
        subcommands: [SocketCommand.self, ChardevCommand.self, CuseCommand.self]
    )

    /// The plain command lines of a VM start are scanned directly (`CommandLineOptions.scan`: half of
    /// the start-up time otherwise); everything else — help, errors, `--print-*` — goes to ArgumentParser.
    static func main() {
        // `swtpm --version` (no front end), as swtpm answers it.
        if Array(CommandLine.arguments.dropFirst()) == ["--version"] {
            print(Capabilities.versionText)
            return
        }
        if let (options, chardev) = CommandLineOptions.scan(Array(CommandLine.arguments.dropFirst())) {
            do {
                try Launcher.launch(SwtpmOptions.withEnvironment(options), actions: .run, chardev: chardev)
            } catch {
                Launcher.fail("\(error)")
            }
            return
        }
        self.main(nil)
    }
}

/// swtpm 0.7's options that `socket`, `chardev` and `cuse` all take, and clone-rekey's.
struct SharedOptions: ParsableArguments {
    @Flag(name: .customLong("tpm2"), help: "Emulate a TPM 2.0 (required: vtpmd implements TPM 2.0 only).")
    var tpm2 = false
    @Option(help: "dir=DIR[,mode=0600][,fsync=on|off] or backend-uri=dir://DIR: the state directory.")
    var tpmstate: String?
    @Option(help: "not-need-init,startup-clear|startup-state|startup-none,disable-auto-shutdown")
    var flags: String?
    @Option(help: "file=F | fd=N: write the process id.")
    var pid: String?
    @Option(help: "file=F|fd=N[,level=N][,prefix=S][,truncate]")
    var log: String?
    @Option(help: "reject-locality-4[,allow-set-locality]")
    var locality: String?
    @Option(
        help:
            "file=F|fd=N[,format=hex|binary] or pwdfile=F|pwdfd=N[,kdf=pbkdf2|sha512], mode=aes-128-cbc|aes-256-cbc, remove: encrypt the state files."
    )
    var key: String?
    @Option(
        name: .customLong("migration-key"),
        help: "Same syntax as --key (plus strict): encrypt outgoing state blobs."
    )
    var migrationKey: String?
    @Option(help: "action=kill|log|none: what a system call outside vtpmd's allow list gets (default kill).")
    var seccomp: String?
    @Option(
        name: [.customShort("r"), .customLong("runas")],
        help: "Switch to this user after creating the sockets or the device."
    )
    var runas: String?
    @Option(
        help: "Host configuration file (default: $VTPMD_CONFIG, else /etc/vtpm/vtpmd.conf if it exists)."
    )
    var config: String?
    @Option(name: .customLong("vm-id"), help: "This VM's UUID or name: turns clone-rekey on.")
    var vmID: String?
    @Option(help: "The host CA directory (created on first use) that issues the EK certificates.")
    var ca: String?
    @Option(
        name: .customLong("ca-signer"),
        help: "The separated CA signer's socket: EK certificates come from it, and the CA key is not read."
    )
    var caSigner: String?
    @Option(
        help:
            "The registry of identities and generations: a SQLite file (default /var/lib/vtpm/registry.sqlite) or postgresql://user@host:port/db."
    )
    var registry: String?
    @Option(name: .customLong("host-key"), help: "The key that MACs state blobs (default /var/lib/vtpm/host.key).")
    var hostKey: String?
    @Option(name: .customLong("on-rollback"), help: "rekey (default) or keep: what a rolled-back state gets.")
    var onRollback: String?
    @Option(name: .customLong("foreign-state"), help: "adopt (default) or rekey: state without a source claim.")
    var foreignState: String?
    @Flag(name: .customLong("print-capabilities"), help: "Print the supported features as JSON and exit.")
    var printCapabilities = false
    @Flag(name: .customLong("print-states"), help: "Print the state blobs present in --tpmstate as JSON and exit.")
    var printStates = false
    @Flag(name: .customLong("version"), help: "Print the version and exit.")
    var version = false

    /// What `--version`, `--print-capabilities` and `--print-states` ask for instead of running.
    var actions: Launcher.Actions {
        Launcher.Actions(
            version: self.version,
            printCapabilities: self.printCapabilities,
            printStates: self.printStates
        )
    }

    /// These options as raw strings (the process environment is added by the caller).
    func commandLineOptions() -> CommandLineOptions {
        var o = CommandLineOptions()
        o.tpm2 = self.tpm2
        o.tpmstate = self.tpmstate
        o.flags = self.flags
        o.pid = self.pid
        o.log = self.log
        o.locality = self.locality
        o.key = self.key
        o.migrationKey = self.migrationKey
        o.seccomp = self.seccomp
        o.runas = self.runas
        o.config = self.config
        o.vmID = self.vmID
        o.ca = self.ca
        o.caSigner = self.caSigner
        o.registry = self.registry
        o.hostKey = self.hostKey
        o.onRollback = self.onRollback
        o.foreignState = self.foreignState
        return o
    }
}

/// swtpm 0.7's options of `socket` and `chardev`: the shared ones and the channels'.
struct SwtpmOptions: ParsableArguments {
    @OptionGroup var shared: SharedOptions
    @Option(help: "type=unixio,path=P[,mode=0770] | type=unixio,fd=N|clientfd=N | type=tcp,port=N[,bindaddr=A]")
    var ctrl: String?
    @Option(name: [.customShort("f"), .customLong("fd")], help: "An inherited, connected stream for TPM commands.")
    var fd: Int?
    @Flag(name: [.customShort("d"), .customLong("daemon")], help: "Run in the background.")
    var daemon = false
    @Flag(name: [.customShort("t"), .customLong("terminate")], help: "Exit when the data connection is lost.")
    var terminate = false

    /// The process environment vtpmd reads (`TPM_PATH`, `TPM_PORT`, `VTPMD_CONFIG`), added to `options`.
    static func withEnvironment(_ options: CommandLineOptions) -> CommandLineOptions {
        var o = options
        for name in ["TPM_PATH", "TPM_PORT", HostConfiguration.environmentVariable] {
            if let value = ProcessControl.environment(name) { o.environment[name] = value }
        }
        return o
    }

    var actions: Launcher.Actions { self.shared.actions }

    func commandLineOptions() -> CommandLineOptions {
        var o = self.shared.commandLineOptions()
        o.ctrl = self.ctrl
        o.fd = self.fd
        o.daemon = self.daemon
        o.terminate = self.terminate
        return Self.withEnvironment(o)
    }
}

struct SocketCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "socket",
        abstract: "Serve QEMU's -tpmdev emulator over a control socket (swtpm socket)."
    )
    @OptionGroup var common: SwtpmOptions
    @Option(
        help:
            "type=tcp,port=N[,bindaddr=A][,disconnect] | type=tcp,fd=N | type=unixio,path=P[,mode=] | type=unixio,fd=N"
    )
    var server: String?
    @Option(
        name: [.customShort("p"), .customLong("port")],
        help: "TCP data port (= --server type=tcp,port=N,disconnect)."
    )
    var port: Int?

    func run() throws {
        var options = self.common.commandLineOptions()
        options.server = self.server
        options.port = self.port
        try Launcher.launch(options, actions: self.common.actions, chardev: false)
    }
}

struct ChardevCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chardev",
        abstract: "Serve TPM commands over an inherited descriptor (swtpm chardev --fd N); optional --ctrl."
    )
    @OptionGroup var common: SwtpmOptions
    @Flag(
        name: .customLong("vtpm-proxy"),
        help: "Create a /dev/tpmN through the kernel's /dev/vtpmx and serve it (for a container), as swtpm does."
    )
    var vtpmProxy = false

    func run() throws {
        var options = self.common.commandLineOptions()
        options.vtpmProxy = self.vtpmProxy
        try Launcher.launch(options, actions: self.common.actions, chardev: true)
    }
}

/// `swtpm cuse`'s options: the device takes the control commands as ioctls, so there is no --ctrl or --server.
struct CuseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cuse",
        abstract: "Serve a CUSE character device /dev/NAME (swtpm cuse): TPM commands by write/read, control by ioctl."
    )
    @Option(name: [.customShort("n"), .customLong("name")], help: "The device name: /dev/NAME (required).")
    var name: String?
    @Option(
        name: [.customShort("M"), .customLong("maj")],
        help: "The device's major number (default: the kernel's choice)."
    )
    var major: Int?
    @Option(name: [.customShort("m"), .customLong("min")], help: "The device's minor number.")
    var minor: Int?
    @Flag(
        name: .customLong("foreground"),
        help: "Stay in the foreground (swtpm cuse, like any FUSE daemon, always goes to the background)."
    )
    var foreground = false
    @OptionGroup var shared: SharedOptions

    func run() throws {
        var o = self.shared.commandLineOptions()
        o.cuseName = self.name
        o.cuseMajor = self.major
        o.cuseMinor = self.minor
        o.daemon = !self.foreground
        try Launcher.launch(SwtpmOptions.withEnvironment(o), actions: self.shared.actions, chardev: false, cuse: true)
    }
}

enum Launcher {
    static func fail(_ message: String) -> Never {
        try? writeAll(fd: 2, Array("vtpmd: \(message)\n".utf8))
        ProcessControl.exitNow(1)
    }

    /// What to do besides running: print and exit.
    struct Actions {
        var version = false
        var printCapabilities = false
        var printStates = false
        static let run = Actions()
    }

    static func launch(_ options: CommandLineOptions, actions: Actions, chardev: Bool, cuse: Bool = false) throws {
        if actions.version {
            print(Capabilities.versionText)
            return
        }
        if actions.printCapabilities {
            print(Capabilities.json(cuse: cuse))
            return
        }
        let configuration: ServerConfiguration
        let logSettings: CommandLineOptions.LogSettings?
        do {
            if actions.printStates {
                guard options.tpm2 else { fail("vtpmd implements TPM 2.0 only: add --tpm2") }
                try printStates(options)
                return
            }
            configuration = try options.configuration(chardev: chardev, cuse: cuse)
            logSettings = try options.logSettings()
        } catch {
            fail("\(error)")
        }
        var readyReport: Int32 = -1
        if options.daemon {
            do {
                readyReport = try ProcessControl.daemonize(
                    keeping: configuration.inheritedDescriptors.union(logSettings?.descriptor.map { [$0] } ?? [])
                )
            } catch { fail("cannot daemonize: \(error)") }
        }
        let logger = makeLogger(logSettings, daemon: options.daemon)
        do {
            if let faults = try Server.installTestFaults() { logger.notice("test faults installed: \(faults)") }
        } catch { fail("VTPM_FAULTS: \(error)") }
        var created: Server? = nil
        do {
            let server = try Server(configuration: configuration, logger: logger)
            created = server
            try server.start()
            if let user = options.runas { try ProcessControl.runAs(user: user) }
            try server.startTPMIfRequested()
            try server.confine()
        } catch {
            created?.abandon()
            logger.error("startup failed: \(error)")
            if readyReport >= 0 { ProcessControl.reportDaemonReady(readyReport, status: 1) }
            fail("\(error)")
        }
        if readyReport >= 0 {
            ProcessControl.reportDaemonReady(readyReport, status: 0)
            ProcessControl.detachStderr()
        }
        guard let server = created else { fail("no server") }
        let status = server.run()
        ProcessControl.exitNow(status)
    }

    static func printStates(_ options: CommandLineOptions) throws {
        let configuration = try options.configuration(
            chardev: false,
            cuse: options.cuseName != nil,
            requireChannel: false
        )
        guard let location = configuration.stateLocation else { fail("--print-states needs --tpmstate") }
        var logger = Logger(label: "vtpm.state")
        logger.logLevel = .warning
        let store = StateDirectory(location: location, options: configuration.stateOptions, logger: logger)
        do {
            print(Capabilities.statesJSON(try store.presentStates()), terminator: "")
        } catch {
            fail("\(error)")
        }
    }

    static func makeLogger(_ settings: CommandLineOptions.LogSettings?, daemon: Bool) -> Logger {
        var descriptor: Int32 = 2
        var level: Logger.Level = .error
        var prefix = ""
        if let settings {
            if settings.disabled {
                return Logger(label: "vtpm.server", factory: { _ in SwiftLogNoOpLogHandler() })
            }
            if let path = settings.path {
                do {
                    descriptor = try openLogFile(path: path, truncate: settings.truncate)
                } catch {
                    fail("--log: \(error)")
                }
            } else if let fd = settings.descriptor {
                descriptor = fd
            }
            prefix = settings.prefix
            switch settings.level {
            case ...1: level = .notice
            case 2: level = .info
            case 3...4: level = .debug
            default: level = .trace
            }
        } else if daemon {
            level = .critical
        }
        let chosenLevel = level
        let chosenPrefix = prefix
        return Logger(label: "vtpm.server") { label in
            FileLogHandler(label: label, descriptor: descriptor, level: chosenLevel, prefix: chosenPrefix)
        }
    }
}
