import Foundation
import KilnCore
import Testing

@Suite("Build limits and protected refs of a project")
struct BuildLimitsTests {
    @Test("sizes: k, m, g (and KiB forms), plain bytes; anything else is nil", arguments: [
        ("4g", Int64(4) << 30), ("512m", Int64(512) << 20), ("1.5g", Int64(3) << 29), ("65536k", Int64(64) << 20),
        ("2GiB", Int64(2) << 30), ("1048576", Int64(1) << 20), (" 8M ", Int64(8) << 20),
    ])
    func sizes(_ text: String, _ bytes: Int64) {
        #expect(BuildLimits.parseBytes(text) == bytes)
    }

    @Test(arguments: ["", "g", "-1g", "4x", "1e3", "four", "0", "1.2.3m", "9999999999g"])
    func badSizes(_ text: String) {
        #expect(BuildLimits.parseBytes(text) == nil)
    }

    @Test("the lower of each limit wins; a field left out is the agent's")
    func capped() {
        let agent = BuildLimits(memoryBytes: 4 << 30, cpus: 2, pids: 4096)
        #expect(BuildLimits(memoryBytes: 1 << 30).capped(by: agent) == BuildLimits(memoryBytes: 1 << 30, cpus: 2, pids: 4096))
        #expect(BuildLimits(memoryBytes: 8 << 30, cpus: 4, pids: 100_000).capped(by: agent) == agent)
        #expect(BuildLimits(cpus: 0.5, pids: 64).capped(by: BuildLimits()) == BuildLimits(cpus: 0.5, pids: 64))
    }

    @Test("limits out of range are refused with the field named")
    func validate() throws {
        try BuildLimits.agentDefault.validate(field: "limits")
        for bad in [BuildLimits(memoryBytes: 1 << 20), BuildLimits(cpus: 0), BuildLimits(cpus: .nan), BuildLimits(pids: 8)] {
            #expect(throws: KilnError.self) { try bad.validate(field: "limits") }
        }
        var p = Project(name: "a", repository: "http://g/a.git", buildImage: "img", buildCommand: "true", limits: BuildLimits(pids: 1))
        let error = #expect(throws: KilnError.self) { try p.validate() }
        #expect(error?.message.contains("limits.pids") == true)
        p.limits = BuildLimits(memoryBytes: 1 << 30, cpus: 1, pids: 256)
        try p.validate()
    }

    @Test("protectedRefs are validated like branch patterns and survive JSON")
    func protectedRefs() throws {
        var p = Project(name: "a", repository: "http://g/a.git", buildImage: "img", buildCommand: "true", protectedRefs: ["release/*", "refs/tags/v*"])
        try p.validate()
        let back = try KilnJSON.decode(Project.self, from: KilnJSON.encode(p))
        #expect(back == p)
        #expect(back.isProtected(ref: "release/7") && back.isProtected(ref: "main") && !back.isProtected(ref: "feature"))
        p.protectedRefs = ["bad ref"]
        #expect(throws: KilnError.self) { try p.validate() }
        p.protectedRefs = ["-x"]
        #expect(throws: KilnError.self) { try p.validate() }
    }
}
