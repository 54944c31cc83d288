import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The addresses of this machine's network interfaces, read fresh on each call (an interface
/// such as podman's bridge appears only once a container has used it).
///
/// Two sides need the same list: the dev servers of `kiln up` let these addresses in
/// (`LocalPeers`), and an agent refuses to fetch a repository from them (`FetchPolicy`),
/// since a service bound to 0.0.0.0 answers on every one of them.
public enum HostAddresses {
    /// Every IPv4 address (4 bytes, network order) and IPv6 address (16 bytes) of the
    /// interfaces that are configured now, loopback included; empty when they cannot be read.
    public static func current() -> [[UInt8]] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var found: [[UInt8]] = []
        var cursor = list
        while let entry = cursor {
            if let sa = entry.pointee.ifa_addr, let bytes = addressBytes(sa) {
                found.append(bytes)
            }
            cursor = entry.pointee.ifa_next
        }
        return found
    }

    /// The address bytes of an `AF_INET` (4) or `AF_INET6` (16) socket address; nil for any
    /// other family.
    public static func addressBytes(_ sa: UnsafePointer<sockaddr>) -> [UInt8]? {
        switch Int32(sa.pointee.sa_family) {
        case AF_INET:
            return sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                withUnsafeBytes(of: sin.pointee.sin_addr) { Array($0) }
            }
        case AF_INET6:
            return sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                withUnsafeBytes(of: sin6.pointee.sin6_addr) { Array($0) }
            }
        default:
            return nil
        }
    }
}
