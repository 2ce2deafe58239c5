import Foundation
import Registry
import TestSupport
import Testing
import VMIdentity

@Suite struct RegistryDatabaseTests {
    @Test(arguments: StoreKind.available) func ensureIdentityIsIdempotentAndCanonicalizesCase(_ store: StoreKind) throws
    {
        try withRegistry(store) { registry, _ in
            let first = try registry.ensureIdentity(vmID: VMID(VM.a.description.uppercased())!)
            #expect(first.vmID == VM.a)
            let again = try registry.ensureIdentity(vmID: VM.a)
            #expect(again == first)
            #expect(try registry.identity(vmID: VM.a) == first)
            #expect(try registry.identity(vmID: VM.b) == nil)
            #expect(try registry.currentGeneration(vmID: VM.a) == nil)
        }
    }

    @Test(arguments: StoreKind.available) func namedVMIDsAreStoredAsGiven(_ store: StoreKind) throws {
        try withRegistry(store) { registry, _ in
            let proxmox = try #require(VMID("101"))
            let g0 = try registry.beginGeneration(vmID: proxmox, reason: .manufacture)
            #expect(try registry.currentGeneration(vmID: proxmox) == g0)
            #expect(try registry.generations(vmID: nil).map(\.vmID) == [proxmox])
        }
    }

    @Test(arguments: StoreKind.available) func stateWritesAreRecordedOnlyForward(_ store: StoreKind) throws {
        try withRegistry(store) { registry, _ in
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            #expect(try registry.currentGeneration(vmID: VM.a)?.stateWrite == nil)
            #expect(try registry.recordStateWrite(vmID: VM.a, generation: 0, write: 7))
            #expect(try !registry.recordStateWrite(vmID: VM.a, generation: 0, write: 7))
            #expect(try !registry.recordStateWrite(vmID: VM.a, generation: 0, write: 3))
            #expect(try registry.currentGeneration(vmID: VM.a)?.stateWrite == 7)
            #expect(try registry.recordStateWrite(vmID: VM.a, generation: 0, write: 9))
            #expect(try registry.generation(vmID: VM.a, generation: 0)?.stateWrite == 9)
            #expect(throws: RegistryError(.unknownGeneration, "")) {
                try registry.recordStateWrite(vmID: VM.a, generation: 4, write: 1)
            }
        }
    }

    @Test(arguments: StoreKind.available) func generationsCountFromZeroAndRecordParents(_ store: StoreKind) throws {
        try withRegistry(store) { registry, _ in
            let g0 = try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            #expect(g0.generation == 0 && g0.reason == .manufacture && g0.parent == nil)
            let snapshot = StateOrigin(vmID: VM.a, generation: 0, checkpoint: 3)
            let g1 = try registry.beginGeneration(vmID: VM.a, reason: .rollback, parent: snapshot)
            #expect(g1.generation == 1 && g1.reason == .rollback && g1.parent == snapshot)
            #expect(try registry.currentGeneration(vmID: VM.a) == g1)
            #expect(try registry.generation(vmID: VM.a, generation: 0) == g0)
            #expect(try registry.generations(vmID: VM.a) == [g0, g1])

            let clone = try registry.beginGeneration(
                vmID: VM.b,
                reason: .clone,
                parent: StateOrigin(vmID: VMID(VM.a.description.uppercased())!, generation: 1, checkpoint: 1)
            )
            #expect(clone.generation == 0)
            #expect(clone.parent == StateOrigin(vmID: VM.a, generation: 1, checkpoint: 1))
            #expect(try registry.generations(vmID: nil).count == 3)
        }
    }

    @Test(arguments: StoreKind.available) func generationNeverRepeatsAParentGenerationOfTheSameVM(
        _ store: StoreKind
    ) throws {
        try withRegistry(store) { registry, _ in
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            // A state of generation 4, made on another host, arrives and is rekeyed here.
            let next = try registry.beginGeneration(
                vmID: VM.a,
                reason: .rollback,
                parent: StateOrigin(vmID: VM.a, generation: 4, checkpoint: 2)
            )
            #expect(next.generation == 5)
        }
    }

    @Test(arguments: StoreKind.available) func beginGenerationAppendsItsEventInTheSameTransaction(
        _ store: StoreKind
    ) throws {
        try withRegistry(store) { registry, _ in
            let source = StateOrigin(vmID: VM.a, generation: 0, checkpoint: 1)
            let generation = try registry.beginGeneration(
                vmID: VM.b,
                reason: .clone,
                parent: source,
                event: LineageEventDraft(kind: .clone, source: source, durationMicros: 42_000, detail: "rekeyed")
            )
            let events = try registry.lineage(vmID: VM.b)
            #expect(events.count == 1)
            let event = try #require(events.first)
            #expect(event.kind == .clone && event.generation == generation.generation && event.source == source)
            #expect(event.durationMicros == 42_000 && event.detail == "rekeyed")
        }
    }

    @Test(arguments: StoreKind.available) func checkpointsAreMonotonicAndReusedWhileNothingRan(
        _ store: StoreKind
    ) throws {
        try withRegistry(store) { registry, _ in
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            #expect(try registry.latestCheckpoint(vmID: VM.a, generation: 0) == nil)
            #expect(try registry.recordCheckpoint(vmID: VM.a, generation: 0) == 1)
            // GET_STATEBLOB ×3 of one savevm: the same state, the same checkpoint.
            #expect(try registry.recordCheckpoint(vmID: VM.a, generation: 0) == 1)
            #expect(try registry.recordCheckpoint(vmID: VM.a, generation: 0) == 1)
            #expect(try registry.markRan(vmID: VM.a, generation: 0))
            #expect(try registry.recordCheckpoint(vmID: VM.a, generation: 0) == 2)
            var previous: UInt64 = 2
            for _ in 0..<20 {
                try registry.markRan(vmID: VM.a, generation: 0)
                let next = try registry.recordCheckpoint(vmID: VM.a, generation: 0)
                #expect(next == previous + 1)
                previous = next
            }
            // A new generation starts again at 1.
            try registry.beginGeneration(vmID: VM.a, reason: .rollback)
            #expect(try registry.recordCheckpoint(vmID: VM.a, generation: 1) == 1)
            #expect(try registry.latestCheckpoint(vmID: VM.a, generation: 0)?.checkpoint == 22)
        }
    }

    @Test(arguments: StoreKind.available) func markRanSetsRanAfterOnTheLatestCheckpointOnly(_ store: StoreKind) throws {
        try withRegistry(store) { registry, _ in
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            #expect(try registry.markRan(vmID: VM.a, generation: 0) == false)  // no checkpoint yet
            _ = try registry.recordCheckpoint(vmID: VM.a, generation: 0)
            let before = try #require(try registry.latestCheckpoint(vmID: VM.a, generation: 0))
            #expect(before.checkpoint == 1 && before.ranAfter == false)
            #expect(try registry.markRan(vmID: VM.a, generation: 0) == true)
            #expect(try registry.markRan(vmID: VM.a, generation: 0) == false)  // already marked
            let after = try #require(try registry.latestCheckpoint(vmID: VM.a, generation: 0))
            #expect(after.checkpoint == 1 && after.ranAfter)
            _ = try registry.recordCheckpoint(vmID: VM.a, generation: 0)
            #expect(try registry.latestCheckpoint(vmID: VM.a, generation: 0)?.ranAfter == false)
            #expect(try registry.markRan(vmID: VM.b, generation: 0) == false)  // unknown VM: nothing to mark
        }
    }

    @Test(arguments: StoreKind.available) func recordCheckpointNeedsAKnownGeneration(_ store: StoreKind) throws {
        try withRegistry(store) { registry, _ in
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            #expect(throws: RegistryError(.unknownGeneration, "")) {
                try registry.recordCheckpoint(vmID: VM.a, generation: 1)
            }
            #expect(throws: RegistryError(.unknownGeneration, "")) {
                try registry.recordCheckpoint(vmID: VM.b, generation: 0)
            }
            #expect(throws: RegistryError(.invalidArgument, "")) {
                try registry.recordCheckpoint(vmID: VM.a, generation: UInt64.max)
            }
        }
    }

    @Test(arguments: StoreKind.available) func recordArrivalCatchesUpWithANewerClaim(_ store: StoreKind) throws {
        try withRegistry(store) { registry, _ in
            // A VM migrated in from a host with its own registry: nothing known here.
            #expect(try registry.recordArrival(StateOrigin(vmID: VM.a, generation: 2, checkpoint: 7)))
            let generation = try #require(try registry.currentGeneration(vmID: VM.a))
            #expect(generation.generation == 2 && generation.reason == .adopt)
            let latest = try #require(try registry.latestCheckpoint(vmID: VM.a, generation: 2))
            #expect(latest.checkpoint == 7 && latest.ranAfter == false)
            // The same claim again changes nothing; an older checkpoint neither.
            #expect(try registry.recordArrival(StateOrigin(vmID: VM.a, generation: 2, checkpoint: 7)) == false)
            #expect(try registry.recordArrival(StateOrigin(vmID: VM.a, generation: 2, checkpoint: 3)) == false)
            // Running on: the next checkpoint follows the adopted one.
            try registry.markRan(vmID: VM.a, generation: 2)
            #expect(try registry.recordCheckpoint(vmID: VM.a, generation: 2) == 8)
            // A newer checkpoint from elsewhere.
            #expect(try registry.recordArrival(StateOrigin(vmID: VM.a, generation: 2, checkpoint: 12)))
            #expect(try registry.latestCheckpoint(vmID: VM.a, generation: 2)?.checkpoint == 12)
            // A state directory (no checkpoint) of the current generation changes nothing.
            #expect(try registry.recordArrival(StateOrigin(vmID: VM.a, generation: 2, checkpoint: nil)) == false)
        }
    }

    @Test(arguments: StoreKind.available) func appendEventAndLineageOrder(_ store: StoreKind) throws {
        try withRegistry(store) { registry, _ in
            try registry.beginGeneration(vmID: VM.a, reason: .manufacture)
            let e1 = try registry.appendEvent(
                vmID: VM.a,
                generation: 0,
                LineageEventDraft(kind: .manufacture, detail: "EK RSA+ECC")
            )
            let e2 = try registry.appendEvent(
                vmID: VM.a,
                generation: 0,
                LineageEventDraft(kind: .move, source: StateOrigin(vmID: VM.a, generation: 0, checkpoint: 1))
            )
            let e3 = try registry.appendEvent(vmID: VM.b, generation: 0, LineageEventDraft(kind: .adopt))
            #expect(e1.id < e2.id && e2.id < e3.id)
            #expect(e1.at < e2.at)
            #expect(e2.source == StateOrigin(vmID: VM.a, generation: 0, checkpoint: 1))
            #expect(e1.durationMicros == nil && e1.detail == "EK RSA+ECC")
            #expect(try registry.lineage(vmID: VM.a) == [e1, e2])
            #expect(try registry.lineage(vmID: VM.b) == [e3])
            #expect(try registry.lineage() == [e1, e2, e3])
        }
    }

    @Test(arguments: StoreKind.available) func twoConnectionsShareOneRegistry(_ store: StoreKind) throws {
        try withRegistry(store) { first, open in
            let second = try open()
            try first.beginGeneration(vmID: VM.a, reason: .manufacture)
            // Migration source on one connection, destination on the other.
            let checkpoint = try first.recordCheckpoint(vmID: VM.a, generation: 0)
            #expect(try second.latestCheckpoint(vmID: VM.a, generation: 0)?.checkpoint == checkpoint)
            #expect(try second.markRan(vmID: VM.a, generation: 0))
            #expect(try first.latestCheckpoint(vmID: VM.a, generation: 0)?.ranAfter == true)
            #expect(try first.recordCheckpoint(vmID: VM.a, generation: 0) == checkpoint + 1)
            let g1 = try second.beginGeneration(vmID: VM.a, reason: .rollback)
            #expect(try first.currentGeneration(vmID: VM.a) == g1)
        }
    }
}

@Suite
struct CallerNumberedCheckpointTests {
    @Test func checkpointsNumberedByTheCallerAreRecordedOnceAndOnlyForward() throws {
        try withTemporaryDirectory { dir in
            let registry = try RegistryDatabase(sqlitePath: "\(dir)/r.sqlite")
            let vm = try #require(VMID("6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e"))
            let generation = try registry.beginGeneration(vmID: vm, reason: .manufacture, parent: nil, event: nil)
            #expect(try registry.recordCheckpoint(vmID: vm, generation: generation.generation, number: 3))
            #expect(try registry.latestCheckpoint(vmID: vm, generation: generation.generation)?.checkpoint == 3)
            // The same number again, or an older one: nothing changes (a late flush after a migration).
            #expect(try !registry.recordCheckpoint(vmID: vm, generation: generation.generation, number: 3))
            #expect(try !registry.recordCheckpoint(vmID: vm, generation: generation.generation, number: 2))
            #expect(try registry.latestCheckpoint(vmID: vm, generation: generation.generation)?.checkpoint == 3)
            // It behaves like any other checkpoint for "ran after".
            #expect(try registry.markRan(vmID: vm, generation: generation.generation))
            #expect(try registry.latestCheckpoint(vmID: vm, generation: generation.generation)?.ranAfter == true)
            #expect(throws: RegistryError.self) {
                try registry.recordCheckpoint(vmID: vm, generation: 9, number: 1)
            }
        }
    }
}
