public import VMIdentity

/// The parent/child graph of generations across VMs, for `vtpm-state lineage --format tree|dot|json`.
///
/// A node is one generation (vmID, generation). An edge goes from the state a generation was made from
/// (its ``Generation/parent``: another VM for a clone, the same VM for a rollback) to that generation.
/// Generations without a parent (manufactured, adopted), or whose parent the registry does not know
/// (a clone of a VM recorded in another host's registry), are roots. JSON is this value's `Codable` form.
public struct LineageTree: Hashable, Sendable, Codable {
    /// A parent → child edge.
    public struct Edge: Hashable, Sendable, Codable {
        /// The state the child was made from.
        public var parent: StateOrigin
        /// The child's vmID.
        public var childVMID: VMID
        /// The child's generation.
        public var childGeneration: UInt64
        /// Why the child began.
        public var reason: Generation.Reason
    }

    /// The identity of a node: (vmID, generation).
    public struct NodeID: Hashable, Sendable, Codable, CustomStringConvertible {
        /// The VM identity.
        public var vmID: VMID
        /// The generation.
        public var generation: UInt64
        public var description: String { "\(self.vmID) gen \(self.generation)" }
    }

    /// Every generation, ordered by vmID and generation.
    public var generations: [Generation]
    /// Every edge, in the order of ``generations`` (by child).
    public var edges: [Edge]

    /// Builds the graph from generation records.
    /// - Parameter generations: The generations (any order).
    public init(generations: [Generation]) {
        self.generations = generations.sorted {
            ($0.vmID, $0.generation) < ($1.vmID, $1.generation)
        }
        self.edges = self.generations.compactMap { g in
            g.parent.map { Edge(parent: $0, childVMID: g.vmID, childGeneration: g.generation, reason: g.reason) }
        }
    }

    private var known: Set<NodeID> {
        Set(self.generations.map { NodeID(vmID: $0.vmID, generation: $0.generation) })
    }

    /// Generations without a parent the registry knows, ordered by creation time.
    public var roots: [Generation] {
        let known = self.known
        return self.generations.filter { g in
            guard let parent = g.parent else { return true }
            return !known.contains(NodeID(vmID: parent.vmID, generation: parent.generation))
        }.sorted { ($0.createdAt, $0.vmID, $0.generation) < ($1.createdAt, $1.vmID, $1.generation) }
    }

    /// The generations made from (vmID, generation), ordered by creation time.
    /// - Parameters:
    ///   - vmID: The parent's vmID.
    ///   - generation: The parent's generation.
    /// - Returns: The children.
    public func children(of vmID: VMID, generation: UInt64) -> [Generation] {
        self.generations.filter { g in
            guard let parent = g.parent else { return false }
            return parent.vmID == vmID && parent.generation == generation
                && !(g.vmID == vmID && g.generation == generation)
        }.sorted { ($0.createdAt, $0.vmID, $0.generation) < ($1.createdAt, $1.vmID, $1.generation) }
    }

    /// An indented text tree, one line per generation.
    ///
    /// ```
    /// 1111…-… gen 0 manufacture
    /// ├── 2222…-… gen 0 clone of 1111…-… gen 0 checkpoint 1
    /// │   └── 3333…-… gen 0 clone of 2222…-… gen 0 checkpoint 1
    /// └── 4444…-… gen 0 clone of 1111…-… gen 0 checkpoint 1
    /// ```
    /// - Returns: The text, ending with a newline (empty for an empty registry).
    public func renderText() -> String {
        var lines: [String] = []
        var visited: Set<NodeID> = []
        func label(_ g: Generation) -> String {
            var text = "\(g.vmID) gen \(g.generation) \(g.reason)"
            if let parent = g.parent { text += " of \(parent)" }
            return text + " at \(g.createdAt)"
        }
        func walk(_ g: Generation, prefix: String, connector: String, childPrefix: String) {
            let id = NodeID(vmID: g.vmID, generation: g.generation)
            guard visited.insert(id).inserted else { return }
            lines.append(prefix + connector + label(g))
            let children = self.children(of: g.vmID, generation: g.generation)
            for (index, child) in children.enumerated() {
                let last = index == children.count - 1
                walk(
                    child,
                    prefix: prefix + childPrefix,
                    connector: last ? "└── " : "├── ",
                    childPrefix: last ? "    " : "│   "
                )
            }
        }
        for root in self.roots {
            walk(root, prefix: "", connector: "", childPrefix: "")
        }
        // A cycle cannot come from beginGeneration; print anything not reached anyway.
        for g in self.generations where !visited.contains(NodeID(vmID: g.vmID, generation: g.generation)) {
            walk(g, prefix: "", connector: "", childPrefix: "")
        }
        return lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
    }

    /// A Graphviz `digraph`: one node per generation (parents unknown to the registry drawn dashed),
    /// one edge per parent link, labelled with the reason and the parent's checkpoint.
    /// - Returns: The DOT text.
    public func renderDOT() -> String {
        func quoted(_ text: String) -> String {
            var out = "\""
            for character in text {
                if character == "\"" { out += "\\\"" } else { out.append(character) }
            }
            return out + "\""
        }
        func node(_ vmID: VMID, _ generation: UInt64) -> String { quoted("\(vmID)/\(generation)") }
        var out = "digraph lineage {\n    rankdir=LR;\n    node [shape=box];\n"
        let known = self.known
        var external: Set<NodeID> = []
        for g in self.generations {
            out +=
                "    \(node(g.vmID, g.generation)) [label=\(quoted("\(g.vmID)\\ngen \(g.generation) \(g.reason)"))];\n"
        }
        for edge in self.edges {
            let parent = NodeID(vmID: edge.parent.vmID, generation: edge.parent.generation)
            if !known.contains(parent), external.insert(parent).inserted {
                out += "    \(node(parent.vmID, parent.generation)) "
                out += "[label=\(quoted("\(parent.vmID)\\ngen \(parent.generation)")), style=dashed];\n"
            }
            var label = edge.reason.rawValue
            if let checkpoint = edge.parent.checkpoint { label += " @\(checkpoint)" }
            out += "    \(node(parent.vmID, parent.generation)) -> \(node(edge.childVMID, edge.childGeneration))"
            out += " [label=\(quoted(label))];\n"
        }
        return out + "}\n"
    }
}
