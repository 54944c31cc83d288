import Foundation
import Hummingbird
import NIOCore
import Processes

/// Who may talk to a dev server that builds use (the Maven mirror): this machine itself and
/// containers on podman's bridge, nobody else.
///
/// Builds run on the bridge, where the host's loopback is out of reach; the server must listen
/// on an address a container can reach. Three ways were weighed (podman 4.3.1, netavark, here):
/// - the bridge's own address (10.88.0.1): the interface exists only once a container has run
///   on the bridge (netavark makes it then), so a server started first cannot bind it;
/// - 0.0.0.0 alone: reachable from every network this machine is on;
/// - 0.0.0.0 and a check of each connection's peer: what this does. A compile container comes
///   from the bridge's subnet (10.88.0.0/16) and reaches the server at host.containers.internal
///   (10.88.0.1); an image step's RUN comes from the same subnet but is told the host's first
///   address (192.0.2.2 here); the host itself comes from loopback or one of its own addresses.
///   Anyone else is answered 403 before the request is read further.
public struct LocalPeers: Sendable, Equatable {
    /// IPv4 networks (address, prefix length) whose peers are let in.
    public let networks: [IPv4Network]

    public init(networks: [IPv4Network]) {
        self.networks = networks
    }

    /// Loopback, every IPv4 address of this machine's interfaces, and `bridgeSubnets`.
    public static func thisMachine(bridgeSubnets: [IPv4Network]) -> LocalPeers {
        var networks = [IPv4Network(address: 0x7f00_0000, prefix: 8)]
        networks += hostAddresses().map { IPv4Network(address: $0, prefix: 32) }
        networks += bridgeSubnets
        return LocalPeers(networks: networks)
    }

    /// Whether a peer at `address` ("10.88.0.5", "::ffff:10.88.0.5", "::1") is let in.
    public func allows(_ address: String) -> Bool {
        if address == "::1" { return true }
        let v4 = address.hasPrefix("::ffff:") ? String(address.dropFirst(7)) : address
        guard let ip = IPv4Network.parse(v4) else { return false }
        return networks.contains { $0.contains(ip) }
    }

    /// The IPv4 addresses of this machine's interfaces (host order).
    public static func hostAddresses() -> [UInt32] {
        HostAddresses.current().filter { $0.count == 4 }.map { $0.reduce(0) { $0 << 8 | UInt32($1) } }
    }
}

/// An IPv4 network in CIDR form.
public struct IPv4Network: Sendable, Equatable, CustomStringConvertible {
    public let address: UInt32
    public let prefix: Int

    public init(address: UInt32, prefix: Int) {
        self.address = address
        self.prefix = max(0, min(32, prefix))
    }

    /// "10.88.0.0/16" or "10.88.0.1"; nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let first = parts.first, let ip = IPv4Network.parse(first) else { return nil }
        let prefix = parts.count == 2 ? Int(parts[1]) : 32
        guard let prefix, (0...32).contains(prefix) else { return nil }
        self.init(address: ip, prefix: prefix)
    }

    var mask: UInt32 { prefix == 0 ? 0 : UInt32.max << UInt32(32 - prefix) }

    public func contains(_ ip: UInt32) -> Bool { ip & mask == address & mask }

    public var description: String {
        "\(address >> 24).\((address >> 16) & 255).\((address >> 8) & 255).\(address & 255)/\(prefix)"
    }

    static func parse(_ text: String) -> UInt32? {
        let octets = text.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var value: UInt32 = 0
        for octet in octets {
            guard !octet.isEmpty, octet.count <= 3, octet.allSatisfy(\.isNumber), let n = UInt32(octet), n <= 255 else { return nil }
            value = value << 8 | n
        }
        return value
    }
}

/// The request context of the dev servers: Hummingbird's basic one plus the peer's address.
public struct PeerRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// Answers 403 to a peer `LocalPeers` does not let in.
struct PeerFilterMiddleware: RouterMiddleware {
    typealias Context = PeerRequestContext
    let peers: LocalPeers

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let ip = context.remoteAddress?.ipAddress, peers.allows(ip) else {
            throw HTTPError(.forbidden, message: "this server answers only this machine and its build containers")
        }
        return try await next(request, context)
    }
}

extension PodmanService {
    /// The IPv4 subnets of podman's default network ("podman", the bridge containers join),
    /// from `podman network inspect`; podman's documented default 10.88.0.0/16 if that fails.
    public func bridgeSubnets() -> [IPv4Network] {
        let fallback = [IPv4Network(address: 0x0a58_0000, prefix: 16)]
        guard let r = try? podmanCommand(["network", "inspect", "podman", "--format", "{{range .Subnets}}{{.Subnet}} {{end}}"]), r.status == 0 else {
            return fallback
        }
        let found = r.output.split(whereSeparator: \.isWhitespace).compactMap { IPv4Network(String($0)) }
        return found.isEmpty ? fallback : found
    }
}
