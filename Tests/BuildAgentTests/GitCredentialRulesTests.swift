@testable import BuildAgent
import CLibGit2
import Foundation
import KilnCore
import Processes
import Testing

/// The answers to libgit2's credential callback and the host key verdicts (pure), and how the
/// kind of a failure crosses from `kiln git-fetch` to the agent.
@Suite("GitCredentialRules: what a fetch answers and says")
struct GitCredentialRulesTests {
    static let token = GitCredential.token(username: "deploy", token: "glpat-SECRET-0123456789")
    static let privateKey = "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETKEYBYTES\n-----END OPENSSH PRIVATE KEY-----\n"
    static let hostKey = GitCredentialRules.PresentedKey(blob: blob("ssh-ed25519", [1, 2, 3]), fingerprint: "SHA256:abc")

    /// An SSH key blob: a uint32 length, the type's name, then the key's bytes.
    static func blob(_ type: String, _ bytes: [UInt8]) -> [UInt8] {
        let name = Array(type.utf8)
        return [0, 0, 0, UInt8(name.count)] + name + bytes
    }

    static func ssh(pinning lines: String) -> GitCredential { .sshKey(privateKey: privateKey, knownHosts: lines) }

    static let userpass = GIT_CREDENTIAL_USERPASS_PLAINTEXT.rawValue
    static let publickey = GIT_CREDENTIAL_SSH_KEY.rawValue | GIT_CREDENTIAL_SSH_CUSTOM.rawValue | GIT_CREDENTIAL_SSH_MEMORY.rawValue

    func answer(_ credential: GitCredential?, _ scheme: String, user: String? = nil, allowed: UInt32, again: Bool = false, trusted: Bool = false) -> GitCredentialRules.Answer {
        GitCredentialRules.answer(credential: credential, scheme: scheme, server: "git.example.com", usernameFromURL: user, allowed: allowed,
                                  answeredBefore: again, plainHTTPTrusted: trusted)
    }

    func refusal(_ answer: GitCredentialRules.Answer) -> String? {
        if case .refuse(let why) = answer { return why }
        return nil
    }

    @Test("HTTP(S): a token is the Basic user and password, once; the second ask fails naming it")
    func https() throws {
        #expect(answer(Self.token, "https", user: "someone", allowed: Self.userpass) == .userPassword(username: "deploy", password: "glpat-SECRET-0123456789"))
        let again = try #require(refusal(answer(Self.token, "https", allowed: Self.userpass, again: true)))
        #expect(again.contains("git.example.com refused the project's git credential, an HTTPS token of user deploy"), "\(again)")
        #expect(again.contains("may read the repository") && again.contains("kiln credential set git"), "\(again)")
        let none = try #require(refusal(answer(nil, "https", allowed: Self.userpass)))
        #expect(none.hasPrefix("git.example.com asks for credentials and the project has none: set one with kiln credential set git --project"), "\(none)")
        let key = try #require(refusal(answer(Self.ssh(pinning: "h ssh-ed25519 AAAA"), "https", allowed: Self.userpass)))
        #expect(key.contains("is for SSH, not HTTPS"), "\(key)")
        let negotiate = try #require(refusal(answer(Self.token, "https", allowed: GIT_CREDENTIAL_DEFAULT.rawValue)))
        #expect(negotiate.contains("other than Basic"), "\(negotiate)")
    }

    @Test("HTTP 403 and 404 once the credential was given name it; before, or other errors, are libgit2's")
    func statusAfterAnswer() {
        let forbidden = GitCredentialRules.statusAfterAnswer("unexpected http status code: 403", credential: Self.token, server: "h", answered: true)
        #expect(forbidden?.contains("let the project's git credential, an HTTPS token of user deploy, in but refused it the repository (HTTP 403)") == true)
        #expect(GitCredentialRules.statusAfterAnswer("unexpected http status code: 404", credential: Self.token, server: "h", answered: true)?.contains("HTTP 404") == true)
        #expect(GitCredentialRules.statusAfterAnswer("unexpected http status code: 404", credential: Self.token, server: "h", answered: false) == nil)
        #expect(GitCredentialRules.statusAfterAnswer("unexpected http status code: 404", credential: nil, server: "h", answered: true) == nil)
        #expect(GitCredentialRules.statusAfterAnswer("unexpected http status code: 500", credential: Self.token, server: "h", answered: true) == nil)
    }

    @Test("plain HTTP: a token goes only to a server the operator allowed by name")
    func plainHTTP() throws {
        let refused = try #require(refusal(answer(Self.token, "http", allowed: Self.userpass)))
        #expect(refused.contains("over plain http://") && refused.contains("--allow-fetch-from git.example.com"), "\(refused)")
        #expect(answer(Self.token, "http", allowed: Self.userpass, trusted: true) == .userPassword(username: "deploy", password: "glpat-SECRET-0123456789"))
    }

    @Test("SSH: the user name first (the URL's, else git), then the key from memory once")
    func ssh() throws {
        let key = Self.ssh(pinning: "h ssh-ed25519 AAAA")
        #expect(answer(key, "ssh", allowed: GIT_CREDENTIAL_USERNAME.rawValue) == .username("git"))
        #expect(answer(key, "ssh", user: "deployer", allowed: GIT_CREDENTIAL_USERNAME.rawValue) == .username("deployer"))
        // Asking for the user name is not the answer: the key still comes after it.
        #expect(answer(key, "ssh", user: "git", allowed: Self.publickey) == .sshKey(username: "git", privateKey: Self.privateKey))
        let again = try #require(refusal(answer(key, "ssh", user: "git", allowed: Self.publickey, again: true)))
        #expect(again.contains("refused the project's git credential, an SSH deploy key for user git"), "\(again)")
        #expect(again.contains("deploy key of this repository"), "\(again)")
        let password = try #require(refusal(answer(key, "ssh", user: "git", allowed: Self.userpass)))
        #expect(password.contains("does not take a public key for user git"), "\(password)")
        let token = try #require(refusal(answer(Self.token, "ssh", user: "git", allowed: Self.publickey | Self.userpass)))
        #expect(token.contains("is for HTTPS, not SSH"), "\(token)")
    }

    @Test("no message ever holds the token or the key", arguments: ["http", "https", "ssh"])
    func noSecretInMessages(scheme: String) {
        let key = Self.ssh(pinning: "[other]:22 ssh-ed25519 AAAA")
        var messages: [String] = []
        for credential in [Self.token, key] {
            for allowed in [Self.userpass, Self.publickey, GIT_CREDENTIAL_DEFAULT.rawValue] {
                for again in [false, true] {
                    if let why = refusal(answer(credential, scheme, allowed: allowed, again: again)) { messages.append(why) }
                }
            }
            for verdict in [GitCredentialRules.hostKey(Self.hostKey, host: "h", port: 22, credential: credential)] {
                if case .unpinned(let why) = verdict { messages.append(why) }
                if case .changed(let why) = verdict { messages.append(why) }
            }
        }
        #expect(messages.count >= 8)
        for message in messages {
            #expect(!message.contains("SECRET"), "\(message)")
        }
    }

    @Test("host keys: pinned, not pinned (no credential, a token, another port), changed, another type")
    func hostKeys() throws {
        let pinned = "[git.example.com]:2222 ssh-ed25519 \(Data(Self.hostKey.blob).base64EncodedString())\n"
        #expect(GitCredentialRules.hostKey(Self.hostKey, host: "git.example.com", port: 2222, credential: Self.ssh(pinning: pinned)) == .pinned)
        #expect(GitCredentialRules.hostKey(Self.hostKey, host: "GIT.example.com", port: 2222, credential: Self.ssh(pinning: pinned)) == .pinned)

        func message(_ verdict: GitCredentialRules.HostKeyVerdict) -> (kind: String, text: String) {
            switch verdict {
            case .pinned: ("pinned", "")
            case .unpinned(let t): ("unpinned", t)
            case .changed(let t): ("changed", t)
            }
        }
        let none = message(GitCredentialRules.hostKey(Self.hostKey, host: "git.example.com", port: 2222, credential: nil))
        #expect(none.kind == "unpinned" && none.text.hasPrefix("the host key of git.example.com:2222 is not pinned: the project has no git credential"), "\(none)")
        #expect(none.text.contains("ssh-keyscan -p 2222 -t ed25519 git.example.com") && none.text.contains("ssh-ed25519 SHA256:abc"), "\(none)")
        let token = message(GitCredentialRules.hostKey(Self.hostKey, host: "git.example.com", port: 2222, credential: Self.token))
        #expect(token.kind == "unpinned" && token.text.contains("an HTTPS token of user deploy"), "\(token)")
        // Pinned for port 22 only: another port is another server.
        let otherPort = message(GitCredentialRules.hostKey(Self.hostKey, host: "git.example.com", port: 22, credential: Self.ssh(pinning: pinned)))
        #expect(otherPort.kind == "unpinned" && otherPort.text.contains("name only [git.example.com]:2222, none of them git.example.com"), "\(otherPort)")

        let other = "[git.example.com]:2222 ssh-ed25519 \(Data(Self.blob("ssh-ed25519", [9, 9])).base64EncodedString())"
        let changed = message(GitCredentialRules.hostKey(Self.hostKey, host: "git.example.com", port: 2222, credential: Self.ssh(pinning: other)))
        #expect(changed.kind == "changed" && changed.text.hasPrefix("the host key of git.example.com:2222 changed: it is not the one pinned"), "\(changed)")
        #expect(changed.text.contains("someone may be in the middle") && changed.text.contains("SHA256:abc"), "\(changed)")

        let rsa = "[git.example.com]:2222 ssh-rsa \(Data(Self.blob("ssh-rsa", [7])).base64EncodedString())"
        let type = message(GitCredentialRules.hostKey(Self.hostKey, host: "git.example.com", port: 2222, credential: Self.ssh(pinning: rsa)))
        #expect(type.kind == "changed" && type.text.contains("pins only ssh-rsa for it"), "\(type)")
    }

    @Test("a key blob's type and an OpenSSH fingerprint")
    func keyTypeAndFingerprint() {
        #expect(GitCredentialRules.keyType(of: Self.blob("ecdsa-sha2-nistp256", [1])) == "ecdsa-sha2-nistp256")
        #expect(GitCredentialRules.keyType(of: [0, 0, 0, 9, 65]) == nil)
        #expect(GitCredentialRules.keyType(of: []) == nil)
        #expect(GitCredentialRules.PresentedKey(blob: [1, 2], fingerprint: nil).shown == "unknown")
        // The SHA-256 of nothing, as ssh-keygen -l would print it (no '=' padding).
        let empty: [UInt8] = [0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
                              0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55]
        #expect(GitCredentialRules.fingerprint(sha256: empty) == "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU")
    }

    @Test("a handshake without a common host key type says so for SSH URLs only")
    func handshake() throws {
        let libgit2 = "failed to start SSH session: Unable to exchange encryption keys"
        let hint = try #require(GitCredentialRules.handshakeFailure(libgit2, url: "ssh://git@git.example.com:2222/a.git"))
        #expect(hint.contains("git.example.com:2222") && hint.contains("no host key of the type the project's git credential pins"), "\(hint)")
        #expect(GitCredentialRules.handshakeFailure(libgit2, url: "https://git.example.com/a.git") == nil)
        #expect(GitCredentialRules.handshakeFailure("failed to start SSH session: Timeout", url: "ssh://git.example.com/a.git") == nil)
    }

    @Test("the known_hosts libgit2 reads for the key type: the server's Ed25519 and ECDSA lines only, spelled as libssh2 looks them up")
    func preferenceLines() throws {
        let hosts = try KnownHosts.parse("""
        [git.example.com]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFPFrzJWw5GmrOrQWUcIGG0Irq2R2xkx8Gi2wr3Kc5j
        [git.example.com]:2222 ssh-rsa AAAAB3NzaC1yc2E=
        [git.example.com]:2222 sk-ssh-ed25519@openssh.com AAAAGnNr
        git.example.com ecdsa-sha2-nistp256 AAAAE2VjZHNh
        other.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5
        """)
        #expect(SSHHostKeyHome.preferenceLines(hosts, host: "git.example.com", port: 2222)
            == "[git.example.com]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFPFrzJWw5GmrOrQWUcIGG0Irq2R2xkx8Gi2wr3Kc5j\n")
        #expect(SSHHostKeyHome.preferenceLines(hosts, host: "git.example.com", port: 22) == "git.example.com ecdsa-sha2-nistp256 AAAAE2VjZHNh\n")
        #expect(SSHHostKeyHome.preferenceLines(hosts, host: "nowhere.example.com", port: 22) == "")
    }

    @Test("a failure's kind crosses from the child: tagged on its stderr, read back by the fetcher")
    func kindAcrossTheChild() throws {
        let error = GitError(.credential, "fetch https://h/a.git", "h refused the project's git credential")
        #expect(error.taggedDescription == "[credential] git: fetch https://h/a.git: h refused the project's git credential")
        let outcome = Spawn.Outcome(status: 1, stdout: Data(), stderr: Data((error.taggedDescription + "\n").utf8))
        let read = #expect(throws: GitError.self) { try GitFetcher.interpret(outcome, operation: "fetch https://h/a.git") }
        #expect(read?.kind == .credential && read?.message == "h refused the project's git credential")
        let refused = Spawn.Outcome(status: 1, stdout: Data(), stderr: Data("[refused] git: fetch u: no\n".utf8))
        #expect((#expect(throws: GitError.self) { try GitFetcher.interpret(refused, operation: "fetch u") })?.kind == .refused)
        // An unknown tag is text like any other.
        let odd = Spawn.Outcome(status: 1, stdout: Data(), stderr: Data("[nonsense] git: fetch u: no\n".utf8))
        let oddError = #expect(throws: GitError.self) { try GitFetcher.interpret(odd, operation: "fetch u") }
        #expect(oddError?.kind == .libgit2 && oddError?.message == "[nonsense] git: fetch u: no")
    }

    @Test("what logs and errors show of a URL: no user information, whatever its form", arguments: [
        ("https://u:p@ss@gitlab.example.com/g/a.git", "https://gitlab.example.com/g/a.git"),
        ("HTTPS://oauth2:glpat-x@GitLab.example.com:8443/g/a.git", "HTTPS://GitLab.example.com:8443/g/a.git"),
        ("ssh://git:pw@[::1]:2222/a.git", "ssh://[::1]:2222/a.git"),
        ("git@[gitlab.example.com:2222]:g/a.git", "[gitlab.example.com:2222]:g/a.git"),
        ("deploy@gitlab.example.com:g/a@b.git", "gitlab.example.com:g/a@b.git"),
        ("https://gitlab.example.com/g/a.git?x=u@v#w@z", "https://gitlab.example.com/g/a.git?x=u@v#w@z"),
        ("git://gitlab.example.com/a.git", "git://gitlab.example.com/a.git"),
    ])
    func redaction(url: String, shown: String) {
        #expect(RepositoryEndpoint.redacted(url) == shown)
    }

    @Test("a child's stdin: what it reads is the input; one that exits without reading does not kill the agent (no SIGPIPE)")
    func stdinHandOver() async throws {
        let input = Data((0..<300_000).map { UInt8($0 % 251) })
        let echoed = try await Spawn.runCancellable("/bin/cat", [], input: input, outputLimit: 1 << 20)
        #expect(echoed.status == 0 && echoed.stdout == input)
        let ignored = try await Spawn.runCancellable("/bin/true", [], input: input)
        #expect(ignored.status == 0)
        let none = try await Spawn.runCancellable("/bin/cat", [])
        #expect(none.status == 0 && none.stdout.isEmpty)
    }

    @Test("the credential goes on stdin: the arguments only say so")
    func arguments() throws {
        let fetcher = GitFetcher(executable: URL(fileURLWithPath: "/usr/bin/kiln"))
        let mirror = GitMirror(path: URL(fileURLWithPath: "/m.git"), url: "https://h/a.git")
        #expect(fetcher.arguments(for: mirror) == ["git-fetch", "--mirror", "/m.git", "--url", "https://h/a.git"])
        #expect(fetcher.arguments(for: mirror, withCredential: true) == ["git-fetch", "--mirror", "/m.git", "--url", "https://h/a.git", "--credential-stdin"])
    }
}
