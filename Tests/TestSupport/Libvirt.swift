import Foundation
import _VTPMPosix

#if canImport(Glibc)
import Glibc
#endif

/// A real libvirtd (Debian 12's libvirt 9.0) with swift-vtpm's Debian package installed the way a user
/// installs it (`dpkg -i`, which diverts swtpm and swtpm_setup). The tests start virtlogd and libvirtd
/// themselves (there is no systemd here) and talk to `qemu:///system` with virsh.
public enum Libvirt {
    public static let uri = "qemu:///system"
    /// Where libvirt keeps a domain's TPM 2 state.
    public static func stateDirectory(uuid: String) -> String { "/var/lib/libvirt/swtpm/\(uuid)/tpm2" }

    /// The package `make deb` builds (override with VTPM_DEB).
    public static var debPath: String? {
        if let path = ProcessInfo.processInfo.environment["VTPM_DEB"], !path.isEmpty { return path }
        guard let root = RepositoryRoot.find()?.path,
            let names = try? FileManager.default.contentsOfDirectory(atPath: "\(root)/.build/deb")
        else { return nil }
        return names.filter { $0.hasPrefix("swift-vtpm_") && $0.hasSuffix(".deb") }.sorted().last
            .map { "\(root)/.build/deb/\($0)" }
    }

    /// Root, libvirtd, virsh, virt-clone, the package and a guest image: the libvirt tests can run.
    public static var isUsable: Bool {
        ProcessControl.effectiveUserID == 0 && ExecutableLookup.exists("libvirtd") && ExecutableLookup.exists("virsh")
            && ExecutableLookup.exists("virt-clone") && ExecutableLookup.exists("dpkg") && self.debPath != nil
            && GuestImage.hostCanRunGuests
    }

    /// Starts virtlogd and libvirtd unless they run, and waits until virsh answers.
    public static func startDaemons() throws {
        for daemon in ["virtlogd", "libvirtd"] where !self.isRunning(daemon) {
            // Not `daemon -d`: the daemon would inherit every descriptor of this process, among them the one
            // by which Foundation's Process notices its child's exit, so `-d`'s parent would never seem to
            // exit. start-stop-daemon's --background closes them all before it runs the daemon in the
            // foreground. libvirtd's children (swtpm_setup, swtpm) read the host's configuration.
            let started = try runCommand(
                "start-stop-daemon",
                ["--start", "--background", "--exec", try ExecutableLookup.find(daemon).path],
                environment: hostConfigurationOfThisHost
            )
            guard started.status == 0 else { throw LibvirtError("starting \(daemon) failed: \(started.output)") }
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if FileManager.default.fileExists(atPath: "/run/libvirt/virtlogd-sock"),
                let result = try? runCommand("virsh", ["-c", self.uri, "version"]), result.status == 0
            {
                return
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw LibvirtError("virtlogd or libvirtd not ready within 30 s")
    }

    static func isRunning(_ name: String) -> Bool {
        (try? runCommand("pgrep", ["-x", name]))?.status == 0
    }

    /// `virsh -c qemu:///system ARGS`; throws unless it exits 0.
    @discardableResult
    public static func virsh(_ arguments: [String], timeout: Duration = .seconds(120)) throws -> String {
        let result = try runCommand(
            "virsh",
            ["-c", self.uri] + arguments,
            environment: hostConfigurationOfThisHost,
            timeout: timeout
        )
        guard result.status == 0 else {
            throw LibvirtError("virsh \(arguments.joined(separator: " ")) exited \(result.status): \(result.output)")
        }
        return result.stdout
    }

    /// Installs the package with `dpkg -i`.
    public static func installPackage() throws {
        guard let deb = self.debPath else { throw LibvirtError("no swift-vtpm .deb: run `make deb`") }
        let result = try runCommand(
            "dpkg",
            ["-i", deb],
            environment: hostConfigurationOfThisHost.merging(["DEBIAN_FRONTEND": "noninteractive"]) { $1 }
        )
        guard result.status == 0 else { throw LibvirtError("dpkg -i \(deb) failed: \(result.output)") }
    }

    /// Removes (or purges) the package; nothing happens when it is not installed.
    public static func removePackage(purge: Bool) throws {
        let result = try runCommand(
            "dpkg",
            [purge ? "--purge" : "--remove", "swift-vtpm"],
            environment: hostConfigurationOfThisHost.merging(["DEBIAN_FRONTEND": "noninteractive"]) { $1 }
        )
        guard result.status == 0 else { throw LibvirtError("dpkg --remove swift-vtpm failed: \(result.output)") }
    }
}

public struct LibvirtError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// One TCG domain booted from the test image (direct kernel boot, `<features><acpi/>` so the guest sees
/// the CRB TPM), with a qcow2 disk (internal snapshots need one) and its serial console on a unix socket
/// in `directory`, reached through ``console()``.
public final class LibvirtDomain {
    public let name: String
    public let uuid: String
    public let directory: String

    /// Defines the domain. Files (kernel, initrd, disk, console socket) live in `directory`, which QEMU's
    /// user can read.
    /// - Parameters:
    ///   - tpm: The `<tpm>` element's backend contents beyond the version, e.g. `<encryption secret='…'/>`.
    public init(name: String, uuid: String, directory: String, image: GuestImage, tpmExtra: String = "") throws {
        self.name = name
        self.uuid = uuid
        self.directory = directory
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try fm.setAttributes([.posixPermissions: 0o755], ofItemAtPath: directory)
        for (source, target) in [(image.kernel, "vmlinuz"), (image.initrd, "initrd.img")] {
            let path = "\(directory)/\(target)"
            if !fm.fileExists(atPath: path) { try fm.copyItem(atPath: source, toPath: path) }
            try fm.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
        }
        try QEMUGuest.createDisk(at: "\(directory)/disk.qcow2")
        try self.xml(tpmExtra: tpmExtra).write(toFile: "\(directory)/domain.xml", atomically: true, encoding: .utf8)
        try Libvirt.virsh(["define", "\(directory)/domain.xml"])
    }

    /// A domain libvirt already has (made by virt-clone); `directory` holds its console socket.
    public init(existing name: String, uuid: String, directory: String) {
        self.name = name
        self.uuid = uuid
        self.directory = directory
    }

    func xml(tpmExtra: String) -> String {
        """
        <domain type='qemu'>
          <name>\(self.name)</name>
          <uuid>\(self.uuid)</uuid>
          <memory unit='MiB'>512</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='q35'>hvm</type>
            <kernel>\(self.directory)/vmlinuz</kernel>
            <initrd>\(self.directory)/initrd.img</initrd>
            <cmdline>console=ttyS0 quiet loglevel=3 panic=-1</cmdline>
          </os>
          <features><acpi/></features>
          <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
          <on_reboot>destroy</on_reboot>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            <disk type='file' device='disk'>
              <driver name='qemu' type='qcow2'/>
              <source file='\(self.directory)/disk.qcow2'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <serial type='unix'><source mode='bind' path='\(self.consolePath)'/><target port='0'/></serial>
            <tpm model='tpm-crb'><backend type='emulator' version='2.0'>\(tpmExtra)</backend></tpm>
            <memballoon model='none'/>
          </devices>
        </domain>
        """
    }

    /// The serial console's socket.
    public var consolePath: String { "\(self.directory)/console.sock" }
    /// libvirt's TPM state directory for this domain.
    public var stateDirectory: String { Libvirt.stateDirectory(uuid: self.uuid) }
    /// The emulator's log file.
    public var emulatorLog: String { "/var/log/swtpm/libvirt/qemu/\(self.name)-swtpm.log" }

    /// The running emulator's control socket (`/run/libvirt/qemu/swtpm/<id>-<name>-swtpm.sock`).
    public var controlSocket: String? { self.emulatorRunFile("sock") }

    /// The running emulator's process id (from libvirt's pid file).
    public var emulatorPID: Int32? {
        guard let path = self.emulatorRunFile("pid"), let text = try? String(contentsOfFile: path, encoding: .utf8)
        else { return nil }
        return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// libvirt's `/run/libvirt/qemu/swtpm/<id>-<name>-swtpm.<suffix>` (the id changes with every start).
    private func emulatorRunFile(_ suffix: String) -> String? {
        let dir = "/run/libvirt/qemu/swtpm"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.first { $0.hasSuffix("-\(self.name)-swtpm.\(suffix)") }.map { "\(dir)/\($0)" }
    }

    /// `virsh start`, then the console of the booted guest (ready marker seen, shell prepared).
    public func start(waitForBoot: Bool = true) throws -> GuestConsole {
        try Libvirt.virsh(["start", self.name])
        let console = try self.console()
        if waitForBoot { try console.waitForReady(timeout: .seconds(120)) }
        return console
    }

    /// A console on the running domain's serial socket (QEMU listens; a new QEMU process needs a new one).
    public func console() throws -> GuestConsole {
        let deadline = ContinuousClock.now + .seconds(30)
        var fd: Int32 = -1
        while fd < 0 {
            if let connected = try? Socket.connectUnix(path: self.consolePath) {
                fd = connected
            } else {
                guard ContinuousClock.now < deadline else {
                    throw LibvirtError("cannot connect to \(self.name)'s console \(self.consolePath)")
                }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        let input = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        let output = PipeCollector(reading: FileHandle(fileDescriptor: dup(fd), closeOnDealloc: true), name: self.name)
        let name = self.name
        return GuestConsole(
            input: input,
            output: output,
            isAlive: { (try? Libvirt.virsh(["domstate", name]))?.contains("running") ?? false },
            context: { "domain \(name): " + ((try? Libvirt.virsh(["domstate", name])) ?? "?") }
        )
    }

    /// Stops the domain at once (`virsh destroy`) if it runs.
    public func destroy() {
        _ = try? runCommand("virsh", ["-c", Libvirt.uri, "destroy", self.name])
    }

    /// Destroys and undefines the domain with its snapshots, metadata and TPM state, and deletes `directory`.
    public func remove() {
        self.destroy()
        _ = try? runCommand(
            "virsh",
            ["-c", Libvirt.uri, "undefine", self.name, "--snapshots-metadata", "--managed-save", "--tpm", "--nvram"]
        )
        try? FileManager.default.removeItem(atPath: "/var/lib/libvirt/swtpm/\(self.uuid)")
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}
