import ArgumentParser
import Foundation
import TPMWire
import _VTPMPosix

@main
struct VTPMCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vtpmctl",
        abstract: "Control a running vtpmd (or swtpm) over its control channel, like swtpm_ioctl.",
        discussion: """
            Every subcommand takes --unix PATH or --tcp HOST:PORT (the backend's --ctrl), --timeout SECONDS \
            (per reply, default 10) and --json (one JSON document on stdout). Errors go to stderr; the exit \
            status is 0 on success, 1 on any failure, 64 on a usage error.
            """,
        subcommands: [
            Capabilities.self, Init.self, Stop.self, Shutdown.self, Info.self, Config.self, Established.self,
            ResetEstablished.self, Locality.self, BufferSize.self, StoreVolatile.self, Save.self, Load.self,
            Identity.self,
        ]
    )
}

/// The connection options every subcommand shares.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .customLong("unix"), help: "The control channel's UNIX socket (--ctrl type=unixio,path=PATH).")
    var unixPath: String?
    @Option(
        name: .customLong("tcp"),
        help: "The control channel's TCP address HOST:PORT (--ctrl type=tcp,port=PORT); HOST is IPv4 or localhost."
    )
    var tcp: String?
    @Option(help: "Seconds to wait for each reply.")
    var timeout: Double = 10
    @Flag(help: "Print one JSON document on stdout instead of readable text.")
    var json = false

    func validate() throws {
        guard (self.unixPath == nil) != (self.tcp == nil) else {
            throw ValidationError("give exactly one of --unix PATH or --tcp HOST:PORT")
        }
        if let tcp, Endpoint.tcp(parsing: tcp) == nil {
            throw ValidationError(
                "--tcp '\(tcp)': expected HOST:PORT with an IPv4 HOST (or localhost) and a port 1–65535"
            )
        }
        guard self.timeout > 0, self.timeout <= 3600 else {
            throw ValidationError("--timeout must be between 0 and 3600 seconds")
        }
    }

    var endpoint: Endpoint {
        if let unixPath { return .unix(path: unixPath) }
        return Endpoint.tcp(parsing: self.tcp ?? "") ?? .tcp(host: "127.0.0.1", port: 0)
    }

    func connect() throws(VTPMCtlError) -> ControlConnection {
        try ControlConnection(self.endpoint, timeoutMilliseconds: Int(self.timeout * 1000))
    }
}

/// A subcommand that talks to the control channel: domain errors become a message on stderr and
/// exit status 1.
protocol ControlSubcommand: ParsableCommand {
    var connection: ConnectionOptions { get }
    func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError)
}

extension ControlSubcommand {
    func run() throws {
        do {
            let control = try self.connection.connect()
            try self.execute(control, json: self.connection.json)
        } catch {
            Output.error("vtpmctl: \(error.message)")
            throw ExitCode.failure
        }
    }
}

/// Hints for result codes, by situation.
enum Hint {
    static let needsRunning = [ControlResult.badOrdinal: "the TPM is not running (send `init` first)"]
    static let needsStopped = [ControlResult.badOrdinal: "the TPM is running (send `stop` first)"]
}

/// Limits on what the backend may announce (vtpmd's own limit for blobs is 512 KiB).
enum Limits {
    static let blob = 4 << 20
    static let info = 1 << 20
    static let identity = 64 << 10
}

/// A state blob type as given on the command line.
enum BlobKind: String, ExpressibleByArgument, CaseIterable {
    case permanent, volatile
    var type: StateBlobType { self == .permanent ? .permanent : .volatile }
}

extension VTPMCtl {
    struct Capabilities: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "GET_CAPABILITY: the control commands the backend implements, by name.",
            discussion: "JSON: {\"capabilities\": 65535, \"names\": [\"INIT\", ...]}"
        )
        @OptionGroup var connection: ConnectionOptions

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            try control.send(ControlRequest.getCapability.encoded, for: .getCapability)
            // swtpm 0.7.1: one be64; later: result + be32 caps. The same 8 bytes while the upper half is 0.
            let reply = try control.read(8, of: .getCapability)
            let caps = UInt64(reply.readBigEndianUInt32(at: 0)) << 32 | UInt64(reply.readBigEndianUInt32(at: 4))
            let names = CapabilityNames.names(caps)
            if json {
                struct Out: Encodable {
                    var capabilities: UInt64
                    var names: [String]
                }
                try Output.json(Out(capabilities: caps, names: names))
            } else {
                Output.line("capabilities 0x\(String(caps, radix: 16))")
                for name in names { Output.line("  \(name)") }
            }
        }
    }

    struct Init: ControlSubcommand {
        static let configuration = CommandConfiguration(
            commandName: "init",
            abstract: "INIT: start (or power-cycle) the TPM.",
            discussion: "JSON: {\"ok\": true}"
        )
        @OptionGroup var connection: ConnectionOptions
        @Flag(name: .customLong("delete-volatile"), help: "Delete the volatile state after loading it.")
        var deleteVolatile = false

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            let flags = self.deleteVolatile ? ControlRequest.initFlagDeleteVolatile : 0
            try control.simple(
                .initialize(flags: flags),
                hints: [
                    ControlResult.fail: "the state directory may be locked by another vtpmd or swtpm",
                    ControlResult.tpm2Failure: "corrupt state or a wrong or missing --key (see the backend's log)",
                ]
            )
            if json { try Output.json(OKOutput()) } else { Output.line("TPM initialized") }
        }
    }

    struct Stop: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "STOP: stop the TPM (the backend keeps running).",
            discussion: "JSON: {\"ok\": true}"
        )
        @OptionGroup var connection: ConnectionOptions

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            try control.simple(.stop)
            if json { try Output.json(OKOutput()) } else { Output.line("TPM stopped") }
        }
    }

    struct Shutdown: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "SHUTDOWN: stop the TPM and make the backend exit.",
            discussion: "JSON: {\"ok\": true}"
        )
        @OptionGroup var connection: ConnectionOptions

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            try control.simple(.shutdown)
            if json { try Output.json(OKOutput()) } else { Output.line("backend shut down") }
        }
    }

    struct Info: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "GET_INFO: libtpms' description of the TPM, as indented JSON.",
            discussion: """
                Flags: 1 TPMSpecification, 2 TPMAttributes, 4 TPMFeatures (combine by adding). \
                JSON: the backend's object unchanged, on one line.
                """
        )
        @OptionGroup var connection: ConnectionOptions
        @Option(help: "The GET_INFO flags.")
        var flags: UInt64 = 7

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            var text: [UInt8] = []
            var total = 0
            repeat {
                let request = ControlRequest.getInfo(flags: self.flags, offset: UInt32(text.count))
                let result = try control.begin(request)
                // A backend that refuses an offset at the terminating NUL: the text is complete.
                if result == ControlResult.badParameter, total > 0, text.count == total - 1 { break }
                guard result == ControlResult.success else { throw VTPMCtlError.failed(.getInfo, result) }
                let header = try control.read(8, of: .getInfo, what: "reply header")
                let announced = Int(header.readBigEndianUInt32(at: 0))
                let length = Int(header.readBigEndianUInt32(at: 4))
                if total == 0 { total = announced }
                guard total <= Limits.info, length > 0 || total == text.count, text.count + length <= total else {
                    throw VTPMCtlError(
                        .badReply,
                        "GET_INFO: inconsistent reply (total \(announced), chunk \(length) at offset \(text.count))"
                    )
                }
                text += try control.read(length, of: .getInfo, what: "JSON text")
            } while text.count < total
            if let nul = text.firstIndex(of: 0) { text.removeSubrange(nul...) }
            let object = try JSONText.object(text, what: "GET_INFO")
            Output.line(json ? String(decoding: text, as: UTF8.self) : JSONText.pretty(object))
        }
    }

    struct Config: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "GET_CONFIG: whether a state key and a migration key are configured.",
            discussion: "JSON: {\"flags\": 0, \"migration_key\": false, \"state_key\": false}"
        )
        @OptionGroup var connection: ConnectionOptions

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            let result = try control.begin(.getConfig)
            guard result == ControlResult.success else { throw VTPMCtlError.failed(.getConfig, result) }
            let flags = try control.readUInt32(of: .getConfig, what: "flags")
            let stateKey = flags & 1 != 0
            let migrationKey = flags & 2 != 0
            if json {
                struct Out: Encodable {
                    var flags: UInt32
                    var state_key: Bool
                    var migration_key: Bool
                }
                try Output.json(Out(flags: flags, state_key: stateKey, migration_key: migrationKey))
            } else {
                Output.line("state key (--key): \(stateKey ? "configured" : "not configured")")
                Output.line("migration key (--migration-key): \(migrationKey ? "configured" : "not configured")")
                if flags & ~3 != 0 { Output.line("other flags: 0x\(String(flags & ~3, radix: 16))") }
            }
        }
    }

    struct Established: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "GET_TPMESTABLISHED: the TPM-established flag (needs a running TPM).",
            discussion: "JSON: {\"established\": false}"
        )
        @OptionGroup var connection: ConnectionOptions

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            let result = try control.begin(.getTPMEstablished)
            guard result == ControlResult.success else {
                throw VTPMCtlError.failed(.getTPMEstablished, result, hint: Hint.needsRunning[result])
            }
            let rest = try control.read(4, of: .getTPMEstablished, what: "flag")
            let established = rest[0] & 1 != 0
            if json {
                struct Out: Encodable { var established: Bool }
                try Output.json(Out(established: established))
            } else {
                Output.line("TPM established: \(established ? "yes" : "no")")
            }
        }
    }

    struct ResetEstablished: ControlSubcommand {
        static let configuration = CommandConfiguration(
            commandName: "reset-established",
            abstract: "RESET_TPMESTABLISHED: clear the TPM-established flag (locality 3 or 4; running TPM).",
            discussion: "JSON: {\"ok\": true}"
        )
        @OptionGroup var connection: ConnectionOptions
        @Option(help: "The locality to reset from (libtpms accepts 3 and 4).")
        var locality: UInt8

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            var hints = Hint.needsRunning
            hints[ControlResult.badLocality] = "only localities 3 and 4 may reset the flag"
            try control.simple(.resetTPMEstablished(locality: self.locality), hints: hints)
            if json { try Output.json(OKOutput()) } else { Output.line("TPM established flag reset") }
        }
    }

    struct Locality: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "SET_LOCALITY: the locality of the following TPM commands (0–4).",
            discussion: "JSON: {\"ok\": true}"
        )
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The locality, 0–4.")
        var locality: UInt8

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            try control.simple(
                .setLocality(self.locality),
                hints: [ControlResult.badLocality: "the backend accepts 0–4 (4 only without reject-locality-4)"]
            )
            if json { try Output.json(OKOutput()) } else { Output.line("locality set to \(self.locality)") }
        }
    }

    struct BufferSize: ControlSubcommand {
        static let configuration = CommandConfiguration(
            commandName: "buffer-size",
            abstract: "SET_BUFFERSIZE: show the TPM buffer size, or set it (TPM stopped).",
            discussion: "JSON: {\"maximum\": 4096, \"minimum\": 2808, \"size\": 4096}"
        )
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The new size in bytes (clamped by the backend); omit or 0 to query.")
        var size: UInt32?

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            let result = try control.begin(.setBufferSize(self.size ?? 0))
            guard result == ControlResult.success else {
                throw VTPMCtlError.failed(.setBufferSize, result, hint: Hint.needsStopped[result])
            }
            let rest = try control.read(12, of: .setBufferSize, what: "sizes")
            let (size, minimum, maximum) =
                (rest.readBigEndianUInt32(at: 0), rest.readBigEndianUInt32(at: 4), rest.readBigEndianUInt32(at: 8))
            if json {
                struct Out: Encodable {
                    var size: UInt32
                    var minimum: UInt32
                    var maximum: UInt32
                }
                try Output.json(Out(size: size, minimum: minimum, maximum: maximum))
            } else {
                Output.line("buffer size \(size) (minimum \(minimum), maximum \(maximum))")
            }
        }
    }

    struct StoreVolatile: ControlSubcommand {
        static let configuration = CommandConfiguration(
            commandName: "store-volatile",
            abstract: "STORE_VOLATILE: write the volatile state to the state directory (running TPM).",
            discussion: "JSON: {\"ok\": true}"
        )
        @OptionGroup var connection: ConnectionOptions

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            try control.simple(.storeVolatile, hints: Hint.needsRunning)
            if json { try Output.json(OKOutput()) } else { Output.line("volatile state stored") }
        }
    }

    struct Save: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "GET_STATEBLOB: write a state blob (as QEMU migrates it) to FILE (running TPM).",
            discussion: """
                The blob is requested without the state-key layer, as QEMU does; it is created mode 0600. \
                JSON: {"bytes": N, "file": "FILE", "type": "permanent"}
                """
        )
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "permanent or volatile.")
        var kind: BlobKind
        @Argument(help: "The file to write.")
        var file: String

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            var blob: [UInt8] = []
            var total = 0
            repeat {
                let request = ControlRequest.getStateBlob(
                    flags: StateBlobFlags.decrypted,
                    type: self.kind.type.rawValue,
                    offset: UInt32(blob.count)
                )
                let result = try control.begin(request)
                guard result == ControlResult.success else {
                    var hints = Hint.needsRunning
                    hints[ControlResult.retry] = "the backend has no \(self.kind) blob"
                    throw VTPMCtlError.failed(.getStateBlob, result, hint: hints[result])
                }
                let header = try control.read(12, of: .getStateBlob, what: "reply header")
                let announced = Int(header.readBigEndianUInt32(at: 4))
                let length = Int(header.readBigEndianUInt32(at: 8))
                // swtpm's socket transport sends everything from the offset at once
                // (totlength == length); the ioctl form sends chunks of the total. Accept both.
                if total == 0 { total = announced }
                guard total <= Limits.blob, length > 0 || total == blob.count, blob.count + length <= total else {
                    throw VTPMCtlError(
                        .badReply,
                        "GET_STATEBLOB: inconsistent reply (total \(announced), chunk \(length) at offset \(blob.count))"
                    )
                }
                blob += try control.read(length, of: .getStateBlob, what: "\(self.kind) blob")
            } while blob.count < total
            do {
                try writeSmallFile(path: self.file, contents: blob, mode: 0o600)
            } catch {
                throw VTPMCtlError(.file, "cannot write \(self.file): \(error)")
            }
            if json {
                struct Out: Encodable {
                    var type: String
                    var bytes: Int
                    var file: String
                }
                try Output.json(Out(type: self.kind.rawValue, bytes: blob.count, file: self.file))
            } else {
                Output.line("saved the \(self.kind) blob (\(blob.count) bytes) to \(self.file)")
            }
        }
    }

    struct Load: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "SET_STATEBLOB: send a state blob from FILE (TPM stopped; the next `init` uses it).",
            discussion: "JSON: {\"bytes\": N, \"file\": \"FILE\", \"type\": \"permanent\"}"
        )
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "permanent or volatile.")
        var kind: BlobKind
        @Argument(help: "The file to read (as written by `save` or swtpm_ioctl --save).")
        var file: String

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            let blob: [UInt8]
            do {
                blob = try readWholeFile(path: self.file, maxSize: Limits.blob)
            } catch {
                throw VTPMCtlError(.file, "cannot read \(self.file): \(error)")
            }
            var w = ByteWriter(capacity: 16 + blob.count)
            w.write(ControlCode.setStateBlob.rawValue)
            w.write(UInt32(0))
            w.write(self.kind.type.rawValue)
            w.write(UInt32(blob.count))
            w.write(bytes: blob)
            try control.send(w.bytes, for: .setStateBlob)
            let result = try control.readUInt32(of: .setStateBlob, what: "result")
            guard result == ControlResult.success else {
                var hints = Hint.needsStopped
                hints[ControlResult.keyNotFound] = "the blob is encrypted and the backend has no key for it"
                hints[ControlResult.decryptError] = "wrong key, or a corrupt or tampered blob"
                hints[ControlResult.badParameter] = "not a valid \(self.kind) blob"
                throw VTPMCtlError.failed(.setStateBlob, result, hint: hints[result])
            }
            if json {
                struct Out: Encodable {
                    var type: String
                    var bytes: Int
                    var file: String
                }
                try Output.json(Out(type: self.kind.rawValue, bytes: blob.count, file: self.file))
            } else {
                Output.line("loaded the \(self.kind) blob (\(blob.count) bytes) from \(self.file); `init` uses it")
            }
        }
    }

    struct Identity: ControlSubcommand {
        static let configuration = CommandConfiguration(
            abstract: "VTPM_GET_IDENTITY (vtpmd only): the VM identity, generation and last clone-rekey decision.",
            discussion: """
                Fails (exit 1) against swtpm ("backend does not support identity (TPM_BAD_ORDINAL)") and \
                against a vtpmd started without --vm-id. JSON: the backend's document, \
                {"vm_id": "...", "generation": N (null before the first INIT), "last_decision": \
                "clone|move|rollback|adopt|rekey-foreign|reject|none", "last_decision_at": "ISO-8601" or null, \
                "checkpoint_outstanding": false}
                """
        )
        @OptionGroup var connection: ConnectionOptions

        struct Reply: Decodable {
            var vm_id: String?
            var generation: UInt64?
            var last_decision: String?
            var last_decision_at: String?
            var checkpoint_outstanding: Bool?
        }

        func execute(_ control: ControlConnection, json: Bool) throws(VTPMCtlError) {
            let result = try control.begin(.vtpmGetIdentity)
            if result == ControlResult.badOrdinal {
                throw VTPMCtlError(.unsupported, "backend does not support identity (TPM_BAD_ORDINAL)", result: result)
            }
            guard result == ControlResult.success else { throw VTPMCtlError.failed(.vtpmGetIdentity, result) }
            let length = Int(try control.readUInt32(of: .vtpmGetIdentity, what: "length"))
            guard length <= Limits.identity else {
                throw VTPMCtlError(.badReply, "VTPM_GET_IDENTITY: announced \(length) bytes (limit \(Limits.identity))")
            }
            let body = try control.read(length, of: .vtpmGetIdentity, what: "JSON document")
            let reply: Reply
            do {
                reply = try JSONDecoder().decode(Reply.self, from: Data(body))
            } catch {
                let text = String(decoding: body.prefix(200), as: UTF8.self)
                throw VTPMCtlError(.badReply, "VTPM_GET_IDENTITY: the reply is not the documented JSON: \(text)")
            }
            guard let vmID = reply.vm_id else {
                throw VTPMCtlError(.unsupported, "backend has no VM identity (vtpmd runs without a vm-id)")
            }
            if json {
                Output.line(String(decoding: body, as: UTF8.self))
                return
            }
            Output.line("vm-id:                  \(vmID)")
            Output.line("generation:             \(reply.generation.map { String($0) } ?? "unknown")")
            let decision = reply.last_decision ?? "none"
            Output.line(
                "last decision:          \(decision)" + (reply.last_decision_at.map { " at \($0)" } ?? "")
            )
            Output.line("checkpoint outstanding: \(reply.checkpoint_outstanding == true ? "yes" : "no")")
        }
    }
}
