import DockerAPI
import Foundation
import Testing

@Suite("BuildConfinement: the query of an image build")
struct BuildConfinementTests {
    func query(_ c: BuildConfinement) -> [String: String] {
        Dictionary(c.queryItems, uniquingKeysWith: { a, _ in a })
    }

    @Test("bridge: a network namespace of its own for podman (nsoptions) and networkmode for dockerd")
    func bridge() {
        let q = query(BuildConfinement(network: .bridge))
        #expect(q["networkmode"] == "bridge")
        #expect(q["nsoptions"] == #"[{"Name":"network","Host":false,"Path":""}]"#)
        #expect(query(BuildConfinement(network: .host)).isEmpty)
        #expect(query(BuildConfinement(network: .none))["networkmode"] == "NetworkDisabled")
        #expect(query(BuildConfinement(network: .none))["nsoptions"] != nil)
    }

    @Test("limits, capabilities and the cgroup parent")
    func limits() throws {
        let q = query(BuildConfinement(network: .bridge, memoryBytes: 1 << 30, cpus: 1.5, capDrop: ["ALL"], capAdd: ["CHOWN", "CAP_KILL"], cgroupParent: "/kiln/b1"))
        #expect(q["memory"] == "1073741824" && q["memswap"] == "1073741824")
        #expect(q["cpuperiod"] == "100000" && q["cpuquota"] == "150000")
        #expect(try JSONDecoder().decode([String].self, from: Data(q["dropcaps"]!.utf8)) == ["ALL"])
        #expect(try JSONDecoder().decode([String].self, from: Data(q["addcaps"]!.utf8)) == ["CAP_CHOWN", "CAP_KILL"])
        #expect(q["cgroupparent"] == "/kiln/b1")
    }
}
