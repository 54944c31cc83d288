import AsyncHTTPClient
import DockerAPI
import Foundation
import KilnCore
import NIOCore
import Plugins
import Processes

/// The local backend: each instance is a container run through a cell's Docker Engine API
/// (podman's compatible service or dockerd), its port published on the cell's advertise host
/// at a host port from the cell's range. nginx reaches instances there.
///
/// A cell's endpoint (`DockerEndpoint`) is a unix socket on the scheduler's machine, plain
/// HTTP on its loopback, or `https://HOST:PORT`: an engine on another host, behind a TLS proxy
/// that asks for a client certificate (docs/cells.md). For `https` the cell's sealed
/// credential (`PipelineSecrets.cellCredential`, set with `kiln cell credential set NAME
/// --client-cert-file … --client-key-file … --ca-file …`) gives the proxy's CA, the only trust
/// root, and the client certificate; it is read again for every call, and the HTTP client
/// made from it is kept while it stays the same (`CellClients`). An https cell without one is
/// refused before anything is sent.
///
/// Containers carry the labels `kiln.app`, `kiln.version`, `kiln.cell` and `kiln.host-port`;
/// several cells may share one engine (on one machine), so every query filters on the cell.
///
/// Images are pulled with `registryCredentials` (a `deployer` machine's pull-only credential),
/// which the cell's engine takes to the registry's token service; nil pulls anonymously.
public struct LocalDeployer: Deployer {
    let http: HTTPClient
    let registryCredentials: RegistryCredentials?
    /// Where https cells' credentials come from (the scheduler's secret store); nil: none can
    /// be read here, and calls to https cells are refused saying so.
    let secrets: (any PipelineSecrets)?
    let clients = CellClients(make: LocalDeployer.makeClient)

    public init(registryCredentials: RegistryCredentials? = nil, secrets: (any PipelineSecrets)? = nil, http: HTTPClient = .shared) {
        self.http = http
        self.registryCredentials = registryCredentials
        self.secrets = secrets
    }

    /// The cell's engine endpoint; refused (before any connection) when it is not a local
    /// cell's, or is plain HTTP off this machine's loopback.
    static func endpoint(of cell: Cell) throws -> DockerEndpoint {
        guard cell.backend == "local" else { throw KilnError.invalid("cell \(cell.name) is a \(cell.backend) cell, not a local one") }
        do {
            return try DockerEndpoint(cell.endpoint)
        } catch let e as DockerError {
            throw KilnError.invalid("cell \(cell.name): \(e.message); change it with `kiln cell add \(cell.name) --endpoint …`")
        }
    }

    /// Runs `body` with a client of the cell's engine: for an https cell, one made from the
    /// cell's credential as it is now.
    func withDocker<T>(_ cell: Cell, _ body: (DockerClient) async throws -> T) async throws -> T {
        let endpoint = try Self.endpoint(of: cell)
        guard endpoint.isTLS else { return try await body(DockerClient(endpoint: endpoint)) }
        let credential = try await credential(of: cell)
        let client = try await clients.acquire(cell: cell.name, credential: credential)
        do {
            let result = try await body(DockerClient(endpoint: endpoint, httpClient: client))
            await clients.release(client)
            return result
        } catch let e as DockerError where e.isTLSFailure {
            await clients.release(client)
            throw Self.tlsRefusal(cell, e)
        } catch {
            await clients.release(client)
            throw error
        }
    }

    /// A call TLS refused (nothing reached the engine), naming the cell and what to set.
    static func tlsRefusal(_ cell: Cell, _ e: DockerError) -> KilnError {
        KilnError.unavailable("cell \(cell.name): TLS refused the call to \(cell.endpoint) (\(e.operation)): \(e.message); the cell's credential must hold the CA that signed the proxy's certificate and a client certificate the proxy's client CA signed: set it with `kiln cell credential set \(cell.name) --client-cert-file … --client-key-file … --ca-file …` (docs/cells.md)")
    }

    /// An https cell's credential: the CA of its TLS proxy and a client certificate and key.
    func credential(of cell: Cell) async throws -> CellCredential {
        let how = "`kiln cell credential set \(cell.name) --client-cert-file CERT --client-key-file KEY --ca-file CA` (the CA that signed the proxy's certificate, and a client certificate its ssl_client_certificate signed; docs/cells.md)"
        let found = try await CellClients.credential(
            of: cell, from: secrets, kind: "https cells",
            missing: "cell \(cell.name) has no credential, and its endpoint \(cell.endpoint) is https (TLS with a client certificate): set one with \(how)")
        guard found.clientCertificate != nil, found.clientKey != nil else {
            throw KilnError.invalid("cell \(cell.name): its credential is a bearer token, but a local cell's TLS proxy asks for a client certificate: set one with \(how)")
        }
        return found
    }

    /// The HTTP client of one https cell (`DockerTLS.makeHTTPClient`).
    static func makeClient(cell: String, credential: CellCredential) throws -> HTTPClient {
        guard let certificate = credential.clientCertificate, let key = credential.clientKey else {
            throw KilnError.invalid("cell \(cell): its credential holds no client certificate")
        }
        do {
            return try DockerTLS(certificateAuthority: credential.certificateAuthority, clientCertificate: certificate, clientKey: key).makeHTTPClient()
        } catch let e as DockerError {
            throw KilnError.invalid("cell \(cell): \(e.message) in its credential: set the credential again with `kiln cell credential set \(cell) --client-cert-file … --client-key-file … --ca-file …`")
        }
    }

    static func labels(app: String, version: Int? = nil, cell: String) -> [String: String] {
        var l = ["kiln.app": app, "kiln.cell": cell]
        if let version { l["kiln.version"] = String(version) }
        return l
    }

    public func start(_ spec: VersionSpec, in cell: Cell) async throws -> [Instance] {
        let env = try Self.environment(of: spec, in: cell)
        return try await withDocker(cell) { docker in
            try await prepare(spec, in: cell, docker)
            // A re-run after a crash finds what an earlier start left: start over.
            let leftovers = try await docker.containers(labeled: Self.labels(app: spec.app, version: spec.version, cell: cell.name))
            for c in leftovers { try await docker.remove(c.id, force: true) }
            return try await startInstances(spec, env: env, indices: Array(0..<spec.settings.replicas), in: cell, docker)
        }
    }

    /// The engine answers and has the image (pulled by digest: a no-op when it is there).
    func prepare(_ spec: VersionSpec, in cell: Cell, _ docker: DockerClient) async throws {
        do {
            try await docker.ping()
        } catch let e as DockerError where e.isTLSFailure {
            throw Self.tlsRefusal(cell, e)
        } catch {
            throw KilnError.unavailable("cell \(cell.name): the Docker API at \(cell.endpoint) does not answer (\(error)); start it, or remove the cell with `kiln cell remove \(cell.name)`")
        }
        do {
            try await docker.pull(spec.image, insecure: Self.isPlainHTTP(spec.image), credentials: registryCredentials)
        } catch {
            throw KilnError.invalid("cell \(cell.name): cannot pull \(spec.image): \(Self.message(error))")
        }
    }

    /// Creates and starts one container per index (`{baseName}-{cell}-{index}`), each on a
    /// free host port of the cell's range; removes them all if one fails.
    func startInstances(_ spec: VersionSpec, env: [String: String], indices: [Int], in cell: Cell, _ docker: DockerClient) async throws -> [Instance] {
        let used = Set(try await docker.containers(labeled: ["kiln.cell": cell.name]).compactMap { $0.labels["kiln.host-port"].flatMap(Int.init) })
        let host = cell.advertiseHost ?? "127.0.0.1"
        var started: [Instance] = []
        var taken: [Int] = []
        do {
            var candidates = cell.ports.makeIterator()
            for (n, index) in indices.enumerated() {
                var port: Int?
                while let p = candidates.next() {
                    if used.contains(p) { continue }
                    if FreePort.isInUse(p, host: host) { taken.append(p); continue }
                    port = p
                    break
                }
                guard let port else {
                    let why = taken.isEmpty ? "all are used by other instances" : "port\(taken.count == 1 ? "" : "s") \(taken.prefix(5).map(String.init).joined(separator: ", ")) \(taken.count == 1 ? "is" : "are") already taken by another program"
                    throw KilnError.conflict("cell \(cell.name): no free host port left in \(cell.ports.lowerBound)-\(cell.ports.upperBound) for instance \(n + 1) of \(indices.count): \(why); free one, or widen the cell's range (kiln cell add \(cell.name) --ports FIRST-LAST)")
                }
                let name = "\(spec.baseName)-\(cell.name)-\(index)"
                var labels = Self.labels(app: spec.app, version: spec.version, cell: cell.name)
                labels["kiln.host-port"] = String(port)
                let container = ContainerSpec(
                    image: spec.image, env: env, labels: labels,
                    memoryBytes: spec.settings.memoryMB.map { Int64($0) << 20 }, cpus: spec.settings.cpu,
                    publish: [spec.settings.port: .init(hostIP: host, hostPort: port)])
                let id = try await docker.createContainer(container, name: name)
                started.append(Instance(id: id, name: name, cell: cell.name, address: "\(host):\(port)"))
                do {
                    try await docker.start(id)
                } catch {
                    let text = Self.message(error)
                    if text.contains("address already in use") || text.contains("bind") {
                        throw KilnError.conflict("cell \(cell.name): port \(port) is already taken: \(text)")
                    }
                    throw KilnError.internalError("cell \(cell.name): cannot start \(name): \(text)")
                }
            }
            return started
        } catch {
            // Also when this start was cancelled (another cell failed first): a task of its own
            // is not cancelled, so the removals do happen.
            let leftovers = started
            await Task { for instance in leftovers { try? await docker.remove(instance.id, force: true) } }.value
            throw error
        }
    }

    public func check(_ instance: Instance, of spec: VersionSpec, in cell: Cell) async -> (healthy: Bool, detail: String) {
        var request = HTTPClientRequest(url: "http://\(instance.address)\(spec.settings.healthPath)")
        request.method = .GET
        do {
            let response = try await http.execute(request, timeout: .seconds(2))
            _ = try? await response.body.collect(upTo: 1 << 16)
            let code = Int(response.status.code)
            return ((200..<300).contains(code), "HTTP \(code) from \(spec.settings.healthPath)")
        } catch {
            // Say why: a container that exited explains more than a refused connection.
            if let state = try? await withDocker(cell, { try await $0.state(of: instance.id) }), !state.running {
                return (false, "container \(state.status), exit code \(state.exitCode)\(state.error.isEmpty ? "" : ": \(state.error)")")
            }
            return (false, "no answer from \(instance.address)\(spec.settings.healthPath): \(Self.message(error))")
        }
    }

    public func stop(_ instances: [Instance], of spec: VersionSpec, in cell: Cell) async throws {
        try await withDocker(cell) { docker in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for instance in instances {
                    group.addTask {
                        do {
                            try await docker.stop(instance.id, timeoutSeconds: 10)
                        } catch let e as DockerError where e.isNotFound {
                            return  // already gone
                        }
                        try await docker.remove(instance.id, force: true)
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    public func instances(of app: String, in cell: Cell) async throws -> [Int: [Instance]] {
        try await withDocker(cell) { docker in
            var found: [Int: [Instance]] = [:]
            for c in try await docker.containers(labeled: Self.labels(app: app, cell: cell.name)) {
                guard let v = c.labels["kiln.version"].flatMap(Int.init), let port = c.labels["kiln.host-port"] else { continue }
                found[v, default: []].append(Instance(
                    id: c.id, name: c.names.first ?? c.id, cell: cell.name, address: "\(cell.advertiseHost ?? "127.0.0.1"):\(port)",
                    healthy: false, detail: "container \(c.state)"))
            }
            return found
        }
    }

    /// The container's environment: `settings.env`, and each name of `settings.secretEnv`
    /// with its value (the container's Env, seen by whoever can inspect the cell's engine,
    /// never by etcd or the API).
    static func environment(of spec: VersionSpec, in cell: Cell) throws -> [String: String] {
        var env = spec.settings.env
        for name in spec.settings.secretEnv ?? [] {
            guard let value = spec.secretValues[name] else {
                throw KilnError.internalError("cell \(cell.name): version \(spec.version) of \(spec.app) names secret \(name) in secretEnv, but no value was looked up for it")
            }
            env[name] = value
        }
        return env
    }

    /// Registries on the loopback speak plain HTTP here (as Docker itself assumes).
    static func isPlainHTTP(_ image: String) -> Bool {
        let host = image.split(separator: "/").first.map(String.init) ?? ""
        return host.hasPrefix("127.") || host.hasPrefix("localhost")
    }

    static func message(_ error: any Error) -> String {
        if let e = error as? DockerError { return e.message }
        if let e = error as? KilnError { return e.message }
        return "\(error)"
    }
}
