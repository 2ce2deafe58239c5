internal import CVTPMShims
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The file-system calls ``Sys`` makes, as fault rules name them.
package enum Syscall: String, Sendable, CaseIterable {
    case openat, read, write, ftruncate, fchmod, fdatasync, fsync, renameat, renameat2, linkat, unlinkat, mkdirat, close
    case pwrite
    /// `openat` for reading only (no `O_CREAT`, `O_RDONLY`).
    case openatRead = "openat-read"
    /// Socket sends and receives (control, data, the CA signer).
    case send, recv
    /// A named point between two steps that are not system calls of ours (``FaultInjection/point(_:)``): a
    /// crash point where the disk is done and the registry not yet written.
    case point

    /// Calls that change what is on disk: the steps of a commit, where crash points are counted.
    package var mutates: Bool {
        switch self {
        case .read, .openatRead, .send, .recv: false
        default: true
        }
    }
}

/// One planned fault: which call, on which object, after how many matching calls, and what happens.
package struct FaultRule: Sendable, Hashable, CustomStringConvertible {
    package enum Action: Sendable, Hashable {
        /// The call fails with this errno and does nothing.
        case fail(Int32)
        /// A write stores half of its bytes and returns; the next matching write fails with this errno.
        case shortWrite(then: Int32)
        /// The process ends at once (`_exit`), before the call: a crash point.
        case crash
    }

    /// The call; nil matches every call that changes the disk (``Syscall/mutates``).
    package var call: Syscall?
    /// A substring of the object (file name or path) the call works on; nil matches any.
    package var object: String?
    /// Matching calls that go through before the rule fires.
    package var skip: Int = 0
    /// How many matching calls fail (0: every one from then on).
    package var times: Int = 1
    package var action: Action
    /// The rule counts calls only once the process serves (``FaultInjection/startServing()``): start-up's own
    /// writes pass.
    package var whenServing = false

    package init(
        call: Syscall?,
        object: String? = nil,
        skip: Int = 0,
        times: Int = 1,
        whenServing: Bool = false,
        action: Action
    ) {
        self.call = call
        self.object = object
        self.skip = skip
        self.times = times
        self.whenServing = whenServing
        self.action = action
    }

    package var description: String {
        var parts = [self.call?.rawValue ?? "any"]
        switch self.action {
        case .fail(let errno): parts.append(FaultInjection.errnoName(errno))
        case .shortWrite(let errno): parts.append("short-" + FaultInjection.errnoName(errno))
        case .crash: parts.append("crash")
        }
        if let object = self.object { parts.append("object=\(object)") }
        if self.skip > 0 { parts.append("skip=\(self.skip)") }
        if self.times != 1 { parts.append("times=\(self.times)") }
        if self.whenServing { parts.append("when=serving") }
        return parts.joined(separator: ":")
    }
}

/// Faults injected into real system calls, for tests (in the manner of swift-system's mocking hooks): a
/// rule makes a call on a matching object fail with an errno, write short, or end the process (a crash
/// point), on a real file system. Off unless a test installs rules in-process or, in a debug build, names
/// them in `VTPM_FAULTS` (``installFromEnvironment()``). When no rule is installed a call costs one atomic
/// load.
package enum FaultInjection {
    private static let active = Atomic<Bool>(false)
    private static let serving = Atomic<Bool>(false)
    private static let state = Mutex<[Entry]>([])

    private struct Entry {
        var rule: FaultRule
        var seen = 0
        var fired = 0
        var pendingShortWrite = false
    }

    /// Replaces the installed rules. The first rules also put SQLite's file I/O (the registry's) under them.
    package static func install(_ rules: [FaultRule]) {
        self.state.withLock { $0 = rules.map { Entry(rule: $0) } }
        if !rules.isEmpty { SQLiteFaults.register() }
        self.active.store(!rules.isEmpty, ordering: .releasing)
    }

    /// Removes every rule.
    package static func clear() { self.install([]) }

    /// The process serves now: rules marked `when=serving` start counting.
    package static func startServing() { self.serving.store(true, ordering: .releasing) }

    /// How many times each installed rule fired, in order.
    package static var firedCounts: [Int] { self.state.withLock { $0.map(\.fired) } }

    /// `VTPM_FAULTS` in a debug build: rules separated by `;`, each
    /// `CALL:ACTION[:object=S][:skip=N][:times=N][:when=serving]`
    /// with CALL a ``Syscall`` name or `any`, ACTION an errno name (`EIO`, `ENOSPC`, `EDQUOT`, `EROFS`, ...),
    /// `short-ERRNO` or `crash`. Release builds ignore it. Returns the rules installed.
    @discardableResult
    package static func installFromEnvironment() throws(PosixError) -> [FaultRule] {
        #if DEBUG
        guard let spec = unsafe getenv("VTPM_FAULTS").map({ unsafe String(cString: $0) }), !spec.isEmpty else {
            return []
        }
        let rules = try self.parse(spec)
        self.install(rules)
        return rules
        #else
        return []
        #endif
    }

    /// Parses a `VTPM_FAULTS` specification.
    package static func parse(_ spec: String) throws(PosixError) -> [FaultRule] {
        var rules: [FaultRule] = []
        for text in spec.split(separator: ";") where !text.isEmpty {
            let fields = text.split(separator: ":").map(String.init)
            guard fields.count >= 2 else { throw Self.invalid(String(text)) }
            let call: Syscall?
            if fields[0] == "any" {
                call = nil
            } else if let named = Syscall(rawValue: fields[0]) {
                call = named
            } else {
                throw Self.invalid(String(text))
            }
            let action: FaultRule.Action
            if fields[1] == "crash" {
                action = .crash
            } else if fields[1].hasPrefix("short-"), let errno = Self.errno(named: String(fields[1].dropFirst(6))) {
                action = .shortWrite(then: errno)
            } else if let errno = Self.errno(named: fields[1]) {
                action = .fail(errno)
            } else {
                throw Self.invalid(String(text))
            }
            var rule = FaultRule(call: call, action: action)
            for option in fields.dropFirst(2) {
                let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
                guard pair.count == 2 else { throw Self.invalid(String(text)) }
                switch pair[0] {
                case "object": rule.object = pair[1]
                case "skip":
                    guard let n = Int(pair[1]), n >= 0 else { throw Self.invalid(String(text)) }
                    rule.skip = n
                case "times":
                    guard let n = Int(pair[1]), n >= 0 else { throw Self.invalid(String(text)) }
                    rule.times = n
                case "when":
                    guard pair[1] == "serving" else { throw Self.invalid(String(text)) }
                    rule.whenServing = true
                default: throw Self.invalid(String(text))
                }
            }
            rules.append(rule)
        }
        return rules
    }

    private static func invalid(_ text: String) -> PosixError {
        PosixError(errno: EINVAL, function: "VTPM_FAULTS", object: text)
    }

    static let errnoNames: [(String, Int32)] = [
        ("EIO", EIO), ("ENOSPC", ENOSPC), ("EDQUOT", EDQUOT), ("EROFS", EROFS), ("EACCES", EACCES),
        ("EPERM", EPERM), ("ENOENT", ENOENT), ("EEXIST", EEXIST), ("EBADF", EBADF), ("EINTR", EINTR),
        ("EFBIG", EFBIG), ("ENOMEM", ENOMEM),
    ]

    package static func errno(named name: String) -> Int32? { self.errnoNames.first { $0.0 == name }?.1 }
    package static func errnoName(_ errno: Int32) -> String {
        self.errnoNames.first { $0.1 == errno }?.0 ?? "errno\(errno)"
    }

    /// A crash point between steps (named `object`): ends the process if a rule says so.
    package static func point(_ object: String) {
        _ = self.check(.point, object)
    }

    /// What a call on `object` must do instead of running, if a rule says so (called by ``Sys``).
    @inline(__always)
    static func check(_ call: Syscall, _ object: String?) -> FaultRule.Action? {
        guard self.active.load(ordering: .acquiring) else { return nil }
        return self.match(call, object)
    }

    private static func match(_ call: Syscall, _ object: String?) -> FaultRule.Action? {
        let serving = self.serving.load(ordering: .acquiring)
        let action: FaultRule.Action? = self.state.withLock { entries in
            for index in entries.indices {
                let rule = entries[index].rule
                if rule.whenServing && !serving { continue }
                if let wanted = rule.call {
                    guard wanted == call else { continue }
                } else {
                    guard call.mutates else { continue }
                }
                if let wanted = rule.object {
                    guard let object, object.contains(wanted) else { continue }
                }
                if entries[index].pendingShortWrite, case .shortWrite(let errno) = rule.action {
                    entries[index].pendingShortWrite = false
                    return .fail(errno)
                }
                entries[index].seen += 1
                guard entries[index].seen > rule.skip else { continue }
                guard rule.times == 0 || entries[index].fired < rule.times else { continue }
                entries[index].fired += 1
                if case .shortWrite = rule.action { entries[index].pendingShortWrite = true }
                return rule.action
            }
            return nil
        }
        if case .crash? = action {
            // A crash point: no cleanup, no flushing of anything, as if the power went.
            _exit(86)
        }
        return action
    }
}

/// SQLite's own file I/O (the registry) under the same rules: the C shim's VFS passes every call to SQLite's
/// default one after asking ``FaultInjection``: an open is ``Syscall/openat``, a write ``Syscall/write``, a sync
/// ``Syscall/fdatasync``, a truncation ``Syscall/ftruncate``, each on the database, journal or WAL file's path.
/// Registered once, when rules are first installed, so normal operation never goes through it.
enum SQLiteFaults {
    private static let registered = Atomic<Bool>(false)

    static func register() {
        guard !self.registered.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = unsafe cvtpm_sqlite_faults_install(sqliteFaultHook)
    }
}

private let sqliteFaultHook: @convention(c) (Int32, UnsafePointer<CChar>?) -> Int32 = { call, path in
    let syscall: Syscall =
        switch call {
        case CVTPM_FAULT_OPEN: .openat
        case CVTPM_FAULT_WRITE: .write
        case CVTPM_FAULT_SYNC: .fdatasync
        default: .ftruncate
        }
    let object = unsafe path.map { unsafe String(cString: $0) }
    switch FaultInjection.check(syscall, object) {
    case .fail(let errno)?, .shortWrite(let errno)?: return errno
    case .crash?, nil: return 0
    }
}
