import KilnCore
import Testing

/// The names and addresses that reach nginx's config and etcd keys from outside.
@Suite struct SLBValidationTests {
    @Test func domainsNginxCanServe() throws {
        for ok in ["demo.localhost", "a.b-c.example.com", "x"] { try Validation.domain(ok) }
        for bad in ["", "Demo.localhost", "demo..localhost", "-demo.localhost", "demo.localhost;", "demo/x", "a b", "demo.localhost\n"] {
            #expect(throws: KilnError.self, "\(bad)") { try Validation.domain(bad) }
        }
    }

    @Test func upstreamServerAddresses() throws {
        for ok in ["127.0.0.1:20001", "app-1.cell-a.internal:8080"] { try Validation.serverAddress(ok) }
        for bad in ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":80", "1.2.3.4:80;", "h{}:80", "a b:80", "1.2.3.4:+80"] {
            #expect(throws: KilnError.self, "\(bad)") { try Validation.serverAddress(bad) }
        }
    }

    @Test func cells() throws {
        try Cell(name: "a", endpoint: "unix:///run/podman.sock").validate()
        try Cell(name: "k", backend: "kubernetes", endpoint: "https://10.0.0.1:6443").validate()
        let bad: [(Cell, String)] = [
            (Cell(name: "A", endpoint: "unix:///x"), "cell name"),
            (Cell(name: "a", backend: "mesos", endpoint: "unix:///x"), "backend 'mesos'"),
            (Cell(name: "a", endpoint: "/var/run/docker.sock"), "not a Docker Engine API address"),
            (Cell(name: "k", backend: "kubernetes", endpoint: "unix:///x"), "not a Kubernetes API server URL"),
            (Cell(name: "a", endpoint: "unix:///x", firstPort: 30000, lastPort: 20000), "host port range"),
            (Cell(name: "a", endpoint: "unix:///x", advertiseHost: "h;x"), "advertise host"),
        ]
        for (cell, reason) in bad {
            let e = #expect(throws: KilnError.self) { try cell.validate() }
            #expect(e?.message.contains(reason) == true, "\(e?.message ?? "no error") should say \(reason)")
        }
    }

    @Test func slbKeys() {
        let k = SLBKeys(root: "/slb/")
        #expect(k.domain(group: "g1", "demo.localhost") == "/slb/g1/domains/demo.localhost")
        #expect(k.agents("g1") == "/slb/g1/agents/")
        #expect(Keys().pipelineLogChunk(build: "b1", run: 2, seq: 7) == "/kiln/logs/b1/p002-00000007")
        // Pipeline chunks sort after the build's own.
        #expect(Keys().logChunk(build: "b1", attempt: 999, seq: 99_999_999) < Keys().pipelineLogChunk(build: "b1", run: 1, seq: 0))
    }
}
