public import Logging
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

    /// UTC `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` without Foundation (civil-from-days).
    static func timestamp(seconds: Int, micros: Int) -> String {
        let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let secondOfDay = seconds - days * 86400
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(secondOfDay / 3600, 2)):"
            + "\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2)).\(pad(micros, 6))Z"
    }
}
