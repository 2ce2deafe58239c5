import Foundation

/// The registry stores a vmID as TEXT in the canonical lower-case UUID form.
enum VMIDText {
    /// Validates `text` as a UUID and returns its lower-case form.
    static func canonical(_ text: String, file: String = #fileID, line: UInt = #line) throws -> String {
        guard let uuid = UUID(uuidString: text) else {
            throw RegistryError(.invalidArgument, "vmID '\(text)' is not a UUID", file: file, line: line)
        }
        return uuid.uuidString.lowercased()
    }

    /// The lower-case form when `text` is a UUID, else `text` unchanged (for comparisons that must not throw).
    static func comparable(_ text: String) -> String {
        UUID(uuidString: text)?.uuidString.lowercased() ?? text
    }
}
