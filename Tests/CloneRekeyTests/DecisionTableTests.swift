import CloneRekey
import Registry
import Testing
import VMIdentity

/// VM identities used by the decision-table tests.
private enum VM {
    static let a = VMID("aaaaaaaa-0000-4000-8000-00000000000a")!
    static let b = VMID("bbbbbbbb-0000-4000-8000-00000000000b")!
    static let c = VMID("cccccccc-0000-4000-8000-00000000000c")!
}

@Suite struct DecisionTableTests {
    static let rekey = DecisionPolicy(onRollback: .rekey, foreignState: .adopt)
    static let keep = DecisionPolicy(onRollback: .keep, foreignState: .rekey)

    static func claim(_ vm: VMID = VM.a, _ generation: UInt64 = 3, _ checkpoint: UInt64? = 5) -> IncomingState {
        .claimed(StateOrigin(vmID: vm, generation: generation, checkpoint: checkpoint))
    }

    static func latest(
        _ checkpoint: UInt64 = 5,
        ranAfter: Bool,
        vm: VMID = VM.a,
        generation: UInt64 = 3
    )
        -> Checkpoint
    {
        Checkpoint(
            vmID: vm,
            generation: generation,
            checkpoint: checkpoint,
            createdAt: Timestamp(microsecondsSinceEpoch: 0),
            ranAfter: ranAfter
        )
    }

    /// Applies the table for VM A at generation 3.
    static func decide(
        _ incoming: IncomingState,
        latest: Checkpoint?,
        own: UInt64? = 3,
        policy: DecisionPolicy = rekey
    ) -> (DecisionTable.Rule, Decision) {
        let rule = DecisionTable.rule(ownVMID: VM.a, ownGeneration: own, incoming: incoming, latestCheckpoint: latest)
        let decision = DecisionTable.decide(
            ownVMID: VM.a,
            ownGeneration: own,
            incoming: incoming,
            latestCheckpoint: latest,
            policy: policy
        )
        return (rule, decision)
    }

    // MARK: One test per row of ARCHITECTURE.md's table

    @Test func invalidWrapperIsRejected() {
        let (rule, decision) = Self.decide(.invalid(reason: "MAC mismatch"), latest: nil)
        #expect(rule == .invalidClaim(reason: "MAC mismatch"))
        #expect(decision == .reject(reason: "MAC mismatch"))
        #expect(!decision.rekeys)
    }

    @Test func anotherVMsStateIsAClone() {
        let incoming = Self.claim(VM.b, 0, 1)
        let (rule, decision) = Self.decide(incoming, latest: Self.latest(1, ranAfter: false, vm: VM.b, generation: 0))
        #expect(rule == .otherVM)
        #expect(decision == .clone(parent: StateOrigin(vmID: VM.b, generation: 0, checkpoint: 1)))
        #expect(decision.rekeys)
        // The registry facts and the policies do not matter.
        #expect(Self.decide(incoming, latest: nil, own: nil, policy: Self.keep).1.name == "clone")
    }

    @Test func olderGenerationIsARollback() {
        let (rule, decision) = Self.decide(
            Self.claim(VM.a, 2, 9),
            latest: Self.latest(9, ranAfter: false, generation: 2)
        )
        #expect(rule == .olderGeneration)
        #expect(decision == .rollback(rekey: true))
        #expect(Self.decide(Self.claim(VM.a, 0, nil), latest: nil, policy: Self.keep).1 == .rollback(rekey: false))
    }

    @Test func sameGenerationRanAfterCheckpointIsARollback() {
        let (rule, decision) = Self.decide(Self.claim(), latest: Self.latest(ranAfter: true))
        #expect(rule == .ranAfterCheckpoint)
        #expect(decision == .rollback(rekey: true))
        #expect(
            Self.decide(Self.claim(), latest: Self.latest(ranAfter: true), policy: Self.keep).1
                == .rollback(rekey: false)
        )
    }

    @Test func sameGenerationLatestCheckpointNothingRanIsAMove() {
        let (rule, decision) = Self.decide(Self.claim(), latest: Self.latest(ranAfter: false))
        #expect(rule == .latestCheckpoint)
        #expect(decision == .move)
        #expect(!decision.rekeys)
    }

    @Test func unwrappedStateFollowsTheForeignStatePolicy() {
        let (rule, adopt) = Self.decide(.unwrapped, latest: nil)
        #expect(rule == .foreign)
        #expect(adopt == .adopt)
        #expect(Self.decide(.unwrapped, latest: nil, policy: Self.keep).1 == .rekeyForeign)
        #expect(Self.decide(.unwrapped, latest: nil, own: nil, policy: Self.keep).1.rekeys)
    }

    // MARK: Edge cases

    @Test func olderCheckpointOfTheSameGenerationIsARollback() {
        // The registry only makes a new checkpoint after the TPM ran, so an older one was run past.
        let (rule, decision) = Self.decide(Self.claim(VM.a, 3, 4), latest: Self.latest(5, ranAfter: false))
        #expect(rule == .olderCheckpoint)
        #expect(decision == .rollback(rekey: true))
    }

    @Test func newerGenerationThanTheRegistryKnowsIsAMove() {
        let (rule, decision) = Self.decide(Self.claim(VM.a, 4, 1), latest: nil)
        #expect(rule == .generationUnknown)
        #expect(decision == .move)
    }

    @Test func ownVMUnknownToTheRegistryIsAMove() {
        // A migration in from a host with its own registry.
        let (rule, decision) = Self.decide(Self.claim(VM.a, 0, 2), latest: nil, own: nil)
        #expect(rule == .generationUnknown)
        #expect(decision == .move)
    }

    @Test func checkpointNewerThanTheLatestIsAMove() {
        let (rule, decision) = Self.decide(Self.claim(VM.a, 3, 6), latest: Self.latest(5, ranAfter: true))
        #expect(rule == .checkpointUnknown)
        #expect(decision == .move)
    }

    @Test func generationWithoutRecordedCheckpointIsAMove() {
        let (rule, decision) = Self.decide(Self.claim(VM.a, 3, 1), latest: nil)
        #expect(rule == .checkpointUnknown)
        #expect(decision == .move)
    }

    @Test func stateDirectoryOfTheCurrentGenerationIsAMove() {
        let (rule, decision) = Self.decide(Self.claim(VM.a, 3, nil), latest: Self.latest(5, ranAfter: true))
        #expect(rule == .noCheckpointClaimed)
        #expect(decision == .move)
    }

    @Test func stateDirectoryOfAnotherVMIsAClone() {
        let (rule, decision) = Self.decide(Self.claim(VM.b, 7, nil), latest: nil)
        #expect(rule == .otherVM)
        #expect(decision == .clone(parent: StateOrigin(vmID: VM.b, generation: 7, checkpoint: nil)))
    }

    @Test func vmIDsCompareIgnoringCase() {
        let incoming = Self.claim(VMID(VM.a.description.uppercased())!, 3, 5)
        let latest = Self.latest(ranAfter: false, vm: VMID(VM.a.description.uppercased())!)
        #expect(Self.decide(incoming, latest: latest).1 == .move)
    }

    @Test func factsOfAnotherGenerationAreIgnored() {
        // A caller that passed the wrong row must not get a move out of it.
        let (rule, _) = Self.decide(Self.claim(VM.a, 3, 5), latest: Self.latest(5, ranAfter: false, generation: 2))
        #expect(rule == .checkpointUnknown)
        let (older, _) = Self.decide(Self.claim(VM.a, 3, 4), latest: Self.latest(9, ranAfter: false, vm: VM.b))
        #expect(older == .checkpointUnknown)
    }

    @Test func checkpointZeroIsOlderThanAnyRecordedCheckpoint() {
        let (rule, decision) = Self.decide(Self.claim(VM.a, 3, 0), latest: Self.latest(1, ranAfter: false))
        #expect(rule == .olderCheckpoint)
        #expect(decision == .rollback(rekey: true))
    }

    @Test(arguments: [
        (DecisionPolicy(onRollback: .rekey, foreignState: .adopt), true, "adopt"),
        (DecisionPolicy(onRollback: .keep, foreignState: .adopt), false, "adopt"),
        (DecisionPolicy(onRollback: .rekey, foreignState: .rekey), true, "rekey-foreign"),
        (DecisionPolicy(onRollback: .keep, foreignState: .rekey), false, "rekey-foreign"),
    ])
    func policiesAffectOnlyTheirRows(policy: DecisionPolicy, rollbackRekeys: Bool, foreign: String) {
        #expect(Self.decide(Self.claim(VM.a, 1, 1), latest: nil, policy: policy).1 == .rollback(rekey: rollbackRekeys))
        #expect(Self.decide(.unwrapped, latest: nil, policy: policy).1.name == foreign)
        #expect(Self.decide(Self.claim(), latest: Self.latest(ranAfter: false), policy: policy).1 == .move)
        #expect(Self.decide(Self.claim(VM.c), latest: nil, policy: policy).1.name == "clone")
    }

    @Test func defaultPolicyIsRekeyOnRollbackAndAdoptForeign() {
        #expect(DecisionPolicy() == DecisionPolicy(onRollback: .rekey, foreignState: .adopt))
        #expect(RollbackPolicy(rawValue: "keep") == .keep && ForeignStatePolicy(rawValue: "rekey") == .rekey)
    }
}
