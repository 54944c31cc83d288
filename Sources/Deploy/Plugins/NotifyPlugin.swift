import AsyncHTTPClient
import Foundation
import KilnCore
import NIOCore
import NIOFoundationCompat
import Plugins

/// POSTs the build's outcome as JSON to a URL (`url`, or the project secret `urlSecret`); a
/// 2xx answer is success.
///
/// Only URLs under a prefix of `allow` are called (`kiln scheduler --notify-allow`): the
/// request leaves from the scheduler's host, so an admin decides where it may go. Redirects
/// are not followed (one could lead anywhere). The answer's body is neither logged nor
/// recorded, and messages name the URL's origin only (its path or query may hold a token).
public struct NotifyPlugin: PostBuildPlugin {
    let http: HTTPClient
    let allow: NotifyAllowList

    public init(allow: NotifyAllowList, http: HTTPClient = NotifyPlugin.httpClient) {
        self.allow = allow
        self.http = http
    }

    /// Gives up connecting after 3 s (AsyncHTTPClient tries a refused connection again until
    /// then) and waiting for the answer after 20 s; follows no redirect. Never shut down.
    public static let httpClient = HTTPClient(
        eventLoopGroup: HTTPClient.defaultEventLoopGroup,
        configuration: .init(redirectConfiguration: .disallow, timeout: .init(connect: .seconds(3), read: .seconds(20))))
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
        let text: String
        let source: String
        if let name = ctx.string("urlSecret") {
            text = try await ctx.secretValue(name, for: "notify's urlSecret")
            source = "the URL in secret \(name)"
        } else {
            text = ctx.string("url") ?? ""
            source = "url"
        }
        let target = try allowed(text, source: source)
        let b = ctx.build
        let payload = Payload(build: b.id, project: b.project, status: b.status.rawValue, ref: b.ref, commit: b.commit, image: b.image,
                              digest: b.digest, finishedAt: b.finishedAt, pipelineRun: ctx.run, deployed: ctx.outputs["deploy"], lb: ctx.outputs["lb"])
        var request = HTTPClientRequest(url: target.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "kiln-notify")
        request.body = .bytes(ByteBuffer(data: try KilnJSON.encoder().encode(payload)))
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .seconds(20))
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw KilnError.unavailable("POST to \(target.origin) (\(source)) got no answer: \(Self.describe(error))")
        }
        // Read and drop the body: the receiver's answer never goes into the build's record or log.
        _ = try? await response.body.collect(upTo: 1 << 20)
        let code = Int(response.status.code)
        guard (200..<300).contains(code) else {
            let redirect = (300..<400).contains(code) ? ": redirects are not followed; give the final URL" : ""
            throw KilnError.unavailable("POST to \(target.origin) (\(source)) answered \(code)\(redirect)")
        }
        return PluginResult(summary: "POST to \(target.origin) (\(source)): \(code)")
    }

    /// The URL as it will be called, or why it is not allowed (naming its origin only).
    func allowed(_ text: String, source: String) throws -> URLText {
        let parsed: URLText
        do {
            parsed = try URLText.parse(text)
        } catch let e as KilnError {
            throw KilnError.invalid("\(source) is not a URL notify can call: \(e.message)")
        }
        guard let target = allow.allowed(text) else {
            let now = allow.prefixes.isEmpty ? "it allows no URL now" : "it allows \(allow.prefixes.map(\.origin).joined(separator: ", ")) under some paths"
            throw KilnError.invalid("\(source) (\(parsed.origin)) is not allowed by this scheduler (\(now)): an admin allows it with `kiln scheduler --notify-allow \(parsed.origin)/PATH` (env KILN_NOTIFY_ALLOW, comma-separated), PATH being the start of the URL's path")
        }
        return target
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? HTTPClientError, e == .connectTimeout { return "connecting timed out" }
        if let e = error as? HTTPClientError, e == .deadlineExceeded { return "no answer within the time limit" }
        return "\(error)"
    }
}
