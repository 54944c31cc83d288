import AsyncHTTPClient
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import NIOCore
import NIOHTTP1

/// The console as a browser without a screen sees it, for tests that check exact statuses,
/// headers and cookies: one cookie jar, redirects not followed, forms posted as a browser
/// posts them (form-encoded, with the console's own address in `Origin` unless told otherwise).
final class ConsoleClient: Sendable {
    static let http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: .init(redirectConfiguration: .disallow))

    enum Origin { case own, none, other(String) }

    let api: String
    /// Cookies by name, as the scheduler set them.
    let jar = Locked<[String: String]>([:])

    init(_ api: String) { self.api = api }

    var session: String? { jar.value["kiln-session"] }

    func get(_ path: String, headers: [(String, String)] = []) async throws -> HTTPReply {
        try await send(.GET, path, body: nil, headers: headers)
    }

    func post(_ path: String, form: [(String, String)], origin: Origin = .own, contentType: String = "application/x-www-form-urlencoded",
              headers: [(String, String)] = []) async throws -> HTTPReply {
        var extra = [("Content-Type", contentType)]
        switch origin {
        case .own: extra.append(("Origin", api))
        case .none: break
        case .other(let o): extra.append(("Origin", o))
        }
        return try await send(.POST, path, body: Self.encode(form), headers: extra + headers)
    }

    /// Logs in through the form: the login page (for its token and cookie), then the POST.
    /// Returns the POST's answer (303 on success).
    @discardableResult
    func logIn(_ user: String, _ password: String, next: String? = nil) async throws -> HTTPReply {
        let page = try await get("/ui/login" + (next.map { "?next=" + ($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "") } ?? ""))
        guard page.status == 200, let token = Self.field("csrf", in: page.body), let nextField = Self.field("next", in: page.body) else {
            throw FarmError("the login page answered \(page.status) without its form: \(page.body)")
        }
        return try await post("/ui/login", form: [("csrf", token), ("next", nextField), ("user", user), ("password", password)])
    }

    /// The CSRF token the page's forms carry.
    static func csrf(in page: String) -> String? { field("csrf", in: page) }

    /// The value of the (first) input called `name` in a page, unescaped.
    static func field(_ name: String, in page: String) -> String? {
        guard let start = page.range(of: "name=\"\(name)\" value=\"") else { return nil }
        let value = page[start.upperBound...].prefix { $0 != "\"" }
        return String(value).replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&#39;", with: "'")
            .replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">").replacingOccurrences(of: "&amp;", with: "&")
    }

    static func encode(_ form: [(String, String)]) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return form.map { "\($0.0.addingPercentEncoding(withAllowedCharacters: allowed)!)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed)!)" }
            .joined(separator: "&")
    }

    private func send(_ method: HTTPMethod, _ path: String, body: String?, headers: [(String, String)]) async throws -> HTTPReply {
        var request = HTTPClientRequest(url: api + path)
        request.method = method
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let cookies = jar.value.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: "; ")
        if !cookies.isEmpty { request.headers.add(name: "Cookie", value: cookies) }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        let response = try await Self.http.execute(request, timeout: .seconds(60))
        let reply = HTTPReply(status: Int(response.status.code), body: String(buffer: try await response.body.collect(upTo: 32 << 20)),
                              headers: response.headers.map { ($0.name, $0.value) })
        for setCookie in reply.all("Set-Cookie") {
            let pair = setCookie.prefix { $0 != ";" }.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pair.count == 2 else { continue }
            jar.withLock { jar in
                if setCookie.contains("Max-Age=0") { jar[String(pair[0])] = nil } else { jar[String(pair[0])] = String(pair[1]) }
            }
        }
        return reply
    }
}

extension HTTPReply {
    /// Every value of header `name` (any case).
    func all(_ name: String) -> [String] { headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1) }
    func header(_ name: String) -> String? { all(name).first }
}

extension SchedulerHarness {
    /// Adds a user with a password (as the admin, through the API).
    func addUser(_ name: String, password: String) async throws {
        let r = try await request(.POST, "/api/v1/users", body: #"{"name":"\#(name)","password":"\#(password)"}"#)
        guard r.status == 201 else { throw FarmError("adding user \(name): \(r.status) \(r.body)") }
    }

    /// Makes `user` a member of `project` with `role` (as the admin, through the API).
    func addMember(_ user: String, to project: String, as role: Role) async throws {
        let r = try await request(.PUT, "/api/v1/projects/\(project)/members/\(user)", body: #"{"role":"\#(role.rawValue)"}"#)
        guard r.status == 200 else { throw FarmError("adding \(user) to \(project): \(r.status) \(r.body)") }
    }

    /// Adds project `name` (as the admin) and queues a build of it; returns the build's id.
    func addProjectWithBuild(_ name: String) async throws -> String {
        let project = #"{"name":"\#(name)","repository":"http://127.0.0.1:1/\#(name).git","buildImage":"a:1","buildCommand":"make"}"#
        let p = try await request(.POST, "/api/v1/projects", body: project)
        guard p.status == 201 else { throw FarmError("adding project \(name): \(p.status) \(p.body)") }
        let b = try await request(.POST, "/api/v1/projects/\(name)/builds", body: #"{"ref":"main"}"#)
        guard b.status == 201, let id = b.json?["id"] as? String else { throw FarmError("queueing a build of \(name): \(b.status) \(b.body)") }
        return id
    }
}
