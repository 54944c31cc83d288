import Deploy
import Foundation
import Hummingbird
import KilnCore
import LocalFarm
import Logging
import Plugins
import Synchronization
import Testing

/// The notify plugin against a real HTTP server: what it posts, how an answer other than
/// 2xx, or none, fails the step with the reason (never the answer's body), and that it calls
/// only what the scheduler's allow-list lets through and follows no redirect.
@Suite struct NotifyPluginTests {
    /// A server that records each POST body and answers with `status`.
    final class Receiver: Sendable {
        let bodies = Mutex<[String]>([])
        /// Every request's path and query, whatever its route.
        let seen = Mutex<[String]>([])
        private let started = Mutex<(port: Int, task: Task<Void, Error>?)>((0, nil))
        var port: Int { started.withLock { $0.port } }

        static func start(status: HTTPResponse.Status) async throws -> Receiver {
            let receiver = Receiver()
            let router = Router()
            router.post("/hook") { request, _ -> Response in
                var request = request
                let body = try await request.collectBody(upTo: 1 << 20)
                receiver.bodies.withLock { $0.append(String(buffer: body)) }
                receiver.seen.withLock { $0.append(request.uri.description) }
                return Response(status: status, body: .init(byteBuffer: ByteBuffer(string: status == .ok ? "thanks" : "broken: internal detail")))
            }
            // A redirect to the hook itself: followed, it would reach /hook.
            router.post("/moved") { request, _ -> Response in
                receiver.seen.withLock { $0.append(request.uri.description) }
                return Response(status: .found, headers: [.location: "/hook"])
            }
            var logger = Logger(label: "receiver")
            logger.logLevel = .critical
            let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
            let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                                  onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
            let task = Task { try await app.run() }
            for await port in ports {
                receiver.started.withLock { $0 = (port, task) }
                return receiver
            }
            throw FarmError("the receiver did not start")
        }

        func stop() async {
            let task = started.withLock { $0.task }
            task?.cancel()
            _ = try? await task?.value
        }
    }

    func context(url: String? = nil, urlSecret: String? = nil, secrets: FixedPipelineSecrets? = nil, ref: String = "main") -> PluginContext {
        var b = Build(id: "b000test-000001", project: "demo", ref: ref, commit: "4399c1c0e8dd")
        b.status = .succeeded
        b.image = "127.0.0.1:5000/demo:4399c1c"
        let p = Project(name: "demo", repository: "file:///x", buildImage: "i", buildCommand: "true")
        var settings: [String: JSONValue] = [:]
        if let url { settings["url"] = .string(url) }
        if let urlSecret { settings["urlSecret"] = .string(urlSecret) }
        return PluginContext(build: b, project: p, settings: settings,
                             outputs: ["deploy": ["app": .string("demo"), "version": .number(3)]], run: 2, secrets: secrets, log: { _ in })
    }

    func plugin(allowing prefixes: String...) throws -> NotifyPlugin { NotifyPlugin(allow: try NotifyAllowList(prefixes)) }

    @Test func postsTheOutcomeAsJSON() async throws {
        let receiver = try await Receiver.start(status: .ok)
        defer { Task { await receiver.stop() } }
        let result = try await plugin(allowing: "http://127.0.0.1:\(receiver.port)/hook").run(context(url: "http://127.0.0.1:\(receiver.port)/hook"))
        #expect(result.summary == "POST to http://127.0.0.1:\(receiver.port) (url): 200")
        #expect(!result.summary.contains("thanks"))
        let body = try #require(receiver.bodies.withLock { $0.first })
        let json = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
        #expect(json["build"] as? String == "b000test-000001")
        #expect(json["status"] as? String == "succeeded")
        #expect(json["image"] as? String == "127.0.0.1:5000/demo:4399c1c")
        #expect(json["pipelineRun"] as? Int == 2)
        #expect((json["deployed"] as? [String: Any])?["version"] as? Int == 3)
    }

    @Test func anErrorAnswerOrNoAnswerFailsTheStepWithTheReason() async throws {
        let receiver = try await Receiver.start(status: .internalServerError)
        defer { Task { await receiver.stop() } }
        let notify = try plugin(allowing: "http://127.0.0.1:\(receiver.port)/hook")
        let e = await #expect(throws: KilnError.self) { try await notify.run(context(url: "http://127.0.0.1:\(receiver.port)/hook")) }
        #expect(e?.message == "POST to http://127.0.0.1:\(receiver.port) (url) answered 500", "\(e?.message ?? "")")
        #expect(e?.message.contains("broken") == false, "the answer's body stays out of the build's record")
        let refusing = try FreePort.refusing()  // bound, never listening: refused
        defer { withExtendedLifetime(refusing) {} }
        let closed = refusing.port
        let gone = await #expect(throws: KilnError.self) {
            try await plugin(allowing: "http://127.0.0.1:\(closed)/").run(context(url: "http://127.0.0.1:\(closed)/hook"))
        }
        #expect(gone?.message.contains("got no answer") == true, "\(gone?.message ?? "")")
    }

    @Test func onlyAllowedURLsAreCalledAndRedirectsAreNotFollowed() async throws {
        let receiver = try await Receiver.start(status: .ok)
        defer { Task { await receiver.stop() } }
        let base = "http://127.0.0.1:\(receiver.port)"
        // Nothing allowed by default.
        let none = await #expect(throws: KilnError.self) { try await NotifyPlugin(allow: .none).run(context(url: "\(base)/hook")) }
        #expect(none?.message.contains("is not allowed by this scheduler (it allows no URL now): an admin allows it with `kiln scheduler --notify-allow \(base)/PATH`") == true,
                "\(none?.message ?? "")")
        // Another path, a longer name, userinfo: refused before any connection.
        let notify = try plugin(allowing: "\(base)/hook")
        for url in ["\(base)/hooks", "\(base)/other", "http://evil@127.0.0.1:\(receiver.port)/hook", "\(base)/hook/../admin", "http://localhost:\(receiver.port)/hook"] {
            await #expect(throws: KilnError.self, "\(url)") { try await notify.run(context(url: url)) }
        }
        #expect(receiver.seen.withLock { $0 }.isEmpty)

        // A redirect from an allowed URL is not followed, even to another allowed one.
        let both = try plugin(allowing: "\(base)/moved", "\(base)/hook")
        let moved = await #expect(throws: KilnError.self) { try await both.run(context(url: "\(base)/moved")) }
        #expect(moved?.message == "POST to \(base) (url) answered 302: redirects are not followed; give the final URL", "\(moved?.message ?? "")")
        #expect(receiver.seen.withLock { $0 } == ["/moved"])
        #expect(receiver.bodies.withLock { $0 }.isEmpty)
    }

    @Test func urlSecretHoldsTheURLAndItsTokenStaysOutOfTheRecord() async throws {
        let receiver = try await Receiver.start(status: .ok)
        defer { Task { await receiver.stop() } }
        let base = "http://127.0.0.1:\(receiver.port)"
        let secrets = FixedPipelineSecrets()
        secrets.set("CHAT_HOOK", "\(base)/hook?token=T0KEN-7f3a9e&key=Q-secret-42", project: "demo")
        let notify = try plugin(allowing: "\(base)/hook")
        let result = try await notify.run(context(urlSecret: "CHAT_HOOK", secrets: secrets))
        #expect(result.summary == "POST to \(base) (the URL in secret CHAT_HOOK): 200")
        #expect(receiver.seen.withLock { $0 } == ["/hook?token=T0KEN-7f3a9e&key=Q-secret-42"])

        // Not allowed: the message names the secret and the origin, never the path or query.
        let elsewhere = try plugin(allowing: "\(base)/other/")
        let e = await #expect(throws: KilnError.self) { try await elsewhere.run(context(urlSecret: "CHAT_HOOK", secrets: secrets)) }
        #expect(e?.message.hasPrefix("the URL in secret CHAT_HOOK (\(base)) is not allowed by this scheduler") == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("T0KEN") == false && e?.message.contains("Q-secret") == false)

        let missing = await #expect(throws: KilnError.self) { try await notify.run(context(urlSecret: "NO_SUCH_HOOK", secrets: secrets)) }
        #expect(missing?.message.contains("notify's urlSecret: secret NO_SUCH_HOOK is not set for project demo") == true, "\(missing?.message ?? "")")
        secrets.set("RELEASE_HOOK", "\(base)/hook?R3LEASE", project: "demo", protectedOnly: true)
        let withheld = await #expect(throws: KilnError.self) { try await notify.run(context(urlSecret: "RELEASE_HOOK", secrets: secrets, ref: "feature/x")) }
        #expect(withheld?.message.contains("secret RELEASE_HOOK is for protected refs only") == true, "\(withheld?.message ?? "")")
        #expect(withheld?.message.contains("R3LEASE") == false)
        #expect(receiver.seen.withLock { $0 }.count == 1)
    }
}
