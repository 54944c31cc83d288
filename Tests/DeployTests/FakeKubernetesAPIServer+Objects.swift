import Foundation

// The objects of the fake Kubernetes API server: how it stores, checks and answers them, in
// the real API's shapes (see FakeKubernetesAPIServer's doc comment for what is real and what
// is not).
extension FakeKubernetesAPIServer {
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
        addPods(&s, namespace: ns, deployment: name, template: template, count: replicas)
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
        case .configError(let message):
            status["phase"] = "Pending"
            status["conditions"] = [condition("Initialized", true), condition("Ready", false, reason: "ContainersNotReady", message: unready),
                                    condition("ContainersReady", false, reason: "ContainersNotReady", message: unready), condition("PodScheduled", true)]
            container["ready"] = false
            container["started"] = false
            container["state"] = ["waiting": ["reason": "CreateContainerConfigError", "message": message]]
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
                "name": pod.name, "namespace": pod.namespace, "labels": pod.labels, "annotations": pod.annotations, "uid": pod.uid,
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
