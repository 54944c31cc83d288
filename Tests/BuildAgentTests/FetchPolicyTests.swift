@testable import BuildAgent
import Foundation
import Testing

/// The fetch policy's pure parts: what kind of address an address is, the decision on a
/// server and its resolved addresses, the allowances, and how a URL names its server.
@Suite("FetchPolicy: which git servers an agent may fetch from")
struct FetchPolicyTests {
    static func ip(_ text: String) -> IPAddress { IPAddress(text)! }

    @Test("address kinds, IPv4-mapped, -compatible and NAT64 forms judged as their IPv4 address", arguments: [
        ("127.0.0.1", IPAddress.Kind.loopback), ("127.255.0.9", .loopback), ("::1", .loopback),
        ("::ffff:127.0.0.1", .loopback), ("::127.0.0.1", .loopback), ("64:ff9b::127.0.0.1", .loopback),
        ("0.0.0.0", .unspecified), ("0.1.2.3", .unspecified), ("::", .unspecified), ("::ffff:0.0.0.0", .unspecified),
        ("169.254.169.254", .linkLocal), ("169.254.0.1", .linkLocal), ("fe80::1", .linkLocal), ("febf::1", .linkLocal),
        ("::ffff:169.254.169.254", .linkLocal), ("100.100.100.200", .metadata), ("fd00:ec2::254", .metadata),
        ("224.0.0.1", .multicast), ("239.255.255.250", .multicast), ("ff02::1", .multicast),
        ("255.255.255.255", .reserved), ("240.0.0.1", .reserved),
        ("10.0.0.1", .privateNetwork), ("172.16.0.1", .privateNetwork), ("172.31.255.255", .privateNetwork),
        ("192.168.1.1", .privateNetwork), ("100.64.0.1", .privateNetwork), ("fd12::1", .privateNetwork), ("fc00::1", .privateNetwork),
        ("::ffff:10.1.2.3", .privateNetwork),
        ("8.8.8.8", .global), ("172.32.0.1", .global), ("172.15.255.255", .global), ("100.128.0.1", .global),
        ("169.253.0.1", .global), ("2001:db8::1", .global), ("::ffff:8.8.8.8", .global),
    ])
    func kinds(text: String, kind: IPAddress.Kind) {
        #expect(FetchPolicyTests.ip(text).kind == kind, "\(text)")
    }

    @Test("IPAddress reads only standard literals and prints them back")
    func literals() {
        #expect(IPAddress("127.0.0.1")?.description == "127.0.0.1")
        #expect(IPAddress("::FFFF:127.0.0.1")?.description == "::ffff:127.0.0.1")
        // The integer and octal forms are the resolver's business, not the literal's.
        for text in ["2130706433", "0x7f.1", "127.1", "localhost", "", "1.2.3.4.5"] {
            #expect(IPAddress(text) == nil, "\(text)")
        }
        #expect(IPAddress(bytes: [1, 2, 3]) == nil)
    }

    @Test("loopback, link-local, metadata, multicast, unspecified and own addresses are refused, with the option that allows them")
    func refusals() throws {
        let policy = FetchPolicy()
        let own: Set<IPAddress> = [FetchPolicyTests.ip("192.0.2.2"), FetchPolicyTests.ip("10.88.0.1"), FetchPolicyTests.ip("2001:db8::2")]
        for address in ["127.0.0.1", "::1", "::ffff:127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "100.100.100.200",
                        "192.0.2.2", "10.88.0.1", "::ffff:10.88.0.1", "2001:db8::2"] {
            let why = try #require(policy.refusal(host: "git.example", port: 80, addresses: [FetchPolicyTests.ip(address)], own: own), "\(address)")
            #expect(why.contains("resolves to \(FetchPolicyTests.ip(address))"), "\(why)")
            #expect(why.contains("--allow-fetch-from git.example:80"), "\(why)")
        }
        // One bad address among good ones refuses the server: the connection could take any.
        #expect(policy.refusal(host: "h", port: 443, addresses: [FetchPolicyTests.ip("8.8.8.8"), FetchPolicyTests.ip("127.0.0.1")], own: own) != nil)
        #expect(policy.refusal(host: "h", port: 443, addresses: [], own: own)?.contains("no address") == true)
        // An IPv6 host is suggested in brackets.
        #expect(policy.refusal(host: "::1", port: 3000, addresses: [FetchPolicyTests.ip("::1")], own: [])?.contains("--allow-fetch-from [::1]:3000") == true)
    }

    @Test("public and private addresses pass by default; --deny-private-fetch refuses private ones")
    func privateRanges() {
        let open = FetchPolicy()
        for address in ["8.8.8.8", "10.1.2.3", "172.16.5.5", "192.168.0.10", "fd12::1", "100.64.1.1"] {
            #expect(open.refusal(host: "h", port: 443, addresses: [FetchPolicyTests.ip(address)], own: []) == nil, "\(address)")
        }
        let strict = FetchPolicy(denyPrivate: true)
        for address in ["10.1.2.3", "172.16.5.5", "192.168.0.10", "fd12::1", "::ffff:192.168.0.10"] {
            let why = strict.refusal(host: "gitlab.corp", port: 443, addresses: [FetchPolicyTests.ip(address)], own: [])
            #expect(why?.contains("--deny-private-fetch") == true && why?.contains("--allow-fetch-from gitlab.corp:443") == true, "\(address): \(why ?? "nil")")
        }
        #expect(strict.refusal(host: "h", port: 443, addresses: [FetchPolicyTests.ip("8.8.8.8")], own: []) == nil)
    }

    @Test("an allowance matches the host as written and the port exactly; HOST alone means git's standard ports")
    func allowances() throws {
        let loopback = [FetchPolicyTests.ip("127.0.0.1")]
        let policy = try FetchPolicy(parsing: ["127.0.0.1:3000", "Git.Local", "[::1]:4000"], denyPrivate: true)
        #expect(policy.refusal(host: "127.0.0.1", port: 3000, addresses: loopback, own: []) == nil)
        #expect(policy.refusal(host: "127.0.0.1", port: 3001, addresses: loopback, own: []) != nil)
        #expect(policy.refusal(host: "localhost", port: 3000, addresses: loopback, own: []) != nil)
        #expect(policy.refusal(host: "127.1", port: 3000, addresses: loopback, own: []) != nil)
        #expect(policy.refusal(host: "2130706433", port: 3000, addresses: loopback, own: []) != nil)
        for port in [22, 80, 443, 9418] {
            #expect(policy.refusal(host: "git.local", port: port, addresses: loopback, own: []) == nil, "\(port)")
        }
        #expect(policy.refusal(host: "git.local", port: 2379, addresses: loopback, own: []) != nil)
        #expect(policy.refusal(host: "::1", port: 4000, addresses: [FetchPolicyTests.ip("::1")], own: []) == nil)
        #expect(policy.arguments == ["--allow-fetch-from", "127.0.0.1:3000", "--allow-fetch-from", "git.local", "--allow-fetch-from", "[::1]:4000", "--deny-private-fetch"])
        #expect(try FetchPolicy(parsing: policy.allowed.map(\.description), denyPrivate: true) == policy)
    }

    @Test("an allowance that is not HOST[:PORT] is refused with what to write", arguments: [
        "", ":80", "http://git:80", "git/x", "user@git:22", "git:0", "git:65536", "git:x", "[::1", "[::1]x", "git :80", "[::1]:",
    ])
    func badAllowances(text: String) {
        let error = #expect(throws: FetchAllowanceError.self) { try FetchAllowance(parsing: text) }
        #expect(error?.message.contains("HOST:PORT") == true)
    }

    @Test("the server of each URL form, as libgit2 reads it", arguments: [
        ("https://gitlab.example.com/g/app.git", "https", "gitlab.example.com", 443),
        ("http://127.0.0.1:2379/v3/kv/range", "http", "127.0.0.1", 2379),
        ("http://user:secret@Host:8080/x.git", "http", "Host", 8080),
        ("http://h:1/x?y#z@evil", "http", "h", 1),
        ("git://10.0.0.5/x.git", "git", "10.0.0.5", 9418),
        ("ssh://git@[::1]:2222/x.git", "ssh", "::1", 2222),
        ("http://[::ffff:127.0.0.1]/x", "http", "::ffff:127.0.0.1", 80),
        ("http://127%2e0.0.1/x", "http", "127.0.0.1", 80),
        ("git@gitlab.example.com:group/app.git", "ssh", "gitlab.example.com", 22),
        ("gitlab:app.git", "ssh", "gitlab", 22),
        ("git@[::1]:app.git", "ssh", "::1", 22),
        ("[gitlab:2222]:app.git", "ssh", "gitlab", 2222),
    ])
    func endpoints(url: String, scheme: String, host: String, port: Int) {
        #expect(RepositoryEndpoint(url: url) == RepositoryEndpoint(scheme: scheme, host: host, port: port), "\(url)")
    }

    @Test("no server for file:// and what is not a network URL")
    func noEndpoint() {
        for url in ["file:///srv/git/a.git", "ftp://h/x", "http://:80/x", "http://h:0/x", "http://h:99999/x", "/srv/a.git", "name"] {
            #expect(RepositoryEndpoint(url: url) == nil, "\(url)")
        }
    }

    @Test("user information is stripped from what messages show")
    func redaction() {
        #expect(RepositoryEndpoint.redacted("https://oauth2:tok3n@gitlab.example.com/g/a.git") == "https://gitlab.example.com/g/a.git")
        #expect(RepositoryEndpoint.redacted("ssh://git@host:22/a.git") == "ssh://host:22/a.git")
        #expect(RepositoryEndpoint.redacted("git@host:a.git") == "host:a.git")
        #expect(RepositoryEndpoint.redacted("https://host/a@b.git") == "https://host/a@b.git")
        #expect(RepositoryEndpoint.redacted("https://host/a.git") == "https://host/a.git")
        let url = "https://oauth2:tok3n@gitlab.example.com/g/a.git"
        let scrubbed = RepositoryEndpoint.scrub("malformed URL '\(url)'; oauth2:tok3n", of: url)
        #expect(!scrubbed.contains("tok3n"), "\(scrubbed)")
        #expect(scrubbed.contains("https://gitlab.example.com/g/a.git"))
    }
}
