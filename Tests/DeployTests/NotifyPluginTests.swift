import Deploy
import Foundation
import Hummingbird
import KilnCore
import LocalFarm
import Logging
import Plugins
import Synchronization
import Testing

/// The notify plugin against a real HTTP server: what it posts, and how an answer other than
/// 2xx, or none, fails the step with the reason.
@Suite struct NotifyPluginTests {
    /// A server that records each POST body and answers with `status`.
    final class Receiver: Sendable {
        let bodies = Mutex<[String]>([])
        private let started = Mutex<(port: Int, task: Task<Void, Error>?)>((0, nil))
        var port: Int { started.withLock { $0.port } }

        static func start(status: HTTPResponse.Status) async throws -> Receiver {
            let receiver = Receiver()
            let router = Router()
            router.post("/hook") { request, _ -> Response in
                var request = request
                let body = try await request.collectBody(upTo: 1 << 20)
                receiver.bodies.withLock { $0.append(String(buffer: body)) }
                return Response(status: status, body: .init(byteBuffer: ByteBuffer(string: status == .ok ? "thanks" : "broken")))
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

    func context(url: String) -> PluginContext {
        var b = Build(id: "b000test-000001", project: "demo", ref: "main", commit: "4399c1c0e8dd")
        b.status = .succeeded
        b.image = "127.0.0.1:5000/demo:4399c1c"
        let p = Project(name: "demo", repository: "file:///x", buildImage: "i", buildCommand: "true")
        return PluginContext(build: b, project: p, settings: ["url": .string(url)],
                             outputs: ["deploy": ["app": .string("demo"), "version": .number(3)]], run: 2, log: { _ in })
    }

    @Test func postsTheOutcomeAsJSON() async throws {
        let receiver = try await Receiver.start(status: .ok)
        defer { Task { await receiver.stop() } }
        let result = try await NotifyPlugin().run(context(url: "http://127.0.0.1:\(receiver.port)/hook"))
        #expect(result.summary.contains("200"))
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
        let e = await #expect(throws: KilnError.self) { try await NotifyPlugin().run(context(url: "http://127.0.0.1:\(receiver.port)/hook")) }
        #expect(e?.message.contains("answered 500: broken") == true, "\(e?.message ?? "")")
        let closed = try FreePort.next()
        let gone = await #expect(throws: KilnError.self) { try await NotifyPlugin().run(context(url: "http://127.0.0.1:\(closed)/hook")) }
        #expect(gone?.message.contains("got no answer") == true, "\(gone?.message ?? "")")
    }
}
