import Hummingbird
import NIOCore

/// The request context of every scheduler route: Hummingbird's core context plus the peer's
/// address, which the login throttle counts failures by (a header would let a client choose
/// its own bucket).
public struct KilnRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// The peer's IP address, or "unknown".
    var peer: String { remoteAddress?.ipAddress ?? "unknown" }
}
