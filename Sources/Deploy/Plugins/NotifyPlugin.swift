import AsyncHTTPClient
import Foundation
import KilnCore
import NIOCore
import NIOFoundationCompat
import Plugins

/// POSTs the build's outcome as JSON to a URL; a 2xx answer is success.
public struct NotifyPlugin: PostBuildPlugin {
    let http: HTTPClient
    public init(http: HTTPClient = NotifyPlugin.httpClient) { self.http = http }

    /// Gives up connecting after 3 s (AsyncHTTPClient tries a refused connection again until
    /// then) and waiting for the answer after 20 s. Never shut down.
    public static let httpClient = HTTPClient(
        eventLoopGroup: HTTPClient.defaultEventLoopGroup,
        configuration: .init(timeout: .init(connect: .seconds(3), read: .seconds(20))))
    public var spec: PluginSpec { PluginCatalog.spec("notify")! }

    struct Payload: Encodable {
        var build: String, project: String, status: String, ref: String
        var commit: String?, image: String?, digest: String?
        var finishedAt: Date?
        var pipelineRun: Int
        var deployed: [String: JSONValue]?
        var lb: [String: JSONValue]?
    }

    public func run(_ ctx: PluginContext) async throws -> PluginResult {
        let url = ctx.string("url")!
        let b = ctx.build
        let payload = Payload(build: b.id, project: b.project, status: b.status.rawValue, ref: b.ref, commit: b.commit, image: b.image,
                              digest: b.digest, finishedAt: b.finishedAt, pipelineRun: ctx.run, deployed: ctx.outputs["deploy"], lb: ctx.outputs["lb"])
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "kiln-notify")
        request.body = .bytes(ByteBuffer(data: try KilnJSON.encoder().encode(payload)))
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .seconds(20))
        } catch {
            throw KilnError.unavailable("POST \(url) got no answer: \(error)")
        }
        let body = try? await response.body.collect(upTo: 4096)
        guard (200..<300).contains(Int(response.status.code)) else {
            let text = body.map { String(buffer: $0) }?.prefix(200) ?? ""
            throw KilnError.unavailable("POST \(url) answered \(response.status.code)\(text.isEmpty ? "" : ": \(text)")")
        }
        return PluginResult(summary: "POST \(url): \(response.status.code)")
    }
}
