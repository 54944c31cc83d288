@testable import BuildAgent
import DockerAPI
import Foundation
import Hummingbird
import KilnCore
import KilnTestSupport
import LocalFarm
import Synchronization
import Testing

/// `SchedulerSecretsClient`'s error handling against a real HTTP server. The server only
/// answers as DESIGN13.md says the scheduler's `POST /agent/v1/builds/{build}/secrets` does:
/// the endpoint itself is on another branch, and the lead's end-to-end test covers the two
/// together.
@Suite("SchedulerSecretsClient: what an agent says when the scheduler will not give a build's secrets")
struct SchedulerSecretsClientTests {
    static let agent = RegistryCredentials(user: "agent-1", password: "machine-token-0123456789")

    /// Answers `status` (with `body`) to every POST of a build's secrets, recording the
    /// path and Authorization header of each.
    final class Scheduler: Sendable {
        let requests = Mutex<[(path: String, authorization: String?)]>([])
        private let server = Mutex<TestHTTPServer?>(nil)
        var url: String { server.withLock { $0?.url ?? "" } }

        static func start(status: HTTPResponse.Status, body: String) async throws -> Scheduler {
            let scheduler = Scheduler()
            let router = Router()
            router.post("/agent/v1/builds/:build/secrets") { request, _ -> Response in
                scheduler.requests.withLock { $0.append((request.uri.path, request.headers[.authorization])) }
                return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
            }
            let server = try await TestHTTPServer.start(router, label: "scheduler stand-in")
            scheduler.server.withLock { $0 = server }
            return scheduler
        }

        func stop() async { await server.withLock { $0 }?.stop() }
    }

    static func withScheduler(_ status: HTTPResponse.Status, body: String = "{}", _ test: (Scheduler) async throws -> Void) async throws {
        let scheduler = try await Scheduler.start(status: status, body: body)
        do { try await test(scheduler) } catch {
            await scheduler.stop()
            throw error
        }
        await scheduler.stop()
    }

    static func message(_ client: SchedulerSecretsClient, build: String = "b0000000001-000000000001") async -> String? {
        do {
            _ = try await client.secrets(for: build)
            return nil
        } catch let e as SecretsUnavailable {
            return e.message
        } catch {
            return "unexpected: \(error)"
        }
    }

    @Test("200: the build's secrets, asked for with the machine credential as HTTP Basic")
    func answers() async throws {
        let secrets = BuildSecrets(env: [BuildSecret(name: "NPM_TOKEN", value: "npm-0123456789")], withheld: ["PROD"])
        try await Self.withScheduler(.ok, body: try KilnJSON.encode(secrets)) { scheduler in
            let client = SchedulerSecretsClient(schedulers: [scheduler.url], credentials: Self.agent)
            #expect(try await client.secrets(for: "b0000000001-000000000001") == secrets)
            let request = try #require(scheduler.requests.withLock { $0.first })
            #expect(request.path == "/agent/v1/builds/b0000000001-000000000001/secrets")
            #expect(request.authorization == "Basic " + Data("agent-1:machine-token-0123456789".utf8).base64EncodedString())
        }
    }

    @Test("401: the scheduler refused the machine credential, said without the token")
    func refusedCredential() async throws {
        try await Self.withScheduler(.unauthorized, body: #"{"error":"unknown machine"}"#) { scheduler in
            let message = try #require(await Self.message(SchedulerSecretsClient(schedulers: [scheduler.url, scheduler.url], credentials: Self.agent)))
            #expect(message.hasPrefix("the scheduler refused this agent's machine credential (user agent-1"), "\(message)")
            #expect(message.contains("--registry-credentials"))
            #expect(!message.contains(Self.agent.password))
            #expect(scheduler.requests.withLock { $0.count } == 1, "401 is final: every scheduler reads the same etcd")
        }
    }

    @Test("403: the scheduler says this agent does not hold the build")
    func notHeld() async throws {
        try await Self.withScheduler(.forbidden) { scheduler in
            let message = try #require(await Self.message(SchedulerSecretsClient(schedulers: [scheduler.url], credentials: Self.agent), build: "b0000000002-00000000000a"))
            #expect(message.hasPrefix("the scheduler says this agent does not hold build b0000000002-00000000000a"), "\(message)")
        }
    }

    @Test("unreachable, 5xx or 404: the next scheduler is asked; when none answers, every URL tried is named")
    func triesEachScheduler() async throws {
        let refusing = try FreePort.refusing()  // bound, never listening: refused
        defer { withExtendedLifetime(refusing) {} }
        let closed = "http://127.0.0.1:\(refusing.port)"
        let secrets = BuildSecrets(registries: [RegistryLogin(host: "registry.example.com", username: "ci", password: "registry-pass-0123")])
        try await Self.withScheduler(.serviceUnavailable, body: #"{"error":"etcd is not answering"}"#) { broken in
            try await Self.withScheduler(.notFound) { old in
                try await Self.withScheduler(.ok, body: try KilnJSON.encode(secrets)) { good in
                    let client = SchedulerSecretsClient(schedulers: [closed, broken.url, old.url, good.url], credentials: Self.agent)
                    let got = try await client.secrets(for: "b0000000001-000000000001")
                    #expect(got == secrets)
                    // The one that answered is asked first next time (a scheduler host cut off
                    // costs its connect timeout once, not on every build), by every copy.
                    let copy = client
                    #expect(copy.order == [good.url, closed, broken.url, old.url])
                    #expect(try await copy.secrets(for: "b0000000001-000000000001") == secrets)
                }
                let message = try #require(await Self.message(SchedulerSecretsClient(schedulers: [closed, broken.url, old.url], credentials: Self.agent)))
                #expect(message.hasPrefix("no scheduler gave the secrets of build b0000000001-000000000001; tried \(closed) (unreachable"), "\(message)")
                #expect(message.contains("\(broken.url) (HTTP 503: etcd is not answering)"), "\(message)")
                #expect(message.contains("\(old.url) (HTTP 404: no secrets endpoint there"), "\(message)")
                #expect(message.contains("--scheduler"))
            }
        }
    }

    @Test("an answer that is not a build's secrets is not taken for one")
    func garbage() async throws {
        try await Self.withScheduler(.ok, body: "<html>login</html>") { scheduler in
            let message = try #require(await Self.message(SchedulerSecretsClient(schedulers: [scheduler.url], credentials: Self.agent)))
            #expect(message.contains("answered 200 with something that is not a build's secrets"), "\(message)")
            #expect(!message.contains("login"))
        }
    }
}
