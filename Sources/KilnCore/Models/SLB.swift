import Foundation

// The nginx load balancer's records (`/slb/{group}/…`, outside Kiln's prefix).

/// One upstream server of a domain.
public struct SLBServer: Codable, Sendable, Equatable, Hashable {
    /// `host:port` (an IPv4 address or a host name).
    public var address: String
    public var weight: Int?

    public init(address: String, weight: Int? = nil) {
        self.address = address
        self.weight = weight
    }
}

/// One domain of an nginx group, at `/slb/{group}/domains/{domain}`: where nginx sends its
/// requests. Written by the `lb` plugin (or by hand); rendered by every lb-agent of the group.
public struct SLBDomain: Codable, Sendable, Equatable {
    public var domain: String
    public var servers: [SLBServer]
    /// nginx settings for this domain, from a short list (see `SLBDomain.allowedSettings`).
    public var settings: [String: String]?
    /// The app and version serving it, when the `lb` plugin wrote it.
    public var app: String?
    public var version: Int?
    public var updatedAt: Date?

    public init(domain: String, servers: [SLBServer], settings: [String: String]? = nil, app: String? = nil, version: Int? = nil, updatedAt: Date? = nil) {
        self.domain = domain
        self.servers = servers
        self.settings = settings
        self.app = app
        self.version = version
        self.updatedAt = updatedAt
    }

    /// The nginx directives a domain may set, each placed in its `server` block. Their values
    /// are checked for characters that could end the directive; nginx itself (`nginx -t`)
    /// judges the rest, and a value it refuses leaves the last good config in place.
    public static let allowedSettings: Set<String> = [
        "client_max_body_size", "proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout",
        "proxy_next_upstream_tries", "keepalive_timeout",
    ]
}

/// What one lb-agent last applied, at `/slb/{group}/agents/{id}` under the agent's lease.
public struct SLBAgentReport: Codable, Sendable, Equatable {
    public var id: String
    /// The etcd revision of `/slb/{group}/` that nginx now serves.
    public var appliedRevision: Int64
    public var appliedAt: Date
    /// Domains whose latest config failed `nginx -t` (domain → nginx's message): they keep
    /// serving their last good config.
    public var rejected: [String: String]
    /// Where nginx listens (`127.0.0.1:8088`).
    public var listen: String?

    public init(id: String, appliedRevision: Int64, appliedAt: Date = Date(), rejected: [String: String] = [:], listen: String? = nil) {
        self.id = id
        self.appliedRevision = appliedRevision
        self.appliedAt = appliedAt
        self.rejected = rejected
        self.listen = listen
    }
}

/// The `/slb` keys: not under Kiln's prefix, since nginx groups may be shared by farms.
public struct SLBKeys: Sendable, Equatable {
    public let root: String
    public init(root: String = "/slb") {
        var r = root
        while r.hasSuffix("/") { r.removeLast() }
        self.root = r.isEmpty ? "/slb" : r
    }
    public func domains(_ g: String) -> String { "\(root)/\(g)/domains/" }
    public func domain(group g: String, _ d: String) -> String { "\(root)/\(g)/domains/\(d)" }
    public func agents(_ g: String) -> String { "\(root)/\(g)/agents/" }
    public func agent(group g: String, _ id: String) -> String { "\(root)/\(g)/agents/\(id)" }
}
