import Foundation
import _VTPMPosix

/// Owners and modes of what `vtpm-state clone` creates, so that a clone made by root between two VMs'
/// directories is usable by the user the emulator runs as: libvirt keeps a domain's state in
/// `/var/lib/libvirt/swtpm/<uuid>/tpm2` (the `<uuid>` directory root's, mode 0711; `tpm2` and its files
/// the swtpm user's, 0700 and 0600).
enum TargetOwnership {
    /// Creates the missing directories of `target`, each with the mode (and, for root, the owner and
    /// group) of the directory at the same depth from the end of `source`; 0700 where `source` has none.
    /// - Throws: ``StateToolError`` (`notFound`) when a directory cannot be created.
    static func createDirectories(_ target: String, mirroring source: String) throws {
        let fm = FileManager.default
        let targetParts = self.components(ToolDefaults.absolute(target))
        let sourceParts = self.components(ToolDefaults.absolute(source))
        var missing: [Int] = []
        for depth in stride(from: targetParts.count, through: 1, by: -1) {
            if fm.fileExists(atPath: self.path(targetParts.prefix(depth))) { break }
            missing.insert(depth, at: 0)
        }
        for depth in missing {
            let path = self.path(targetParts.prefix(depth))
            let fromEnd = targetParts.count - depth
            var attributes: [FileAttributeKey: Any] = [.posixPermissions: 0o700]
            if sourceParts.count - fromEnd > 0,
                let model = try? fm.attributesOfItem(
                    atPath: self.path(sourceParts.prefix(sourceParts.count - fromEnd))
                ),
                model[.type] as? FileAttributeType == .typeDirectory
            {
                attributes[.posixPermissions] = model[.posixPermissions]
                if ProcessControl.effectiveUserID == 0 {
                    attributes[.ownerAccountID] = model[.ownerAccountID]
                    attributes[.groupOwnerAccountID] = model[.groupOwnerAccountID]
                }
            }
            do {
                try fm.createDirectory(atPath: path, withIntermediateDirectories: false, attributes: nil)
                try fm.setAttributes(attributes, ofItemAtPath: path)
            } catch {
                throw StateToolError(.notFound, "cannot create directory \(path): \(error)")
            }
        }
    }

    /// Run by root: the files in `directory` that root created go to the directory's owner and group
    /// (the emulator's user must open them; vtpmd refuses files that are not its own).
    static func giveFilesToDirectoryOwner(_ directory: String) {
        guard ProcessControl.effectiveUserID == 0 else { return }
        let fm = FileManager.default
        guard let owner = try? fm.attributesOfItem(atPath: directory),
            let uid = owner[.ownerAccountID] as? NSNumber, uid.intValue != 0,
            let names = try? fm.contentsOfDirectory(atPath: directory)
        else { return }
        for name in names {
            let path = directory + "/" + name
            guard let attributes = try? fm.attributesOfItem(atPath: path),
                attributes[.type] as? FileAttributeType == .typeRegular,
                (attributes[.ownerAccountID] as? NSNumber)?.intValue == 0
            else { continue }
            try? fm.setAttributes(
                [.ownerAccountID: uid, .groupOwnerAccountID: owner[.groupOwnerAccountID] ?? uid],
                ofItemAtPath: path
            )
        }
    }

    private static func components(_ path: String) -> [String] {
        path.split(separator: "/").map(String.init)
    }

    private static func path(_ parts: ArraySlice<String>) -> String {
        "/" + parts.joined(separator: "/")
    }
}
