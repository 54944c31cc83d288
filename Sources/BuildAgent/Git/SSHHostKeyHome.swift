import Foundation
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// A HOME for one SSH fetch whose `.ssh/known_hosts` holds the project's pinned host keys, so
/// that libgit2 asks the server for the pinned key's type.
///
/// Why: libgit2 1.5 tells libssh2 which host key type to ask for from the first line for the
/// host in `$HOME/.ssh/known_hosts` (`find_hostkey_preference`, src/libgit2/transports/ssh.c),
/// and without one libssh2 1.10 asks for ECDSA before Ed25519. A server that holds both
/// (GitLab, GitHub, any OpenSSH with its default keys) then presents its ECDSA key, which an
/// Ed25519 pin refuses. The file decides nothing else: the pin is checked by the fetch's
/// certificate callback (`GitCredentialRules.hostKey`), and the agent user's own
/// `~/.ssh/known_hosts` is no longer read at all.
///
/// Only Ed25519 and ECDSA lines are written: libssh2 1.10 fails on the whole file when it
/// cannot read one line (an `sk-…` key), and for an RSA line libgit2 would ask for `ssh-rsa`
/// signatures, which OpenSSH 8.8 and later refuse.
///
/// Rules for callers: it changes the process's HOME, so use it only in a process that runs one
/// fetch and nothing else meanwhile (`kiln git-fetch`); install it after libgit2 is
/// initialised (libgit2 reads HOME for the global git configuration then, and that stays the
/// agent user's); `remove()` when the fetch is over. The folder holds no secret (host keys are
/// public; the deploy key stays in memory) and is mode 0700 all the same.
public final class SSHHostKeyHome {
    /// The temporary HOME.
    public let folder: URL
    private let previousHome: String?

    private init(folder: URL, previousHome: String?) {
        self.folder = folder
        self.previousHome = previousHome
    }

    /// Makes the HOME and points this process's HOME at it, when `url` is an SSH URL and
    /// `credential` an SSH key with pins libssh2 can read for its server; else nil and
    /// nothing changes.
    public static func install(for credential: GitCredential?, url: String) throws -> SSHHostKeyHome? {
        guard case .sshKey(_, let text)? = credential, let server = RepositoryEndpoint(url: url), server.scheme == "ssh",
              let knownHosts = try? KnownHosts.parse(text) else { return nil }
        let lines = preferenceLines(knownHosts, host: server.host, port: server.port)
        guard !lines.isEmpty else { return nil }
        precondition(libgit2Initialised, "git_libgit2_init failed")
        var template = Array(FileManager.default.temporaryDirectory.appendingPathComponent("kiln-git-fetch-XXXXXX").path.utf8CString)
        guard let made = mkdtemp(&template) else {
            throw GitError(.io, "prepare the SSH fetch", "cannot make a temporary folder: \(String(cString: strerror(errno)))")
        }
        let folder = URL(fileURLWithPath: String(cString: made))
        let home = SSHHostKeyHome(folder: folder, previousHome: ProcessInfo.processInfo.environment["HOME"])
        do {
            let ssh = folder.appendingPathComponent(".ssh")
            try FileManager.default.createDirectory(at: ssh, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            let file = ssh.appendingPathComponent("known_hosts")
            guard FileManager.default.createFile(atPath: file.path, contents: Data(lines.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw GitError(.io, "prepare the SSH fetch", "cannot write \(file.path)")
            }
        } catch {
            try? FileManager.default.removeItem(at: folder)
            throw error as? GitError ?? GitError(.io, "prepare the SSH fetch", "\(error)")
        }
        setenv("HOME", folder.path, 1)
        return home
    }

    /// Gives HOME back and removes the folder.
    public func remove() {
        if let previousHome { setenv("HOME", previousHome, 1) } else { unsetenv("HOME") }
        try? FileManager.default.removeItem(at: folder)
    }

    /// The known_hosts lines for `host`:`port` that libssh2 1.10 reads and libgit2 may ask
    /// for, spelled as libssh2 looks them up (`host`, or `[host]:port` on another port than 22).
    static func preferenceLines(_ knownHosts: KnownHosts, host: String, port: Int) -> String {
        let name = port == 22 ? host : "[\(host)]:\(port)"
        let readable: Set<String> = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"]
        return knownHosts.entries(host: host, port: port)
            .filter { readable.contains($0.keyType) }
            .map { "\(name) \($0.keyType) \(Data($0.key).base64EncodedString())\n" }
            .joined()
    }
}
