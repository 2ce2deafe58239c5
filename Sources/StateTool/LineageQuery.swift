import Foundation
import Registry
import StateStore
import VMIdentity
import _VTPMPosix

/// `vtpm-state lineage`: the clone/rollback tree from the registry.
public enum LineageQuery {
    /// Output formats.
    public enum Format: String, CaseIterable, Sendable {
        case tree, dot, json
    }

    /// Renders the lineage of every VM, or of the generations connected to `vmID` (its own, their
    /// ancestors and their descendants).
    /// - Parameters:
    ///   - registryPath: The registry file (it must exist: it is never created here), or a cluster's
    ///     PostgreSQL URL (the whole cluster's lineage).
    ///   - vmID: A UUID to restrict the tree to, or nil.
    ///   - format: tree (text), dot (Graphviz) or json (`LineageTree`'s Codable form).
    /// - Returns: The rendered text.
    /// - Throws: ``StateToolError``: `notFound` for a missing registry or an unknown vm-id, `invalidArgument`
    ///   for a malformed vm-id, `registry` when the file cannot be read.
    public static func render(registryPath: String, vmID: String?, format: Format) throws -> String {
        let wanted: VMID?
        if let vmID {
            guard let parsed = VMID(vmID) else {
                throw StateToolError(.invalidArgument, "vm-id '\(vmID)' is not \(VMID.syntax)")
            }
            wanted = parsed
        } else {
            wanted = nil
        }
        guard PostgresSettings.isURL(registryPath) || fileStatus(atPath: registryPath) != nil else {
            throw StateToolError(.notFound, "registry \(registryPath) does not exist")
        }
        let tree: LineageTree
        do {
            let registry = try RegistryLocation(registryPath).open()
            tree = try registry.lineageTree()
            try registry.close()
        } catch {
            throw StateToolError(.registry, "cannot read registry \(PostgresSettings.redacted(registryPath)): \(error)")
        }
        var selected = tree
        if let wanted {
            let generations = self.connected(to: wanted, in: tree)
            guard !generations.isEmpty else {
                throw StateToolError(
                    .notFound,
                    "registry \(PostgresSettings.redacted(registryPath)) knows no vm \(wanted)"
                )
            }
            selected = LineageTree(generations: generations)
        }
        switch format {
        case .tree:
            return selected.renderText()
        case .dot:
            return selected.renderDOT()
        case .json:
            return try StateToolJSON.encode(selected)
        }
    }

    /// The generations of `vmID`, everything they descend from and everything descending from them.
    static func connected(to vmID: VMID, in tree: LineageTree) -> [Generation] {
        func key(_ vm: VMID, _ generation: UInt64) -> String { "\(vm)/\(generation)" }
        var byKey: [String: Generation] = [:]
        for g in tree.generations { byKey[key(g.vmID, g.generation)] = g }
        var chosen: Set<String> = []
        var queue = tree.generations.filter { $0.vmID == vmID }
        while let g = queue.popLast() {
            guard chosen.insert(key(g.vmID, g.generation)).inserted else { continue }
            queue += tree.children(of: g.vmID, generation: g.generation)
        }
        let descendants = chosen
        for start in descendants {
            var current = byKey[start]?.parent
            while let parent = current, let g = byKey[key(parent.vmID, parent.generation)] {
                guard chosen.insert(key(g.vmID, g.generation)).inserted else { break }
                current = g.parent
            }
        }
        return tree.generations.filter { chosen.contains(key($0.vmID, $0.generation)) }
    }
}
