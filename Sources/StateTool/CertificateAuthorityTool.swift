import EndorsementCA

/// `vtpm-state ca init`: the host CA vtpmd and `vtpm-state` issue EK certificates from.
public enum CertificateAuthorityTool {
    /// Creates a CA in `directory` (never overwriting one).
    /// - Parameters:
    ///   - directory: The CA directory, created 0700 if missing.
    ///   - subject: The CA's name (`CN=...,O=...`), or nil for `HostCA.defaultSubject`.
    /// - Returns: A one-line summary: the directory, subject and certificate file.
    /// - Throws: ``StateToolError``: `exists` when the directory already holds a CA, `certificateAuthority` otherwise.
    public static func initialize(directory: String, subject: String? = nil) throws -> String {
        do {
            let ca = try HostCA.create(at: directory, subject: subject ?? HostCA.defaultSubject)
            let certificate =
                directory.hasSuffix("/")
                ? directory + HostCA.certificateFileName : directory + "/" + HostCA.certificateFileName
            return "created CA \(ca.subject) in \(directory) (certificate \(certificate))"
        } catch let error as EndorsementCAError where error.code == .alreadyExists {
            throw StateToolError(.exists, "\(error.message)")
        } catch {
            throw StateToolError(.certificateAuthority, "cannot create the CA in \(directory): \(error)")
        }
    }
}
