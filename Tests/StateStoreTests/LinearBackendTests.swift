import Foundation
import Logging
import TestSupport
import Testing

@testable import StateStore

/// `StateDirectory` on a linear state file (`--tpmstate backend-uri=file://PATH`): locking,
/// hostile files, formatting, staging, and the never-silently-manufacture rule.
@Suite struct LinearBackendTests {
    static let logger = Logger(label: "test.linear")

    static func store(_ path: String, durable: Bool = true, key: StateKey? = nil) -> StateDirectory {
        var options = StateDirectory.Options()
        options.durable = durable
        options.stateKey = key
        return StateDirectory(location: .linearFile(path), options: options, logger: Self.logger)
    }

    static func write(_ bytes: [UInt8], to path: String, mode: Int = 0o600) throws {
        try #require(
            FileManager.default.createFile(
                atPath: path,
                contents: Data(bytes),
                attributes: [.posixPermissions: mode]
            )
        )
    }

    static func decodedFile(_ path: String) throws -> LinearStateFile {
        try LinearStateFile(decoding: try #require(fileBytes(path)))
    }

    static func mode(_ path: String) throws -> Int {
        try #require(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
    }

    static let permall: [UInt8] = Array(0..<200).map { UInt8($0) }
    static let volatile: [UInt8] = Array(repeating: 0x5A, count: 3000)

    // MARK: - Creation and formatting

    @Test func missingFileIsCreatedAndFormatted() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            let s = Self.store(path)
            try s.lock()
            #expect(s.isLocked)
            #expect(fileBytes(path) == (try LinearStateFile().encoded))
            #expect(try Self.mode(path) == 0o600)
            // A new file has no trace of an earlier TPM: libtpms may manufacture.
            #expect(try s.load("permall") == nil)
            #expect(try s.presentStates().isEmpty)
        }
    }

    @Test func createdFileGetsTheConfiguredModeWhateverTheUmask() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            var options = StateDirectory.Options()
            options.fileMode = 0o640
            let s = StateDirectory(location: .linearFile(path), options: options, logger: Self.logger)
            try s.lock()
            #expect(try Self.mode(path) == 0o640)
        }
    }

    @Test(arguments: [0, 1, 192, 5000])
    func emptyOrZeroFileIsFormattedAsNew(size: Int) throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            try Self.write([UInt8](repeating: 0, count: size), to: path)
            let s = Self.store(path)
            #expect(try s.load("permall") == nil)
            #expect(fileBytes(path) == (try LinearStateFile().encoded))
        }
    }

    @Test func existingFileModeIsNotChanged() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            try Self.write([], to: path, mode: 0o640)
            let s = Self.store(path)
            try s.lock()
            try s.store("permall", Self.permall)
            #expect(try Self.mode(path) == 0o640)
        }
    }

    // MARK: - Locking

    @Test func lockingTwiceFails() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            do {
                let first = Self.store(path)
                try first.lock()
                let second = Self.store(path)
                #expect(throws: StateStoreError(.locked, "")) { try second.lock() }
                #expect(!second.isLocked)
                // The lock lives on the one descriptor: reading the file elsewhere does not drop it.
                _ = fileBytes(path)
                #expect(throws: StateStoreError(.locked, "")) { try Self.store(path).lock() }
                #expect(first.isLocked)
            }
            // Released with the store.
            let third = Self.store(path)
            try third.lock()
            #expect(third.isLocked)
        }
    }

    @Test func swtpmStyleFcntlLockExcludesUs() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            try Self.write([], to: path)
            // A classic POSIX (process-associated) lock held by another process, as newer swtpm takes.
            let holder = try Daemon(
                "python3",
                [
                    "-c",
                    """
                    import fcntl, os, sys, time
                    fd = os.open(sys.argv[1], os.O_RDWR)
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    open(sys.argv[1] + ".held", "w").close()
                    time.sleep(30)
                    """, path,
                ],
                waitFor: path + ".held"
            )
            #expect(throws: StateStoreError(.locked, "")) { try Self.store(path).lock() }
            holder.kill()
            try Self.store(path).lock()
        }
    }

    // MARK: - Hostile and damaged files

    @Test func symlinkIsRefused() throws {
        try withTemporaryDirectory { dir in
            let target = "\(dir)/real.bin"
            try Self.write(try LinearStateFile(blobs: ["permall": [1, 2, 3]]).encoded, to: target)
            let before = fileBytes(target)
            let link = "\(dir)/state.bin"
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
            #expect(throws: StateStoreError(.hostileFile, "")) { try Self.store(link).lock() }
            // A dangling symlink is not followed to create its target either.
            let dangling = "\(dir)/dangling.bin"
            try FileManager.default.createSymbolicLink(atPath: dangling, withDestinationPath: "\(dir)/created.bin")
            #expect(throws: StateStoreError(.hostileFile, "")) { try Self.store(dangling).lock() }
            #expect(!FileManager.default.fileExists(atPath: "\(dir)/created.bin"))
            #expect(fileBytes(target) == before)
        }
    }

    @Test func nonRegularFilesAreRefused() throws {
        try withTemporaryDirectory { dir in
            let fifo = "\(dir)/fifo"
            let made = try runCommand("mkfifo", ["-m", "600", fifo])
            #expect(made.status == 0)
            #expect(throws: StateStoreError(.hostileFile, "")) { try Self.store(fifo).lock() }
            #expect(throws: StateStoreError(.hostileFile, "")) { try Self.store(dir).lock() }
        }
    }

    @Test func groupWritableFileIsRefused() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            try Self.write(try LinearStateFile().encoded, to: path, mode: 0o666)
            #expect(throws: StateStoreError(.hostileFile, "")) { try Self.store(path).lock() }
            #expect(try Self.mode(path) == 0o666)
        }
    }

    static let damages: [(String, [UInt8])] = [
        ("text", Array("not a state file\n".utf8)),
        ("short", [0x6E, 0x69, 0x6C, 0x6D, 0x70, 0x74, 0x77, 0x73, 1]),
        ("bad-magic", [1] + [UInt8](repeating: 0, count: 300)),
    ]

    @Test(arguments: ["text", "short", "bad-magic", "slot-beyond-end", "newer-version"])
    func undecodableFileIsRefusedAndUntouched(damage: String) throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            var bytes: [UInt8]
            switch damage {
            case "slot-beyond-end":
                bytes = try LinearStateFile(blobs: ["permall": Self.permall]).encoded
                bytes.removeLast(10)
            case "newer-version":
                bytes = try LinearStateFile(blobs: ["permall": Self.permall]).encoded
                bytes[8] = 2
            default:
                bytes = try #require(Self.damages.first { $0.0 == damage }).1
            }
            try Self.write(bytes, to: path)
            let s = Self.store(path)
            #expect(throws: StateStoreError.self) { try s.lock() }
            #expect(throws: StateStoreError.self) { _ = try s.load("permall") }
            #expect(throws: StateStoreError.self) { try s.store("permall", Self.permall) }
            #expect(throws: StateStoreError.self) { _ = try s.presentStates() }
            #expect(fileBytes(path) == bytes, "the \(damage) file was modified")
        }
    }

    @Test func damagedBlobIsAnErrorNotANewTPM() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            do {
                let s = Self.store(path)
                try s.store("permall", Self.permall)
            }
            var file = try Self.decodedFile(path)
            var blob = try #require(file.blobs["permall"])
            blob[blob.count / 2] ^= 0x10
            file.blobs["permall"] = blob
            let bytes = try file.encoded
            try Self.write(bytes, to: path)
            let s = Self.store(path)
            #expect(throws: StateStoreError(.integrity, "")) { _ = try s.load("permall") }
            #expect(fileBytes(path) == bytes)
        }
    }

    // MARK: - Never silently manufacture

    @Test(arguments: ["volatilestate", "savestate"])
    func missingPermallWithOtherBlobsRefusesManufacture(blob: String) throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            let bytes = try LinearStateFile(blobs: [blob: [1, 2, 3, 4]]).encoded
            try Self.write(bytes, to: path)
            let s = Self.store(path)
            #expect(throws: StateStoreError(.refusedManufacture, "")) { _ = try s.load("permall") }
            #expect(fileBytes(path) == bytes)
        }
    }

    @Test func formattedFileWithoutBlobsMayManufacture() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            try Self.write(try LinearStateFile().encoded, to: path)
            #expect(try Self.store(path).load("permall") == nil)
        }
    }

    // MARK: - Blobs

    @Test func storeLoadDeleteRoundTripThroughTheFile() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            do {
                let s = Self.store(path)
                try s.store("permall", Self.permall)
                try s.store("volatilestate", Self.volatile)
                #expect(s.permanentState == Self.permall)
                #expect(try s.load("volatilestate") == Self.volatile)
                // No instance marker in a linear file.
                #expect(try Self.decodedFile(path).blobs.keys.sorted() == ["permall", "volatilestate"])
                let states = try s.presentStates()
                #expect(states.map(\.name) == ["permall", "volatilestate"])
                let onDisk = try Self.decodedFile(path)
                #expect(
                    states.map(\.size) == [
                        Int64(onDisk.blobs["permall"]!.count),
                        Int64(onDisk.blobs["volatilestate"]!.count),
                    ]
                )
                // Blobs are StateFile containers, as in a directory.
                #expect(try StateFile.decode(onDisk.blobs["permall"]!, key: nil).plain == Self.permall)
            }
            do {
                let s = Self.store(path)
                #expect(try s.load("permall") == Self.permall)
                #expect(try s.load("savestate") == nil)
                #expect(try s.delete("volatilestate"))
                #expect(try !s.delete("volatilestate"))
                #expect(try s.load("volatilestate") == nil)
                // A shrinking file is cut to its new length.
                let bytes = try #require(fileBytes(path))
                #expect(bytes == (try LinearStateFile(decoding: bytes).encoded))
                #expect(try Self.decodedFile(path).blobs.keys.sorted() == ["permall"])
            }
        }
    }

    @Test func encryptedBlobsNeedTheKey() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            let key = try StateKey(bytes: [UInt8](repeating: 7, count: 16))
            do {
                let s = Self.store(path, key: key)
                try s.store("permall", Self.permall)
            }
            #expect(try Self.store(path, key: key).load("permall") == Self.permall)
            #expect(throws: StateStoreError.self) { _ = try Self.store(path).load("permall") }
        }
    }

    @Test func writesWithoutFsyncStillLand() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            try Self.store(path, durable: false).store("permall", Self.permall)
            #expect(try Self.store(path).load("permall") == Self.permall)
        }
    }

    // MARK: - Staging

    @Test func commitWritesAllStagedChangesAtOnce() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            let s = Self.store(path)
            try s.store("permall", [1, 2, 3])
            try s.store("volatilestate", Self.volatile)
            let before = try #require(fileBytes(path))
            s.beginStaging()
            #expect(try s.load("permall") == [1, 2, 3])
            try s.store("permall", Self.permall)
            try s.delete("volatilestate")
            // Visible to this store, not yet on disk.
            #expect(try s.load("permall") == Self.permall)
            #expect(try s.load("volatilestate") == nil)
            #expect(fileBytes(path) == before)
            try s.commitStaged()
            let after = try Self.decodedFile(path)
            #expect(after.blobs.keys.sorted() == ["permall"])
            #expect(try StateFile.decode(after.blobs["permall"]!, key: nil).plain == Self.permall)
        }
    }

    @Test func firstManufactureIsStagedUntilCommit() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            let header = try LinearStateFile().encoded
            do {
                let s = Self.store(path)
                s.beginStaging()
                #expect(try s.load("permall") == nil)
                try s.store("permall", Self.permall)
                #expect(fileBytes(path) == header)
                // A failed INIT: the new file stays empty, so the next INIT may manufacture again.
                s.discardStaged()
                #expect(fileBytes(path) == header)
                #expect(try s.load("permall") == nil)
                s.beginStaging()
                try s.store("permall", Self.permall)
                try s.commitStaged()
            }
            #expect(try Self.store(path).load("permall") == Self.permall)
        }
    }

    @Test func discardLeavesTheFileAsItWas() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            let s = Self.store(path)
            try s.store("permall", Self.permall)
            try s.store("volatilestate", Self.volatile)
            let before = try #require(fileBytes(path))
            s.beginStaging()
            try s.store("permall", [9, 9, 9])
            try s.delete("volatilestate")
            s.discardStaged()
            #expect(fileBytes(path) == before)
            #expect(try s.load("volatilestate") == Self.volatile)
        }
    }

    @Test func directoryBackendIsUnchanged() throws {
        try withTemporaryDirectory { dir in
            let s = StateDirectory(path: dir, options: StateDirectory.Options(), logger: Self.logger)
            #expect(s.location == .directory(dir))
            s.beginStaging()
            #expect(try s.load("permall") == nil)
            try s.store("permall", Self.permall)
            #expect(!FileManager.default.fileExists(atPath: "\(dir)/tpm2-00.permall"))
            try s.commitStaged()
            #expect(FileManager.default.fileExists(atPath: "\(dir)/tpm2-00.permall"))
            #expect(FileManager.default.fileExists(atPath: "\(dir)/\(StateDirectory.instanceName)"))
            #expect(try s.presentStates().map(\.name) == ["permall"])
        }
    }
}
