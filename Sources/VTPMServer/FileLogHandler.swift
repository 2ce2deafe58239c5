public import Logging
import Registry
import _VTPMPosix

/// A swift-log handler that appends one line per message to a descriptor (the `--log` file or
/// stderr): `<prefix><time> <level> <label>: <message> key=value ...`.
public struct FileLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    let label: String
    let descriptor: Int32
    let prefix: String

    public init(label: String, descriptor: Int32, level: Logger.Level, prefix: String) {
        self.label = label
        self.descriptor = descriptor
        self.logLevel = level
        self.prefix = prefix
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let (seconds, micros) = ProcessControl.wallClock()
        var line =
            self.prefix + Self.timestamp(seconds: seconds, micros: micros)
            + " \(event.level) \(self.label): \(event.message)"
        var merged = self.metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        for key in merged.keys.sorted() {
            line += " \(key)=\(merged[key].map { "\($0)" } ?? "")"
        }
        line += "\n"
        try? writeAll(fd: self.descriptor, Array(line.utf8))
    }

    /// UTC `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`, computed without Foundation (the registry's timestamp form).
    static func timestamp(seconds: Int, micros: Int) -> String {
        Timestamp(microsecondsSinceEpoch: Int64(seconds) * 1_000_000 + Int64(micros)).description
    }
}
