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
