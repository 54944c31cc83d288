import Foundation
import LocalFarm
import Processes

/// An SSH key pair made by `ssh-keygen` (no passphrase), for tests.
public struct SSHKeyPair: Sendable {
    public enum KeyType: String, Sendable { case ed25519, ecdsa, rsa }

    /// The private key as ssh-keygen wrote it (`-----BEGIN OPENSSH PRIVATE KEY-----`…).
    public let privateKey: String
    /// The public key's line (`ssh-ed25519 AAAA… comment`).
    public let publicKey: String

    /// The key's type and base64 blob, without the comment: what a known_hosts line holds.
    public var typeAndKey: String { publicKey.split(separator: " ").prefix(2).joined(separator: " ") }

    /// A new key pair of `type`.
    public static func generate(_ type: KeyType = .ed25519, comment: String = "kiln-test") async throws -> SSHKeyPair {
        try await onThread {
            let dir = try TempDir("ssh-key")
            let file = dir.path("key").path
            try run("ssh-keygen", ["-q", "-t", type.rawValue, "-N", "", "-C", comment, "-f", file] + (type == .rsa ? ["-b", "2048"] : []))
            return SSHKeyPair(privateKey: try String(contentsOfFile: file, encoding: .utf8),
                              publicKey: try String(contentsOfFile: file + ".pub", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}

/// A private git server over SSH for tests, as GitLab serves one: Debian's OpenSSH server
/// (`sshd -D -e -f CONFIG`, not a daemon, stopped by PID) on a free loopback port, with host
/// keys of its own, public key login only, for the deploy keys given (`AuthorizedKeysFile`),
/// where a forced command lets only `git-upload-pack` run (through git-shell). Repositories
/// are addressed by their absolute path: `ssh://root@127.0.0.1:PORT/abs/path/origin.git`.
///
/// The login user is root (no other user with a shell exists on these machines; `PermitRootLogin
/// prohibit-password`, so keys only). sshd needs its privilege separation folder `/run/sshd`,
/// which Debian's init script makes at boot; `start` makes it (mode 0755) when it is missing.
public final class PrivateGitSSHServer: Sendable {
    public let port: Int
    /// The user the URL names.
    public let user = "root"
    /// The server's host keys, one per type it was started with.
    public let hostKeys: [SSHKeyPair]
    private let folder: TempDir
    private let sshd: ManagedProcess

    /// The server as a fetch policy allows it (`--allow-fetch-from`).
    public var server: String { "127.0.0.1:\(port)" }

    /// The URL of the bare repository at `path` (absolute).
    public func url(_ path: URL) -> String { "ssh://\(user)@127.0.0.1:\(port)\(path.path)" }

    /// known_hosts lines pinning the host keys of `types` (all when nil), as
    /// `ssh-keyscan -p PORT 127.0.0.1` prints them: `[127.0.0.1]:PORT type base64`.
    public func knownHosts(_ types: [SSHKeyPair.KeyType]? = nil) -> String {
        zip(hostKeyTypes, hostKeys).filter { types?.contains($0.0) ?? true }
            .map { "[127.0.0.1]:\(port) \($0.1.typeAndKey)\n" }.joined()
    }

    private let hostKeyTypes: [SSHKeyPair.KeyType]

    private init(port: Int, hostKeyTypes: [SSHKeyPair.KeyType], hostKeys: [SSHKeyPair], folder: TempDir, sshd: ManagedProcess) {
        self.port = port
        self.hostKeyTypes = hostKeyTypes
        self.hostKeys = hostKeys
        self.folder = folder
        self.sshd = sshd
    }

    deinit { stop() }

    /// Starts sshd on a free loopback port, letting in `deployKeys` (public key lines) only,
    /// with a new host key of each of `hostKeyTypes`; returns once it listens.
    public static func start(deployKeys: [String], hostKeyTypes: [SSHKeyPair.KeyType] = [.ed25519]) async throws -> PrivateGitSSHServer {
        guard let sshdPath = ["/usr/sbin/sshd"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw FarmError("private git server: /usr/sbin/sshd is missing (apt-get install openssh-server)")
        }
        if !FileManager.default.fileExists(atPath: "/run/sshd") {
            try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
        let folder = try TempDir("git-ssh")
        let dir = folder.url.path
        var hostKeys: [SSHKeyPair] = []
        for (i, type) in hostKeyTypes.enumerated() {
            let key = try await SSHKeyPair.generate(type, comment: "host")
            hostKeys.append(key)
            // sshd refuses a host key that others may read.
            guard FileManager.default.createFile(atPath: "\(dir)/host\(i)", contents: Data(key.privateKey.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw FarmError("private git server: cannot write its host key in \(dir)")
            }
        }
        try Data(deployKeys.map { $0 + "\n" }.joined().utf8).write(to: folder.path("authorized_keys"))
        let wrapper = """
        #!/bin/sh
        # The forced command: only git-upload-pack, whatever the client asked for.
        case "$SSH_ORIGINAL_COMMAND" in
          "git-upload-pack "*) exec git-shell -c "$SSH_ORIGINAL_COMMAND" ;;
          *) echo "only git-upload-pack runs here" >&2; exit 1 ;;
        esac

        """
        guard FileManager.default.createFile(atPath: "\(dir)/upload-pack-only", contents: Data(wrapper.utf8), attributes: [.posixPermissions: 0o755]) else {
            throw FarmError("private git server: cannot write its forced command in \(dir)")
        }
        let port = try FreePort.next()
        let config = """
        ListenAddress 127.0.0.1:\(port)
        \(hostKeyTypes.indices.map { "HostKey \(dir)/host\($0)" }.joined(separator: "\n"))
        PidFile \(dir)/sshd.pid
        AuthorizedKeysFile \(dir)/authorized_keys
        AuthenticationMethods publickey
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        PermitRootLogin prohibit-password
        AllowUsers root
        # The folder is under /tmp, which is writable by all: StrictModes would refuse it.
        StrictModes no
        ForceCommand \(dir)/upload-pack-only
        PermitTTY no
        AllowTcpForwarding no
        AllowAgentForwarding no
        X11Forwarding no
        PermitUserEnvironment no
        LogLevel VERBOSE

        """
        try config.write(to: folder.path("sshd_config"), atomically: true, encoding: .utf8)
        let sshd = try ManagedProcess(name: "sshd (private git)", executable: sshdPath, arguments: ["-D", "-e", "-f", "\(dir)/sshd_config"],
                                      logFile: folder.path("sshd.log"))
        let server = PrivateGitSSHServer(port: port, hostKeyTypes: hostKeyTypes, hostKeys: hostKeys, folder: folder, sshd: sshd)
        // Ready when it says so: a probe connection would show up in `connections`.
        try await sshd.waitUntilListening(port: port)
        return server
    }

    /// sshd's log (stderr, LogLevel VERBOSE).
    public var log: String { (try? String(contentsOf: folder.path("sshd.log"), encoding: .utf8)) ?? "" }

    /// Connections sshd accepted so far.
    public var connections: Int { log.components(separatedBy: "Connection from ").count - 1 }

    /// Public key logins sshd refused, and accepted, so far.
    public var refusedKeys: Int { log.components(separatedBy: "Failed publickey for").count - 1 }
    public var acceptedKeys: Int { log.components(separatedBy: "Accepted publickey for").count - 1 }

    /// Stops sshd by PID; harmless twice.
    public func stop() { sshd.stop(grace: 5) }
}

extension ManagedProcess {
    /// Waits until sshd's log says it listens on `port`.
    fileprivate func waitUntilListening(port: Int) async throws {
        let file = logFile
        try await waitUntilReady(timeout: 15) {
            ((try? String(contentsOf: file, encoding: .utf8)) ?? "").contains("Server listening on 127.0.0.1 port \(port)")
        }
    }
}
