import CASigner
import Crypto
import EndorsementCA
import Foundation
import Logging
import Registry
import Synchronization
import TestSupport
import Testing
import VMIdentity
import _CryptoExtras
import _VTPMPosix

/// Log lines kept in memory, to check that every issuance and refusal is logged.
final class LogLines: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { self.lines.withLock { $0.append(line) } }
    var all: [String] { self.lines.withLock { $0 } }
}

struct MemoryLogHandler: LogHandler {
    let sink: LogLines
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }
    func log(event: LogEvent) { self.sink.append("\(event.level) \(event.message)") }
}

/// The separated signer's policy (``CASignerService/handle(_:peer:)``) on a real CA and registry, without
/// sockets, then once through its socket.
@Suite struct CASignerServiceTests {
    static let vm = VMID("aaaaaaaa-0000-4000-8000-00000000000a")!
    static let other = VMID("bbbbbbbb-0000-4000-8000-00000000000b")!

    static func eccKey() -> EKPublicKey {
        let raw = [UInt8](P256.KeyAgreement.PrivateKey().publicKey.rawRepresentation)
        return .ecc(curve: .p256, x: Array(raw[0..<32]), y: Array(raw[32..<64]))
    }

    static func record(
        _ key: EKPublicKey,
        _ vm: VMID,
        _ generation: UInt64,
        parent: VMID? = nil
    ) throws
        -> EndorsementKeyRecord
    {
        EndorsementKeyRecord(
            vmID: vm,
            generation: generation,
            algorithm: key.isRSA ? .rsa : .ecc,
            publicKeyDigest: try key.digest(),
            parentVMID: parent,
            parentGeneration: parent == nil ? nil : 2
        )
    }

    static func issue(
        _ key: EKPublicKey,
        _ vm: VMID,
        _ generation: UInt64,
        parent: VMID? = nil
    ) throws
        -> SignerMessage.Request
    {
        .issue(
            vmID: vm,
            generation: generation,
            parent: parent.map { ($0, 2) },
            publicKey: try key.subjectPublicKeyInfoDER()
        )
    }

    func withSigner(
        timeout: Int = 2000,
        _ body: (CASignerService, RegistryDatabase, HostCA, LogLines, String) throws -> Void
    ) throws {
        try withTemporaryDirectory { dir in
            let ca = try HostCA.create(at: dir + "/ca")
            let registry = try RegistryDatabase(sqlitePath: dir + "/registry.sqlite")
            let lines = LogLines()
            let logger = Logger(label: "test") { _ in MemoryLogHandler(sink: lines) }
            let service = CASignerService(
                ca: ca,
                registry: registry,
                logger: logger,
                connectionTimeoutMilliseconds: timeout
            )
            try body(service, registry, ca, lines, dir)
        }
    }

    /// Runs `service` on a socket in `dir` for `body`; the serving thread ends afterwards.
    func serving(_ service: CASignerService, in dir: String, _ body: (String) throws -> Void) throws {
        let path = dir + "/signer.sock"
        let listener = try Socket.listenUnix(path: path, mode: 0o600, backlog: 4)
        let thread = Thread { try? service.serve(listener: listener) }
        thread.start()
        defer {
            Socket.shutdown(listener)
            closeDescriptor(listener)
        }
        try body(path)
    }

    @Test func aClientThatDripsItsRequestIsCutOffAndOneProcessHoldsTwoConnections() throws {
        try withSigner(timeout: 600) { service, _, ca, log, dir in
            try serving(service, in: dir) { path in
                // One byte every 250 ms: each read is quick, the whole request is not.
                let drip = try Socket.connectUnix(path: path)
                defer { closeDescriptor(drip) }
                let request = SignerMessage.Request.caCertificate.encoded()
                let framed = [0, 0, 0, UInt8(request.count)] + request
                var closed = false
                for byte in framed {
                    if (try? Socket.sendAll(drip, [byte])) == nil {
                        closed = true
                        break
                    }
                    Thread.sleep(forTimeInterval: 0.25)
                }
                // The signer closed the connection without an answer.
                #expect(closed || (try? Socket.read(drip, max: 64))?.isEmpty == true)
                #expect(log.all.contains { $0.contains("dropped") && $0.contains("deadline") })
                // Two silent connections of this process are held; a third is closed at once.
                let first = try Socket.connectUnix(path: path)
                let second = try Socket.connectUnix(path: path)
                defer {
                    closeDescriptor(first)
                    closeDescriptor(second)
                }
                Thread.sleep(forTimeInterval: 0.1)
                let third = try Socket.connectUnix(path: path)
                defer { closeDescriptor(third) }
                #expect(try waitReadable(third, timeoutMilliseconds: 2000))
                #expect(try Socket.read(third, max: 16).isEmpty)
                #expect(log.all.contains { $0.contains("refused: it holds 2 already") })
                // Once they are cut off, the process is served again.
                Thread.sleep(forTimeInterval: 0.8)
                #expect(try CASignerClient(socketPath: path).caCertificate() == ca.certificateDER)
            }
        }
    }

    @Test func issuesACertificateOnlyForTheKeyTheRegistryRecords() throws {
        try withSigner { service, registry, ca, log, _ in
            let key = Self.eccKey()
            try registry.recordEndorsementKey(try Self.record(key, Self.vm, 0, parent: Self.other))
            let response = service.handle(try Self.issue(key, Self.vm, 0, parent: Self.other), peer: "pid 1")
            #expect(response.status == .issued, "\(response.message)")
            #expect(ca.verify(response.certificate))
            let info = try EKCertificateInfo(der: response.certificate)
            #expect(info.vmID == Self.vm && info.generation == 0 && info.publicKey == key)
            #expect(info.parentVMID == Self.other && info.parentGeneration == 2)
            #expect(log.all.contains { $0.hasPrefix("notice issued EK certificate for \(Self.vm) generation 0") })
            #expect(log.all.contains { $0.contains("to pid 1") })
        }
    }

    @Test func refusesAnotherVMsIdentityAnUnrecordedKeyAndAnotherOrigin() throws {
        try withSigner { service, registry, _, log, _ in
            let key = Self.eccKey()
            try registry.recordEndorsementKey(try Self.record(key, Self.vm, 0))
            // Another VM's identity with this key: nothing is recorded for it.
            let foreign = service.handle(try Self.issue(key, Self.other, 0), peer: "pid 2")
            #expect(foreign.status == .refused && foreign.certificate.isEmpty)
            #expect(foreign.message.contains("records no ecc EK"))
            // The VM's identity with a key the registry does not record.
            let unrecorded = service.handle(try Self.issue(Self.eccKey(), Self.vm, 0), peer: "pid 2")
            #expect(unrecorded.status == .refused && unrecorded.message.contains("not the ecc EK"))
            // The recorded key, named as another VM's clone.
            let origin = service.handle(try Self.issue(key, Self.vm, 0, parent: Self.other), peer: "pid 2")
            #expect(origin.status == .refused && origin.message.contains("origin"))
            // An RSA request where only the ECC key is recorded.
            let rsa = try RSAFixture.key()
            #expect(service.handle(try Self.issue(rsa, Self.vm, 0), peer: "pid 2").status == .refused)
            #expect(log.all.filter { $0.hasPrefix("warning refused") }.count == 4)
            #expect(log.all.allSatisfy { !$0.contains("issued") })
        }
    }

    @Test func refusesAnOlderGeneration() throws {
        try withSigner { service, registry, _, _, _ in
            let old = Self.eccKey()
            try registry.recordEndorsementKey(try Self.record(old, Self.vm, 0))
            try registry.beginGeneration(vmID: Self.vm, reason: .manufacture)
            // Its current generation's certificate can be issued again (a rekey retried after a crash)...
            #expect(service.handle(try Self.issue(old, Self.vm, 0), peer: "p").status == .issued)
            let new = Self.eccKey()
            try registry.recordEndorsementKey(try Self.record(new, Self.vm, 1))
            #expect(service.handle(try Self.issue(new, Self.vm, 1), peer: "p").status == .issued)
            // ...but once the VM is at generation 1, generation 0's key gets nothing.
            try registry.beginGeneration(vmID: Self.vm, reason: .rollback)
            let older = service.handle(try Self.issue(old, Self.vm, 0), peer: "p")
            #expect(older.status == .refused && older.message.contains("older generation"))
        }
    }

    @Test func malformedRequestsAreRefusedAndNothingCrashes() throws {
        try withSigner { service, registry, _, _, _ in
            let key = Self.eccKey()
            try registry.recordEndorsementKey(try Self.record(key, Self.vm, 0))
            let good = try Self.issue(key, Self.vm, 0).encoded()
            #expect(try SignerMessage.Request(decoding: good) == Self.issue(key, Self.vm, 0))
            // Every truncation, and trailing bytes, are rejected as requests.
            for length in 0..<good.count {
                #expect(throws: EndorsementCAError.self) {
                    try SignerMessage.Request(decoding: Array(good[0..<length]))
                }
            }
            #expect(throws: EndorsementCAError.self) { try SignerMessage.Request(decoding: good + [0]) }
            #expect(throws: EndorsementCAError.self) { try SignerMessage.Request(decoding: [2, 1]) }
            #expect(throws: EndorsementCAError.self) { try SignerMessage.Request(decoding: [1, 9]) }
            // A key that is no SubjectPublicKeyInfo is refused by the policy.
            let garbage = SignerMessage.Request.issue(vmID: Self.vm, generation: 0, parent: nil, publicKey: [0x30, 0])
            #expect(service.handle(garbage, peer: "p").status == .refused)
            // Flipped bytes never crash the decoder.
            var generator = SystemRandomNumberGenerator()
            for _ in 0..<2000 {
                var mutated = good
                mutated[Int.random(in: 0..<mutated.count, using: &generator)] = UInt8.random(
                    in: 0...255,
                    using: &generator
                )
                if let request = try? SignerMessage.Request(decoding: mutated) {
                    _ = service.handle(request, peer: "p")
                }
            }
            let response = SignerMessage.Response(status: .refused, message: "no", certificate: [])
            #expect(try SignerMessage.Response(decoding: response.encoded()) == response)
            #expect(throws: EndorsementCAError.self) { try SignerMessage.Response(decoding: [7, 0, 0, 0, 0]) }
        }
    }

    @Test func theClientGetsCertificatesAndRefusalsThroughTheSocket() throws {
        try withSigner { service, registry, ca, _, dir in
            try serving(service, in: dir) { path in
                let client = CASignerClient(socketPath: path)
                #expect(try client.caCertificate() == ca.certificateDER)
                let key = Self.eccKey()
                try registry.recordEndorsementKey(try Self.record(key, Self.vm, 3))
                let request = EKCertificateRequest(publicKey: key, vmID: Self.vm, generation: 3)
                #expect(ca.verify(try client.issueEKCertificate(request)))
                let refused = #expect(throws: EndorsementCAError.self) {
                    try client.issueEKCertificate(EKCertificateRequest(publicKey: key, vmID: Self.other, generation: 3))
                }
                #expect(refused?.code == .refused)
                // A client that connects and says nothing does not hold the others up.
                let silent = try Socket.connectUnix(path: path)
                defer { closeDescriptor(silent) }
                #expect(try client.caCertificate() == ca.certificateDER)
                // Nothing listens: unavailable.
                let missing = #expect(throws: EndorsementCAError.self) {
                    try CASignerClient(socketPath: dir + "/none.sock").caCertificate()
                }
                #expect(missing?.code == .unavailable)
            }
        }
    }
}

enum RSAFixture {
    static func key() throws -> EKPublicKey {
        let key = try _RSA.Encryption.PrivateKey(keySize: .bits2048)
        let primitives = try key.publicKey.getKeyPrimitives()
        let e = [UInt8](primitives.publicExponent).reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }
        return .rsa(modulus: [UInt8](primitives.modulus), exponent: e)
    }
}
