import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTLS
import KilnCore
import Logging
import NIOCore
import NIOFoundationCompat
import NIOSSL
import Synchronization
import X509

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
///   `GET /api/v1/namespaces/{ns}/pods/{name}`, `PATCH …/pods/{name}` (a merge patch of
///   `metadata.annotations` only; any other content type 415, as the real server answers)
/// - `PUT /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale` (an `autoscaling/v1` `Scale`)
/// - `POST /api/v1/namespaces/{ns}/secrets` (409 AlreadyExists), `PUT …/secrets/{name}`
///   (404 when missing), `DELETE …/secrets/{name}`; `data` values must be base64 (400), keys
///   `[-._a-zA-Z0-9]+` (422); a `kubernetes.io/dockerconfigjson` Secret must hold a
///   `.dockerconfigjson` that is base64 of JSON with `auths` (422 otherwise)
///
/// Like a real API server it serves only TLS, with a certificate signed by the CA the test
/// gives (a cluster's CA), and authenticates each request by a bearer token or a client
/// certificate signed by the client CA it was given (`Access`); anything else is 401. A
/// client that does not trust the server's CA never gets as far as a request: nothing is
/// recorded for it.
///
/// It checks what the real API server would refuse and Kiln could get wrong: an object made
/// in a namespace that does not exist (404), a kind or namespace that does not match the
/// path (400), a Deployment whose selector does not match its pod template's labels, a
/// negative replica count or a container without an image (422), a missing or wrong bearer
/// token or client certificate (401), a pod whose `env` refers to a Secret or key that does
/// not exist (it waits in `CreateContainerConfigError`, as the kubelet leaves it).
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
/// - Scaling makes or deletes pods at once, in the same request. Pods to delete are ranked
///   as the ReplicaSet controller ranks them (unscheduled, pending, not ready, lowest
///   `controller.kubernetes.io/pod-deletion-cost`, newest), without its rules on pods doubled
///   up on a node, time ready and restart counts; real pods terminate over their grace period.
/// - No RBAC (an authenticated caller may do everything), admission, quotas, resourceVersion
///   conflicts or watches; PATCH only for pods' annotations; PUT only for Secrets and the
///   scale subresource. No anonymous access.
///
/// It records every request (method, path, query, Authorization header, the client
/// certificate's subject, body) so tests can
/// assert the exact calls and objects (`answered` waits until a given call was answered),
/// and `failNext` makes one request fail with a given `Status`, as RBAC or an admission
/// webhook would.
final class FakeKubernetesAPIServer: Sendable {
    enum PodBehaviour: Sendable, Equatable {
        case ready, neverReady, imagePullBackOff, unschedulable
        /// The kubelet cannot make the container's environment (a Secret or key it names is missing).
        case configError(String)
    }

    /// Who may call: a bearer token, and/or the user (common name) of a client certificate
    /// signed by `clientCA`. At least one must be set.
    struct Access: Sendable {
        var token: String?
        var clientCA: TestCA?
        var clientUser: String?

        static func token(_ token: String) -> Access { Access(token: token) }
    }

    struct RecordedRequest: Sendable, CustomStringConvertible {
        let method: String
        /// Without the query.
        let path: String
        /// Percent-decoded.
        let query: String?
        let authorization: String?
        /// The verified client certificate's subject (`CN=…`), if one was presented.
        let clientCertificate: String?
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
        var annotations: [String: String] = [:]
        /// Order of creation (`created` has whole seconds only): the ReplicaSet deletes newer pods first.
        var sequence = 0
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
        var nextPod = 0
        var failures: [InjectedFailure] = []
        var waiters: [(method: String, path: String, continuation: CheckedContinuation<Void, Never>)] = []
    }

    let port: Int
    let access: Access
    /// The CA its serving certificate chains to: the cluster's CA of a cell's credential.
    let ca: TestCA
    let plainHTTP: Bool
    private let state: Mutex<State>
    private let task: Task<Void, Error>

    var url: String { "\(plainHTTP ? "http" : "https")://127.0.0.1:\(port)" }

    /// The credential a cell pointing at this fake needs: its token and its CA.
    var credential: CellCredential { CellCredential(token: access.token, certificateAuthority: ca.pem) }

    private init(port: Int, access: Access, ca: TestCA, plainHTTP: Bool, task: Task<Void, Error>) {
        self.port = port
        self.access = access
        self.ca = ca
        self.plainHTTP = plainHTTP
        self.state = Mutex(State())
        self.task = task
    }

    /// The request context of the fake's routes: the connection, for its client certificate.
    struct Context: RequestContext {
        var coreContext: CoreRequestContextStorage
        let channel: any Channel
        init(source: ApplicationRequestContextSource) {
            coreContext = .init(source: source)
            channel = source.channel
        }
    }

    /// Starts the fake on 127.0.0.1, on a port the system picks, serving TLS with a
    /// certificate for 127.0.0.1 signed by `ca`; `plainHTTP` serves plain HTTP instead, as
    /// `kubectl proxy` would (to show Kiln refuses to send anything there).
    static func start(ca: TestCA, access: Access, plainHTTP: Bool = false) async throws -> FakeKubernetesAPIServer {
        precondition(access.token != nil || access.clientUser != nil, "the fake needs a token or a client user")
        let (certificate, key) = try ca.issue(commonName: "kube-apiserver", server: true)
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMBytes(Array(certificate.utf8)).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(key.utf8), format: .pem)))
        if let clientCA = access.clientCA {
            // As the API server's --client-ca-file: a certificate, if presented, must chain to it.
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(clientCA.pem.utf8)))
            tls.certificateVerification = .optionalVerification
        } else {
            tls.certificateVerification = .none
        }
        let box = StateBox()
        let router = Router(context: Context.self)
        let handler: @Sendable (Request, Context) async throws -> Response = { request, context in
            var request = request
            let body = try await request.collectBody(upTo: 16 << 20)
            guard let server = box.server else { return Response(status: .serviceUnavailable) }
            let (status, json) = server.handle(
                method: request.method.rawValue, path: request.uri.path, query: request.uri.query?.removingPercentEncoding,
                authorization: request.headers[.authorization], contentType: request.headers[.contentType],
                clientCertificate: await Self.peerSubject(context.channel),
                body: body.readableBytes == 0 ? nil : Data(buffer: body))
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
            server: plainHTTP ? .http1() : try .tls(.http1(), tlsConfiguration: tls),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "fake-kubernetes"),
            onServerRunning: { channel in continuation.yield(channel.localAddress?.port ?? 0) },
            logger: logger)
        let task = Task {
            defer { continuation.finish() }
            try await app.run()
        }
        for await port in ports {
            let server = FakeKubernetesAPIServer(port: port, access: access, ca: ca, plainHTTP: plainHTTP, task: task)
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

    /// The subject of the client certificate the connection presented (TLS verified it
    /// against the client CA already), as `CN=…`.
    static func peerSubject(_ channel: any Channel) async -> String? {
        guard let peer = try? await channel.nioSSL_peerCertificate().get(),
              let certificate = try? Certificate(derEncoded: try peer.toDERBytes()) else { return nil }
        return "\(certificate.subject)"
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

    private func handle(method: String, path: String, query: String?, authorization: String?, contentType: String?, clientCertificate: String?,
                        body: Data?) -> (Int, Data) {
        let (answer, waiting) = state.withLock { s in
            let answer = self.answer(&s, method: method, path: path, query: query, authorization: authorization, contentType: contentType,
                                     clientCertificate: clientCertificate, body: body)
            s.requests[s.requests.count - 1].answered = true
            let waiting = s.waiters.filter { $0.method == method && $0.path == path }.map(\.continuation)
            s.waiters.removeAll { $0.method == method && $0.path == path }
            return (answer, waiting)
        }
        for c in waiting { c.resume() }
        return answer
    }

    private func answer(_ s: inout State, method: String, path: String, query: String?, authorization: String?, contentType: String?,
                        clientCertificate: String?, body: Data?) -> (Int, Data) {
        s.requests.append(RecordedRequest(method: method, path: path, query: query, authorization: authorization,
                                          clientCertificate: clientCertificate, body: body))
        let byToken = access.token.map { authorization == "Bearer \($0)" } ?? false
        let byCertificate = access.clientUser.map { clientCertificate == "CN=\($0)" } ?? false
        guard byToken || byCertificate else {
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
        case ("DELETE", 6, _) where parts.starts(with: ["api", "v1", "namespaces"]) && parts[4] == "secrets":
            return Self.deleteSecret(&s, namespace: parts[3], name: parts[5])
        case ("GET", 5, _) where parts.starts(with: ["api", "v1", "namespaces"]) && parts[4] == "pods":
            return Self.listPods(s, namespace: parts[3], query: query)
        case ("PATCH", 6, _) where parts.starts(with: ["api", "v1", "namespaces"]) && parts[4] == "pods":
            return Self.patchPod(&s, namespace: parts[3], name: parts[5], contentType: contentType, object)
        case ("PUT", 8, _) where parts.starts(with: ["apis", "apps", "v1", "namespaces"]) && parts[5] == "deployments" && parts[7] == "scale":
            return Self.scaleDeployment(&s, namespace: parts[4], name: parts[6], object)
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
