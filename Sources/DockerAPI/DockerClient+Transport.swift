import AsyncHTTPClient
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

extension DockerClient {
    /// The methods the API uses (NIOHTTP1's type is not a dependency of this module).
    enum Method { case GET, POST, DELETE }

    /// Sends one request. `long`: the answer may take as long as a build (no deadline;
    /// cancel the task to give up). Otherwise `timeout` bounds the wait for the answer's head.
    func send(
        _ method: Method, _ path: String, query: [(String, String)] = [],
        headers: [(String, String)] = [], json: Data? = nil, body: HTTPClientRequest.Body? = nil,
        operation: String, long: Bool = false, timeout: TimeAmount = .seconds(60)
    ) async throws -> HTTPClientResponse {
        var uri = "/\(DockerClient.apiVersion)\(path)"
        if !query.isEmpty {
            uri += "?" + query.map { "\(DockerClient.escapeComponent($0.0))=\(DockerClient.escapeComponent($0.1))" }.joined(separator: "&")
        }
        var request: HTTPClientRequest
        switch endpoint.kind {
        case .unixSocket(let socketPath):
            // Without this, a missing socket costs the whole connect timeout (AsyncHTTPClient retries).
            guard FileManager.default.fileExists(atPath: socketPath) else {
                throw DockerError(operation, nil, "the container API does not answer: there is no socket at \(socketPath)")
            }
            guard let url = URL(httpURLWithSocketPath: socketPath, uri: uri) else {
                throw DockerError(operation, nil, "cannot make a URL of the socket path \(socketPath) and \(uri)")
            }
            request = HTTPClientRequest(url: url.absoluteString)
            // AHC would send the socket path as Host; podman's Go server answers 400 to a '/' in it.
            request.headers.add(name: "Host", value: "localhost")
        case .http, .https:
            // The shared client trusts the system's CAs and has no client certificate: never
            // the right one for a cell behind a TLS proxy.
            if endpoint.isTLS && client === DockerClient.httpClient {
                throw DockerError(operation, nil, "\(endpoint) is https: give DockerClient an HTTP client made with the endpoint's CA and client certificate (DockerTLS.makeHTTPClient)")
            }
            request = HTTPClientRequest(url: (endpoint.baseURL ?? "") + uri)
        }
        switch method {
        case .GET: request.method = .GET
        case .POST: request.method = .POST
        case .DELETE: request.method = .DELETE
        }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: json))
        } else if let body {
            request.body = body
        }
        do {
            return try await client.execute(request, timeout: long ? .hours(24 * 365) : timeout)
        } catch {
            if Task.isCancelled { throw CancellationError() }
            if let tls = DockerEndpoint.tlsFailure(error) {
                throw DockerError(operation, nil, "the container API at \(endpoint) cannot be reached: \(tls)", isTLSFailure: true)
            }
            throw DockerError.transport(operation, nil, "the container API at \(endpoint) does not answer", error)
        }
    }

    /// The body when the status is one of `ok`; otherwise a `DockerError` with the API's message.
    func expect(_ response: HTTPClientResponse, _ ok: Set<Int>, _ operation: String) async throws -> Data {
        let status = Int(response.status.code)
        let buffer: ByteBuffer
        do {
            buffer = try await response.body.collect(upTo: 16 << 20)
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw DockerError.transport(operation, status, "the answer broke off", error)
        }
        let data = Data(buffer.readableBytesView)
        if ok.contains(status) { return data }
        struct APIError: Decodable { let message: String? }
        var message = (try? JSONDecoder().decode(APIError.self, from: data))?.message
            ?? String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if message.isEmpty { message = "\(response.status)" }
        if let proxy = proxyRefusal(status: status, body: data) {
            throw DockerError(operation, status, proxy.message, isTLSFailure: proxy.tls)
        }
        throw DockerError(operation, status, message)
    }

    /// Reads a streamed JSON answer, calling `body` with each message as it arrives.
    func forEachMessage(
        _ response: HTTPClientResponse, _ operation: String, _ body: (StreamMessage) throws -> Void
    ) async throws {
        var splitter = JSONStreamSplitter()
        let decoder = JSONDecoder()
        do {
            for try await chunk in response.body {
                for value in splitter.feed(chunk.readableBytesView) {
                    guard let message = try? decoder.decode(StreamMessage.self, from: Data(value)) else { continue }
                    try body(message)
                }
            }
        } catch let error as DockerError {
            throw error
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw DockerError.transport(operation, nil, "the answer broke off", error)
        }
    }

    /// What a TLS proxy's own error page means (a TCP endpoint's answer that podman did not
    /// write): nginx answers 400 to a request without an acceptable client certificate, and
    /// 502 or 504 when the engine behind it does not answer. Nil for any other answer.
    func proxyRefusal(status: Int, body: Data) -> (message: String, tls: Bool)? {
        guard endpoint.socketPath == nil, [400, 502, 503, 504].contains(status) else { return nil }
        let text = String(decoding: body.prefix(4096), as: UTF8.self)
        guard text.contains("<html"), let open = text.range(of: "<title>"), let close = text.range(of: "</title>", range: open.upperBound..<text.endIndex) else { return nil }
        let title = String(text[open.upperBound..<close.lowerBound])
        if status == 400 && title.contains("SSL certificate") {
            return ("the TLS proxy in front of the container API at \(endpoint) refused the client certificate (\(title)): it must be one the proxy's client CA (ssl_client_certificate) signed, and it must be sent (docs/cells.md)", true)
        }
        if status != 400 {
            return ("the proxy at \(endpoint) answers, but the container API behind it does not (\(title)): start the engine's service on the cell host (podman system service tcp://127.0.0.1:2375, docs/cells.md)", false)
        }
        return nil
    }

    func escape(_ id: String) -> String { DockerClient.escapeComponent(id) }

    /// An image reference in a path: "/" and ":" stay (the API routes "{name:.*}").
    func escapePath(_ name: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~/:@")
        return name.addingPercentEncoding(withAllowedCharacters: allowed) ?? name
    }

    static func escapeComponent(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }
}

/// Runs blocking work (disk) on a thread of its own, off Swift's cooperative pool.
func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
        Thread.detachNewThread { continuation.resume(with: Result { try work() }) }
    }
}
