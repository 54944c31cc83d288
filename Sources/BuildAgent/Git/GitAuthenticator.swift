import CLibGit2
import Foundation
import KilnCore

/// The credential side of one fetch, inside libgit2's callbacks: answers its credential
/// callback (`git_remote_callbacks.credentials`) with the project's `GitCredential` at most
/// once, and checks an SSH server's host key (`certificate_check`) against the pins, both by
/// `GitCredentialRules`. Keeps why it failed a fetch, which the fetch reports instead of
/// libgit2's own text ("authentication required", "user canceled hostkey check").
///
/// Thread-confined, like `FetchContext` that holds it: libgit2 calls back on the fetching
/// thread. HTTPS certificates are left to libgit2's own TLS check.
final class GitAuthenticator {
    let credential: GitCredential?
    /// The URL's server: what libgit2 connects to (the guard refuses any other).
    let server: RepositoryEndpoint?
    /// The operator allowed this server by name (`--allow-fetch-from`): a token may go to it
    /// over plain HTTP.
    let trusted: Bool
    private var answered = false
    /// Why a callback failed the fetch.
    private(set) var failure: String?

    /// Why the fetch failed, when a credential's part in it explains libgit2's `message`: a
    /// callback's failure, or an HTTP 403 or 404 after the credential was given.
    func explanation(of message: String) -> String? {
        failure ?? GitCredentialRules.statusAfterAnswer(message, credential: credential, server: serverName, answered: answered)
    }

    init(credential: GitCredential?, url: String, policy: FetchPolicy) {
        self.credential = credential
        let server = RepositoryEndpoint(url: url)
        self.server = server
        self.trusted = server.map { policy.allows(host: $0.host, port: $0.port) } ?? false
    }

    /// How messages name the server: `host`, with `:port` when it is not the scheme's default
    /// (for SSH always, as known_hosts and the host key messages do).
    var serverName: String {
        guard let server else { return "the server" }
        let standard = server.scheme != "ssh" && RepositoryEndpoint.defaultPorts[server.scheme] == server.port
        return FetchAllowance.text(host: server.host, port: standard ? nil : server.port)
    }

    /// libgit2's credential callback.
    func acquire(_ out: UnsafeMutablePointer<UnsafeMutablePointer<git_credential>?>, usernameFromURL: String?, allowed: UInt32) -> Int32 {
        let answer = GitCredentialRules.answer(
            credential: credential, scheme: server?.scheme ?? "", server: serverName, usernameFromURL: usernameFromURL,
            allowed: allowed, answeredBefore: answered, plainHTTPTrusted: trusted)
        let code: Int32
        switch answer {
        case .username(let user):
            return git_credential_username_new(out, user)
        case .refuse(let why):
            return fail(why)
        case .userPassword(let user, let password):
            answered = true
            code = git_credential_userpass_plaintext_new(out, user, password)
        case .sshKey(let user, let key):
            answered = true
            code = git_credential_ssh_key_memory_new(out, user, nil, key, nil)
        }
        if code < 0 {
            let detail = git_error_last().flatMap { $0.pointee.message.map { String(cString: $0) } } ?? "error \(code)"
            return fail("cannot hand the project's git credential (\(credential?.summary ?? "none")) to libgit2: \(detail)")
        }
        return 0
    }

    /// libgit2's certificate callback: SSH host keys are checked against the pins; anything
    /// else (an HTTPS certificate) keeps libgit2's own verdict.
    func checkCertificate(_ cert: UnsafeMutablePointer<git_cert>, host: String) -> Int32 {
        guard cert.pointee.cert_type == GIT_CERT_HOSTKEY_LIBSSH2 else { return GIT_PASSTHROUGH.rawValue }
        let hostkey = UnsafeMutableRawPointer(cert).assumingMemoryBound(to: git_cert_hostkey.self).pointee
        guard hostkey.type.rawValue & GIT_CERT_SSH_RAW.rawValue != 0, let raw = hostkey.hostkey else {
            return fail("the SSH server \(serverName) presented no host key libgit2 could read, so it cannot be checked against the pinned one")
        }
        let blob = [UInt8](UnsafeRawBufferPointer(start: raw, count: hostkey.hostkey_len))
        var fingerprint: String?
        if hostkey.type.rawValue & GIT_CERT_SSH_SHA256.rawValue != 0 {
            fingerprint = withUnsafeBytes(of: hostkey.hash_sha256) { GitCredentialRules.fingerprint(sha256: Array($0)) }
        }
        // The port connected to (GuardedStream keeps every connection of the fetch to it).
        let port = FetchGuard.current?.server?.port ?? server?.port ?? 22
        switch GitCredentialRules.hostKey(.init(blob: blob, fingerprint: fingerprint), host: host, port: port, credential: credential) {
        case .pinned: return 0
        case .unpinned(let why), .changed(let why): return fail(why)
        }
    }

    private func fail(_ why: String) -> Int32 {
        failure = why
        git_error_set_str(Int32(GIT_ERROR_SSH.rawValue), why)
        return -1
    }

    /// The callbacks, for a `git_remote_callbacks` whose payload is a `FetchContext`.
    static let credentialsCallback: git_credential_acquire_cb = { out, _, usernameFromURL, allowed, payload in
        guard let out, let payload else { return -1 }
        let context = Unmanaged<FetchContext>.fromOpaque(payload).takeUnretainedValue()
        return context.authenticator.acquire(out, usernameFromURL: usernameFromURL.map { String(cString: $0) }, allowed: allowed)
    }

    static let certificateCallback: git_transport_certificate_check_cb = { cert, _, host, payload in
        guard let cert, let host, let payload else { return -1 }
        let context = Unmanaged<FetchContext>.fromOpaque(payload).takeUnretainedValue()
        return context.authenticator.checkCertificate(cert, host: String(cString: host))
    }
}
