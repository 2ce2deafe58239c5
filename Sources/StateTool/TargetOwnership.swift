import Foundation
import _VTPMPosix

/// Owners and modes of what `vtpm-state` writes as root into a VM's directory, so that the user the emulator
/// runs as can use it: libvirt keeps a domain's state in `/var/lib/libvirt/swtpm/<uuid>/tpm2` (the `<uuid>`
/// directory root's, mode 0711; `tpm2` and its files the swtpm user's, 0700 and 0600). Every change is made
/// through descriptors and `*at` calls without following symbolic links (the directories may be writable by
/// that user while root works in them).
enum TargetOwnership {
    /// Creates the missing directories of `target`, each with the mode (and, for root, the owner and
    /// group) of the directory at the same depth from the end of `source`; 0700 where `source` has none.
    /// - Throws: ``StateToolError`` (`notFound`) when a directory cannot be created.
    static func createDirectories(_ target: String, mirroring source: String) throws {
        let targetParts = self.components(ToolDefaults.absolute(target))
        let sourceParts = self.components(ToolDefaults.absolute(source))
        var missing: [Int] = []
        for depth in stride(from: targetParts.count, through: 1, by: -1) {
            if fileStatus(atPath: self.path(targetParts.prefix(depth))) != nil { break }
            missing.insert(depth, at: 0)
        }
        for depth in missing {
            let fromEnd = targetParts.count - depth
            var mode: UInt32 = 0o700
            var owner: (UInt32, UInt32)? = nil
            if sourceParts.count - fromEnd > 0,
                let model = self.status(self.path(sourceParts.prefix(sourceParts.count - fromEnd))),
                model.kind == .directory
            {
                mode = model.mode
                if ProcessControl.effectiveUserID == 0 { owner = (model.owner, model.group) }
            }
            let parent = self.path(targetParts.prefix(depth - 1))
            do {
                let handle = try DirectoryHandle.open(parent)
                defer { handle.close() }
                try handle.makeDirectory(targetParts[depth - 1], mode: mode, owner: owner)
            } catch {
                throw StateToolError(
                    .notFound,
                    "cannot create directory \(self.path(targetParts.prefix(depth))): \(error)"
                )
            }
        }
    }

    /// Run by root: the regular files in `directory` that root owns go to the directory's owner and group when
    /// that is another user (the emulator's user must open them; vtpmd refuses files that are not its own).
    /// - Throws: ``StateToolError`` (`damaged`) naming a file that could not be given back.
    static func giveFilesToDirectoryOwner(_ directory: String) throws {
        guard ProcessControl.effectiveUserID == 0 else { return }
        let handle: DirectoryHandle
        do { handle = try DirectoryHandle.open(directory) } catch {
            throw StateToolError(.notFound, "cannot open \(directory): \(error)")
        }
        defer { handle.close() }
        do {
            guard let owner = try handle.status("."), owner.owner != 0 else { return }
            for name in try handle.entries() {
                guard let file = try handle.status(name), file.kind == .regular, file.owner == 0 else { continue }
                try handle.changeOwner(name, owner: owner.owner, group: owner.group)
            }
        } catch {
            throw StateToolError(.damaged, "the files in \(directory) could not be given to its owner: \(error)")
        }
    }

    private static func status(_ path: String) -> FileStatus? {
        guard let handle = try? DirectoryHandle.open(path) else { return nil }
        defer { handle.close() }
        return try? handle.status(".")
    }

    private static func components(_ path: String) -> [String] {
        path.split(separator: "/").map(String.init)
    }

    private static func path(_ parts: ArraySlice<String>) -> String {
        "/" + parts.joined(separator: "/")
    }
}
