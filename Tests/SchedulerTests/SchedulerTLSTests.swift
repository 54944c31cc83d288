import BuildAgent
import DockerAPI
import Foundation
import KilnClient
import KilnCore
import KilnTestSupport
import LocalFarm
@testable import Scheduler
import Testing
import TLSTrust

/// The scheduler serving TLS itself (`--tls-cert`, `--tls-key`), and the clients of Kiln that
/// reach its parts over TLS trusting a private CA (`--ca-file`): the CLI's API client, the
/// agent's secrets client, the scheduler's registry client. Certificates from `TestCA`
/// (openssl), for 127.0.0.1 and localhost.
@Suite("TLS: the scheduler serves it, Kiln's clients trust a private CA", .serialized)
struct SchedulerTLSTests {
    /// A scheduler on TLS with `pki`'s server certificate; `body` gets the harness (its
    /// requests trust `pki.ca`).
    static func withTLSScheduler(_ pki: TestCA, _ body: @escaping @Sendable (SchedulerHarness) async throws -> Void) async throws {
        let tls = try SchedulerTLS(certificateFile: pki.serverCertificate, keyFile: pki.serverKey)
        #expect(Set(tls.names) == ["127.0.0.1", "localhost"], "\(tls.names)")
        try await withScheduler(ca: try TrustedCA(file: pki.ca), configure: { $0.tls = tls }, body)
    }

    /// How long `body` takes, and what it threw.
    static func timedFailure(_ body: () async throws -> Void) async -> (Duration, String?) {
        let start = ContinuousClock.now
        do {
            try await body()
            return (ContinuousClock.now - start, nil)
        } catch {
            return (ContinuousClock.now - start, "\(error)")
        }
    }

    @Test func theAPIClientReachesAnHTTPSSchedulerOnlyTrustingItsCAAndSaysSoAtOnceWhenNot() async throws {
        let dir = try TempDir("scheduler-tls-api")
        let pki = try TestCA(dir.url)
        try await Self.withTLSScheduler(pki) { h in
            #expect(h.api.hasPrefix("https://127.0.0.1:"))
            let ca = try TrustedCA(file: pki.ca)
            let me = try await APIClient(h.api, token: h.adminToken, ca: ca).get("/api/v1/users/me", as: UserView.self)
            #expect(me.name == "admin" && me.admin)
            // By the certificate's other name too.
            let byName = h.api.replacingOccurrences(of: "127.0.0.1", with: "localhost")
            #expect(try await APIClient(byName, token: h.adminToken, ca: ca).get("/api/v1/users/me", as: UserView.self).name == "admin")

            // Without the CA, or with another: a TLS error saying what to do, at once (the
            // client does not try the connection again until a timeout).
            for client in [APIClient(h.api, token: h.adminToken), APIClient(h.api, token: h.adminToken, ca: try TrustedCA(file: pki.otherCA))] {
                let (took, error) = await Self.timedFailure { _ = try await client.get("/api/v1/users/me", as: UserView.self) }
                let message = try #require(error, "a client without the CA was answered")
                #expect(message.contains("is not signed by a CA this process trusts") && message.contains("--ca-file"), "\(message)")
                #expect(took < .seconds(8), "took \(took): the failure should be the handshake's, not a timeout's")
            }
            // The console's cookies are Secure: the scheduler itself is the TLS end.
            let login = try await h.request(.GET, "/ui/login", token: nil)
            let cookie = try #require(login.headers.first { $0.0.lowercased() == "set-cookie" }?.1)
            #expect(cookie.hasPrefix("__Host-kiln-login=") && cookie.hasSuffix("; Secure"), "\(cookie)")
        }
    }

    @Test func theAgentsSecretsClientGetsItsAnswerFromAnHTTPSSchedulerWithTheCA() async throws {
        let dir = try TempDir("scheduler-tls-agent")
        let pki = try TestCA(dir.url)
        try await Self.withTLSScheduler(pki) { h in
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#).status == 201)
            #expect(try await h.request(.POST, "/api/v1/projects", body: AgentSecretsTests.shop).status == 201)
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/secrets/NPM_TOKEN", body: #"{"value":"tls-npm-token"}"#).status == 201)
            let token = try await AgentSecretsTests.machine(h, "agent-1", kind: .agent)
            let build = try await AgentSecretsTests.queue(h, "shop", ref: "main")
            try await AgentSecretsTests.hold(h, build, by: "agent-1")
            let credentials = RegistryCredentials(user: "agent-1", password: token)

            let trusting = SchedulerSecretsClient(schedulers: [h.api], credentials: credentials,
                                                  httpClient: SchedulerSecretsClient.httpClient(trusting: try TrustedCA(file: pki.ca)))
            let secrets = try await trusting.secrets(for: build.id)
            #expect(secrets.env.map(\.name) == ["NPM_TOKEN"] && secrets.env.first?.value == "tls-npm-token", "\(secrets.env.map(\.name))")

            let untrusting = SchedulerSecretsClient(schedulers: [h.api], credentials: credentials)
            let (took, error) = await Self.timedFailure { _ = try await untrusting.secrets(for: build.id) }
            let message = try #require(error, "an agent without the CA got the secrets")
            #expect(message.contains("is not signed by a CA this process trusts") && message.contains("the agent's --ca-file"), "\(message)")
            #expect(!message.contains("tls-npm-token"))
            // The connect timeout of the agent's client (3 s) bounds its retries.
            #expect(took < .seconds(20), "took \(took)")
        }
    }

    @Test func theRegistryClientReachesAnHTTPSRegistryOnlyWithTheCA() async throws {
        let dir = try TempDir("scheduler-tls-registry")
        defer { withExtendedLifetime(dir) {} }
        let pki = try TestCA(dir.url)
        let registry = try await RegistryServer.start(root: dir.url.appendingPathComponent("registry"),
                                                      tls: .init(certificate: pki.serverCertificate, key: pki.serverKey, ca: pki.ca))
        defer { registry.stop() }
        #expect(registry.url.hasPrefix("https://127.0.0.1:"))
        let trusting = RegistryClient(configuration: .init(url: registry.url, ca: try TrustedCA(file: pki.ca)), tokens: nil)
        #expect(try await trusting.catalog(prefix: "team/") == [])
        #expect(try await trusting.tags("team/shop") == [])

        for ca in [nil, try TrustedCA(file: pki.otherCA)] {
            let client = RegistryClient(configuration: .init(url: registry.url, ca: ca), tokens: nil)
            let (took, error) = await Self.timedFailure { _ = try await client.catalog(prefix: "team/") }
            let message = try #require(error, "a registry client without the CA was answered")
            #expect(message.contains("is not signed by a CA this process trusts") && message.contains("the scheduler's --ca-file"), "\(message)")
            #expect(took < .seconds(8), "took \(took)")
        }
        // Plain HTTP to the TLS port is no answer either, and says so.
        let plain = RegistryClient(configuration: .init(url: "http://\(registry.address)"), tokens: nil)
        let (_, error) = await Self.timedFailure { _ = try await plain.catalog(prefix: "team/") }
        #expect(error != nil)
    }

    @Test func theKeyAndCertificateAreCheckedWhenTheSchedulerStarts() throws {
        let dir = try TempDir("scheduler-tls-files")
        let pki = try TestCA(dir.url)
        func refusal(_ cert: String, _ key: String) -> String {
            do {
                _ = try SchedulerTLS(certificateFile: cert, keyFile: key)
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        #expect(refusal(pki.serverCertificate, pki.serverKey) == "accepted")
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: pki.clientKey)
        let open = refusal(pki.clientCertificate, pki.clientKey)
        #expect(open.contains("--tls-key") && open.contains("chmod 600 \(pki.clientKey)"), "\(open)")
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: pki.clientKey)
        let mismatch = refusal(pki.serverCertificate, pki.clientKey)
        #expect(mismatch.contains("does not go with --tls-cert"), "\(mismatch)")
        let notPEM = refusal(pki.serverKey, pki.serverKey)
        #expect(notPEM.contains("--tls-cert") && notPEM.contains("PEM"), "\(notPEM)")
        let missing = refusal(pki.serverCertificate, dir.url.appendingPathComponent("nothing.key").path)
        #expect(missing.contains("--tls-key") && missing.contains("cannot read"), "\(missing)")
        // An expired certificate, as seen two days on (TestCA's are valid for one).
        do {
            _ = try SchedulerTLS(certificateFile: pki.serverCertificate, keyFile: pki.serverKey, now: Date().addingTimeInterval(2 * 86400))
            Issue.record("an expired certificate was accepted")
        } catch {
            #expect("\(error)".contains("expired"), "\(error)")
        }
    }

    @Test func plainHTTPOffLoopbackIsWarnedAbout() {
        for host in ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"] {
            #expect(SchedulerTLS.plainHTTPWarning(listen: host) == nil, "\(host)")
        }
        for host in ["0.0.0.0", "::", "10.1.2.3", "sched-1"] {
            let warning = SchedulerTLS.plainHTTPWarning(listen: host)
            #expect(warning?.contains("agents (--scheduler) and the CLI (--api) refuse") == true && warning?.contains("--tls-cert") == true, "\(host)")
        }
    }

    @Test func aCAFileThatIsNotOneIsRefusedSayingWhy() throws {
        let dir = try TempDir("scheduler-tls-cafile")
        let pki = try TestCA(dir.url)
        #expect(throws: Never.self) { try TrustedCA(file: pki.ca) }
        #expect(try TrustedCA.from(option: nil) == nil && TrustedCA.from(option: "") == nil)
        for (file, expected) in [(dir.url.appendingPathComponent("none.pem").path, ["cannot read the CA file"]),
                                 (pki.serverKey, ["is not a PEM bundle of certificates", "holds no certificate"])] {
            do {
                _ = try TrustedCA(file: file)
                Issue.record("\(file) was taken as a CA")
            } catch {
                #expect(expected.contains { "\(error)".contains($0) } && "\(error)".contains("--ca-file"), "\(error)")
            }
        }
    }
}
