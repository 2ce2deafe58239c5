public import CloneRekey
import Foundation
import StateStore
import VMIdentity
import VTPMServer
import _VTPMPosix

/// `swtpm_setup` as libvirt and Proxmox run it, done by swift-vtpm: installed in swtpm_setup's place
/// (the Debian package diverts `/usr/bin/swtpm_setup` to this program), it manufactures the TPM 2 the
/// way `vtpm-state create` does, with the VM's identity, EK certificates from the host CA naming the VM,
/// the identity indices and generation 0 in the registry, in-process (no emulator is started).
///
/// Identity: the host configuration's `vm-id`, else its `vm-id-from` applied to the state path (what
/// vtpmd will find when it starts on that path, so its first start decides nothing), else `--vmid`
/// (libvirt's `NAME:UUID` gives the UUID). The CA, registry and host configuration are vtpmd's; swtpm_setup's
/// own `--config` file is read only for `active_pcr_banks`.
///
/// What this program does not do itself goes to swtpm's own swtpm_setup (diverted to
/// `swtpm_setup.distrib`, or the next `swtpm_setup` on PATH), which then runs on vtpmd as swtpm: options it
/// does not implement (`--create-spk`, `--write-ek-cert-files`, `--allow-signing`, `--decryption`, RSA 3072,
/// `--display`, `--tpm`, `--create-config-files`, TPM 1.2 ownership options), and a state for which there is
/// no identity or no CA. The first vtpmd start adopts such a state when its path names a VM.
public enum SwtpmSetup {
    /// The swtpm_setup release whose command line this follows.
    public static let emulatedVersion = "0.7.1"

    /// Runs swtpm_setup's command line; returns the exit status (0 success, 1 failure, as swtpm_setup).
    /// - Parameters:
    ///   - arguments: The arguments without the program name.
    ///   - environment: The process environment (`VTPMD_CONFIG`, `PATH`).
    public static func main(arguments: [String], environment: [String: String]) -> Int32 {
        let options: SwtpmSetupOptions
        do {
            options = try SwtpmSetupOptions.parse(arguments)
        } catch {
            FileHandle.standardError.write(Data("swtpm_setup: \(error)\n".utf8))
            print(self.usage)
            return 1
        }
        if options.help || options.helpAsError {
            print(self.usage)
            return options.helpAsError ? 1 : 0
        }
        if options.version {
            print("TPM emulator setup tool version \(self.emulatedVersion) (swift-vtpm)")
            return 0
        }
        if options.printCapabilities {
            print(self.capabilities)
            return 0
        }
        // Options this program does not implement: swtpm's own tool runs with the same arguments, before
        // anything here opens a file, reads a key descriptor or changes user.
        if !options.delegated.isEmpty {
            return self.delegate(
                arguments,
                environment: environment,
                log: SetupLog(),
                reason: "it does not implement " + options.delegated.map { "--\($0)" }.joined(separator: ", ")
            )
        }
        // As swtpm_setup: the user first, then the log file (opened as that user).
        var handOver = arguments
        if let user = options.runas {
            do { try ProcessControl.runAs(user: user) } catch {
                FileHandle.standardError.write(Data("swtpm_setup: cannot run as user \(user): \(error)\n".utf8))
                return 1
            }
            handOver = SwtpmSetupOptions.removingRunas(arguments)
        }
        let log: SetupLog
        do {
            log = try SetupLog(path: options.logfile)
        } catch {
            FileHandle.standardError.write(Data("\((error as? StateToolError)?.message ?? "\(error)")\n".utf8))
            return 1
        }
        for name in options.ignored { log.info("Warning: --\(name) is deprecated and has no effect.") }
        do {
            return try self.run(options, arguments: handOver, environment: environment, log: log)
        } catch {
            log.error((error as? StateToolError)?.message ?? "\(error)")
            log.error("An error occurred. Authoring the TPM state failed.")
            return 1
        }
    }

    private static func run(
        _ options: SwtpmSetupOptions,
        arguments: [String],
        environment: [String: String],
        log: SetupLog
    ) throws -> Int32 {
        guard options.tpm2 else {
            throw StateToolError(.invalidArgument, "vtpmd emulates TPM 2 only: give --tpm2 (TPM 1.2 is not supported)")
        }
        guard let stateArgument = options.tpmState else {
            throw StateToolError(.invalidArgument, "--tpm-state must be provided")
        }
        let location = try self.location(stateArgument)
        let host = try ToolDefaults.hostConfiguration(explicitPath: nil)

        if options.reconfigure {
            guard !options.createEK && !options.createEKCertificate && !options.createPlatformCertificate else {
                throw StateToolError(
                    .invalidArgument,
                    "Reconfiguration is not supported with creation of EK or certificates"
                )
            }
            guard let banks = try self.pcrBanks(options) else { return 0 }
            let changed = try StateProvisioner.reconfigurePCRBanks(
                location: location,
                stateKey: try self.stateKey(options),
                banks: banks
            )
            log.info(
                changed
                    ? "Successfully activated PCR banks \(self.bankList(banks)); active at the TPM's next reset."
                    : "PCR banks \(self.bankList(banks)) already active; state unchanged."
            )
            return 0
        }

        if try self.holdsTPM(location) {
            if options.notOverwrite {
                log.info("Not overwriting existing state file.")
                return 0
            }
            guard options.overwrite else {
                throw StateToolError(.exists, "Found existing TPM state '\(StateDirectory.fileName("permall"))'.")
            }
        }

        let statePath = ToolDefaults.absolute(location.path)
        guard let (vmID, source) = self.identity(options, host, statePath: statePath) else {
            return self.delegate(
                arguments,
                environment: environment,
                log: log,
                reason: "no vm-id for \(statePath): the host configuration's vm-id-from does not match it "
                    + "and --vmid names no UUID"
            )
        }
        guard let caSource = host.caSigner ?? host.caDirectory else {
            return self.delegate(
                arguments,
                environment: environment,
                log: log,
                reason:
                    "the host configuration (\(host.source ?? HostConfiguration.defaultPath)) names no ca or ca-signer"
            )
        }
        // Read only now: a hand-over above gives swtpm's tool the descriptor unread.
        let stateKey = try self.stateKey(options)
        var createOptions = StateProvisioner.CreateOptions()
        createOptions.pcrBanks = try self.pcrBanks(options)
        let user = ProcessControl.effectiveUserID
        log.info("Starting vTPM manufacturing (swift-vtpm) as uid \(user) @ \(Date())")
        let start = ContinuousClock.now
        let outcome = try StateProvisioner.create(
            location: location,
            vmID: vmID,
            caDirectory: host.caDirectory,
            caSigner: host.caSigner,
            registryPath: ToolDefaults.registry(nil, host),
            overwrite: options.overwrite,
            stateKey: stateKey,
            options: createOptions
        )
        let elapsed = ContinuousClock.now - start
        log.info("VM identity \(outcome.vmID) (from \(source)), generation \(outcome.generation).")
        log.info(
            "Successfully created the RSA 2048 and ECC NIST P-256 EKs and their certificates from the CA \(caSource)."
        )
        if stateKey != nil { log.info("The TPM's state is encrypted with the given key.") }
        if let banks = createOptions.pcrBanks {
            log.info("Successfully activated PCR banks \(self.bankList(banks)).")
        }
        if options.createPlatformCertificate {
            log.info("No platform certificate written: the host CA issues EK certificates only.")
        }
        log.info("Successfully authored TPM state in \(elapsed.formatted(.units(allowed: [.milliseconds]))).")
        return 0
    }

    // MARK: pieces

    /// `dir://PATH`, `file://PATH` or a plain directory path.
    static func location(_ text: String) throws -> StateLocation {
        let location: StateLocation
        if text.hasPrefix("dir://") {
            location = .directory(String(text.dropFirst("dir://".count)))
        } else if text.hasPrefix("file://") {
            location = .linearFile(String(text.dropFirst("file://".count)))
        } else {
            location = .directory(text)
        }
        guard !location.path.isEmpty else {
            throw StateToolError(.invalidArgument, "--tpm-state '\(text)' has no path")
        }
        return location
    }

    /// The vm-id and where it came from: the host configuration first (what vtpmd will derive from the
    /// same path), then `--vmid` (`NAME:UUID` or a vm-id).
    public static func identity(
        _ options: SwtpmSetupOptions,
        _ host: HostConfiguration,
        statePath: String
    ) -> (vmID: String, source: String)? {
        if let vm = ToolDefaults.optionalVMID(host, statePath: statePath) {
            let source = host.vmID != nil ? "the host configuration's vm-id" : "the state path, vm-id-from"
            return (vm, source + (host.vmIDFrom.map { " \($0)" } ?? ""))
        }
        guard let given = options.vmid else { return nil }
        if let colon = given.lastIndex(of: ":") {
            let tail = String(given[given.index(after: colon)...])
            if let vm = VMID(tail), vm.isUUID { return (vm.description, "--vmid") }
        }
        if let vm = VMID(given) { return (vm.description, "--vmid") }
        return nil
    }

    /// The PCR banks to activate: `--pcr-banks`, else `active_pcr_banks` of swtpm_setup's configuration
    /// file, else sha256 (swtpm_setup's default); nil for `-` (leave libtpms' allocation).
    static func pcrBanks(_ options: SwtpmSetupOptions) throws -> Set<StateProvisioner.PCRBankName>? {
        var text = options.pcrBanks ?? ""
        if text.split(separator: ",").allSatisfy({ String($0).trimmingBlanks.isEmpty }) {
            text = self.configuredPCRBanks(options.config ?? "/etc/swtpm_setup.conf") ?? "sha256"
        }
        if text == "-" { return nil }
        return try StateProvisioner.PCRBankName.parseList(text)
    }

    /// `active_pcr_banks = LIST` in swtpm_setup's configuration file, or nil.
    static func configuredPCRBanks(_ path: String) -> String? {
        guard let bytes = try? readWholeFile(path: path, maxSize: 64 * 1024) else { return nil }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, String(parts[0]).trimmingBlanks == "active_pcr_banks" else { continue }
            let value = String(parts[1]).trimmingBlanks
            return value.isEmpty ? nil : value
        }
        return nil
    }

    /// The state key swtpm_setup would hand to swtpm (`--key`), read here the same way vtpmd reads it.
    static func stateKey(_ options: SwtpmSetupOptions) throws -> StateKey? {
        var mode = ""
        if let cipher = options.cipher {
            guard ["aes-128-cbc", "aes-cbc", "aes-256-cbc"].contains(cipher) else {
                throw StateToolError(.invalidArgument, "Unsupported cipher \(cipher).")
            }
            mode = ",mode=" + cipher
        }
        let source: String
        if let keyfile = options.keyfile {
            source = "file=\(keyfile)"
        } else if let pwdfile = options.pwdfile {
            source = "pwdfile=\(pwdfile)"
        } else if let fd = options.keyfileFD {
            source = "fd=\(fd)"
        } else if let fd = options.pwdfileFD {
            source = "pwdfd=\(fd)"
        } else {
            return nil
        }
        do {
            return try CommandLineOptions.parseKey(source + mode, option: "the state key")
        } catch {
            throw StateToolError(.invalidArgument, "\(error)")
        }
    }

    /// Whether `location` holds a TPM (a permanent state), as swtpm's `--print-states` reports it.
    static func holdsTPM(_ location: StateLocation) throws -> Bool {
        switch location {
        case .directory(let path):
            return fileStatus(atPath: path + "/" + StateDirectory.fileName("permall")) != nil
        case .linearFile(let path):
            guard fileStatus(atPath: path) != nil else { return false }
            // Which blobs a linear file holds is in its header: no key needed.
            let store = StateDirectory(
                location: location,
                options: StateDirectory.Options(),
                logger: OpenedState.silentLogger
            )
            let present: [(name: String, size: Int64)]
            do {
                present = try Self.presentStates(store)
            } catch {
                throw StateToolError(.damaged, "cannot read the state file \(path): \(error.message)")
            }
            return present.contains { $0.name == "permall" }
        }
    }

    private static func presentStates(_ store: StateDirectory) throws(StateStoreError) -> [(name: String, size: Int64)]
    {
        try store.lock()
        return try store.presentStates()
    }

    static func bankList(_ banks: Set<StateProvisioner.PCRBankName>) -> String {
        banks.map(\.rawValue).sorted().joined(separator: ",")
    }

    // MARK: swtpm's own swtpm_setup

    /// Runs swtpm's swtpm_setup with the same arguments in this process's place, or fails.
    static func delegate(_ arguments: [String], environment: [String: String], log: SetupLog, reason: String) -> Int32 {
        guard let program = self.swtpmSetup(environment: environment) else {
            log.error("swift-vtpm's swtpm_setup cannot do this (\(reason)) and swtpm's swtpm_setup is not installed.")
            return 1
        }
        log.info("Handing over to swtpm's swtpm_setup (\(program)): swift-vtpm's \(reason).")
        do {
            try ProcessControl.replaceProcess(path: program, arguments: ["swtpm_setup"] + arguments)
        } catch {
            log.error("cannot run \(program): \(error)")
            return 1
        }
    }

    /// swtpm's swtpm_setup: `swtpm_setup.distrib` (where dpkg-divert put it) in a PATH directory or
    /// /usr/bin, else a `swtpm_setup` on PATH that is not this program.
    static func swtpmSetup(environment: [String: String]) -> String? {
        let directories = (environment["PATH"] ?? "").split(separator: ":").map(String.init) + ["/usr/bin"]
        let me = ProcessControl.fileIdentity("/proc/self/exe")
        for directory in directories {
            let diverted = directory + "/swtpm_setup.distrib"
            if FileManager.default.isExecutableFile(atPath: diverted) { return diverted }
        }
        for directory in directories {
            let candidate = directory + "/swtpm_setup"
            guard FileManager.default.isExecutableFile(atPath: candidate),
                let identity = ProcessControl.fileIdentity(candidate)
            else { continue }
            if let me, me == identity { continue }
            return candidate
        }
        return nil
    }

    // MARK: texts

    /// What libvirt reads: the features implemented here, as swtpm_setup 0.7.1 names them.
    static var capabilities: String {
        let features = [
            "tpm-2.0", "cmdarg-keyfile-fd", "cmdarg-pwdfile-fd", "cmdarg-reconfigure-pcr-banks", "rsa-keysize-2048",
        ]
        return "{ \"type\": \"swtpm_setup\", \"features\": [ "
            + features.map { "\"\($0)\"" }.joined(separator: ", ")
            + " ], \"version\": \"\(self.emulatedVersion)\" }"
    }

    static let usage = """
        Usage: swtpm_setup [options]   (swift-vtpm's stand-in for swtpm_setup \(emulatedVersion))

        Manufactures a TPM 2 for vtpmd: VM identity, EKs, EK certificates from the host CA
        (vtpmd's host configuration, /etc/vtpm/vtpmd.conf or $VTPMD_CONFIG), identity indices.

          --tpm2                    required (TPM 1.2 is not supported)
          --tpm-state|--tpmstate S  dir://PATH, file://PATH or a directory
          --vmid NAME:UUID          the VM when the host configuration's vm-id-from does not name it
          --createek, --create-ek-cert, --ecc
                                    accepted: both EKs are always created and certified
          --create-platform-cert    accepted: no platform certificate is written
          --lock-nvram              accepted: the certificate indices are PPWRITE (platform only)
          --pcr-banks LIST          PCR banks to activate (default: active_pcr_banks of --config, else sha256)
          --reconfigure             only change the active PCR banks of an existing TPM
          --overwrite, --not-overwrite
                                    replace, or keep quietly, an existing TPM (default: refuse)
          --pwdfile F, --pwdfile-fd N, --keyfile F, --keyfile-fd N, --cipher aes-128-cbc|aes-256-cbc
                                    encrypt the state as swtpm --key would
          --config F                swtpm_setup's configuration file (only active_pcr_banks is read)
          --logfile F               append messages to F
          --runas USER              switch to USER first
          --print-capabilities, --version, --help

        Other swtpm_setup options are handed to swtpm's own swtpm_setup.
        """
}

/// swtpm_setup's messages: to the log file when one is given (appended; a symbolic link is refused),
/// else information to stdout and errors to stderr.
final class SetupLog {
    private let file: FileHandle?

    /// Messages to stdout and stderr.
    init() { self.file = nil }

    /// Messages appended to `path` (created 0644 if missing, as swtpm_setup's fopen does under umask 022);
    /// a symbolic link is refused, without a window between check and open.
    init(path: String?) throws {
        guard let path else {
            self.file = nil
            return
        }
        let fd: Int32
        do { fd = try openForAppending(path: path, mode: 0o644) } catch {
            if error.errno == ELOOP { throw StateToolError(.invalidArgument, "Logfile must not be a symlink.") }
            throw StateToolError(.invalidArgument, "Cannot write to logfile \(path): \(error)")
        }
        self.file = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
    }

    func info(_ text: String) {
        if let file { file.write(Data((text + "\n").utf8)) } else { print(text) }
    }

    func error(_ text: String) {
        if let file { file.write(Data((text + "\n").utf8)) }
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }
}
