import AsyncHTTPClient
import Foundation
import KilnCore
import Logging
import NIOCore
import NIOFoundationCompat

extension KubernetesDeployer {
    // MARK: HTTP

    struct Reply {
        let status: Int
        let body: ByteBuffer
    }

    /// The verbs Kiln uses (NIOHTTP1's `HTTPMethod` is not among Deploy's dependencies).
    enum Verb: String {
        case GET, POST, PUT, DELETE
    }

    func send(_ method: Verb, _ path: String, query: String? = nil, in cell: Cell, operation: String) async throws -> Reply {
        try await send(method, path, query: query, bodyData: nil, in: cell, operation: operation)
    }

    func send<Body: Encodable>(_ method: Verb, _ path: String, query: String? = nil, body: Body, in cell: Cell, operation: String) async throws -> Reply {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try await send(method, path, query: query, bodyData: try encoder.encode(body), in: cell, operation: operation)
    }

    private func send(_ method: Verb, _ path: String, query: String?, bodyData: Data?, in cell: Cell, operation: String) async throws -> Reply {
        var base = cell.endpoint
        while base.hasSuffix("/") { base.removeLast() }
        var request = HTTPClientRequest(url: base + path + (query.map { "?\($0)" } ?? ""))
        switch method {
        case .GET: request.method = .GET
        case .POST: request.method = .POST
        case .PUT: request.method = .PUT
        case .DELETE: request.method = .DELETE
        }
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "kiln")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let bodyData {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: bodyData))
        }
        logger.debug("\(method.rawValue) \(path)", metadata: ["cell": "\(cell.name)"])
        do {
            let response = try await client.execute(request, timeout: Self.timeAmount(configuration.requestTimeout))
            let body = try await response.body.collect(upTo: 32 << 20)
            return Reply(status: Int(response.status.code), body: body)
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw KilnError.unavailable("cell \(cell.name): the Kubernetes API server at \(cell.endpoint) cannot be reached: \(Self.describe(error)) (trying to \(operation))")
        }
    }

    func decode<T: Decodable>(_ reply: Reply, expecting: Set<Int>, in cell: Cell, operation: String) throws -> T {
        guard expecting.contains(reply.status) else { throw failure(reply, in: cell, operation: operation) }
        do {
            return try JSONDecoder().decode(T.self, from: reply.body)
        } catch {
            throw KilnError.internalError("cell \(cell.name): \(operation): the Kubernetes API server's answer is not what Kiln expects (\(error)): \(String(buffer: reply.body).prefix(300))")
        }
    }

    /// The `KilnError` for an answer Kiln did not expect, with the API server's `Status`
    /// message and reason when it sent one.
    func failure(_ reply: Reply, in cell: Cell, operation: String) -> KilnError {
        let status = try? JSONDecoder().decode(KubernetesStatus.self, from: reply.body)
        let text = String(buffer: reply.body).trimmingCharacters(in: .whitespacesAndNewlines)
        let message = status?.message ?? (text.isEmpty ? "no message" : String(text.prefix(300)))
        let said = "\(message) (\(status?.reason.map { "\($0), " } ?? "")HTTP \(reply.status))"
        let head = "cell \(cell.name): \(operation) failed: \(said)"
        switch reply.status {
        case 400, 422: return .invalid(head)
        case 404: return .notFound(head)
        case 409: return .conflict(head)
        case 401: return .unavailable("\(head); the API server at \(cell.endpoint) does not accept Kiln's credentials: set KILN_KUBE_TOKEN to a valid service account token")
        case 403 where message.contains("forbidden: User"):
            // RBAC's refusal (403 also comes for a namespace being deleted: no hint then).
            return .unavailable("\(head); the token's Role must allow it (docs/kubernetes.md lists the rules)")
        case 403, 429, 500...: return .unavailable(head)
        default: return .internalError(head)
        }
    }

    static func timeAmount(_ d: Duration) -> TimeAmount {
        let (seconds, attoseconds) = d.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? HTTPClientError {
            switch e {
            case .connectTimeout: return "connecting timed out"
            case .deadlineExceeded: return "no answer within the time limit"
            default: return "\(e)"
            }
        }
        if let e = error as? IOError {
            // NIO's description repeats itself ("connection reset (error set): Connection refused) (errno: 111)").
            return String(cString: strerror(e.errnoCode)).lowercased()
        }
        return "\(error)"
    }

    func escape(_ segment: String) -> String {
        segment.addingPercentEncoding(withAllowedCharacters: CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? segment
    }
}
