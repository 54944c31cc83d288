import AsyncHTTPClient
import Foundation
import KilnCore
import Logging
import NIOCore
import NIOFoundationCompat
import NIOSSL

extension KubernetesDeployer {
    // MARK: the cell's credential

    /// One cell's API server as one call reaches it: the client that trusts only the cell's
    /// CA (and presents its client certificate), and its bearer token if it has one.
    struct Connection: Sendable {
        let cell: Cell
        let client: HTTPClient
        let token: String?
    }

    /// Runs `body` with a connection to `cell` made from its credential, read now.
    func withConnection<T: Sendable>(to cell: Cell, _ body: (Connection) async throws -> T) async throws -> T {
        let credential = try await credential(of: cell)
        let client = try await clients.acquire(cell: cell.name, credential: credential)
        do {
            let result = try await body(Connection(cell: cell, client: client, token: credential.token))
            await clients.release(client)
            return result
        } catch {
            await clients.release(client)
            throw error
        }
    }

    /// The cell's credential; refused for an endpoint that is not `https` (a record older
    /// than that rule), and for a cell that has none.
    func credential(of cell: Cell) async throws -> CellCredential {
        guard cell.endpoint.lowercased().hasPrefix("https://") else {
            throw KilnError.invalid("cell \(cell.name): endpoint \(Validation.printable(cell.endpoint)) is not https; Kiln sends a Kubernetes cell's credential over https only: change it with `kiln cell add \(cell.name) --backend kubernetes --endpoint https://HOST:PORT`")
        }
        return try await CellClients.credential(
            of: cell, from: secrets, kind: "Kubernetes cells",
            missing: "cell \(cell.name) has no credentials: set them with `kiln cell credential set \(cell.name) …` (a service account token or a client certificate and key, and the cluster's CA; docs/kubernetes.md)")
    }

    // MARK: HTTP

    struct Reply {
        let status: Int
        let body: ByteBuffer
    }

    /// The verbs Kiln uses (NIOHTTP1's `HTTPMethod` is not among Deploy's dependencies).
    enum Verb: String {
        case GET, POST, PUT, PATCH, DELETE
    }

    func send(_ method: Verb, _ path: String, query: String? = nil, in api: Connection, operation: String) async throws -> Reply {
        try await send(method, path, query: query, bodyData: nil, in: api, operation: operation)
    }

    func send<Body: Encodable>(_ method: Verb, _ path: String, query: String? = nil, body: Body, in api: Connection, operation: String) async throws -> Reply {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try await send(method, path, query: query, bodyData: try encoder.encode(body), in: api, operation: operation)
    }

    private func send(_ method: Verb, _ path: String, query: String?, bodyData: Data?, in api: Connection, operation: String) async throws -> Reply {
        let cell = api.cell
        var base = cell.endpoint
        while base.hasSuffix("/") { base.removeLast() }
        var request = HTTPClientRequest(url: base + path + (query.map { "?\($0)" } ?? ""))
        switch method {
        case .GET: request.method = .GET
        case .POST: request.method = .POST
        case .PUT: request.method = .PUT
        case .PATCH: request.method = .PATCH
        case .DELETE: request.method = .DELETE
        }
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "kiln")
        if let token = api.token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let bodyData {
            // A PATCH is a JSON merge patch (RFC 7386): only the fields it names change.
            request.headers.add(name: "Content-Type", value: method == .PATCH ? "application/merge-patch+json" : "application/json")
            request.body = .bytes(ByteBuffer(data: bodyData))
        }
        logger.debug("\(method.rawValue) \(path)", metadata: ["cell": "\(cell.name)"])
        do {
            let response = try await api.client.execute(request, timeout: Self.timeAmount(configuration.requestTimeout))
            let body = try await response.body.collect(upTo: 32 << 20)
            return Reply(status: Int(response.status.code), body: body)
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw KilnError.unavailable("cell \(cell.name): the Kubernetes API server at \(cell.endpoint) cannot be reached: \(Self.describe(error)) (trying to \(operation))")
        }
    }

    func decode<T: Decodable>(_ reply: Reply, expecting: Set<Int>, in api: Connection, operation: String) throws -> T {
        let cell = api.cell
        guard expecting.contains(reply.status) else { throw failure(reply, in: api, operation: operation) }
        do {
            return try JSONDecoder().decode(T.self, from: reply.body)
        } catch {
            throw KilnError.internalError("cell \(cell.name): \(operation): the Kubernetes API server's answer is not what Kiln expects (\(error)): \(String(buffer: reply.body).prefix(300))")
        }
    }

    /// The `KilnError` for an answer Kiln did not expect, with the API server's `Status`
    /// message and reason when it sent one.
    func failure(_ reply: Reply, in api: Connection, operation: String) -> KilnError {
        let cell = api.cell
        let status = try? JSONDecoder().decode(KubernetesStatus.self, from: reply.body)
        let text = String(buffer: reply.body).trimmingCharacters(in: .whitespacesAndNewlines)
        let message = status?.message ?? (text.isEmpty ? "no message" : String(text.prefix(300)))
        let said = "\(message) (\(status?.reason.map { "\($0), " } ?? "")HTTP \(reply.status))"
        let head = "cell \(cell.name): \(operation) failed: \(said)"
        switch reply.status {
        case 400, 422: return .invalid(head)
        case 404: return .notFound(head)
        case 409: return .conflict(head)
        case 401:
            return .unavailable("\(head); the API server at \(cell.endpoint) does not accept the cell's credentials (a token that expired or was revoked, or a client certificate it does not trust): set new ones with `kiln cell credential set \(cell.name) …`")
        case 403 where message.contains("forbidden: User"):
            // RBAC's refusal (403 also comes for a namespace being deleted: no hint then).
            return .unavailable("\(head); the Role bound to the cell's credential must allow it (docs/kubernetes.md lists the rules)")
        case 403, 429, 500...: return .unavailable(head)
        default: return .internalError(head)
        }
    }

    static func timeAmount(_ d: Duration) -> TimeAmount {
        let (seconds, attoseconds) = d.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    static func describe(_ error: any Error) -> String {
        if error is NIOSSLError || error is BoringSSLError {
            // BoringSSL's reason, without the source paths around it.
            let text = "\(error)"
            let reason = text.range(of: "OPENSSL_internal:").map { r in String(text[r.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "_" }) } ?? text
            if reason.contains("CERTIFICATE_VERIFY_FAILED") {
                return "the TLS handshake failed (\(reason)): the server's certificate is not signed by the CA in the cell's credential, or does not name the endpoint's host; check the endpoint, or set the cluster's CA with `kiln cell credential set`"
            }
            if reason.contains("ALERT") {
                return "the TLS handshake failed (\(reason)): the server refused Kiln's client certificate; set one the cluster's client CA signed with `kiln cell credential set`"
            }
            return "the TLS handshake failed (\(reason)); check the endpoint and the cell's credential"
        }
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
