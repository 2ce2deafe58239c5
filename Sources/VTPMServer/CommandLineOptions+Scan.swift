extension CommandLineOptions {
    /// The `socket` / `chardev` command line, scanned without ArgumentParser — the path every VM start takes.
    ///
    /// vtpmd is started once per VM start (libvirt, Proxmox, QEMU scripts), so its start-up time is a
    /// measured figure (`make bench`: spawn to first response). ArgumentParser's parse of the ~30 swtpm
    /// options costs more than half of vtpmd's start-up CPU (runtime metadata and reflection on first use,
    /// measured with perf: `ParsableCommand.parseAsRoot` 57 % of the process's samples). This scanner
    /// accepts only the plain shapes those programs write: `--name value`, `--name=value`, `-p N`, `-f N`,
    /// `-r USER`, and the flags `--tpm2`, `-d/--daemon`, `-t/--terminate`, each at most once. Anything else
    /// (help, version, `--print-*`, an unknown or repeated option, a value that starts with `-`, a bad
    /// number, combined short flags) returns nil, and ArgumentParser parses the line as before, so it
    /// remains the one authority for usage errors and help, and an option missing here only costs time.
    /// - Parameter arguments: The arguments after the program name.
    /// - Returns: The options and whether the subcommand is `chardev`, or nil to use ArgumentParser.
    public static func scan(_ arguments: [String]) -> (options: CommandLineOptions, chardev: Bool)? {
        guard let subcommand = arguments.first, subcommand == "socket" || subcommand == "chardev" else { return nil }
        let chardev = subcommand == "chardev"
        var options = CommandLineOptions()
        var seen: [String] = []
        var index = 1
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            var name: String
            var inlineValue: String? = nil
            if argument.hasPrefix("--") {
                name = String(argument.dropFirst(2))
                if let equals = name.firstIndex(of: "=") {
                    inlineValue = String(name[name.index(after: equals)...])
                    name = String(name[..<equals])
                }
            } else if let short = Self.longName(ofShort: argument) {
                name = short
            } else {
                return nil
            }
            if chardev && (name == "server" || name == "port") { return nil }
            guard !seen.contains(name) else { return nil }
            seen.append(name)
            if name == "tpm2" || name == "daemon" || name == "terminate" {
                guard inlineValue == nil else { return nil }
                switch name {
                case "tpm2": options.tpm2 = true
                case "daemon": options.daemon = true
                default: options.terminate = true
                }
                continue
            }
            let value: String
            if let inlineValue {
                value = inlineValue
            } else {
                guard index < arguments.count else { return nil }
                value = arguments[index]
                index += 1
            }
            guard !value.hasPrefix("-") else { return nil }
            switch name {
            case "tpmstate": options.tpmstate = value
            case "ctrl": options.ctrl = value
            case "server": options.server = value
            case "flags": options.flags = value
            case "pid": options.pid = value
            case "log": options.log = value
            case "locality": options.locality = value
            case "key": options.key = value
            case "migration-key": options.migrationKey = value
            case "seccomp": options.seccomp = value
            case "runas": options.runas = value
            case "config": options.config = value
            case "vm-id": options.vmID = value
            case "ca": options.ca = value
            case "ca-signer": options.caSigner = value
            case "registry": options.registry = value
            case "host-key": options.hostKey = value
            case "on-rollback": options.onRollback = value
            case "foreign-state": options.foreignState = value
            case "fd":
                guard let number = Int(value) else { return nil }
                options.fd = number
            case "port":
                guard let number = Int(value) else { return nil }
                options.port = number
            default:
                return nil
            }
        }
        return (options, chardev)
    }

    /// `-p` and friends (no Dictionary or Set: this runs at every start, and their first use costs time).
    private static func longName(ofShort argument: String) -> String? {
        switch argument {
        case "-p": return "port"
        case "-f": return "fd"
        case "-r": return "runas"
        case "-d": return "daemon"
        case "-t": return "terminate"
        default: return nil
        }
    }
}
