import Foundation

// The fake Kubernetes API server's pods of a Deployment, and scaling them: the scale
// subresource and a merge patch of a pod's annotations (see FakeKubernetesAPIServer's doc
// comment for what is real and what is not).
extension FakeKubernetesAPIServer {
    /// Makes `count` pods from a Deployment's pod template, as its ReplicaSet would (at once
    /// here), each doing what its image's behaviour says.
    static func addPods(_ s: inout State, namespace ns: String, deployment name: String, template: [String: Any], count: Int) {
        let podSpec = template["spec"] as? [String: Any] ?? [:]
        let templateLabels = (template["metadata"] as? [String: Any])?["labels"] as? [String: String] ?? [:]
        guard let first = (podSpec["containers"] as? [[String: Any]])?.first else { return }
        // The ReplicaSet's name carries a hash of the template, the same for every pod of it.
        let hash = templateHash(json(template))
        let image = first["image"] as? String ?? ""
        var behaviour = canPull(s, image: image, namespace: ns, podSpec: podSpec) ? s.behaviours[image] ?? .ready : .imagePullBackOff
        if behaviour != .unschedulable, let missing = missingEnvSource(s, namespace: ns, container: first) { behaviour = .configError(missing) }
        for _ in 0..<max(0, count) {
            var ip: String?
            if behaviour != .unschedulable {
                ip = "10.244.\(s.nextIP / 250).\(s.nextIP % 250 + 2)"
                s.nextIP += 1
            }
            var labels = templateLabels
            labels["pod-template-hash"] = hash
            s.nextPod += 1
            s.pods.append(Pod(
                name: "\(name)-\(hash)-\(randomName(5))", namespace: ns, labels: labels, deployment: name,
                replicaSet: "\(name)-\(hash)", ip: ip, image: image, containerName: first["name"] as? String ?? "",
                spec: json(podSpec), behaviour: behaviour, uid: UUID().uuidString.lowercased(), created: now(), sequence: s.nextPod))
        }
    }

    /// `PUT /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale` with an `autoscaling/v1`
    /// `Scale`: the Deployment's `spec.replicas` changes, and its pods are made or deleted at
    /// once, deleted in the ReplicaSet's order: unscheduled, then pending, then not ready, then
    /// lowest `controller.kubernetes.io/pod-deletion-cost`, then newest.
    static func scaleDeployment(_ s: inout State, namespace ns: String, name: String, _ object: [String: Any]?) -> (Int, Data) {
        guard let o = object, o["kind"] as? String == "Scale", o["apiVersion"] as? String == "autoscaling/v1" else {
            return status(400, "BadRequest", "Scale in version \"v1\" cannot be handled as a Scale: the object's kind or apiVersion is wrong")
        }
        let meta = o["metadata"] as? [String: Any] ?? [:]
        if let given = meta["name"] as? String, given != name {
            return status(400, "BadRequest", "the name of the object (\(given)) does not match the name on the URL (\(name))")
        }
        if let mismatch = namespaceMismatch(o, ns) { return mismatch }
        guard let stored = s.deployments["\(ns)/\(name)"], var deployment = try? JSONSerialization.jsonObject(with: stored) as? [String: Any] else {
            return notFound("deployments", name, group: "apps")
        }
        let replicas = (o["spec"] as? [String: Any])?["replicas"] as? Int ?? 0
        guard replicas >= 0 else {
            return status(422, "Invalid", "Scale.autoscaling \"\(name)\" is invalid: spec.replicas: Invalid value: \(replicas): must be greater than or equal to 0",
                          details: ["name": name, "group": "autoscaling", "kind": "Scale"])
        }
        var spec = deployment["spec"] as? [String: Any] ?? [:]
        spec["replicas"] = replicas
        deployment["spec"] = spec
        var dmeta = deployment["metadata"] as? [String: Any] ?? [:]
        let generation = (dmeta["generation"] as? Int ?? 1) + 1
        dmeta["generation"] = generation
        deployment["metadata"] = dmeta
        deployment["status"] = ["observedGeneration": generation, "replicas": replicas]
        s.deployments["\(ns)/\(name)"] = json(deployment)

        let current = s.pods.filter { $0.namespace == ns && $0.deployment == name }
        if current.count > replicas {
            let doomed = Set(current.sorted(by: deletedBefore).prefix(current.count - replicas).map(\.uid))
            s.pods.removeAll { doomed.contains($0.uid) }
        } else if current.count < replicas {
            addPods(&s, namespace: ns, deployment: name, template: spec["template"] as? [String: Any] ?? [:], count: replicas - current.count)
        }
        let selector = ((spec["selector"] as? [String: Any])?["matchLabels"] as? [String: String] ?? [:]).sorted { $0.key < $1.key }
            .map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        return (200, json(["kind": "Scale", "apiVersion": "autoscaling/v1",
                           "metadata": ["name": name, "namespace": ns, "resourceVersion": String(Int.random(in: 1000...999_999))],
                           "spec": ["replicas": replicas], "status": ["replicas": replicas, "selector": selector]]))
    }

    /// The ReplicaSet controller's ranking of pods to delete when it scales down (a subset:
    /// Kubernetes also ranks pods doubled up on a node, time ready and restarts).
    static func deletedBefore(_ a: Pod, _ b: Pod) -> Bool {
        func rank(_ p: Pod) -> (Int, Int, Int, Int, Int) {
            let assigned = p.behaviour == .unschedulable ? 0 : 1
            let running = p.behaviour == .ready || p.behaviour == .neverReady ? 1 : 0
            let ready = p.behaviour == .ready ? 1 : 0
            let cost = p.annotations["controller.kubernetes.io/pod-deletion-cost"].flatMap { Int($0) } ?? 0
            return (assigned, running, ready, cost, -p.sequence)
        }
        return rank(a) < rank(b)
    }

    /// `PATCH /api/v1/namespaces/{ns}/pods/{name}`: a merge patch (RFC 7386) of the pod's
    /// annotations only, as the real API takes one (`application/merge-patch+json`; a plain
    /// `application/json` body is refused with 415, as the real server refuses it).
    static func patchPod(_ s: inout State, namespace ns: String, name: String, contentType: String?, _ object: [String: Any]?) -> (Int, Data) {
        let patchTypes = ["application/merge-patch+json", "application/strategic-merge-patch+json"]
        guard let type = contentType?.split(separator: ";").first.map({ $0.trimmingCharacters(in: .whitespaces) }), patchTypes.contains(type) else {
            return status(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json")
        }
        guard let i = s.pods.firstIndex(where: { $0.namespace == ns && $0.name == name }) else { return notFound("pods", name) }
        guard let o = object, Set(o.keys).isSubset(of: ["metadata"]), let meta = o["metadata"] as? [String: Any], Set(meta.keys).isSubset(of: ["annotations"]) else {
            // The real server patches any field it allows to change; the fake only annotations.
            return status(422, "Invalid", "the fake Kubernetes API server patches metadata.annotations only")
        }
        for (key, value) in meta["annotations"] as? [String: Any] ?? [:] {
            if value is NSNull {
                s.pods[i].annotations[key] = nil
            } else if let text = value as? String {
                s.pods[i].annotations[key] = text
            } else {
                return status(400, "BadRequest", "metadata.annotations: the value of \(key) must be a string")
            }
        }
        return (200, json(podObject(s.pods[i], withKind: true)))
    }

    /// A short stable name from a template (the real one is a hash of it too).
    static func templateHash(_ data: Data) -> String {
        let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
        var h: UInt64 = 1469598103934665603
        for b in data { h = (h ^ UInt64(b)) &* 1099511628211 }
        return String((0..<10).map { _ in
            defer { h /= UInt64(alphabet.count) }
            return alphabet[Int(h % UInt64(alphabet.count))]
        })
    }
}
