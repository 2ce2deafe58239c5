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
/// `{name}` placeholder could match in more than one way, the shortest match wins (`{uuid}` always spans
/// exactly the 36 characters of a UUID).
public struct VMIDPattern: Sendable, Hashable, CustomStringConvertible {
    enum Piece: Hashable, Sendable {
        case literal(UInt8)
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
        // Bytes, not Characters: paths are matched byte by byte (and Character iteration costs start-up time).
        var pieces: [Piece] = []
        var found: Placeholder? = nil
        let bytes = Self.normalize(Array(text.utf8))
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "{") {
                guard let close = bytes[index...].firstIndex(of: UInt8(ascii: "}")) else {
                    throw fail("'\(text)' has an unclosed '{'")
                }
                let name = String(decoding: bytes[(index + 1)..<close], as: UTF8.self)
                guard let placeholder = Placeholder(rawValue: name) else {
                    throw fail("'\(text)' has an unknown placeholder {\(name)} (use {uuid} or {name})")
                }
                guard found == nil else { throw fail("'\(text)' has more than one placeholder") }
                found = placeholder
                pieces.append(.placeholder)
                index = close + 1
            } else if byte == UInt8(ascii: "}") {
                throw fail("'\(text)' has a '}' without '{'")
            } else {
                pieces.append(byte == UInt8(ascii: "*") ? .anything : .literal(byte))
                index += 1
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
        let chars = Self.normalize(Array(path.utf8))
        var captured: String? = nil
        guard self.match(0, chars, 0, &captured), let captured else { return nil }
        guard let vm = VMID(captured) else { return nil }
        if self.placeholder == .uuid && !vm.isUUID { return nil }
        return vm
    }

    private func match(_ p: Int, _ s: [UInt8], _ i: Int, _ captured: inout String?) -> Bool {
        guard p < self.pieces.count else { return i == s.count }
        switch self.pieces[p] {
        case .literal(let c):
            return i < s.count && s[i] == c && self.match(p + 1, s, i + 1, &captured)
        case .anything:
            var j = i
            while true {
                if self.match(p + 1, s, j, &captured) { return true }
                guard j < s.count, s[j] != UInt8(ascii: "/") else { return false }
                j += 1
            }
        case .placeholder where self.placeholder == .uuid:
            // A UUID is exactly 36 characters: no shortest-match ambiguity with what follows.
            guard i + 36 <= s.count, VMID(String(decoding: s[i..<(i + 36)], as: UTF8.self))?.isUUID == true,
                self.match(p + 1, s, i + 36, &captured)
            else { return false }
            captured = String(decoding: s[i..<(i + 36)], as: UTF8.self)
            return true
        case .placeholder:
            var j = i
            while j < s.count, Self.isNameCharacter(s[j]) {
                j += 1
                if self.match(p + 1, s, j, &captured) {
                    captured = String(decoding: s[i..<j], as: UTF8.self)
                    return true
                }
            }
            return false
        }
    }

    private static func isNameCharacter(_ c: UInt8) -> Bool {
        (48...57).contains(c) || (65...90).contains(c) || (97...122).contains(c) || c == UInt8(ascii: ".")
            || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
    }

    /// Removes repeated and trailing slashes and `.` components.
    static func normalize(_ path: [UInt8]) -> [UInt8] {
        let slash = UInt8(ascii: "/")
        var result: [UInt8] = []
        result.reserveCapacity(path.count)
        if path.first == slash { result.append(slash) }
        var component: [UInt8] = []
        func flush() {
            guard !component.isEmpty, component != [UInt8(ascii: ".")] else {
                component.removeAll(keepingCapacity: true)
                return
            }
            if let last = result.last, last != slash { result.append(slash) }
            result += component
            component.removeAll(keepingCapacity: true)
        }
        for byte in path {
            if byte == slash { flush() } else { component.append(byte) }
        }
        flush()
        return result
    }
}
