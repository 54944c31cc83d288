import Foundation
import KilnCore

/// `autoscaling/v1` `Scale`: the body of `PUT …/deployments/{name}/scale`, the Deployment's
/// scale subresource (only `spec.replicas` is read; without a `resourceVersion` the update is
/// unconditional).
struct KubernetesScale: Codable, Sendable {
    struct Spec: Codable, Sendable { var replicas: Int? }
    struct Status: Codable, Sendable { var replicas: Int? }
    var apiVersion = "autoscaling/v1"
    var kind = "Scale"
    var metadata: KubernetesObjectMeta
    var spec: Spec
    var status: Status?
}

/// A JSON merge patch of a pod's annotations (`PATCH /api/v1/namespaces/{ns}/pods/{name}`).
struct KubernetesAnnotationsPatch: Codable, Sendable {
    struct Meta: Codable, Sendable { var annotations: [String: String] }
    var metadata: Meta
}

/// Scaling a version: its Deployment's replica count through the scale subresource.
///
/// Out: `PUT …/deployments/{app}-v{n}/scale` with the new count; the ReplicaSet makes the pods,
/// and the new ones (not among the record's) are returned once they have an IP.
/// In: Kiln cannot pick the pods a ReplicaSet deletes, but it can steer the choice: every pod
/// that should go gets the annotation `controller.kubernetes.io/pod-deletion-cost: "-1000"`
/// (a merge PATCH; beta and on by default since Kubernetes 1.22), then the count is lowered.
/// The ReplicaSet deletes, in order, unscheduled, pending, not-ready pods, then those of lowest
/// deletion cost: since Kiln stops unhealthy instances first, the two agree unless a pod's
/// readiness changed in between; `scaleIn` then returns the pods that really remain. The Role
/// needs `update` on `deployments/scale` and `patch` on `pods` (docs/kubernetes.md).
extension KubernetesDeployer {
    static let deletionCostAnnotation = "controller.kubernetes.io/pod-deletion-cost"

    public func scaleOut(_ spec: VersionSpec, in cell: Cell, running: [Instance], adding count: Int) async throws -> [Instance] {
        let ns = try namespace(of: spec.app, in: cell)
        return try await withConnection(to: cell) { api in
            let known = Set(running.map(\.id))
            try await setReplicas(running.count + count, of: spec, namespace: ns, in: api)
            do {
                let new = try await waitForScale(of: spec, namespace: ns, in: api, "\(count) new pod\(count == 1 ? "" : "s") with an address") { pods in
                    let new = pods.filter { !known.contains($0.name) && $0.status?.podIP?.isEmpty == false }.sorted { $0.name < $1.name }
                    // Every placed pod the record does not list: a replacement the ReplicaSet made
                    // for a pod that died is recorded too, so the record lists what runs.
                    return new.count >= count ? new : nil
                }
                return new.compactMap { Self.instance($0, port: spec.settings.port, in: api.cell) }
            } catch {
                // Back to the count the record holds; the pods it does not list go first.
                let deployer = self
                await Task {
                    _ = try? await deployer.keepOnly(running, of: spec, namespace: ns, in: api)
                }.value
                throw error
            }
        }
    }

    public func scaleIn(_ spec: VersionSpec, in cell: Cell, keeping: [Instance]) async throws -> [Instance] {
        let ns = try namespace(of: spec.app, in: cell)
        return try await withConnection(to: cell) { api in try await keepOnly(keeping, of: spec, namespace: ns, in: api) }
    }

    /// Marks every pod of the version not in `keeping` for deletion, lowers the count to
    /// `keeping.count`, and waits until that many pods remain (terminating ones do not count).
    func keepOnly(_ keeping: [Instance], of spec: VersionSpec, namespace ns: String, in api: Connection) async throws -> [Instance] {
        let kept = Set(keeping.map(\.id))
        let selector = [(Self.appLabel, spec.app), (Self.versionLabel, String(spec.version))]
        for pod in try await listPods(namespace: ns, selector: selector, in: api) where !pod.isTerminating && !kept.contains(pod.name) {
            let operation = "mark pod \(pod.name) in namespace \(ns) to be deleted first"
            let patch = KubernetesAnnotationsPatch(metadata: .init(annotations: [Self.deletionCostAnnotation: "-1000"]))
            let reply = try await send(.PATCH, "/api/v1/namespaces/\(ns)/pods/\(escape(pod.name))", body: patch, in: api, operation: operation)
            // 404: gone meanwhile, which is what was wanted.
            guard [200, 404].contains(reply.status) else { throw failure(reply, in: api, operation: operation) }
        }
        try await setReplicas(keeping.count, of: spec, namespace: ns, in: api)
        let remaining = try await waitForScale(of: spec, namespace: ns, in: api, "the count to fall to \(keeping.count)") { pods in
            pods.count == keeping.count ? pods : nil
        }
        let now = Date()
        return remaining.compactMap { pod in
            guard var instance = Self.instance(pod, port: spec.settings.port, in: api.cell) else { return nil }
            instance.healthy = pod.isReady
            instance.checkedAt = now
            instance.detail = pod.isReady ? "Ready" : Self.notReadyDetail(pod, healthPath: spec.settings.healthPath)
            return instance
        }
    }

    func setReplicas(_ n: Int, of spec: VersionSpec, namespace ns: String, in api: Connection) async throws {
        let name = Self.deploymentName(app: spec.app, version: spec.version)
        let operation = "scale Deployment \(name) in namespace \(ns) to \(n)"
        let body = KubernetesScale(metadata: .init(name: name, namespace: ns), spec: .init(replicas: n))
        let reply = try await send(.PUT, "/apis/apps/v1/namespaces/\(ns)/deployments/\(name)/scale", body: body, in: api, operation: operation)
        guard reply.status == 200 else { throw failure(reply, in: api, operation: operation) }
        logger.info("scaled Deployment \(name) to \(n)", metadata: ["cell": "\(api.cell.name)", "app": "\(spec.app)"])
    }

    /// Lists the version's pods (not terminating) until `done` returns the ones wanted, for at
    /// most `startTimeout`.
    func waitForScale(of spec: VersionSpec, namespace ns: String, in api: Connection, _ what: String,
                      _ done: ([KubernetesPod]) -> [KubernetesPod]?) async throws -> [KubernetesPod] {
        let selector = [(Self.appLabel, spec.app), (Self.versionLabel, String(spec.version))]
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: configuration.startTimeout)
        while true {
            let pods = try await listPods(namespace: ns, selector: selector, in: api).filter { !$0.isTerminating }
            if let wanted = done(pods) { return wanted }
            if clock.now >= deadline {
                let waiting = pods.filter { $0.status?.podIP?.isEmpty != false }.map { "pod \($0.name): \(Self.notReadyDetail($0, healthPath: nil))" }
                throw KilnError.unavailable("cell \(api.cell.name): version \(spec.version) of \(spec.app): waited \(configuration.startTimeout) for \(what) of Deployment \(Self.deploymentName(app: spec.app, version: spec.version)); \(pods.count) pod\(pods.count == 1 ? "" : "s") now\(waiting.isEmpty ? "" : " (\(waiting.prefix(4).joined(separator: "; ")))")")
            }
            try await Task.sleep(for: configuration.pollInterval)
        }
    }
}
