internal import CVTPMShims

#if canImport(Glibc)
import Glibc
#endif

/// A seccomp filter over libseccomp: an allow list, and what happens to every other system call.
package enum SeccompFilter {
    /// What a system call outside the allow list gets.
    package enum Action: String, Sendable, Hashable, CaseIterable {
        /// No filter at all.
        case none
        /// The process is killed (SIGSYS).
        case kill
        /// The call runs and the kernel logs it (audit record type 1326, `dmesg`).
        case log
    }

    /// Installs the filter on every thread of the process. NO_NEW_PRIVS is set with it; neither can be
    /// undone. `.none` installs nothing.
    /// - Parameters:
    ///   - action: What a call outside `allowed` gets.
    ///   - allowed: System call names as libseccomp knows them (`openat`, `renameat2`, ...).
    /// - Throws: `PosixError`; EINVAL names the call libseccomp does not know.
    package static func install(action: Action, allowing allowed: [String]) throws(PosixError) {
        let code: Int32
        switch action {
        case .none: return
        case .kill: code = Int32(CVTPM_SECCOMP_KILL.rawValue)
        case .log: code = Int32(CVTPM_SECCOMP_LOG.rawValue)
        }
        var unknown = -1
        let rc = unsafe withCStrings(allowed) { names in
            unsafe cvtpm_seccomp_install(code, names, allowed.count, &unknown)
        }
        guard rc == 0 else {
            let object = unknown >= 0 && unknown < allowed.count ? "unknown system call \(allowed[unknown])" : nil
            throw PosixError(errno: -rc, function: "seccomp_load", object: object)
        }
    }

    /// Whether libseccomp knows the system call `name` on this architecture.
    package static func isKnown(_ name: String) -> Bool { unsafe cvtpm_seccomp_known(name) != 0 }

    /// Makes a system call that no profile allows (`personality(0xffffffff)`, a query), so that tests can see
    /// the filter act. Returns whether the call succeeded (it does under `.log` and without a filter).
    @discardableResult
    package static func probe() -> Bool { cvtpm_seccomp_probe() >= 0 }

    /// The process's seccomp mode from `/proc/self/status` (0 none, 2 filter), or nil when unreadable.
    package static func currentMode() -> Int? {
        guard let text = try? readSmallFile("/proc/self/status") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Seccomp:") {
            return Int(line.dropFirst("Seccomp:".count).trimmingPrefix(while: { $0 == " " || $0 == "\t" }))
        }
        return nil
    }

    private static func withCStrings<R>(
        _ strings: [String],
        _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R
    ) -> R {
        precondition(!strings.isEmpty, "an empty allow list")
        let pointers: [UnsafeMutablePointer<CChar>?] = unsafe strings.map { unsafe strdup($0) }
        defer { for index in 0..<strings.count { unsafe free(pointers[index]) } }
        return unsafe pointers.withUnsafeBufferPointer { buffer in
            unsafe buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: strings.count) {
                unsafe body($0)
            }
        }
    }

    private static func readSmallFile(_ path: String) throws(PosixError) -> String {
        let fd = unsafe Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw PosixError(errno: currentErrno(), function: "open", object: path) }
        defer { _ = Glibc.close(fd) }
        return String(decoding: try readAll(fd: fd, maxSize: 1 << 16), as: UTF8.self)
    }
}
