import AsyncHTTPClient
import Foundation
import KilnCore
import NIOCore
import NIOFoundationCompat
import TLSTrust

/// A client of the scheduler's HTTP API (`/api/v1/…`), for the CLI and anything else that
/// drives a farm from outside: JSON in and out with KilnCore's coders, the API's
/// `{"error": …}` answers thrown as `Failure` with their message.
///
/// `base` is the scheduler's URL (`http://127.0.0.1:7070`, `https://sched-1:7443`); paths
/// start with `/`. Every call goes through a process-wide client (`OutgoingHTTP`) that trusts
/// `ca` besides the system's roots (`kiln --ca-file`), so a client is cheap to make and needs
/// no shutdown. A connection that fails (refused, a certificate not trusted) fails the call at
/// once, saying why: a person is waiting.
public struct APIClient: Sendable {
    public let base: String
    /// The `Authorization` header sent with every request to the API: `Bearer TOKEN`, or
    /// HTTP Basic for the one call that takes a password (making a token).
    let authorization: String?
    /// Trusted besides the system's roots for an `https://` API.
    public let ca: TrustedCA?

    public init(_ base: String, token: String? = nil, ca: TrustedCA? = nil) {
        var b = base
        while b.hasSuffix("/") { b.removeLast() }
        self.base = b
        authorization = token.map { "Bearer \($0)" }
        self.ca = ca
    }

    /// A client that logs in with a user's name and password (HTTP Basic): only
    /// `POST /api/v1/tokens` takes it.
    public init(_ base: String, user: String, password: String, ca: TrustedCA? = nil) {
        self.init(base, ca: ca)
        self = APIClient(base: self.base, authorization: "Basic " + Data("\(user):\(password)".utf8).base64EncodedString(), ca: ca)
    }

    private init(base: String, authorization: String?, ca: TrustedCA?) {
        self.base = base
        self.authorization = authorization
        self.ca = ca
    }

    /// The API's requests: 10 s to connect, 90 s for each read.
    static let http = OutgoingHTTP.Settings(connect: .seconds(10), read: .seconds(90), retryConnecting: false)
    /// Following a log: no read time-out, since a step may print nothing for minutes (a quiet
    /// compile, a large base image checked).
    static let streaming = OutgoingHTTP.Settings(connect: .seconds(10), read: nil, retryConnecting: false)

    /// What a request that never got an answer says: a TLS failure with what to do about it,
    /// else that the scheduler may not be running.
    func unreachable(_ error: any Error) -> Failure {
        if let tls = TLSFailure.explain(error, url: base) {
            return Failure(description: "cannot reach the Kiln API at \(base): \(tls)")
        }
        return Failure(description: "cannot reach the Kiln API at \(base) (\(error)). Is `kiln scheduler` (or `kiln up`) running? Pass --api or set KILN_API.")
    }

    /// A request that failed: the API's own message, or what went wrong on the way.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// `GET path`, the answer decoded as `T`.
    public func get<T: Decodable>(_ path: String, as: T.Type) async throws -> T {
        try decode(T.self, try await send("GET", path, body: nil))
    }

    /// `POST path` with `body` as JSON (none if nil), the answer decoded as `T`. `timeout`:
    /// how long to wait for the answer (a scaling answers once it has ended).
    public func post<T: Decodable>(_ path: String, body: (some Encodable)?, as: T.Type, timeout: Duration = .seconds(30)) async throws -> T {
        let data = try body.map { try KilnJSON.encoder().encode($0) }
        return try decode(T.self, try await exchange("POST", path, body: data, timeout: timeout).body)
    }

    /// A request to any URL (not the API), with a Host header: the body as text. Throws on a
    /// status other than 2xx unless `anyStatus`.
    public func rawText(_ method: String, _ url: String, host: String, anyStatus: Bool = false, closeConnection: Bool = false) async throws -> String {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        request.headers.add(name: "Host", value: host)
        if closeConnection { request.headers.add(name: "Connection", value: "close") }
        let response = try await OutgoingHTTP.client(Self.http, trusting: ca).execute(request, timeout: .seconds(10))
        let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
        guard anyStatus || (200..<300).contains(Int(response.status.code)) else {
            throw Failure(description: "\(method) \(url) (Host \(host)): HTTP \(response.status.code) \(body.prefix(200))")
        }
        return body
    }

    /// A request to the API: the answer's body as it came.
    public func raw(_ method: String, _ path: String, body: Data? = nil) async throws -> Data {
        try await send(method, path, body: body)
    }

    /// `GET /api/v1/builds`: a page of builds, newest first, of one project or every one the
    /// caller may read, below `cursor` (the `next` of the page before; nil: the newest), and
    /// the cursor of the next page (nil: this was the last).
    public func builds(project: String? = nil, limit: Int = BuildPage.defaultLimit, cursor: String? = nil) async throws -> BuildPage {
        var path = "/api/v1/builds?limit=\(limit)"
        if let project { path += "&project=\(Self.queryValue(project))" }
        if let cursor { path += "&cursor=\(Self.queryValue(cursor))" }
        let (data, header) = try await exchange("GET", path, body: nil)
        return BuildPage(builds: try decode([Build].self, data), next: header(BuildPage.nextCursorHeader))
    }

    /// A value for a URL's query: anything but letters, digits and `-._~` percent-encoded.
    static func queryValue(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")) ?? value
    }

    private func send(_ method: String, _ path: String, body: Data?) async throws -> Data {
        try await exchange(method, path, body: body).body
    }

    /// A request to the API: the answer's body and its headers by name, or its error thrown.
    private func exchange(_ method: String, _ path: String, body: Data?, timeout: Duration = .seconds(30)) async throws -> (body: Data, header: @Sendable (String) -> String?) {
        var request = HTTPClientRequest(url: base + path)
        request.method = .init(rawValue: method)
        if let authorization { request.headers.add(name: "Authorization", value: authorization) }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: body))
        }
        let response: HTTPClientResponse
        do {
            response = try await OutgoingHTTP.client(Self.http, trusting: ca).execute(request, timeout: .milliseconds(Int64(timeout.inMilliseconds)))
        } catch {
            throw unreachable(error)
        }
        let buffer = try await response.body.collect(upTo: 64 << 20)
        let data = Data(buffer: buffer)
        guard (200..<300).contains(Int(response.status.code)) else {
            if let e = try? JSONDecoder().decode(APIErrorBody.self, from: data) {
                if response.status.code == 401 {
                    throw Failure(description: "\(e.error). Log in with `kiln login`, or set KILN_TOKEN.")
                }
                throw Failure(description: e.error)
            }
            throw Failure(description: "\(method) \(path): HTTP \(response.status.code)")
        }
        let headers = response.headers
        return (data, { headers.first(name: $0) })
    }

    private func decode<T: Decodable>(_ type: T.Type, _ data: Data) throws -> T {
        do {
            return try KilnJSON.decoder().decode(type, from: data)
        } catch {
            throw Failure(description: "the API answered something this kiln cannot read (\(error)); is it the same version?")
        }
    }

    /// Streams a build's log to `output` until the build ends.
    public func followLog(_ id: String, output: @Sendable (String) -> Void) async throws {
        var request = HTTPClientRequest(url: base + "/api/v1/builds/\(id)/log?follow=1")
        if let authorization { request.headers.add(name: "Authorization", value: authorization) }
        let response: HTTPClientResponse
        do {
            response = try await OutgoingHTTP.client(Self.streaming, trusting: ca).execute(request, timeout: .hours(24))
        } catch {
            throw unreachable(error)
        }
        guard response.status == .ok else {
            let body = try await response.body.collect(upTo: 1 << 20)
            throw Failure(description: "log of \(id): HTTP \(response.status.code) \(String(buffer: body))")
        }
        for try await chunk in response.body {
            output(String(buffer: chunk))
        }
    }
}
