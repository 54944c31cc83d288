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
    /// `unix:///path/to/docker.sock` for `local`; `https://host:port` of the API server for `kubernetes`
    /// (its credential and CA: `CellCredential`, in the secret store).
    public var endpoint: String
    /// Host ports the local backend may publish instances on (inclusive); nil: 20000…29999.
    public var firstPort: Int?
    public var lastPort: Int?
    /// The address nginx reaches published ports on (local backend); default 127.0.0.1.
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
            guard endpoint.hasPrefix("unix:///") || endpoint.hasPrefix("http://") else {
                throw KilnError.invalid("cell \(name): endpoint '\(Validation.printable(endpoint))' is not a Docker Engine API address; use unix:///path/to/docker.sock or http://host:port")
            }
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
}
