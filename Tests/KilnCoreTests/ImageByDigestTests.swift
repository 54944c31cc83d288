import Foundation
import Testing
@testable import KilnCore

@Suite("Images by digest and machine names")
struct ImageByDigestTests {
    static let digest = "sha256:" + String(repeating: "0f", count: 32)

    @Test("a build's image by digest keeps the registry's port and drops the tag")
    func imageByDigest() {
        var b = Build(id: "b1", project: "demo", ref: "main")
        #expect(b.imageByDigest == nil)
        b.image = "127.0.0.1:5000/demo:abc1234"
        #expect(b.imageByDigest == nil, "no digest recorded: no pinned reference")
        b.digest = Self.digest
        #expect(b.imageByDigest == "127.0.0.1:5000/demo@\(Self.digest)")
        b.digest = "sha256:short"
        #expect(b.imageByDigest == nil)
    }

    @Test("a deploy runs its own project's image in the farm's registry only, whatever the record says")
    func deployableImage() throws {
        var b = Build(id: "b1", project: "demo", ref: "main")
        b.image = "127.0.0.1:5000/demo:abc1234"
        b.digest = Self.digest
        #expect(try b.deployableImage(repository: "demo", registry: "127.0.0.1:5000") == "127.0.0.1:5000/demo@\(Self.digest)")
        #expect(try b.deployableImage(repository: "demo", registry: nil) == "127.0.0.1:5000/demo@\(Self.digest)")
        for forged in ["127.0.0.1:5000/evil:x", "attacker.example/demo:x", "127.0.0.1:5000/evil/demo:x"] {
            b.image = forged
            #expect(throws: KilnError.self, "\(forged)") { try b.deployableImage(repository: "demo", registry: "127.0.0.1:5000") }
        }
        b.image = "127.0.0.1:5000/evil:x"
        #expect(throws: KilnError.self) { try b.deployableImage(repository: "demo", registry: nil) }
        // A project in a group pushes to GROUP/NAME; another group's image of the same name is not its.
        b.image = "127.0.0.1:5000/team/demo:x"
        #expect(try b.deployableImage(repository: "team/demo", registry: "127.0.0.1:5000") == "127.0.0.1:5000/team/demo@\(Self.digest)")
        b.image = "127.0.0.1:5000/other/demo:x"
        #expect(throws: KilnError.self) { try b.deployableImage(repository: "team/demo", registry: "127.0.0.1:5000") }
        #expect(Project(name: "demo", repository: "x", buildImage: "i", buildCommand: "c").repositoryName == "demo")
        b.image = "127.0.0.1:5000/demo:abc1234"
        b.digest = "sha256:" + String(repeating: "0F", count: 32)
        #expect(throws: KilnError.self) { try b.deployableImage(repository: "demo", registry: "127.0.0.1:5000") }
    }

    @Test(arguments: [
        ("127.0.0.1:5000/demo:abc", "127.0.0.1:5000/demo"),
        ("127.0.0.1:5000/demo", "127.0.0.1:5000/demo"),
        ("localhost:5000/group/img:v1.2", "localhost:5000/group/img"),
        ("registry.example/a/b@sha256:00", "registry.example/a/b"),
        ("busybox:1", "busybox"),
        ("busybox", "busybox"),
    ])
    func repository(image: String, expected: String) {
        #expect(Build.repository(of: image) == expected)
    }

    @Test("a machine is named like an agent, and never admin")
    func machineNames() throws {
        try MachineCredential.validateName("agent-1")
        try MachineCredential.validateName("deployer")
        #expect(throws: KilnError.self) { try MachineCredential.validateName("admin") }
        #expect(throws: KilnError.self) { try MachineCredential.validateName("a/b") }
        #expect(throws: KilnError.self) { try MachineCredential.validateName("") }
    }
}
