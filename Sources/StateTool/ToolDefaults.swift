public import CloneRekey
import Foundation
public import StateStore
import VMIdentity
import VTPMServer

/// vtpm-state's defaults from the host configuration vtpmd reads (`--config`, `VTPMD_CONFIG`,
/// `/etc/vtpm/vtpmd.conf`): its `ca`, `registry`, `vm-id` and `vm-id-from`. Options on the command line win.
public enum ToolDefaults {
    /// Loads the host configuration (empty when there is none).
    /// - Throws: ``StateToolError`` (`invalidArgument`) naming the file, line and key.
    public static func hostConfiguration(explicitPath: String?) throws -> HostConfiguration {
        do {
            return try HostConfiguration.load(
                explicitPath: explicitPath,
                environment: ProcessInfo.processInfo.environment
            )
        } catch {
            throw StateToolError(.invalidArgument, "configuration: \(error)")
        }
    }

    /// `--registry`, else the configuration's `registry`, else — when a host configuration exists — vtpmd's
    /// default (`/var/lib/vtpm/registry.sqlite`), so the tool records where vtpmd looks; nil (no registry)
    /// without any.
    public static func registry(_ given: String?, _ host: HostConfiguration) -> String? {
        given ?? host.registryPath ?? (host.source != nil ? "/var/lib/vtpm/registry.sqlite" : nil)
    }

    /// The state key of `--key`, in swtpm's and vtpmd's syntax (`pwdfile=F|pwdfd=N[,kdf=]` or
    /// `file=F|fd=N[,format=]`, `mode=aes-128-cbc|aes-256-cbc`), read as vtpmd reads it; nil without one.
    /// - Throws: ``StateToolError`` (`invalidArgument`) naming what is wrong.
    public static func stateKey(_ text: String?) throws -> StateKey? {
        guard let text else { return nil }
        do { return try CommandLineOptions.parseKey(text, option: "--key") } catch {
            throw StateToolError(.invalidArgument, "\(error)")
        }
    }

    /// `--ca`, else the configuration's `ca`.
    /// - Throws: ``StateToolError`` when neither names one.
    public static func caDirectory(_ given: String?, _ host: HostConfiguration) throws -> String {
        guard let ca = given ?? host.caDirectory else {
            throw StateToolError(.invalidArgument, "give --ca (or ca = DIR in the host configuration)")
        }
        return ca
    }

    /// `--vm-id`, else the configuration's `vm-id`, else its `vm-id-from` applied to `statePath`.
    /// - Throws: ``StateToolError`` when none gives one.
    public static func vmID(_ given: String?, _ host: HostConfiguration, statePath: String) throws -> String {
        if let given { return given }
        if let found = self.optionalVMID(host, statePath: statePath) { return found }
        if let pattern = host.vmIDFrom {
            throw StateToolError(
                .invalidArgument,
                "\(statePath) does not match vm-id-from '\(pattern)' (\(host.source ?? "")): give --vm-id"
            )
        }
        throw StateToolError(.invalidArgument, "give --vm-id (or vm-id-from in the host configuration)")
    }

    /// The configuration's `vm-id`, or its `vm-id-from` applied to `statePath`, or nil.
    public static func optionalVMID(_ host: HostConfiguration, statePath: String) -> String? {
        if let fixed = host.vmID { return fixed.description }
        return host.vmIDFrom?.vmID(forPath: self.absolute(statePath))?.description
    }

    /// `path` made absolute against the working directory.
    public static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }
}
