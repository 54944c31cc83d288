import AsyncHTTPClient
import DockerAPI
import Foundation
import KilnCore
import Logging
import NIOCore
import NIOFoundationCompat
import Plugins

/// Runs an app's versions in a Kubernetes cluster (a cell with backend `kubernetes`, its
/// `endpoint` the API server's URL) through the Kubernetes REST API. The objects it makes
/// and the calls it uses are in docs/kubernetes.md:
///
/// - one namespace per app, `kiln-{app}`, made when first needed and never deleted;
/// - one Service per app, `{app}`, selecting `kiln.dev/app: {app}`, made when first needed and
///   left as it is afterwards (Kiln's load balancer sends to pod addresses, not to it);
/// - one Deployment per version, `{app}-v{n}`, whose pods carry `kiln.dev/app` and
///   `kiln.dev/version` and a readiness probe on the app's health path;
/// - with registry credentials, one Secret `kiln-registry` of type
///   `kubernetes.io/dockerconfigjson` per namespace (written again on every start, so a
///   rotated credential reaches it), named in every pod's `imagePullSecrets`: the kubelet
///   pulls with it from the registry's token service. Give a deployer's pull-only credential;
/// - with secret environment variables (`DeploySettings.secretEnv`), one Secret `{app}-v{n}-env`
///   per version holding their values, referenced by the pods' `env` (`secretKeyRef`), and
///   deleted with the version.
///
/// Every call reaches the API server over `https` only, as the cell's own credential
/// (`PipelineSecrets.cellCredential`: a bearer token, or a client certificate and key), and
/// trusts only the cluster's CA from that credential. A cell without a credential, or with
/// an `http://` endpoint, is refused before anything is sent.
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

    public let configuration: Configuration
    /// Where each cell's credential comes from (the scheduler's secret store); nil: none
    /// can be read here, and every call is refused saying so.
    let secrets: (any PipelineSecrets)?
    /// What the kubelet pulls images with (a `deployer` machine's pull-only credential).
    let registryCredentials: RegistryCredentials?
    let clients = CellClients(make: KubernetesDeployer.makeClient)
    let logger: Logger

    /// - Parameters:
    ///   - secrets: gives each cell's `CellCredential` (`cellCredential(_:)`), read again for
    ///     every call, so a credential set with `kiln cell credential set` is used from the
    ///     next call on.
    ///   - registryCredentials: put into each app namespace's pull secret `kiln-registry`;
    ///     nil: pods pull anonymously.
    public init(secrets: (any PipelineSecrets)?, registryCredentials: RegistryCredentials? = nil, configuration: Configuration = Configuration(),
                logger: Logger = Logger(label: "kiln.deploy.kubernetes")) {
        self.secrets = secrets
        self.registryCredentials = registryCredentials
        self.configuration = configuration
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
        return try await withConnection(to: cell) { api in try await start(spec, namespace: ns, in: api) }
    }

    public func check(_ instance: Instance, of spec: VersionSpec, in cell: Cell) async -> (healthy: Bool, detail: String) {
        do {
            let ns = try namespace(of: spec.app, in: cell)
            return try await withConnection(to: cell) { api in await check(instance, of: spec, namespace: ns, in: api) }
        } catch {
            return (false, (error as? KilnError)?.message ?? "\(error)")
        }
    }

    public func stop(_ instances: [Instance], of spec: VersionSpec, in cell: Cell) async throws {
        // Pods belong to the version's Deployment: deleting one alone would have it replaced.
        let ns = try namespace(of: spec.app, in: cell)
        try await withConnection(to: cell) { api in
            try await deleteDeployment(Self.deploymentName(app: spec.app, version: spec.version), namespace: ns, in: api)
            if !(spec.settings.secretEnv ?? []).isEmpty { try await deleteEnvSecret(of: spec, namespace: ns, in: api) }
        }
    }

    public func instances(of app: String, in cell: Cell) async throws -> [Int: [Instance]] {
        let ns = try namespace(of: app, in: cell)
        let pods = try await withConnection(to: cell) { api in try await listPods(namespace: ns, selector: [(Self.appLabel, app)], in: api) }
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

    func start(_ spec: VersionSpec, namespace ns: String, in api: Connection) async throws -> [Instance] {
        let name = Self.deploymentName(app: spec.app, version: spec.version)
        try await ensureNamespace(ns, app: spec.app, in: api)
        try await ensurePullSecret(for: spec, namespace: ns, in: api)
        try await ensureService(spec, namespace: ns, in: api)
        let secretEnv = !(spec.settings.secretEnv ?? []).isEmpty
        // Before the Deployment, so its pods find their variables when they start.
        if secretEnv { try await ensureEnvSecret(for: spec, namespace: ns, in: api) }
        var placed = false
        do {
            try await createDeployment(spec, namespace: ns, in: api)
            placed = true
            return try await waitForPods(spec, namespace: ns, in: api)
        } catch {
            // A clash (the version exists from another image) leaves the running one alone.
            if !placed, (error as? KilnError)?.httpStatus == 409 { throw error }
            // Remove what was started for this version. Run apart from this task, so that a
            // cancelled start (a pipeline step's time limit) still cleans up; awaited, so
            // nothing is left running behind the caller.
            let deployer = self
            await Task {
                do {
                    if placed { try await deployer.deleteDeployment(name, namespace: ns, in: api) }
                    if secretEnv { try await deployer.deleteEnvSecret(of: spec, namespace: ns, in: api) }
                } catch {
                    deployer.logger.warning("could not remove what a failed start of \(name) made: \(error)",
                                            metadata: ["cell": "\(api.cell.name)", "app": "\(spec.app)"])
                }
            }.value
            throw error
        }
    }

    func check(_ instance: Instance, of spec: VersionSpec, namespace ns: String, in api: Connection) async -> (healthy: Bool, detail: String) {
        let operation = "read pod \(instance.id) in namespace \(ns)"
        do {
            let reply = try await send(.GET, "/api/v1/namespaces/\(ns)/pods/\(escape(instance.id))", in: api, operation: operation)
            if reply.status == 404 { return (false, "pod gone") }
            let pod: KubernetesPod = try decode(reply, expecting: [200], in: api, operation: operation)
            if pod.isTerminating { return (false, "pod is terminating") }
            if pod.isReady { return (true, "Ready (readiness probe on \(spec.settings.healthPath) passes)") }
            return (false, Self.notReadyDetail(pod, healthPath: spec.settings.healthPath))
        } catch {
            return (false, (error as? KilnError)?.message ?? "\(error)")
        }
    }
}
