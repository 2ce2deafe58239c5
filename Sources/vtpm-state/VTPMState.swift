import ArgumentParser
import CloneRekey
import Foundation
import StateTool
import VTPMServer

/// The program: `vtpm-state`, or swtpm_setup's stand-in when run under that name (the Debian package
/// installs it as /usr/bin/swtpm_setup) or as `vtpm-state swtpm_setup ...`.
@main
enum Main {
    static func main() {
        do { _ = try Server.installTestFaults() } catch {
            FileHandle.standardError.write(Data("vtpm-state: VTPM_FAULTS: \(error)\n".utf8))
            exit(64)
        }
        let arguments = CommandLine.arguments
        let name = arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? ""
        if name == "swtpm_setup" {
            exit(
                SwtpmSetup.main(
                    arguments: Array(arguments.dropFirst()),
                    environment: ProcessInfo.processInfo.environment
                )
            )
        }
        if arguments.count > 1 && arguments[1] == "swtpm_setup" {
            exit(
                SwtpmSetup.main(
                    arguments: Array(arguments.dropFirst(2)),
                    environment: ProcessInfo.processInfo.environment
                )
            )
        }
        VTPMState.main()
    }
}

/// `vtpm-state`: the offline state tool. Argument parsing only; the work is in `StateTool`.
struct VTPMState: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vtpm-state",
        abstract: "Inspect, verify, provision, clone and rekey vTPM state directories offline.",
        discussion: "A directory in use by a running vtpmd or swtpm (locked) is refused.",
        subcommands: [
            CA.self, Inspect.self, Verify.self, Lineage.self, Hosts.self, Create.self, Clone.self, Rekey.self,
        ]
    )
}

/// Runs `body`; a domain error goes to stderr and exits 1.
func runTool(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as StateToolError {
        printError("vtpm-state: \(error.message)")
        throw ExitCode.failure
    }
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

struct StateOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The state directory (swtpm's layout).", valueName: "DIR"))
    var state: String
}

/// `--config`: the host configuration vtpmd reads (`/etc/vtpm/vtpmd.conf`, or `VTPMD_CONFIG`), whose `ca`,
/// `registry` and `vm-id-from` are vtpm-state's defaults too.
struct ConfigOption: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Host configuration (default: $VTPMD_CONFIG, else /etc/vtpm/vtpmd.conf if it exists).",
            valueName: "FILE"
        )
    )
    var config: String?

    func load() throws -> HostConfiguration {
        try ToolDefaults.hostConfiguration(explicitPath: self.config)
    }
}

/// `--key`: the key the state is encrypted with, as vtpmd's `--key` (libvirt's `<encryption secret>`).
struct KeyOption: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "The state's key, as vtpmd's --key: pwdfile=F|pwdfd=N or file=F|fd=N, mode=aes-128-cbc|aes-256-cbc.",
            valueName: "KEY"
        )
    )
    var key: String?
}

struct CAOption: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp("The host CA directory (default: the host configuration's ca).", valueName: "DIR")
    )
    var ca: String?
    @OptionGroup var config: ConfigOption

    /// `--ca`, else the host configuration's.
    func resolved() throws -> String {
        try ToolDefaults.caDirectory(self.ca, self.config.load())
    }
}

/// `--ca-signer`: the separated CA signer (`vtpm-state ca serve`) issues the certificates instead of a CA
/// directory this process reads.
struct CASignerOption: ParsableArguments {
    @Option(
        name: .customLong("ca-signer"),
        help: ArgumentHelp(
            "The CA signer's socket (default: the host configuration's ca-signer); the CA key is then not read.",
            valueName: "SOCKET"
        )
    )
    var caSigner: String?

    /// `--ca-signer`, else the configuration's `ca-signer` unless `--ca` was given (the command line wins).
    func resolved(_ host: HostConfiguration, explicitCA: String?) -> String? {
        self.caSigner ?? (explicitCA == nil ? host.caSigner : nil)
    }
}

struct RegistryOption: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Record the new generation in this registry (default: the host configuration's registry).",
            valueName: "PATH"
        )
    )
    var registry: String?
}

extension VTPMState {
    struct CA: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ca",
            abstract: "Manage the host CA.",
            subcommands: [Init.self, Serve.self]
        )

        struct Serve: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Run the separated CA signer: the only process that reads the CA key.",
                discussion: """
                    Issues an EK certificate only for a request that matches the registry's record of the VM's \
                    EK (vm-id, generation, key, origin), and logs every issuance and refusal. vtpmd and \
                    vtpm-state use it with --ca-signer SOCKET (or ca-signer = SOCKET in the host configuration).
                    """
            )
            @OptionGroup var ca: CAOption
            @Option(help: ArgumentHelp("The registry (default: the host configuration's).", valueName: "PATH|URL"))
            var registry: String?
            @Option(help: ArgumentHelp("The socket to listen on.", valueName: "PATH")) var socket: String
            @Option(
                name: .customLong("socket-mode"),
                help: ArgumentHelp("The socket's mode (octal).", valueName: "MODE")
            )
            var socketMode: String = "0660"
            @Option(
                name: .customLong("socket-group"),
                help: ArgumentHelp("The group that may connect (vtpmd's user's group).", valueName: "GROUP")
            )
            var socketGroup: String?
            @Option(help: ArgumentHelp("Switch to this user once the socket exists.", valueName: "USER"))
            var runas: String?
            @Option(help: ArgumentHelp("Log issuances and refusals to this file.", valueName: "FILE"))
            var log: String?

            func validate() throws {
                guard let mode = UInt32(self.socketMode, radix: 8), mode <= 0o777 else {
                    throw ValidationError("--socket-mode: '\(self.socketMode)' is not an octal mode")
                }
                _ = mode
            }

            func run() throws {
                try runTool {
                    let host = try self.ca.config.load()
                    var options = CASignerDaemon.Options(
                        caDirectory: try self.ca.resolved(),
                        registry: ToolDefaults.registry(self.registry, host) ?? "/var/lib/vtpm/registry.sqlite",
                        socketPath: self.socket
                    )
                    options.socketMode = UInt32(self.socketMode, radix: 8) ?? 0o660
                    options.socketGroup = self.socketGroup
                    options.runas = self.runas
                    options.logPath = self.log
                    try CASignerDaemon.run(options)
                }
            }
        }

        struct Init: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create the host CA (ECDSA P-384 key ca-key.pem 0600, certificate ca.pem)."
            )
            @OptionGroup var ca: CAOption
            @Option(help: ArgumentHelp("The CA's subject, e.g. 'CN=host CA,O=example'.", valueName: "DN"))
            var subject: String?

            func run() throws {
                try runTool {
                    print(
                        try CertificateAuthorityTool.initialize(
                            directory: try self.ca.resolved(),
                            subject: self.subject
                        )
                    )
                }
            }
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a state's identity, files, EKs, certificates, NV indices and PCR banks.",
            discussion: "Exit status 1 when a file is damaged or the TPM does not load. Never prints secrets."
        )
        @OptionGroup var state: StateOption
        @OptionGroup var key: KeyOption
        @Flag(help: "Print JSON (format documented in README.md).") var json = false

        func run() throws {
            try runTool {
                let report = try StateInspector.inspect(
                    path: self.state.state,
                    stateKey: try ToolDefaults.stateKey(self.key.key)
                )
                print(self.json ? try report.renderJSON() : report.renderText(), terminator: "")
                if !report.isIntact {
                    printError("vtpm-state: \(self.state.state) is damaged or does not load")
                    throw ExitCode.failure
                }
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check that the EK certificates certify this state's EKs, chain to the CA and name its identity."
        )
        @OptionGroup var state: StateOption
        @OptionGroup var ca: CAOption
        @OptionGroup var key: KeyOption
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            try runTool {
                let result = try StateVerifier.verify(
                    path: self.state.state,
                    caDirectory: try self.ca.resolved(),
                    stateKey: try ToolDefaults.stateKey(self.key.key)
                )
                print(self.json ? try result.renderJSON() : result.renderText(), terminator: "")
                if !result.passed { throw ExitCode.failure }
            }
        }
    }

    struct Lineage: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the clone/rollback tree from the registry.")
        @Option(
            help: ArgumentHelp(
                "The registry file (default: the host configuration's, else /var/lib/vtpm/registry.sqlite).",
                valueName: "PATH"
            )
        )
        var registry: String?
        @Option(name: .customLong("vm-id"), help: ArgumentHelp("Only this VM's tree.", valueName: "VM-ID"))
        var vmID: String?
        @OptionGroup var config: ConfigOption
        @Option(help: "tree, dot (Graphviz) or json.") var format = "tree"

        func validate() throws {
            guard LineageQuery.Format(rawValue: self.format) != nil else {
                throw ValidationError("--format must be tree, dot or json, not '\(self.format)'")
            }
        }

        func run() throws {
            try runTool {
                print(
                    try LineageQuery.render(
                        registryPath: self.registry ?? self.config.load().registryPath
                            ?? "/var/lib/vtpm/registry.sqlite",
                        vmID: self.vmID,
                        format: LineageQuery.Format(rawValue: self.format) ?? .tree
                    ),
                    terminator: ""
                )
            }
        }
    }

    struct Hosts: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List, register and revoke the hosts of a cluster registry.",
            discussion: """
                Each vtpmd registers its host's claim-signing public key in the registry on start; a host \
                verifies another host's state blobs with the key that host registered. A blob from a host the \
                registry does not know, or from a revoked host, is refused.
                """,
            subcommands: [List.self, Register.self, Revoke.self]
        )

        struct Where: ParsableArguments {
            @Option(
                help: ArgumentHelp(
                    "The registry (default: the host configuration's, else /var/lib/vtpm/registry.sqlite).",
                    valueName: "PATH|URL"
                )
            )
            var registry: String?
            @OptionGroup var config: ConfigOption

            func resolved() throws -> String {
                try self.registry ?? self.config.load().registryPath ?? "/var/lib/vtpm/registry.sqlite"
            }
        }

        struct List: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List the registered hosts.")
            @OptionGroup var location: Where
            @Flag(help: "JSON instead of a table.") var json = false

            func run() throws {
                try runTool {
                    print(try HostsCommand.list(registry: self.location.resolved(), json: self.json), terminator: "")
                }
            }
        }

        struct Register: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Register this host (vtpmd does on start).")
            @OptionGroup var location: Where
            @Option(
                name: .customLong("host-key"),
                help: ArgumentHelp(
                    "The host key file (default: the host configuration's, else /var/lib/vtpm/host.key).",
                    valueName: "FILE"
                )
            )
            var hostKey: String?
            @Option(help: "The host's name in the list (default: host-name, else the host name).") var name: String?

            func run() throws {
                try runTool {
                    let host = try self.location.config.load()
                    print(
                        try HostsCommand.register(
                            registry: self.location.resolved(),
                            hostKeyPath: self.hostKey ?? host.hostKeyPath ?? "/var/lib/vtpm/host.key",
                            name: self.name ?? host.hostName ?? ProcessInfo.processInfo.hostName
                        ),
                        terminator: ""
                    )
                }
            }
        }

        struct Revoke: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Revoke a host: every other host refuses its state blobs from now on."
            )
            @OptionGroup var location: Where
            @Argument(help: "The host id (`hosts list`).") var hostID: String
            @Option(help: "Why (recorded and shown).") var reason: String

            func run() throws {
                try runTool {
                    print(
                        try HostsCommand.revoke(
                            registry: self.location.resolved(),
                            hostID: self.hostID,
                            reason: self.reason
                        ),
                        terminator: ""
                    )
                }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Manufacture a TPM: PCR banks, EKs, certificates, identity indices, generation 0.",
            discussion: """
                Without --ca: a blank TPM (PCR banks only) and the identity marker, as vtpmd makes one \
                without a CA: no EK certificates, no identity indices.
                """
        )
        @OptionGroup var state: StateOption
        @Option(
            name: .customLong("vm-id"),
            help: ArgumentHelp(
                "The VM's UUID or name (default: from the host configuration's vm-id-from and --state).",
                valueName: "VM-ID"
            )
        )
        var vmID: String?
        @Option(
            help: ArgumentHelp(
                "The host CA directory (default: the host configuration's); without one no EK certificates are written.",
                valueName: "DIR"
            )
        )
        var ca: String?
        @OptionGroup var config: ConfigOption
        @Option(
            name: .customLong("pcr-banks"),
            help: ArgumentHelp(
                "Active PCR banks: sha1, sha256, sha384, sha512 (default: libtpms' default, all four).",
                valueName: "LIST"
            )
        )
        var pcrBanks: String?
        @Option(
            name: .customLong("ek"),
            help: ArgumentHelp("EKs that get a certificate: rsa, ecc (default: both; needs --ca).", valueName: "LIST")
        )
        var endorsementKeys: String?
        @OptionGroup var signer: CASignerOption
        @OptionGroup var registry: RegistryOption
        @Flag(help: "Replace an existing TPM in the directory.") var overwrite = false

        func validate() throws {
            do {
                _ = try self.options()
            } catch let error as StateToolError {
                throw ValidationError(error.message)
            }
        }

        func options() throws -> StateProvisioner.CreateOptions {
            var options = StateProvisioner.CreateOptions()
            options.pcrBanks = try self.pcrBanks.map(StateProvisioner.PCRBankName.parseList)
            if let endorsementKeys = self.endorsementKeys {
                options.endorsementKeys = try StateProvisioner.EndorsementKeyName.parseList(endorsementKeys)
            }
            return options
        }

        func run() throws {
            try runTool {
                let host = try self.config.load()
                let outcome = try StateProvisioner.create(
                    path: self.state.state,
                    vmID: try ToolDefaults.vmID(self.vmID, host, statePath: self.state.state),
                    caDirectory: self.ca ?? host.caDirectory,
                    caSigner: self.signer.resolved(host, explicitCA: self.ca),
                    registryPath: ToolDefaults.registry(self.registry.registry, host),
                    overwrite: self.overwrite,
                    options: try self.options()
                )
                print(outcome.summary)
            }
        }
    }

    struct Clone: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy a TPM to a new directory under a new vm-id, rekeyed; the source is only read."
        )
        @Option(help: ArgumentHelp("The source state directory.", valueName: "DIR")) var from: String
        @Option(help: ArgumentHelp("The new state directory (missing or empty).", valueName: "DIR")) var to: String
        @Option(
            name: .customLong("vm-id"),
            help: ArgumentHelp(
                "The clone's UUID or name (default: from the host configuration's vm-id-from and --to).",
                valueName: "VM-ID"
            )
        )
        var vmID: String?
        @OptionGroup var ca: CAOption
        @OptionGroup var signer: CASignerOption
        @OptionGroup var registry: RegistryOption
        @OptionGroup var key: KeyOption

        func validate() throws {
            if self.from == self.to { throw ValidationError("--from and --to must be different directories") }
        }

        func run() throws {
            try runTool {
                let host = try self.ca.config.load()
                let outcome = try StateProvisioner.clone(
                    source: self.from,
                    target: self.to,
                    vmID: try ToolDefaults.vmID(self.vmID, host, statePath: self.to),
                    caDirectory: self.signer.resolved(host, explicitCA: self.ca.ca) == nil
                        ? try ToolDefaults.caDirectory(self.ca.ca, host) : nil,
                    caSigner: self.signer.resolved(host, explicitCA: self.ca.ca),
                    registryPath: ToolDefaults.registry(self.registry.registry, host),
                    stateKey: try ToolDefaults.stateKey(self.key.key)
                )
                print(outcome.summary)
            }
        }
    }

    struct Rekey: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give a TPM at rest a new endorsement identity in place (next generation)."
        )
        @OptionGroup var state: StateOption
        @Option(
            name: .customLong("vm-id"),
            help: ArgumentHelp(
                "The VM's UUID or name (needed for a directory without an identity; default: vm-id-from).",
                valueName: "VM-ID"
            )
        )
        var vmID: String?
        @OptionGroup var ca: CAOption
        @OptionGroup var signer: CASignerOption
        @OptionGroup var registry: RegistryOption
        @OptionGroup var key: KeyOption

        func run() throws {
            try runTool {
                let host = try self.ca.config.load()
                let outcome = try StateProvisioner.rekey(
                    path: self.state.state,
                    vmID: self.vmID ?? ToolDefaults.optionalVMID(host, statePath: self.state.state),
                    caDirectory: self.signer.resolved(host, explicitCA: self.ca.ca) == nil
                        ? try ToolDefaults.caDirectory(self.ca.ca, host) : nil,
                    caSigner: self.signer.resolved(host, explicitCA: self.ca.ca),
                    registryPath: ToolDefaults.registry(self.registry.registry, host),
                    stateKey: try ToolDefaults.stateKey(self.key.key)
                )
                print(outcome.summary)
            }
        }
    }
}
