/// A swtpm-style option value: `key=value,key,...`. Keys are checked against the set the option
/// allows; a bare key means "true"; values cannot contain commas.
public struct OptionString: Sendable {
    public let option: String
    private var values: [String: String]

    /// Parses `text` for `option`, rejecting keys not in `allowed`, empty keys and repeated keys.
    public init(_ text: String, option: String, allowed: Set<String>) throws(OptionError) {
        self.option = option
        self.values = [:]
        guard !text.isEmpty else { throw OptionError("\(option): empty value") }
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let pieces = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(pieces[0])
            guard !key.isEmpty else { throw OptionError("\(option): empty parameter in '\(text)'") }
            guard allowed.contains(key) else {
                throw OptionError(
                    "\(option): unknown parameter '\(key)' (supported: \(allowed.sorted().joined(separator: ", ")))"
                )
            }
            guard self.values[key] == nil else { throw OptionError("\(option): '\(key)' given twice") }
            self.values[key] = pieces.count > 1 ? String(pieces[1]) : ""
        }
    }

    public func has(_ key: String) -> Bool { self.values[key] != nil }

    /// The value of `key`; throws when it is present without a value.
    public func string(_ key: String) throws(OptionError) -> String? {
        guard let value = self.values[key] else { return nil }
        guard !value.isEmpty else { throw OptionError("\(self.option): '\(key)' needs a value") }
        return value
    }

    /// A boolean: bare key or `true`/`1`/`on`/`yes` is true; `false`/`0`/`off`/`no` is false.
    public func bool(_ key: String) throws(OptionError) -> Bool? {
        guard let value = self.values[key] else { return nil }
        switch value {
        case "", "true", "1", "on", "yes": return true
        case "false", "0", "off", "no": return false
        default: throw OptionError("\(self.option): '\(key)' must be true or false, not '\(value)'")
        }
    }

    /// An integer in `range`.
    public func integer(_ key: String, in range: ClosedRange<Int>) throws(OptionError) -> Int? {
        guard let text = try self.string(key) else { return nil }
        guard let value = Int(text), range.contains(value) else {
            throw OptionError(
                "\(self.option): '\(key)=\(text)' is not a number in \(range.lowerBound)...\(range.upperBound)"
            )
        }
        return value
    }

    /// An octal file mode (at most 0777).
    public func mode(_ key: String) throws(OptionError) -> UInt32? {
        guard let text = try self.string(key) else { return nil }
        guard let value = UInt32(text, radix: 8), value <= 0o777 else {
            throw OptionError("\(self.option): '\(key)=\(text)' is not an octal mode up to 0777")
        }
        return value
    }
}

/// A command-line option vtpmd cannot accept.
public struct OptionError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
