import Foundation
import Registry
import Testing
import VMIdentity

@Suite struct LineageTreeTests {
    /// A manufactured; snapshot s1 at checkpoint 1; B and C cloned from s1; D cloned from B.
    static func build(_ registry: RegistryDatabase) throws -> StateOrigin {
        try registry.beginGeneration(
            vmID: VM.a,
            reason: .manufacture,
            parent: nil,
            event: LineageEventDraft(kind: .manufacture)
        )
        let s1 = StateOrigin(
            vmID: VM.a,
            generation: 0,
            checkpoint: try registry.recordCheckpoint(vmID: VM.a, generation: 0)
        )
        for vm in [VM.b, VM.c] {
            try registry.beginGeneration(
                vmID: vm,
                reason: .clone,
                parent: s1,
                event: LineageEventDraft(kind: .clone, source: s1, durationMicros: 30_000)
            )
        }
        let b0 = StateOrigin(
            vmID: VM.b,
            generation: 0,
            checkpoint: try registry.recordCheckpoint(vmID: VM.b, generation: 0)
        )
        try registry.beginGeneration(
            vmID: VM.d,
            reason: .clone,
            parent: b0,
            event: LineageEventDraft(kind: .clone, source: b0)
        )
        return s1
    }

    @Test func cloneOfACloneAndTwoClonesOfOneSnapshot() throws {
        try withRegistry { registry, _ in
            let s1 = try Self.build(registry)
            let tree = try registry.lineageTree()
            #expect(tree.generations.count == 4)
            #expect(tree.roots.map(\.vmID) == [VM.a])
            #expect(tree.children(of: VM.a, generation: 0).map(\.vmID) == [VM.b, VM.c])
            #expect(tree.children(of: VM.b, generation: 0).map(\.vmID) == [VM.d])
            #expect(tree.children(of: VM.c, generation: 0).isEmpty)
            #expect(tree.edges.count == 3)
            #expect(tree.edges.filter { $0.parent == s1 }.map(\.childVMID) == [VM.b, VM.c])

            // The lineage events name their sources.
            let events = try registry.lineage()
            #expect(events.map(\.kind) == [.manufacture, .clone, .clone, .clone])
            #expect(try registry.lineage(vmID: VM.d).first?.source?.vmID == VM.b)
            #expect(try registry.currentGeneration(vmID: VM.d)?.parent?.vmID == VM.b)
        }
    }

    @Test func rollbackGenerationsChainWithinOneVM() throws {
        try withRegistry { registry, _ in
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            let s1 = StateOrigin(
                vmID: VM.a,
                generation: 0,
                checkpoint: try registry.recordCheckpoint(vmID: VM.a, generation: 0)
            )
            try registry.markRan(vmID: VM.a, generation: 0)
            try registry.beginGeneration(vmID: VM.a, reason: .rollback, parent: s1)
            let tree = try registry.lineageTree()
            #expect(tree.roots.map(\.generation) == [0])
            #expect(tree.children(of: VM.a, generation: 0).map(\.generation) == [1])
            #expect(tree.renderText().split(separator: "\n").count == 2)
        }
    }

    @Test func parentUnknownToTheRegistryMakesARoot() throws {
        try withRegistry { registry, _ in
            let elsewhere = StateOrigin(vmID: VM.c, generation: 2, checkpoint: 4)
            try registry.beginGeneration(vmID: VM.a, reason: .clone, parent: elsewhere)
            let tree = try registry.lineageTree()
            #expect(tree.roots.map(\.vmID) == [VM.a])
            #expect(tree.renderDOT().contains("style=dashed"))
        }
    }

    @Test func rendersTextDOTAndJSON() throws {
        try withRegistry { registry, _ in
            _ = try Self.build(registry)
            let tree = try registry.lineageTree()
            let lines = tree.renderText().split(separator: "\n").map(String.init)
            #expect(lines.count == 4)
            #expect(lines[0].hasPrefix("\(VM.a) gen 0 manufacture"))
            #expect(lines[1].hasPrefix("├── \(VM.b) gen 0 clone of \(VM.a) generation 0 checkpoint 1"))
            #expect(lines[2].hasPrefix("│   └── \(VM.d) gen 0 clone of \(VM.b)"))
            #expect(lines[3].hasPrefix("└── \(VM.c) gen 0 clone"))

            let dot = tree.renderDOT()
            #expect(dot.hasPrefix("digraph lineage {"))
            #expect(dot.contains("\"\(VM.a)/0\" -> \"\(VM.b)/0\" [label=\"clone @1\"];"))
            #expect(dot.contains("\"\(VM.b)/0\" -> \"\(VM.d)/0\""))

            let json = try JSONEncoder().encode(tree)
            #expect(try JSONDecoder().decode(LineageTree.self, from: json) == tree)
        }
    }

    @Test func emptyRegistryRendersNothing() throws {
        try withRegistry { registry, _ in
            let tree = try registry.lineageTree()
            #expect(tree.renderText() == "")
            #expect(tree.roots.isEmpty)
        }
    }
}
