public import VMIdentity

/// `vm-id-from`: a path pattern with exactly one placeholder, matched against the state path
/// (`--tpmstate dir=` or `backend-uri=file://`), that yields the VM's identity:
///
/// - `{uuid}` matches a UUID (8-4-4-4-12 hex digits, either case), e.g.
///   `/var/lib/libvirt/swtpm/{uuid}/tpm2` (libvirt keys its state directories by the domain UUID);
/// - `{name}` matches a non-empty run of `A-Z a-z 0-9 . _ -` (a ``VMID`` name), e.g.
///   `/var/lib/vz/images/{name}/vm-*-disk-*.raw` or `/dev/pve/vm-{name}-disk-*` (Proxmox numbers its VMs);
/// - `*` matches any run of characters other than `/`; everything else matches itself.
///
/// The pattern must be absolute. Paths are compared after removing repeated and trailing slashes and
/// `.` components (no symlink is resolved: the path is what the management tool named). Where the
/// placeholder could match in more than one way, the shortest match wins.
public struct VMIDPattern: Sendable, Hashable, CustomStringConvertible {
    enum Piece: Hashable, Sendable {
        case literal(Character)
        case anything
        case placeholder
    }

    /// The placeholder the pattern holds.
    public enum Placeholder: String, Sendable, Hashable {
        case uuid, name
    }

    /// The pattern as written.
    public let text: String
    /// Its placeholder.
    public let placeholder: Placeholder
    let pieces: [Piece]

    /// Parses a pattern.
    /// - Throws: ``HostConfigurationError`` (file and line are filled in by the caller) when the pattern is
    ///   not absolute, holds no placeholder or more than one, or an unknown `{...}`.
    public init(_ text: String) throws(HostConfigurationError) {
        func fail(_ message: String) -> HostConfigurationError {
            HostConfigurationError(file: "", line: nil, key: "vm-id-from", message)
        }
        guard text.hasPrefix("/") else { throw fail("'\(text)' is not an absolute path pattern") }
        var pieces: [Piece] = []
        var found: Placeholder? = nil
        var rest = Substring(Self.normalize(text))
        while let first = rest.first {
            if first == "{" {
                guard let close = rest.firstIndex(of: "}") else { throw fail("'\(text)' has an unclosed '{'") }
                let name = String(rest[rest.index(after: rest.startIndex)..<close])
                guard let placeholder = Placeholder(rawValue: name) else {
                    throw fail("'\(text)' has an unknown placeholder {\(name)} (use {uuid} or {name})")
                }
                guard found == nil else { throw fail("'\(text)' has more than one placeholder") }
                found = placeholder
                pieces.append(.placeholder)
                rest = rest[rest.index(after: close)...]
            } else if first == "}" {
                throw fail("'\(text)' has a '}' without '{'")
            } else {
                pieces.append(first == "*" ? .anything : .literal(first))
                rest = rest.dropFirst()
            }
        }
        guard let found else { throw fail("'\(text)' has no placeholder ({uuid} or {name})") }
        self.text = text
        self.placeholder = found
        self.pieces = pieces
    }

    public var description: String { self.text }

    /// The vm-id `path` yields, or nil when the pattern does not match it.
    /// - Parameter path: The state path (relative paths are not matched: make them absolute first).
    public func vmID(forPath path: String) -> VMID? {
        let chars = Array(Self.normalize(path))
        var captured: String? = nil
        guard self.match(0, chars, 0, &captured), let captured else { return nil }
        guard let vm = VMID(captured) else { return nil }
        if self.placeholder == .uuid && !vm.isUUID { return nil }
        return vm
    }

    private func match(_ p: Int, _ s: [Character], _ i: Int, _ captured: inout String?) -> Bool {
        guard p < self.pieces.count else { return i == s.count }
        switch self.pieces[p] {
        case .literal(let c):
            return i < s.count && s[i] == c && self.match(p + 1, s, i + 1, &captured)
        case .anything:
            var j = i
            while true {
                if self.match(p + 1, s, j, &captured) { return true }
                guard j < s.count, s[j] != "/" else { return false }
                j += 1
            }
        case .placeholder:
            var j = i
            while j < s.count, Self.isNameCharacter(s[j]) {
                j += 1
                if self.match(p + 1, s, j, &captured) {
                    captured = String(s[i..<j])
                    return true
                }
            }
            return false
        }
    }

    private static func isNameCharacter(_ c: Character) -> Bool {
        guard let ascii = c.asciiValue else { return false }
        return (48...57).contains(ascii) || (65...90).contains(ascii) || (97...122).contains(ascii) || c == "."
            || c == "_" || c == "-"
    }

    /// Removes repeated and trailing slashes and `.` components.
    static func normalize(_ path: String) -> String {
        let absolute = path.hasPrefix("/")
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        return (absolute ? "/" : "") + parts.joined(separator: "/")
    }
}
