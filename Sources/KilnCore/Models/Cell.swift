import Foundation

// The deploy side of Kiln (issue 5): cells, apps and their versions, the post-build
// pipeline's run, and the nginx load balancer's keys. Shared by the Scheduler (API, pipeline
// runs), the Deploy module (backends, plugins, lb-agent) and the CLI.

/// One place where an app's instances run: a Docker Engine API endpoint (backend `local`) or
/// a Kubernetes API server (backend `kubernetes`). Stored at `/kiln/cells/{name}`. An app is
/// deployed in two or more cells, as LeEngine deployed every app in at least two.
public struct Cell: Codable, Sendable, Equatable {
    public var name: String
    /// `local` or `kubernetes`.
    public var backend: String
    /// For `local`: `unix:///path/to/docker.sock`, `http://127.0.0.1:PORT` (this machine's
    /// loopback only), or `https://host:port` (an engine on another host behind a TLS proxy that
    /// asks for a client certificate; the certificate, its key and the proxy's CA:
    /// `CellCredential`, in the secret store; docs/cells.md). For `kubernetes`: `https://host:port`
    /// of the API server (its credential and CA: `CellCredential`).
    public var endpoint: String
    /// Host ports the local backend may publish instances on (inclusive); nil: 20000…29999.
    public var firstPort: Int?
    public var lastPort: Int?
    /// The address nginx reaches published ports on (local backend); default 127.0.0.1, which
    /// only the cell's own machine reaches: set it for a cell on another host.
    public var advertiseHost: String?
    public var createdAt: Date?

    public init(name: String, backend: String = "local", endpoint: String, firstPort: Int? = nil, lastPort: Int? = nil, advertiseHost: String? = nil, createdAt: Date? = nil) {
        self.name = name
        self.backend = backend
        self.endpoint = endpoint
        self.firstPort = firstPort
        self.lastPort = lastPort
        self.advertiseHost = advertiseHost
        self.createdAt = createdAt
    }

    public var ports: ClosedRange<Int> { (firstPort ?? 20000)...(lastPort ?? 29999) }

    public func validate() throws {
        try Validation.projectName(name, what: "cell name")
        guard ["local", "kubernetes"].contains(backend) else {
            throw KilnError.invalid("cell \(name): backend '\(Validation.printable(backend))' is unknown; use local (a Docker Engine API endpoint) or kubernetes (an API server)")
        }
        switch backend {
        case "local":
            try validateLocalEndpoint()
        default:
            guard let u = URL(string: endpoint), ["http", "https"].contains(u.scheme ?? ""), u.host?.isEmpty == false else {
                throw KilnError.invalid("cell \(name): endpoint '\(Validation.printable(endpoint))' is not a Kubernetes API server URL; use https://host:port")
            }
            guard u.user == nil, u.password == nil else {
                throw KilnError.invalid("cell \(name): the endpoint holds user information (user@host): give https://host:port, and the credential with `kiln cell credential set \(name)`")
            }
            // The cell's credential goes with every request: never over plain HTTP, where
            // anyone on the way (or whoever could add a cell) would receive it.
            guard u.scheme == "https" else {
                throw KilnError.invalid("cell \(name): endpoint '\(Validation.printable(endpoint))' is plain HTTP; a Kubernetes cell must use https://host:port (its credential would travel in clear, and the server could not be checked against the cluster's CA)")
            }
        }
        if firstPort != nil || lastPort != nil {
            let r = (firstPort ?? 20000, lastPort ?? 29999)
            guard 1024 <= r.0, r.0 <= r.1, r.1 <= 65535 else {
                throw KilnError.invalid("cell \(name): host port range \(r.0)-\(r.1) is invalid; use FIRST-LAST within 1024-65535")
            }
        }
        if let h = advertiseHost, h.isEmpty || h.contains(where: { $0 == "/" || $0 == " " || $0 == ";" }) {
            throw KilnError.invalid("cell \(name): advertise host '\(Validation.printable(h))' is not a host name or IP address")
        }
    }

    /// A local cell's endpoint: a unix socket, plain HTTP on this machine's loopback only
    /// (whoever reaches the engine runs containers on it: off the loopback only TLS with a
    /// client certificate), or https. The Deploy module parses it again (`DockerEndpoint`).
    private func validateLocalEndpoint() throws {
        var shown = Validation.printable(endpoint)
        if let scheme = shown.range(of: "://"), let at = shown[scheme.upperBound...].firstIndex(of: "@") {
            shown.replaceSubrange(scheme.upperBound...at, with: "***@")  // a password never goes into an error
        }
        if endpoint.hasPrefix("unix:///") { return }
        guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://"), let u = URL(string: endpoint),
              let host = u.host?.trimmingCharacters(in: CharacterSet(charactersIn: "[]")), !host.isEmpty
        else {
            throw KilnError.invalid("cell \(name): endpoint '\(shown)' is not a Docker Engine API address; use unix:///path/to/docker.sock, http://127.0.0.1:PORT (this machine's loopback) or https://HOST:PORT (an engine on another host behind a TLS proxy: docs/cells.md)")
        }
        guard u.user == nil, u.password == nil, u.path.isEmpty || u.path == "/", u.query == nil, u.fragment == nil else {
            throw KilnError.invalid("cell \(name): endpoint '\(shown)' holds more than the address: give \(u.scheme ?? "https")://HOST:PORT, and the credential with `kiln cell credential set \(name)`")
        }
        if u.scheme == "http" && !Self.isLoopback(host) {
            throw KilnError.invalid("cell \(name): endpoint '\(shown)' is plain HTTP off this machine's loopback: anyone who reaches it could run containers on that engine. Put a TLS proxy that asks for a client certificate in front of it and use https://\(host):PORT with `kiln cell credential set \(name) --client-cert-file … --client-key-file … --ca-file …` (docs/cells.md)")
        }
    }

    /// 127.0.0.0/8, `localhost` and `::1`.
    static func isLoopback(_ host: String) -> Bool {
        let host = host.lowercased()
        if host == "localhost" || host == "::1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    /// What `kiln cell add` warns about (nil: nothing): a local cell whose engine is not on
    /// this machine (an endpoint that is neither a unix socket nor on the loopback) and that
    /// has no advertise host. Its instances would be advertised as 127.0.0.1, which only the
    /// machine that reads the address reaches: nginx on another host would send to itself.
    public var advertiseHostWarning: String? {
        guard backend == "local", advertiseHost == nil, !endpoint.hasPrefix("unix://"),
              let host = URL(string: endpoint)?.host?.trimmingCharacters(in: CharacterSet(charactersIn: "[]")),
              !Self.isLoopback(host)
        else { return nil }
        return "warning: cell \(name)'s engine is at \(host), not on this machine, and no --advertise-host is given: its instances will be advertised as 127.0.0.1:PORT, an address only the cell host itself reaches (nginx and the scheduler's health checks elsewhere would reach their own machine). Give the address other hosts reach the cell host on: kiln cell add \(name) --endpoint \(endpoint) --advertise-host IP"
    }
}
