import AsyncHTTPClient
import DockerAPI
import Foundation
import KilnCore
import Logging
import NIOCore
import NIOFoundationCompat

extension KubernetesDeployer {
    // MARK: steps of start

    func ensureNamespace(_ ns: String, app: String, in api: Connection) async throws {
        let read = "read namespace \(ns)"
        let existing = try await send(.GET, "/api/v1/namespaces/\(ns)", in: api, operation: read)
        switch existing.status {
        case 200: return
        case 404: break
        default: throw failure(existing, in: api, operation: read)
        }
        let create = "create namespace \(ns)"
        let body = KubernetesNamespace(metadata: .init(name: ns, labels: ["app.kubernetes.io/managed-by": "kiln", Self.appLabel: app]))
        let reply = try await send(.POST, "/api/v1/namespaces", body: body, in: api, operation: create)
        // 409: made meanwhile by another start (another cell on the same cluster, or a re-run).
        guard [200, 201, 202, 409].contains(reply.status) else { throw failure(reply, in: api, operation: create) }
    }

    func ensureService(_ spec: VersionSpec, namespace ns: String, in api: Connection) async throws {
        let path = "/api/v1/namespaces/\(ns)/services"
        let read = "read Service \(spec.app) in namespace \(ns)"
        let existing = try await send(.GET, "\(path)/\(spec.app)", in: api, operation: read)
        switch existing.status {
        case 200: return
        case 404: break
        default: throw failure(existing, in: api, operation: read)
        }
        let create = "create Service \(spec.app) in namespace \(ns)"
        let service = KubernetesService(
            metadata: .init(name: spec.app, namespace: ns, labels: ["app.kubernetes.io/name": spec.app, Self.appLabel: spec.app]),
            spec: .init(selector: [Self.appLabel: spec.app],
                        ports: [.init(name: "http", port: spec.settings.port, targetPort: spec.settings.port, protocol: "TCP")]))
        let reply = try await send(.POST, path, body: service, in: api, operation: create)
        guard [200, 201, 202, 409].contains(reply.status) else { throw failure(reply, in: api, operation: create) }
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
            env: Self.environment(of: spec),
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
                template: .init(metadata: .init(labels: labels), spec: .init(
                    containers: [container],
                    imagePullSecrets: registryCredentials != nil && Self.registryHost(of: spec.image) != nil
                        ? [.init(name: Self.pullSecretName)] : nil))))
    }

    func createDeployment(_ spec: VersionSpec, namespace ns: String, in api: Connection) async throws {
        let name = Self.deploymentName(app: spec.app, version: spec.version)
        let path = "/apis/apps/v1/namespaces/\(ns)/deployments"
        let create = "create Deployment \(name) in namespace \(ns)"
        let reply = try await send(.POST, path, body: deployment(for: spec, namespace: ns), in: api, operation: create)
        switch reply.status {
        case 200, 201, 202:
            logger.info("created Deployment \(name)", metadata: ["cell": "\(api.cell.name)", "app": "\(spec.app)", "image": "\(spec.image)"])
        case 409:
            // Started before (a re-run): fine if it is the same image, else a clash.
            let read = "read Deployment \(name) in namespace \(ns)"
            let existing: KubernetesDeployment = try decode(try await send(.GET, "\(path)/\(name)", in: api, operation: read),
                                                            expecting: [200], in: api, operation: read)
            let image = existing.spec.template.spec.containers.first?.image ?? ""
            guard image == spec.image else {
                throw KilnError.conflict("cell \(api.cell.name): Deployment \(name) in namespace \(ns) already exists with image \(image), not \(spec.image); version \(spec.version) of \(spec.app) was started before from another image")
            }
            logger.info("Deployment \(name) already exists: taken as started", metadata: ["cell": "\(api.cell.name)", "app": "\(spec.app)"])
        default:
            throw failure(reply, in: api, operation: create)
        }
    }

    /// Lists the version's pods until `replicas` of them have an IP address.
    func waitForPods(_ spec: VersionSpec, namespace ns: String, in api: Connection) async throws -> [Instance] {
        let name = Self.deploymentName(app: spec.app, version: spec.version)
        let selector = [(Self.appLabel, spec.app), (Self.versionLabel, String(spec.version))]
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: configuration.startTimeout)
        while true {
            let pods = try await listPods(namespace: ns, selector: selector, in: api).filter { !$0.isTerminating }
            let placed = pods.filter { $0.status?.podIP?.isEmpty == false }.sorted { $0.name < $1.name }
            if placed.count >= spec.settings.replicas {
                return placed.compactMap { Self.instance($0, port: spec.settings.port, in: api.cell) }
            }
            if clock.now >= deadline {
                let waiting = pods.filter { $0.status?.podIP?.isEmpty != false }
                let why = waiting.isEmpty
                    ? "no pods were made for it: a ResourceQuota or an admission policy may refuse them (kubectl -n \(ns) describe replicaset -l \(Self.versionLabel)=\(spec.version))"
                    : waiting.map { "pod \($0.name): \(Self.notReadyDetail($0, healthPath: nil))" }.joined(separator: "; ")
                throw KilnError.unavailable("cell \(api.cell.name): version \(spec.version) of \(spec.app): \(placed.count) of \(spec.settings.replicas) pods of Deployment \(name) were placed on a node within \(configuration.startTimeout): \(why); the Deployment is removed")
            }
            try await Task.sleep(for: configuration.pollInterval)
        }
    }

    func deleteDeployment(_ name: String, namespace ns: String, in api: Connection) async throws {
        let operation = "delete Deployment \(name) in namespace \(ns)"
        // Background: the garbage collector deletes its ReplicaSet and pods after the answer.
        let reply = try await send(.DELETE, "/apis/apps/v1/namespaces/\(ns)/deployments/\(name)",
                                   body: KubernetesDeleteOptions(propagationPolicy: "Background"), in: api, operation: operation)
        guard [200, 202, 404].contains(reply.status) else { throw failure(reply, in: api, operation: operation) }
    }

    func listPods(namespace ns: String, selector: [(String, String)], in api: Connection) async throws -> [KubernetesPod] {
        let operation = "list pods in namespace \(ns)"
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~/,"))
        let text = selector.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        let query = "labelSelector=" + (text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text)
        let reply = try await send(.GET, "/api/v1/namespaces/\(ns)/pods", query: query, in: api, operation: operation)
        let list: KubernetesPodList = try decode(reply, expecting: [200], in: api, operation: operation)
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
}
