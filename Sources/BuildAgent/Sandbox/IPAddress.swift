import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address as the resolver gave it, and what kind of network it belongs to:
/// what the fetch policy decides on (`FetchPolicy`). Built from bytes, never from the text a
/// project wrote: `2130706433`, `0x7f.1` and `127.1` all reach 127.0.0.1, and only the
/// resolver's answer says so.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    /// 4 bytes (IPv4) or 16 (IPv6), network order.
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// A literal in its standard form ("127.0.0.1", "::ffff:127.0.0.1"), for tests and
    /// tables; nil for anything else (host names and the integer forms are the resolver's).
    public init?(_ text: String) {
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.bytes = withUnsafeBytes(of: v4) { Array($0) }
        } else if inet_pton(AF_INET6, text, &v6) == 1 {
            self.bytes = withUnsafeBytes(of: v6) { Array($0) }
        } else {
            return nil
        }
    }

    public var isIPv4: Bool { bytes.count == 4 }

    public var description: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = isIPv4 ? AF_INET : AF_INET6
        let ok = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &buffer, socklen_t(buffer.count)) != nil }
        guard ok else { return bytes.map(String.init).joined(separator: ".") }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The kinds of address the fetch policy tells apart.
    public enum Kind: String, Sendable, CaseIterable {
        /// 127/8, ::1: this machine.
        case loopback
        /// 0/8, `::`: connecting to 0.0.0.0 reaches this machine on Linux.
        case unspecified
        /// 169.254/16, fe80::/10: the link; cloud metadata services live there.
        case linkLocal
        /// A cloud's metadata service outside link-local (Alibaba's 100.100.100.200, AWS's
        /// fd00:ec2::254): credentials of the machine it runs on are one GET away.
        case metadata
        /// 224/4, ff00::/8.
        case multicast
        /// 255.255.255.255 and the rest of 240/4.
        case reserved
        /// 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT), fc00::/7, fec0::/10:
        /// where a company's own GitLab usually is.
        case privateNetwork
        /// Everything else: the internet.
        case global
    }

    /// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
    /// (`::a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address: such an address reaches that
    /// IPv4 address, so it is judged as that address.
    public var embeddedIPv4: IPAddress? {
        guard bytes.count == 16 else { return nil }
        let head = bytes[0..<12]
        let mapped = head.elementsEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
        let compatible = head.allSatisfy { $0 == 0 } && bytes[12..<16].contains { $0 != 0 } && !(bytes[12..<15].allSatisfy { $0 == 0 } && bytes[15] == 1)
        let nat64 = head.elementsEqual([0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0])
        guard mapped || compatible || nat64 else { return nil }
        return IPAddress(bytes: Array(bytes[12..<16]))
    }

    /// The addresses of cloud metadata services outside the link-local ranges.
    static let metadataServices: Set<IPAddress> = [IPAddress("100.100.100.200")!, IPAddress("fd00:ec2::254")!]

    public var kind: Kind {
        if let inner = embeddedIPv4 { return inner.kind }
        if IPAddress.metadataServices.contains(self) { return .metadata }
        return isIPv4 ? kindIPv4 : kindIPv6
    }

    private var kindIPv4: Kind {
        let (a, b) = (bytes[0], bytes[1])
        switch a {
        case 0: return .unspecified
        case 127: return .loopback
        case 10: return .privateNetwork
        case 169 where b == 254: return .linkLocal
        case 172 where (16...31).contains(b): return .privateNetwork
        case 192 where b == 168: return .privateNetwork
        case 100 where (64...127).contains(b): return .privateNetwork
        case 224...239: return .multicast
        case 240...255: return .reserved
        default: return .global
        }
    }

    private var kindIPv6: Kind {
        if bytes.allSatisfy({ $0 == 0 }) { return .unspecified }
        if bytes[0..<15].allSatisfy({ $0 == 0 }) && bytes[15] == 1 { return .loopback }
        switch (bytes[0], bytes[1] & 0xc0) {
        case (0xff, _): return .multicast
        case (0xfe, 0x80): return .linkLocal
        case (0xfe, 0xc0): return .privateNetwork  // site-local, deprecated but routed like fc00::/7
        case (0xfc, _), (0xfd, _): return .privateNetwork
        default: return .global
        }
    }
}
