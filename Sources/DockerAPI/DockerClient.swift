import AsyncHTTPClient
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// A client of the Docker Engine API (v1.41) over a unix socket: podman's compatible service
/// (`podman system service`) or dockerd.
///
/// Call order for one container: `createContainer` → `start` → `logs(follow: true)` and
/// `wait` side by side → `remove`. `stop` and `remove` may be called any number of times, also
/// on a container that is gone: a second call does not fail. Every method may run concurrently
/// with any other. Cancelling the calling task cancels the HTTP request (the container keeps
/// running: stop it).
///
/// `wait`, `logs(follow:)`, `build` and `push` keep one request open for as long as the
/// container or the build runs, silent stretches included, so the `HTTPClient` given must have
/// no read timeout: `DockerClient.httpClient` (the default) has none; `HTTPClient.shared`
/// gives up after 90 s of silence (`wait` copes by asking again; the others fail).
public struct DockerClient: Sendable {
    /// The API version in every path.
    public static let apiVersion = "v1.41"

    /// The HTTP client `DockerClient` uses unless given another: no read timeout, a 5 s
    /// connect timeout (AsyncHTTPClient retries a refused connection until then) and room for
    /// 64 open requests to one socket (each running build holds two: `logs` and `wait`).
    /// Never shut down.
    public static let httpClient: HTTPClient = {
        var configuration = HTTPClient.Configuration(
            timeout: .init(connect: .seconds(5), read: nil),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        )
        configuration.decompression = .disabled
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    /// The unix socket the API listens on.
    public let socketPath: String
    let client: HTTPClient

    public init(socketPath: String, httpClient: HTTPClient = DockerClient.httpClient) {
        self.socketPath = socketPath
        self.client = httpClient
    }

    // MARK: system

    /// Succeeds when the API answers `GET /_ping` with 200.
    public func ping() async throws {
        let response = try await send(.GET, "/_ping", operation: "ping")
        _ = try await expect(response, [200], "ping")
    }

    // MARK: containers

    /// Creates a container (not started) and returns its id.
    public func createContainer(_ spec: ContainerSpec, name: String? = nil) async throws -> String {
        let operation = "create container from \(spec.image)"
        var query: [(String, String)] = []
        if let name { query.append(("name", name)) }
        let body = try JSONEncoder().encode(CreateContainerBody(spec))
        let response = try await send(.POST, "/containers/create", query: query, json: body, operation: operation)
        let data = try await expect(response, [201, 200], operation)
        struct Created: Decodable { let Id: String }
        guard let created = try? JSONDecoder().decode(Created.self, from: data) else {
            throw DockerError(operation, Int(response.status.code), "unexpected answer: \(String(decoding: data, as: UTF8.self))")
        }
        return created.Id
    }

    /// Starts a created container (a container already running is not an error).
    public func start(_ id: String) async throws {
        let operation = "start container \(id)"
        let response = try await send(.POST, "/containers/\(escape(id))/start", operation: operation)
        _ = try await expect(response, [204, 304], operation)
    }

    /// Waits until the container stops and returns its exit code.
    public func wait(_ id: String) async throws -> Int {
        let operation = "wait for container \(id)"
        while true {
            do {
                let response = try await send(.POST, "/containers/\(escape(id))/wait", operation: operation, long: true)
                let data = try await expect(response, [200], operation)
                struct Waited: Decodable {
                    struct Failure: Decodable { let Message: String? }
                    let StatusCode: Int
                    let Error: Failure?
                }
                guard let waited = try? JSONDecoder().decode(Waited.self, from: data) else {
                    throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data, as: UTF8.self))")
                }
                if let message = waited.Error?.Message, !message.isEmpty {
                    throw DockerError(operation, 200, message)
                }
                return waited.StatusCode
            } catch let error as DockerError where error.isReadTimeout {
                continue  // a client with a read timeout: waiting is idempotent, ask again
            }
        }
    }

    /// The container's output, one line at a time, stdout and stderr together (each line
    /// whole: a line is never mixed from both). With `follow` the sequence ends when the
    /// container stops; without, when the output so far has been read.
    ///
    /// Lines within one stream keep their order; how podman orders stdout against stderr
    /// lines is its own affair (it may give all of one, then the other). The request is made
    /// when iteration starts, in the iterating task.
    public func logs(_ id: String, follow: Bool, stdout: Bool = true, stderr: Bool = true) -> ContainerLogs {
        ContainerLogs(client: self, id: id, follow: follow, stdout: stdout, stderr: stderr)
    }

    /// Stops a running container: SIGTERM, then SIGKILL after `timeoutSeconds`. A container
    /// that is already stopped is not an error.
    public func stop(_ id: String, timeoutSeconds: Int) async throws {
        let operation = "stop container \(id)"
        let response = try await send(
            .POST, "/containers/\(escape(id))/stop", query: [("t", String(max(0, timeoutSeconds)))],
            operation: operation, timeout: .seconds(Int64(max(0, timeoutSeconds)) + 60))
        _ = try await expect(response, [204, 304], operation)
    }

    /// Removes a container with its anonymous volumes; `force` kills it first if it runs.
    /// A container that does not exist is not an error.
    public func remove(_ id: String, force: Bool) async throws {
        let operation = "remove container \(id)"
        let response = try await send(
            .DELETE, "/containers/\(escape(id))", query: [("force", force ? "true" : "false"), ("v", "true")],
            operation: operation, timeout: .seconds(120))
        _ = try await expect(response, [200, 204, 404], operation)
    }

    /// The containers (running or not) carrying all of `labels`.
    public func containers(labeled labels: [String: String]) async throws -> [ContainerSummary] {
        let operation = "list containers"
        let filters = try JSONEncoder().encode(["label": labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }])
        let response = try await send(.GET, "/containers/json", query: [("all", "true"), ("filters", String(decoding: filters, as: UTF8.self))], operation: operation)
        let data = try await expect(response, [200], operation)
        do {
            return try JSONDecoder().decode([ContainerSummary].self, from: data)
        } catch {
            throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
    }

    /// A container's state: whether it runs, its exit code and the engine's error, if any.
    public func state(of id: String) async throws -> ContainerState {
        let operation = "inspect container \(id)"
        let response = try await send(.GET, "/containers/\(escape(id))/json", operation: operation)
        let data = try await expect(response, [200], operation)
        struct Inspected: Decodable { let State: ContainerState }
        do {
            return try JSONDecoder().decode(Inspected.self, from: data).State
        } catch {
            throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
    }

    // MARK: images

    /// Pulls `image` ("registry/repository:tag") from its registry. `insecure`: the registry
    /// speaks plain HTTP (podman is told `tlsVerify=false`). Throws the engine's message when
    /// the image cannot be pulled (unknown repository or tag, registry down).
    public func pull(_ image: String, insecure: Bool, onLine: @Sendable (String) -> Void = { _ in }) async throws {
        let operation = "pull \(image)"
        var query = [("fromImage", image)]
        if insecure { query.append(("tlsVerify", "false")) }
        let response = try await send(
            .POST, "/images/create", query: query,
            headers: [("X-Registry-Auth", Data("{}".utf8).base64EncodedString())],
            operation: operation, long: true)
        if response.status.code != 200 { _ = try await expect(response, [200], operation) }
        try await forEachMessage(response, operation) { message in
            if let error = message.errorMessage { throw DockerError(operation, nil, error.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if let status = message.statusLine { onLine(status) }
        }
    }

    /// Builds an image from `contextDirectory` and tags it `tag`; returns the image id
    /// ("sha256:…").
    ///
    /// The context is sent as a tar archive (see `Tar`) without what its `.dockerignore`
    /// excludes; the Dockerfile and `.dockerignore` always go. Intermediate containers are
    /// removed, also when the build fails. Each output line goes to `onLine` as it arrives.
    ///
    /// - Parameter dockerfile: the Dockerfile's path relative to the context.
    /// - Throws: `DockerError` with the builder's message when a step fails.
    public func build(
        contextDirectory: URL, dockerfile: String = "Dockerfile", tag: String,
        onLine: @Sendable (String) -> Void
    ) async throws -> String {
        let operation = "build \(tag)"
        if dockerfile.isEmpty || dockerfile.hasPrefix("/") || dockerfile.split(separator: "/").contains("..") {
            throw DockerError(operation, nil, "the Dockerfile path '\(dockerfile)' must be relative to the context and stay inside it")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: contextDirectory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DockerError(operation, nil, "the context folder \(contextDirectory.path) does not exist")
        }
        guard FileManager.default.fileExists(atPath: contextDirectory.appendingPathComponent(dockerfile).path) else {
            throw DockerError(operation, nil, "there is no '\(dockerfile)' in the context folder \(contextDirectory.path)")
        }

        let archive = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-context-\(UUID().uuidString).tar")
        defer { try? FileManager.default.removeItem(at: archive) }
        let size: Int
        do {
            size = try await offThePool {
                let ignore = try DockerIgnore(contextDirectory: contextDirectory)
                try Tar.archive(directory: contextDirectory, to: archive, ignore: ignore, keep: [dockerfile, ".dockerignore"])
                let attributes = try FileManager.default.attributesOfItem(atPath: archive.path)
                return (attributes[.size] as? NSNumber)?.intValue ?? 0
            }
        } catch {
            throw DockerError(operation, nil, "cannot pack the build context: \(error)")
        }

        let response = try await send(
            .POST, "/build",
            query: [("t", tag), ("dockerfile", dockerfile), ("rm", "1"), ("forcerm", "1")],
            headers: [("Content-Type", "application/x-tar")],
            body: .stream(FileChunks(path: archive.path), length: .known(Int64(size))),
            operation: operation, long: true)
        if response.status.code != 200 { _ = try await expect(response, [200], operation) }

        var imageID: String?
        var lastBuilt: String?
        var text = LineSplitter()
        func emit(_ line: String) {
            if line.hasPrefix("Successfully built ") { lastBuilt = String(line.dropFirst("Successfully built ".count)) }
            onLine(line)
        }
        try await forEachMessage(response, operation) { message in
            if let error = message.errorMessage { throw DockerError(operation, nil, error.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if let stream = message.stream { text.feed(stream).forEach(emit) }
            if let status = message.statusLine { emit(status) }
            if let id = message.aux?.ID { imageID = id }
        }
        text.finish().forEach(emit)
        if let imageID { return imageID }
        // No aux message (older engines): the success line names the image by its short id.
        // (Not the tag: after a broken-off build it may still name an older image.)
        guard let lastBuilt, !lastBuilt.isEmpty, lastBuilt.allSatisfy(\.isHexDigit) else {
            throw DockerError(operation, nil, "the build ended without naming an image")
        }
        let inspect = try await send(.GET, "/images/\(escapePath(lastBuilt))/json", operation: operation)
        let data = try await expect(inspect, [200], operation)
        struct Inspected: Decodable { let Id: String }
        guard let inspected = try? JSONDecoder().decode(Inspected.self, from: data) else {
            throw DockerError(operation, 200, "unexpected answer: \(String(decoding: data, as: UTF8.self))")
        }
        return inspected.Id
    }

    /// Pushes `image:tag` (the image must be named for its registry, "127.0.0.1:5000/app")
    /// and returns the manifest digest if the API reported it (podman says it in a status
    /// line, dockerd in an `aux` message), else nil: then ask `registryDigest`.
    ///
    /// - Parameter insecure: the registry speaks plain HTTP (podman is told `tlsVerify=false`;
    ///   dockerd must list it under insecure-registries, 127.0.0.0/8 is by default).
    public func push(image: String, tag: String, insecure: Bool, onLine: @Sendable (String) -> Void) async throws -> String? {
        let operation = "push \(image):\(tag)"
        var query = [("tag", tag)]
        if insecure { query.append(("tlsVerify", "false")) }
        let response = try await send(
            .POST, "/images/\(escapePath(image))/push", query: query,
            headers: [("X-Registry-Auth", Data("{}".utf8).base64EncodedString())],
            operation: operation, long: true)
        if response.status.code != 200 { _ = try await expect(response, [200], operation) }
        var digest: String?
        try await forEachMessage(response, operation) { message in
            if let error = message.errorMessage { throw DockerError(operation, nil, error.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if let status = message.statusLine {
                onLine(status)
                if let found = DockerClient.digest(in: status) { digest = found }
            }
            if let found = message.aux?.Digest { digest = found }
        }
        return digest
    }

    /// Whether the engine has an image of this name or id.
    public func imageExists(_ name: String) async throws -> Bool {
        let operation = "inspect image \(name)"
        let response = try await send(.GET, "/images/\(escapePath(name))/json", operation: operation)
        let status = response.status.code
        _ = try await expect(response, [200, 404], operation)
        return status == 200
    }

    /// Removes an image (`force`: also when containers use it or it has other names).
    /// An image that does not exist is not an error.
    public func removeImage(_ name: String, force: Bool) async throws {
        let operation = "remove image \(name)"
        let response = try await send(
            .DELETE, "/images/\(escapePath(name))", query: [("force", force ? "true" : "false")],
            operation: operation, timeout: .seconds(120))
        _ = try await expect(response, [200, 404], operation)
    }

    // MARK: registry

    /// The digest ("sha256:…") the registry gives `repository:tag`'s manifest:
    /// `HEAD /v2/<repository>/manifests/<tag>` accepting Docker v2 and OCI manifests and
    /// indexes, read from `Docker-Content-Digest`. No authentication.
    ///
    /// - Parameters:
    ///   - registry: "host:port", or a base URL ("http://host:port") whose scheme wins.
    ///   - insecure: plain HTTP instead of HTTPS when `registry` has no scheme.
    public static func registryDigest(
        registry: String, repository: String, tag: String, insecure: Bool = false,
        httpClient: HTTPClient = .shared
    ) async throws -> String {
        let operation = "read the digest of \(registry)/\(repository):\(tag)"
        let base = registry.contains("://") ? registry : (insecure ? "http://" : "https://") + registry
        let trimmed = base.hasSuffix("/") ? String(base.dropLast()) : base
        var request = HTTPClientRequest(url: "\(trimmed)/v2/\(repository)/manifests/\(escapeComponent(tag))")
        request.method = .HEAD
        request.headers.add(name: "Accept", value: [
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
        ].joined(separator: ", "))
        let response: HTTPClientResponse
        do {
            response = try await httpClient.execute(request, timeout: .seconds(30))
        } catch {
            throw DockerError(operation, nil, "the registry does not answer: \(error)")
        }
        _ = try? await response.body.collect(upTo: 1 << 20)
        switch response.status.code {
        case 200:
            guard let digest = response.headers.first(name: "Docker-Content-Digest"), digest.hasPrefix("sha256:") else {
                throw DockerError(operation, 200, "the registry gave no Docker-Content-Digest header")
            }
            return digest
        case 404:
            throw DockerError(operation, 404, "the registry has no manifest for \(repository):\(tag)")
        case 401, 403:
            throw DockerError(operation, Int(response.status.code), "the registry asks for credentials")
        default:
            throw DockerError(operation, Int(response.status.code), "the registry answered \(response.status)")
        }
    }

    /// A "sha256:<64 hex>" found after "digest: " in a status line.
    static func digest(in line: String) -> String? {
        guard let range = line.range(of: "digest: sha256:") else { return nil }
        let hex = line[range.upperBound...].prefix { $0.isHexDigit }
        return hex.count == 64 ? "sha256:" + hex : nil
    }
}

// MARK: - container spec

/// What a container is made from. Only the fields Kiln uses; nil means the engine's default.
public struct ContainerSpec: Sendable, Equatable {
    public var image: String
    public var cmd: [String]
    public var workingDir: String?
    public var env: [String: String]
    /// "host:container" or "host:container:ro".
    public var binds: [String]
    /// "host", "none", "bridge", or a network's name.
    public var networkMode: String?
    public var labels: [String: String]
    public var memoryBytes: Int64?
    /// CPUs the container may use (1.5 = one and a half).
    public var cpus: Double?
    public var entrypoint: [String]?
    public var user: String?
    public var pidsLimit: Int?
    /// Container TCP port → the host address and port it is published on.
    public var publish: [Int: PublishedPort]

    public struct PublishedPort: Sendable, Equatable {
        public var hostIP: String
        public var hostPort: Int
        public init(hostIP: String, hostPort: Int) {
            self.hostIP = hostIP
            self.hostPort = hostPort
        }
    }

    public init(
        image: String, cmd: [String] = [], workingDir: String? = nil, env: [String: String] = [:],
        binds: [String] = [], networkMode: String? = nil, labels: [String: String] = [:],
        memoryBytes: Int64? = nil, cpus: Double? = nil, entrypoint: [String]? = nil, user: String? = nil,
        pidsLimit: Int? = nil, publish: [Int: PublishedPort] = [:]
    ) {
        self.image = image
        self.cmd = cmd
        self.workingDir = workingDir
        self.env = env
        self.binds = binds
        self.networkMode = networkMode
        self.labels = labels
        self.memoryBytes = memoryBytes
        self.cpus = cpus
        self.entrypoint = entrypoint
        self.user = user
        self.pidsLimit = pidsLimit
        self.publish = publish
    }
}

/// One container in a `containers(labeled:)` answer.
public struct ContainerSummary: Decodable, Sendable, Equatable {
    public let id: String
    public let names: [String]
    public let labels: [String: String]
    /// `running`, `exited`, `created`, …
    public let state: String

    enum CodingKeys: String, CodingKey { case id = "Id", names = "Names", labels = "Labels", state = "State" }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        names = (try c.decodeIfPresent([String].self, forKey: .names) ?? []).map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 }
        labels = try c.decodeIfPresent([String: String].self, forKey: .labels) ?? [:]
        state = try c.decodeIfPresent(String.self, forKey: .state) ?? "unknown"
    }
}

/// `State` of an inspected container.
public struct ContainerState: Decodable, Sendable, Equatable {
    public let running: Bool
    public let status: String
    public let exitCode: Int
    public let error: String

    enum CodingKeys: String, CodingKey { case running = "Running", status = "Status", exitCode = "ExitCode", error = "Error" }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        running = try c.decodeIfPresent(Bool.self, forKey: .running) ?? false
        status = try c.decodeIfPresent(String.self, forKey: .status) ?? "unknown"
        exitCode = try c.decodeIfPresent(Int.self, forKey: .exitCode) ?? 0
        error = try c.decodeIfPresent(String.self, forKey: .error) ?? ""
    }
}

// The API's field names.
private struct CreateContainerBody: Encodable {
    struct HostConfigBody: Encodable {
        struct Binding: Encodable { var HostIp: String; var HostPort: String }
        var Binds: [String]
        var NetworkMode: String?
        var Memory: Int64?
        var NanoCpus: Int64?
        var PidsLimit: Int?
        var PortBindings: [String: [Binding]]?
    }
    struct Empty: Encodable {}
    var Image: String
    var Cmd: [String]
    var Entrypoint: [String]?
    var WorkingDir: String?
    var Env: [String]
    var Labels: [String: String]
    var User: String?
    var Tty = false
    var AttachStdout = true
    var AttachStderr = true
    var ExposedPorts: [String: Empty]?
    var HostConfig: HostConfigBody

    init(_ spec: ContainerSpec) {
        Image = spec.image
        Cmd = spec.cmd
        Entrypoint = spec.entrypoint
        WorkingDir = spec.workingDir
        Env = spec.env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        Labels = spec.labels
        User = spec.user
        HostConfig = .init(
            Binds: spec.binds, NetworkMode: spec.networkMode, Memory: spec.memoryBytes,
            NanoCpus: spec.cpus.map { Int64(($0 * 1e9).rounded()) }, PidsLimit: spec.pidsLimit,
            PortBindings: spec.publish.isEmpty ? nil : Dictionary(uniqueKeysWithValues: spec.publish.map {
                ("\($0.key)/tcp", [HostConfigBody.Binding(HostIp: $0.value.hostIP, HostPort: String($0.value.hostPort))])
            }))
        ExposedPorts = spec.publish.isEmpty ? nil : Dictionary(uniqueKeysWithValues: spec.publish.keys.map { ("\($0)/tcp", Empty()) })
    }
}

// MARK: - errors

/// A failure of a Docker Engine API call: what was being done, the HTTP status (nil when the
/// failure came inside a streamed answer or before any answer) and the API's message.
public struct DockerError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let statusCode: Int?
    public let message: String

    /// The HTTP client gave up waiting (its read timeout).
    let isReadTimeout: Bool

    public init(_ operation: String, _ statusCode: Int?, _ message: String) {
        self.init(operation, statusCode, message, isReadTimeout: false)
    }

    init(_ operation: String, _ statusCode: Int?, _ message: String, isReadTimeout: Bool) {
        self.operation = operation
        self.statusCode = statusCode
        self.message = message
        self.isReadTimeout = isReadTimeout
    }

    static func transport(_ operation: String, _ status: Int?, _ what: String, _ error: any Error) -> DockerError {
        if let error = error as? HTTPClientError, error == .readTimeout {
            return DockerError(
                operation, status,
                "no answer within the HTTP client's read timeout (give DockerClient a client without one, e.g. DockerClient.httpClient)",
                isReadTimeout: true)
        }
        return DockerError(operation, status, "\(what): \(error)")
    }

    /// The container or image does not exist.
    public var isNotFound: Bool { statusCode == 404 }

    public var description: String {
        if let statusCode { return "\(operation): HTTP \(statusCode): \(message)" }
        return "\(operation): \(message)"
    }
}

// MARK: - logs

/// The lines of a container's output (see `DockerClient.logs`).
public struct ContainerLogs: AsyncSequence, Sendable {
    public typealias Element = String
    let client: DockerClient
    let id: String
    let follow: Bool
    let stdout: Bool
    let stderr: Bool

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(logs: self)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        private enum State {
            case idle
            case streaming(HTTPClientResponse.Body.AsyncIterator)
            case finished
        }
        private let logs: ContainerLogs
        private var state = State.idle
        private var demuxer = LogDemuxer()
        private var pending: [String] = []
        private var next = 0

        init(logs: ContainerLogs) { self.logs = logs }

        public mutating func next() async throws -> String? {
            while true {
                if next < pending.count {
                    defer { next += 1 }
                    return pending[next]
                }
                pending.removeAll(keepingCapacity: true)
                next = 0
                switch state {
                case .idle:
                    let operation = "read the logs of container \(logs.id)"
                    let response = try await logs.client.send(
                        .GET, "/containers/\(logs.client.escape(logs.id))/logs",
                        query: [
                            ("stdout", logs.stdout ? "1" : "0"), ("stderr", logs.stderr ? "1" : "0"),
                            ("follow", logs.follow ? "1" : "0"), ("timestamps", "0"),
                        ],
                        operation: operation, long: true)
                    if response.status.code != 200 { _ = try await logs.client.expect(response, [200], operation) }
                    state = .streaming(response.body.makeAsyncIterator())
                case .streaming(var body):
                    if let chunk = try await body.next() {
                        state = .streaming(body)
                        pending = demuxer.feed(chunk.readableBytesView)
                    } else {
                        state = .finished
                        pending = demuxer.finish()
                    }
                case .finished:
                    return nil
                }
            }
        }
    }
}

/// Splits the Docker log stream into lines: frames of an 8-byte header ([stream, 0, 0, 0,
/// size as big-endian UInt32]) then the payload, or raw bytes when the container has a TTY.
/// podman labels both as application/octet-stream, so the framing is recognised from the
/// first header.
struct LogDemuxer {
    private enum Mode { case unknown, multiplexed, raw }
    private var mode = Mode.unknown
    private var buffer: [UInt8] = []
    private var stdout = LineSplitter()
    private var stderr = LineSplitter()

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [String] {
        buffer.append(contentsOf: bytes)
        if mode == .unknown {
            guard buffer.count >= 8 else { return [] }
            mode = (buffer[0] <= 2 && buffer[1] == 0 && buffer[2] == 0 && buffer[3] == 0) ? .multiplexed : .raw
        }
        if mode == .raw {
            defer { buffer.removeAll(keepingCapacity: true) }
            return stdout.feed(bytes: buffer)
        }
        var lines: [String] = []
        var offset = 0
        while buffer.count - offset >= 8 {
            let size = Int(buffer[offset + 4]) << 24 | Int(buffer[offset + 5]) << 16 | Int(buffer[offset + 6]) << 8 | Int(buffer[offset + 7])
            guard buffer.count - offset - 8 >= size else { break }
            let payload = buffer[(offset + 8)..<(offset + 8 + size)]
            if buffer[offset] == 2 { lines += stderr.feed(bytes: payload) } else { lines += stdout.feed(bytes: payload) }
            offset += 8 + size
        }
        buffer.removeFirst(offset)
        return lines
    }

    mutating func finish() -> [String] {
        if mode != .multiplexed && !buffer.isEmpty {
            let rest = stdout.feed(bytes: buffer)
            buffer.removeAll()
            return rest + stdout.finish()
        }
        return stdout.finish() + stderr.finish()
    }
}

/// Cuts text into lines ("\n", a trailing "\r" dropped); a line longer than 1 MiB is cut there.
struct LineSplitter {
    static let maxLine = 1 << 20
    private var partial: [UInt8] = []

    mutating func feed(_ text: String) -> [String] { feed(bytes: text.utf8) }

    mutating func feed(bytes: some Sequence<UInt8>) -> [String] {
        var lines: [String] = []
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                lines.append(take())
            } else {
                partial.append(byte)
                if partial.count >= LineSplitter.maxLine { lines.append(take()) }
            }
        }
        return lines
    }

    mutating func finish() -> [String] {
        partial.isEmpty ? [] : [take()]
    }

    private mutating func take() -> String {
        if partial.last == UInt8(ascii: "\r") { partial.removeLast() }
        defer { partial.removeAll(keepingCapacity: true) }
        return String(decoding: partial, as: UTF8.self)
    }
}

// MARK: - streamed JSON

/// One object of the JSON stream `/build` and `/images/…/push` answer with.
struct StreamMessage: Decodable {
    struct Detail: Decodable { let message: String? }
    struct Aux: Decodable {
        let ID: String?
        let Digest: String?
    }
    var stream: String?
    var status: String?
    var id: String?
    var progress: String?
    var error: String?
    var errorDetail: Detail?
    var aux: Aux?

    enum CodingKeys: String, CodingKey { case stream, status, id, progress, error, errorDetail, aux }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        stream = try? c.decodeIfPresent(String.self, forKey: .stream)
        status = try? c.decodeIfPresent(String.self, forKey: .status)
        id = try? c.decodeIfPresent(String.self, forKey: .id)
        progress = try? c.decodeIfPresent(String.self, forKey: .progress)
        error = try? c.decodeIfPresent(String.self, forKey: .error)
        errorDetail = try? c.decodeIfPresent(Detail.self, forKey: .errorDetail)
        aux = try? c.decodeIfPresent(Aux.self, forKey: .aux)  // BuildKit sends other shapes
    }

    var errorMessage: String? {
        if let error, !error.isEmpty { return error }
        if let message = errorDetail?.message, !message.isEmpty { return message }
        return nil
    }

    /// A status message as a log line; progress-bar updates are left out.
    var statusLine: String? {
        guard let status, !status.isEmpty, progress == nil || progress!.isEmpty else { return nil }
        if let id, !id.isEmpty { return "\(id): \(status)" }
        return status
    }
}

/// Cuts a byte stream into top-level JSON values, whatever the chunking and separators.
struct JSONStreamSplitter {
    private var buffer: [UInt8] = []
    private var scanned = 0
    private var depth = 0
    private var inString = false
    private var escaped = false
    private var start = 0

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [[UInt8]] {
        buffer.append(contentsOf: bytes)
        var values: [[UInt8]] = []
        var i = scanned
        while i < buffer.count {
            let byte = buffer[i]
            if inString {
                if escaped { escaped = false }
                else if byte == UInt8(ascii: "\\") { escaped = true }
                else if byte == UInt8(ascii: "\"") { inString = false }
            } else {
                switch byte {
                case UInt8(ascii: "\""):
                    inString = true
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    if depth == 0 { start = i }
                    depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { values.append(Array(buffer[start...i])) }
                    if depth < 0 { depth = 0 }
                default:
                    break
                }
            }
            i += 1
        }
        // Keep only the value in progress.
        let keepFrom = depth > 0 ? start : buffer.count
        buffer.removeFirst(keepFrom)
        start -= keepFrom
        if start < 0 { start = 0 }
        scanned = buffer.count
        return values
    }

    /// Bytes of an unfinished value at the end of the stream (normally none).
    var remainder: String {
        String(decoding: buffer, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

// MARK: - transport

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
        // Without this, a missing socket costs the whole connect timeout (AsyncHTTPClient retries).
        guard FileManager.default.fileExists(atPath: socketPath) else {
            throw DockerError(operation, nil, "the container API does not answer: there is no socket at \(socketPath)")
        }
        guard let url = URL(httpURLWithSocketPath: socketPath, uri: uri) else {
            throw DockerError(operation, nil, "cannot make a URL of the socket path \(socketPath) and \(uri)")
        }
        var request = HTTPClientRequest(url: url.absoluteString)
        // AHC would send the socket path as Host; podman's Go server answers 400 to a '/' in it.
        request.headers.add(name: "Host", value: "localhost")
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
            throw DockerError.transport(operation, nil, "the container API at \(socketPath) does not answer", error)
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

/// A file read in 256 KiB chunks, as a request body. Each read is a short blocking read of
/// a local file.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String

    func makeAsyncIterator() -> Iterator { Iterator(path: path) }

    struct Iterator: AsyncIteratorProtocol {
        private final class Descriptor {
            let fd: Int32
            init(_ fd: Int32) { self.fd = fd }
            deinit { if fd >= 0 { close(fd) } }
        }
        private let path: String
        private var descriptor: Descriptor?
        private var done = false

        init(path: String) { self.path = path }

        mutating func next() async throws -> ByteBuffer? {
            if done { return nil }
            if descriptor == nil {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw TarError("cannot read \(path): \(String(cString: strerror(errno)))") }
                descriptor = Descriptor(fd)
            }
            let fd = descriptor!.fd
            var buffer = ByteBuffer()
            var failure: Int32 = 0
            let count = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 1 << 18) { raw in
                var n: Int
                repeat { n = read(fd, raw.baseAddress, raw.count) } while n < 0 && errno == EINTR
                if n < 0 { failure = errno }
                return Swift.max(n, 0)
            }
            if failure != 0 { throw TarError("cannot read \(path): \(String(cString: strerror(failure)))") }
            if count == 0 {
                done = true
                descriptor = nil
                return nil
            }
            return buffer
        }
    }
}
