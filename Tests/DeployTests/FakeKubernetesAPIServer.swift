import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOFoundationCompat
import Synchronization

/// A FAKE Kubernetes API server for tests: no real API server can run on these machines, so
/// `KubernetesDeployer` is tested against this stand-in. It is not Kubernetes.
///
/// What it stands for: the few REST calls Kiln's Kubernetes backend makes, answered in the
/// real API's shapes (objects as posted plus `metadata.uid`, `creationTimestamp` and a
/// `status`; lists as `{"kind":"PodList","items":[…]}`; errors and some deletes as `Status`
/// objects `{"kind":"Status","status":"Failure","message":…,"reason":"NotFound","code":404}`):
///
/// - `GET /api/v1/namespaces/{ns}`, `POST /api/v1/namespaces` (409 AlreadyExists)
/// - `GET|POST /api/v1/namespaces/{ns}/services[/{name}]`
/// - `GET|POST /apis/apps/v1/namespaces/{ns}/deployments[/{name}]`, `DELETE …/deployments/{name}`
/// - `GET /api/v1/namespaces/{ns}/pods?labelSelector=k=v,…` (equality selectors only),
///   `GET /api/v1/namespaces/{ns}/pods/{name}`
/// - `POST /api/v1/namespaces/{ns}/secrets` (409 AlreadyExists), `PUT …/secrets/{name}`
///   (404 when missing); a `kubernetes.io/dockerconfigjson` Secret must hold a
///   `.dockerconfigjson` that is base64 of JSON with `auths` (422 otherwise)
///
/// It checks what the real API server would refuse and Kiln could get wrong: an object made
/// in a namespace that does not exist (404), a kind or namespace that does not match the
/// path (400), a Deployment whose selector does not match its pod template's labels, a
/// negative replica count or a container without an image (422), a missing or wrong bearer
/// token when one is required (401).
///
/// How the real API server (and the cluster behind it) differs:
/// - There is no scheduler, no controller manager and no kubelet. Creating a Deployment
///   creates its `replicas` pods at once, in the same request (the real one answers first;
///   a ReplicaSet then pods follow over the next seconds). Pods get IPs 10.244.x.y.
/// - The kubelet's pull is only emulated: for a registry host set with `requirePullCredentials`,
///   a pod whose `imagePullSecrets` name no Secret of its namespace holding exactly those
///   credentials for that host waits in `ImagePullBackOff` (a real kubelet asks the registry,
///   which may also refuse for other reasons).
/// - Pods never change by themselves. What each does is set per image (`setBehaviour`):
///   `ready` (the `Ready` condition true at once), `neverReady` (running, readiness never
///   passes), `imagePullBackOff` (the container waits with reason `ImagePullBackOff`, as when
///   the registry cannot be reached or the image does not exist), `unschedulable` (Pending, no
///   IP, `PodScheduled` false). A real pod goes through these over time and probes really run.
/// - Deleting a Deployment deletes its pods at once (the real garbage collector deletes them
///   in the background, each pod terminating for up to its grace period).
/// - No RBAC, admission, quotas, resourceVersion conflicts, watches or PATCH; PUT only for Secrets.
///
/// It records every request (method, path, query, Authorization header, body) so tests can
/// assert the exact calls and objects (`answered` waits until a given call was answered),
/// and `failNext` makes one request fail with a given `Status`, as RBAC or an admission
/// webhook would.
final class FakeKubernetesAPIServer: Sendable {
    enum PodBehaviour: Sendable { case ready, neverReady, imagePullBackOff, unschedulable }

    struct RecordedRequest: Sendable, CustomStringConvertible {
        let method: String
        /// Without the query.
        let path: String
        /// Percent-decoded.
        let query: String?
        let authorization: String?
        let body: Data?
        var answered = false
        var json: [String: Any]? { body.flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] } }
        var description: String { "\(method) \(path)\(query.map { "?\($0)" } ?? "")" }
    }

    struct Pod: Sendable {
        var name: String
        var namespace: String
        var labels: [String: String]
        var deployment: String
        var replicaSet: String
        var ip: String?
        var image: String
        var containerName: String
        /// The pod template's `spec`, as posted.
        var spec: Data
        var behaviour: PodBehaviour
        var uid: String
        var created: String
    }

    struct InjectedFailure: Sendable {
        var method: String
        var path: String
        var status: Int
        var reason: String
        var message: String
    }

    struct State: Sendable {
        var requests: [RecordedRequest] = []
        var namespaces: [String: Data] = [:]
        /// "ns/name" → the Secret as stored.
        var secrets: [String: Data] = [:]
        /// Registry host → the "user:password" its pulls need.
        var pullCredentials: [String: String] = [:]
        /// "ns/name" → the object as stored.
        var deployments: [String: Data] = [:]
        var services: [String: Data] = [:]
        var pods: [Pod] = []
        var behaviours: [String: PodBehaviour] = [:]
        var nextIP = 0
        var failures: [InjectedFailure] = []
        var waiters: [(method: String, path: String, continuation: CheckedContinuation<Void, Never>)] = []
    }

    let port: Int
    /// When set, every request must carry `Authorization: Bearer {token}`.
    let token: String?
    private let state: Mutex<State>
    private let task: Task<Void, Error>

    var url: String { "http://127.0.0.1:\(port)" }

    private init(port: Int, token: String?, task: Task<Void, Error>) {
        self.port = port
        self.token = token
        self.state = Mutex(State())
        self.task = task
    }

    /// Starts the fake on 127.0.0.1, on a port the system picks.
    static func start(token: String? = nil) async throws -> FakeKubernetesAPIServer {
        let box = StateBox()
        let router = Router()
        let handler: @Sendable (Request, BasicRequestContext) async throws -> Response = { request, _ in
            var request = request
            let body = try await request.collectBody(upTo: 16 << 20)
            guard let server = box.server else { return Response(status: .serviceUnavailable) }
            let (status, json) = server.handle(
                method: request.method.rawValue, path: request.uri.path, query: request.uri.query?.removingPercentEncoding,
                authorization: request.headers[.authorization], body: body.readableBytes == 0 ? nil : Data(buffer: body))
            var headers = HTTPFields()
            headers[.contentType] = "application/json"
            return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(data: json)))
        }
        for method in [HTTPRequest.Method.get, .post, .put, .patch, .delete] {
            router.on("**", method: method, use: handler)
        }
        var logger = Logger(label: "fake-kubernetes")
        logger.logLevel = .critical  // stopping is cancelling, which Hummingbird logs as an error
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "fake-kubernetes"),
            onServerRunning: { channel in continuation.yield(channel.localAddress?.port ?? 0) },
            logger: logger)
        let task = Task {
            defer { continuation.finish() }
            try await app.run()
        }
        for await port in ports {
            let server = FakeKubernetesAPIServer(port: port, token: token, task: task)
            box.server = server
            return server
        }
        try await task.value
        throw FakeServerError(message: "the fake Kubernetes API server stopped before it listened")
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
    }

    // MARK: what tests set and read

    /// What pods running `image` do; `ready` unless set.
    func setBehaviour(_ behaviour: PodBehaviour, forImage image: String) {
        state.withLock { $0.behaviours[image] = behaviour }
    }

    /// The next `method` request to exactly `path` fails with this `Status` (once).
    func failNext(_ method: String, _ path: String, status: Int, reason: String, message: String) {
        state.withLock { $0.failures.append(InjectedFailure(method: method, path: path, status: status, reason: reason, message: message)) }
    }

    var requests: [RecordedRequest] { state.withLock { $0.requests } }
    func requests(_ method: String, _ path: String) -> [RecordedRequest] {
        requests.filter { $0.method == method && $0.path == path }
    }
    func clearRequests() { state.withLock { $0.requests.removeAll() } }

    /// Returns once a `method` request to `path` has been answered (at once if one was).
    func answered(_ method: String, _ path: String) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s in
                if s.requests.contains(where: { $0.method == method && $0.path == path && $0.answered }) { return true }
                s.waiters.append((method, path, c))
                return false
            }
            if done { c.resume() }
        }
    }

    var namespaces: [String] { state.withLock { $0.namespaces.keys.sorted() } }
    func deployments(in ns: String) -> [String] {
        state.withLock { $0.deployments.keys.filter { $0.hasPrefix("\(ns)/") }.map { String($0.dropFirst(ns.count + 1)) }.sorted() }
    }
    func services(in ns: String) -> [String] {
        state.withLock { $0.services.keys.filter { $0.hasPrefix("\(ns)/") }.map { String($0.dropFirst(ns.count + 1)) }.sorted() }
    }
    func pods(in ns: String) -> [Pod] { state.withLock { $0.pods.filter { $0.namespace == ns } } }
    func secret(_ name: String, in ns: String) -> [String: Any]? {
        state.withLock { $0.secrets["\(ns)/\(name)"] }.flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
    }

    /// Pods of images from `host` pull only with these credentials in an image pull secret.
    func requirePullCredentials(host: String, user: String, password: String) {
        state.withLock { $0.pullCredentials[host] = "\(user):\(password)" }
    }

    // MARK: the API

    private func handle(method: String, path: String, query: String?, authorization: String?, body: Data?) -> (Int, Data) {
        let (answer, waiting) = state.withLock { s in
            let answer = self.answer(&s, method: method, path: path, query: query, authorization: authorization, body: body)
            s.requests[s.requests.count - 1].answered = true
            let waiting = s.waiters.filter { $0.method == method && $0.path == path }.map(\.continuation)
            s.waiters.removeAll { $0.method == method && $0.path == path }
            return (answer, waiting)
        }
        for c in waiting { c.resume() }
        return answer
    }

    private func answer(_ s: inout State, method: String, path: String, query: String?, authorization: String?, body: Data?) -> (Int, Data) {
        s.requests.append(RecordedRequest(method: method, path: path, query: query, authorization: authorization, body: body))
        if let token, authorization != "Bearer \(token)" {
            return Self.status(401, "Unauthorized", "Unauthorized")
        }
        if let i = s.failures.firstIndex(where: { $0.method == method && $0.path == path }) {
            let f = s.failures.remove(at: i)
            return Self.status(f.status, f.reason, f.message)
        }
        let parts = path.split(separator: "/").map(String.init)
        var object: [String: Any]?
        if let body {
            guard let o = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
                return Self.status(400, "BadRequest", "the body of the request was in an unknown format - accepted media types include: application/json")
            }
            object = o
        }
        switch (method, parts.count, parts) {
        case ("POST", 3, ["api", "v1", "namespaces"]):
            return Self.createNamespace(&s, object)
        case ("GET", 4, _) where parts.starts(with: ["api", "v1", "namespaces"]):
            guard let ns = s.namespaces[parts[3]] else { return Self.notFound("namespaces", parts[3]) }
            return (200, ns)
        case ("POST", 5, _) where parts.starts(with: ["api", "v1", "namespaces"]) && parts[4] == "services":
            return Self.createService(&s, namespace: parts[3], object)
        case ("GET", 6, _) where parts.starts(with: ["api", "v1", "namespaces"]) && parts[4] == "services":
            guard let svc = s.services["\(parts[3])/\(parts[5])"] else { return Self.notFound("services", parts[5]) }
            return (200, svc)
        case ("POST", 5, _) where parts.starts(with: ["api", "v1", "namespaces"]) && parts[4] == "secrets":
            return Self.saveSecret(&s, namespace: parts[3], name: nil, object)
        case ("PUT", 6, _) where parts.starts(with: ["api", "v1", "namespaces"]) && parts[4] == "secrets":
            return Self.saveSecret(&s, namespace: parts[3], name: parts[5], object)
        case ("GET", 5, _) where parts.starts(with: ["api", "v1", "namespaces"]) && parts[4] == "pods":
            return Self.listPods(s, namespace: parts[3], query: query)
        case ("GET", 6, _) where parts.starts(with: ["api", "v1", "namespaces"]) && parts[4] == "pods":
            guard let pod = s.pods.first(where: { $0.namespace == parts[3] && $0.name == parts[5] }) else { return Self.notFound("pods", parts[5]) }
            return (200, Self.json(Self.podObject(pod, withKind: true)))
        case ("POST", 6, _) where parts.starts(with: ["apis", "apps", "v1", "namespaces"]) && parts[5] == "deployments":
            return Self.createDeployment(&s, namespace: parts[4], object)
        case ("GET", 7, _) where parts.starts(with: ["apis", "apps", "v1", "namespaces"]) && parts[5] == "deployments":
            guard let d = s.deployments["\(parts[4])/\(parts[6])"] else { return Self.notFound("deployments", parts[6], group: "apps") }
            return (200, d)
        case ("DELETE", 7, _) where parts.starts(with: ["apis", "apps", "v1", "namespaces"]) && parts[5] == "deployments":
            let (ns, name) = (parts[4], parts[6])
            guard s.deployments.removeValue(forKey: "\(ns)/\(name)") != nil else { return Self.notFound("deployments", name, group: "apps") }
            s.pods.removeAll { $0.namespace == ns && $0.deployment == name }
            return (200, Self.json(["kind": "Status", "apiVersion": "v1", "metadata": [String: Any](), "status": "Success",
                                    "details": ["name": name, "group": "apps", "kind": "deployments"]]))
        default:
            return Self.status(404, "NotFound", "the server could not find the requested resource")
        }
    }

    static func createNamespace(_ s: inout State, _ object: [String: Any]?) -> (Int, Data) {
        guard var o = object, o["kind"] as? String == "Namespace", o["apiVersion"] as? String == "v1" else {
            return status(400, "BadRequest", "the API version in the data (\((object?["apiVersion"] as? String) ?? "")) does not match the expected API version (v1)")
        }
        guard let name = (o["metadata"] as? [String: Any])?["name"] as? String, isDNSLabel(name) else {
            return invalid("Namespace", "", "metadata.name: Required value: name or generateName is required")
        }
        if s.namespaces[name] != nil { return status(409, "AlreadyExists", "namespaces \"\(name)\" already exists", details: ["name": name, "kind": "namespaces"]) }
        o["metadata"] = stamped(o["metadata"])
        o["status"] = ["phase": "Active"]
        s.namespaces[name] = json(o)
        return (201, s.namespaces[name]!)
    }

    static func createService(_ s: inout State, namespace ns: String, _ object: [String: Any]?) -> (Int, Data) {
        guard var o = object, o["kind"] as? String == "Service", o["apiVersion"] as? String == "v1" else {
            return status(400, "BadRequest", "Service in version \"v1\" cannot be handled as a Service: the object's kind or apiVersion is wrong")
        }
        if let mismatch = namespaceMismatch(o, ns) { return mismatch }
        guard s.namespaces[ns] != nil else { return notFound("namespaces", ns) }
        let name = ((o["metadata"] as? [String: Any])?["name"] as? String) ?? ""
        guard isDNSLabel(name) else { return invalid("Service", name, "metadata.name: Invalid value: \"\(name)\": a DNS-1035 label must consist of lower case alphanumeric characters or '-'") }
        let spec = o["spec"] as? [String: Any]
        guard let ports = spec?["ports"] as? [[String: Any]], !ports.isEmpty, ports.allSatisfy({ ($0["port"] as? Int).map { (1...65535).contains($0) } == true }) else {
            return invalid("Service", name, "spec.ports: Required value")
        }
        if s.services["\(ns)/\(name)"] != nil { return status(409, "AlreadyExists", "services \"\(name)\" already exists", details: ["name": name, "kind": "services"]) }
        var meta = stamped(o["metadata"])
        meta["namespace"] = ns
        o["metadata"] = meta
        var filled = spec ?? [:]
        filled["type"] = filled["type"] ?? "ClusterIP"
        filled["clusterIP"] = "10.96.0.\(10 + s.services.count)"
        o["spec"] = filled
        o["status"] = ["loadBalancer": [String: Any]()]
        s.services["\(ns)/\(name)"] = json(o)
        return (201, s.services["\(ns)/\(name)"]!)
    }

    static func createDeployment(_ s: inout State, namespace ns: String, _ object: [String: Any]?) -> (Int, Data) {
        guard var o = object, o["kind"] as? String == "Deployment", o["apiVersion"] as? String == "apps/v1" else {
            return status(400, "BadRequest", "Deployment in version \"v1\" cannot be handled as a Deployment: the object's kind or apiVersion is wrong")
        }
        if let mismatch = namespaceMismatch(o, ns) { return mismatch }
        guard s.namespaces[ns] != nil else { return notFound("namespaces", ns) }
        let name = ((o["metadata"] as? [String: Any])?["name"] as? String) ?? ""
        guard isDNSSubdomain(name) else { return invalid("Deployment", name, "metadata.name: Invalid value: \"\(name)\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'") }
        let spec = o["spec"] as? [String: Any] ?? [:]
        let replicas = spec["replicas"] as? Int ?? 1
        guard replicas >= 0 else { return invalid("Deployment", name, "spec.replicas: Invalid value: \(replicas): must be greater than or equal to 0") }
        let selector = (spec["selector"] as? [String: Any])?["matchLabels"] as? [String: String] ?? [:]
        let template = spec["template"] as? [String: Any] ?? [:]
        let templateLabels = (template["metadata"] as? [String: Any])?["labels"] as? [String: String] ?? [:]
        guard !selector.isEmpty else { return invalid("Deployment", name, "spec.selector: Invalid value: \"null\": empty selector is invalid for deployment") }
        guard selector.allSatisfy({ templateLabels[$0.key] == $0.value }) else {
            return invalid("Deployment", name, "spec.template.metadata.labels: Invalid value: \(templateLabels): `selector` does not match template `labels`")
        }
        let podSpec = template["spec"] as? [String: Any] ?? [:]
        let containers = podSpec["containers"] as? [[String: Any]] ?? []
        guard let first = containers.first else { return invalid("Deployment", name, "spec.template.spec.containers: Required value") }
        for (i, c) in containers.enumerated() {
            guard let cname = c["name"] as? String, isDNSLabel(cname) else { return invalid("Deployment", name, "spec.template.spec.containers[\(i)].name: Required value") }
            guard (c["image"] as? String)?.isEmpty == false else { return invalid("Deployment", name, "spec.template.spec.containers[\(i)].image: Required value") }
        }
        if s.deployments["\(ns)/\(name)"] != nil {
            return status(409, "AlreadyExists", "deployments.apps \"\(name)\" already exists", details: ["name": name, "group": "apps", "kind": "deployments"])
        }
        var meta = stamped(o["metadata"])
        meta["namespace"] = ns
        meta["generation"] = 1
        o["metadata"] = meta
        var filledSpec = spec
        filledSpec["replicas"] = replicas
        o["spec"] = filledSpec
        o["status"] = ["observedGeneration": 1, "replicas": replicas]
        s.deployments["\(ns)/\(name)"] = json(o)

        // Where the real cluster's controllers and scheduler take seconds, the fake is done now.
        let hash = randomName(10)
        let image = first["image"] as? String ?? ""
        let behaviour = Self.canPull(s, image: image, namespace: ns, podSpec: podSpec) ? s.behaviours[image] ?? .ready : .imagePullBackOff
        for _ in 0..<replicas {
            var ip: String?
            if behaviour != .unschedulable {
                ip = "10.244.\(s.nextIP / 250).\(s.nextIP % 250 + 2)"
                s.nextIP += 1
            }
            var labels = templateLabels
            labels["pod-template-hash"] = hash
            s.pods.append(Pod(
                name: "\(name)-\(hash)-\(randomName(5))", namespace: ns, labels: labels, deployment: name,
                replicaSet: "\(name)-\(hash)", ip: ip, image: image, containerName: first["name"] as? String ?? "",
                spec: json(podSpec), behaviour: behaviour, uid: UUID().uuidString.lowercased(), created: now()))
        }
        return (201, s.deployments["\(ns)/\(name)"]!)
    }

    static func listPods(_ s: State, namespace ns: String, query: String?) -> (Int, Data) {
        var requirements: [(key: String, value: String?, equal: Bool)] = []
        for item in (query ?? "").split(separator: "&") {
            let kv = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.first == "labelSelector", kv.count == 2 else { continue }
            for term in kv[1].split(separator: ",").map(String.init) {
                if let r = term.range(of: "!=") {
                    requirements.append((String(term[..<r.lowerBound]), String(term[r.upperBound...]), false))
                } else if let r = term.range(of: "==") ?? term.range(of: "=") {
                    requirements.append((String(term[..<r.lowerBound]), String(term[r.upperBound...]), true))
                } else if term.allSatisfy({ $0.isLetter || $0.isNumber || "-._/".contains($0) }) {
                    requirements.append((term, nil, true))
                } else {
                    return status(400, "BadRequest", "unable to parse requirement: found '\(term)', expected: '=', '!=', '==', 'in', notin'")
                }
            }
        }
        let items = s.pods.filter { pod in
            pod.namespace == ns && requirements.allSatisfy { r in
                guard let value = r.value else { return pod.labels[r.key] != nil }
                return (pod.labels[r.key] == value) == r.equal
            }
        }
        return (200, json(["kind": "PodList", "apiVersion": "v1", "metadata": ["resourceVersion": "\(s.requests.count)"],
                           "items": items.map { podObject($0, withKind: false) }]))
    }

    static func podObject(_ pod: Pod, withKind: Bool) -> [String: Any] {
        var status: [String: Any] = ["hostIP": "10.0.0.11", "startTime": pod.created, "qosClass": "BestEffort"]
        func condition(_ type: String, _ ok: Bool, reason: String? = nil, message: String? = nil) -> [String: Any] {
            var c: [String: Any] = ["type": type, "status": ok ? "True" : "False", "lastProbeTime": NSNull(), "lastTransitionTime": pod.created]
            if let reason { c["reason"] = reason }
            if let message { c["message"] = message }
            return c
        }
        let unready = "containers with unready status: [\(pod.containerName)]"
        var container: [String: Any] = ["name": pod.containerName, "image": pod.image, "restartCount": 0, "imageID": ""]
        switch pod.behaviour {
        case .ready:
            status["phase"] = "Running"
            status["conditions"] = [condition("Initialized", true), condition("Ready", true), condition("ContainersReady", true), condition("PodScheduled", true)]
            container["ready"] = true
            container["started"] = true
            container["state"] = ["running": ["startedAt": pod.created]]
        case .neverReady:
            status["phase"] = "Running"
            status["conditions"] = [condition("Initialized", true), condition("Ready", false, reason: "ContainersNotReady", message: unready),
                                    condition("ContainersReady", false, reason: "ContainersNotReady", message: unready), condition("PodScheduled", true)]
            container["ready"] = false
            container["started"] = true
            container["state"] = ["running": ["startedAt": pod.created]]
        case .imagePullBackOff:
            status["phase"] = "Pending"
            status["conditions"] = [condition("Initialized", true), condition("Ready", false, reason: "ContainersNotReady", message: unready),
                                    condition("ContainersReady", false, reason: "ContainersNotReady", message: unready), condition("PodScheduled", true)]
            container["ready"] = false
            container["started"] = false
            container["state"] = ["waiting": ["reason": "ImagePullBackOff", "message": "Back-off pulling image \"\(pod.image)\""]]
        case .unschedulable:
            status["phase"] = "Pending"
            status["conditions"] = [condition("PodScheduled", false, reason: "Unschedulable",
                                              message: "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.")]
        }
        if pod.behaviour != .unschedulable {
            status["containerStatuses"] = [container]
            status["podIP"] = pod.ip
            status["podIPs"] = [["ip": pod.ip ?? ""]]
        }
        var o: [String: Any] = [
            "metadata": [
                "name": pod.name, "namespace": pod.namespace, "labels": pod.labels, "uid": pod.uid,
                "creationTimestamp": pod.created, "generateName": "\(pod.replicaSet)-",
                "ownerReferences": [["apiVersion": "apps/v1", "kind": "ReplicaSet", "name": pod.replicaSet, "controller": true, "blockOwnerDeletion": true]],
            ],
            "spec": (try? JSONSerialization.jsonObject(with: pod.spec)) ?? [String: Any](),
            "status": status,
        ]
        if withKind {
            o["kind"] = "Pod"
            o["apiVersion"] = "v1"
        }
        return o
    }

    // MARK: the real API's answers

    static func status(_ code: Int, _ reason: String, _ message: String, details: [String: Any]? = nil) -> (Int, Data) {
        var o: [String: Any] = ["kind": "Status", "apiVersion": "v1", "metadata": [String: Any](), "status": "Failure",
                                "message": message, "reason": reason, "code": code]
        if let details { o["details"] = details }
        return (code, json(o))
    }

    static func notFound(_ resource: String, _ name: String, group: String? = nil) -> (Int, Data) {
        var details: [String: Any] = ["name": name, "kind": resource]
        if let group { details["group"] = group }
        return status(404, "NotFound", "\(resource)\(group.map { ".\($0)" } ?? "") \"\(name)\" not found", details: details)
    }

    static func invalid(_ kind: String, _ name: String, _ cause: String) -> (Int, Data) {
        let group = kind == "Deployment" ? ".apps" : ""
        return status(422, "Invalid", "\(kind)\(group) \"\(name)\" is invalid: \(cause)", details: ["name": name, "kind": kind])
    }

    static func namespaceMismatch(_ o: [String: Any], _ ns: String) -> (Int, Data)? {
        guard let given = (o["metadata"] as? [String: Any])?["namespace"] as? String, given != ns else { return nil }
        return status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
    }

    static func stamped(_ metadata: Any?) -> [String: Any] {
        var m = metadata as? [String: Any] ?? [:]
        m["uid"] = UUID().uuidString.lowercased()
        m["creationTimestamp"] = now()
        m["resourceVersion"] = String(Int.random(in: 1000...999_999))
        return m
    }

    static func json(_ o: [String: Any]) -> Data {
        (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data("{}".utf8)
    }

    static func now() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date())
    }

    static func randomName(_ n: Int) -> String {
        // The alphabet Kubernetes' name generator uses (no vowels, no look-alikes).
        let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
        return String((0..<n).map { _ in alphabet.randomElement()! })
    }

    static func isDNSLabel(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 63 && !s.hasPrefix("-") && !s.hasSuffix("-")
            && s.utf8.allSatisfy { (97...122).contains($0) || (48...57).contains($0) || $0 == 45 }
    }

    static func isDNSSubdomain(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 253 && s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { isDNSLabel(String($0)) }
    }
}

/// Lets the route handler, made before the server's port is known, reach the server.
private final class StateBox: Sendable {
    private let value = Mutex<FakeKubernetesAPIServer?>(nil)
    var server: FakeKubernetesAPIServer? {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}

struct FakeServerError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
