import Foundation

// Secrets of the fake Kubernetes API server, and its stand-in for the kubelet's pull with them
// (see FakeKubernetesAPIServer's doc comment for what is real and what is not).
extension FakeKubernetesAPIServer {
    /// POST (name nil: from the body; 409 when it exists) or PUT (404 when it does not).
    static func saveSecret(_ s: inout State, namespace ns: String, name: String?, _ object: [String: Any]?) -> (Int, Data) {
        guard var o = object, o["kind"] as? String == "Secret", o["apiVersion"] as? String == "v1" else {
            return status(400, "BadRequest", "Secret in version \"v1\" cannot be handled as a Secret: the object's kind or apiVersion is wrong")
        }
        if let mismatch = namespaceMismatch(o, ns) { return mismatch }
        guard s.namespaces[ns] != nil else { return notFound("namespaces", ns) }
        let given = ((o["metadata"] as? [String: Any])?["name"] as? String) ?? ""
        guard isDNSSubdomain(given) else { return invalid("Secret", given, "metadata.name: Required value: name or generateName is required") }
        if let name, name != given { return status(400, "BadRequest", "the name of the object (\(given)) does not match the name on the URL (\(name))") }
        let data = o["data"] as? [String: String] ?? [:]
        for (key, value) in data {
            guard !key.isEmpty, key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }) else {
                return invalid("Secret", given, "data[\(key)]: Invalid value: \"\(key)\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'")
            }
            guard Data(base64Encoded: value) != nil else {
                return status(400, "BadRequest", "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data")
            }
        }
        if o["type"] as? String == "kubernetes.io/dockerconfigjson" {
            guard let encoded = data[".dockerconfigjson"], let raw = Data(base64Encoded: encoded),
                  let config = try? JSONSerialization.jsonObject(with: raw) as? [String: Any], config["auths"] is [String: Any] else {
                return invalid("Secret", given, "data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": invalid character looking for beginning of value")
            }
        }
        let key = "\(ns)/\(given)"
        switch (name, s.secrets[key]) {
        case (nil, .some): return status(409, "AlreadyExists", "secrets \"\(given)\" already exists", details: ["name": given, "kind": "secrets"])
        case (.some, nil): return notFound("secrets", given)
        default: break
        }
        var meta = stamped(o["metadata"])
        meta["namespace"] = ns
        o["metadata"] = meta
        s.secrets[key] = json(o)
        return (name == nil ? 201 : 200, s.secrets[key]!)
    }

    static func deleteSecret(_ s: inout State, namespace ns: String, name: String) -> (Int, Data) {
        guard s.secrets.removeValue(forKey: "\(ns)/\(name)") != nil else { return notFound("secrets", name) }
        return (200, json(["kind": "Status", "apiVersion": "v1", "metadata": [String: Any](), "status": "Success",
                           "details": ["name": name, "kind": "secrets"]]))
    }

    /// What the kubelet would say when the container's `env` names a Secret or a key of one
    /// that does not exist in the namespace; nil when every reference resolves.
    static func missingEnvSource(_ s: State, namespace ns: String, container: [String: Any]) -> String? {
        for variable in container["env"] as? [[String: Any]] ?? [] {
            guard let ref = (variable["valueFrom"] as? [String: Any])?["secretKeyRef"] as? [String: Any] else { continue }
            let name = ref["name"] as? String ?? "", key = ref["key"] as? String ?? ""
            guard let stored = s.secrets["\(ns)/\(name)"], let secret = try? JSONSerialization.jsonObject(with: stored) as? [String: Any] else {
                return "secret \"\(name)\" not found"
            }
            if (secret["data"] as? [String: String])?[key] == nil { return "couldn't find key \(key) in Secret \(ns)/\(name)" }
        }
        return nil
    }

    /// The decoded value of `key` in the Secret `name` of `ns`, as a pod would see it.
    func secretValue(_ name: String, key: String, in ns: String) -> String? {
        guard let encoded = (secret(name, in: ns)?["data"] as? [String: String])?[key], let raw = Data(base64Encoded: encoded) else { return nil }
        return String(decoding: raw, as: UTF8.self)
    }

    /// Whether the kubelet could pull `image`: its registry needs no credentials here, or one
    /// of the pod's image pull secrets holds exactly the ones it needs.
    static func canPull(_ s: State, image: String, namespace ns: String, podSpec: [String: Any]) -> Bool {
        guard let slash = image.firstIndex(of: "/"), let needed = s.pullCredentials[String(image[..<slash])] else { return true }
        let host = String(image[..<slash])
        let names = (podSpec["imagePullSecrets"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        return names.contains { name in
            guard let stored = s.secrets["\(ns)/\(name)"], let secret = try? JSONSerialization.jsonObject(with: stored) as? [String: Any],
                  let encoded = (secret["data"] as? [String: String])?[".dockerconfigjson"], let raw = Data(base64Encoded: encoded),
                  let config = try? JSONSerialization.jsonObject(with: raw) as? [String: Any],
                  let entry = (config["auths"] as? [String: Any])?[host] as? [String: Any],
                  let auth = (entry["auth"] as? String).flatMap({ Data(base64Encoded: $0) }) else { return false }
            return String(decoding: auth, as: UTF8.self) == needed
        }
    }
}
