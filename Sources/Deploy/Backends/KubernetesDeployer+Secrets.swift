import DockerAPI
import Foundation
import KilnCore

// The Secrets the Kubernetes backend writes: the namespace's image pull secret, and each
// version's secret environment variables.
extension KubernetesDeployer {
    /// The pull secret every app namespace gets when this deployer has registry credentials.
    static let pullSecretName = "kiln-registry"

    /// The registry host of an image reference (`127.0.0.1:5000/demo@sha256:…` →
    /// `127.0.0.1:5000`), or nil when it names none (Docker Hub's short names).
    static func registryHost(of image: String) -> String? {
        guard let slash = image.firstIndex(of: "/") else { return nil }
        let host = String(image[..<slash])
        return host.contains(".") || host.contains(":") || host == "localhost" ? host : nil
    }

    /// The `.dockerconfigjson` of the pull secret: `{"auths":{host:{username,password,auth}}}`.
    static func dockerConfigJSON(host: String, credentials: RegistryCredentials) -> Data {
        struct Entry: Encodable { let username: String; let password: String; let auth: String }
        struct Config: Encodable { let auths: [String: Entry] }
        let auth = Data("\(credentials.user):\(credentials.password)".utf8).base64EncodedString()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(Config(auths: [host: Entry(username: credentials.user, password: credentials.password, auth: auth)]))) ?? Data()
    }

    /// Writes the namespace's pull secret (create, or replace when it exists).
    func ensurePullSecret(for spec: VersionSpec, namespace ns: String, in api: Connection) async throws {
        guard let registryCredentials, let host = Self.registryHost(of: spec.image) else { return }
        try await save(KubernetesSecret(
            metadata: .init(name: Self.pullSecretName, namespace: ns, labels: ["app.kubernetes.io/managed-by": "kiln"]),
            type: "kubernetes.io/dockerconfigjson",
            data: [".dockerconfigjson": Self.dockerConfigJSON(host: host, credentials: registryCredentials).base64EncodedString()]),
            namespace: ns, in: api)
    }

    /// The Secret holding a version's secret environment variables: `{app}-v{n}-env`.
    static func envSecretName(app: String, version: Int) -> String { "\(deploymentName(app: app, version: version))-env" }

    /// Writes the version's Secret with the values of `settings.secretEnv` (create, or
    /// replace: a re-run brings the values as they are now). Throws, naming the variable and
    /// never its value, when the deploy step did not resolve one.
    func ensureEnvSecret(for spec: VersionSpec, namespace ns: String, in api: Connection) async throws {
        var data: [String: String] = [:]
        for name in spec.settings.secretEnv ?? [] {
            guard let value = spec.secretValues[name] else {
                throw KilnError.internalError("cell \(api.cell.name): version \(spec.version) of \(spec.app) names secret \(name) in secretEnv, but no value was looked up for it")
            }
            data[name] = Data(value.utf8).base64EncodedString()
        }
        var labels = Self.labels(app: spec.app, version: spec.version)
        labels["app.kubernetes.io/managed-by"] = "kiln"
        try await save(KubernetesSecret(
            metadata: .init(name: Self.envSecretName(app: spec.app, version: spec.version), namespace: ns, labels: labels),
            type: "Opaque", data: data),
            namespace: ns, in: api)
    }

    func deleteEnvSecret(of spec: VersionSpec, namespace ns: String, in api: Connection) async throws {
        let name = Self.envSecretName(app: spec.app, version: spec.version)
        let operation = "delete Secret \(name) in namespace \(ns)"
        let reply = try await send(.DELETE, "/api/v1/namespaces/\(ns)/secrets/\(name)", in: api, operation: operation)
        guard [200, 202, 404].contains(reply.status) else { throw failure(reply, in: api, operation: operation) }
    }

    /// The container's `env`: the plain variables with their values, the secret ones as
    /// references into the version's Secret; sorted by name; nil when there are none.
    static func environment(of spec: VersionSpec) -> [KubernetesEnvVar]? {
        let secretName = envSecretName(app: spec.app, version: spec.version)
        var env = spec.settings.env.map { KubernetesEnvVar(name: $0.key, value: $0.value) }
        for name in spec.settings.secretEnv ?? [] where spec.settings.env[name] == nil {
            env.append(KubernetesEnvVar(name: name, valueFrom: .init(secretKeyRef: .init(name: secretName, key: name))))
        }
        return env.isEmpty ? nil : env.sorted { $0.name < $1.name }
    }

    /// Creates `secret`, or replaces it when it exists.
    func save(_ secret: KubernetesSecret, namespace ns: String, in api: Connection) async throws {
        let name = secret.metadata.name ?? ""
        let path = "/api/v1/namespaces/\(ns)/secrets"
        let create = "create Secret \(name) in namespace \(ns)"
        let reply = try await send(.POST, path, body: secret, in: api, operation: create)
        switch reply.status {
        case 200, 201, 202: return
        case 409:
            let replace = "replace Secret \(name) in namespace \(ns)"
            let replaced = try await send(.PUT, "\(path)/\(name)", body: secret, in: api, operation: replace)
            guard [200, 201].contains(replaced.status) else { throw failure(replaced, in: api, operation: replace) }
        default:
            throw failure(reply, in: api, operation: create)
        }
    }
}
