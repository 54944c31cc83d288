import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// Counts the requests a dev server answered, so tests and benchmarks can tell whether a
/// build downloaded anything.
public final class RequestCounter: Sendable {
    private let state = Mutex<(total: Int, byStatus: [Int: Int])>((0, [:]))
    public init() {}
    public var total: Int { state.withLock { $0.total } }
    /// Requests answered 200: files actually served.
    public var served: Int { state.withLock { $0.byStatus[200] ?? 0 } }
    func record(_ status: Int) {
        state.withLock {
            $0.total += 1
            $0.byStatus[status, default: 0] += 1
        }
    }
}

/// An in-process HTTP server run in the background for the local farm and the tests.
/// `stop()` ends it and waits until it has closed its port.
public final class BackgroundServer: Sendable {
    public let port: Int
    public let requests: RequestCounter
    private let task: Task<Void, Error>

    init(port: Int, requests: RequestCounter, task: Task<Void, Error>) {
        self.port = port
        self.requests = requests
        self.task = task
    }

    public var url: String { "http://127.0.0.1:\(port)" }
    /// The address build containers on podman's bridge use (podman names the host so in their
    /// /etc/hosts); reachable only for a server started with `LocalPeers`.
    public var bridgeURL: String { "http://host.containers.internal:\(port)" }

    public func stop() async {
        task.cancel()
        _ = try? await task.value
    }

    /// `host`: "127.0.0.1", or "0.0.0.0" for a server whose router filters peers (`LocalPeers`).
    static func start(name: String, host: String = "127.0.0.1", port: Int, router: Router<PeerRequestContext>, requests: RequestCounter, logger: Logger) async throws -> BackgroundServer {
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        // Stopping is cancelling, which Hummingbird logs as an error; keep dev servers quiet.
        var logger = logger
        logger.logLevel = .critical
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: name),
            onServerRunning: { channel in continuation.yield(channel.localAddress?.port ?? port) },
            logger: logger)
        let task = Task {
            defer { continuation.finish() }
            try await app.run()
        }
        for await bound in ports {
            return BackgroundServer(port: bound, requests: requests, task: task)
        }
        do {
            try await task.value
        } catch {
            throw FarmError("\(name) could not listen on \(host):\(port): \(error)")
        }
        throw FarmError("\(name) stopped before it listened on \(host):\(port)")
    }
}

/// Counts every answer, whatever route or error produced it.
struct CountingMiddleware: RouterMiddleware {
    typealias Context = PeerRequestContext
    let counter: RequestCounter
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            let r = try await next(request, context)
            counter.record(r.status.code)
            return r
        } catch let e as HTTPError {
            counter.record(e.status.code)
            throw e
        } catch {
            counter.record(500)
            throw error
        }
    }
}

/// A Maven repository mirror serving a folder (Debian's `/usr/share/maven-repo`) over HTTP,
/// standing in for Nexus or Artifactory. Follows the folder's symbolic links (Debian's
/// repository links into /usr/share/java) but never serves outside them via `..`.
public enum MavenMirror {
    /// - Parameter peers: nil listens on 127.0.0.1 only; given, listens on every address and
    ///   answers only these peers (this machine and its build containers: see `LocalPeers`).
    public static func start(root: URL = URL(fileURLWithPath: "/usr/share/maven-repo"), port: Int = 0, peers: LocalPeers? = nil, logger: Logger) async throws -> BackgroundServer {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDir), isDir.boolValue else {
            throw FarmError("Maven mirror: \(root.path) does not exist. Install Debian's Maven plugins (run scripts/install-deps.sh).")
        }
        let counter = RequestCounter()
        let router = Router(context: PeerRequestContext.self)
        router.add(middleware: CountingMiddleware(counter: counter))
        if let peers { router.add(middleware: PeerFilterMiddleware(peers: peers)) }
        router.on("**", method: .get) { request, _ in try serveFile(root: root, path: request.uri.path, head: false) }
        router.on("**", method: .head) { request, _ in try serveFile(root: root, path: request.uri.path, head: true) }
        return try await BackgroundServer.start(name: "maven-mirror", host: peers == nil ? "127.0.0.1" : "0.0.0.0", port: port,
                                                router: router, requests: counter, logger: logger)
    }

    static func serveFile(root: URL, path: String, head: Bool) throws -> Response {
        let decoded = path.removingPercentEncoding ?? path
        let parts = decoded.split(separator: "/")
        guard !parts.contains(".."), !decoded.contains("\0") else { throw HTTPError(.badRequest) }
        let file = parts.reduce(root) { $0.appendingPathComponent(String($1)) }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file.path, isDirectory: &isDir), !isDir.boolValue,
              let data = head ? Data() : try? Data(contentsOf: file) else {
            throw HTTPError(.notFound)
        }
        var headers = HTTPFields()
        headers[.contentType] = file.pathExtension == "xml" || file.pathExtension == "pom" ? "text/xml" : "application/octet-stream"
        if head {
            let size = (try? FileManager.default.attributesOfItem(atPath: file.path)[.size] as? Int) ?? 0
            headers[.contentLength] = String(size ?? 0)
            return Response(status: .ok, headers: headers)
        }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(data: data)))
    }
}

/// A git server over smart HTTP, for the demo project and the tests, standing in for GitLab.
/// It runs `git http-backend` as a CGI program for each request; repositories are the bare
/// repositories under `root` (`http://127.0.0.1:PORT/NAME.git`).
public enum GitHTTPServer {
    public static func start(root: URL, port: Int = 0, logger: Logger) async throws -> BackgroundServer {
        guard let backend = ["/usr/lib/git-core/git-http-backend", "/usr/libexec/git-core/git-http-backend"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw FarmError("git server: git-http-backend is missing. Install git (apt-get install git).")
        }
        let counter = RequestCounter()
        let router = Router(context: PeerRequestContext.self)
        router.add(middleware: CountingMiddleware(counter: counter))
        let handler: @Sendable (Request, PeerRequestContext) async throws -> Response = { request, _ in
            var request = request
            let body = try await request.collectBody(upTo: 256 << 20)
            return try await cgi(backend: backend, root: root, request: request, body: body)
        }
        router.on("**", method: .get, use: handler)
        router.on("**", method: .post, use: handler)
        return try await BackgroundServer.start(name: "git-server", port: port, router: router, requests: counter, logger: logger)
    }

    static func cgi(backend: String, root: URL, request: Request, body: ByteBuffer) async throws -> Response {
        let path = request.uri.path
        guard !path.split(separator: "/").contains(".."), !path.contains("\0") else { throw HTTPError(.badRequest) }
        var env: [String: String] = [
            "GIT_PROJECT_ROOT": root.path,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": request.uri.query ?? "",
            "REQUEST_METHOD": request.method.rawValue,
            "CONTENT_TYPE": request.headers[.contentType] ?? "",
            "CONTENT_LENGTH": String(body.readableBytes),
            "REMOTE_ADDR": "127.0.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
            // The repositories belong to whoever made them; serve them anyway.
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*",
        ]
        if let enc = request.headers[.contentEncoding] { env["HTTP_CONTENT_ENCODING"] = enc }
        if let proto = request.headers[HTTPField.Name("Git-Protocol")!] { env["GIT_PROTOCOL"] = proto }
        let input = Data(buffer: body)
        let cgiEnv = env
        let output: Data = try await withCheckedThrowingContinuation { c in
            Thread.detachNewThread {
                c.resume(with: Result { try runCGI(backend: backend, env: cgiEnv, input: input) })
            }
        }
        return parseCGI(output)
    }

    static func runCGI(backend: String, env: [String: String], input: Data) throws -> Data {
        // A CGI program gets exactly the environment it is given, not ours.
        try Spawn.run(backend, [], environment: env, replaceEnvironment: true, input: input, discardStderr: true).output
    }

    static func parseCGI(_ output: Data) -> Response {
        let bytes = [UInt8](output)
        var headerEnd = -1, bodyStart = 0
        for i in 0..<bytes.count {
            if i + 3 < bytes.count, bytes[i] == 13, bytes[i + 1] == 10, bytes[i + 2] == 13, bytes[i + 3] == 10 { headerEnd = i; bodyStart = i + 4; break }
            if i + 1 < bytes.count, bytes[i] == 10, bytes[i + 1] == 10 { headerEnd = i; bodyStart = i + 2; break }
        }
        guard headerEnd >= 0 else { return Response(status: .internalServerError) }
        var status = HTTPResponse.Status.ok
        var headers = HTTPFields()
        let head = String(decoding: bytes[0..<headerEnd], as: UTF8.self)
        // "\r\n" is a single Character in Swift: drop the "\r"s before splitting.
        for line in head.replacingOccurrences(of: "\r", with: "").split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            if name.lowercased() == "status" {
                status = HTTPResponse.Status(code: Int(value.prefix(3)) ?? 200)
            } else if let n = HTTPField.Name(name) {
                headers.append(HTTPField(name: n, value: value))
            }
        }
        var buffer = ByteBuffer()
        buffer.writeBytes(bytes[bodyStart...])
        return Response(status: status, headers: headers, body: .init(byteBuffer: buffer))
    }
}
