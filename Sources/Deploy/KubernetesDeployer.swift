import AsyncHTTPClient
import Foundation
import KilnCore
import Logging
import NIOCore
import NIOFoundationCompat

/// Runs an app's versions in a Kubernetes cluster (a cell with backend `kubernetes`, its
/// `endpoint` the API server's URL) through the Kubernetes REST API. The objects it makes
/// and the calls it uses are in docs/kubernetes.md:
///
/// - one namespace per app, `kiln-{app}`, made when first needed and never deleted;
/// - one Service per app, `{app}`, selecting `kiln.dev/app: {app}`, made when first needed and
///   left as it is afterwards (Kiln's load balancer sends to pod addresses, not to it);
/// - one Deployment per version, `{app}-v{n}`, whose pods carry `kiln.dev/app` and
///   `kiln.dev/version` and a readiness probe on the app's health path.
///
/// An instance is a pod: `id` and `name` are its name, `address` is `podIP:port`. Health is
/// the pod's `Ready` condition as the kubelet reports it (the readiness probe), not a request
/// of Kiln's own: pod IPs are often unreachable from outside the cluster.
///
/// `start` may be called again for a version it already started (a re-run of a pipeline): an
/// existing Deployment with the same image is taken as started. All calls may run
/// concurrently. Errors are `KilnError`s naming the cell and what failed, with the API
/// server's own message.
public struct KubernetesDeployer: Deployer {
    /// Time limits and polling. The defaults suit a real cluster.
    public struct Configuration: Sendable {
        /// The longest one API request may take.
        public var requestTimeout: Duration
        /// How long `start` waits for a new version's pods to be scheduled and given an IP
        /// address; past it the version's Deployment is removed and `start` fails.
        public var startTimeout: Duration
        /// How often `start` lists the version's pods while it waits.
        public var pollInterval: Duration
        /// The readiness probe's period. Kiln's `discovery` step waits on readiness, so a
        /// short period makes deploys quicker; each probe is one cheap GET to the app.
        public var probePeriodSeconds: Int

        public init(requestTimeout: Duration = .seconds(30), startTimeout: Duration = .seconds(120),
                    pollInterval: Duration = .milliseconds(500), probePeriodSeconds: Int = 2) {
            self.requestTimeout = requestTimeout
            self.startTimeout = startTimeout
            self.pollInterval = pollInterval
            self.probePeriodSeconds = probePeriodSeconds
        }
    }

    /// The HTTP client used unless given another: a 5 s connect timeout, no read timeout
    /// (each request has its own time limit), certificates checked against the system's
    /// trust store. A cluster whose API server certificate is signed by its own CA needs a
    /// client configured with that CA (or the CA added to the system's store). Never shut down.
    public static let httpClient: HTTPClient = {
        var configuration = HTTPClient.Configuration(
            timeout: .init(connect: .seconds(5), read: nil),
            connectionPool: .init(idleTimeout: .seconds(60))
        )
        configuration.decompression = .disabled
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    public let configuration: Configuration
    let token: String?
    let client: HTTPClient
    let logger: Logger

    /// - Parameters:
    ///   - token: a bearer token (a service account's, from `KILN_KUBE_TOKEN`) sent as
    ///     `Authorization: Bearer …` with every request; nil sends none (an API server that
    ///     trusts its callers, such as one behind `kubectl proxy`).
    public init(token: String? = nil, configuration: Configuration = Configuration(),
                httpClient: HTTPClient = KubernetesDeployer.httpClient,
                logger: Logger = Logger(label: "kiln.deploy.kubernetes")) {
        self.token = token.flatMap { $0.isEmpty ? nil : $0 }
        self.configuration = configuration
        self.client = httpClient
        self.logger = logger
    }

    // MARK: names and labels

    /// The app's namespace: `kiln-{app}`.
    public static func namespace(of app: String) -> String { "kiln-\(app)" }
    /// The version's Deployment: `{app}-v{n}`.
    public static func deploymentName(app: String, version: Int) -> String { "\(app)-v\(version)" }
    /// The label every pod of the app carries, and the Service selects on.
    public static let appLabel = "kiln.dev/app"
    /// The label saying which version a pod belongs to (the number, as a string).
    public static let versionLabel = "kiln.dev/version"

    static func labels(app: String, version: Int) -> [String: String] {
        ["app.kubernetes.io/name": app, appLabel: app, versionLabel: String(version)]
    }

    /// The namespace for `app`, refused when Kubernetes would refuse it (a DNS label: at most
    /// 63 characters; app names are already lowercase letters, digits and '-').
    func namespace(of app: String, in cell: Cell) throws -> String {
        let ns = Self.namespace(of: app)
        guard ns.utf8.count <= 63 else {
            throw KilnError.invalid("cell \(cell.name): app name '\(app)' is too long for Kubernetes: its namespace \(ns) would have \(ns.utf8.count) characters, more than 63; use an app name of at most 58 characters")
        }
        return ns
    }

    // MARK: Deployer

    public func start(_ spec: VersionSpec, in cell: Cell) async throws -> [Instance] {
        let ns = try namespace(of: spec.app, in: cell)
        let name = Self.deploymentName(app: spec.app, version: spec.version)
        try await ensureNamespace(ns, app: spec.app, in: cell)
        try await ensureService(spec, namespace: ns, in: cell)
        try await createDeployment(spec, namespace: ns, in: cell)
        do {
            return try await waitForPods(spec, namespace: ns, in: cell)
        } catch {
            // Remove what was started for this version. Run apart from this task, so that a
            // cancelled start (a pipeline step's time limit) still cleans up; awaited, so
            // nothing is left running behind the caller.
            let deployer = self
            await Task {
                do {
                    try await deployer.deleteDeployment(name, namespace: ns, in: cell)
                } catch {
                    deployer.logger.warning("could not remove Deployment \(name) after a failed start: \(error)",
                                            metadata: ["cell": "\(cell.name)", "app": "\(spec.app)"])
                }
            }.value
            throw error
        }
    }

    public func check(_ instance: Instance, of spec: VersionSpec, in cell: Cell) async -> (healthy: Bool, detail: String) {
        let ns: String
        do { ns = try namespace(of: spec.app, in: cell) } catch { return (false, "\(error)") }
        let operation = "read pod \(instance.id) in namespace \(ns)"
        do {
            let reply = try await send(.GET, "/api/v1/namespaces/\(ns)/pods/\(escape(instance.id))", in: cell, operation: operation)
            if reply.status == 404 { return (false, "pod gone") }
            let pod: KubernetesPod = try decode(reply, expecting: [200], in: cell, operation: operation)
            if pod.isTerminating { return (false, "pod is terminating") }
            if pod.isReady { return (true, "Ready (readiness probe on \(spec.settings.healthPath) passes)") }
            return (false, Self.notReadyDetail(pod, healthPath: spec.settings.healthPath))
        } catch {
            return (false, "\(error)")
        }
    }

    public func stop(_ instances: [Instance], of spec: VersionSpec, in cell: Cell) async throws {
        // Pods belong to the version's Deployment: deleting one alone would have it replaced.
        let ns = try namespace(of: spec.app, in: cell)
        try await deleteDeployment(Self.deploymentName(app: spec.app, version: spec.version), namespace: ns, in: cell)
    }

    public func instances(of app: String, in cell: Cell) async throws -> [Int: [Instance]] {
        let ns = try namespace(of: app, in: cell)
        let pods = try await listPods(namespace: ns, selector: [(Self.appLabel, app)], in: cell)
        var byVersion: [Int: [Instance]] = [:]
        let now = Date()
        for pod in pods where !pod.isTerminating {
            guard let version = pod.metadata.labels?[Self.versionLabel].flatMap({ Int($0) }),
                  let port = pod.spec?.containers?.lazy.compactMap({ $0.ports?.first?.containerPort }).first,
                  var instance = Self.instance(pod, port: port, in: cell) else { continue }
            instance.healthy = pod.isReady
            instance.checkedAt = now
            instance.detail = pod.isReady ? "Ready" : Self.notReadyDetail(pod, healthPath: nil)
            byVersion[version, default: []].append(instance)
        }
        return byVersion
    }

    // MARK: steps of start

    func ensureNamespace(_ ns: String, app: String, in cell: Cell) async throws {
        let read = "read namespace \(ns)"
        let existing = try await send(.GET, "/api/v1/namespaces/\(ns)", in: cell, operation: read)
        switch existing.status {
        case 200: return
        case 404: break
        default: throw failure(existing, in: cell, operation: read)
        }
        let create = "create namespace \(ns)"
        let body = KubernetesNamespace(metadata: .init(name: ns, labels: ["app.kubernetes.io/managed-by": "kiln", Self.appLabel: app]))
        let reply = try await send(.POST, "/api/v1/namespaces", body: body, in: cell, operation: create)
        // 409: made meanwhile by another start (another cell on the same cluster, or a re-run).
        guard [200, 201, 202, 409].contains(reply.status) else { throw failure(reply, in: cell, operation: create) }
    }

    func ensureService(_ spec: VersionSpec, namespace ns: String, in cell: Cell) async throws {
        let path = "/api/v1/namespaces/\(ns)/services"
        let read = "read Service \(spec.app) in namespace \(ns)"
        let existing = try await send(.GET, "\(path)/\(spec.app)", in: cell, operation: read)
        switch existing.status {
        case 200: return
        case 404: break
        default: throw failure(existing, in: cell, operation: read)
        }
        let create = "create Service \(spec.app) in namespace \(ns)"
        let service = KubernetesService(
            metadata: .init(name: spec.app, namespace: ns, labels: ["app.kubernetes.io/name": spec.app, Self.appLabel: spec.app]),
            spec: .init(selector: [Self.appLabel: spec.app],
                        ports: [.init(name: "http", port: spec.settings.port, targetPort: spec.settings.port, protocol: "TCP")]))
        let reply = try await send(.POST, path, body: service, in: cell, operation: create)
        guard [200, 201, 202, 409].contains(reply.status) else { throw failure(reply, in: cell, operation: create) }
    }

    func deployment(for spec: VersionSpec, namespace ns: String) -> KubernetesDeployment {
        let labels = Self.labels(app: spec.app, version: spec.version)
        let s = spec.settings
        var resources: [String: String] = [:]
        if let cpu = s.cpu { resources["cpu"] = "\(Int((cpu * 1000).rounded()))m" }
        if let memory = s.memoryMB { resources["memory"] = "\(memory)Mi" }
        let container = KubernetesContainer(
            name: spec.app,
            image: spec.image,
            ports: [.init(name: "http", containerPort: s.port, protocol: "TCP")],
            env: s.env.isEmpty ? nil : s.env.sorted { $0.key < $1.key }.map { KubernetesEnvVar(name: $0.key, value: $0.value) },
            // Requests equal to limits: the pod gets what it asks for and no more.
            resources: resources.isEmpty ? nil : .init(requests: resources, limits: resources),
            readinessProbe: .init(
                httpGet: .init(path: s.healthPath, port: s.port, scheme: "HTTP"),
                initialDelaySeconds: 1, periodSeconds: configuration.probePeriodSeconds,
                timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3))
        return KubernetesDeployment(
            metadata: .init(name: Self.deploymentName(app: spec.app, version: spec.version), namespace: ns, labels: labels),
            spec: .init(
                replicas: s.replicas,
                selector: .init(matchLabels: [Self.appLabel: spec.app, Self.versionLabel: String(spec.version)]),
                template: .init(metadata: .init(labels: labels), spec: .init(containers: [container]))))
    }

    func createDeployment(_ spec: VersionSpec, namespace ns: String, in cell: Cell) async throws {
        let name = Self.deploymentName(app: spec.app, version: spec.version)
        let path = "/apis/apps/v1/namespaces/\(ns)/deployments"
        let create = "create Deployment \(name) in namespace \(ns)"
        let reply = try await send(.POST, path, body: deployment(for: spec, namespace: ns), in: cell, operation: create)
        switch reply.status {
        case 200, 201, 202:
            logger.info("created Deployment \(name)", metadata: ["cell": "\(cell.name)", "app": "\(spec.app)", "image": "\(spec.image)"])
        case 409:
            // Started before (a re-run): fine if it is the same image, else a clash.
            let read = "read Deployment \(name) in namespace \(ns)"
            let existing: KubernetesDeployment = try decode(try await send(.GET, "\(path)/\(name)", in: cell, operation: read),
                                                            expecting: [200], in: cell, operation: read)
            let image = existing.spec.template.spec.containers.first?.image ?? ""
            guard image == spec.image else {
                throw KilnError.conflict("cell \(cell.name): Deployment \(name) in namespace \(ns) already exists with image \(image), not \(spec.image); version \(spec.version) of \(spec.app) was started before from another image")
            }
            logger.info("Deployment \(name) already exists: taken as started", metadata: ["cell": "\(cell.name)", "app": "\(spec.app)"])
        default:
            throw failure(reply, in: cell, operation: create)
        }
    }

    /// Lists the version's pods until `replicas` of them have an IP address.
    func waitForPods(_ spec: VersionSpec, namespace ns: String, in cell: Cell) async throws -> [Instance] {
        let name = Self.deploymentName(app: spec.app, version: spec.version)
        let selector = [(Self.appLabel, spec.app), (Self.versionLabel, String(spec.version))]
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: configuration.startTimeout)
        while true {
            let pods = try await listPods(namespace: ns, selector: selector, in: cell).filter { !$0.isTerminating }
            let placed = pods.filter { $0.status?.podIP?.isEmpty == false }.sorted { $0.name < $1.name }
            if placed.count >= spec.settings.replicas {
                return placed.compactMap { Self.instance($0, port: spec.settings.port, in: cell) }
            }
            if clock.now >= deadline {
                let waiting = pods.filter { $0.status?.podIP?.isEmpty != false }
                let why = waiting.isEmpty
                    ? "no pods were made for it: a ResourceQuota or an admission policy may refuse them (kubectl -n \(ns) describe replicaset -l \(Self.versionLabel)=\(spec.version))"
                    : waiting.map { "pod \($0.name): \(Self.notReadyDetail($0, healthPath: nil))" }.joined(separator: "; ")
                throw KilnError.unavailable("cell \(cell.name): version \(spec.version) of \(spec.app): \(placed.count) of \(spec.settings.replicas) pods of Deployment \(name) were placed on a node within \(configuration.startTimeout): \(why); the Deployment is removed")
            }
            try await Task.sleep(for: configuration.pollInterval)
        }
    }

    func deleteDeployment(_ name: String, namespace ns: String, in cell: Cell) async throws {
        let operation = "delete Deployment \(name) in namespace \(ns)"
        // Background: the garbage collector deletes its ReplicaSet and pods after the answer.
        let reply = try await send(.DELETE, "/apis/apps/v1/namespaces/\(ns)/deployments/\(name)",
                                   body: KubernetesDeleteOptions(propagationPolicy: "Background"), in: cell, operation: operation)
        guard [200, 202, 404].contains(reply.status) else { throw failure(reply, in: cell, operation: operation) }
    }

    func listPods(namespace ns: String, selector: [(String, String)], in cell: Cell) async throws -> [KubernetesPod] {
        let operation = "list pods in namespace \(ns)"
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~/,"))
        let text = selector.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        let query = "labelSelector=" + (text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text)
        let reply = try await send(.GET, "/api/v1/namespaces/\(ns)/pods", query: query, in: cell, operation: operation)
        let list: KubernetesPodList = try decode(reply, expecting: [200], in: cell, operation: operation)
        return list.items
    }

    // MARK: pods as instances

    static func instance(_ pod: KubernetesPod, port: Int, in cell: Cell) -> Instance? {
        guard let ip = pod.status?.podIP, !ip.isEmpty else { return nil }
        let host = ip.contains(":") ? "[\(ip)]" : ip
        return Instance(id: pod.name, name: pod.name, cell: cell.name, address: "\(host):\(port)")
    }

    /// Why a pod is not ready, most telling first: a container waiting (`ImagePullBackOff:
    /// Back-off pulling image …`, `CrashLoopBackOff`) or ended, then an unschedulable pod, then
    /// the `Ready` condition, then the phase.
    static func notReadyDetail(_ pod: KubernetesPod, healthPath: String?) -> String {
        for c in pod.status?.containerStatuses ?? [] {
            if let w = c.state?.waiting, let reason = w.reason {
                var s = reason
                if let m = w.message, !m.isEmpty { s += ": \(m)" }
                if reason == "CrashLoopBackOff", let t = c.lastState?.terminated {
                    s += " (last exit: \(t.reason ?? "exit code \(t.exitCode ?? -1)"))"
                }
                return s
            }
            if let t = c.state?.terminated {
                return "container \(c.name) ended: \(t.reason ?? "exit code \(t.exitCode ?? -1)")\(t.message.map { ": \($0)" } ?? "")"
            }
        }
        if let s = pod.condition("PodScheduled"), s.status != "True" {
            return [s.reason ?? "not scheduled", s.message].compactMap { $0 }.joined(separator: ": ")
        }
        if let r = pod.condition("Ready"), r.status != "True" {
            let why = [r.reason, r.message].compactMap { $0 }.joined(separator: ": ")
            let running = pod.status?.containerStatuses?.contains { $0.state?.running != nil } == true
            if running, let healthPath {
                return "readiness probe on \(healthPath) not passing yet\(why.isEmpty ? "" : " (\(why))")"
            }
            if !why.isEmpty { return why }
        }
        if let reason = pod.status?.reason {
            return [reason, pod.status?.message].compactMap { $0 }.joined(separator: ": ")
        }
        return "phase \(pod.status?.phase ?? "unknown")"
    }

    // MARK: HTTP

    struct Reply {
        let status: Int
        let body: ByteBuffer
    }

    /// The verbs Kiln uses (NIOHTTP1's `HTTPMethod` is not among Deploy's dependencies).
    enum Verb: String {
        case GET, POST, DELETE
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
