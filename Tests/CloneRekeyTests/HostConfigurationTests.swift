import CloneRekey
import Foundation
import Registry
import StateStore
import TestSupport
import Testing
import VMIdentity

@Suite struct HostConfigurationTests {
    static func parse(_ text: String) throws(HostConfigurationError) -> HostConfiguration {
        try HostConfiguration.parse(Array(text.utf8), source: "/etc/vtpm/vtpmd.conf")
    }

    @Test func parsesEveryKeyCommentsAndBlanks() throws {
        let c = try Self.parse(
            """
            # clone-rekey for every VM libvirt starts
              vm-id-from = /var/lib/libvirt/swtpm/{uuid}/tpm2

            ca=/var/lib/vtpm/ca
            registry = /var/lib/vtpm/registry.sqlite\r
            host-key = /var/lib/vtpm/host.key
            on-rollback = keep
            foreign-state = rekey
            """
        )
        #expect(c.vmIDFrom?.placeholder == .uuid)
        #expect(c.caDirectory == "/var/lib/vtpm/ca")
        #expect(c.registryPath == "/var/lib/vtpm/registry.sqlite")
        #expect(c.hostKeyPath == "/var/lib/vtpm/host.key")
        #expect(c.onRollback == .keep && c.foreignState == .rekey)
        #expect(c.vmID == nil)
    }

    @Test(
        arguments: [
            ("ca = /x\nbogus = 1\n", 2, "bogus", "unknown key"),
            ("ca = /x\nca = /y\n", 2, "ca", "given twice"),
            ("registry\n", 1, nil, "expected 'key = value'"),
            ("ca = relative/dir\n", 1, "ca", "not an absolute path"),
            ("on-rollback = maybe\n", 1, "on-rollback", "rekey or keep"),
            ("foreign-state = drop\n", 1, "foreign-state", "adopt or rekey"),
            ("vm-id = a/b\n", 1, "vm-id", "is not a UUID"),
            ("\n\nvm-id-from = /var/lib/libvirt/swtpm/tpm2\n", 3, "vm-id-from", "no placeholder"),
            ("vm-id-from = /x/{uuid}/{name}\n", 1, "vm-id-from", "more than one placeholder"),
            ("vm-id-from = /x/{vm}\n", 1, "vm-id-from", "unknown placeholder"),
            ("vm-id-from = x/{uuid}\n", 1, "vm-id-from", "not an absolute path"),
            ("ca =\n", 1, "ca", "needs a value"),
        ] as [(String, Int, String?, String)]
    )
    func badLinesNameTheFileLineAndKey(_ text: String, _ line: Int, _ key: String?, _ message: String) {
        do {
            _ = try Self.parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.file == "/etc/vtpm/vtpmd.conf")
            #expect(error.line == line)
            #expect(error.key == key)
            #expect(error.description.contains(message), "\(error)")
            #expect(error.description.hasPrefix("/etc/vtpm/vtpmd.conf:\(line)"))
        }
    }

    @Test func vmIDAndPatternExcludeEachOther() {
        #expect(throws: HostConfigurationError.self) {
            try Self.parse("vm-id = 101\nvm-id-from = /x/{name}\n")
        }
    }

    @Test func loadsExplicitThenEnvironmentThenDefaultFile() throws {
        try withTemporaryDirectory { dir in
            let explicit = "\(dir)/explicit.conf"
            let named = "\(dir)/named.conf"
            let fallback = "\(dir)/default.conf"
            try "ca = /explicit\n".write(toFile: explicit, atomically: true, encoding: .utf8)
            try "ca = /named\n".write(toFile: named, atomically: true, encoding: .utf8)
            try "ca = /default\n".write(toFile: fallback, atomically: true, encoding: .utf8)
            let env = ["VTPMD_CONFIG": named]
            #expect(try HostConfiguration.load(explicitPath: explicit, environment: env).caDirectory == "/explicit")
            #expect(
                try HostConfiguration.load(explicitPath: nil, environment: env, defaultPath: fallback).caDirectory
                    == "/named"
            )
            #expect(
                try HostConfiguration.load(explicitPath: nil, environment: [:], defaultPath: fallback).caDirectory
                    == "/default"
            )
            // No file anywhere: an empty configuration, today's behaviour.
            let none = try HostConfiguration.load(explicitPath: nil, environment: [:], defaultPath: "\(dir)/missing")
            #expect(none == HostConfiguration())
            // A named file that is missing, or writable by others, is an error naming it.
            #expect(throws: HostConfigurationError.self) {
                try HostConfiguration.load(explicitPath: "\(dir)/missing", environment: [:])
            }
            try FileManager.default.setAttributes([.posixPermissions: 0o666], ofItemAtPath: named)
            do {
                _ = try HostConfiguration.load(explicitPath: nil, environment: env)
                Issue.record("a world-writable configuration was accepted")
            } catch {
                #expect("\(error)".contains(named) && "\(error)".contains("writable"))
            }
        }
    }
}

@Suite struct VMIDPatternTests {
    @Test func libvirtsUUIDDirectories() throws {
        let p = try VMIDPattern("/var/lib/libvirt/swtpm/{uuid}/tpm2")
        let uuid = "6F1C1A52-3C1E-4A57-9D0E-4F3B2A1C0D9E"
        #expect(p.vmID(forPath: "/var/lib/libvirt/swtpm/\(uuid)/tpm2") == VMID(uuid))
        #expect(p.vmID(forPath: "/var/lib/libvirt/swtpm/\(uuid)/tpm2/") == VMID(uuid))
        #expect(p.vmID(forPath: "//var/lib/libvirt/./swtpm/\(uuid)//tpm2") == VMID(uuid))
        #expect(p.vmID(forPath: "/var/lib/libvirt/swtpm/101/tpm2") == nil)
        #expect(p.vmID(forPath: "/var/lib/libvirt/swtpm/\(uuid)/tpm2/x") == nil)
        #expect(p.vmID(forPath: "/srv/\(uuid)/tpm2") == nil)
    }

    @Test func aUUIDPlaceholderSpansExactlyOneUUID() throws {
        let p = try VMIDPattern("/srv/{uuid}-*/tpm")
        let uuid = "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e"
        #expect(p.vmID(forPath: "/srv/\(uuid)-a/tpm") == VMID(uuid))
        #expect(p.vmID(forPath: "/srv/\(uuid)/tpm") == nil)
        #expect(p.vmID(forPath: "/srv/6f1c1a52-a/tpm") == nil)
    }

    @Test func proxmoxVolumesByNumber() throws {
        let dir = try VMIDPattern("/var/lib/vz/images/{name}/vm-*-disk-*.raw")
        #expect(dir.vmID(forPath: "/var/lib/vz/images/101/vm-101-disk-1.raw") == VMID("101"))
        #expect(dir.vmID(forPath: "/var/lib/vz/images/101/sub/vm-101-disk-1.raw") == nil)
        let lvm = try VMIDPattern("/dev/pve/vm-{name}-disk-*")
        #expect(lvm.vmID(forPath: "/dev/pve/vm-205-disk-0") == VMID("205"))
        #expect(lvm.vmID(forPath: "/dev/pve/base-205-disk-0") == nil)
    }
}

@Suite(.serialized) struct CloneRekeyCoordinatorTests {
    static let a = VMID("aaaaaaaa-0000-4000-8000-00000000000a")!
    static let b = VMID("bbbbbbbb-0000-4000-8000-00000000000b")!

    @Test func decidesWithTheRegistrysFactsForBlobsAndStatesAtRest() throws {
        try withTemporaryDirectory { dir in
            let registry = try RegistryDatabase(sqlitePath: "\(dir)/r.sqlite")
            let coordinator = CloneRekeyCoordinator(vmID: Self.a, registry: registry, ca: .none)
            try registry.beginGeneration(vmID: Self.a, reason: .manufacture)
            let checkpoint = try registry.recordCheckpoint(vmID: Self.a, generation: 0)
            let claim = IncomingState.claimed(StateOrigin(vmID: Self.a, generation: 0, checkpoint: checkpoint))
            #expect(try coordinator.decide(claim).decision == .move)
            try registry.markRan(vmID: Self.a, generation: 0)
            #expect(try coordinator.decide(claim).decision == .rollback(rekey: true))
            let other = CloneRekeyCoordinator(vmID: Self.b, registry: registry, ca: .none)
            let source = StateOrigin(vmID: Self.a, generation: 0, checkpoint: checkpoint)
            #expect(try other.decide(.claimed(source)).decision == .clone(parent: source))

            // At rest: the registry saw write 10 committed at generation 0.
            try registry.recordStateWrite(vmID: Self.a, generation: 0, write: 10)
            func atRest(_ generation: UInt64, _ write: UInt64?) -> IncomingState {
                CloneRekeyCoordinator.incomingAtRest(
                    InstanceIdentity(vmID: Self.a, generation: generation),
                    stateWrite: write
                )
            }
            #expect(try coordinator.decide(atRest(0, 10)).rule == .currentAtRest)
            #expect(try coordinator.decide(atRest(0, 14)).rule == .currentAtRest)  // a crash: disk ahead
            #expect(try coordinator.decide(atRest(0, nil)).rule == .currentAtRest)  // swtpm rewrote it
            let restored = try coordinator.decide(atRest(0, 9))
            #expect(restored.rule == .olderWrite && restored.decision == .rollback(rekey: true))
            try registry.beginGeneration(vmID: Self.a, reason: .rollback)
            #expect(try coordinator.decide(atRest(0, 99)).rule == .olderGeneration)
            #expect(try coordinator.decide(atRest(5, 1)).rule == .generationUnknown)
            #expect(
                try other.decide(atRest(1, 1)).decision
                    == .clone(parent: StateOrigin(vmID: Self.a, generation: 1, checkpoint: nil))
            )
            #expect(try coordinator.decide(CloneRekeyCoordinator.incomingAtRest(nil, stateWrite: 3)).decision == .adopt)
            let keep = CloneRekeyCoordinator(
                vmID: Self.a,
                registry: registry,
                ca: .none,
                policy: DecisionPolicy(onRollback: .keep, foreignState: .rekey)
            )
            #expect(try keep.decide(atRest(0, 1)).decision == .rollback(rekey: false))
            #expect(
                try keep.decide(CloneRekeyCoordinator.incomingAtRest(nil, stateWrite: nil)).decision == .rekeyForeign
            )
        }
    }
}
