import AsyncHTTPClient
import DockerAPI
import Foundation
import KilnCore
import TLSTrust

/// What the push step pushed: the digest in the farm's registry, and each `Project.pushTo`
/// repository's copy as `host/path:tag@sha256:…` (`Build.pushedTo`).
struct Pushed: Sendable {
    let digest: String
    let elsewhere: [String]
}

extension BuildRunner {
    // push: to the farm's registry with the agent's credentials; the digest from the push
    // stream, else from the registry. Then to each `pushTo` repository with the project's
    // login for its host: every login is checked before anything is pushed, so a missing one
    // pushes nowhere.
    func push(repository: String, project: Project, tag: String, secrets: BuildSecrets, reporter: BuildReporter) async throws -> Pushed {
        let targets = try (project.pushTo ?? []).map { target -> (repository: String, login: RegistryLogin) in
            let host = ImageRegistry.host(of: target)
            guard let login = secrets.login(for: host) else {
                throw StepFailure(step: .push, message: "no registry credential for \(host): set one with `kiln credential set registry \(host) --project \(project.name)`"
                    + (secretsSource == nil ? " (and start this agent with --scheduler: without it builds get no credentials)" : ""))
            }
            return (target, login)
        }
        reporter.log("pushing \(repository):\(tag)")
        let digest: String
        do {
            let fromStream = try await docker.push(image: repository, tag: tag, insecure: configuration.registryInsecure,
                                                   credentials: configuration.registryCredentials) { reporter.output($0) }
            if let d = fromStream {
                digest = d
            } else {
                digest = try await DockerClient.registryDigest(registry: configuration.registry, repository: project.repositoryName, tag: tag,
                                                               insecure: configuration.registryInsecure, credentials: configuration.registryCredentials,
                                                               httpClient: registryHTTP)
            }
        } catch let e as DockerError {
            throw StepFailure(step: .push, message: "could not push to \(configuration.registry): \(e)")
        }
        var elsewhere: [String] = []
        for target in targets {
            let pushed = try await push(reference: "\(repository):\(tag)", to: target.repository, tag: tag, login: target.login, project: project.name, reporter: reporter)
            elsewhere.append("\(target.repository):\(tag)@\(pushed)")
        }
        return Pushed(digest: digest, elsewhere: elsewhere)
    }

    /// Tags the built image as `target:tag` and pushes it with `login`; returns the digest.
    /// The engine's registries.conf decides between TLS and plain HTTP for the target's host
    /// (`tlsVerify` is left out). A refusal names the host and the user, never the password:
    /// podman answers a refused push with HTTP 200 and an error in the stream, which
    /// `DockerClient.push` reads.
    private func push(reference: String, to target: String, tag: String, login: RegistryLogin, project: String, reporter: BuildReporter) async throws -> String {
        let host = ImageRegistry.host(of: target)
        let credentials = RegistryCredentials(user: login.username, password: login.password)
        reporter.log("pushing \(target):\(tag) (pushTo) as user \(login.username) of \(host)")
        do {
            try await docker.tag(reference, repository: target, tag: tag)
            if let digest = try await docker.push(image: target, tag: tag, insecure: false, credentials: credentials, onLine: { reporter.output($0) }) {
                return digest
            }
            let path = String(target.dropFirst(target.prefix { $0 != "/" }.count + 1))
            return try await DockerClient.registryDigest(registry: host, repository: path, tag: tag, insecure: HostReach.isLoopback(Self.hostName(host)), credentials: credentials,
                                                  httpClient: registryHTTP)
        } catch let e as DockerError {
            let refused = Self.looksRefused(e.message)
            throw StepFailure(step: .push, message: refused
                ? "could not push to \(target): the registry \(host) refused the credential of user \(login.username) (\(e.message)); set the right one with `kiln credential set registry \(host) --project \(project)`"
                : "could not push to \(target) as user \(login.username): \(e)")
        }
    }

    /// `host` of `host:port` (an IPv6 address in brackets without them).
    static func hostName(_ hostPort: String) -> String {
        if hostPort.hasPrefix("[") { return String(hostPort.dropFirst().prefix { $0 != "]" }) }
        return String(hostPort.prefix { $0 != ":" })
    }
}

extension BuildRunner {
    /// The client of the agent's own calls to registries' APIs (a digest read after a push, a
    /// reused build's new tag): the system's roots and the agent's `--ca-file`, as for the
    /// schedulers; one connect attempt, so a registry that is down or not trusted fails the
    /// call at once with its own error. (The engine's pushes and pulls trust the builder
    /// host's `certs.d` instead: docs/tls.md.)
    var registryHTTP: HTTPClient {
        OutgoingHTTP.client(.init(connect: .seconds(5), read: .seconds(30), retryConnecting: false), trusting: configuration.schedulerCA)
    }
}
