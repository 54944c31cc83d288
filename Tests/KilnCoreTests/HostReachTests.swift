import KilnCore
import Testing

/// The start-up warnings for addresses other hosts cannot reach (docs/hosts.md): when etcd
/// is on loopback the farm is one machine and nothing is said; once it is not, a loopback
/// address handed to other hosts is.
struct HostReachTests {
    @Test func hostsAreReadFromEveryFormTheOptionsTake() {
        #expect(HostReach.host(of: "127.0.0.1:5000") == "127.0.0.1")
        #expect(HostReach.host(of: "registry:5443") == "registry")
        #expect(HostReach.host(of: "registry") == "registry")
        #expect(HostReach.host(of: "[::1]:8088") == "::1")
        #expect(HostReach.host(of: "::1") == "::1")
        #expect(HostReach.host(of: "https://user:pw@etcd-1:2379/x?y") == "etcd-1")
        #expect(HostReach.host(of: "http://maven:8081/") == "maven")
        #expect(HostReach.host(of: "") == nil)
        #expect(HostReach.host(of: "[::1") == nil)
    }

    @Test func loopbackIsLocalhostAndAllOf127Only() {
        for h in ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]"] { #expect(HostReach.isLoopback(h), "\(h)") }
        for h in ["10.217.0.11", "registry", "128.0.0.1", "127.0.0", "127.0.0.256", "0.0.0.0", "::", "localhost.example", "demo.localhost", "127.0.0.+1", "127.-0.0.1", "127.0.0.0001", "127.0.0.١"] {
            #expect(!HostReach.isLoopback(h), "\(h)")
        }
    }

    @Test func etcdIsLocalOnlyWhenEveryMemberIs() {
        #expect(HostReach.etcdIsLocal("http://127.0.0.1:2379"))
        #expect(HostReach.etcdIsLocal("http://127.0.0.1:2379,http://localhost:22379"))
        #expect(!HostReach.etcdIsLocal("http://127.0.0.1:2379,https://etcd-2:2379"))
        #expect(!HostReach.etcdIsLocal("https://etcd-1:2379"))
        #expect(!HostReach.etcdIsLocal(""))
    }

    @Test func aLoopbackAddressIsWarnedAboutOnlyWhenEtcdIsElsewhere() throws {
        let args = (option: "--registry", readers: "cells", fix: "Give the registry's name.")
        #expect(HostReach.warning(option: args.option, address: "127.0.0.1:5000", readers: args.readers, etcd: "http://127.0.0.1:2379", fix: args.fix) == nil)
        #expect(HostReach.warning(option: args.option, address: "registry:5443", readers: args.readers, etcd: "https://etcd-1:2379", fix: args.fix) == nil)
        let w = try #require(HostReach.warning(option: args.option, address: "127.0.0.1:5000", readers: args.readers, etcd: "https://etcd-1:2379", fix: args.fix))
        #expect(w.hasPrefix("--registry 127.0.0.1:5000 is this machine's loopback, but etcd (https://etcd-1:2379) is not"))
        #expect(w.hasSuffix("Give the registry's name."))
        // An address to connect to may not be "every interface"; one to listen on may.
        #expect(HostReach.warning(option: "--advertise-host", address: "0.0.0.0", readers: "lb", etcd: "https://etcd-1:2379", fix: "") != nil)
        #expect(HostReach.warning(option: "--listen", address: "0.0.0.0:80", readers: "clients", etcd: "https://etcd-1:2379", fix: "", listening: true) == nil)
        #expect(HostReach.warning(option: "--listen", address: "127.0.0.1:8088", readers: "clients", etcd: "https://etcd-1:2379", fix: "", listening: true) != nil)
    }

    @Test func aLogArchiveFolderIsWarnedAboutOnlyWhenEtcdIsElsewhere() throws {
        #expect(HostReach.logArchiveFolderWarning(path: "/var/lib/kiln/log-archive", etcd: "http://127.0.0.1:2379,http://localhost:22379") == nil)
        let w = try #require(HostReach.logArchiveFolderWarning(path: "/var/lib/kiln/log-archive", etcd: "https://etcd-1:2379"))
        #expect(w.contains("/var/lib/kiln/log-archive") && w.contains("https://etcd-1:2379") && w.contains("--log-archive registry"), "\(w)")
    }
}
