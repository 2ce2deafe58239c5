import Foundation
import Registry
import StateStore
import TPMWire

/// `vtpm-state hosts`: the hosts of a cluster registry, whose claim-signing keys the registry holds.
public enum HostsCommand {
    /// One host as `hosts list --format json` prints it.
    struct Entry: Encodable {
        var hostID: String
        var name: String
        var publicKey: String
        var registeredAt: String
        var revokedAt: String?
        var revokedReason: String?
    }

    /// The registered hosts, as a table or JSON.
    /// - Throws: ``StateToolError`` (`registry`).
    public static func list(registry location: String, json: Bool) throws -> String {
        let hosts = try self.withRegistry(location) { try $0.hosts() }
        if json {
            return try StateToolJSON.encode(
                hosts.map {
                    Entry(
                        hostID: $0.hostID,
                        name: $0.name,
                        publicKey: $0.publicKey.hexString,
                        registeredAt: "\($0.registeredAt)",
                        revokedAt: $0.revokedAt.map { "\($0)" },
                        revokedReason: $0.revokedReason
                    )
                }
            )
        }
        var text = "HOST ID                           NAME                 REGISTERED                   STATUS\n"
        for host in hosts {
            let status = host.revokedAt.map { "revoked \($0): \(host.revokedReason ?? "")" } ?? "trusted"
            text +=
                "\(host.hostID)  \(self.padded(host.name, 20)) \(self.padded("\(host.registeredAt)", 28)) \(status)\n"
        }
        return text
    }

    /// Revokes a host: every other host of the cluster refuses its claims from now on.
    /// - Throws: ``StateToolError`` (`notFound` for an unknown host, `registry`).
    public static func revoke(registry location: String, hostID: String, reason: String) throws -> String {
        let record = try self.withRegistry(location) { registry in
            guard try registry.host(id: hostID) != nil else {
                throw StateToolError(
                    .notFound,
                    "registry \(PostgresSettings.redacted(location)) knows no host \(hostID)"
                )
            }
            return try registry.revokeHost(id: hostID, reason: reason)
        }
        return "host \(record.hostID) (\(record.name)) revoked: \(record.revokedReason ?? "")\n"
    }

    /// Registers this host (its host key's public half) ahead of vtpmd's first start, which does it too.
    /// - Throws: ``StateToolError`` (`invalidArgument` for an unreadable host key, `registry`).
    public static func register(registry location: String, hostKeyPath: String, name: String) throws -> String {
        let key: HostKey
        do { key = try HostKey.loadOrCreate(path: hostKeyPath) } catch {
            throw StateToolError(.invalidArgument, "host key \(hostKeyPath): \(error.message)")
        }
        let record = try self.withRegistry(location) {
            try $0.registerHost(id: key.id, name: name, publicKey: key.publicKey)
        }
        return "host \(record.hostID) (\(record.name)) "
            + (record.isRevoked ? "is revoked: \(record.revokedReason ?? "")\n" : "registered\n")
    }

    private static func withRegistry<T>(_ location: String, _ body: (RegistryDatabase) throws -> T) throws -> T {
        do {
            let registry = try RegistryLocation(location).open()
            defer { try? registry.close() }
            return try body(registry)
        } catch let error as StateToolError {
            throw error
        } catch {
            throw StateToolError(.registry, "registry \(PostgresSettings.redacted(location)): \(error)")
        }
    }

    private static func padded(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }
}
