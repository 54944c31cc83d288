import CLibGit2
import Foundation
import KilnCore

/// What a fetch answers when libgit2 asks it for credentials, and what it says of an SSH
/// server's host key (pure: `GitAuthenticator` carries it out inside libgit2's callbacks).
///
/// Credentials, in this order:
/// 1. An SSH server that first asks only for the user name gets the URL's user, else `git`
///    (never counted as an answer: libgit2 asks again for the key right after).
/// 2. A fetch answers with its credential at most once. libgit2 asks a second time only
///    because the server refused the first answer (a wrong or revoked token, a key that is no
///    deploy key of the repository), and asking the server again would only repeat it.
/// 3. No credential: the fetch fails, saying how to set one.
/// 4. HTTP(S) takes a token as user name and password (Basic); SSH takes a deploy key, in
///    memory, as the URL's user (default `git`). The other pairings fail with what to change.
/// 5. A token goes over plain `http://` only to a server the operator allowed by name
///    (`--allow-fetch-from`): anywhere else the network between would read it.
///
/// Host keys: an SSH server's key must be one the credential pins for its host and port
/// (`KnownHosts.entries(host:port:)`); no pin and a different key fail with different
/// messages. Every message names the credential (`GitCredential.summary`), never its secret.
enum GitCredentialRules {
    /// What to hand libgit2.
    enum Answer: Equatable {
        case username(String)
        case userPassword(username: String, password: String)
        case sshKey(username: String, privateKey: String)
        /// Fail the fetch with this reason.
        case refuse(String)
    }

    /// The user an SSH fetch logs in as when its URL names none (GitLab's and GitHub's).
    static let defaultSSHUser = "git"

    /// The answer to libgit2's credential callback. `allowed` is its `allowed_types` mask,
    /// `server` the URL's server as messages show it.
    static func answer(credential: GitCredential?, scheme: String, server: String, usernameFromURL: String?,
                       allowed: UInt32, answeredBefore: Bool, plainHTTPTrusted: Bool = false) -> Answer {
        let ssh = scheme == "ssh"
        if ssh, allowed == GIT_CREDENTIAL_USERNAME.rawValue {
            return .username(usernameFromURL ?? defaultSSHUser)
        }
        guard let credential else {
            return .refuse("\(server) asks for credentials and the project has none: set one with \(setCommand(ssh: ssh))")
        }
        if answeredBefore {
            return .refuse(refused(credential, server: server, user: usernameFromURL))
        }
        switch (credential, ssh) {
        case (.token(let user, let token), false):
            guard allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT.rawValue != 0 else {
                return .refuse("\(server) asks for a kind of HTTP authentication other than Basic, and the project's git credential (\(credential.summary)) is a user name and token, sent only by Basic authentication")
            }
            guard scheme != "http" || plainHTTPTrusted else {
                return .refuse("\(server) asks for credentials over plain http://, where the network between would read the token: use the repository's https:// URL (or, for a server on a network you trust, allow it with kiln agent \(FetchPolicy.allowOption) \(server))")
            }
            return .userPassword(username: user, password: token)
        case (.sshKey(let key, _), true):
            let user = usernameFromURL ?? defaultSSHUser
            guard allowed & GIT_CREDENTIAL_SSH_MEMORY.rawValue != 0 else {
                if allowed & (GIT_CREDENTIAL_SSH_KEY.rawValue | GIT_CREDENTIAL_SSH_CUSTOM.rawValue) != 0 {
                    return .refuse("this libgit2 was built without in-memory SSH keys (GIT_SSH_MEMORY_CREDENTIALS), which Kiln needs to keep the deploy key off the disk")
                }
                return .refuse("\(server) does not take a public key for user \(Validation.printable(user)), and the project's git credential is \(credential.summary): check the user in the repository URL (GitLab's and GitHub's is git)")
            }
            return .sshKey(username: user, privateKey: key)
        case (.token, true):
            return .refuse("\(server) asks for credentials, and the project's git credential (\(credential.summary)) is for HTTPS, not SSH: set a deploy key with \(setCommand(ssh: true)), or use the repository's https:// URL")
        case (.sshKey, false):
            return .refuse("\(server) asks for credentials, and the project's git credential (\(credential.summary)) is for SSH, not HTTPS: set a token with \(setCommand(ssh: false)), or use the repository's SSH URL")
        }
    }

    /// Why the fetch fails when the server refused the credential.
    static func refused(_ credential: GitCredential, server: String, user: String?) -> String {
        switch credential {
        case .token(let user, _):
            "\(server) refused the project's git credential, \(credential.summary): check that the token of user \(Validation.printable(user)) is valid (not expired or revoked) and may read the repository, then set it again with \(setCommand(ssh: false))"
        case .sshKey:
            "\(server) refused the project's git credential, \(credential.summary) for user \(Validation.printable(user ?? defaultSSHUser)): check that its public key is a deploy key of this repository with read access and that the user in the URL is right (GitLab's and GitHub's is git), then set it again with \(setCommand(ssh: true))"
        }
    }

    /// What an HTTP 403 or 404 means once the credential was given (libgit2 says only
    /// "unexpected http status code: 403"); nil for other messages or before any answer.
    static func statusAfterAnswer(_ message: String, credential: GitCredential?, server: String, answered: Bool) -> String? {
        guard answered, let credential, message.hasPrefix("unexpected http status code: ") else { return nil }
        switch message.dropFirst("unexpected http status code: ".count) {
        case "403":
            return "\(server) let the project's git credential, \(credential.summary), in but refused it the repository (HTTP 403): check that the token may read this repository (GitLab: a deploy token or project access token with read_repository)"
        case "404":
            return "\(server) found no such repository for the project's git credential, \(credential.summary) (HTTP 404): check the repository URL, and that the token may see the repository (GitLab answers 404 to one that may not)"
        default:
            return nil
        }
    }

    /// The command that sets a project's git credential.
    static func setCommand(ssh: Bool) -> String {
        ssh ? "kiln credential set git --project NAME --ssh-key-file KEY --known-hosts-file HOSTS"
            : "kiln credential set git --project NAME --username USER (the token on standard input)"
    }

    // MARK: host keys

    /// An SSH server's host key as the handshake presented it.
    struct PresentedKey: Equatable {
        /// The key blob (what a known_hosts line holds, base64-decoded).
        var blob: [UInt8]
        /// `SHA256:…` as `ssh-keygen -l` prints it, when libgit2 gave the hash.
        var fingerprint: String?

        /// The key's type, read from the blob (`ssh-ed25519`, `ecdsa-sha2-nistp256`…).
        var type: String { GitCredentialRules.keyType(of: blob) ?? "unknown" }
        var shown: String { fingerprint.map { "\(type) \($0)" } ?? type }
    }

    /// Whether the host key is the pinned one.
    enum HostKeyVerdict: Equatable {
        case pinned
        /// No pin for this host and port: the fetch fails.
        case unpinned(String)
        /// Pins exist and none is this key: the fetch fails.
        case changed(String)
    }

    static func hostKey(_ presented: PresentedKey, host: String, port: Int, credential: GitCredential?) -> HostKeyVerdict {
        let server = FetchAllowance.text(host: host, port: port)
        let scan = "`ssh-keyscan -p \(port) -t ed25519 \(host.contains(":") ? "[\(host)]" : host)`"
        let how = "set the deploy key and the server's host key with \(setCommand(ssh: true)), the host key as the line \(scan) prints once its fingerprint is checked against the one the server's administrators give (the server presented \(presented.shown))"
        guard case .sshKey(_, let text)? = credential else {
            let has = credential.map { "the project's git credential is \($0.summary)" } ?? "the project has no git credential"
            return .unpinned("the host key of \(server) is not pinned: \(has), and an SSH fetch needs a deploy key with the server's host key pinned: \(how)")
        }
        let knownHosts: KnownHosts
        do {
            knownHosts = try KnownHosts.parse(text)
        } catch {
            return .unpinned("the host key of \(server) is not pinned: the known_hosts lines of the project's git credential cannot be read (\(error)): \(how)")
        }
        let pins = knownHosts.entries(host: host, port: port)
        guard !pins.isEmpty else {
            let named = Set(knownHosts.entries.flatMap(\.hosts)).sorted().joined(separator: ", ")
            return .unpinned("the host key of \(server) is not pinned: the known_hosts lines of the project's git credential name only \(named), none of them \(port == 22 ? host : "[\(host)]:\(port)") (a server on another port than 22 is written [host]:port): \(how)")
        }
        if pins.contains(where: { $0.key == presented.blob }) { return .pinned }
        let types = Set(pins.map(\.keyType))
        if !types.contains(presented.type) {
            return .changed("the host key of \(server) is not the one pinned: the server presented \(presented.shown), and the project's git credential pins only \(types.sorted().joined(separator: ", ")) for it. Someone may be in the middle; if not, pin the server's ed25519 or ECDSA key (libgit2 1.5 cannot ask a server for its RSA key when it has others) after checking its fingerprint with the server's administrators")
        }
        return .changed("the host key of \(server) changed: it is not the one pinned in the project's git credential (the server presented \(presented.shown)), someone may be in the middle. If the server's key really changed, check the new fingerprint with the server's administrators and set the credential again with the new line")
    }

    /// What an SSH handshake that found no common host key type means, or nil for any other
    /// libgit2 message. libgit2 1.5 asks the server only for the type of the first pinned key
    /// for its host (`SSHHostKeyHome`), so this is a server without a key of that type.
    static func handshakeFailure(_ message: String, url: String) -> String? {
        guard message.hasPrefix("failed to start SSH session"), message.contains("Unable to exchange encryption keys"),
              let server = RepositoryEndpoint(url: url), server.scheme == "ssh" else { return nil }
        let name = FetchAllowance.text(host: server.host, port: server.port)
        return "the SSH handshake with \(name) failed (libssh2: \(message)): the server has no host key of the type the project's git credential pins for it, or no key exchange libssh2 1.10 knows. Compare the pinned line's key type with the server's keys (`ssh-keyscan -p \(server.port) \(server.host.contains(":") ? "[\(server.host)]" : server.host)`, fingerprints checked with the server's administrators): a server whose key type changed may also be someone in the middle"
    }

    /// The type name at the start of an SSH key blob (a uint32 length, then the name).
    static func keyType(of blob: [UInt8]) -> String? {
        guard blob.count >= 4 else { return nil }
        let length = blob[0..<4].reduce(0) { $0 << 8 | Int($1) }
        guard (1...64).contains(length), blob.count >= 4 + length else { return nil }
        let name = blob[4..<(4 + length)]
        guard name.allSatisfy({ (0x21...0x7e).contains($0) }) else { return nil }
        return String(decoding: name, as: UTF8.self)
    }

    /// `SHA256:` and the unpadded base64 of a SHA-256, as OpenSSH prints fingerprints.
    static func fingerprint(sha256: [UInt8]) -> String {
        "SHA256:" + Data(sha256).base64EncodedString().replacingOccurrences(of: "=", with: "")
    }
}
