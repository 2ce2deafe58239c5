import Foundation
import TestSupport
import Testing
import _VTPMPosix

extension ProtocolCoreTests {
    /// The fault layer itself: rules as `VTPM_FAULTS` writes them, and what they do to real calls on real files.
    @Suite
    struct FaultInjectionTests {
        @Test func specificationsParseAndPrintBack() throws {
            let rules = try FaultInjection.parse(
                "fdatasync:EIO:object=permall;write:short-ENOSPC:skip=2:times=3;any:crash:when=serving"
            )
            #expect(rules.count == 3)
            #expect(rules[0] == FaultRule(call: .fdatasync, object: "permall", action: .fail(EIO)))
            #expect(rules[1] == FaultRule(call: .write, skip: 2, times: 3, action: .shortWrite(then: ENOSPC)))
            #expect(rules[2] == FaultRule(call: nil, whenServing: true, action: .crash))
            #expect(
                rules.map(\.description).joined(separator: ";")
                    == "fdatasync:EIO:object=permall;write:short-ENOSPC:skip=2:times=3;any:crash:when=serving"
            )
        }

        @Test(arguments: [
            "", "fsync", "nosuchcall:EIO", "fsync:ENOTANERRNO", "fsync:EIO:skip=-1", "fsync:EIO:when=later",
            "fsync:EIO:x",
        ])
        func badSpecificationsAreRefused(_ spec: String) {
            if spec.isEmpty {
                #expect((try? FaultInjection.parse(spec))?.isEmpty == true)
            } else {
                #expect(throws: PosixError.self) { try FaultInjection.parse(spec) }
            }
        }

        @Test func skipAndTimesCountMatchingCallsOnly() throws {
            defer { FaultInjection.clear() }
            try withTemporaryDirectory { dir in
                let handle = try DirectoryHandle.open(dir)
                defer { handle.close() }
                FaultInjection.install([
                    FaultRule(call: .fdatasync, object: "\(dir)/.spare.b", skip: 1, times: 2, action: .fail(EIO))
                ])
                // Writes of another file do not count; b's first passes, the next two fail, then they pass again.
                try handle.writeFileAtomically("a", contents: [1])
                try handle.writeFileAtomically("b", contents: [1])
                for _ in 0..<2 {
                    #expect(throws: PosixError(errno: EIO, function: "fdatasync", object: "\(dir)/.spare.b")) {
                        try handle.writeFileAtomically("b", contents: [2])
                    }
                }
                try handle.writeFileAtomically("b", contents: [3])
                #expect(FaultInjection.firedCounts == [2])
                #expect(FileManager.default.contents(atPath: "\(dir)/b") == Data([3]))
            }
        }

        @Test func aShortWriteStoresPartOfTheBytesAndTheNextWriteFails() throws {
            defer { FaultInjection.clear() }
            try withTemporaryDirectory { dir in
                let handle = try DirectoryHandle.open(dir)
                defer { handle.close() }
                try handle.writeFileAtomically("f", contents: Array(repeating: 1, count: 100))
                FaultInjection.install([
                    FaultRule(call: .write, object: "\(dir)/.spare.f", action: .shortWrite(then: ENOSPC))
                ])
                #expect(throws: PosixError(errno: ENOSPC, function: "write", object: "\(dir)/.spare.f")) {
                    try handle.writeFileAtomically("f", contents: Array(repeating: 2, count: 1000))
                }
                #expect(FileManager.default.contents(atPath: "\(dir)/f") == Data(repeating: 1, count: 100))
                #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["f"])
            }
        }

        @Test func rulesMarkedWhenServingWaitForTheProcessToServe() throws {
            defer { FaultInjection.clear() }
            try withTemporaryDirectory { dir in
                let handle = try DirectoryHandle.open(dir)
                defer { handle.close() }
                FaultInjection.install([
                    FaultRule(call: .renameat2, object: "\(dir)/g", whenServing: true, action: .fail(EROFS))
                ])
                // This process never "serves" (startServing is vtpmd's): the rule stays asleep.
                try handle.writeFileAtomically("g", contents: [1])
                try handle.writeFileAtomically("g", contents: [2])
                #expect(FaultInjection.firedCounts == [0])
            }
        }

        @Test func aRegistryFileThatCannotBeCreatedLeavesNothingBehind() throws {
            defer { FaultInjection.clear() }
            try withTemporaryDirectory { dir in
                let handle = try DirectoryHandle.open(dir)
                defer { handle.close() }
                FaultInjection.install([
                    FaultRule(call: .linkat, object: "\(dir)/registry.sqlite", action: .fail(EDQUOT))
                ])
                #expect(throws: PosixError(errno: EDQUOT, function: "linkat", object: "\(dir)/registry.sqlite")) {
                    _ = try handle.createFileExclusively("registry.sqlite", contents: [], mode: 0o600)
                }
                #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
            }
        }
    }
}
