import Foundation
import Logging
import Synchronization
import TPMEngine
import TPMWire
import TestSupport
import Testing
import _VTPMPosix

@testable import VTPMServer

/// Log messages kept in memory, to check what an operator would read.
final class CapturedLog: Sendable {
    let lines = Mutex<[String]>([])
    var text: String { self.lines.withLock { $0.joined(separator: "\n") } }

    var logger: Logger {
        Logger(label: "vtpm.test") { _ in Handler(log: self) }
    }

    struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .debug
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            self.log.lines.withLock { $0.append("\(event.level) \(event.message)") }
        }
    }
}

extension ProtocolCoreTests {
    /// Storage faults injected into the real system calls of a commit (``FaultInjection``), on the real file
    /// system, while the guest writes NV: the guest gets TPM_RC_FAILURE, the previous state stays on disk and
    /// loads, no temporary file is left, the log names the errno, and after the fault clears CMD_INIT brings
    /// back the last acknowledged state.
    @Suite
    struct StorageFaultTests {
        static let index: UInt32 = 0x0150_0001

        /// Each step of a commit of `tpm2-00.permall` in `state`, and the rule that fails it. Every rule names a
        /// file of the test's own directory: the rules are process-wide.
        static let steps: [(name: String, rule: @Sendable (Int32, String) -> FaultRule)] = [
            // The spare is opened, then created afresh when that fails: both fail.
            (
                "create",
                { FaultRule(call: .openat, object: "\($1)/.spare.tpm2-00.permall", times: 2, action: .fail($0)) }
            ),
            ("write", { FaultRule(call: .write, object: "\($1)/.spare.tpm2-00.permall", action: .fail($0)) }),
            (
                "short write",
                { FaultRule(call: .write, object: "\($1)/.spare.tpm2-00.permall", action: .shortWrite(then: $0)) }
            ),
            ("fdatasync", { FaultRule(call: .fdatasync, object: "\($1)/.spare.tpm2-00.permall", action: .fail($0)) }),
            ("renameat2", { FaultRule(call: .renameat2, object: "\($1)/tpm2-00.permall", action: .fail($0)) }),
            ("directory fsync", { FaultRule(call: .fsync, object: $1, action: .fail($0)) }),
            ("close", { FaultRule(call: .close, object: "\($1)/.spare.tpm2-00.permall", action: .fail($0)) }),
        ]
        static let errnos: [Int32] = [ENOSPC, EIO, EDQUOT, EROFS]

        static var cases: [(String, Int32)] {
            Self.steps.flatMap { step in Self.errnos.map { (step.name, $0) } }
        }

        static func write(_ h: CoreHarness, _ text: String) -> UInt32? {
            CoreHarness.responseCode(
                h.data(TPM2Commands.nvWrite(index: Self.index, data: Array(text.utf8), offset: 0))
            )
        }

        static func read(_ h: CoreHarness) throws -> String {
            guard case .reply(let r)? = h.data(TPM2Commands.nvRead(index: Self.index, size: 8, offset: 0)).first else {
                return ""
            }
            return String(decoding: try TPM2Responses.parseNVRead(r), as: UTF8.self)
        }

        @Test(arguments: Self.cases)
        func aFailedCommitKeepsTheLastAcknowledgedState(step: String, errno: Int32) throws {
            defer { FaultInjection.clear() }
            try withTemporaryDirectory { dir in
                let log = CapturedLog()
                let h = try CoreHarness(dir: dir, logger: log.logger)
                try h.start()
                let nvPublic = NVPublic(
                    index: Self.index,
                    attributes: [.ppWrite, .ppRead, .authRead, .authWrite, .noDA, .platformCreate],
                    dataSize: 8
                )
                try #require(CoreHarness.responseCode(h.data(TPM2Commands.nvDefineSpace(nvPublic: nvPublic))) == 0)
                try #require(Self.write(h, "AAAAAAAA") == 0)
                let before = try #require(FileManager.default.contents(atPath: "\(h.state)/tpm2-00.permall"))

                let rule = try #require(Self.steps.first { $0.name == step }).rule(errno, h.state)
                FaultInjection.install([rule])
                let rc = Self.write(h, "BBBBBBBB")
                #expect(FaultInjection.firedCounts.first ?? 0 > 0, "the fault did not fire")
                FaultInjection.clear()

                #expect(rc == TPMFrame.rcFailure, "\(step) \(errno): TPM_RC 0x\(String(rc ?? 0, radix: 16))")
                // The previous state is on disk, intact, and nothing is left behind.
                #expect(FileManager.default.contents(atPath: "\(h.state)/tpm2-00.permall") == before)
                let leftovers = try FileManager.default.contentsOfDirectory(atPath: h.state).filter {
                    $0.hasPrefix(".") && $0 != ".lock"
                }
                #expect(leftovers.isEmpty, "\(leftovers)")
                // PosixError's text: the call, the file, strerror and the number.
                let reason = PosixError(errno: errno, function: "").description.dropFirst(2)
                #expect(log.text.contains(reason), "\(FaultInjection.errnoName(errno)): \(log.text)")
                // The fault cleared: CMD_INIT loads the last acknowledged state.
                #expect(h.result(.initialize(flags: 0)) == 0)
                #expect(CoreHarness.responseCode(h.data(TPMCommands.startup())) == 0)
                #expect(try Self.read(h) == "AAAAAAAA")
                // And the TPM commits again.
                #expect(Self.write(h, "CCCCCCCC") == 0)
                #expect(try Self.read(h) == "CCCCCCCC")
            }
        }
    }
}
