import Foundation
import LocalFarm
import Testing

@Suite("LocalPeers: who may use the Maven mirror")
struct LocalPeersTests {
    @Test("CIDR parsing and membership")
    func networks() {
        let n = IPv4Network("10.88.0.0/16")
        #expect(n?.description == "10.88.0.0/16")
        #expect(n?.contains(0x0a58_1234) == true)
        #expect(n?.contains(0x0a59_0001) == false)
        #expect(IPv4Network("10.88.0.1")?.prefix == 32)
        for bad in ["", "10.88.0", "10.88.0.256", "10.88.0.0/33", "a.b.c.d", "10.88.0.0/x", "1..2.3"] {
            #expect(IPv4Network(bad) == nil, "\(bad)")
        }
    }

    @Test("loopback, this machine's own addresses and the bridge get in; any other address does not")
    func peers() {
        let peers = LocalPeers.thisMachine(bridgeSubnets: [IPv4Network("10.88.0.0/16")!])
        #expect(peers.allows("127.0.0.1") && peers.allows("127.1.2.3") && peers.allows("::1"))
        #expect(peers.allows("10.88.0.7") && peers.allows("::ffff:10.88.0.7"))
        for own in LocalPeers.hostAddresses() {
            let text = "\(own >> 24).\((own >> 16) & 255).\((own >> 8) & 255).\(own & 255)"
            #expect(peers.allows(text), "\(text)")
        }
        // Addresses that are not this machine's (only compared, never contacted).
        let own = Set(LocalPeers.hostAddresses())
        for (other, value) in [("10.89.0.1", UInt32(0x0a59_0001)), ("172.16.0.1", 0xac10_0001), ("8.8.8.8", 0x0808_0808)] where !own.contains(value) {
            #expect(!peers.allows(other), "\(other)")
        }
        #expect(!peers.allows("fe80::1") && !peers.allows("garbage"))
    }
}
